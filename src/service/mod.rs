//! The use cases, each written as the numbered steps of `docs/ISSUANCE-CYCLE.md`: policy
//! decides, the store reserves and records, issuance signs, and every outcome (success or
//! refusal) leaves exactly one audit event describing it.
//!
//! `mod.rs` holds the shared cycle and the registry use cases; `enroll.rs` factory and token
//! enrollment; `lifecycle.rs` renewal, revocation, decommissioning and rotation;
//! `publish.rs` CRLs, OCSP, certificate status and the trust bundle.

pub mod anomaly;
pub mod anonymous;
pub mod archive;
pub mod counters;
mod enroll;
mod est;
pub mod feed;
pub mod fsck;
mod identity;
pub mod inventory;
pub mod ledger;
mod lifecycle;
pub mod ocsp_cache;
pub mod publish;
mod restore;
pub mod rollover;

pub use enroll::{EnrollInput, NewToken};
pub use lifecycle::{RevokeTarget, RotationStatus};
pub use publish::{CertificateStatusQuery, StatusAnswer, TrustBundle};
pub use restore::kept_crl_dir;

use std::net::IpAddr;
use std::sync::Arc;

use time::{Duration, OffsetDateTime};

use anonymous::AnonymousReason;

use crate::audit::{Action as AuditAction, Actor, AuditEvent, Target};
use crate::clock::Clock;
use crate::domain::{
    CertState, DeviceSerial, ManufacturerId, Model, Principal, PrincipalId, PrincipalRole, Profile,
};
use crate::error::Error;
use crate::issuance::{Authority, CertificateTemplate, IssuerId, IssuerName, SignedCertificate};
use crate::policy::{self, lifecycle::LifecyclePolicy, profile::ProfileSettings, Action};
use crate::store::certificates::{
    fingerprint, Claim, Completion, NewCertificate, PeerRecord, Recorded,
};
use crate::store::registry::{DeviceQuery, DeviceRecord, ManufacturerRecord};
use crate::store::{AuditLog, MerkleLog, Registry, Store};
use crate::store::{CertificateLedger, PkiBinding};

/// The steps of the issuance cycle a crash test may stop the process at.
pub const CRASH_POINTS: [&str; 2] = ["after-sign", "after-commit"];

/// How a caller names an issuing CA: by name, by generation, by both or by neither.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IssuerFilter {
    pub name: Option<IssuerName>,
    pub generation: Option<u32>,
}

/// A refusal that has been recorded: its one audit event written, or, for a caller that is not
/// authenticated, counted for the aggregated event. Every use case a caller reaches returns
/// `Result<_, Refused>`, and only [`Ca::refuse`] and its kin make one, so a use case cannot
/// hand back an error without recording it: a bare `?` on an [`Error`] does not compile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(Error);

impl Refused {
    pub fn error(&self) -> &Error {
        &self.0
    }

    pub fn into_error(self) -> Error {
        self.0
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Refused {}

/// The CA service: what the gRPC edge calls once it has parsed a request.
pub struct Ca {
    pub store: Store,
    pub authority: Arc<Authority>,
    pub clock: Arc<dyn Clock>,
    pub profiles: ProfileSettings,
    pub lifecycle: LifecyclePolicy,
    /// CRL nextUpdate − thisUpdate.
    pub crl_validity: Duration,
    /// Tells the TLS layer about every CRL signed, and hears when its verifier has it.
    pub crls: publish::CrlSignal,
    /// The audit ledger's checkpoint signer and schedule.
    pub ledger: ledger::Ledger,
    /// TESTS ONLY (`dangerous_crash_at`): abort at this step of the issuance cycle.
    pub dangerous_crash_at: Option<String>,
    /// Manufacturers already read. Manufacturer rows are never changed or deleted (there is
    /// no API for it), so a cached one is never stale; an update API must invalidate this.
    pub manufacturer_cache:
        std::sync::RwLock<std::collections::HashMap<ManufacturerId, ManufacturerRecord>>,
    /// Rate limits and aggregated audit of unauthenticated refusals.
    pub anonymous: anonymous::AnonymousRefusals,
    /// Signed OCSP answers for reuse, and the budget of fresh signatures.
    pub ocsp_cache: ocsp_cache::OcspCache,
    /// The ATNA feeds to Audit Record Repositories configured (syslog, RESTful).
    pub atna: Vec<Arc<feed::AtnaFeed>>,
    /// A reported device-data access older than this is refused.
    pub access_max_age: Duration,
    /// The access-anomaly rules' thresholds (`[anomaly]`).
    pub anomaly: crate::policy::anomaly::Thresholds,
    /// Where the service's own credentials live (its TLS certificate, OCSP responders).
    pub pki: crate::issuance::bootstrap::PkiFiles,
    /// From this long before a CA certificate ends, the service warns.
    pub ca_expiry_warning: Duration,
    /// Bumped each time the TLS server certificate on disk is renewed; the TLS layer loads it.
    pub tls_renewals: tokio::sync::watch::Sender<u64>,
    /// Issuance and refusals, for `/metrics`.
    pub counters: counters::Counters,
}

/// A new manufacturer, validated.
#[derive(Debug, Clone)]
pub struct NewManufacturer {
    pub id: ManufacturerId,
    pub display_name: String,
    pub allowed_models: Vec<Model>,
}

/// A certificate handed back to a caller, with its chain.
#[derive(Debug, Clone)]
pub struct Issued {
    pub der: Vec<u8>,
    pub chain: Vec<Vec<u8>>,
    pub root: Vec<u8>,
    pub serial: String,
    pub subject_uri: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Ca {
    /// A registered manufacturer, from the cache or the store.
    pub async fn manufacturer(&self, id: &ManufacturerId) -> Result<ManufacturerRecord, Error> {
        if let Some(m) = self
            .manufacturer_cache
            .read()
            .expect("manufacturer cache lock is never poisoned")
            .get(id)
        {
            return Ok(m.clone());
        }
        let m = self.store.manufacturer(id).await?;
        self.manufacturer_cache
            .write()
            .expect("manufacturer cache lock is never poisoned")
            .insert(id.clone(), m.clone());
        Ok(m)
    }

    /// The audit target of a device named by manufacturer and serial, parsed or not.
    pub fn device_target(&self, manufacturer: &str, serial: &str) -> Target {
        Target::device(&self.profiles.trust_domain, manufacturer, serial)
    }

    fn event(&self, who: &Principal, action: AuditAction, target: Target) -> AuditEvent {
        self.actor_event(&Actor::of(who), action, target)
    }

    fn actor_event(&self, actor: &Actor, action: AuditAction, target: Target) -> AuditEvent {
        AuditEvent::new(self.clock.now(), actor.clone(), action, target)
    }

    /// Records the refusal of a request: its one audit event. The refusal itself changes
    /// nothing, so a failure to write its event is logged and the refusal still stands.
    pub async fn refuse(
        &self,
        who: &Principal,
        action: AuditAction,
        target: &Target,
        err: Error,
    ) -> Refused {
        self.refuse_as(&Actor::of(who), action, target, err).await
    }

    /// [`Ca::refuse`] for an actor that is not an authenticated principal (a token holder).
    pub async fn refuse_as(
        &self,
        actor: &Actor,
        action: AuditAction,
        target: &Target,
        err: Error,
    ) -> Refused {
        let event = self
            .actor_event(actor, action, target.clone())
            .refused(&err);
        self.counters.refused(action, &err);
        if let Err(audit_err) = self.store.record_event(&event).await {
            tracing::error!(error = %audit_err, %action, "could not record refusal event");
        }
        Refused(err)
    }

    /// `result`, its error recorded as a refusal of `action` on `target` by `who`.
    pub async fn audited<T>(
        &self,
        who: &Principal,
        action: AuditAction,
        target: &Target,
        result: Result<T, Error>,
    ) -> Result<T, Refused> {
        self.audited_as(&Actor::of(who), action, target, result)
            .await
    }

    /// [`Ca::audited`] for an actor that is not an authenticated principal.
    pub async fn audited_as<T>(
        &self,
        actor: &Actor,
        action: AuditAction,
        target: &Target,
        result: Result<T, Error>,
    ) -> Result<T, Refused> {
        match result {
            Ok(v) => Ok(v),
            Err(e) => Err(self.refuse_as(actor, action, target, e).await),
        }
    }

    /// Maps a TLS peer certificate to a principal by looking it up in the store: unknown,
    /// revoked, expired or inactive → UNAUTHENTICATED. These refusals come from callers that
    /// are not authenticated, so they are rate-limited per `source` and audited in aggregate
    /// (`service::anonymous`), not one event each.
    pub async fn authenticate(
        &self,
        peer_der: Option<&[u8]>,
        source: IpAddr,
    ) -> Result<Principal, Refused> {
        let Some(der) = peer_der else {
            return Err(self.refuse_without_certificate(source));
        };
        let found = self.store.peer_by_fingerprint(&fingerprint(der)).await;
        match found.map_err(|e| self.failed_before_identity(e))? {
            Some(peer) => self.principal_of(peer).map_err(|e| {
                self.refuse_anonymous(source, AnonymousReason::InactiveCertificate, e)
            }),
            None => Err(self.refuse_anonymous(
                source,
                AnonymousReason::UnknownCertificate,
                Error::Unauthenticated(
                    "the client certificate is not one medid issued and recorded".into(),
                ),
            )),
        }
    }

    /// Refuses at once (RESOURCE_EXHAUSTED) an unauthenticated request from a source that is
    /// over its refusal rate; the refusal is counted.
    pub fn admit_anonymous(&self, source: IpAddr) -> Result<(), Refused> {
        if self.anonymous.admit(source, self.clock.now()) {
            Ok(())
        } else {
            Err(Refused(Error::ResourceExhausted(format!(
                "too many unauthenticated requests from {source}; slow down and retry"
            ))))
        }
    }

    /// Refuses a caller that sent no client certificate to a service that takes no principal
    /// of its own (health, reflection): rate-limited and counted like any unauthenticated
    /// refusal.
    pub fn refuse_without_certificate(&self, source: IpAddr) -> Refused {
        if let Err(limited) = self.admit_anonymous(source) {
            return limited;
        }
        self.refuse_anonymous(
            source,
            AnonymousReason::NoCertificate,
            Error::Unauthenticated("a client certificate is required".into()),
        )
    }

    /// Counts an unauthenticated refusal for the aggregated audit.
    fn refuse_anonymous(&self, source: IpAddr, reason: AnonymousReason, err: Error) -> Refused {
        self.anonymous.refused(source, reason, self.clock.now());
        Refused(err)
    }

    /// A failure inside medid before the caller is known (the store unreachable while
    /// looking up its certificate or token): there is no actor to record, and the store that
    /// would hold the event is what failed, so it is logged and counted, not audited.
    fn failed_before_identity(&self, err: Error) -> Refused {
        tracing::warn!(error = %err, "a request failed before its caller was identified");
        self.counters
            .refused(AuditAction::AuthRefusedAggregate, &err);
        Refused(err)
    }

    /// Writes the aggregated events of unauthenticated refusals counted since the last call.
    pub async fn flush_anonymous_refusals(&self) -> Result<usize, Error> {
        self.anonymous
            .flush(self.clock.now(), |events| async move {
                self.store.record_events(&events).await.map(|_| ())
            })
            .await
    }

    fn principal_of(&self, peer: PeerRecord) -> Result<Principal, Error> {
        let now = self.clock.now();
        let serial = &peer.serial;
        if peer.status != CertState::Active {
            return Err(Error::Unauthenticated(format!(
                "certificate {serial} is {}",
                peer.status
            )));
        }
        if now > peer.not_after {
            return Err(Error::Unauthenticated(format!(
                "certificate {serial} expired at {}",
                peer.not_after
            )));
        }
        if now < peer.not_before {
            return Err(Error::Unauthenticated(format!(
                "certificate {serial} is not valid before {}",
                peer.not_before
            )));
        }
        match peer.subject_state {
            Some(crate::domain::SubjectState::Active) => {}
            Some(state) => {
                return Err(Error::Unauthenticated(format!(
                    "{} is {state}",
                    peer.subject_uri
                )))
            }
            None => {
                return Err(Error::Unauthenticated(format!(
                    "{} is not registered",
                    peer.subject_uri
                )))
            }
        }
        Ok(Principal {
            uri: peer.subject_uri,
            role: peer.role,
            manufacturer: peer
                .manufacturer
                .as_deref()
                .map(ManufacturerId::parse)
                .transpose()?,
            device_serial: peer
                .device_serial
                .as_deref()
                .map(DeviceSerial::parse)
                .transpose()?,
            principal_id: peer
                .principal_id
                .as_deref()
                .map(PrincipalId::parse)
                .transpose()?,
            certificate_serial: peer.serial,
            certificate_profile: peer.profile,
        })
    }

    pub async fn create_manufacturer(
        &self,
        who: &Principal,
        m: NewManufacturer,
    ) -> Result<ManufacturerRecord, Refused> {
        let action = Action::CreateManufacturer;
        let target = Target::manufacturer(&self.profiles.trust_domain, m.id.as_str());
        self.audited(who, action.audit(), &target, policy::authorize(who, action))
            .await?;
        let record = ManufacturerRecord {
            id: m.id,
            display_name: m.display_name,
            allowed_models: m
                .allowed_models
                .iter()
                .map(|m| m.as_str().to_owned())
                .collect(),
            created_at: self.clock.now(),
        };
        let event = self
            .event(who, action.audit(), target.clone())
            .with("display_name", record.display_name.clone())
            .with("allowed_models", record.allowed_models.clone());
        let created = self.store.create_manufacturer(&record, &event).await;
        self.audited(who, action.audit(), &target, created).await?;
        Ok(record)
    }

    pub async fn list_manufacturers(
        &self,
        who: &Principal,
    ) -> Result<Vec<ManufacturerRecord>, Refused> {
        let action = Action::ListManufacturers;
        let listed = async {
            policy::authorize(who, action)?;
            self.store.manufacturers().await
        };
        self.audited(who, action.audit(), &Target::manufacturers(), listed.await)
            .await
    }

    /// Issues a station, gateway, auditor or admin certificate (docs/ISSUANCE-CYCLE.md).
    pub async fn issue_principal(
        &self,
        who: &Principal,
        role: PrincipalRole,
        id: PrincipalId,
        csr: &[u8],
    ) -> Result<Issued, Refused> {
        let action = Action::IssuePrincipalCertificate;
        let subject_uri = self.profiles.trust_domain.principal_uri(&role, &id);
        let step1 = async {
            // Step 1: policy — may the caller ask, is the scope real, is the CSR acceptable,
            // and what exactly will the certificate say.
            policy::authorize(who, action)?;
            if let PrincipalRole::Station(m) = &role {
                self.manufacturer(m).await?;
            }
            let csr = policy::csr::verify(&crate::pem::csr_der(csr)?)?;
            let now = self.clock.now();
            let template = self.profiles.principal(
                crate::issuance::random_serial(),
                now,
                self.authority.current(IssuerName::Operational),
                &role,
                &id,
                csr.public_key.clone(),
            );
            Ok((template, csr.spki_sha256))
        };
        let (template, spki) = self
            .audited(who, action.audit(), &Target::uri(&subject_uri), step1.await)
            .await?;
        let manufacturer = match &role {
            PrincipalRole::Station(m) => Some(m.clone()),
            _ => None,
        };
        let new = NewCertificate {
            template,
            profile: Profile::Principal,
            role: role.role(),
            subject_uri: subject_uri.clone(),
            spki_sha256: spki,
            claim: Claim::Principal {
                role: role.role(),
                principal_id: id.to_string(),
                manufacturer: manufacturer.clone(),
            },
        };
        let completion = Completion::Principal {
            role: role.role(),
            principal_id: id.to_string(),
            manufacturer,
        };
        let (issued, _) = self
            .run_cycle(&Actor::of(who), action.audit(), new, completion)
            .await?;
        Ok(issued)
    }

    /// Crash-test hook: aborts the process, as a power cut would, at the configured step of an
    /// issuance a client asked for (medid's own start-up issuance is left alone).
    fn crash_point(&self, actor: &Actor, step: &str) {
        if self.dangerous_crash_at.as_deref() == Some(step) && actor != &Actor::system() {
            tracing::error!(step, "dangerous_crash_at: aborting the process");
            std::process::abort();
        }
    }

    /// Steps 2 and 3 of the issuance cycle, shared by every profile: sign in memory, then
    /// record in one transaction; the certificate leaves the process only after that commit.
    /// Also returns what recording did (the device row, the issuers of superseded
    /// certificates, whose CRLs the caller re-signs).
    async fn run_cycle(
        &self,
        actor: &Actor,
        action: AuditAction,
        new: NewCertificate,
        completion: Completion,
    ) -> Result<(Issued, Recorded), Refused> {
        let subject_uri = new.subject_uri.clone();
        let t: &CertificateTemplate = &new.template;
        let validity = (t.not_before, t.not_after);

        // Step 2: sign, in memory. Nothing is written and nothing leaves the process.
        let signed = self.authority.sign(t);
        let signed: SignedCertificate = self
            .audited_as(actor, action, &Target::uri(&subject_uri), signed)
            .await?;
        self.crash_point(actor, "after-sign");

        // Step 3: the claim checks, the certificate, what it completes and the success event,
        // in one transaction. A refusal here is audited once and the signed certificate is
        // dropped: nobody holds it.
        let done = self
            .actor_event(actor, action, Target::uri(&subject_uri))
            .with("issuer", signed.issuer.label())
            .with("serial", signed.serial.to_hex())
            .with("profile", new.profile.as_str())
            .with("spki_sha256", new.spki_sha256.clone())
            .with("not_after", t.not_after.unix_timestamp())
            .with("certificate_sha256", fingerprint(&signed.der));
        let recorded = self
            .store
            .record_new(&new, &signed, &completion, &done)
            .await;
        match &recorded {
            Ok(_) => self.counters.issued(new.profile),
            Err(e) => self.counters.not_issued(new.profile, e),
        }
        let recorded = self
            .audited_as(actor, action, &Target::uri(&subject_uri), recorded)
            .await?;
        self.crash_point(actor, "after-commit");
        Ok((self.issued(signed, subject_uri, validity), recorded))
    }

    /// What the caller receives. The validity is the template's, to the second, as the
    /// certificate encodes it (no need to parse what was just signed).
    fn issued(
        &self,
        signed: SignedCertificate,
        subject_uri: String,
        (not_before, not_after): (OffsetDateTime, OffsetDateTime),
    ) -> Issued {
        let (not_before, not_after) = (
            not_before.replace_nanosecond(0).unwrap_or(not_before),
            not_after.replace_nanosecond(0).unwrap_or(not_after),
        );
        debug_assert!(
            x509_parser::parse_x509_certificate(&signed.der).is_ok_and(|(_, c)| {
                c.validity().not_before.to_datetime() == not_before
                    && c.validity().not_after.to_datetime() == not_after
            })
        );
        Issued {
            not_before,
            not_after,
            der: signed.der.to_vec(),
            chain: vec![self
                .authority
                .issuer_cert(signed.issuer)
                .expect("a generation that signed stays loaded")
                .der
                .to_vec()],
            root: self.authority.root().der.to_vec(),
            serial: signed.serial.to_hex(),
            subject_uri,
        }
    }

    pub async fn get_device(
        &self,
        who: &Principal,
        manufacturer: ManufacturerId,
        serial: &str,
    ) -> Result<DeviceRecord, Refused> {
        let action = Action::ReadDevices {
            manufacturer: &manufacturer,
        };
        let target = self.device_target(manufacturer.as_str(), serial);
        let read = async {
            policy::authorize(who, action)?;
            self.store.device(&manufacturer, serial).await
        };
        self.audited(who, action.audit(), &target, read.await).await
    }

    pub async fn list_devices(
        &self,
        who: &Principal,
        mut query: DeviceQuery,
    ) -> Result<(Vec<DeviceRecord>, Option<String>), Refused> {
        let listed = async {
            query.manufacturer = policy::device_list_scope(who, query.manufacturer.take())?;
            self.store.devices(&query).await
        };
        self.audited(
            who,
            Action::ListDevices.audit(),
            &Target::devices(),
            listed.await,
        )
        .await
    }

    /// The issuing-CA generations a filter names, oldest first.
    pub fn issuers_matching(&self, filter: IssuerFilter) -> Vec<IssuerId> {
        self.authority
            .issuers()
            .into_iter()
            .map(|i| i.id)
            .filter(|id| filter.name.is_none_or(|n| n == id.name))
            .filter(|id| filter.generation.is_none_or(|g| g == id.generation))
            .collect()
    }

    /// The issuing-CA generations still in service at `now`: their certificates have not
    /// ended, so what they signed may still be valid. Each keeps a CRL, an OCSP responder and
    /// its place in the trust bundle and the TLS verifier. A generation the root's CRL
    /// revokes is out of service. The current generation of each CA always counts (`medid
    /// ca revoke-issuer` refuses to revoke it).
    pub fn issuers_in_service(&self) -> Vec<crate::issuance::IssuerInfo> {
        let now = self.clock.now();
        self.authority
            .issuers()
            .into_iter()
            .filter(|i| {
                self.authority.current(i.id.name).id == i.id
                    || (i.not_after > now && self.authority.revoked_by_root(i.id).is_none())
            })
            .collect()
    }

    /// The fingerprints of the PKI this service was created with: its root, the first
    /// generation of each issuing CA, and its audit-signing public key. (Later generations
    /// belong by being signed by that root; `load_new_generations` records them.)
    pub fn pki_fingerprints(&self) -> Vec<crate::domain::PkiFingerprint> {
        let audit_key = self.ledger.signer.public_key();
        let mut all: Vec<_> = self
            .authority
            .fingerprints()
            .into_iter()
            .filter(|(_, generation)| *generation == 1)
            .map(|(f, _)| f)
            .collect();
        all.push(crate::domain::PkiFingerprint {
            part: crate::domain::PkiPart::AuditSigningKey,
            sha256: fingerprint(&audit_key),
        });
        all
    }

    /// Start-up check that the PKI directory and the database belong together (docs/
    /// DEPLOYMENT.md "Belonging"). The first start records the PKI's fingerprints, with an
    /// event; a database from before they were recorded must at least have checkpoints its
    /// audit key verifies. A later start with another PKI is refused.
    pub async fn check_belonging(&self) -> Result<(), Error> {
        use policy::belonging::{judge, unrecorded, Belonging};
        let current = self.pki_fingerprints();
        // The root CRLs recorded are not parts the directory must match.
        let recorded: Vec<_> = self
            .store
            .pki_binding()
            .await?
            .into_iter()
            .filter(|f| f.part != crate::domain::PkiPart::RootCrl)
            .collect();
        if judge(&recorded, &current)? == Belonging::First {
            if let Some((size, note, _)) = self.store.latest_checkpoint().await? {
                if self.parse_own(&note).is_err() {
                    return Err(Error::FailedPrecondition(format!(
                        "the PKI directory and the database do not belong together: the \
                         database's checkpoint at tree size {size} is not signed by the PKI's \
                         audit-signing key (sha256:{})",
                        fingerprint(&self.ledger.signer.public_key())
                    )));
                }
            }
        }
        let missing = unrecorded(&recorded, &current);
        if missing.is_empty() {
            return self.record_rollovers().await;
        }
        let mut event = AuditEvent::new(
            self.clock.now(),
            Actor::system(),
            crate::audit::Action::PkiBind,
            Target::pki(),
        );
        for f in &missing {
            event = event.with(f.part.as_str(), format!("sha256:{}", f.sha256));
        }
        if self
            .store
            .bind_pki(&missing.into_iter().cloned().collect::<Vec<_>>(), &event)
            .await?
        {
            tracing::info!("recorded the PKI's fingerprints in the database");
        }
        self.record_rollovers().await
    }
}
