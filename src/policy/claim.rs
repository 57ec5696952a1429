//! Whether a signed certificate may be recorded: the rules about keys, subjects and renewals
//! that must hold at the moment of the write. The store reads the facts under its write lock
//! ([`ClaimFacts`]) and asks [`check`] inside the same transaction, so nothing that commits
//! meanwhile can slip between the decision and the row.

use time::OffsetDateTime;

use crate::domain::{
    quote, CertSerial, CertState, DeviceSerial, ManufacturerId, Role, SubjectState,
};
use crate::error::Error;

/// Who a new certificate is for, and what that subject must satisfy.
#[derive(Debug, Clone)]
pub enum Claim {
    /// A device's first (birth) certificate: the serial must be new for its manufacturer.
    NewDevice {
        manufacturer: ManufacturerId,
        serial: DeviceSerial,
        /// For enrollment with a one-time token: its hash, spent in the same transaction.
        token_sha256: Option<String>,
    },
    /// A renewal for an existing device or gateway, by the holder of `caller_serial`.
    Renewal {
        rekey_required: bool,
        caller_serial: CertSerial,
    },
    /// medid's own certificates (TLS server, delegated OCSP responders).
    Service,
    /// A certificate for a non-device principal; the principal may already exist with the
    /// same role and scope (re-issue), never with another.
    Principal {
        role: Role,
        principal_id: String,
        manufacturer: Option<ManufacturerId>,
    },
}

/// What the store holds, read under the write lock, that the rules depend on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimFacts {
    /// The public key is certified for another subject.
    pub key_bound_elsewhere: bool,
    /// A certificate of this key was revoked for keyCompromise.
    pub key_compromised: bool,
    /// The key was certified before (for anyone).
    pub key_seen: bool,
    /// Renewals: the caller's certificate and the state of its subject, if still recorded.
    pub caller: Option<(CertState, Option<SubjectState>)>,
    /// New devices: the serial is enrolled already.
    pub device_enrolled: bool,
    /// Principals: the principal as recorded, if it exists.
    pub principal: Option<RecordedPrincipal>,
    /// New devices enrolled with a one-time token: the token as stored (None if unknown).
    pub token: Option<TokenFacts>,
}

/// A one-time enrollment token as stored, and the time of the write that would spend it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenFacts {
    pub used_at: Option<OffsetDateTime>,
    pub expires_at: OffsetDateTime,
    pub now: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedPrincipal {
    pub role: Role,
    pub manufacturer: Option<ManufacturerId>,
    pub state: SubjectState,
}

/// Decides whether a certificate for `claim` may be recorded, given `facts`.
pub fn check(claim: &Claim, facts: &ClaimFacts) -> Result<(), Error> {
    // A public key identifies one subject only, and a key revoked for keyCompromise is never
    // certified again, for anyone.
    if facts.key_bound_elsewhere {
        return Err(Error::AlreadyExists(
            "this public key is already bound to another device or principal; generate a new key"
                .into(),
        ));
    }
    if facts.key_compromised {
        return Err(Error::PermissionDenied(
            "this public key was revoked for keyCompromise and is refused for good; generate a new key"
                .into(),
        ));
    }
    match claim {
        Claim::Service => Ok(()),
        Claim::Renewal {
            rekey_required,
            caller_serial,
        } => {
            // Authentication happened before the transaction; a revocation or decommissioning
            // that committed meanwhile cannot be outrun.
            let still_good = facts.caller == Some((CertState::Active, Some(SubjectState::Active)));
            if !still_good {
                return Err(Error::Unauthenticated(format!(
                    "certificate {caller_serial} or its subject was revoked or decommissioned meanwhile"
                )));
            }
            if *rekey_required && facts.key_seen {
                return Err(Error::FailedPrecondition(
                    "renewal requires a new key (rekey_required); this key was certified before"
                        .into(),
                ));
            }
            Ok(())
        }
        Claim::NewDevice {
            manufacturer,
            serial,
            token_sha256,
        } => {
            // Of two concurrent enrollments of one serial, the first to commit wins; the
            // other's certificate never leaves the process.
            if facts.device_enrolled {
                return Err(Error::AlreadyExists(format!(
                    "device {} of manufacturer {manufacturer} is already enrolled",
                    quote(serial.as_str())
                )));
            }
            // A token is spent once, before it expires; which of the three failed is not
            // said, so a guesser learns nothing.
            let spendable = |t: &TokenFacts| t.used_at.is_none() && t.expires_at >= t.now;
            if token_sha256.is_some() && !facts.token.as_ref().is_some_and(spendable) {
                return Err(Error::PermissionDenied(
                    "the enrollment token is unknown, expired or already used".into(),
                ));
            }
            Ok(())
        }
        Claim::Principal {
            role,
            principal_id,
            manufacturer,
        } => match &facts.principal {
            None => Ok(()),
            Some(p) if p.role != *role || p.manufacturer != *manufacturer => {
                Err(Error::AlreadyExists(format!(
                    "principal {principal_id} exists with another role or manufacturer"
                )))
            }
            Some(p) if p.state != SubjectState::Active => Err(Error::FailedPrecondition(format!(
                "principal {principal_id} is disabled"
            ))),
            Some(_) => Ok(()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn renewal(rekey: bool) -> Claim {
        Claim::Renewal {
            rekey_required: rekey,
            caller_serial: CertSerial::from_bytes(vec![1]),
        }
    }

    fn good_caller() -> ClaimFacts {
        ClaimFacts {
            caller: Some((CertState::Active, Some(SubjectState::Active))),
            ..Default::default()
        }
    }

    #[test]
    fn a_key_of_another_subject_or_a_compromised_key_is_refused_for_every_claim() {
        for claim in [Claim::Service, renewal(false)] {
            let other = ClaimFacts {
                key_bound_elsewhere: true,
                ..good_caller()
            };
            assert!(matches!(
                check(&claim, &other),
                Err(Error::AlreadyExists(_))
            ));
            let compromised = ClaimFacts {
                key_compromised: true,
                ..good_caller()
            };
            assert!(matches!(
                check(&claim, &compromised),
                Err(Error::PermissionDenied(_))
            ));
        }
    }

    #[test]
    fn a_renewal_needs_a_live_caller_and_a_new_key_when_rekey_is_required() {
        assert!(check(&renewal(true), &good_caller()).is_ok());
        let seen = ClaimFacts {
            key_seen: true,
            ..good_caller()
        };
        assert!(check(&renewal(false), &seen).is_ok());
        assert!(matches!(
            check(&renewal(true), &seen),
            Err(Error::FailedPrecondition(_))
        ));
        for caller in [
            None,
            Some((CertState::Revoked, Some(SubjectState::Active))),
            Some((CertState::Active, Some(SubjectState::Decommissioned))),
            Some((CertState::Active, None)),
        ] {
            let facts = ClaimFacts {
                caller,
                ..Default::default()
            };
            assert!(
                matches!(
                    check(&renewal(false), &facts),
                    Err(Error::Unauthenticated(_))
                ),
                "{caller:?}"
            );
        }
    }

    #[test]
    fn a_principal_is_reissued_only_with_its_role_scope_and_while_active() {
        let acme = ManufacturerId::parse("acme").unwrap();
        let claim = Claim::Principal {
            role: Role::Station,
            principal_id: "line-1".into(),
            manufacturer: Some(acme.clone()),
        };
        let with = |role, manufacturer, state| ClaimFacts {
            principal: Some(RecordedPrincipal {
                role,
                manufacturer,
                state,
            }),
            ..Default::default()
        };
        assert!(check(&claim, &ClaimFacts::default()).is_ok());
        assert!(check(
            &claim,
            &with(Role::Station, Some(acme.clone()), SubjectState::Active)
        )
        .is_ok());
        assert!(matches!(
            check(&claim, &with(Role::Gateway, None, SubjectState::Active)),
            Err(Error::AlreadyExists(_))
        ));
        assert!(matches!(
            check(
                &claim,
                &with(Role::Station, Some(acme), SubjectState::Disabled)
            ),
            Err(Error::FailedPrecondition(_))
        ));
    }

    #[test]
    fn a_serial_is_enrolled_once() {
        let claim = Claim::NewDevice {
            manufacturer: ManufacturerId::parse("acme").unwrap(),
            serial: DeviceSerial::parse("P-1").unwrap(),
            token_sha256: None,
        };
        assert!(check(&claim, &ClaimFacts::default()).is_ok());
        let taken = ClaimFacts {
            device_enrolled: true,
            ..Default::default()
        };
        assert!(matches!(
            check(&claim, &taken),
            Err(Error::AlreadyExists(_))
        ));
    }

    #[test]
    fn a_token_is_spent_once_and_before_it_expires() {
        let claim = Claim::NewDevice {
            manufacturer: ManufacturerId::parse("acme").unwrap(),
            serial: DeviceSerial::parse("P-1").unwrap(),
            token_sha256: Some("h".into()),
        };
        let now = time::macros::datetime!(2026-12-01 12:00 UTC);
        let token = |used_at, expires_at| ClaimFacts {
            token: Some(TokenFacts {
                used_at,
                expires_at,
                now,
            }),
            ..Default::default()
        };
        assert!(
            check(&claim, &token(None, now)).is_ok(),
            "valid until its end"
        );
        for facts in [
            ClaimFacts::default(),
            token(Some(now), now + time::Duration::hours(1)),
            token(None, now - time::Duration::seconds(1)),
        ] {
            assert!(
                matches!(check(&claim, &facts), Err(Error::PermissionDenied(_))),
                "{facts:?}"
            );
        }
    }
}
