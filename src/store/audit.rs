//! The audit event log: append inside a caller's transaction, or on its own for refusals.

use serde_json::{Map, Value};

use super::sql::{self, Arg, Tx};
use super::{from_unix, to_unix, Store};
use crate::audit::ledger::Sealed;
use crate::audit::{Actor, AuditEvent, Outcome, StoredEvent};
use crate::error::Error;

/// An event ready to append: sealed ([`crate::audit::ledger::seal`]) on the caller's thread,
/// so the writer only numbers, hashes and inserts it.
#[derive(Debug, Clone)]
pub(crate) struct Ready {
    pub(crate) event: AuditEvent,
    sealed: Sealed,
}

impl Ready {
    pub(crate) fn new(event: AuditEvent) -> Result<Self, Error> {
        let sealed = crate::audit::ledger::seal(&event)?;
        Ok(Self { event, sealed })
    }

    pub(crate) fn all(events: Vec<AuditEvent>) -> Result<Vec<Self>, Error> {
        events.into_iter().map(Self::new).collect()
    }
}

/// Appends one sealed event inside `tx` (see [`append`]).
pub(crate) async fn append_ready(tx: &mut dyn Tx, event: &Ready) -> Result<i64, Error> {
    append_many(tx, std::slice::from_ref(event)).await
}

/// Appends `event` inside `tx` with the next gap-free sequence number. The caller holds the
/// write lock (BEGIN IMMEDIATE), so MAX(seq) + 1 cannot race.
pub(crate) async fn append(tx: &mut dyn Tx, event: &AuditEvent) -> Result<i64, Error> {
    append_many(tx, &[Ready::new(event.clone())?]).await
}

/// The columns of an audit row, in INSERT order.
const COLUMNS: usize = 10;

/// Appends `events` in order with contiguous sequence numbers, by multi-row INSERTs (or one
/// cached single-row statement each, where statements are direct calls); returns the first
/// sequence number.
pub(crate) async fn append_many(tx: &mut dyn Tx, events: &[Ready]) -> Result<i64, Error> {
    let first = sql::fetch_one(
        tx,
        "SELECT COALESCE(MAX(seq), 0) + 1 FROM audit_events",
        &[],
    )
    .await?
    .int(0)?;
    let mut rows = Vec::with_capacity(events.len());
    for (seq, ready) in (first..).zip(events) {
        let leaf = crate::domain::hex(&ready.sealed.leaf(seq));
        let event = &ready.event;
        rows.push((
            seq,
            to_unix(event.recorded_at),
            event,
            &ready.sealed.detail,
            leaf,
        ));
    }
    let numbered = tx.numbered_params();
    let per_insert = tx.rows_per_insert().max(1);
    let mut rest = &rows[..];
    while !rest.is_empty() {
        // With plain `?` (SQLite), a power of two rows per statement: a handful of distinct
        // statements, each prepared once and cached. PostgreSQL takes as many as allowed.
        let most = rest.len().min(per_insert);
        let take = if numbered { most } else { 1 << most.ilog2() };
        let (chunk, tail) = rest.split_at(take);
        rest = tail;
        let mut sql = String::from(
            "INSERT INTO audit_events
                 (seq, recorded_at, actor_uri, actor_role, action, target, outcome, reason,
                  detail, leaf_hash) VALUES ",
        );
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            for c in 1..=COLUMNS {
                if c > 1 {
                    sql.push_str(", ");
                }
                if numbered {
                    sql.push_str(&format!("${}", i * COLUMNS + c));
                } else {
                    sql.push('?');
                }
            }
            sql.push(')');
        }
        let mut args: Vec<Arg<'_>> = Vec::with_capacity(chunk.len() * COLUMNS);
        for (seq, recorded_at, event, detail, leaf) in chunk {
            args.extend([
                Arg::Int(*seq),
                Arg::Int(*recorded_at),
                Arg::from(&event.actor.uri),
                Arg::from(&event.actor.role),
                Arg::from(&event.action),
                Arg::from(&event.target),
                Arg::Text(event.outcome.as_str()),
                Arg::from(&event.reason),
                Arg::from(*detail),
                Arg::from(leaf),
            ]);
        }
        tx.execute(&sql, &args).await?;
    }
    Ok(first)
}

impl Store {
    /// Records one event that changes nothing else (a refusal), group-committed with others;
    /// returns once it is durable.
    pub async fn record_event(&self, event: &AuditEvent) -> Result<i64, Error> {
        self.append_only(Ready::all(vec![event.clone()])?).await
    }

    /// Events with sequence numbers in `after+1..`, oldest first, at most `limit`.
    pub async fn audit_events(&self, after: i64, limit: i64) -> Result<Vec<StoredEvent>, Error> {
        let mut reader = self.reader().await?;
        let rows = reader
            .tx()
            .fetch_all(
                "SELECT seq, recorded_at, actor_uri, actor_role, action, target, outcome, reason,
                        detail
                 FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[Arg::Int(after), Arg::Int(limit)],
            )
            .await?;
        rows.iter().map(decode_row).collect()
    }
}

/// A stored event from a row whose first columns are seq, recorded_at, actor_uri, actor_role,
/// action, target, outcome, reason, detail.
pub(crate) fn decode_row(row: &super::sql::Row) -> Result<StoredEvent, Error> {
    let outcome = match row.text(6)? {
        "success" => Outcome::Success,
        "refused" => Outcome::Refused,
        "denied" => Outcome::Denied,
        _ => Outcome::Failed,
    };
    let detail: Map<String, Value> = serde_json::from_str(row.text(8)?)
        .map_err(|e| Error::internal("decoding audit detail", e))?;
    Ok(StoredEvent {
        seq: row.int(0)?,
        event: AuditEvent {
            recorded_at: from_unix(row.int(1)?)?,
            actor: Actor {
                uri: row.text(2)?.to_owned(),
                role: row.text(3)?.to_owned(),
            },
            action: row.text(4)?.to_owned(),
            target: row.text(5)?.to_owned(),
            outcome,
            reason: row.opt_text(7)?.map(str::to_owned),
            detail,
        },
    })
}
