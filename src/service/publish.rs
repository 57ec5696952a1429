//! What medid publishes about certificates: CRLs, OCSP answers, a status call for gateways,
//! and the trust bundle. Also the periodic upkeep that keeps CRLs and OCSP responders fresh.

use time::{Duration, OffsetDateTime};

use super::{Ca, IssuerFilter, Refused};
use crate::audit::{Actor, AuditEvent, Target};
use crate::domain::{CertState, Principal, RevocationReason};
use crate::error::Error;
use crate::issuance::ocsp::{self, CertStatus, HashAlg, SingleResponse};
use crate::issuance::{IssuerId, IssuerName};
use crate::policy::{self, Action};
use crate::store::certificates::fingerprint;
use crate::store::lifecycle::{CertRecord, CrlRecord, CrlSaved, SignedCrl};
use crate::store::{CertificateLedger, CertificateRecords, RevocationStore};

/// How long an OCSP answer may be cached (its nextUpdate − thisUpdate).
pub const OCSP_VALIDITY: Duration = Duration::hours(1);

/// The longest OCSP nonce accepted (RFC 8954 §2.1).
pub const MAX_NONCE: usize = 32;

/// How long a revocation waits for the TLS layer to load its CRL before answering anyway.
/// The per-RPC store check refuses the certificate whatever happens here.
const TLS_RELOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Between the CRL signer and the TLS layer: every signed CRL bumps `signed`, and the TLS
/// layer sets `applied` to the generation its verifier carries. A revocation answers only once
/// the verifier has its CRL, so "revoked" means the next handshake is refused too.
#[derive(Debug)]
pub struct CrlSignal {
    signed: tokio::sync::watch::Sender<u64>,
    applied: tokio::sync::watch::Sender<u64>,
    /// One CRL signing at a time in this process, so this process's own publications never
    /// find each other's CRL in the way (other replicas may; then it plans again).
    turn: tokio::sync::Mutex<()>,
}

impl Default for CrlSignal {
    fn default() -> Self {
        Self {
            signed: tokio::sync::watch::channel(0).0,
            applied: tokio::sync::watch::channel(0).0,
            turn: tokio::sync::Mutex::new(()),
        }
    }
}

/// Times a CRL is planned and signed again when another replica's CRL was recorded in
/// between, before the publication fails as UNAVAILABLE.
const CRL_ATTEMPTS: usize = 8;

impl CrlSignal {
    /// For the TLS layer: wakes on every newly signed CRL.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.signed.subscribe()
    }

    /// For the TLS layer: its verifier now carries the CRLs of `generation` (read after it).
    pub fn applied(&self, generation: u64) {
        self.applied.send_modify(|a| *a = (*a).max(generation));
    }

    /// Records a signed CRL (or a change to which CAs are in service) and returns its
    /// generation.
    pub(super) fn signed(&self) -> u64 {
        let mut generation = 0;
        self.signed.send_modify(|g| {
            *g += 1;
            generation = *g;
        });
        generation
    }

    /// Waits until the TLS layer carries `generation`, if a TLS layer is listening.
    pub(super) async fn wait_applied(&self, generation: u64) {
        if self.signed.receiver_count() == 0 {
            return;
        }
        let mut applied = self.applied.subscribe();
        let wait = applied.wait_for(|a| *a >= generation);
        if tokio::time::timeout(TLS_RELOAD_WAIT, wait).await.is_err() {
            tracing::warn!(
                generation,
                "the TLS verifier has not loaded the new CRL yet; RPCs refuse revoked callers regardless"
            );
        }
    }
}

/// One CertID from an OCSP request, parsed by the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertId {
    /// The CertID's DER exactly as received, echoed in the answer.
    pub der: Vec<u8>,
    pub hash: HashAlg,
    pub issuer_name_hash: Vec<u8>,
    pub issuer_key_hash: Vec<u8>,
    /// Serial magnitude (no sign octet).
    pub serial: Vec<u8>,
}

/// A parsed OCSP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OcspQuery {
    pub cert_ids: Vec<CertId>,
    pub nonce: Option<Vec<u8>>,
}

/// How a gateway names the certificate it asks about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateStatusQuery {
    Serial {
        issuer: IssuerFilter,
        serial: String,
    },
    /// The certificate itself: "good" only if medid issued exactly these bytes.
    Der(Vec<u8>),
}

/// The answer to a status query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusAnswer {
    pub status: CertStatus,
    pub certificate: Option<CertRecord>,
    pub checked_at: OffsetDateTime,
}

/// The CA certificates a relying party needs: the root, and every generation of each
/// issuing CA still in service, newest first (two during a rollover's overlap).
#[derive(Debug, Clone)]
pub struct TrustBundle {
    pub root: Vec<u8>,
    pub device_identity: Vec<Vec<u8>>,
    pub operational: Vec<Vec<u8>>,
}

impl Ca {
    /// Signs and stores the next CRL of `issuer`, and returns once the TLS layer carries it.
    pub async fn publish_crl(&self, issuer: IssuerId) -> Result<CrlRecord, Error> {
        let crl = self.sign_next_crl(issuer).await?;
        tracing::info!(issuer = %issuer, number = crl.number, "signed CRL");
        // The database holds the CRL; the copy outside it is what a restore is checked
        // against, so a failure here is loud but does not undo the signed CRL.
        if let Err(e) = self.keep_crl(issuer, &crl) {
            tracing::error!(error = %e, "keeping a copy of the CRL outside the database failed");
        }
        let generation = self.crls.signed();
        self.crls.wait_applied(generation).await;
        Ok(crl)
    }

    /// Plans the next CRL from what the store holds ([`policy::crl::next`]), signs it, and
    /// records it if nothing changed meanwhile; otherwise plans again.
    async fn sign_next_crl(&self, issuer: IssuerId) -> Result<CrlRecord, Error> {
        let _turn = self.crls.turn.lock().await;
        for _ in 0..CRL_ATTEMPTS {
            let now = self.clock.now();
            let basis = self.store.crl_basis(issuer).await?;
            let plan = policy::crl::next(&basis, now, self.crl_validity);
            let entries = self.store.crl_entries(issuer, plan.listed_from).await?;
            let der = self.authority.sign_crl(
                issuer,
                plan.number as u64,
                plan.this_update,
                plan.next_update,
                &entries,
            )?;
            let event = AuditEvent::new(
                now,
                Actor::system(),
                crate::audit::Action::CrlSign,
                Target::ca(&issuer.label()),
            )
            .with("number", plan.number)
            .with("this_update", plan.this_update.unix_timestamp())
            .with("next_update", plan.next_update.unix_timestamp())
            .with("entries", entries.len() as i64)
            .with("crl_sha256", fingerprint(&der));
            let signed = SignedCrl {
                basis,
                plan,
                entries,
                der,
            };
            match self.store.record_crl(issuer, &signed, &event).await? {
                CrlSaved::Recorded(crl) => return Ok(crl),
                CrlSaved::Stale => {
                    tracing::debug!(issuer = %issuer, "CRL planned over changed data; again")
                }
            }
        }
        Err(Error::Unavailable(format!(
            "the CRL of {issuer} changed under {CRL_ATTEMPTS} signings in a row; retry"
        )))
    }

    /// Signs the next CRL of each of `issuers` (each once, whatever the repeats).
    pub(super) async fn publish_crls_of(&self, mut issuers: Vec<IssuerId>) -> Result<(), Error> {
        issuers.sort();
        issuers.dedup();
        for issuer in issuers {
            self.publish_crl(issuer).await?;
        }
        Ok(())
    }

    /// The current CRL of `issuer` (signing the first one if none exists yet).
    pub async fn current_crl(&self, issuer: IssuerId) -> Result<CrlRecord, Error> {
        match self.store.latest_crl(issuer).await? {
            Some(crl) => Ok(crl),
            None => self.publish_crl(issuer).await,
        }
    }

    /// The CRL over gRPC: any authenticated caller.
    pub async fn crl_for(
        &self,
        who: &Principal,
        issuer: IssuerFilter,
    ) -> Result<(IssuerId, CrlRecord), Refused> {
        let action = Action::GetCrl;
        let target = match (issuer.name, issuer.generation) {
            (Some(name), Some(generation)) => Target::ca(&IssuerId { name, generation }.label()),
            (Some(name), None) => Target::ca(name.as_str()),
            _ => Target::ca("unspecified"),
        };
        let read = async {
            policy::authorize(who, action)?;
            let name = issuer
                .name
                .ok_or_else(|| Error::InvalidArgument("name the issuer of the CRL".into()))?;
            let id = match issuer.generation {
                None => self.authority.current(name).id,
                Some(generation) => {
                    let id = IssuerId { name, generation };
                    self.authority.issuer_cert(id).map(|_| id)?
                }
            };
            Ok((id, self.current_crl(id).await?))
        };
        self.audited(who, action.audit(), &target, read.await).await
    }

    pub async fn trust_bundle(&self, who: &Principal) -> Result<TrustBundle, Refused> {
        let action = Action::TrustBundle;
        self.audited(
            who,
            action.audit(),
            &Target::service(),
            policy::authorize(who, action),
        )
        .await?;
        Ok(self.public_trust_bundle())
    }

    pub fn public_trust_bundle(&self) -> TrustBundle {
        let in_service = self.issuers_in_service();
        let of = |name: IssuerName| {
            in_service
                .iter()
                .rev()
                .filter(|i| i.id.name == name)
                .filter_map(|i| self.authority.issuer_cert(i.id).ok())
                .map(|c| c.der.to_vec())
                .collect()
        };
        TrustBundle {
            root: self.authority.root().der.to_vec(),
            device_identity: of(IssuerName::DeviceIdentity),
            operational: of(IssuerName::Operational),
        }
    }

    /// Certificate status for gateways (and admins, auditors). Never "good" for a certificate
    /// medid did not issue and record.
    pub async fn certificate_status(
        &self,
        who: &Principal,
        query: CertificateStatusQuery,
    ) -> Result<StatusAnswer, Refused> {
        let action = Action::CertificateStatus;
        let target = match &query {
            CertificateStatusQuery::Serial { serial, .. } => Target::certificate(serial),
            CertificateStatusQuery::Der(_) => Target::certificates(),
        };
        let answered = async {
            policy::authorize(who, action)?;
            self.status_of_query(query).await
        };
        self.audited(who, action.audit(), &target, answered.await)
            .await
    }

    async fn status_of_query(&self, query: CertificateStatusQuery) -> Result<StatusAnswer, Error> {
        let record = match query {
            CertificateStatusQuery::Serial { issuer, serial } => {
                let serial = crate::domain::CertSerial::parse_hex(&serial)?;
                let issuers = self.issuers_matching(issuer);
                let mut found = None;
                for i in issuers {
                    if let Some(c) = self.store.certificate(i, &serial).await? {
                        found = Some(c);
                        break;
                    }
                }
                found
            }
            CertificateStatusQuery::Der(der) => {
                match self.store.peer_by_fingerprint(&fingerprint(&der)).await? {
                    Some(peer) => match self.authority.issuer_of_certificate(&der) {
                        Some(issuer) => self.store.certificate(issuer, &peer.serial).await?,
                        None => None,
                    },
                    None => None,
                }
            }
        };
        let status = record.as_ref().map_or(CertStatus::Unknown, status_of);
        Ok(StatusAnswer {
            status,
            certificate: record,
            checked_at: self.clock.now(),
        })
    }

    /// Answers an OCSP request (RFC 6960). Always returns a DER OCSPResponse: errors are
    /// encoded as OCSP error statuses, never as HTTP errors. Signed answers are reused
    /// (`service::ocsp_cache`), so a repeated request costs a lookup, not a signature.
    pub async fn ocsp(&self, query: Option<OcspQuery>) -> Vec<u8> {
        let Some(query) = query.filter(|q| !q.cert_ids.is_empty()) else {
            return ocsp::error_response(ocsp::ErrorStatus::MalformedRequest);
        };
        // RFC 8954 §2.1: a nonce is 1 to 32 octets; a longer one is refused, not echoed.
        if query
            .nonce
            .as_deref()
            .map(nonce_len)
            .is_some_and(|n| n == 0 || n > MAX_NONCE)
        {
            return ocsp::error_response(ocsp::ErrorStatus::MalformedRequest);
        }
        let issuer = query.cert_ids.iter().find_map(|id| {
            self.authority
                .issuer_for_cert_id(id.hash, &id.issuer_name_hash, &id.issuer_key_hash)
        });
        let Some(issuer) = issuer else {
            // RFC 6960 §2.3: not authoritative for these certificates.
            return ocsp::error_response(ocsp::ErrorStatus::Unauthorized);
        };
        let now = self.clock.now();
        let mut statuses = Vec::with_capacity(query.cert_ids.len());
        for id in &query.cert_ids {
            let same_issuer = self.authority.issuer_for_cert_id(
                id.hash,
                &id.issuer_name_hash,
                &id.issuer_key_hash,
            ) == Some(issuer);
            let status = if !same_issuer {
                CertStatus::Unknown
            } else {
                match self
                    .store
                    .certificate(
                        issuer,
                        &crate::domain::CertSerial::from_bytes(id.serial.clone()),
                    )
                    .await
                {
                    Ok(Some(record)) => status_of(&record),
                    Ok(None) => CertStatus::Unknown,
                    Err(e) => {
                        tracing::warn!(error = %e, "OCSP lookup failed");
                        return ocsp::error_response(ocsp::ErrorStatus::TryLater);
                    }
                }
            };
            statuses.push(status);
        }
        let key: Vec<u8> = query
            .cert_ids
            .iter()
            .flat_map(|id| id.der.iter().copied())
            .collect();
        let cached = || self.ocsp_cache.get(&key, &statuses, now);
        // Without a nonce the cached answer is the answer; with one, it is the fallback once
        // the budget of fresh signatures is spent.
        if query.nonce.is_none() {
            if let Some(der) = cached() {
                return der;
            }
        }
        if !self.ocsp_cache.may_sign() {
            return cached().unwrap_or_else(|| ocsp::error_response(ocsp::ErrorStatus::TryLater));
        }
        let responses: Vec<SingleResponse> = query
            .cert_ids
            .iter()
            .zip(&statuses)
            .map(|(id, status)| SingleResponse {
                cert_id_der: id.der.clone(),
                status: status.clone(),
                this_update: now,
                next_update: now + OCSP_VALIDITY,
            })
            .collect();
        match self
            .authority
            .sign_ocsp(issuer, &responses, query.nonce.as_deref(), now)
        {
            Ok(der) => {
                if query.nonce.is_none() {
                    self.ocsp_cache.put(key, statuses, der.clone(), now);
                }
                der
            }
            Err(e) => {
                tracing::error!(error = %e, "OCSP signing failed");
                ocsp::error_response(ocsp::ErrorStatus::InternalError)
            }
        }
    }

    /// Periodic upkeep: load issuing-CA generations `medid ca rotate` added and the root CRL
    /// `medid ca revoke-issuer` wrote, re-sign the root CRL when the root key is online, re-sign
    /// each CRL at half its validity, renew OCSP responders and the TLS server certificate, and warn of
    /// CA certificates ending soon.
    pub async fn maintain(&self) -> Result<(), Error> {
        self.load_new_generations().await?;
        let now = self.clock.now();
        if let Some(crl) = self
            .authority
            .renew_root_crl(now, crate::issuance::root_crl::ROOT_CRL_VALIDITY)?
        {
            tracing::info!(
                number = crl.number,
                "signed the root CA's CRL with the online root key"
            );
        }
        self.record_root_crl().await?;
        for issuer in self.issuers_in_service().into_iter().map(|i| i.id) {
            // Due at half its validity, or at once when a revocation was recorded at or
            // after it was signed (its publication failed: the signer was away, say).
            let stale = match self.store.crl_head(issuer).await? {
                Some(crl) => {
                    now >= crl.this_update + self.crl_validity / 2
                        || self
                            .store
                            .latest_revocation(issuer)
                            .await?
                            .is_some_and(|at| at >= crl.this_update)
                }
                None => true,
            };
            if stale {
                self.publish_crl(issuer).await?;
            }
        }
        self.ensure_ocsp_responders().await?;
        self.ensure_server_certificate().await.map(|_| ())
    }
}

/// The length of a nonce as RFC 8954 counts it: the extension's value is the DER of an OCTET
/// STRING (`Nonce ::= OCTET STRING (SIZE(1..32))`); a bare value, as some older clients send,
/// counts whole.
fn nonce_len(value: &[u8]) -> usize {
    let mut r = crate::der::Reader::new(value);
    match r.expect(crate::der::tag::OCTET_STRING) {
        Some(inner) if r.is_empty() => inner.content.len(),
        _ => value.len(),
    }
}

fn status_of(c: &CertRecord) -> CertStatus {
    match c.status {
        CertState::Active => CertStatus::Good,
        CertState::Revoked => CertStatus::Revoked {
            at: c.revoked_at.unwrap_or(c.not_before),
            reason: c.reason,
        },
        // Reserved by an older version, never completed: never "good".
        CertState::Reserved => CertStatus::Unknown,
    }
}

/// Re-exported for the edge: reason names for status answers.
pub fn reason_name(r: Option<RevocationReason>) -> &'static str {
    r.map_or("", RevocationReason::name)
}
