//! EST (RFC 7030) decisions: which certificate an EST request gets, given the endpoint, the
//! optional label and who is calling; and the re-enrollment rule that the CSR names the same
//! subject as the certificate being renewed.
//!
//! These decide only what is EST-specific. Whether the caller may enroll a device or renew is
//! decided by the same functions as for gRPC ([`super::enrollment_scope`], [`super::authorize`],
//! [`super::lifecycle::renewal_for`]), which the service calls after routing.

use serde::Deserialize;

use super::csr::Names;
use crate::domain::{Gtin14, Model, Principal, Profile, Role};
use crate::error::Error;

/// The two EST enrollment operations medid serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EstOperation {
    /// `/simpleenroll`: a first certificate of a kind.
    SimpleEnroll,
    /// `/simplereenroll`: renewal of the certificate the client authenticated with.
    SimpleReenroll,
}

impl EstOperation {
    /// The audit action a request of this kind is recorded under: the same as the gRPC path
    /// that issues the same certificate.
    pub fn audit_action(self, who: &Principal) -> crate::audit::Action {
        match (self, who.role) {
            (EstOperation::SimpleEnroll, Role::Station) => crate::audit::Action::DeviceEnroll,
            _ => crate::audit::Action::CertificateRenew,
        }
    }
}

/// The certificate profile an EST label selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EstProfile {
    /// A device birth certificate, enrolled by a manufacturer's station.
    DeviceBirth,
    /// A device operational certificate, for a device holding its birth certificate (or
    /// renewing its operational one).
    DeviceOperational,
}

impl EstProfile {
    pub fn as_str(self) -> &'static str {
        match self {
            EstProfile::DeviceBirth => "device-birth",
            EstProfile::DeviceOperational => "device-operational",
        }
    }
}

/// An operator-defined label: `/.well-known/est/<label>/…` (docs/EST.md).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EstLabel {
    pub profile: EstProfile,
    /// For `device-birth`: the model the station enrolls under this label.
    pub model: Option<String>,
    /// For `device-birth`: the GS1 GTIN-14 UDI-DI written into birth certificates.
    pub udi_di: Option<String>,
}

impl EstLabel {
    /// Checks what TOML cannot: the model and UDI-DI parse and belong to a birth profile.
    pub fn validate(&self, name: &str) -> Result<(), Error> {
        if !valid_label(name) {
            return Err(Error::InvalidArgument(format!(
                "EST label {name:?} must be 1–64 characters of A–Z, a–z, 0–9, '-', '_' or '.'"
            )));
        }
        if self.profile != EstProfile::DeviceBirth
            && (self.model.is_some() || self.udi_di.is_some())
        {
            return Err(Error::InvalidArgument(format!(
                "EST label {name:?}: model and udi_di belong to profile \"device-birth\" only"
            )));
        }
        if let Some(m) = &self.model {
            Model::parse(m)?;
        }
        if let Some(g) = &self.udi_di {
            Gtin14::parse(g)?;
        }
        Ok(())
    }
}

/// A label as it may appear in a URL path segment.
pub fn valid_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name != "."
        && name != ".."
}

/// What an EST request is issued, once routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EstIssue {
    /// A birth certificate for the serial in the CSR's subject; the model from the label, or
    /// else the manufacturer's only registered model.
    Birth {
        model: Option<Model>,
        udi_di: Option<Gtin14>,
    },
    /// An operational certificate (devices) or a fresh gateway certificate, through the same
    /// renewal as gRPC's RequestOperationalCertificate. `reenroll` adds RFC 7030's rule that
    /// the CSR names the current certificate's subject.
    Renewal { reenroll: bool },
}

/// Routes an EST request: endpoint × label × the caller's credential → what is issued.
/// `label` is the configured label, already looked up (an unknown one is a 404 at the edge).
pub fn route(
    op: EstOperation,
    who: &Principal,
    label: Option<&EstLabel>,
) -> Result<EstIssue, Error> {
    let profile = label.map(|l| l.profile);
    let deny = |why: &str| {
        Err(Error::PermissionDenied(format!(
            "{} ({}, {} certificate) may not use EST {}: {why}",
            who.uri,
            who.role,
            who.certificate_profile,
            match op {
                EstOperation::SimpleEnroll => "simpleenroll",
                EstOperation::SimpleReenroll => "simplereenroll",
            }
        )))
    };
    let birth_credential =
        who.role == Role::Device && who.certificate_profile == Profile::DeviceBirth;
    match op {
        EstOperation::SimpleEnroll => match (who.role, profile) {
            (Role::Station, None | Some(EstProfile::DeviceBirth)) => {
                let label = label.cloned();
                let model = label
                    .as_ref()
                    .and_then(|l| l.model.as_deref())
                    .map(Model::parse)
                    .transpose()?;
                let udi_di = label
                    .as_ref()
                    .and_then(|l| l.udi_di.as_deref())
                    .map(Gtin14::parse)
                    .transpose()?;
                Ok(EstIssue::Birth { model, udi_di })
            }
            (Role::Station, Some(p)) => deny(&format!(
                "label profile {} issues to devices, not to stations",
                p.as_str()
            )),
            (Role::Device, None | Some(EstProfile::DeviceOperational)) if birth_credential => {
                Ok(EstIssue::Renewal { reenroll: false })
            }
            (Role::Device, Some(EstProfile::DeviceBirth)) => {
                deny("birth certificates are enrolled by the manufacturer's station")
            }
            (Role::Device, _) => deny(
                "a device holding an operational certificate renews it at /simplereenroll",
            ),
            _ => deny("only manufacturer stations (birth certificates) and devices holding a birth certificate (operational certificates) enroll over EST"),
        },
        EstOperation::SimpleReenroll => match (who.role, profile) {
            (Role::Device, None | Some(EstProfile::DeviceOperational)) if !birth_credential => {
                Ok(EstIssue::Renewal { reenroll: true })
            }
            (Role::Gateway, None) => Ok(EstIssue::Renewal { reenroll: true }),
            (Role::Device, Some(EstProfile::DeviceBirth)) | (Role::Gateway, Some(_)) => {
                deny("this label's profile is not renewed over EST")
            }
            (Role::Device, _) => deny(
                "a birth certificate is not renewed; enroll for an operational certificate at /simpleenroll",
            ),
            _ => deny("only devices and gateways re-enroll their own operational certificates"),
        },
    }
}

/// The model a birth certificate is enrolled under when the label names none: the
/// manufacturer's only registered model.
pub fn default_model(manufacturer_models: &[String]) -> Result<Model, Error> {
    match manufacturer_models {
        [only] => Model::parse(only),
        [] => Err(Error::InvalidArgument(
            "the manufacturer registered no models, so EST cannot tell which model this device is; enroll under a label that names the model (docs/EST.md)".into(),
        )),
        several => Err(Error::InvalidArgument(format!(
            "the manufacturer makes {} models ({}); enroll under a label that names the model (docs/EST.md)",
            several.len(),
            several.join(", ")
        ))),
    }
}

/// RFC 7030 §4.2.2: the re-enrollment CSR's Subject must be the current certificate's, and so
/// must its subjectAltNames. medid always re-issues with the current names (the CA decides
/// them), so a CSR that requests no subjectAltName is accepted; one that requests any must
/// request exactly the current set.
pub fn check_reenrollment(csr: &Names, current: &Names) -> Result<(), Error> {
    if csr.subject != current.subject {
        return Err(Error::InvalidArgument(format!(
            "re-enrollment must keep the subject: the CSR names {}, the current certificate {}",
            show_dn(&csr.subject),
            show_dn(&current.subject)
        )));
    }
    if !csr.subject_alt_names.is_empty() {
        let mut asked = csr.subject_alt_names.clone();
        let mut have = current.subject_alt_names.clone();
        asked.sort();
        have.sort();
        if asked != have {
            return Err(Error::InvalidArgument(format!(
                "re-enrollment must keep the subjectAltNames: the CSR asks for [{}], the current certificate has [{}]",
                asked.join(", "),
                have.join(", ")
            )));
        }
    }
    Ok(())
}

fn show_dn(dn: &[(String, String)]) -> String {
    if dn.is_empty() {
        return "an empty subject".into();
    }
    let parts: Vec<String> = dn
        .iter()
        .map(|(oid, v)| {
            let name = match oid.as_str() {
                "2.5.4.3" => "CN",
                "2.5.4.5" => "serialNumber",
                "2.5.4.6" => "C",
                "2.5.4.10" => "O",
                "2.5.4.11" => "OU",
                other => other,
            };
            format!("{name}={}", crate::domain::quote(v))
        })
        .collect();
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{DeviceSerial, ManufacturerId};

    fn who(role: Role, profile: Profile) -> Principal {
        Principal {
            uri: format!("spiffe://t/{role}"),
            role,
            manufacturer: Some(ManufacturerId::parse("acme").unwrap()),
            device_serial: (role == Role::Device).then(|| DeviceSerial::parse("D1").unwrap()),
            principal_id: None,
            certificate_serial: crate::domain::CertSerial::from_bytes(vec![1]),
            certificate_profile: profile,
        }
    }

    fn label(profile: EstProfile, model: Option<&str>) -> EstLabel {
        EstLabel {
            profile,
            model: model.map(str::to_owned),
            udi_di: None,
        }
    }

    #[test]
    fn routes_follow_the_callers_credential() {
        use EstOperation::*;
        let station = who(Role::Station, Profile::Principal);
        let birth = who(Role::Device, Profile::DeviceBirth);
        let op = who(Role::Device, Profile::DeviceOperational);
        let gateway = who(Role::Gateway, Profile::Principal);
        let auditor = who(Role::Auditor, Profile::Principal);
        assert_eq!(
            route(SimpleEnroll, &station, None).unwrap(),
            EstIssue::Birth {
                model: None,
                udi_di: None
            }
        );
        let px = label(EstProfile::DeviceBirth, Some("PX-200"));
        assert_eq!(
            route(SimpleEnroll, &station, Some(&px)).unwrap(),
            EstIssue::Birth {
                model: Some(Model::parse("PX-200").unwrap()),
                udi_di: None
            }
        );
        assert_eq!(
            route(SimpleEnroll, &birth, None).unwrap(),
            EstIssue::Renewal { reenroll: false }
        );
        assert_eq!(
            route(SimpleReenroll, &op, None).unwrap(),
            EstIssue::Renewal { reenroll: true }
        );
        assert_eq!(
            route(SimpleReenroll, &gateway, None).unwrap(),
            EstIssue::Renewal { reenroll: true }
        );
        let refused = [
            (SimpleEnroll, &op, None),
            (SimpleEnroll, &birth, Some(&px)),
            (SimpleEnroll, &gateway, None),
            (SimpleEnroll, &auditor, None),
            (
                SimpleEnroll,
                &station,
                Some(&label(EstProfile::DeviceOperational, None)),
            ),
            (SimpleReenroll, &birth, None),
            (SimpleReenroll, &station, None),
            (SimpleReenroll, &op, Some(&px)),
        ];
        for (op_, w, l) in refused {
            assert!(
                matches!(route(op_, w, l), Err(Error::PermissionDenied(_))),
                "{op_:?} {} {:?}",
                w.certificate_profile,
                l
            );
        }
    }

    #[test]
    fn the_default_model_is_the_only_one() {
        assert_eq!(
            default_model(&["PX-200".into()]).unwrap(),
            Model::parse("PX-200").unwrap()
        );
        assert!(matches!(default_model(&[]), Err(Error::InvalidArgument(_))));
        let err = default_model(&["A".into(), "B".into()]).unwrap_err();
        assert!(err.to_string().contains("A, B"), "{err}");
    }

    #[test]
    fn reenrollment_keeps_subject_and_names() {
        let dn = |v: &str| {
            vec![
                ("2.5.4.10".to_owned(), "Acme".to_owned()),
                ("2.5.4.5".into(), v.into()),
            ]
        };
        let current = Names {
            subject: dn("SN-1"),
            subject_alt_names: vec!["URI:spiffe://t/device/acme/SN-1".into()],
        };
        let mut csr = Names {
            subject: dn("SN-1"),
            subject_alt_names: vec![],
        };
        assert_eq!(check_reenrollment(&csr, &current), Ok(()));
        csr.subject_alt_names = current.subject_alt_names.clone();
        assert_eq!(check_reenrollment(&csr, &current), Ok(()));
        csr.subject_alt_names = vec!["URI:spiffe://t/device/acme/SN-2".into()];
        assert!(check_reenrollment(&csr, &current).is_err());
        csr.subject_alt_names.clear();
        csr.subject = dn("SN-2");
        let err = check_reenrollment(&csr, &current).unwrap_err();
        assert!(err.to_string().contains("serialNumber=\"SN-2\""), "{err}");
    }

    #[test]
    fn labels_are_path_segments() {
        assert!(valid_label("px-200_v1.2"));
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(65)] {
            assert!(!valid_label(bad), "{bad:?}");
        }
        assert!(label(EstProfile::DeviceOperational, Some("PX"))
            .validate("op")
            .is_err());
        assert!(label(EstProfile::DeviceBirth, Some("PX-200"))
            .validate("px")
            .is_ok());
    }
}
