//! Certificates: the store's step of the issuance cycle (docs/ISSUANCE-CYCLE.md), and the
//! lookup that turns a TLS peer certificate into a principal on every RPC.

use time::OffsetDateTime;

use super::audit::Ready;
use super::registry::{DeviceRecord, DeviceState};
use super::sql::{self, Arg, SqlxTx, Tx};
use super::{audit, from_unix, to_unix, Store};
use crate::audit::{Actor, AuditEvent, Target};
use crate::domain::{CertState, DeviceSerial, ManufacturerId, Profile, Role, SubjectState};
use crate::error::Error;
use crate::issuance::{CertificateTemplate, IssuerId, SignedCertificate};
use crate::policy::claim::{ClaimFacts, RecordedPrincipal};

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
    Service { replaces: Option<String> },
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
    pub serial: String,
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
    pub serial: String,
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
async fn record_in(
    tx: &mut dyn Tx,
    r: &NewCertificate,
    signed: &SignedCertificate,
    completion: &Completion,
    event: &Ready,
) -> Result<Recorded, Error> {
    let now = event.recorded_at();
    check_claim(tx, r, now).await?;
    let t = &r.template;
    let (fp, serial) = (fingerprint(&signed.der), signed.serial.to_hex());
    tx.execute(
        "INSERT INTO certificates (issuer, serial, profile, role, subject_uri, spki_sha256,
                                   not_before, not_after, status, reserved_at, der, fingerprint,
                                   issue_order)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'active', $9, $10, $11,
                 (SELECT COALESCE(MAX(issue_order), 0) + 1 FROM certificates))",
        &[
            Arg::from(&signed.issuer.label()),
            Arg::from(&serial),
            Arg::Text(r.profile.as_str()),
            Arg::Text(r.role.as_str()),
            Arg::from(&r.subject_uri),
            Arg::from(&r.spki_sha256),
            Arg::Int(to_unix(t.not_before)),
            Arg::Int(to_unix(t.not_after)),
            Arg::Int(to_unix(now)),
            Arg::Blob(signed.der.as_ref()),
            Arg::from(&fp),
        ],
    )
    .await?;
    let recorded = complete(tx, completion, &r.subject_uri, &serial, now).await?;
    audit::append_ready(tx, event).await?;
    Ok(recorded)
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
    tx: &mut dyn Tx,
    subject_uri: &str,
    profile: &str,
    cert_serial: &str,
    recorded_at: OffsetDateTime,
) -> Result<Vec<IssuerId>, Error> {
    let now = to_unix(recorded_at);
    let older = tx
        .fetch_all(
            "SELECT issuer, serial FROM certificates
             WHERE subject_uri = $1 AND profile = $2
               AND status = 'active' AND serial <> $3",
            &[
                Arg::Text(subject_uri),
                Arg::Text(profile),
                Arg::Text(cert_serial),
            ],
        )
        .await?;
    tx.execute(
        "UPDATE certificates SET status = 'revoked', revoked_at = $1, revocation_reason = 4
         WHERE subject_uri = $2 AND profile = $3
           AND status = 'active' AND serial <> $4",
        &[
            Arg::Int(now),
            Arg::Text(subject_uri),
            Arg::Text(profile),
            Arg::Text(cert_serial),
        ],
    )
    .await?;
    let mut issuers = Vec::new();
    for row in &older {
        let event = AuditEvent::new(
            recorded_at,
            Actor::system(),
            crate::audit::Action::CertificateRevoke,
            Target::uri(subject_uri),
        )
        .with("issuer", row.text(0)?)
        .with("serial", row.text(1)?)
        .with("reason", "superseded")
        .with("superseded_by", cert_serial);
        audit::append(tx, &event).await?;
        issuers.push(super::decode(row.text(0)?, "issuer", IssuerId::parse)?);
    }
    Ok(issuers)
}

async fn complete(
    tx: &mut dyn Tx,
    completion: &Completion,
    subject_uri: &str,
    cert_serial: &str,
    recorded_at: OffsetDateTime,
) -> Result<Recorded, Error> {
    let now = to_unix(recorded_at);
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
                 VALUES ($1, $2, $3, $4, $5, 'active', $6, $7)",
                &[
                    Arg::Text(manufacturer.as_str()),
                    Arg::Text(serial.as_str()),
                    Arg::from(model),
                    Arg::from(udi_di),
                    Arg::Text(subject_uri),
                    Arg::Int(now),
                    Arg::Text(cert_serial),
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
                enrolled_at: from_unix(now)?,
                birth_serial: cert_serial.to_owned(),
            });
        }
        Completion::Renewal { supersede, .. } => {
            if let Some(profile) = supersede {
                recorded.superseded =
                    supersede_others(tx, subject_uri, profile.as_str(), cert_serial, recorded_at)
                        .await?;
            }
        }
        Completion::Service {
            replaces: Some(old),
        } => {
            let issuer = tx
                .fetch_optional(
                    "SELECT issuer FROM certificates
                     WHERE subject_uri = $1 AND serial = $2 AND status = 'active'",
                    &[Arg::Text(subject_uri), Arg::Text(old)],
                )
                .await?
                .map(|row| super::decode(row.text(0)?, "issuer", IssuerId::parse))
                .transpose()?;
            if let Some(issuer) = issuer {
                tx.execute(
                    "UPDATE certificates SET status = 'revoked', revoked_at = $1, revocation_reason = 4
                     WHERE issuer = $2 AND serial = $3",
                    &[Arg::Int(to_unix(recorded_at)), Arg::from(&issuer.label()), Arg::Text(old)],
                )
                .await?;
                let event = AuditEvent::new(
                    recorded_at,
                    Actor::system(),
                    crate::audit::Action::CertificateRevoke,
                    Target::uri(subject_uri),
                )
                .with("issuer", issuer.label())
                .with("serial", old.clone())
                .with("reason", "superseded")
                .with("superseded_by", cert_serial);
                audit::append(tx, &event).await?;
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
                 VALUES ($1, $2, $3, $4, 'active', $5)
                 ON CONFLICT (uri) DO NOTHING",
                &[
                    Arg::Text(subject_uri),
                    Arg::Text(role.as_str()),
                    Arg::from(principal_id),
                    Arg::OptText(manufacturer.as_ref().map(|m| m.as_str())),
                    Arg::Int(now),
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
    tx: &mut dyn Tx,
    r: &NewCertificate,
    now: OffsetDateTime,
) -> Result<(), Error> {
    // One statement answers all three questions about the key.
    let key = sql::fetch_one(
        tx,
        "SELECT CAST(COALESCE(MAX(CASE WHEN subject_uri <> $2 THEN 1 ELSE 0 END), 0) AS BIGINT)
                    AS other,
                CAST(COALESCE(MAX(CASE WHEN revocation_reason = 1 THEN 1 ELSE 0 END), 0) AS BIGINT)
                    AS compromised,
                COUNT(*) AS seen
         FROM certificates WHERE spki_sha256 = $1",
        &[Arg::from(&r.spki_sha256), Arg::from(&r.subject_uri)],
    )
    .await?;
    let mut facts = ClaimFacts {
        key_bound_elsewhere: key.int(0)? != 0,
        key_compromised: key.int(1)? != 0,
        key_seen: key.int(2)? != 0,
        ..ClaimFacts::default()
    };
    match &r.claim {
        Claim::Service => {}
        Claim::Renewal { caller_serial, .. } => {
            let row = tx
                .fetch_optional(
                    "SELECT c.status, COALESCE(d.state, p.state) AS subject_state
                     FROM certificates c
                     LEFT JOIN devices d ON d.uri = c.subject_uri
                     LEFT JOIN principals p ON p.uri = c.subject_uri
                     WHERE c.serial = $1 AND c.subject_uri = $2",
                    &[Arg::from(caller_serial), Arg::from(&r.subject_uri)],
                )
                .await?;
            facts.caller = match &row {
                Some(row) => Some((
                    super::decode(row.text(0)?, "certificate status", CertState::parse)?,
                    row.opt_text(1)?
                        .map(|s| super::decode(s, "subject state", SubjectState::parse))
                        .transpose()?,
                )),
                None => None,
            };
        }
        Claim::NewDevice {
            manufacturer,
            serial,
            ..
        } => {
            facts.device_enrolled = sql::fetch_one(
                tx,
                "SELECT COUNT(*) FROM devices WHERE manufacturer_id = $1 AND serial = $2",
                &[Arg::Text(manufacturer.as_str()), Arg::Text(serial.as_str())],
            )
            .await?
            .int(0)?
                > 0;
        }
        Claim::Principal { .. } => {
            let row = tx
                .fetch_optional(
                    "SELECT role, manufacturer_id, state FROM principals WHERE uri = $1",
                    &[Arg::from(&r.subject_uri)],
                )
                .await?;
            facts.principal = match &row {
                Some(row) => Some(RecordedPrincipal {
                    role: super::decode(row.text(0)?, "role", Role::parse)?,
                    manufacturer: row
                        .opt_text(1)?
                        .map(|m| {
                            super::decode(m, "manufacturer", |m| ManufacturerId::parse(m).ok())
                        })
                        .transpose()?,
                    state: super::decode(row.text(2)?, "principal state", SubjectState::parse)?,
                }),
                None => None,
            };
        }
    }
    crate::policy::claim::check(&r.claim, &facts)?;
    if let Claim::NewDevice {
        token_sha256: Some(token),
        ..
    } = &r.claim
    {
        super::lifecycle::consume_token(tx, token, now).await?;
    }
    Ok(())
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
        let event = Ready::new(event)?;
        self.write(move |tx| {
            Box::pin(async move { record_in(tx, &r, &signed, &completion, &event).await })
        })
        .await
    }

    async fn adopt_certificate(
        &self,
        c: &AdoptedCertificate,
        completion: &Completion,
        event: &AuditEvent,
    ) -> Result<bool, Error> {
        let fp = fingerprint(&c.der);
        let mut tx = self.begin_write().await?;
        let known: Option<String> =
            sqlx::query_scalar("SELECT serial FROM certificates WHERE fingerprint = $1")
                .bind(&fp)
                .fetch_optional(&mut *tx)
                .await?;
        if known.is_some() {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO certificates (issuer, serial, profile, role, subject_uri, spki_sha256,
                                       not_before, not_after, status, reserved_at, der, fingerprint,
                                       issue_order)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'active', $9, $10, $11,
                     (SELECT COALESCE(MAX(issue_order), 0) + 1 FROM certificates))",
        )
        .bind(c.issuer.label())
        .bind(&c.serial)
        .bind(c.profile.as_str())
        .bind(c.role.as_str())
        .bind(&c.subject_uri)
        .bind(&c.spki_sha256)
        .bind(to_unix(c.not_before))
        .bind(to_unix(c.not_after))
        .bind(to_unix(event.recorded_at))
        .bind(&c.der)
        .bind(&fp)
        .execute(&mut *tx)
        .await?;
        let mut on = SqlxTx(&mut *tx);
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
        let row = reader
            .tx()
            .fetch_optional(
                "SELECT c.role, c.subject_uri, c.serial, c.profile, c.status, c.not_before,
                        c.not_after, COALESCE(p.state, d.state) AS subject_state,
                        COALESCE(p.manufacturer_id, d.manufacturer_id) AS manufacturer,
                        d.serial AS device_serial, p.principal_id
                 FROM certificates c
                 LEFT JOIN principals p ON p.uri = c.subject_uri
                 LEFT JOIN devices d ON d.uri = c.subject_uri
                 WHERE c.fingerprint = $1",
                &[Arg::Text(fp)],
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let owned = |i| row.opt_text(i).map(|t| t.map(str::to_owned));
        Ok(Some(PeerRecord {
            role: super::decode(row.text(0)?, "role", Role::parse)?,
            subject_uri: row.text(1)?.to_owned(),
            serial: row.text(2)?.to_owned(),
            profile: super::decode(row.text(3)?, "profile", Profile::parse)?,
            status: super::decode(row.text(4)?, "status", CertState::parse)?,
            not_before: from_unix(row.int(5)?)?,
            not_after: from_unix(row.int(6)?)?,
            subject_state: row
                .opt_text(7)?
                .map(|s| super::decode(s, "subject state", SubjectState::parse))
                .transpose()?,
            manufacturer: owned(8)?,
            device_serial: owned(9)?,
            principal_id: owned(10)?,
        }))
    }

    async fn certificate_census(
        &self,
        now: OffsetDateTime,
        within: [time::Duration; 2],
    ) -> Result<Vec<CensusRow>, Error> {
        let rows: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(
            "SELECT profile, status, COUNT(*),
                    COALESCE(SUM(CASE WHEN status = 'active' AND not_after > $1
                                       AND not_after <= $2 THEN 1 ELSE 0 END), 0),
                    COALESCE(SUM(CASE WHEN status = 'active' AND not_after > $3
                                       AND not_after <= $4 THEN 1 ELSE 0 END), 0)
             FROM certificates GROUP BY profile, status",
        )
        .bind(to_unix(now))
        .bind(to_unix(now + within[0]))
        .bind(to_unix(now))
        .bind(to_unix(now + within[1]))
        .fetch_all(&self.reader)
        .await?;
        rows.into_iter()
            .map(|(profile, status, n, first, second)| {
                Ok(CensusRow {
                    profile: super::decode(&profile, "certificate profile", Profile::parse)?,
                    state: super::decode(&status, "certificate status", CertState::parse)?,
                    count: n.max(0) as u64,
                    ending: [first.max(0) as u64, second.max(0) as u64],
                })
            })
            .collect()
    }
}
