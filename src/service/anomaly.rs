//! The access-anomaly watcher: follows the ledger's access events in order through a durable
//! cursor (`feed_cursors` 'anomaly-flags'), keeps each device's profile and who has reached it
//! (`store::anomaly`), and records the flags the rules raise (`policy::anomaly`). Each pass is
//! one transaction with its cursor, so every event counts once across restarts and replicas.
//! It runs apart from the write path: access reports never wait for it, and a page of flags
//! reads the flags table, never the log.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use time::OffsetDateTime;

use super::{Ca, Refused};
use crate::audit::{Action, Actor, AuditEvent, Target};
use crate::domain::Principal;
use crate::error::Error;
use crate::policy::anomaly::{holder_revoked_at, observe, Access, AccessProfile, FlagKind};
use crate::policy::{self};
use crate::store::anomaly::{AnomalyPass, Flag, FlagQuery, CURSOR};
use crate::store::ledger::AuditQuery;
use crate::store::{AnomalyStore, AuditLog, CertificateRecords, FeedCursors, MerkleLog, Retention};

/// Access events a pass reads at most.
const BATCH: i64 = 2_000;
/// How often a caught-up watcher looks for new events.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// The wait after a failed pass.
const RETRY: Duration = Duration::from_secs(5);

/// What the watcher needs of one access event.
struct Seen {
    seq: i64,
    device_uri: String,
    user_id: Option<String>,
    at: OffsetDateTime,
    decommissioned: bool,
}

fn seen(entry: &crate::store::ledger::LedgerEntry) -> Result<Seen, Error> {
    let event = entry.event()?;
    let text = |k: &str| {
        event
            .detail
            .get(k)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let at = text("occurred_at")
        .and_then(|t| {
            OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339).ok()
        })
        .unwrap_or(entry.recorded_at);
    Ok(Seen {
        seq: entry.seq,
        device_uri: text("device_uri").unwrap_or_else(|| entry.target.clone()),
        user_id: text("user_id"),
        at,
        decommissioned: event
            .detail
            .get("device_decommissioned")
            .and_then(|v| v.as_bool())
            .unwrap_or(false),
    })
}

impl Ca {
    /// Runs the watcher until the process ends.
    pub async fn watch_access_anomalies(self: Arc<Self>) {
        loop {
            match self.anomaly_pass().await {
                Ok(true) => continue,
                Ok(false) => tokio::time::sleep(IDLE_POLL).await,
                Err(e) => {
                    tracing::warn!(error = %e, "access-anomaly pass failed; will retry");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }

    /// One pass over the access events after the cursor; `true` when there may be more.
    pub async fn anomaly_pass(&self) -> Result<bool, Error> {
        let from = self.store.feed_cursor(CURSOR).await?;
        let size = self.store.tree_size().await?;
        if size <= from {
            return Ok(false);
        }
        let after = from.max(self.store.archived_through().await?) as i64;
        let query = AuditQuery {
            action: Some(Action::DataAccess),
            ..AuditQuery::default()
        };
        let entries = self
            .store
            .ledger_entries(&query, after, size as i64, BATCH)
            .await?;
        let full = entries.len() as i64 == BATCH;
        let through = match entries.last() {
            Some(last) if full => last.seq as u64,
            _ => size,
        };
        let events = entries.iter().map(seen).collect::<Result<Vec<_>, _>>()?;

        let devices: Vec<String> = events
            .iter()
            .map(|e| e.device_uri.clone())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let mut profiles = self.store.access_profiles(&devices).await?;
        let mut known: HashMap<String, HashSet<String>> = HashMap::new();
        for device in &devices {
            let users: Vec<String> = events
                .iter()
                .filter(|e| &e.device_uri == device)
                .filter_map(|e| e.user_id.clone())
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            known.insert(
                device.clone(),
                self.store.known_contacts(device, &users).await?,
            );
        }
        // Users who are medid principals or devices: their certificates, once a pass.
        let ours = format!("spiffe://{}/", self.profiles.trust_domain.as_str());
        let mut holders: HashMap<String, Vec<_>> = HashMap::new();
        for user in events.iter().filter_map(|e| e.user_id.as_ref()) {
            if user.starts_with(&ours) && !holders.contains_key(user) {
                let certs = self.store.certificates_of(user).await?;
                let spans = certs
                    .iter()
                    .map(|c| (c.not_before, c.not_after, c.revoked_at))
                    .collect();
                holders.insert(user.clone(), spans);
            }
        }

        let mut pass = AnomalyPass::default();
        let mut touched = HashSet::new();
        for e in &events {
            let (day, _) = self.anomaly.day_and_hour(e.at);
            let profile = profiles
                .entry(e.device_uri.clone())
                .or_insert_with(|| AccessProfile::new(&e.device_uri, day));
            let contacts = known.entry(e.device_uri.clone()).or_default();
            let known_contact = e.user_id.as_ref().is_some_and(|u| contacts.contains(u));
            let holder_revoked = e
                .user_id
                .as_ref()
                .and_then(|u| holders.get(u))
                .is_some_and(|spans| holder_revoked_at(spans, e.at));
            let flags = observe(
                profile,
                &Access {
                    at: e.at,
                    user_id: e.user_id.as_deref(),
                    device_decommissioned: e.decommissioned,
                    known_contact,
                    holder_revoked,
                },
                &self.anomaly,
            );
            if let (Some(u), false) = (&e.user_id, known_contact) {
                contacts.insert(u.clone());
                pass.contacts.push((e.device_uri.clone(), u.clone()));
            }
            touched.insert(e.device_uri.clone());
            pass.flags
                .extend(flags.into_iter().map(|(kind, explanation)| Flag {
                    seq: e.seq,
                    kind,
                    device_uri: e.device_uri.clone(),
                    user_id: e.user_id.clone(),
                    occurred_at: e.at,
                    explanation,
                }));
        }
        let raised = pass.flags.len();
        pass.profiles = profiles
            .into_values()
            .filter(|p| touched.contains(&p.device_uri))
            .collect();
        let saved = self
            .store
            .save_anomaly_pass(pass, from, through, self.clock.now())
            .await?;
        if saved && raised > 0 {
            tracing::info!(raised, through, "access-anomaly flags raised");
        }
        Ok(full || !saved)
    }

    /// Ledger events beyond the watcher's cursor (`medid_anomaly_lag_events`).
    pub async fn anomaly_lag(&self) -> Result<u64, Error> {
        let size = self.store.tree_size().await?;
        Ok(size.saturating_sub(self.store.feed_cursor(CURSOR).await?))
    }

    /// Records an auditor's view of audit-derived data (flags) as one `audit.query` event,
    /// after checking the role.
    async fn record_view(&self, who: &Principal, filter: serde_json::Value) -> Result<(), Refused> {
        let action = Action::AuditQuery;
        let recorded = async {
            policy::authorize(who, policy::Action::QueryAudit)?;
            let event = AuditEvent::new(self.clock.now(), Actor::of(who), action, Target::ledger())
                .with("filter", filter)
                .with("dicom_event", "110101");
            self.store.record_event(&event).await
        };
        self.audited(who, action, &Target::ledger(), recorded.await)
            .await
            .map(|_seq| ())
    }

    /// A page of flags (newest first) and the `before` of the next page; a view recorded as
    /// one `audit.query` event. Auditors only.
    pub async fn access_flags(
        &self,
        who: &Principal,
        mut query: FlagQuery,
    ) -> Result<(Vec<Flag>, Option<i64>), Refused> {
        self.record_view(
            who,
            json!({"flags": {"kind": query.kind.map(FlagKind::as_str),
                             "device_uri": query.device_uri}}),
        )
        .await?;
        let size = query.limit.clamp(1, 500);
        query.limit = size + 1;
        let mut flags = self
            .audited(
                who,
                Action::AuditQuery,
                &Target::ledger(),
                self.store.flags(&query).await,
            )
            .await?;
        // The next page starts with the first event left out, whole: an event's flags are
        // never split across pages.
        let next = if flags.len() as i64 > size {
            let cut = flags[size as usize].seq;
            flags.truncate(size as usize);
            if flags.iter().any(|f| f.seq != cut) {
                flags.retain(|f| f.seq != cut);
                Some(cut + 1)
            } else {
                Some(cut)
            }
        } else {
            None
        };
        Ok((flags, next))
    }

    /// Flags by kind raised for accesses since `since`; a view recorded as one `audit.query`
    /// event. Auditors only.
    pub async fn flag_counts(
        &self,
        who: &Principal,
        since: OffsetDateTime,
    ) -> Result<Vec<(FlagKind, u64)>, Refused> {
        self.record_view(who, json!({"flags": "counts"})).await?;
        self.audited(
            who,
            Action::AuditQuery,
            &Target::ledger(),
            self.store.flag_counts(since).await,
        )
        .await
    }
}
