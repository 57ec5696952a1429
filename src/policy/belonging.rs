//! Whether a PKI directory belongs with a database: every part of the PKI must be one the
//! database recorded at its first start. A part may have several recorded fingerprints (an
//! issuing CA after a rollover); the PKI's current one must be among them.

use crate::domain::{PkiFingerprint, PkiPart};
use crate::error::Error;

/// What a start may do with the PKI it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Belonging {
    /// The database has recorded no PKI yet: record this one.
    First,
    /// Every part is recorded.
    Matches,
}

/// Judges `current` (the PKI directory's fingerprints) against `recorded` (the database's).
/// A mismatch is FAILED_PRECONDITION naming the part and both fingerprints.
pub fn judge(recorded: &[PkiFingerprint], current: &[PkiFingerprint]) -> Result<Belonging, Error> {
    if recorded.is_empty() {
        return Ok(Belonging::First);
    }
    for now in current {
        let known: Vec<&str> = recorded
            .iter()
            .filter(|r| r.part == now.part)
            .map(|r| r.sha256.as_str())
            .collect();
        if known.contains(&now.sha256.as_str()) {
            continue;
        }
        let before = match known.as_slice() {
            [] => "none".to_owned(),
            list => list
                .iter()
                .map(|f| format!("sha256:{f}"))
                .collect::<Vec<_>>()
                .join(" or "),
        };
        return Err(Error::FailedPrecondition(format!(
            "the PKI directory and the database do not belong together: the PKI's {} is \
             sha256:{}, the database was created with {before}",
            now.part.describe(),
            now.sha256
        )));
    }
    Ok(Belonging::Matches)
}

/// The parts missing from `recorded`, in the order of [`PkiPart::ALL`].
pub fn unrecorded<'a>(
    recorded: &[PkiFingerprint],
    current: &'a [PkiFingerprint],
) -> Vec<&'a PkiFingerprint> {
    let mut missing: Vec<&PkiFingerprint> =
        current.iter().filter(|c| !recorded.contains(c)).collect();
    missing.sort_by_key(|f| PkiPart::ALL.iter().position(|p| *p == f.part));
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(part: PkiPart, sha: &str) -> PkiFingerprint {
        PkiFingerprint {
            part,
            sha256: sha.into(),
        }
    }

    #[test]
    fn a_database_without_a_binding_takes_the_first_pki() {
        let current = [fp(PkiPart::Root, "aa")];
        assert_eq!(judge(&[], &current), Ok(Belonging::First));
    }

    #[test]
    fn another_root_is_refused_naming_both_fingerprints() {
        let recorded = [fp(PkiPart::Root, "aa"), fp(PkiPart::OperationalCa, "cc")];
        let current = [fp(PkiPart::Root, "bb"), fp(PkiPart::OperationalCa, "cc")];
        let Err(Error::FailedPrecondition(msg)) = judge(&recorded, &current) else {
            panic!("a different root is refused");
        };
        assert!(msg.contains("root CA certificate is sha256:bb"), "{msg}");
        assert!(msg.contains("created with sha256:aa"), "{msg}");
    }

    #[test]
    fn a_rolled_over_issuing_ca_matches_any_of_its_recorded_fingerprints() {
        let recorded = [
            fp(PkiPart::OperationalCa, "c1"),
            fp(PkiPart::OperationalCa, "c2"),
        ];
        assert_eq!(
            judge(&recorded, &[fp(PkiPart::OperationalCa, "c2")]),
            Ok(Belonging::Matches)
        );
        assert!(judge(&recorded, &[fp(PkiPart::OperationalCa, "c3")]).is_err());
    }
}
