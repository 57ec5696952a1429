//! Signed OCSP answers, kept so that an unauthenticated request costs a lookup, not a
//! signature.
//!
//! An answer is keyed by the request's CertIDs exactly as sent (they are echoed in it) and
//! reused while it is younger than half its validity and every status it states is still the
//! status the store gives now; the store is read on every request, so a revocation made by
//! any replica is answered at once. Signatures the cache cannot spare (a nonce, which must be
//! echoed, or a request not seen before) come from a budget refilled at a fixed rate; past it,
//! a nonce is left out of a cached answer (RFC 8954 §2.1 lets a responder ignore nonces), and
//! a request with nothing cached gets `tryLater`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use time::{Duration, OffsetDateTime};

use crate::issuance::ocsp::CertStatus;

/// Answers kept at most; past it the cache starts again empty.
const MAX_ENTRIES: usize = 16_384;

#[derive(Debug)]
struct Entry {
    statuses: Vec<CertStatus>,
    der: Vec<u8>,
    produced: OffsetDateTime,
}

#[derive(Debug)]
struct Budget {
    tokens: f64,
    updated: Instant,
}

/// See the module documentation.
#[derive(Debug)]
pub struct OcspCache {
    /// Reuse an answer while it is younger than this (half its validity).
    reuse_for: Duration,
    per_second: f64,
    entries: Mutex<HashMap<Vec<u8>, Entry>>,
    budget: Mutex<Budget>,
}

impl OcspCache {
    /// `validity`: an answer's nextUpdate − thisUpdate; `signatures_per_second`: the budget of
    /// fresh signatures (also its burst).
    pub fn new(validity: Duration, signatures_per_second: u32) -> Self {
        let per_second = f64::from(signatures_per_second.max(1));
        Self {
            reuse_for: validity / 2,
            per_second,
            entries: Mutex::default(),
            budget: Mutex::new(Budget {
                tokens: per_second,
                updated: Instant::now(),
            }),
        }
    }

    /// The cached answer for these CertIDs, if it is fresh and says what the store says now.
    pub fn get(&self, key: &[u8], statuses: &[CertStatus], now: OffsetDateTime) -> Option<Vec<u8>> {
        let entries = self
            .entries
            .lock()
            .expect("OCSP cache lock is never poisoned");
        let entry = entries.get(key)?;
        let fresh = now >= entry.produced && now < entry.produced + self.reuse_for;
        (fresh && entry.statuses == statuses).then(|| entry.der.clone())
    }

    /// Keeps a signed answer (one without a nonce) for reuse.
    pub fn put(
        &self,
        key: Vec<u8>,
        statuses: Vec<CertStatus>,
        der: Vec<u8>,
        produced: OffsetDateTime,
    ) {
        let mut entries = self
            .entries
            .lock()
            .expect("OCSP cache lock is never poisoned");
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(&key) {
            entries.clear();
        }
        entries.insert(
            key,
            Entry {
                statuses,
                der,
                produced,
            },
        );
    }

    /// Takes one fresh signature from the budget; false when it is spent for now.
    pub fn may_sign(&self) -> bool {
        let mut budget = self
            .budget
            .lock()
            .expect("OCSP budget lock is never poisoned");
        let at = Instant::now();
        let regained = at.duration_since(budget.updated).as_secs_f64() * self.per_second;
        budget.tokens = (budget.tokens + regained).min(self.per_second);
        budget.updated = at;
        if budget.tokens >= 1.0 {
            budget.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_reused_until_half_its_validity_or_a_status_change() {
        let cache = OcspCache::new(Duration::hours(1), 10);
        let t0 = OffsetDateTime::UNIX_EPOCH + Duration::days(1);
        cache.put(b"id".to_vec(), vec![CertStatus::Good], b"der".to_vec(), t0);
        let good = [CertStatus::Good];
        assert_eq!(cache.get(b"id", &good, t0).as_deref(), Some(&b"der"[..]));
        let last = t0 + Duration::minutes(30) - Duration::seconds(1);
        assert!(cache.get(b"id", &good, last).is_some());
        assert!(cache
            .get(b"id", &good, t0 + Duration::minutes(30))
            .is_none());
        let revoked = [CertStatus::Revoked {
            at: t0,
            reason: None,
        }];
        assert!(cache.get(b"id", &revoked, t0).is_none());
        assert!(cache.get(b"other", &good, t0).is_none());
    }

    #[test]
    fn fresh_signatures_come_from_a_budget() {
        let cache = OcspCache::new(Duration::hours(1), 3);
        let granted = (0..10).filter(|_| cache.may_sign()).count();
        assert_eq!(granted, 3);
    }
}
