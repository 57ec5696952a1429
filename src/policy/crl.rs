//! What the next CRL of an issuer is: its number, its validity, and which revoked
//! certificates it lists. The store reads the facts ([`CrlBasis`]); these rules decide; the
//! issuing CA signs; the store records the CRL only if the facts it was signed over still hold.

use time::{Duration, OffsetDateTime};

/// RFC 5280 §3.3: an entry may leave the CRL only after its certificate has expired. It stays
/// a day longer, so relying parties whose clocks lag still see it (the lesson of Vault's
/// CVE-2021-29653).
pub const KEPT_AFTER_EXPIRY: Duration = Duration::days(1);

/// An issuer's last CRL as the store holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CrlBasis {
    /// The last CRL number used (a restore from kept CRLs may have moved it past the last
    /// stored CRL).
    pub last_number: Option<i64>,
    /// thisUpdate of the last stored CRL.
    pub last_this_update: Option<OffsetDateTime>,
}

/// The next CRL, before it is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrlPlan {
    pub number: i64,
    pub this_update: OffsetDateTime,
    pub next_update: OffsetDateTime,
    /// Revoked certificates whose notAfter is at or after this are listed.
    pub listed_from: OffsetDateTime,
}

/// The CRL after `basis`, signed at `now` and valid for `validity`: numbered one past the last,
/// with thisUpdate `now`, or the last one's if that is later (a replica whose clock runs behind
/// never publishes a higher number with an earlier thisUpdate).
pub fn next(basis: &CrlBasis, now: OffsetDateTime, validity: Duration) -> CrlPlan {
    let this_update = match basis.last_this_update {
        Some(last) if last > now => last,
        _ => now,
    };
    CrlPlan {
        number: basis.last_number.unwrap_or(0) + 1,
        this_update,
        next_update: this_update + validity,
        listed_from: this_update - KEPT_AFTER_EXPIRY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_rise_by_one_and_this_update_never_goes_back() {
        let now = time::macros::datetime!(2026-12-01 12:00 UTC);
        let day = Duration::days(1);
        let first = next(&CrlBasis::default(), now, day);
        assert_eq!(
            (first.number, first.this_update, first.next_update),
            (1, now, now + day)
        );
        assert_eq!(first.listed_from, now - KEPT_AFTER_EXPIRY);
        let ahead = CrlBasis {
            last_number: Some(7),
            last_this_update: Some(now + Duration::minutes(5)),
        };
        let behind = next(&ahead, now, day);
        assert_eq!(behind.number, 8);
        assert_eq!(
            behind.this_update,
            now + Duration::minutes(5),
            "a lagging clock"
        );
        let later = next(&ahead, now + Duration::hours(1), day);
        assert_eq!(later.this_update, now + Duration::hours(1));
    }
}
