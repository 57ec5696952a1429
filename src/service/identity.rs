//! The service's own certificates: its TLS server certificate and its delegated OCSP
//! responders. Each is recorded and audited like any certificate (OCSP `good`, revocable,
//! listed by ListExpiring), renewed by the running service at 2/3 of its lifetime with a new
//! key, and kept on disk (key 0600) so a restart reuses it while it is fresh. The certificate a
//! renewal replaces is revoked as superseded.

use std::net::IpAddr;
use std::path::Path;

use time::OffsetDateTime;

use super::Ca;
use crate::audit::{Actor, AuditEvent, Target};
use crate::domain::{CertSerial, CertState, Profile, Role};
use crate::error::Error;
use crate::issuance::bootstrap::write_public;
use crate::issuance::{IssuerId, IssuerName, ServiceKey};
use crate::policy::profile::{renew_after, OCSP_RESPONDER_LIFETIME};
use crate::store::certificates::{
    fingerprint, AdoptedCertificate, Claim, Completion, NewCertificate,
};
use crate::store::CertificateLedger;

/// A service certificate found on disk.
struct OnDisk {
    der: Vec<u8>,
    serial: CertSerial,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    dns: Vec<String>,
    ips: Vec<IpAddr>,
    /// The key file holds the certificate's key.
    key: Option<ServiceKey>,
}

/// Reads a certificate file (leaf first) and its key file. `None` when the certificate is
/// missing or unreadable.
fn on_disk(cert: &Path, key: &Path) -> Option<OnDisk> {
    let pem = std::fs::read(cert).ok()?;
    let der = crate::pem::parse_certificates(&pem)
        .ok()?
        .into_iter()
        .next()?
        .to_vec();
    let (_, c) = x509_parser::parse_x509_certificate(&der).ok()?;
    let (mut dns, mut ips) = (Vec::new(), Vec::new());
    if let Ok(Some(san)) = c.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(d) => dns.push((*d).to_owned()),
                x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                    4 => ips.push(IpAddr::from(<[u8; 4]>::try_from(*b).ok()?)),
                    16 => ips.push(IpAddr::from(<[u8; 16]>::try_from(*b).ok()?)),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    let key = ServiceKey::load(key).ok().filter(|k| k.certified_by(&der));
    Some(OnDisk {
        serial: CertSerial::from_bytes(c.raw_serial().to_vec()),
        not_before: c.validity().not_before.to_datetime(),
        not_after: c.validity().not_after.to_datetime(),
        dns,
        ips,
        key,
        der,
    })
}

impl Ca {
    /// When the service's own certificates end: its TLS server certificate as on disk now
    /// (`tls-server`, absent when unreadable) and the OCSP responder of each issuing-CA
    /// generation in service (`ocsp-responder/<issuer>`).
    pub fn service_certificate_ends(&self) -> Vec<(String, time::OffsetDateTime)> {
        let mut ends = Vec::new();
        let server = std::fs::read(&self.pki.server_cert)
            .ok()
            .and_then(|pem| crate::pem::parse_certificates(&pem).ok())
            .and_then(|certs| certs.into_iter().next())
            .and_then(|der| {
                x509_parser::parse_x509_certificate(&der)
                    .ok()
                    .map(|(_, c)| c.validity().not_after.to_datetime())
            });
        if let Some(end) = server {
            ends.push(("tls-server".to_owned(), end));
        }
        for info in self.issuers_in_service() {
            if let Some(end) = self.authority.ocsp_responder_not_after(info.id) {
                ends.push((format!("ocsp-responder/{}", info.id.label()), end));
            }
        }
        ends
    }

    fn server_subject(&self) -> String {
        format!(
            "spiffe://{}/service/medid",
            self.profiles.trust_domain.as_str()
        )
    }

    fn responder_subject(&self, issuer: IssuerId) -> String {
        format!(
            "spiffe://{}/service/ocsp/{issuer}",
            self.profiles.trust_domain.as_str(),
        )
    }

    /// Records a service certificate found on disk that the store does not know (the one
    /// `ca init` signed before any database existed). Returns whether it is active.
    async fn recorded_active(
        &self,
        disk: &OnDisk,
        profile: Profile,
        subject_uri: &str,
    ) -> Result<bool, Error> {
        let fp = fingerprint(&disk.der);
        if let Some(peer) = self.store.peer_by_fingerprint(&fp).await? {
            return Ok(peer.status == CertState::Active);
        }
        let Some(issuer) = self.authority.issuer_of_certificate(&disk.der) else {
            return Err(Error::FailedPrecondition(format!(
                "the service certificate {subject_uri} (serial {}) is not signed by an issuing CA of this PKI",
                disk.serial
            )));
        };
        let adopted = AdoptedCertificate {
            issuer,
            serial: disk.serial.clone(),
            profile,
            role: Role::Service,
            subject_uri: subject_uri.to_owned(),
            spki_sha256: disk
                .key
                .as_ref()
                .map(ServiceKey::spki_sha256)
                .unwrap_or_default(),
            not_before: disk.not_before,
            not_after: disk.not_after,
            der: disk.der.clone(),
        };
        let event = AuditEvent::new(
            self.clock.now(),
            Actor::system(),
            crate::audit::Action::ServiceCertificateAdopt,
            Target::uri(subject_uri),
        )
        .with("profile", profile.as_str())
        .with("serial", disk.serial.clone())
        .with("certificate_sha256", fp);
        self.store
            .adopt_certificate(&adopted, &Completion::Service { replaces: None }, &event)
            .await?;
        tracing::info!(
            uri = subject_uri,
            serial = %disk.serial,
            "recorded the service's {profile} certificate"
        );
        Ok(true)
    }

    /// Issues one of the service's certificates through the full cycle, replacing `replaces`.
    /// Also returns the issuers whose CRLs now carry the replaced certificate.
    async fn issue_service(
        &self,
        template: crate::issuance::CertificateTemplate,
        key: &ServiceKey,
        profile: Profile,
        subject_uri: String,
        action: crate::audit::Action,
        replaces: Option<CertSerial>,
    ) -> Result<(super::Issued, Vec<crate::issuance::IssuerId>), Error> {
        let new = NewCertificate {
            template,
            profile,
            role: Role::Service,
            subject_uri,
            spki_sha256: key.spki_sha256(),
            claim: Claim::Service,
        };
        let (issued, recorded) = self
            .run_cycle(
                &Actor::system(),
                action,
                new,
                Completion::Service { replaces },
            )
            .await
            // Recorded as a failure of the system's issuance; start-up and upkeep report it.
            .map_err(super::Refused::into_error)?;
        Ok((issued, recorded.superseded))
    }

    /// Checks the TLS server certificate on disk and renews it when it is due (2/3 of its
    /// life), expired, revoked, or its key file does not match; the new files are written and
    /// `tls_renewals` tells the TLS layer to load them. Returns whether it renewed. A
    /// certificate the store does not know is recorded first.
    pub async fn ensure_server_certificate(&self) -> Result<bool, Error> {
        let (cert_path, key_path) = (&self.pki.server_cert, &self.pki.server_key);
        let disk = on_disk(cert_path, key_path).ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "{} is missing or unreadable; run `medid ca init` or restore it",
                cert_path.display()
            ))
        })?;
        let subject = self.server_subject();
        let active = self
            .recorded_active(&disk, Profile::Server, &subject)
            .await?;
        let now = self.clock.now();
        // Due at two thirds of its life, or at once when the root revoked its issuer.
        let issuer_revoked = self
            .authority
            .issuer_of_certificate(&disk.der)
            .is_some_and(|id| self.authority.revoked_by_root(id).is_some());
        let due = now >= renew_after(disk.not_before, disk.not_after) || issuer_revoked;
        if active && !due && disk.key.is_some() {
            return Ok(false);
        }
        let key = ServiceKey::generate()?;
        let template = self.profiles.server(
            crate::issuance::random_serial(),
            now,
            self.authority.current(IssuerName::Operational),
            &disk.dns,
            &disk.ips,
            key.public_key(),
        );
        let (issued, superseded) = self
            .issue_service(
                template,
                &key,
                Profile::Server,
                subject,
                crate::audit::Action::ServiceCertificateRenew,
                active.then(|| disk.serial.clone()),
            )
            .await?;
        // The key first: a crash between the two writes leaves a pair that does not match,
        // which the next start detects and replaces.
        key.write(key_path)?;
        let mut pem = crate::pem::certificate(&issued.der);
        for ca in &issued.chain {
            pem.push_str(&crate::pem::certificate(ca));
        }
        write_public(cert_path, &pem)?;
        tracing::info!(
            serial = issued.serial,
            not_after = %issued.not_after,
            replaced = %disk.serial,
            "renewed the service's TLS certificate"
        );
        self.tls_renewals.send_modify(|generation| *generation += 1);
        self.publish_crls_of(superseded).await?;
        Ok(true)
    }

    /// Installs a delegated OCSP responder for each issuing CA generation in service: the one
    /// kept on disk while it is recorded, active and before 2/3 of its life, otherwise a new
    /// one issued through the full cycle (the one it replaces revoked as superseded) and
    /// written to disk. Each generation's responder is signed by that generation's key
    /// (RFC 6960 §4.2.2.2).
    pub async fn ensure_ocsp_responders(&self) -> Result<(), Error> {
        let now = self.clock.now();
        for info in self.issuers_in_service() {
            let issuer = info.id;
            let fresh = self
                .authority
                .ocsp_responder_not_after(issuer)
                .is_some_and(|end| now < renew_after(end - OCSP_RESPONDER_LIFETIME, end));
            if fresh {
                continue;
            }
            let (cert_path, key_path) = self.pki.ocsp_responder(issuer);
            let subject = self.responder_subject(issuer);
            let disk = on_disk(&cert_path, &key_path);
            let mut replaces = None;
            if let Some(disk) = disk {
                let active = self
                    .store
                    .peer_by_fingerprint(&fingerprint(&disk.der))
                    .await?
                    .is_some_and(|p| p.status == CertState::Active && p.subject_uri == subject);
                let reusable = now < renew_after(disk.not_before, disk.not_after);
                match disk.key {
                    Some(key) if active && reusable => {
                        self.authority.install_ocsp_responder(
                            issuer,
                            key,
                            disk.der.into(),
                            disk.not_after,
                        );
                        tracing::info!(
                            issuer = %issuer,
                            serial = %disk.serial,
                            "reusing the OCSP responder kept on disk"
                        );
                        continue;
                    }
                    _ if active => replaces = Some(disk.serial),
                    _ => {}
                }
            }
            let key = ServiceKey::generate()?;
            let template = self.profiles.ocsp_responder(
                crate::issuance::random_serial(),
                now,
                info,
                key.public_key(),
            );
            let (issued, superseded) = self
                .issue_service(
                    template,
                    &key,
                    Profile::OcspResponder,
                    subject,
                    crate::audit::Action::OcspResponderIssue,
                    replaces,
                )
                .await?;
            key.write(&key_path)?;
            write_public(&cert_path, &crate::pem::certificate(&issued.der))?;
            self.authority.install_ocsp_responder(
                issuer,
                key,
                issued.der.clone().into(),
                issued.not_after,
            );
            tracing::info!(
                issuer = %issuer,
                serial = issued.serial,
                "installed OCSP responder"
            );
            self.publish_crls_of(superseded).await?;
        }
        Ok(())
    }
}
