//! Issuing-CA rollover (docs/DEPLOYMENT.md "Rolling over an issuing CA"). `medid ca rotate`
//! writes the next generation of an issuing CA into the PKI directory; the running service
//! loads it at its next upkeep (or start), records it with a `ca.rollover` event, signs its
//! first CRL and issues its OCSP responder, and signs every new certificate with it from then
//! on. Older generations stay in service, with their CRLs, OCSP responders and places in the
//! trust bundle and the TLS verifier, until their own certificates end: nothing they signed
//! outlives them.

use super::Ca;
use crate::audit::{Actor, AuditEvent, Target};
use crate::domain::PkiPart;
use crate::error::Error;
use crate::issuance::{IssuerId, IssuerInfo, IssuerName};
use crate::store::PkiBinding;

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
                PkiPart::Root | PkiPart::AuditSigningKey | PkiPart::RootCrl => continue,
            };
            let id = IssuerId { name, generation };
            let info = self.authority.issuer_cert(id)?;
            let event = AuditEvent::new(
                self.clock.now(),
                Actor::system(),
                crate::audit::Action::CaRollover,
                Target::ca(&id.label()),
            )
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

    /// Records the root CRL in service once: a `ca.root.crl` event with its number, validity
    /// and the issuing-CA generations it revokes. A generation it revokes leaves service (its
    /// CRL, OCSP responder and places in the trust bundle and the TLS verifier), so the TLS
    /// verifier is rebuilt without it before this returns.
    pub(super) async fn record_root_crl(&self) -> Result<(), Error> {
        let Some(crl) = self.authority.root_crl() else {
            return Ok(());
        };
        let fingerprint = crate::domain::PkiFingerprint {
            part: PkiPart::RootCrl,
            sha256: crate::service::fingerprint(&crl.der),
        };
        if self.store.pki_binding().await?.contains(&fingerprint) {
            return Ok(());
        }
        let revoked: Vec<IssuerId> = self
            .authority
            .issuers()
            .into_iter()
            .map(|i| i.id)
            .filter(|id| self.authority.revoked_by_root(*id).is_some())
            .collect();
        let event = AuditEvent::new(
            self.clock.now(),
            Actor::system(),
            crate::audit::Action::CaRootCrl,
            Target::ca("root"),
        )
        .with("number", crl.number as i64)
        .with("this_update", crl.this_update.unix_timestamp())
        .with("next_update", crl.next_update.unix_timestamp())
        .with("entries", crl.entries.len() as i64)
        .with(
            "revoked_issuers",
            revoked
                .iter()
                .map(|id| id.label())
                .collect::<Vec<_>>()
                .join(","),
        )
        .with("crl_sha256", fingerprint.sha256.clone());
        if self
            .store
            .bind_pki(std::slice::from_ref(&fingerprint), &event)
            .await?
        {
            for id in &revoked {
                tracing::warn!(issuer = %id, "the root CA revoked issuing CA {id}: out of service");
            }
            tracing::info!(number = crl.number, "recorded the root CA's CRL");
        }
        let generation = self.crls.signed();
        self.crls.wait_applied(generation).await;
        Ok(())
    }

    /// Every CA certificate in service: the root, and each issuing-CA generation in service,
    /// with whether it is the current one and whether the service warns about it (the root or
    /// a current generation ending within `ca_expiry_warning`; an older generation ending
    /// after a rollover is expected). What `warn_ca_expiry` logs and `/metrics` exports.
    pub fn ca_lifetimes(&self) -> Vec<CaLifetime> {
        let now = self.clock.now();
        let root = self.authority.root().not_after;
        let mut all = vec![(String::from("root"), CaStanding::Root, root)];
        for info in self.issuers_in_service() {
            let standing = if self.authority.current(info.id.name).id == info.id {
                CaStanding::Current
            } else {
                CaStanding::Previous
            };
            all.push((info.id.label(), standing, info.not_after));
        }
        let watched: Vec<(&str, time::OffsetDateTime)> = all
            .iter()
            .filter(|(_, standing, _)| *standing != CaStanding::Previous)
            .map(|(ca, _, end)| (ca.as_str(), *end))
            .collect();
        let warned: Vec<(String, i64)> =
            crate::policy::profile::ending_soon(&watched, now, self.ca_expiry_warning)
                .into_iter()
                .map(|(ca, days)| (ca.to_owned(), days))
                .collect();
        all.into_iter()
            .map(|(ca, standing, not_after)| {
                let days_left = warned.iter().find(|(w, _)| *w == ca).map(|(_, d)| *d);
                CaLifetime {
                    ca,
                    standing,
                    not_after,
                    days_left_when_warned: days_left,
                }
            })
            .collect()
    }

    /// Logs a warning for each CA certificate [`Ca::ca_lifetimes`] warns about, and for a
    /// root CRL whose nextUpdate is within `ca_expiry_warning` (with the root key online,
    /// upkeep re-signs it long before).
    pub fn warn_ca_expiry(&self) {
        if let Some(crl) = self.authority.root_crl() {
            let days_left = (crl.next_update - self.clock.now()).whole_days();
            if crl.next_update - self.clock.now() < self.ca_expiry_warning {
                tracing::warn!(
                    days_left,
                    "the root CA's CRL reaches its nextUpdate in {days_left} days; sign the next one with `medid ca sign-root-crl` where the root key is kept"
                );
            }
        }
        for life in self.ca_lifetimes() {
            let Some(days_left) = life.days_left_when_warned else {
                continue;
            };
            let ca = life.ca.as_str();
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

/// Where a CA certificate stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaStanding {
    Root,
    /// The generation of its issuing CA that signs new certificates.
    Current,
    /// An older generation, still answering for what it signed.
    Previous,
}

impl CaStanding {
    pub fn as_str(self) -> &'static str {
        match self {
            CaStanding::Root => "root",
            CaStanding::Current => "current",
            CaStanding::Previous => "previous",
        }
    }
}

/// One CA certificate in service and the service's view of its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaLifetime {
    /// `root`, or an issuing-CA generation's label.
    pub ca: String,
    pub standing: CaStanding,
    pub not_after: time::OffsetDateTime,
    /// Whole days left, when the service warns about it.
    pub days_left_when_warned: Option<i64>,
}
