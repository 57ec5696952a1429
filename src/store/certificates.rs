//! Certificates: the store's step of the issuance cycle (docs/ISSUANCE-CYCLE.md), and the
//! lookup that turns a TLS peer certificate into a principal on every RPC.

use time::OffsetDateTime;

use super::audit::Ready;
use super::registry::{DeviceRecord, DeviceState};
use super::sql::{FromRow, Row, Tx};
use super::{audit, Store};
use crate::audit::{Actor, AuditEvent, Target};
use crate::domain::{
    CertSerial, CertState, DeviceSerial, ManufacturerId, Profile, RevocationReason, Role,
    SubjectState,
};
use crate::error::Error;
use crate::issuance::{CertificateTemplate, IssuerId, SignedCertificate};
use crate::policy::claim::{ClaimFacts, RecordedPrincipal, TokenFacts};

pub use crate::policy::claim::Claim;

/// What is recorded about a new certificate besides its DER: the template policy decided and
/// who it is for.
#[derive(Debug, Clone)]
pub struct NewCertificate {
    pub template: CertificateTemplate,
    pub profile: Profile,
    pub role: Role,
    pub subject_uri: String,
    pub spki_sha256: String,
    pub claim: Claim,
}

/// What step 3 adds to the registry along with the certificate.
#[derive(Debug, Clone)]
pub enum Completion {
    Device {
        manufacturer: ManufacturerId,
        serial: DeviceSerial,
        model: String,
        udi_di: Option<String>,
    },
    Principal {
        role: Role,
        principal_id: String,
        manufacturer: Option<ManufacturerId>,
    },
    /// A renewal: nothing to create (the claim re-checks the certificate that authorized
    /// it); with `supersede`, the subject's other active certificates of that profile are
    /// revoked as superseded (one event each).
    Renewal { supersede: Option<Profile> },
    /// Nothing to create.
    Nothing,
    /// One of the service's own certificates (its TLS server certificate, an OCSP
    /// responder's). The one it `replaces` (this process's previous one, by serial) is revoked
    /// as superseded; other replicas' certificates of the same subject are left alone.
    Service { replaces: Option<CertSerial> },
}

/// What recording a new certificate did besides storing it.
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    /// The device row as written, when the certificate completes a device.
    pub device: Option<DeviceRecord>,
    /// The issuing CAs of the certificates it superseded (revoked), whose CRLs must be
    /// re-signed; one entry per certificate.
    pub superseded: Vec<IssuerId>,
}

/// A certificate signed before the store existed (`medid ca init`), to be recorded as is.
#[derive(Debug, Clone)]
pub struct AdoptedCertificate {
    pub issuer: IssuerId,
    pub serial: CertSerial,
    pub profile: Profile,
    pub role: Role,
    pub subject_uri: String,
    pub spki_sha256: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub der: Vec<u8>,
}

/// A certificate found by its fingerprint, with the state of its subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRecord {
    pub role: Role,
    pub subject_uri: String,
    pub serial: CertSerial,
    pub profile: Profile,
    pub status: CertState,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// The principal's or device's state; None if the subject row is missing.
    pub subject_state: Option<SubjectState>,
    pub manufacturer: Option<String>,
    pub device_serial: Option<String>,
    /// A principal's id within its role; None for a device.
    pub principal_id: Option<String>,
}

/// Step 3 inside a write transaction. Every check comes before the first write: a
/// group-committed batch can only roll back a job that refuses after a change by rolling back
/// every job with it.
pub(super) async fn record_in(
    tx: &mut Tx<'_>,
    r: &NewCertificate,
    signed: &SignedCertificate,
    completion: &Completion,
    event: &Ready,
) -> Result<Recorded, Error> {
    let now = event.recorded_at();
    check_claim(tx, r, now).await?;
    let t = &r.template;
    let (fp, serial) = (fingerprint(&signed.der), &signed.serial);
    insert_certificate(
        tx,
        &Inserted {
            issuer: signed.issuer,
            serial,
            profile: r.profile,
            role: r.role,
            subject_uri: &r.subject_uri,
            spki_sha256: &r.spki_sha256,
            not_before: t.not_before,
            not_after: t.not_after,
            recorded_at: now,
            der: signed.der.as_ref(),
            fingerprint: &fp,
        },
    )
    .await?;
    let recorded = complete(tx, completion, &r.subject_uri, serial, now).await?;
    audit::append_ready(tx, event).await?;
    Ok(recorded)
}

/// An active certificate's row, as inserted.
struct Inserted<'a> {
    issuer: IssuerId,
    serial: &'a CertSerial,
    profile: Profile,
    role: Role,
    subject_uri: &'a str,
    spki_sha256: &'a str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    recorded_at: OffsetDateTime,
    der: &'a [u8],
    fingerprint: &'a str,
}

async fn insert_certificate(tx: &mut Tx<'_>, c: &Inserted<'_>) -> Result<(), Error> {
    tx.execute(
        "INSERT INTO certificates (issuer, serial, profile, role, subject_uri, spki_sha256,
                                   not_before, not_after, status, reserved_at, der, fingerprint,
                                   issue_order)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,
                 (SELECT COALESCE(MAX(issue_order), 0) + 1 FROM certificates))",
        &[
            &c.issuer,
            &c.serial,
            &c.profile,
            &c.role,
            &c.subject_uri,
            &c.spki_sha256,
            &c.not_before,
            &c.not_after,
            &CertState::Active,
            &c.recorded_at,
            &c.der,
            &c.fingerprint,
        ],
    )
    .await?;
    Ok(())
}

/// Certificates of one profile in one state ([`Store::certificate_census`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CensusRow {
    pub profile: Profile,
    pub state: CertState,
    pub count: u64,
    /// Of these, active and ending within each of the two spans asked for.
    pub ending: [u64; 2],
}

/// Creates what an issued certificate completes: the device row or the principal row. Returns
/// the device row as written, for a device.
/// Revokes `subject_uri`'s other active certificates of `profile` as superseded by
/// `cert_serial`, one event each, in this transaction.
async fn supersede_others(
    tx: &mut Tx<'_>,
    subject_uri: &str,
    profile: Profile,
    cert_serial: &CertSerial,
    recorded_at: OffsetDateTime,
) -> Result<Vec<IssuerId>, Error> {
    let older: Vec<(IssuerId, CertSerial)> = tx
        .all(
            "SELECT issuer, serial FROM certificates
             WHERE subject_uri = $1 AND profile = $2 AND status = $3 AND serial <> $4",
            &[&subject_uri, &profile, &CertState::Active, &cert_serial],
        )
        .await?;
    let mut issuers = Vec::new();
    for (issuer, serial) in older {
        revoke_superseded(tx, issuer, &serial, subject_uri, cert_serial, recorded_at).await?;
        issuers.push(issuer);
    }
    Ok(issuers)
}

/// Revokes one active certificate as superseded by `by`, with its event.
async fn revoke_superseded(
    tx: &mut Tx<'_>,
    issuer: IssuerId,
    serial: &CertSerial,
    subject_uri: &str,
    by: &CertSerial,
    recorded_at: OffsetDateTime,
) -> Result<(), Error> {
    let reason = RevocationReason::Superseded;
    tx.execute(
        "UPDATE certificates SET status = $1, revoked_at = $2, revocation_reason = $3
         WHERE issuer = $4 AND serial = $5",
        &[&CertState::Revoked, &recorded_at, &reason, &issuer, &serial],
    )
    .await?;
    let event = AuditEvent::new(
        recorded_at,
        Actor::system(),
        crate::audit::Action::CertificateRevoke,
        Target::uri(subject_uri),
    )
    .with("issuer", issuer.label())
    .with("serial", serial)
    .with("reason", "superseded")
    .with("superseded_by", by);
    audit::append(tx, &event).await?;
    Ok(())
}

async fn complete(
    tx: &mut Tx<'_>,
    completion: &Completion,
    subject_uri: &str,
    cert_serial: &CertSerial,
    recorded_at: OffsetDateTime,
) -> Result<Recorded, Error> {
    let mut recorded = Recorded::default();
    match completion {
        Completion::Device {
            manufacturer,
            serial,
            model,
            udi_di,
        } => {
            tx.execute(
                "INSERT INTO devices (manufacturer_id, serial, model, udi_di, uri, state,
                                      enrolled_at, birth_serial)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                    manufacturer,
                    serial,
                    model,
                    udi_di,
                    &subject_uri,
                    &DeviceState::Active,
                    &recorded_at,
                    &cert_serial,
                ],
            )
            .await?;
            recorded.device = Some(DeviceRecord {
                manufacturer_id: manufacturer.to_string(),
                serial: serial.as_str().to_owned(),
                model: model.clone(),
                udi_di: udi_di.clone(),
                uri: subject_uri.to_owned(),
                state: DeviceState::Active,
                enrolled_at: recorded_at,
                birth_serial: cert_serial.to_owned(),
            });
        }
        Completion::Renewal { supersede, .. } => {
            if let Some(profile) = supersede {
                recorded.superseded =
                    supersede_others(tx, subject_uri, *profile, cert_serial, recorded_at).await?;
            }
        }
        Completion::Service {
            replaces: Some(old),
        } => {
            let issuer: Option<IssuerId> = tx
                .optional(
                    "SELECT issuer FROM certificates
                     WHERE subject_uri = $1 AND serial = $2 AND status = $3",
                    &[&subject_uri, old, &CertState::Active],
                )
                .await?;
            if let Some(issuer) = issuer {
                revoke_superseded(tx, issuer, old, subject_uri, cert_serial, recorded_at).await?;
                recorded.superseded.push(issuer);
            }
        }
        Completion::Service { replaces: None } => {}
        Completion::Nothing => {}
        Completion::Principal {
            role,
            principal_id,
            manufacturer,
        } => {
            tx.execute(
                "INSERT INTO principals (uri, role, principal_id, manufacturer_id, state, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (uri) DO NOTHING",
                &[
                    &subject_uri,
                    role,
                    principal_id,
                    manufacturer,
                    &SubjectState::Active,
                    &recorded_at,
                ],
            )
            .await?;
        }
    }
    Ok(recorded)
}

/// Reads what the claim rules depend on, under the write lock, and lets
/// [`policy::claim::check`](crate::policy::claim::check) decide; spends an enrollment token
/// when the claim is allowed.
async fn check_claim(
    tx: &mut Tx<'_>,
    r: &NewCertificate,
    now: OffsetDateTime,
) -> Result<(), Error> {
    // One statement answers all three questions about the key.
    let (key_bound_elsewhere, key_compromised, key_seen): (bool, bool, bool) = tx
        .one(
            "SELECT CAST(COALESCE(MAX(CASE WHEN subject_uri <> $2 THEN 1 ELSE 0 END), 0) AS BIGINT)
                    AS other,
                CAST(COALESCE(MAX(CASE WHEN revocation_reason = 1 THEN 1 ELSE 0 END), 0) AS BIGINT)
                    AS compromised,
                COUNT(*) AS seen
         FROM certificates WHERE spki_sha256 = $1",
            &[&r.spki_sha256, &r.subject_uri],
        )
        .await?;
    let mut facts = ClaimFacts {
        key_bound_elsewhere,
        key_compromised,
        key_seen,
        ..ClaimFacts::default()
    };
    match &r.claim {
        Claim::Service => {}
        Claim::Renewal { caller_serial, .. } => {
            facts.caller = tx
                .optional(
                    "SELECT c.status, COALESCE(d.state, p.state) AS subject_state
                     FROM certificates c
                     LEFT JOIN devices d ON d.uri = c.subject_uri
                     LEFT JOIN principals p ON p.uri = c.subject_uri
                     WHERE c.serial = $1 AND c.subject_uri = $2",
                    &[caller_serial, &r.subject_uri],
                )
                .await?;
        }
        Claim::NewDevice {
            manufacturer,
            serial,
            token_sha256,
        } => {
            if let Some(token) = token_sha256 {
                let stored: Option<(Option<OffsetDateTime>, OffsetDateTime)> = tx
                    .optional(
                        "SELECT used_at, expires_at FROM enrollment_tokens WHERE token_sha256 = $1",
                        &[token],
                    )
                    .await?;
                facts.token = stored.map(|(used_at, expires_at)| TokenFacts {
                    used_at,
                    expires_at,
                    now,
                });
            }
            let enrolled: u64 = tx
                .one(
                    "SELECT COUNT(*) FROM devices WHERE manufacturer_id = $1 AND serial = $2",
                    &[manufacturer, serial],
                )
                .await?;
            facts.device_enrolled = enrolled > 0;
        }
        Claim::Principal { .. } => {
            let row: Option<(Role, Option<ManufacturerId>, SubjectState)> = tx
                .optional(
                    "SELECT role, manufacturer_id, state FROM principals WHERE uri = $1",
                    &[&r.subject_uri],
                )
                .await?;
            facts.principal = row.map(|(role, manufacturer, state)| RecordedPrincipal {
                role,
                manufacturer,
                state,
            });
        }
    }
    crate::policy::claim::check(&r.claim, &facts)?;
    if let Claim::NewDevice {
        token_sha256: Some(token),
        ..
    } = &r.claim
    {
        super::lifecycle::spend_token(tx, token, now).await?;
    }
    Ok(())
}

impl FromRow for PeerRecord {
    fn from_row(row: &Row<'_>) -> Result<Self, Error> {
        Ok(PeerRecord {
            role: row.get("role")?,
            subject_uri: row.get("subject_uri")?,
            serial: row.get("serial")?,
            profile: row.get("profile")?,
            status: row.get("status")?,
            not_before: row.get("not_before")?,
            not_after: row.get("not_after")?,
            subject_state: row.get("subject_state")?,
            manufacturer: row.get("manufacturer")?,
            device_serial: row.get("device_serial")?,
            principal_id: row.get("principal_id")?,
        })
    }
}

/// SHA-256 of a certificate's DER, lowercase hex.
pub fn fingerprint(der: &[u8]) -> String {
    crate::domain::hex(ring::digest::digest(&ring::digest::SHA256, der).as_ref())
}

impl super::CertificateLedger for Store {
    async fn record_new(
        &self,
        r: &NewCertificate,
        signed: &SignedCertificate,
        completion: &Completion,
        event: &AuditEvent,
    ) -> Result<Recorded, Error> {
        let (r, signed, completion) = (r.clone(), signed.clone(), completion.clone());
        self.record(r, signed, completion, Ready::new(event)?).await
    }

    async fn adopt_certificate(
        &self,
        c: &AdoptedCertificate,
        completion: &Completion,
        event: &AuditEvent,
    ) -> Result<bool, Error> {
        let fp = fingerprint(&c.der);
        let mut tx = self.begin_write().await?;
        let mut on = tx.on();
        let known: Option<String> = on
            .optional(
                "SELECT serial FROM certificates WHERE fingerprint = $1",
                &[&fp],
            )
            .await?;
        if known.is_some() {
            return Ok(false);
        }
        insert_certificate(
            &mut on,
            &Inserted {
                issuer: c.issuer,
                serial: &c.serial,
                profile: c.profile,
                role: c.role,
                subject_uri: &c.subject_uri,
                spki_sha256: &c.spki_sha256,
                not_before: c.not_before,
                not_after: c.not_after,
                recorded_at: event.recorded_at,
                der: &c.der,
                fingerprint: &fp,
            },
        )
        .await?;
        complete(
            &mut on,
            completion,
            &c.subject_uri,
            &c.serial,
            event.recorded_at,
        )
        .await?;

        audit::append(&mut on, event).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn peer_by_fingerprint(&self, fp: &str) -> Result<Option<PeerRecord>, Error> {
        let mut reader = self.reader().await?;
        reader
            .tx()
            .optional(
                "SELECT c.role, c.subject_uri, c.serial, c.profile, c.status, c.not_before,
                        c.not_after, COALESCE(p.state, d.state) AS subject_state,
                        COALESCE(p.manufacturer_id, d.manufacturer_id) AS manufacturer,
                        d.serial AS device_serial, p.principal_id
                 FROM certificates c
                 LEFT JOIN principals p ON p.uri = c.subject_uri
                 LEFT JOIN devices d ON d.uri = c.subject_uri
                 WHERE c.fingerprint = $1",
                &[&fp],
            )
            .await
    }

    async fn certificate_census(
        &self,
        now: OffsetDateTime,
        within: [time::Duration; 2],
    ) -> Result<Vec<CensusRow>, Error> {
        let mut reader = self.reader().await?;
        let rows: Vec<(Profile, CertState, u64, u64, u64)> = reader
            .tx()
            .all(
                "SELECT profile, status, COUNT(*),
                    COALESCE(SUM(CASE WHEN status = 'active' AND not_after > $1
                                       AND not_after <= $2 THEN 1 ELSE 0 END), 0),
                    COALESCE(SUM(CASE WHEN status = 'active' AND not_after > $3
                                       AND not_after <= $4 THEN 1 ELSE 0 END), 0)
             FROM certificates GROUP BY profile, status",
                &[&now, &(now + within[0]), &now, &(now + within[1])],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|(profile, state, count, first, second)| CensusRow {
                profile,
                state,
                count,
                ending: [first, second],
            })
            .collect())
    }
}
