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
    /// The certificate's role ("device", "gateway", …).
    pub role: &'a str,
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

/// Admins revoke anything; a station its own manufacturer's devices (keyCompromise,
/// cessationOfOperation, affiliationChanged); a device its own certificates (keyCompromise).
pub fn authorize_revocation(
    who: &Principal,
    target: RevocationTarget<'_>,
    reason: Option<RevocationReason>,
) -> Result<(), Error> {
    let deny = |why: &str| {
        Err(Error::PermissionDenied(format!(
            "{} ({}) may not certificate.revoke {}: {why}",
            who.uri, who.role, target.subject_uri
        )))
    };
    match who.role {
        Role::Admin => Ok(()),
        Role::Station => {
            let own = who.manufacturer.as_ref().map(|m| m.as_str());
            if target.role != Role::Device.as_str() || target.manufacturer != own {
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
            certificate_serial: "01".into(),
            certificate_profile: "principal".into(),
        }
    }

    const DEV: &str = "spiffe://t/device/acme/D";

    fn device_target(m: &str) -> RevocationTarget<'_> {
        RevocationTarget {
            role: "device",
            subject_uri: DEV,
            manufacturer: Some(m),
        }
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
            role: "gateway",
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
