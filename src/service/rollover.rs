//! Issuing-CA rollover (docs/DEPLOYMENT.md "Rolling over an issuing CA"). `medid ca rotate`
//! writes the next generation of an issuing CA into the PKI directory; the running service
//! loads it at its next upkeep (or start), records it with a `ca.rollover` event, signs its
//! first CRL and issues its OCSP responder, and signs every new certificate with it from then
//! on. Older generations stay in service, with their CRLs, OCSP responders and places in the
//! trust bundle and the TLS verifier, until their own certificates end: nothing they signed
//! outlives them.

use super::Ca;
use crate::audit::{Actor, AuditEvent};
use crate::domain::PkiPart;
use crate::error::Error;
use crate::issuance::{IssuerId, IssuerInfo, IssuerName};

impl Ca {
    /// Loads the issuing-CA generations written since the last look and puts each in service.
    /// Returns them.
    pub async fn load_new_generations(&self) -> Result<Vec<IssuerInfo>, Error> {
        let added = self.authority.refresh()?;
        if added.is_empty() {
            return Ok(added);
        }
        self.record_rollovers().await?;
        for info in &added {
            tracing::info!(
                issuer = %info.id,
                not_after = %info.not_after,
                "loaded issuing CA {}; it signs every new certificate from now on",
                info.id
            );
            self.publish_crl(info.id).await?;
        }
        self.ensure_ocsp_responders().await?;
        Ok(added)
    }

    /// Records each issuing-CA generation after the first that the database does not know yet,
    /// one `ca.rollover` event each. The authority loaded it only because the root signed it.
    pub(super) async fn record_rollovers(&self) -> Result<(), Error> {
        let recorded = self.store.pki_binding().await?;
        for (fingerprint, generation) in self.authority.fingerprints() {
            if generation == 1 || recorded.contains(&fingerprint) {
                continue;
            }
            let name = match fingerprint.part {
                PkiPart::DeviceIdentityCa => IssuerName::DeviceIdentity,
                PkiPart::OperationalCa => IssuerName::Operational,
                PkiPart::Root | PkiPart::AuditSigningKey => continue,
            };
            let id = IssuerId { name, generation };
            let info = self.authority.issuer_cert(id)?;
            let event =
                AuditEvent::new(self.clock.now(), Actor::system(), "ca.rollover", id.label())
                    .with("issuer", id.label())
                    .with("generation", i64::from(generation))
                    .with("certificate_sha256", fingerprint.sha256.clone())
                    .with("not_after", info.not_after.unix_timestamp());
            if self
                .store
                .bind_pki(std::slice::from_ref(&fingerprint), &event)
                .await?
            {
                tracing::info!(issuer = %id, "recorded the rollover to issuing CA {id}");
            }
        }
        Ok(())
    }

    /// Logs a warning when the root or the current generation of an issuing CA ends within
    /// `ca_expiry_warning` (an older generation ending after a rollover is expected).
    pub fn warn_ca_expiry(&self) {
        let current = [
            self.authority.current(IssuerName::DeviceIdentity),
            self.authority.current(IssuerName::Operational),
        ];
        let labels: Vec<String> = current.iter().map(|i| i.id.label()).collect();
        let mut cas = vec![("root", self.authority.root().not_after)];
        for (info, label) in current.iter().zip(&labels) {
            cas.push((label.as_str(), info.not_after));
        }
        let now = self.clock.now();
        for (ca, days_left) in
            crate::policy::profile::ending_soon(&cas, now, self.ca_expiry_warning)
        {
            let hint = IssuerId::parse(ca).map_or(String::new(), |id| {
                format!(
                    "; roll it over with `medid ca rotate --issuer {}`",
                    id.name.as_str()
                )
            });
            tracing::warn!(
                ca,
                days_left,
                "the {ca} CA certificate ends in {days_left} days; every certificate it signed ends with it{hint}"
            );
        }
    }
}
