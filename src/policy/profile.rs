//! Certificate profiles (DESIGN.md table): what each kind of certificate contains.
//! The CA decides every field from the registry; the CSR contributes only its public key.

use std::net::IpAddr;

use time::{Duration, OffsetDateTime};

use crate::domain::{
    CertSerial, DeviceSerial, Gtin14, ManufacturerId, PrincipalId, PrincipalRole, TrustDomain,
};
use crate::issuance::{
    CertificateTemplate, Eku, IssuerId, IssuerInfo, SubjectName, SubjectPublicKey,
};

/// IEEE 802.1AR: an IDevID has no well-defined expiry, GeneralizedTime 99991231235959Z.
pub fn no_well_defined_expiry() -> OffsetDateTime {
    time::macros::datetime!(9999-12-31 23:59:59 UTC)
}

/// The CA certificates of `cas` (name, notAfter) that end within `lead` of `now`, with the
/// whole days left (0 when already ended). Those with no well-defined expiry never warn.
pub fn ending_soon<'a>(
    cas: &[(&'a str, OffsetDateTime)],
    now: OffsetDateTime,
    lead: Duration,
) -> Vec<(&'a str, i64)> {
    cas.iter()
        .filter(|(_, end)| *end != no_well_defined_expiry() && now + lead >= *end)
        .map(|(name, end)| (*name, (*end - now).whole_days().max(0)))
        .collect()
}

#[cfg(test)]
mod ending_soon_tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn only_finite_cas_within_the_lead_warn_and_the_last_day_counts_zero() {
        let now = datetime!(2030-01-01 00:00 UTC);
        let cas = [
            ("root", no_well_defined_expiry()),
            ("operational", datetime!(2030-06-01 00:00 UTC)),
            ("old", datetime!(2030-01-01 12:00 UTC)),
        ];
        assert_eq!(
            ending_soon(&cas, now, Duration::days(180)),
            vec![("operational", 151), ("old", 0)]
        );
        assert_eq!(
            ending_soon(&cas, now, Duration::days(100)),
            vec![("old", 0)]
        );
    }
}

/// How far notBefore is set in the past, so a device whose clock is a little slow can use a
/// fresh certificate at once.
pub const BACKDATE: Duration = Duration::minutes(5);

/// Who a birth certificate names.
#[derive(Debug, Clone, Copy)]
pub struct BirthSubject<'a> {
    pub manufacturer: &'a ManufacturerId,
    /// The manufacturer's display name, written as the subject's O.
    pub manufacturer_name: &'a str,
    pub serial: &'a DeviceSerial,
    /// UDI-DI, written as a GS1 Digital Link URI SAN.
    pub udi_di: Option<&'a Gtin14>,
}

/// The settings profiles depend on, from configuration.
#[derive(Debug, Clone)]
pub struct ProfileSettings {
    pub trust_domain: TrustDomain,
    /// Base of the CRL, OCSP and CA-certificate URLs written into certificates.
    pub public_base_url: String,
    /// Lifetime of station, gateway, auditor and admin certificates.
    pub principal_lifetime: Duration,
    /// Lifetime of the service's own TLS certificate.
    pub server_lifetime: Duration,
    /// Lifetime of device operational (LDevID-style) certificates.
    pub operational_lifetime: Duration,
    /// Device models whose operational certificates carry SDC Participant Key Purposes.
    pub sdc_models: Vec<SdcModel>,
    /// The host names gateways serve under (`[[gateway_hosts]]`).
    pub gateway_names: Vec<GatewayNames>,
}

/// The DNS names and addresses one gateway's certificates carry beside its URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayNames {
    pub id: PrincipalId,
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
}

/// Which IEEE 11073 SDC participant roles a device's operational certificate names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SdcRoles {
    pub provider: bool,
    pub consumer: bool,
}

/// One device model of one manufacturer and the SDC roles its devices take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdcModel {
    pub manufacturer: ManufacturerId,
    pub model: String,
    pub roles: SdcRoles,
}

/// Lifetime of a delegated OCSP responder certificate; replaced at 2/3 of it.
pub const OCSP_RESPONDER_LIFETIME: Duration = Duration::days(30);

/// Validity of a finite certificate: backdated, exact (notAfter − notBefore + 1 s = lifetime,
/// RFC 5280 §4.1.2.5 is inclusive), never past the issuer's notAfter.
pub fn finite_validity(
    now: OffsetDateTime,
    lifetime: Duration,
    issuer_not_after: OffsetDateTime,
) -> (OffsetDateTime, OffsetDateTime) {
    let not_before = now - BACKDATE;
    let not_after = (not_before + lifetime - Duration::SECOND).min(issuer_not_after);
    (not_before, not_after)
}

impl ProfileSettings {
    fn urls(&self, issuer: IssuerId) -> (Option<String>, Option<String>, Option<String>) {
        let base = self.public_base_url.trim_end_matches('/');
        let name = issuer.label();
        (
            Some(format!("{base}/crl/{name}.crl")),
            Some(format!("{base}/ocsp/{name}")),
            Some(format!("{base}/ca/{name}.der")),
        )
    }

    fn template(
        &self,
        issuer: IssuerId,
        serial: CertSerial,
        validity: (OffsetDateTime, OffsetDateTime),
        public_key: SubjectPublicKey,
    ) -> CertificateTemplate {
        let (crl_url, ocsp_url, ca_issuers_url) = self.urls(issuer);
        CertificateTemplate {
            issuer,
            serial,
            subject: SubjectName::default(),
            san_uris: vec![],
            san_dns: vec![],
            san_ips: vec![],
            not_before: validity.0,
            not_after: validity.1,
            ekus: vec![Eku::ClientAuth],
            crl_url,
            ocsp_url,
            ca_issuers_url,
            ocsp_nocheck: false,
            public_key,
        }
    }

    /// Device birth certificate (IEEE 802.1AR IDevID style), from the device-identity CA.
    pub fn device_birth(
        &self,
        serial: CertSerial,
        now: OffsetDateTime,
        issuer: IssuerInfo,
        device: &BirthSubject<'_>,
        public_key: SubjectPublicKey,
    ) -> CertificateTemplate {
        let BirthSubject {
            manufacturer,
            manufacturer_name,
            serial: device_serial,
            udi_di,
        } = *device;
        // No well-defined expiry (IEEE 802.1AR), or the device-identity CA's end where an
        // existing root gave it one.
        let validity = (
            now - BACKDATE,
            no_well_defined_expiry().min(issuer.not_after),
        );
        let mut t = self.template(issuer.id, serial, validity, public_key);
        t.subject = SubjectName {
            organization: Some(manufacturer_name.to_owned()),
            serial_number: Some(device_serial.as_str().to_owned()),
            ..SubjectName::default()
        };
        t.san_uris
            .push(self.trust_domain.device_uri(manufacturer, device_serial));
        if let Some(gtin) = udi_di {
            // GS1 Digital Link: UDI-DI (01) + serial (21); never lot, expiry or patient data.
            t.san_uris.push(format!(
                "https://id.gs1.org/01/{}/21/{}",
                gtin.as_str(),
                crate::domain::percent_encode(device_serial.as_str())
            ));
        }
        t
    }

    /// Device operational certificate (LDevID style), from the operational CA: the same
    /// subject serialNumber and device URI as the birth certificate, short-lived.
    pub fn device_operational(
        &self,
        serial: CertSerial,
        now: OffsetDateTime,
        issuer: IssuerInfo,
        device: &BirthSubject<'_>,
        sdc: SdcRoles,
        public_key: SubjectPublicKey,
    ) -> CertificateTemplate {
        let validity = finite_validity(now, self.operational_lifetime, issuer.not_after);
        let mut t = self.template(issuer.id, serial, validity, public_key);
        t.subject = SubjectName {
            organization: Some(device.manufacturer_name.to_owned()),
            serial_number: Some(device.serial.as_str().to_owned()),
            ..SubjectName::default()
        };
        t.san_uris.push(
            self.trust_domain
                .device_uri(device.manufacturer, device.serial),
        );
        // IEEE 11073-20701 §9.3: the SDC Participant Key Purposes beside serverAuth and
        // clientAuth, for the models configured.
        t.ekus = vec![Eku::ClientAuth, Eku::ServerAuth];
        if sdc.provider {
            t.ekus.push(Eku::SdcServiceProvider);
        }
        if sdc.consumer {
            t.ekus.push(Eku::SdcServiceConsumer);
        }
        t
    }

    /// The SDC roles of `model` of `manufacturer` (none unless configured).
    pub fn sdc_roles(&self, manufacturer: &ManufacturerId, model: &str) -> SdcRoles {
        self.sdc_models
            .iter()
            .find(|m| &m.manufacturer == manufacturer && m.model == model)
            .map(|m| m.roles)
            .unwrap_or_default()
    }

    /// A delegated OCSP responder certificate for `issuer` (RFC 6960 §4.2.2.2): EKU
    /// OCSPSigning only, id-pkix-ocsp-nocheck, no CRL or OCSP pointers of its own.
    pub fn ocsp_responder(
        &self,
        serial: CertSerial,
        now: OffsetDateTime,
        issuer: IssuerInfo,
        public_key: SubjectPublicKey,
    ) -> CertificateTemplate {
        let validity = finite_validity(now, OCSP_RESPONDER_LIFETIME, issuer.not_after);
        let mut t = self.template(issuer.id, serial, validity, public_key);
        t.subject = SubjectName {
            organization: Some(self.trust_domain.as_str().to_owned()),
            common_name: Some(format!("medid OCSP responder ({})", issuer.id)),
            ..SubjectName::default()
        };
        t.ekus = vec![Eku::OcspSigning];
        t.ocsp_nocheck = true;
        t.crl_url = None;
        t.ocsp_url = None;
        t
    }

    /// Station, gateway, auditor or admin certificate, from the operational CA.
    pub fn principal(
        &self,
        serial: CertSerial,
        now: OffsetDateTime,
        issuer: IssuerInfo,
        role: &PrincipalRole,
        id: &PrincipalId,
        public_key: SubjectPublicKey,
    ) -> CertificateTemplate {
        let validity = finite_validity(now, self.principal_lifetime, issuer.not_after);
        let mut t = self.template(issuer.id, serial, validity, public_key);
        t.subject = SubjectName {
            organization: match role {
                PrincipalRole::Station(m) => Some(m.to_string()),
                _ => None,
            },
            organizational_unit: Some(role.role().as_str().to_owned()),
            common_name: Some(id.to_string()),
            serial_number: None,
        };
        t.san_uris.push(self.trust_domain.principal_uri(role, id));
        if matches!(role, PrincipalRole::Gateway) {
            t.ekus.push(Eku::ServerAuth);
            if let Some(names) = self.gateway_names.iter().find(|g| &g.id == id) {
                t.san_dns = names.dns.clone();
                t.san_ips = names.ips.clone();
            }
        }
        t
    }

    /// The service's own TLS server certificate, from the operational CA.
    pub fn server(
        &self,
        serial: CertSerial,
        now: OffsetDateTime,
        issuer: IssuerInfo,
        dns_names: &[String],
        ips: &[IpAddr],
        public_key: SubjectPublicKey,
    ) -> CertificateTemplate {
        let validity = finite_validity(now, self.server_lifetime, issuer.not_after);
        let mut t = self.template(issuer.id, serial, validity, public_key);
        t.subject = SubjectName {
            common_name: Some("medid service".into()),
            ..SubjectName::default()
        };
        t.san_uris.push(format!(
            "spiffe://{}/service/medid",
            self.trust_domain.as_str()
        ));
        t.san_dns = dns_names.to_vec();
        t.san_ips = ips.to_vec();
        t.ekus = vec![Eku::ServerAuth];
        t
    }
}

/// When a certificate should be renewed: at 2/3 of its lifetime (notAfter − notBefore + 1 s),
/// counted from notBefore (linkerd `refresh_in`; DESIGN.md "device operational").
pub fn renew_after(not_before: OffsetDateTime, not_after: OffsetDateTime) -> OffsetDateTime {
    let lifetime = not_after - not_before + Duration::SECOND;
    not_before + lifetime * 2 / 3
}

/// Where a certificate stands in its rotation at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationState {
    /// Before the renewal window.
    Fresh,
    /// In the renewal window: renew now.
    Due,
    /// Past notAfter: the device missed its renewal.
    Expired,
}

pub fn rotation_state(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    now: OffsetDateTime,
) -> RotationState {
    if now > not_after {
        RotationState::Expired
    } else if now >= renew_after(not_before, not_after) {
        RotationState::Due
    } else {
        RotationState::Fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn renewal_window_opens_at_two_thirds_and_closes_at_the_last_second() {
        // 7-day certificate: lifetime 604800 s, window opens at 403200 s = 4 days 16 hours.
        let nb = datetime!(2026-01-01 00:00:00 UTC);
        let na = nb + Duration::days(7) - Duration::SECOND;
        let opens = renew_after(nb, na);
        assert_eq!(opens, datetime!(2026-01-05 16:00:00 UTC));
        assert_eq!(
            rotation_state(nb, na, opens - Duration::SECOND),
            RotationState::Fresh
        );
        assert_eq!(rotation_state(nb, na, opens), RotationState::Due);
        assert_eq!(
            rotation_state(nb, na, na),
            RotationState::Due,
            "last valid second"
        );
        assert_eq!(
            rotation_state(nb, na, na + Duration::SECOND),
            RotationState::Expired
        );
    }

    #[test]
    fn finite_validity_is_exact_and_inclusive() {
        let now = datetime!(2026-01-01 00:00:00 UTC);
        let far = datetime!(2099-01-01 00:00:00 UTC);
        let (nb, na) = finite_validity(now, Duration::days(90), far);
        assert_eq!(na - nb + Duration::SECOND, Duration::days(90));
        assert_eq!(nb, datetime!(2025-12-31 23:55:00 UTC));
    }

    #[test]
    fn finite_validity_never_outlives_the_issuer() {
        let now = datetime!(2026-01-01 00:00:00 UTC);
        let issuer_end = datetime!(2026-02-01 00:00:00 UTC);
        let (_, na) = finite_validity(now, Duration::days(90), issuer_end);
        assert_eq!(na, issuer_end);
    }
}
