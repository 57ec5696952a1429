//! What the gateway knows of medid's trust: the issuing CAs in service (TLS anchors for
//! client certificates) and their CRLs, fetched from medid and kept on disk so that a gateway
//! restarted while medid is away still has them. A certificate on a CRL is refused on every
//! request, on connections old and new. Revocation data older than the configured age, or
//! past a CRL's nextUpdate, makes the gateway refuse every request until fresh data comes.
//!
//! The first time the gateway sees a certificate it also asks medid (GetCertificateStatus):
//! a certificate medid says is revoked or never issued is refused, even before the next CRL.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Mutex, RwLock};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::Error;
use crate::issuance::root_crl::{read_issued_crl, signed_by};
use crate::proto;

/// Certificates whose status medid answered, remembered at most (then forgotten and asked
/// again).
const MAX_SEEN: usize = 100_000;

/// What is kept on disk (`trust.json`): the anchors and CRLs as fetched, and when.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Saved {
    /// Unix seconds of the fetch.
    fetched_at: i64,
    /// Issuing-CA certificates, DER, base64.
    anchors: Vec<String>,
    /// Their CRLs, DER, base64.
    crls: Vec<String>,
}

/// The anchors and CRLs in force.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub anchors: Vec<Vec<u8>>,
    crls: Vec<Vec<u8>>,
    /// (issuer subject DER, serial) of every revoked certificate.
    revoked: HashSet<(Vec<u8>, Vec<u8>)>,
    pub fetched_at: OffsetDateTime,
    /// The earliest nextUpdate of the CRLs.
    pub next_update: OffsetDateTime,
}

impl Snapshot {
    /// Checks every CRL against its CA and builds the revoked set.
    fn build(
        anchors: Vec<Vec<u8>>,
        crls: Vec<Vec<u8>>,
        fetched_at: OffsetDateTime,
    ) -> Result<Self, Error> {
        let mut revoked = HashSet::new();
        let mut next_update: Option<OffsetDateTime> = None;
        for crl in &crls {
            let mut read = None;
            for anchor in &anchors {
                if let Ok(r) = read_issued_crl(anchor, crl) {
                    read = Some((anchor, r));
                    break;
                }
            }
            let Some((anchor, (own, next))) = read else {
                return Err(Error::FailedPrecondition(
                    "a CRL from medid is not signed by any issuing CA in its trust bundle".into(),
                ));
            };
            let next = next.ok_or_else(|| {
                Error::FailedPrecondition("a CRL from medid has no nextUpdate".into())
            })?;
            next_update = Some(next_update.map_or(next, |n| n.min(next)));
            let subject = x509_parser::parse_x509_certificate(anchor)
                .map_err(|e| Error::internal("an issuing CA certificate", e))?
                .1
                .subject()
                .as_raw()
                .to_vec();
            for entry in own.entries {
                revoked.insert((subject.clone(), entry.serial));
            }
        }
        let next_update = next_update.ok_or_else(|| {
            Error::FailedPrecondition("medid sent no CRL for its issuing CAs".into())
        })?;
        Ok(Self {
            anchors,
            crls,
            revoked,
            fetched_at,
            next_update,
        })
    }

    pub fn is_revoked(&self, issuer_subject: &[u8], serial: &[u8]) -> bool {
        self.revoked
            .contains(&(issuer_subject.to_vec(), serial.to_vec()))
    }

    /// Why this data may not be relied on at `now`, if it may not.
    pub fn stale(&self, now: OffsetDateTime, max_age: std::time::Duration) -> Option<String> {
        let age = now - self.fetched_at;
        if age > time::Duration::try_from(max_age).unwrap_or(time::Duration::MAX) {
            return Some(format!(
                "the gateway's revocation data is {} s old (limit {} s): medid has not been reachable",
                age.whole_seconds(),
                max_age.as_secs()
            ));
        }
        if now > self.next_update {
            return Some("a CRL the gateway holds is past its nextUpdate".into());
        }
        None
    }
}

/// What medid said of one certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    Good,
    /// Revoked, or not issued by medid.
    Refused,
}

/// The gateway's trust, shared by the listener and the refresher.
#[derive(Debug)]
pub struct Trust {
    file: PathBuf,
    current: RwLock<Option<std::sync::Arc<Snapshot>>>,
    seen: Mutex<HashMap<Vec<u8>, Seen>>,
}

impl Trust {
    /// The trust kept in `file`, if it holds any (checked again as if fetched).
    pub fn load(file: PathBuf) -> Self {
        let current = std::fs::read(&file)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Saved>(&bytes).ok())
            .and_then(|saved| {
                use base64::Engine as _;
                let b64 = base64::engine::general_purpose::STANDARD;
                let anchors = saved.anchors.iter().map(|a| b64.decode(a).ok()).collect::<Option<Vec<_>>>()?;
                let crls = saved.crls.iter().map(|a| b64.decode(a).ok()).collect::<Option<Vec<_>>>()?;
                let at = OffsetDateTime::from_unix_timestamp(saved.fetched_at).ok()?;
                match Snapshot::build(anchors, crls, at) {
                    Ok(s) => Some(std::sync::Arc::new(s)),
                    Err(e) => {
                        tracing::warn!(error = %e, file = %file.display(), "ignoring the saved trust");
                        None
                    }
                }
            });
        Self {
            file,
            current: RwLock::new(current),
            seen: Mutex::new(HashMap::new()),
        }
    }

    pub fn current(&self) -> Option<std::sync::Arc<Snapshot>> {
        self.current
            .read()
            .expect("the trust lock is never poisoned")
            .clone()
    }

    /// Fetches the trust bundle and every CRL from medid, checks them (each issuing CA signed
    /// by `root`, each CRL by its CA), keeps them on disk and makes them current. Returns
    /// whether the anchors changed (the TLS configuration must then be rebuilt).
    pub async fn refresh(
        &self,
        channel: tonic::transport::Channel,
        root_der: &[u8],
    ) -> Result<bool, Error> {
        use proto::lifecycle_service_client::LifecycleServiceClient;
        let mut client = LifecycleServiceClient::new(channel);
        let bundle = client
            .get_trust_bundle(proto::GetTrustBundleRequest {})
            .await
            .map_err(crate::cli::client::status)?
            .into_inner();
        let mut anchors = Vec::new();
        let mut crls = Vec::new();
        for (issuer, pem) in [
            (
                proto::Issuer::DeviceIdentity,
                &bundle.device_identity_ca_pem,
            ),
            (proto::Issuer::Operational, &bundle.operational_ca_pem),
        ] {
            let certs = crate::pem::parse_certificates(pem.as_bytes())
                .map_err(|e| Error::FailedPrecondition(format!("medid's trust bundle: {e}")))?;
            for cert in &certs {
                if !signed_by(cert, root_der) {
                    return Err(Error::FailedPrecondition(
                        "an issuing CA in medid's trust bundle is not signed by the configured root (medid_ca)".into(),
                    ));
                }
            }
            // The current generation first, then the older ones still in service.
            let current = client
                .get_crl(proto::GetCrlRequest {
                    issuer: issuer as i32,
                    issuer_generation: 0,
                })
                .await
                .map_err(crate::cli::client::status)?
                .into_inner();
            let generation = current.issuer_generation;
            crls.push(current.der);
            for older in 1..certs.len() as u32 {
                let Some(g) = generation.checked_sub(older).filter(|g| *g > 0) else {
                    break;
                };
                match client
                    .get_crl(proto::GetCrlRequest {
                        issuer: issuer as i32,
                        issuer_generation: g,
                    })
                    .await
                {
                    Ok(crl) => crls.push(crl.into_inner().der),
                    Err(s) if s.code() == tonic::Code::NotFound => {}
                    Err(s) => return Err(crate::cli::client::status(s)),
                }
            }
            anchors.extend(certs.into_iter().map(|c| c.to_vec()));
        }
        let now = OffsetDateTime::now_utc();
        let snapshot = Snapshot::build(anchors, crls, now)?;
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let saved = Saved {
            fetched_at: now.unix_timestamp(),
            anchors: snapshot.anchors.iter().map(|a| b64.encode(a)).collect(),
            crls: snapshot.crls.iter().map(|a| b64.encode(a)).collect(),
        };
        let bytes = serde_json::to_vec(&saved).map_err(|e| Error::internal("trust.json", e))?;
        crate::files::write_atomic(&self.file, &bytes, crate::files::Access::Private)?;
        let mut current = self
            .current
            .write()
            .expect("the trust lock is never poisoned");
        let changed = current
            .as_ref()
            .is_none_or(|c| c.anchors != snapshot.anchors);
        *current = Some(std::sync::Arc::new(snapshot));
        drop(current);
        // A new CRL supersedes what medid said of single certificates: ask again.
        self.seen
            .lock()
            .expect("the seen lock is never poisoned")
            .clear();
        Ok(changed)
    }

    pub fn seen(&self, serial: &[u8]) -> Option<Seen> {
        self.seen
            .lock()
            .expect("the seen lock is never poisoned")
            .get(serial)
            .copied()
    }

    pub fn remember(&self, serial: &[u8], seen: Seen) {
        let mut map = self.seen.lock().expect("the seen lock is never poisoned");
        if map.len() >= MAX_SEEN {
            map.clear();
        }
        map.insert(serial.to_vec(), seen);
    }
}

/// Asks medid for the status of the certificate `der`.
pub async fn ask_status(channel: tonic::transport::Channel, der: &[u8]) -> Result<Seen, Error> {
    use proto::lifecycle_service_client::LifecycleServiceClient;
    let status = LifecycleServiceClient::new(channel)
        .get_certificate_status(proto::GetCertificateStatusRequest {
            certificate: Some(proto::get_certificate_status_request::Certificate::Der(
                der.to_vec(),
            )),
        })
        .await
        .map_err(crate::cli::client::status)?
        .into_inner();
    Ok(match proto::CertStatus::try_from(status.status) {
        Ok(proto::CertStatus::Good) => Seen::Good,
        _ => Seen::Refused,
    })
}
