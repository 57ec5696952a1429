//! The registration authority: pure decisions. Who may do what ([`authorize`]), which CSRs and
//! keys are acceptable ([`csr`]), and what each certificate profile contains ([`profile`]).
//!
//! Nothing here performs I/O or touches a private key; every function is a function of its
//! arguments, so every rule is unit-testable with pinned inputs.

pub mod anomaly;
pub mod belonging;
pub mod claim;
pub mod crl;
pub mod csr;
pub mod est;
pub mod lifecycle;
pub mod profile;

use crate::domain::{ManufacturerId, Model, Principal, Role};
use crate::error::Error;

pub use csr::{KeyKind, VerifiedCsr};

/// What a caller asks to do, with the scope the decision depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    CreateManufacturer,
    ListManufacturers,
    IssuePrincipalCertificate,
    EnrollDevice {
        manufacturer: &'a ManufacturerId,
    },
    ReadDevices {
        manufacturer: &'a ManufacturerId,
    },
    ListDevices,
    /// Read a device's rotation status; `device_uri` lets a device read its own.
    ReadRotation {
        manufacturer: &'a ManufacturerId,
        device_uri: &'a str,
    },
    ListExpiring,
    /// Ask whether a certificate is good: gateways deciding about a device, admins, auditors.
    CertificateStatus,
    /// Public material, for any authenticated caller.
    TrustBundle,
    GetCrl,
    CreateToken {
        manufacturer: &'a ManufacturerId,
    },
    Decommission {
        manufacturer: &'a ManufacturerId,
    },
    /// Report device-data access: gateways only.
    ReportAccess,
    /// Read the signed checkpoint: admins, auditors, gateways.
    ReadCheckpoint,
    /// Read an inclusion or consistency proof: admins, auditors, gateways.
    ReadProof,
    /// Export the audit trail: auditors only.
    ExportAudit,
    /// Search the audit trail: auditors only.
    QueryAudit,
}

impl Action<'_> {
    /// The kind of audit event this action records.
    pub fn audit(&self) -> crate::audit::Action {
        use crate::audit::Action as A;
        match self {
            Action::CreateManufacturer => A::ManufacturerCreate,
            Action::ListManufacturers => A::ManufacturerList,
            Action::IssuePrincipalCertificate => A::PrincipalIssue,
            Action::EnrollDevice { .. } => A::DeviceEnroll,
            Action::ReadDevices { .. } => A::DeviceRead,
            Action::ListDevices => A::DeviceList,
            Action::ReadRotation { .. } => A::DeviceRotationRead,
            Action::ListExpiring => A::CertificateExpiringList,
            Action::CertificateStatus => A::CertificateStatus,
            Action::TrustBundle => A::TrustBundle,
            Action::GetCrl => A::CrlGet,
            Action::CreateToken { .. } => A::TokenCreate,
            Action::Decommission { .. } => A::DeviceDecommission,
            Action::ReportAccess => A::DataAccess,
            Action::ReadCheckpoint => A::AuditCheckpointRead,
            Action::ReadProof => A::AuditProofRead,
            Action::ExportAudit => A::AuditExport,
            Action::QueryAudit => A::AuditQuery,
        }
    }

    /// Who may, when only some roles may: said in the refusal.
    fn only(&self) -> Option<&'static str> {
        match self {
            Action::ReportAccess => Some("only gateways report device-data access"),
            Action::ReadCheckpoint | Action::ReadProof => {
                Some("only admins, auditors and gateways read audit checkpoints or proofs")
            }
            Action::ExportAudit | Action::QueryAudit => {
                Some("only auditors export or search the audit trail")
            }
            _ => None,
        }
    }
}

/// How far ahead of medid's clock a reported access may be (clock skew).
pub const ACCESS_FUTURE_SKEW: time::Duration = time::Duration::minutes(5);

/// A reported device-data access is accepted only if it happened at most `max_age` before
/// `now` and at most [`ACCESS_FUTURE_SKEW`] after it, inclusive at both ends.
pub fn check_access_time(
    occurred_at: time::OffsetDateTime,
    now: time::OffsetDateTime,
    max_age: time::Duration,
) -> Result<(), Error> {
    let (earliest, latest) = (now - max_age, now + ACCESS_FUTURE_SKEW);
    if occurred_at >= earliest && occurred_at <= latest {
        return Ok(());
    }
    Err(Error::InvalidArgument(format!(
        "occurred_at ({} s since 1970) is outside the accepted window: not before {} ({} days back) and not after {} (5 minutes ahead)",
        occurred_at.unix_timestamp(),
        earliest.unix_timestamp(),
        max_age.whole_days(),
        latest.unix_timestamp(),
    )))
}

/// Decides whether `who` may perform `action`. Roles are checked on every call.
pub fn authorize(who: &Principal, action: Action<'_>) -> Result<(), Error> {
    let allowed = match (who.role, action) {
        // Separation of duties: devices are enrolled by a manufacturer's station only; only
        // gateways report what happens to device data, and only auditors read the trail of
        // it, so an admin cannot both act and erase the record of acting.
        (Role::Admin, Action::EnrollDevice { .. })
        | (Role::Admin, Action::ReportAccess)
        | (Role::Admin, Action::ExportAudit | Action::QueryAudit) => false,
        (Role::Gateway, Action::ReportAccess) => true,
        (Role::Auditor, Action::ExportAudit | Action::QueryAudit) => true,
        (
            Role::Admin | Role::Auditor | Role::Gateway,
            Action::ReadCheckpoint | Action::ReadProof,
        ) => true,
        (Role::Admin, _) => true,
        (Role::Station, Action::EnrollDevice { manufacturer })
        | (Role::Station, Action::ReadDevices { manufacturer }) => {
            who.manufacturer.as_ref() == Some(manufacturer)
        }
        (Role::Station, Action::ListDevices) => true,
        (Role::Station, Action::ReadRotation { manufacturer, .. })
        | (Role::Station, Action::CreateToken { manufacturer })
        | (Role::Station, Action::Decommission { manufacturer }) => {
            who.manufacturer.as_ref() == Some(manufacturer)
        }
        (Role::Device, Action::ReadRotation { device_uri, .. }) => who.uri == device_uri,
        (Role::Gateway | Role::Auditor, Action::CertificateStatus) => true,
        // Compliance review reads the inventory it audits: devices, their rotation and the
        // certificates about to end; auditors change nothing.
        (
            Role::Auditor,
            Action::ReadDevices { .. }
            | Action::ListDevices
            | Action::ReadRotation { .. }
            | Action::ListExpiring,
        ) => true,
        (Role::Service | Role::Unrecorded, _) => false,
        (_, Action::TrustBundle | Action::GetCrl) => true,
        _ => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(denial(who, action))
    }
}

fn denial(who: &Principal, action: Action<'_>) -> Error {
    let scope = match action {
        Action::EnrollDevice { manufacturer }
        | Action::ReadDevices { manufacturer }
        | Action::ReadRotation { manufacturer, .. }
        | Action::CreateToken { manufacturer }
        | Action::Decommission { manufacturer } => {
            format!(" for manufacturer {manufacturer}")
        }
        _ => String::new(),
    };
    let only = action.only().map(|o| format!(": {o}")).unwrap_or_default();
    Error::PermissionDenied(format!(
        "{} ({}) may not {}{scope}{only}",
        who.uri,
        who.role,
        action.audit()
    ))
}

/// The manufacturer filter a device listing runs with: admins see what they ask for,
/// a station sees only its own manufacturer's devices.
pub fn device_list_scope(
    who: &Principal,
    requested: Option<ManufacturerId>,
) -> Result<Option<ManufacturerId>, Error> {
    match who.role {
        Role::Admin => Ok(requested),
        Role::Station => {
            let own = who.manufacturer.clone().ok_or_else(|| {
                Error::Internal(format!("station {} has no manufacturer", who.uri))
            })?;
            match requested {
                Some(m) if m != own => Err(denial(who, Action::ReadDevices { manufacturer: &m })),
                _ => Ok(Some(own)),
            }
        }
        Role::Auditor => authorize(who, Action::ListDevices).map(|_| requested),
        _ => authorize(who, Action::ListDevices).map(|_| None),
    }
}

/// The manufacturer a caller enrolls devices for: a station's own; nobody else enrolls.
pub fn enrollment_scope(who: &Principal) -> Result<ManufacturerId, Error> {
    match (who.role, &who.manufacturer) {
        (Role::Station, Some(m)) => Ok(m.clone()),
        _ => Err(Error::PermissionDenied(format!(
            "{} ({}) may not device.enroll: only manufacturer stations enroll devices",
            who.uri, who.role
        ))),
    }
}

/// A manufacturer enrolls only the models it registered (none registered: any model).
pub fn check_model_allowed(
    manufacturer: &ManufacturerId,
    allowed_models: &[String],
    model: &Model,
) -> Result<(), Error> {
    if allowed_models.is_empty() || allowed_models.iter().any(|m| m == model.as_str()) {
        Ok(())
    } else {
        Err(Error::PermissionDenied(format!(
            "model {} is not among manufacturer {manufacturer}'s allowed models ({})",
            crate::domain::quote(model.as_str()),
            allowed_models.join(", ")
        )))
    }
}

#[cfg(test)]
mod access_time_tests {
    use super::*;
    use time::{Duration, OffsetDateTime};

    #[test]
    fn access_times_are_accepted_to_the_second_inside_the_window_only() {
        let now = OffsetDateTime::UNIX_EPOCH + Duration::days(20_000);
        let age = Duration::days(30);
        assert!(check_access_time(now, now, age).is_ok());
        assert!(check_access_time(now + ACCESS_FUTURE_SKEW, now, age).is_ok());
        assert!(check_access_time(now + ACCESS_FUTURE_SKEW + Duration::SECOND, now, age).is_err());
        assert!(check_access_time(now - age, now, age).is_ok());
        assert!(check_access_time(now - age - Duration::SECOND, now, age).is_err());
        let year_one = OffsetDateTime::from_unix_timestamp(-62_135_596_800).unwrap();
        assert!(matches!(
            check_access_time(year_one, now, age),
            Err(Error::InvalidArgument(_))
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::DeviceSerial;

    fn principal(role: Role, manufacturer: Option<&str>) -> Principal {
        Principal {
            uri: format!("spiffe://t/{role}"),
            role,
            manufacturer: manufacturer.map(|m| ManufacturerId::parse(m).unwrap()),
            device_serial: (role == Role::Device).then(|| DeviceSerial::parse("D1").unwrap()),
            principal_id: None,
            certificate_serial: crate::domain::CertSerial::from_bytes(vec![1]),
            certificate_profile: crate::domain::Profile::Principal,
        }
    }

    #[test]
    fn station_enrolls_only_for_its_own_manufacturer() {
        let acme = ManufacturerId::parse("acme").unwrap();
        let other = ManufacturerId::parse("other").unwrap();
        let station = principal(Role::Station, Some("acme"));
        assert!(authorize(
            &station,
            Action::EnrollDevice {
                manufacturer: &acme
            }
        )
        .is_ok());
        assert!(matches!(
            authorize(
                &station,
                Action::EnrollDevice {
                    manufacturer: &other
                }
            ),
            Err(Error::PermissionDenied(_))
        ));
    }

    #[test]
    fn only_admins_manage_manufacturers_and_principals() {
        for role in [Role::Station, Role::Gateway, Role::Auditor, Role::Device] {
            let p = principal(role, Some("acme"));
            for action in [
                Action::CreateManufacturer,
                Action::ListManufacturers,
                Action::IssuePrincipalCertificate,
            ] {
                assert!(authorize(&p, action).is_err(), "{role} {action:?}");
            }
        }
        let admin = principal(Role::Admin, None);
        assert!(authorize(&admin, Action::CreateManufacturer).is_ok());
    }

    #[test]
    fn station_listing_is_narrowed_to_its_manufacturer() {
        let station = principal(Role::Station, Some("acme"));
        let acme = ManufacturerId::parse("acme").unwrap();
        assert_eq!(
            device_list_scope(&station, None).unwrap(),
            Some(acme.clone())
        );
        assert_eq!(
            device_list_scope(&station, Some(acme.clone())).unwrap(),
            Some(acme)
        );
        let other = ManufacturerId::parse("other").unwrap();
        assert!(device_list_scope(&station, Some(other)).is_err());
        assert!(device_list_scope(&principal(Role::Gateway, None), None).is_err());
    }

    #[test]
    fn auditors_read_the_inventory_and_change_nothing() {
        let auditor = principal(Role::Auditor, None);
        let acme = ManufacturerId::parse("acme").unwrap();
        for action in [
            Action::ListDevices,
            Action::ReadDevices {
                manufacturer: &acme,
            },
            Action::ReadRotation {
                manufacturer: &acme,
                device_uri: "spiffe://x/device/acme/1",
            },
            Action::ListExpiring,
        ] {
            assert!(authorize(&auditor, action).is_ok(), "{action:?}");
        }
        for action in [
            Action::EnrollDevice {
                manufacturer: &acme,
            },
            Action::Decommission {
                manufacturer: &acme,
            },
            Action::CreateToken {
                manufacturer: &acme,
            },
            Action::ReportAccess,
        ] {
            assert!(authorize(&auditor, action).is_err(), "{action:?}");
        }
        assert_eq!(
            device_list_scope(&auditor, Some(acme.clone())).unwrap(),
            Some(acme)
        );
    }

    /// The ledger's roles, as a table: who reports access, who reads checkpoints and proofs,
    /// who exports and searches; every other role is refused, with who may in the message.
    #[test]
    fn ledger_actions_follow_the_separation_of_duties() {
        let roles = [
            Role::Admin,
            Role::Station,
            Role::Gateway,
            Role::Auditor,
            Role::Device,
            Role::Service,
        ];
        let table: [(Action<'_>, &[Role]); 5] = [
            (Action::ReportAccess, &[Role::Gateway]),
            (
                Action::ReadCheckpoint,
                &[Role::Admin, Role::Auditor, Role::Gateway],
            ),
            (
                Action::ReadProof,
                &[Role::Admin, Role::Auditor, Role::Gateway],
            ),
            (Action::ExportAudit, &[Role::Auditor]),
            (Action::QueryAudit, &[Role::Auditor]),
        ];
        for (action, allowed) in table {
            for role in roles {
                let got = authorize(&principal(role, Some("acme")), action);
                if allowed.contains(&role) {
                    assert!(got.is_ok(), "{role} {action:?}");
                } else {
                    let Err(Error::PermissionDenied(m)) = got else {
                        panic!("{role} {action:?}: {got:?}");
                    };
                    assert!(m.contains(": only "), "{m}");
                }
            }
        }
    }
}
