//! Lifecycle decisions: who may renew, revoke, decommission; what a renewal gets.

use crate::domain::{Principal, RevocationReason, Role};
use crate::error::Error;

/// Renewal rules from configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LifecyclePolicy {
    /// A renewal must certify a key never certified before for that subject.
    pub rekey_required: bool,
    /// Older operational certificates are revoked (superseded) when a new one is issued.
    pub revoke_superseded: bool,
}

impl Default for LifecyclePolicy {
    fn default() -> Self {
        Self {
            rekey_required: true,
            revoke_superseded: false,
        }
    }
}

/// What a caller of RequestOperationalCertificate gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// A device (by its birth or a current operational certificate): an operational certificate.
    DeviceOperational,
    /// A gateway: a fresh gateway certificate, so gateways rotate with `medid agent` too.
    Gateway,
}

pub fn renewal_for(who: &Principal) -> Result<Renewal, Error> {
    match who.role {
        Role::Device => Ok(Renewal::DeviceOperational),
        Role::Gateway => Ok(Renewal::Gateway),
        role => Err(Error::PermissionDenied(format!(
            "{} ({role}) may not certificate.renew: only devices and gateways renew their own certificates",
            who.uri
        ))),
    }
}

/// The certificate a revocation names, as far as the decision needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevocationTarget<'a> {
    /// How the request named it (`certificate/"…"`, `device/…`): what a denial quotes, so it
    /// never names a subject the caller may not see.
    pub named: &'a str,
    /// The certificate's role.
    pub role: Role,
    pub subject_uri: &'a str,
    /// The device's or station's manufacturer.
    pub manufacturer: Option<&'a str>,
}

/// Reasons a manufacturer station may give for its own devices' certificates.
const STATION_REASONS: [RevocationReason; 3] = [
    RevocationReason::KeyCompromise,
    RevocationReason::CessationOfOperation,
    RevocationReason::AffiliationChanged,
];

/// The refusal of a revocation, naming the request as the caller wrote it.
pub fn revocation_denied(who: &Principal, named: &str, why: &str) -> Error {
    Error::PermissionDenied(format!(
        "{} ({}) may not certificate.revoke {named}: {why}",
        who.uri, who.role
    ))
}

/// Whether `who`'s role revokes at all; decided before anything is looked up.
pub fn may_revoke(who: &Principal, named: &str) -> Result<(), Error> {
    match who.role {
        Role::Admin | Role::Station | Role::Device => Ok(()),
        _ => Err(revocation_denied(
            who,
            named,
            "only admins, manufacturer stations and devices revoke",
        )),
    }
}

/// Evicting a principal (revoking all it holds and disabling it) is for admins only.
pub fn authorize_eviction(who: &Principal, uri: &str) -> Result<(), Error> {
    match who.role {
        Role::Admin => Ok(()),
        _ => Err(Error::PermissionDenied(format!(
            "{} ({}) may not principal.evict {uri}: only admins evict principals",
            who.uri, who.role
        ))),
    }
}

/// What a station or device is told when its target does not exist: the same as when it is
/// not its own, so existence cannot be probed. Admins are told it is not there.
pub fn missing_revocation_target(who: &Principal, named: &str) -> Error {
    match who.role {
        Role::Station => revocation_denied(
            who,
            named,
            "stations revoke only their own manufacturer's devices",
        ),
        Role::Device => revocation_denied(who, named, "a device revokes only its own certificates"),
        _ => Error::NotFound(format!("{named}: no such certificate or device")),
    }
}

/// Admins revoke anything; a station its own manufacturer's devices (keyCompromise,
/// cessationOfOperation, affiliationChanged); a device its own certificates (keyCompromise).
pub fn authorize_revocation(
    who: &Principal,
    target: RevocationTarget<'_>,
    reason: Option<RevocationReason>,
) -> Result<(), Error> {
    let deny = |why: &str| Err(revocation_denied(who, target.named, why));
    match who.role {
        Role::Admin => Ok(()),
        Role::Station => {
            let own = who.manufacturer.as_ref().map(|m| m.as_str());
            if target.role != Role::Device || target.manufacturer != own {
                return deny("stations revoke only their own manufacturer's devices");
            }
            match reason {
                Some(r) if STATION_REASONS.contains(&r) => Ok(()),
                _ => deny(
                    "a station gives keyCompromise, cessationOfOperation or affiliationChanged",
                ),
            }
        }
        Role::Device => {
            if target.subject_uri != who.uri {
                return deny("a device revokes only its own certificates");
            }
            match reason {
                Some(RevocationReason::KeyCompromise) => Ok(()),
                _ => deny("a device revokes its own certificates for keyCompromise only"),
            }
        }
        _ => deny("only admins, manufacturer stations and devices revoke"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{DeviceSerial, ManufacturerId};

    fn who(role: Role, uri: &str, m: Option<&str>) -> Principal {
        Principal {
            uri: uri.into(),
            role,
            manufacturer: m.map(|m| ManufacturerId::parse(m).unwrap()),
            device_serial: (role == Role::Device).then(|| DeviceSerial::parse("D").unwrap()),
            principal_id: None,
            certificate_serial: crate::domain::CertSerial::from_bytes(vec![1]),
            certificate_profile: crate::domain::Profile::Principal,
        }
    }

    const DEV: &str = "spiffe://t/device/acme/D";

    fn device_target(m: &str) -> RevocationTarget<'_> {
        RevocationTarget {
            named: "certificate/\"01\"",
            role: Role::Device,
            subject_uri: DEV,
            manufacturer: Some(m),
        }
    }

    #[test]
    fn a_denied_revocation_quotes_the_request_never_the_foreign_subject() {
        let d = who(Role::Device, "spiffe://t/device/acme/E", Some("acme"));
        let err = authorize_revocation(
            &d,
            device_target("acme"),
            Some(RevocationReason::KeyCompromise),
        )
        .unwrap_err();
        assert!(!err.to_string().contains(DEV), "{err}");
        assert!(err.to_string().contains("certificate/\"01\""), "{err}");
        assert_eq!(missing_revocation_target(&d, "certificate/\"01\""), err);
    }

    #[test]
    fn stations_revoke_their_devices_with_three_reasons_only() {
        let s = who(
            Role::Station,
            "spiffe://t/manufacturer/acme/station/1",
            Some("acme"),
        );
        for r in STATION_REASONS {
            assert!(authorize_revocation(&s, device_target("acme"), Some(r)).is_ok());
        }
        assert!(authorize_revocation(
            &s,
            device_target("acme"),
            Some(RevocationReason::Superseded)
        )
        .is_err());
        assert!(authorize_revocation(&s, device_target("acme"), None).is_err());
        assert!(authorize_revocation(
            &s,
            device_target("other"),
            Some(RevocationReason::KeyCompromise)
        )
        .is_err());
        let gateway = RevocationTarget {
            named: "certificate/\"01\"",
            role: Role::Gateway,
            subject_uri: "spiffe://t/gateway/g",
            manufacturer: None,
        };
        assert!(authorize_revocation(&s, gateway, Some(RevocationReason::KeyCompromise)).is_err());
    }

    #[test]
    fn devices_revoke_only_themselves_for_key_compromise() {
        let d = who(Role::Device, DEV, Some("acme"));
        assert!(authorize_revocation(
            &d,
            device_target("acme"),
            Some(RevocationReason::KeyCompromise)
        )
        .is_ok());
        assert!(authorize_revocation(
            &d,
            device_target("acme"),
            Some(RevocationReason::CessationOfOperation)
        )
        .is_err());
        let other = RevocationTarget {
            subject_uri: "spiffe://t/device/acme/E",
            ..device_target("acme")
        };
        assert!(authorize_revocation(&d, other, Some(RevocationReason::KeyCompromise)).is_err());
    }

    #[test]
    fn gateways_and_auditors_never_revoke() {
        for role in [Role::Gateway, Role::Auditor] {
            let p = who(role, "spiffe://t/x", None);
            assert!(authorize_revocation(
                &p,
                device_target("acme"),
                Some(RevocationReason::KeyCompromise)
            )
            .is_err());
        }
    }

    #[test]
    fn only_devices_and_gateways_renew() {
        assert_eq!(
            renewal_for(&who(Role::Device, DEV, Some("acme"))).unwrap(),
            Renewal::DeviceOperational
        );
        assert_eq!(
            renewal_for(&who(Role::Gateway, "g", None)).unwrap(),
            Renewal::Gateway
        );
        assert!(renewal_for(&who(Role::Admin, "a", None)).is_err());
    }
}
