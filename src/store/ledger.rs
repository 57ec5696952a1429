//! The audit log as a Merkle log: leaf hashes in sequence, signed checkpoints, filtered reads.

use time::OffsetDateTime;

use super::sql::Row;
use super::Store;
use crate::audit::ledger::{Detail, EventFields};
use crate::audit::merkle::Hash;
use crate::audit::{Action, Actor, AuditEvent, Outcome};
use crate::error::Error;

/// Which events an export or query wants. Empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    pub from: Option<OffsetDateTime>,
    pub to: Option<OffsetDateTime>,
    pub device_uri: Option<String>,
    pub manufacturer: Option<String>,
    pub actor_uri: Option<String>,
    pub action: Option<Action>,
    pub outcome: Option<Outcome>,
    pub patient_ref: Option<String>,
}

impl AuditQuery {
    pub fn is_empty(&self) -> bool {
        self == &AuditQuery::default()
    }
}

/// A stored event with its leaf hash as recorded. The detail stays the JSON text it was stored
/// as: an export copies it when it is already canonical ([`EventFields`]), and [`Self::event`]
/// parses it for whoever needs the typed event.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerEntry {
    pub seq: i64,
    pub recorded_at: OffsetDateTime,
    pub actor: Actor,
    pub action: Action,
    pub target: String,
    pub outcome: Outcome,
    pub reason: Option<String>,
    pub detail: String,
    pub leaf_hash: String,
}

impl LedgerEntry {
    /// The typed event (its detail parsed).
    pub fn event(&self) -> Result<AuditEvent, Error> {
        Ok(AuditEvent {
            recorded_at: self.recorded_at,
            actor: self.actor.clone(),
            action: self.action,
            target: self.target.clone(),
            outcome: self.outcome,
            reason: self.reason.clone(),
            detail: serde_json::from_str(&self.detail)
                .map_err(|e| Error::internal("decoding audit detail", e))?,
        })
    }
}

impl super::MerkleLog for Store {
    async fn tree_size(&self) -> Result<u64, Error> {
        let mut reader = self.reader().await?;
        reader
            .tx()
            .one("SELECT COALESCE(MAX(seq), 0) FROM audit_events", &[])
            .await
    }

    async fn leaf_hashes(&self, size: u64) -> Result<Vec<Hash>, Error> {
        let mut out = Vec::with_capacity(size as usize);
        self.fold_leaf_hashes(size, |_, hash| out.push(hash))
            .await?;
        Ok(out)
    }

    async fn fold_leaf_hashes(
        &self,
        size: u64,
        each: impl FnMut(u64, Hash) + Send,
    ) -> Result<(), Error> {
        self.fold_leaf_hashes_after(0, size, each).await
    }

    async fn fold_leaf_hashes_after(
        &self,
        after: u64,
        size: u64,
        mut each: impl FnMut(u64, Hash) + Send,
    ) -> Result<(), Error> {
        // Pages keep memory flat and keep each read short (a direct SQLite reader runs on the
        // runtime's thread).
        const PAGE: i64 = 2048;
        let mut count = after;
        // A hash that does not decode is reported in its place in the order, after any gap.
        let mut page: Vec<(i64, Option<Hash>)> = Vec::with_capacity(PAGE as usize);
        loop {
            page.clear();
            {
                let mut reader = self.reader().await?;
                let mut keep = |row: &Row<'_>| {
                    let hash: &str = row.get(1)?;
                    page.push((row.get(0)?, crate::domain::unhex_array::<32>(hash)));
                    Ok(())
                };
                reader
                    .tx()
                    .scan(
                        "SELECT seq, leaf_hash FROM audit_events
                         WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3",
                        &[&(count as i64), &(size as i64), &PAGE],
                        &mut keep,
                    )
                    .await?;
            }
            for &(seq, hash) in &page {
                if seq != count as i64 + 1 {
                    return Err(Error::Integrity(format!(
                        "audit log: event {} is missing",
                        count + 1
                    )));
                }
                let hash = hash.ok_or_else(|| {
                    Error::Integrity(format!("audit log: bad leaf hash at {seq}"))
                })?;
                count += 1;
                each(count, hash);
            }
            if (page.len() as i64) < PAGE {
                break;
            }
            tokio::task::yield_now().await;
        }
        if count != size {
            return Err(Error::Integrity(format!(
                "audit log: {count} events where {size} were expected"
            )));
        }
        Ok(())
    }

    async fn subtree_roots(&self, ranges: &[std::ops::Range<usize>]) -> Result<Vec<Hash>, Error> {
        let mut reader = self.reader().await?;
        let mut tx = reader.tx();
        let ranges: Vec<std::ops::Range<u64>> = ranges
            .iter()
            .map(|r| r.start as u64..r.end as u64)
            .collect();
        super::tree::range_roots(&mut tx, &ranges).await
    }

    async fn compact_range(&self, size: u64) -> Result<crate::audit::merkle::CompactRange, Error> {
        let mut reader = self.reader().await?;
        super::tree::compact_range(&mut reader.tx(), size as i64).await
    }

    async fn check_stored_nodes(&self, nodes: &[(u32, u64, Hash)]) -> Result<(), Error> {
        let mut reader = self.reader().await?;
        super::tree::check_nodes(&mut reader.tx(), nodes).await
    }

    async fn time_span(
        &self,
        from: Option<OffsetDateTime>,
        to: Option<OffsetDateTime>,
    ) -> Result<Option<(i64, i64)>, Error> {
        let (from, to) = (
            from.map_or(i64::MIN, |t| t.unix_timestamp()),
            to.map_or(i64::MAX, |t| t.unix_timestamp()),
        );
        let mut reader = self.reader().await?;
        let span: (Option<i64>, Option<i64>) = reader
            .tx()
            .one(
                "SELECT MIN(seq), MAX(seq) FROM audit_events
                 WHERE recorded_at >= $1 AND recorded_at <= $2",
                &[&from, &to],
            )
            .await?;
        Ok(match span {
            (Some(first), Some(last)) => Some((first, last)),
            _ => None,
        })
    }

    async fn leaf_hash(&self, seq: i64) -> Result<Option<Hash>, Error> {
        let mut reader = self.reader().await?;
        reader
            .tx()
            .optional("SELECT leaf_hash FROM audit_events WHERE seq = $1", &[&seq])
            .await
    }

    async fn build_tree(&self) -> Result<u64, Error> {
        // Leaves per transaction: the rare-write lock is held for one chunk at a time.
        const CHUNK: i64 = 65_536;
        let mut added = 0u64;
        loop {
            let mut tx = self.begin_write().await?;
            let mut on = tx.on();
            let covered = super::tree::covered(&mut on).await?;
            let size: i64 = on
                .one("SELECT COALESCE(MAX(seq), 0) FROM audit_events", &[])
                .await?;
            if covered >= size {
                return Ok(added);
            }
            let upto = (covered + CHUNK).min(size);
            super::tree::extend(&mut on, upto, upto + 1, &[]).await?;
            tx.commit().await?;
            added += (upto - covered) as u64;
            tracing::info!(
                covered = upto,
                of = size,
                "stored the audit log's Merkle tree"
            );
        }
    }

    async fn append_events(&self, events: Vec<AuditEvent>) -> Result<Vec<i64>, Error> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        // Sealed here, on the caller's thread; the events' detail trees are freed here too.
        let ready = super::audit::Ready::all(&events)?;
        drop(events);
        self.append_only(ready, Vec::new()).await
    }

    async fn append_access(
        &self,
        events: Vec<(AuditEvent, Option<String>)>,
    ) -> Result<Vec<i64>, Error> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let (events, keys): (Vec<AuditEvent>, Vec<Option<String>>) = events.into_iter().unzip();
        let ready = super::audit::Ready::all(&events)?;
        drop(events);
        self.append_only(ready, keys).await
    }

    async fn save_checkpoint(
        &self,
        size: u64,
        root: &Hash,
        note: &str,
        at: OffsetDateTime,
    ) -> Result<bool, Error> {
        let mut tx = self.begin_write().await?;
        let inserted = tx
            .on()
            .execute(
                "INSERT INTO audit_checkpoints (tree_size, root_hash, note, signed_at)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (tree_size) DO NOTHING",
                &[&(size as i64), &crate::domain::hex(root), &note, &at],
            )
            .await?
            == 1;
        tx.commit().await?;
        Ok(inserted)
    }

    async fn checkpoints(&self) -> Result<Vec<String>, Error> {
        let mut reader = self.reader().await?;
        reader
            .tx()
            .all("SELECT note FROM audit_checkpoints ORDER BY tree_size", &[])
            .await
    }

    async fn tree_covered(&self) -> Result<u64, Error> {
        let mut reader = self.reader().await?;
        let covered = super::tree::covered(&mut reader.tx()).await?;
        Ok(covered as u64)
    }

    async fn latest_checkpoint(&self) -> Result<Option<(u64, String, OffsetDateTime)>, Error> {
        let mut reader = self.reader().await?;
        reader
            .tx()
            .optional(
                "SELECT tree_size, note, signed_at FROM audit_checkpoints
                 ORDER BY tree_size DESC LIMIT 1",
                &[],
            )
            .await
    }

    async fn ledger_entries(
        &self,
        q: &AuditQuery,
        after: i64,
        up_to: i64,
        limit: i64,
    ) -> Result<Vec<LedgerEntry>, Error> {
        let mut entries = Vec::new();
        self.scan_ledger(q, after, up_to, limit, &mut |seq, fields, leaf_hash| {
            entries.push(LedgerEntry {
                seq,
                recorded_at: fields.recorded_at,
                actor: Actor {
                    uri: fields.actor_uri.to_owned(),
                    role: fields.actor_role.to_owned(),
                },
                action: fields.action,
                target: fields.target.to_owned(),
                outcome: fields.outcome,
                reason: fields.reason.map(str::to_owned),
                detail: match fields.detail {
                    Detail::Stored(text) => text.to_owned(),
                    Detail::Map(map) => serde_json::Value::Object(map.clone()).to_string(),
                },
                leaf_hash: leaf_hash.to_owned(),
            });
            Ok(())
        })
        .await?;
        Ok(entries)
    }

    async fn scan_ledger(
        &self,
        q: &AuditQuery,
        after: i64,
        up_to: i64,
        limit: i64,
        each: &mut (dyn FnMut(i64, EventFields<'_>, &str) -> Result<(), Error> + Send),
    ) -> Result<(), Error> {
        let filter = LedgerFilter::new(self, q);
        let mut sql = String::from(
            "SELECT seq, recorded_at, actor_uri, actor_role, action, target, outcome, reason, detail,
                    leaf_hash
             FROM audit_events WHERE seq > $1 AND seq <= $2",
        );
        let mut args: Vec<&(dyn super::sql::Bind + Sync)> = vec![&after, &up_to];
        // Parameters $1 and $2 are taken; the filter's are numbered on from $3.
        let next = filter.apply(q, &mut sql, &mut args, 3);
        sql.push_str(&format!(" ORDER BY seq LIMIT ${next}"));
        args.push(&limit);
        let mut reader = self.reader().await?;
        let mut lend = |row: &Row<'_>| {
            let fields = EventFields {
                recorded_at: row.get(1)?,
                actor_uri: row.get(2)?,
                actor_role: row.get(3)?,
                action: row.get(4)?,
                target: row.get(5)?,
                outcome: row.get(6)?,
                reason: row.get(7)?,
                detail: Detail::Stored(row.get(8)?),
            };
            each(row.get(0)?, fields, row.get(9)?)
        };
        reader.tx().scan(&sql, &args, &mut lend).await
    }
}

/// The conditions of a filtered read of the log ([`AuditQuery`]). Only the filters asked for
/// are in the statement, so the planner can walk the index of the one given (target, actor,
/// patient, time) in sequence order.
pub(super) struct LedgerFilter {
    manufacturer: Option<[String; 3]>,
    manufacturer_field: String,
    patient_field: String,
}

impl LedgerFilter {
    pub(super) fn new(store: &super::Store, q: &AuditQuery) -> Self {
        Self {
            manufacturer: q.manufacturer.as_ref().map(|m| {
                [
                    format!("%/device/{m}/%"),
                    format!("%/manufacturer/{m}/%"),
                    // The manufacturer itself (`spiffe://td/manufacturer/M`, its creation's target).
                    format!("%/manufacturer/{m}"),
                ]
            }),
            manufacturer_field: store.detail_field("manufacturer"),
            patient_field: store.detail_field("patient_ref"),
        }
    }

    /// Appends ` AND …` for each filter of `q` to `sql`, its parameters numbered from `next`
    /// and pushed to `args`; returns the next free parameter number.
    pub(super) fn apply<'a>(
        &'a self,
        q: &'a AuditQuery,
        sql: &mut String,
        args: &mut Vec<&'a (dyn super::sql::Bind + Sync)>,
        mut next: usize,
    ) -> usize {
        let mut cond = |sql: &mut String, text: &str| {
            sql.push_str(" AND ");
            for ch in text.chars() {
                if ch == '?' {
                    sql.push_str(&format!("${next}"));
                    next += 1;
                } else {
                    sql.push(ch);
                }
            }
        };
        if let Some(from) = &q.from {
            cond(sql, "recorded_at >= ?");
            args.push(from);
        }
        if let Some(to) = &q.to {
            cond(sql, "recorded_at <= ?");
            args.push(to);
        }
        if let Some(device) = &q.device_uri {
            // A device's events are those targeting it (an access event's target is the
            // device it read, the same URI as its detail's `device_uri`).
            cond(sql, "target = ?");
            args.push(device);
        }
        if let (Some(m), Some(patterns)) = (&q.manufacturer, &self.manufacturer) {
            cond(
                sql,
                &format!(
                    "(target LIKE ? OR target LIKE ? OR actor_uri LIKE ? OR {} = ? \
                     OR target LIKE ?)",
                    self.manufacturer_field
                ),
            );
            args.extend([
                &patterns[0] as &(dyn super::sql::Bind + Sync),
                &patterns[1],
                &patterns[1],
                m,
                &patterns[2],
            ]);
        }
        if let Some(actor) = &q.actor_uri {
            cond(sql, "actor_uri = ?");
            args.push(actor);
        }
        if let Some(action) = &q.action {
            cond(sql, "action = ?");
            args.push(action);
        }
        if let Some(outcome) = &q.outcome {
            cond(sql, "outcome = ?");
            args.push(outcome);
        }
        if let Some(patient) = &q.patient_ref {
            cond(sql, &format!("{} = ?", self.patient_field));
            args.push(patient);
        }
        next
    }
}
