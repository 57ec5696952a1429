//! The audit ledger's use cases: access events from gateways, checkpoints and proofs, exports
//! and queries for compliance officers (docs/AUDIT.md).

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{json, Value};
use time::{Duration, OffsetDateTime};
use tokio::sync::{mpsc, Mutex};

use super::{Ca, Refused};
use crate::audit::checkpoint::Checkpoint;
use crate::audit::merkle::{self, Hash};
use crate::audit::{ledger, Actor, AuditEvent, Target};
use crate::domain::{quote, Principal};
use crate::error::Error;
use crate::issuance::checkpoint_key::CheckpointSigner;
use crate::policy;
use crate::store::ledger::AuditQuery;
use crate::store::registry::{DeviceRecord, DeviceState};
use crate::store::{AuditLog, MerkleLog, Registry, Retention};

/// Events per page an export reads.
const EXPORT_PAGE: i64 = 500;

/// Checkpointing settings and state.
#[derive(Debug)]
pub struct Ledger {
    pub signer: CheckpointSigner,
    /// Directory outside the database where every checkpoint is also appended.
    pub checkpoint_dir: PathBuf,
    /// Sign after this many new events…
    pub every_events: u64,
    /// …or after this long, if the log grew.
    pub every: Duration,
    /// Serialises checkpoint signing (one note per tree size), and remembers when this
    /// process last re-read the whole log.
    pub signing: Mutex<Checked>,
}

/// What this process has checked of the log.
#[derive(Debug, Default)]
pub struct Checked {
    /// When the whole log was last re-read and found to extend the signed checkpoints (none
    /// yet since the start).
    pub full_at: Option<OffsetDateTime>,
    /// The damage the last periodic check found and raised as `audit.integrity` (raised once,
    /// not every second while it lasts).
    pub raised: Option<String>,
}

/// Every checkpoint checks what was added since the last signed one: each new event's leaf
/// hash recomputed from its stored members, the stored tree nodes those events complete, and
/// that the stored tree still yields the last signed root (O(k + log n) for k new events). At
/// least this often the maintenance loop also re-reads the leaf hashes of the whole log, so an
/// older row deleted, moved or rehashed behind medid's back is found and raised as
/// `audit.integrity` within this time; an unfiltered export checks the leaf hashes it streams.
/// `medid audit fsck` re-derives everything.
pub const FULL_CHECK_EVERY: Duration = Duration::hours(24);

/// Events per page an integrity check reads.
const CHECK_PAGE: i64 = 2048;

/// How much of the log a checkpoint re-reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reread {
    /// The leaf hashes of every event: the log must extend the previous signed checkpoint.
    All,
    /// Only what was added since the last signed checkpoint: what a request waits for. While
    /// a periodic check's damage stands, it refuses with that damage instead of signing.
    Since,
    /// The maintenance loop's check: what was added, even while damage stands (to find it
    /// repaired). When [`FULL_CHECK_EVERY`] has passed, the loop re-reads the whole log first,
    /// outside the signing lock, so no request waits for a long re-read.
    Periodic,
}

/// What a gateway reports about one access to device data, validated.
#[derive(Debug, Clone)]
pub struct AccessInput {
    pub device: DeviceLocator,
    pub user_id: Option<String>,
    pub user_role: Option<String>,
    /// create, read, update, delete, export.
    pub action: crate::audit::action::DataAction,
    pub data_category: String,
    /// Opaque; PHI: goes into the ledger only.
    pub patient_ref: Option<String>,
    pub purpose_of_use: String,
    /// FHIR AuditEvent.outcome code: 0, 4, 8, 12.
    pub outcome_code: u8,
    pub occurred_at: OffsetDateTime,
    /// When the access ended, if the reporter says.
    pub completed_at: Option<OffsetDateTime>,
    /// The reporter's id of the event: sent again, it is not recorded twice.
    pub event_id: Option<String>,
    /// What was reached (a request path); like `patient_ref`, ledger only.
    pub resource: Option<String>,
}

#[derive(Debug, Clone)]
pub enum DeviceLocator {
    Uri(String),
    Serial {
        manufacturer: crate::domain::ManufacturerId,
        serial: String,
    },
}

impl DeviceLocator {
    /// The audit target of the device this names.
    pub fn target(&self, td: &crate::domain::TrustDomain) -> Target {
        match self {
            DeviceLocator::Uri(uri) => Target::device_uri(td, uri),
            DeviceLocator::Serial {
                manufacturer,
                serial,
            } => Target::device(td, manufacturer.as_str(), serial),
        }
    }
}

/// Data categories a gateway may report (docs/AUDIT.md).
pub const DATA_CATEGORIES: [&str; 8] = [
    "vital-signs",
    "waveform",
    "alarms",
    "settings",
    "device-log",
    "firmware",
    "identity",
    "location",
];

/// HL7 v3 ActReason (purpose of use) codes accepted.
pub const PURPOSES: [&str; 14] = [
    "TREAT",
    "ETREAT",
    "CAREMGT",
    "HPAYMT",
    "HOPERAT",
    "HRESCH",
    "PUBHLTH",
    "HSYSADMIN",
    "HQUALIMP",
    "HLEGAL",
    "PATRQT",
    "HMARKT",
    "HTEST",
    "DISASTER",
];

impl Ca {
    fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Records access events from a gateway in one transaction; acknowledged once durable.
    pub async fn record_access(
        &self,
        who: &Principal,
        inputs: Vec<AccessInput>,
    ) -> Result<Vec<(i64, bool)>, Refused> {
        let action = crate::audit::Action::DataAccess;
        if let Err(err) = policy::authorize(who, policy::Action::ReportAccess) {
            return Err(self.refuse(who, action, &Target::devices(), err).await);
        }
        let now = self.clock.now();
        let td = &self.profiles.trust_domain;
        for input in &inputs {
            // The target is built only for a refusal: this is the hot path of every report.
            if let Err(e) =
                crate::policy::check_access_time(input.occurred_at, now, self.access_max_age)
            {
                return Err(self.refuse(who, action, &input.device.target(td), e).await);
            }
        }
        let mut events = Vec::with_capacity(inputs.len());
        let mut flags = Vec::with_capacity(inputs.len());
        // A batch usually names few devices many times: look each up once.
        let mut devices: std::collections::HashMap<String, DeviceRecord> =
            std::collections::HashMap::new();
        for input in inputs {
            let key = match &input.device {
                DeviceLocator::Uri(uri) => format!("uri {uri}"),
                DeviceLocator::Serial {
                    manufacturer,
                    serial,
                } => format!("serial {manufacturer} {serial}"),
            };
            let device = match devices.get(&key) {
                Some(d) => Ok(d.clone()),
                None => match &input.device {
                    DeviceLocator::Uri(uri) => self.store.device_by_uri(uri).await,
                    DeviceLocator::Serial {
                        manufacturer,
                        serial,
                    } => self.store.device(manufacturer, serial).await,
                },
            };
            let device = match device {
                Ok(d) => d,
                Err(e) => return Err(self.refuse(who, action, &input.device.target(td), e).await),
            };
            devices.insert(key, device.clone());
            let decommissioned = device.state == DeviceState::Decommissioned;
            let occurred_at = match ledger::rfc3339(input.occurred_at) {
                Ok(t) => t,
                Err(e) => return Err(self.refuse(who, action, &input.device.target(td), e).await),
            };
            let mut e = AuditEvent::new(now, Actor::of(who), action, Target::uri(&device.uri))
                .with("access_action", input.action.name())
                .with("data_category", input.data_category)
                .with("purpose_of_use", input.purpose_of_use)
                .with("access_outcome", input.outcome_code)
                .with("occurred_at", occurred_at)
                .with("manufacturer", device.manufacturer_id.clone())
                .with("device_uri", device.uri.clone())
                .with("device_decommissioned", decommissioned);
            if let Some(u) = input.user_id {
                e = e.with("user_id", u);
            }
            if let Some(r) = input.user_role {
                e = e.with("user_role", r);
            }
            if let Some(p) = input.patient_ref {
                e = e.with("patient_ref", p);
            }
            if let Some(r) = input.resource {
                e = e.with("resource", r);
            }
            if let Some(at) = input.completed_at {
                match ledger::rfc3339(at) {
                    Ok(t) => e = e.with("completed_at", t),
                    Err(err) => {
                        return Err(self
                            .refuse(who, action, &input.device.target(td), err)
                            .await)
                    }
                }
            }
            if let Some(id) = &input.event_id {
                e = e.with("event_id", id.clone());
            }
            if decommissioned {
                e.reason = Some("access to a decommissioned device".into());
            }
            flags.push(decommissioned);
            events.push((e, input.event_id));
        }
        let appended = self.store.append_access(events).await;
        let seqs = self
            .audited(who, action, &Target::devices(), appended)
            .await?;
        Ok(seqs.into_iter().zip(flags).collect())
    }

    /// Refuses a tree size a request names (`field`) that is beyond the log.
    async fn within_log(&self, field: &str, asked: u64) -> Result<(), Error> {
        let size = self.store.tree_size().await?;
        if asked > size {
            return Err(Error::InvalidArgument(format!(
                "{field} {asked} is beyond the log, which has {size} events"
            )));
        }
        Ok(())
    }

    /// The newest checkpoint medid signed, from the database or from the copy outside it
    /// (whichever covers more: an attacker with only database access cannot roll it back).
    pub async fn latest_known_checkpoint(&self) -> Result<Option<(Checkpoint, String)>, Error> {
        let mut best: Option<(Checkpoint, String)> = None;
        if let Some((_, note, _)) = self.store.latest_checkpoint().await? {
            best = Some((self.parse_own(&note)?, note));
        }
        let outside = self.ledger().checkpoint_dir.join("latest.note");
        if let Ok(note) = std::fs::read_to_string(&outside) {
            match self.parse_own(&note) {
                Ok(cp) if best.as_ref().is_none_or(|(b, _)| cp.size > b.size) => {
                    best = Some((cp, note))
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, path = %outside.display(), "checkpoint copy does not verify")
                }
            }
        }
        Ok(best)
    }

    /// The signed checkpoint covering the whole log now, signing one if the log grew. Refuses
    /// (an `audit log integrity` error) when the log no longer extends the last checkpoint.
    pub async fn checkpoint_now(&self) -> Result<(Checkpoint, String), Error> {
        self.checkpoint(Reread::All).await
    }

    async fn checkpoint(&self, reread: Reread) -> Result<(Checkpoint, String), Error> {
        let l = self.ledger();
        let mut checked = l.signing.lock().await;
        if reread == Reread::Since {
            if let Some(damage) = &checked.raised {
                return Err(Error::Integrity(damage.clone()));
            }
        }
        let size = self.store.tree_size().await?;
        let known = self.latest_known_checkpoint().await?;
        if let Some((cp, _)) = &known {
            if cp.size > size {
                return Err(Error::Integrity(format!(
                    "audit log: a signed checkpoint covers {} events but the log has {size}",
                    cp.size
                )));
            }
        }
        let now = self.clock.now();
        // The period starts with the process: a restart trusts the last signed checkpoint and
        // checks the stored tree against it, instead of re-reading a long log at every start.
        checked.full_at.get_or_insert(now);
        let range = if reread == Reread::All {
            let range = self.reread_all(size, known.as_ref()).await?;
            // The events since the last checkpoint are re-hashed from their members as well.
            self.verify_since(known.as_ref().map(|(cp, _)| cp), size)
                .await?;
            checked.full_at = Some(now);
            range
        } else {
            self.verify_since(known.as_ref().map(|(cp, _)| cp), size)
                .await?
        };
        let root = range.root();
        if let Some((cp, note)) = &known {
            if cp.size == size && root == cp.root {
                return Ok((cp.clone(), note.clone()));
            }
        }
        let cp = Checkpoint {
            origin: l.signer.name().to_owned(),
            size,
            root,
        };
        let note = l.signer.sign(&cp)?;
        let inserted = self
            .store
            .save_checkpoint(size, &root, &note, self.clock.now())
            .await?;
        // One checkpoint per tree size: a replica that lost the race keeps its copy out of
        // the outside directory (the winner's note is byte-identical).
        if inserted {
            append_outside(&l.checkpoint_dir, &note)?;
        }
        Ok((cp, note))
    }

    /// The incremental check: the stored tree still yields `base`'s signed root, and every
    /// event after it, up to `size`, hashes (from its stored members) to its stored leaf hash
    /// and to the stored nodes it completes. Returns the log's compact range at `size`.
    async fn verify_since(
        &self,
        base: Option<&Checkpoint>,
        size: u64,
    ) -> Result<merkle::CompactRange, Error> {
        let mut range = match base {
            Some(cp) => {
                let range = self.store.compact_range(cp.size).await?;
                if range.root() != cp.root {
                    return Err(Error::Integrity(format!(
                        "audit log: the stored Merkle tree no longer yields the signed root of \
                         the first {} events",
                        cp.size
                    )));
                }
                range
            }
            None => merkle::CompactRange::default(),
        };
        super::fsck::rehash(
            &self.store,
            &mut range,
            size,
            CHECK_PAGE,
            |_| Ok(()),
            |_| {},
        )
        .await?;
        Ok(range)
    }

    /// One streaming pass over the whole log (O(log n) memory): its compact range, after
    /// checking that the previous signed checkpoint is a prefix of it (a rewrite is refused,
    /// loudly).
    async fn reread_all(
        &self,
        size: u64,
        known: Option<&(Checkpoint, String)>,
    ) -> Result<merkle::CompactRange, Error> {
        let prefix = known.map(|(cp, _)| cp.size);
        // Archived events have no rows: the pass starts from the stored tree's compact range
        // of them (the signed root it must reach vouches for it).
        let archived = self.store.archived_through().await?;
        let mut range = self.store.compact_range(archived).await?;
        let mut prefix_root = match prefix {
            Some(p) if p < archived => Some(self.store.compact_range(p).await?.root()),
            Some(p) if p == archived => Some(range.root()),
            _ => None,
        };
        self.store
            .fold_leaf_hashes_after(archived, size, |count, leaf| {
                range.push(leaf);
                if Some(count) == prefix {
                    prefix_root = Some(range.root());
                }
            })
            .await?;
        if let Some((prev, _)) = known {
            if prefix_root != Some(prev.root) {
                return Err(Error::Integrity(format!(
                    "audit log: the first {} events no longer match their signed checkpoint",
                    prev.size
                )));
            }
        }
        Ok(range)
    }

    /// Whether damage a periodic check raised stands, and when this process last re-read the
    /// whole log (or started its period), for `/metrics`.
    pub async fn integrity_state(&self) -> (bool, Option<OffsetDateTime>) {
        let checked = self.ledger().signing.lock().await;
        (checked.raised.is_some(), checked.full_at)
    }

    /// The whole-log re-read, when [`FULL_CHECK_EVERY`] has passed since the last: outside the
    /// signing lock, so requests for checkpoints and exports do not wait for it.
    async fn reread_all_when_due(&self) -> Result<(), Error> {
        let l = self.ledger();
        let now = self.clock.now();
        let due = l
            .signing
            .lock()
            .await
            .full_at
            .is_some_and(|at| now - at >= FULL_CHECK_EVERY);
        if !due {
            return Ok(());
        }
        let size = self.store.tree_size().await?;
        let known = self.latest_known_checkpoint().await?;
        self.reread_all(size, known.as_ref()).await?;
        l.signing.lock().await.full_at = Some(now);
        Ok(())
    }

    pub(super) fn parse_own(&self, note: &str) -> Result<Checkpoint, Error> {
        let l = self.ledger();
        crate::audit::checkpoint::verify(note, l.signer.name(), &l.signer.public_key())
            .map_err(|e| Error::Internal(format!("stored checkpoint: {e}")))
    }

    /// Signs a checkpoint every N events or T seconds (from the maintenance loop).
    pub async fn maybe_checkpoint(&self) -> Result<(), Error> {
        let size = self.store.tree_size().await?;
        let (last_size, last_at) = match self.store.latest_checkpoint().await? {
            Some((s, _, at)) => (s, Some(at)),
            None => (0, None),
        };
        let l = self.ledger();
        let grew = size > last_size;
        let many = size - last_size.min(size) >= l.every_events;
        let old = last_at.is_none_or(|at| self.clock.now() - at >= l.every);
        if grew && (many || old) {
            let checked = async {
                self.reread_all_when_due().await?;
                self.checkpoint(Reread::Periodic).await
            };
            match checked.await {
                Ok(_) => l.signing.lock().await.raised = None,
                Err(Error::Integrity(text)) => {
                    let damage = Error::Integrity(text.clone());
                    let new = {
                        let mut checked = l.signing.lock().await;
                        let new = checked.raised.as_ref() != Some(&text);
                        checked.raised = Some(text);
                        new
                    };
                    if new {
                        self.raise_integrity(&damage).await?;
                    }
                    return Err(damage);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub async fn signed_checkpoint(
        &self,
        who: &Principal,
    ) -> Result<(Checkpoint, String), Refused> {
        let signed = async {
            policy::authorize(who, policy::Action::ReadCheckpoint)?;
            self.checkpoint(Reread::Since).await
        };
        self.audited(
            who,
            crate::audit::Action::AuditCheckpointRead,
            &Target::ledger(),
            signed.await,
        )
        .await
    }

    pub async fn inclusion_proof(
        &self,
        who: &Principal,
        seq: i64,
        tree_size: u64,
    ) -> Result<(Hash, Vec<Hash>), Refused> {
        let proved = async {
            policy::authorize(who, policy::Action::ReadProof)?;
            if seq < 1 || tree_size < seq as u64 {
                return Err(Error::InvalidArgument(format!(
                    "seq must be 1..=tree_size (got seq {seq}, tree_size {tree_size})"
                )));
            }
            self.within_log("tree_size", tree_size).await?;
            let archived = self.store.archived_through().await?;
            if seq as u64 <= archived {
                return Err(archived_event(seq, archived));
            }
            // From the stored tree: O(log n) reads, whatever the log's length.
            let index = (seq - 1) as usize;
            let ranges = merkle::inclusion_ranges(index, tree_size as usize)
                .ok_or_else(|| Error::Internal("inclusion proof out of range".into()))?;
            let leaf =
                self.store.leaf_hash(seq).await?.ok_or_else(|| {
                    Error::Integrity(format!("audit log: sequence {seq} is missing"))
                })?;
            Ok((leaf, self.store.subtree_roots(&ranges).await?))
        };
        self.audited(
            who,
            crate::audit::Action::AuditProofRead,
            &Target::ledger(),
            proved.await,
        )
        .await
    }

    pub async fn consistency_proof(
        &self,
        who: &Principal,
        old: u64,
        new: u64,
    ) -> Result<Vec<Hash>, Refused> {
        let proved = async {
            policy::authorize(who, policy::Action::ReadProof)?;
            if old == 0 || old > new {
                return Err(Error::InvalidArgument(format!(
                    "need 1 <= old_size <= new_size (got {old}, {new})"
                )));
            }
            self.within_log("new_size", new).await?;
            let ranges = merkle::consistency_ranges(old as usize, new as usize)
                .ok_or_else(|| Error::Internal("consistency proof out of range".into()))?;
            match self.store.subtree_roots(&ranges).await {
                Err(Error::Integrity(e)) => {
                    let archived = self.store.archived_through().await?;
                    if old > archived {
                        return Err(Error::Integrity(e));
                    }
                    Err(Error::FailedPrecondition(format!(
                        "old_size {old} lies in the archived part of the log (events \
                         1..={archived}) and is not the size of a signed checkpoint, the only \
                         sizes whose proofs survive archiving"
                    )))
                }
                proved => proved,
            }
        };
        self.audited(
            who,
            crate::audit::Action::AuditProofRead,
            &Target::ledger(),
            proved.await,
        )
        .await
    }

    /// Streams a verifiable bundle (docs/AUDIT.md "Bundle"): header, events with leaf hashes
    /// (and inclusion proofs when filtered), the signed checkpoint, the end line. The export is
    /// audited before any data leaves (no audit, no export).
    pub async fn export(
        self: &Arc<Self>,
        who: &Principal,
        query: AuditQuery,
        previous_size: u64,
    ) -> Result<mpsc::Receiver<Result<String, Refused>>, Refused> {
        let action = crate::audit::Action::AuditExport;
        let checks = async {
            policy::authorize(who, policy::Action::ExportAudit)?;
            self.within_log("previous_tree_size", previous_size).await
        };
        self.audited(who, action, &Target::ledger(), checks.await)
            .await?;
        let filter = filter_json(&query);
        let prepared = self
            .prepare_export(who, &query, &filter, previous_size)
            .await;
        let (cp, note, filtered, consistency) = self
            .audited(who, action, &Target::ledger(), prepared)
            .await?;
        let (tx, rx) = mpsc::channel(64);
        let ca = self.clone();
        let exporter = who.uri.clone();
        Self::stream_export(ExportStream {
            ca,
            actor: Actor::of(who),
            tx,
            query,
            filter,
            cp,
            note,
            filtered,
            consistency,
            exporter,
            previous_size,
        });
        Ok(rx)
    }

    /// The export's one success event (written before any data leaves), the checkpoint it is
    /// verified against, and the consistency proof from `previous_size` (from the stored tree).
    async fn prepare_export(
        &self,
        who: &Principal,
        query: &AuditQuery,
        filter: &Value,
        previous_size: u64,
    ) -> Result<(Checkpoint, String, bool, Option<Vec<Hash>>), Error> {
        let action = crate::audit::Action::AuditExport;
        let event = AuditEvent::new(self.clock.now(), Actor::of(who), action, Target::ledger())
            .with("filter", filter.clone())
            .with("dicom_event", "110106");
        self.store.record_event(&event).await?;
        let filtered = !query.is_empty();
        // What was added since the last checkpoint is checked here, O(k + log n). An unfiltered
        // export also folds every leaf hash it streams and compares the root with the signed
        // one before its checkpoint line (`stream_export`): a whole-log re-read before the
        // first line would keep the caller waiting minutes on a long log.
        let (cp, note) = match self.checkpoint(Reread::Since).await {
            Ok(c) => c,
            Err(damage @ Error::Integrity(_)) => {
                // Export what is there under the last trustworthy checkpoint, so the verifier
                // names the damage; and raise the alarm in the log itself.
                self.raise_integrity(&damage).await?;
                self.latest_known_checkpoint().await?.ok_or(damage)?
            }
            Err(e) => return Err(e),
        };
        if previous_size > cp.size {
            return Err(Error::InvalidArgument(format!(
                "previous_tree_size {previous_size} is beyond the current checkpoint ({})",
                cp.size
            )));
        }
        let consistency = if previous_size > 0 && previous_size < cp.size {
            let ranges = merkle::consistency_ranges(previous_size as usize, cp.size as usize)
                .ok_or_else(|| Error::Internal("consistency proof out of range".into()))?;
            match self.store.subtree_roots(&ranges).await {
                Ok(proof) => Some(proof),
                // A damaged stored tree: the bundle goes without, and its verifier says so.
                Err(Error::Integrity(e)) => {
                    tracing::error!(detail = %e, "no consistency proof for the export");
                    None
                }
                Err(e) => return Err(e),
            }
        } else {
            (previous_size > 0).then(Vec::new)
        };
        Ok((cp, note, filtered, consistency))
    }

    /// Raises damage an integrity check found: logged, and recorded in the log itself as an
    /// `audit.integrity` event (failed) naming it.
    async fn raise_integrity(&self, damage: &Error) -> Result<(), Error> {
        tracing::error!(detail = %damage, "audit log integrity check failed");
        let mut alert = AuditEvent::new(
            self.clock.now(),
            Actor::system(),
            crate::audit::Action::AuditIntegrity,
            Target::ledger(),
        )
        .with("detail", damage.to_string());
        alert.outcome = crate::audit::Outcome::Failed;
        self.store.record_event(&alert).await.map(|_| ())
    }

    /// A failure part-way through an export (its success event is already written): recorded
    /// as a failed export, then ends the stream.
    async fn export_failed(&self, actor: &Actor, err: Error) -> Refused {
        self.refuse_as(
            actor,
            crate::audit::Action::AuditExport,
            &Target::ledger(),
            err,
        )
        .await
    }

    /// Streams the bundle's lines into `tx` on a task of its own.
    fn stream_export(e: ExportStream) {
        let ExportStream {
            ca,
            actor,
            tx,
            query,
            filter,
            cp,
            note,
            filtered,
            consistency,
            exporter,
            previous_size,
        } = e;
        tokio::spawn(async move {
            let prefix = match ca.archived_prefix(filtered).await {
                Ok(p) => p,
                Err(e) => {
                    let _ = tx.send(Err(ca.export_failed(&actor, e).await)).await;
                    return;
                }
            };
            let archived = prefix.0;
            let mut header = json!({
                "type": "header", "format": "medid-audit-bundle", "version": 1,
                "origin": cp.origin, "tree_size": cp.size, "filtered": filtered,
                "filter": filter, "exported_by": exporter,
                "exported_at": ledger::rfc3339(ca.clock.now()).unwrap_or_default(),
                "archived_through": archived,
            });
            if let Some(range) = &prefix.1 {
                header["prefix"] = prefix_json(range);
            }
            if tx.send(Ok(header.to_string())).await.is_err() {
                return;
            }
            // Pages are read, and their lines written, one page ahead on another task while
            // this one hands lines to the gRPC stream. Each line is written straight from the
            // row SQLite lends (`Store::scan_ledger`), so nothing is copied out of it first.
            let (pages_tx, mut pages) = mpsc::channel::<Result<Vec<String>, Error>>(2);
            // A complete export's verdict on the stored leaf hashes, sent before its last page.
            let (verdict_tx, verdict) = tokio::sync::oneshot::channel::<Option<Error>>();
            let mut folded = prefix.1.clone().unwrap_or_default();
            let (signed_size, signed_root) = (cp.size, cp.root);
            let store = ca.store.clone();
            tokio::spawn(async move {
                let mut damage: Option<Error> = None;
                let mut after = archived as i64;
                let mut up_to = cp.size as i64;
                if query.from.is_some() || query.to.is_some() {
                    match store.time_span(query.from, query.to).await {
                        Ok(Some((first, last))) => {
                            after = after.max(first - 1);
                            up_to = up_to.min(last);
                        }
                        Ok(None) => up_to = 0,
                        Err(e) => {
                            let _ = pages_tx.send(Err(e)).await;
                            return;
                        }
                    }
                }
                loop {
                    let mut lines = Vec::with_capacity(EXPORT_PAGE as usize);
                    let mut starts = Vec::new();
                    let mut last = None;
                    let mut write = |seq: i64, fields: ledger::EventFields<'_>, leaf: &str| {
                        if filtered {
                            // Finished once the page's proofs are read.
                            let start = ledger::export_line_start(seq, &fields)?;
                            starts.push((seq, start, leaf.to_owned()));
                        } else {
                            lines.push(ledger::export_line(seq, &fields, leaf, None)?);
                            if damage.is_none() {
                                damage = fold_stored(&mut folded, seq, leaf).err();
                            }
                        }
                        last = Some(seq);
                        Ok(())
                    };
                    let scanned = store
                        .scan_ledger(&query, after, up_to, EXPORT_PAGE, &mut write)
                        .await;
                    let page = match scanned {
                        Ok(()) if filtered => with_proofs(&store, cp.size, starts).await,
                        Ok(()) => Ok(lines),
                        Err(e) => Err(e),
                    };
                    let failed = page.is_err();
                    if pages_tx.send(page).await.is_err() || failed {
                        return;
                    }
                    match last {
                        Some(seq) => after = seq,
                        // An empty page ends the export.
                        None => return,
                    }
                    if !filtered && after >= signed_size as i64 {
                        let mut damage = damage.take();
                        if damage.is_none()
                            && (folded.size() != signed_size || folded.root() != signed_root)
                        {
                            damage = Some(Error::Integrity(format!(
                                "audit log: the stored leaf hashes no longer yield the signed \
                                 root of tree size {signed_size}"
                            )));
                        }
                        let _ = verdict_tx.send(damage);
                        let _ = pages_tx.send(Ok(Vec::new())).await;
                        return;
                    }
                }
            });
            let mut verdict = Some(verdict);
            let mut count = 0u64;
            loop {
                let page = match pages.recv().await {
                    Some(Ok(p)) => p,
                    Some(Err(e)) => {
                        let _ = tx.send(Err(ca.export_failed(&actor, e).await)).await;
                        return;
                    }
                    None => {
                        let e = Error::Internal("the export's page reader stopped early".into());
                        let _ = tx.send(Err(ca.export_failed(&actor, e).await)).await;
                        return;
                    }
                };
                if page.is_empty() {
                    // Damage a complete export found is raised before its checkpoint line, so
                    // the log records it by the time the caller has the bundle.
                    if let Some(Ok(Some(damage))) = verdict.take().map(|mut v| v.try_recv()) {
                        if let Err(e) = ca.raise_integrity(&damage).await {
                            tracing::error!(error = %e, "could not record the integrity alarm");
                        }
                    }
                    break;
                }
                for line in page {
                    count += 1;
                    if tx.send(Ok(line)).await.is_err() {
                        return;
                    }
                }
            }
            if let Some(proof) = consistency {
                let line = json!({"type": "consistency", "from_size": previous_size, "to_size": cp.size,
                                  "proof": proof.iter().map(|h| crate::domain::hex(h)).collect::<Vec<_>>()});
                if tx.send(Ok(line.to_string())).await.is_err() {
                    return;
                }
            }
            let _ = tx
                .send(Ok(json!({"type": "checkpoint", "note": note}).to_string()))
                .await;
            let _ = tx
                .send(Ok(json!({"type": "end", "events": count}).to_string()))
                .await;
        });
    }

    /// A page of events matching `query` for an auditor, itself audited as Audit Log Used.
    pub async fn query_audit(
        &self,
        who: &Principal,
        query: AuditQuery,
        after: i64,
        page_size: u32,
    ) -> Result<(Vec<Value>, Option<i64>), Refused> {
        self.search_audit(who, query, after, page_size, None)
            .await
            .map(|(events, next, _)| (events, next))
    }

    /// [`Ca::query_audit`], and with `counts` = (seconds, query) the count of every event
    /// matching that query (usually the same filters over a bounded time range) by buckets of
    /// that many seconds: one view, one audit event.
    pub async fn search_audit(
        &self,
        who: &Principal,
        query: AuditQuery,
        after: i64,
        page_size: u32,
        counts: Option<(i64, AuditQuery)>,
    ) -> Result<(Vec<Value>, Option<i64>, Vec<crate::store::stats::Bucket>), Refused> {
        use crate::store::ConsoleStats as _;
        let action = crate::audit::Action::AuditQuery;
        self.audited(
            who,
            action,
            &Target::ledger(),
            policy::authorize(who, policy::Action::QueryAudit),
        )
        .await?;
        let read = async {
            let event = AuditEvent::new(self.clock.now(), Actor::of(who), action, Target::ledger())
                .with("filter", filter_json(&query))
                .with("dicom_event", "110101");
            self.store.record_event(&event).await?;
            let size = page_size.clamp(1, 500) as i64;
            let archived = self.store.archived_through().await? as i64;
            let (mut after, mut up_to) = (after.max(archived), i64::MAX);
            if query.from.is_some() || query.to.is_some() {
                match self.store.time_span(query.from, query.to).await? {
                    Some((first, last)) => (after, up_to) = (after.max(first - 1), last),
                    None => up_to = 0,
                }
            }
            let entries = self
                .store
                .ledger_entries(&query, after, up_to, size + 1)
                .await?;
            let more = entries.len() as i64 > size;
            let page: Vec<_> = entries.into_iter().take(size as usize).collect();
            let next = if more {
                page.last().map(|e| e.seq)
            } else {
                None
            };
            let events = page
                .iter()
                .map(|e| ledger::event_json(e.seq, &e.event()?))
                .collect::<Result<_, _>>()?;
            let buckets = match &counts {
                Some((seconds, q)) => self.store.audit_buckets(q, *seconds).await?,
                None => Vec::new(),
            };
            Ok((events, next, buckets))
        };
        self.audited(who, action, &Target::ledger(), read.await)
            .await
    }
}

/// What the export's streaming task takes with it.
struct ExportStream {
    ca: Arc<Ca>,
    /// Who exports: a failure part-way is recorded as theirs.
    actor: Actor,
    tx: mpsc::Sender<Result<String, Refused>>,
    query: AuditQuery,
    filter: Value,
    cp: Checkpoint,
    note: String,
    filtered: bool,
    consistency: Option<Vec<Hash>>,
    exporter: String,
    previous_size: u64,
}

/// A filtered export's page: each event line finished with its inclusion proof in the tree of
/// `size`, read from the stored tree for the whole page at once (O(log n) nodes an event).
async fn with_proofs(
    store: &crate::store::Store,
    size: u64,
    starts: Vec<(i64, Vec<u8>, String)>,
) -> Result<Vec<String>, Error> {
    let mut ranges = Vec::new();
    let mut counts = Vec::with_capacity(starts.len());
    for (seq, _, _) in &starts {
        let mine = merkle::inclusion_ranges((*seq - 1) as usize, size as usize)
            .ok_or_else(|| Error::Internal("inclusion proof out of range".into()))?;
        counts.push(mine.len());
        ranges.extend(mine);
    }
    let roots = store.subtree_roots(&ranges).await?;
    let mut roots = roots.as_slice();
    let mut lines = Vec::with_capacity(starts.len());
    for ((seq, start, leaf), n) in starts.into_iter().zip(counts) {
        let (proof, rest) = roots.split_at(n);
        roots = rest;
        lines.push(ledger::finish_export_line(start, seq, &leaf, Some(proof))?);
    }
    Ok(lines)
}

/// Pushes a complete export's next stored leaf hash onto `folded`; the first gap or malformed
/// hash is the damage it names.
fn fold_stored(folded: &mut merkle::CompactRange, seq: i64, leaf: &str) -> Result<(), Error> {
    if seq as u64 != folded.size() + 1 {
        return Err(Error::Integrity(format!(
            "audit log: event {} is missing (the sequence jumps from {} to {seq})",
            folded.size() + 1,
            folded.size()
        )));
    }
    let hash = crate::domain::unhex_array::<32>(leaf)
        .ok_or_else(|| Error::Integrity(format!("audit log: bad leaf hash at {seq}")))?;
    folded.push(hash);
    Ok(())
}

/// The refusal of a proof of an archived event.
fn archived_event(seq: i64, archived: u64) -> Error {
    Error::FailedPrecondition(format!(
        "event {seq} is archived (events 1..={archived} are): prove it from its archive bundle \
         (medid audit verify BUNDLE), then that today's log extends the bundle's checkpoint \
         (medid audit prove-consistency --since BUNDLE.note)"
    ))
}

/// A header's `prefix`: the compact range of the archived events.
pub(super) fn prefix_json(range: &merkle::CompactRange) -> Value {
    json!({
        "size": range.size(),
        "peaks": range.peaks().iter()
            .map(|(hash, level)| json!([level, crate::domain::hex(hash)]))
            .collect::<Vec<_>>(),
    })
}

impl Ca {
    /// How many events are archived, and for a complete export their compact range from the
    /// stored tree (what the bundle's verifier starts from).
    async fn archived_prefix(
        &self,
        filtered: bool,
    ) -> Result<(u64, Option<merkle::CompactRange>), Error> {
        let archived = self.store.archived_through().await?;
        let range = if archived > 0 && !filtered {
            Some(self.store.compact_range(archived).await?)
        } else {
            None
        };
        Ok((archived, range))
    }
}

fn filter_json(q: &AuditQuery) -> Value {
    let t = |t: Option<OffsetDateTime>| t.and_then(|t| ledger::rfc3339(t).ok());
    json!({"from": t(q.from), "to": t(q.to), "device_uri": q.device_uri,
           "manufacturer": q.manufacturer, "actor_uri": q.actor_uri, "action": q.action,
           "outcome": q.outcome.map(crate::audit::Outcome::as_str),
           // The patient reference is PHI: the export event records that one was used, not it.
           "patient_ref": q.patient_ref.as_ref().map(|_| "(given)")})
}

/// Appends a checkpoint note to `dir/checkpoints.log` and replaces `dir/latest.note`, outside
/// the database, so an auditor holding copies can detect a rollback or rewrite.
fn append_outside(dir: &std::path::Path, note: &str) -> Result<(), Error> {
    use std::io::Write;
    let io =
        |e: std::io::Error| Error::Internal(format!("checkpoint directory {}: {e}", dir.display()));
    crate::files::create_private_dir(dir)?;
    let mut log = crate::files::append_private(&dir.join("checkpoints.log"))?;
    log.write_all(note.as_bytes()).map_err(io)?;
    log.write_all(b"\n").map_err(io)?;
    log.sync_all().map_err(io)?;
    crate::files::write_atomic(
        &dir.join("latest.note"),
        note.as_bytes(),
        crate::files::Access::Private,
    )
}

/// Quoted for messages.
pub fn label(s: &str) -> String {
    quote(s)
}
