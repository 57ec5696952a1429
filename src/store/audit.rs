//! The audit event log: append inside a caller's transaction, or on its own for refusals.

use serde_json::{Map, Value};
use sqlx::Row;

use super::{from_unix, to_unix, Conn, Store};
use crate::audit::{Actor, AuditEvent, Outcome, StoredEvent};
use crate::error::Error;

/// Appends `event` inside `tx` with the next gap-free sequence number. The caller holds the
/// write lock (BEGIN IMMEDIATE), so MAX(seq) + 1 cannot race.
pub(crate) async fn append(tx: &mut Conn, event: &AuditEvent) -> Result<i64, Error> {
    append_many(tx, std::slice::from_ref(event)).await
}

/// Rows per INSERT statement in [`append_many`]: 10 parameters each, well under SQLite's
/// limit of 32,766.
const ROWS_PER_INSERT: usize = 256;

/// Appends `events` in order with contiguous sequence numbers, by multi-row INSERTs; returns
/// the first sequence number.
pub(crate) async fn append_many(tx: &mut Conn, events: &[AuditEvent]) -> Result<i64, Error> {
    let first: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) + 1 FROM audit_events")
        .fetch_one(&mut *tx)
        .await?;
    let mut rows = Vec::with_capacity(events.len());
    for (seq, event) in (first..).zip(events) {
        let detail = serde_json::to_string(&event.detail)
            .map_err(|e| Error::internal("encoding audit detail", e))?;
        let leaf = crate::domain::hex(&crate::audit::ledger::leaf(seq, event)?);
        rows.push((seq, event, detail, leaf));
    }
    // SQLite's `$N` lookup is linear per parameter (sqlite3_bind_parameter_name), which is
    // quadratic over a 2,560-parameter statement: plain `?` there, `$N` for PostgreSQL.
    let numbered = tx.backend_name() != "SQLite";
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let mut sql = String::from(
            "INSERT INTO audit_events
                 (seq, recorded_at, actor_uri, actor_role, action, target, outcome, reason,
                  detail, leaf_hash) VALUES ",
        );
        for i in 0..chunk.len() {
            let b = i * 10;
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            for c in 1..=10 {
                if c > 1 {
                    sql.push_str(", ");
                }
                if numbered {
                    sql.push_str(&format!("${}", b + c));
                } else {
                    sql.push('?');
                }
            }
            sql.push(')');
        }
        let mut insert = sqlx::query(&sql);
        for (seq, event, detail, leaf) in chunk {
            insert = insert
                .bind(*seq)
                .bind(to_unix(event.recorded_at))
                .bind(&event.actor.uri)
                .bind(&event.actor.role)
                .bind(&event.action)
                .bind(&event.target)
                .bind(event.outcome.as_str())
                .bind(&event.reason)
                .bind(detail)
                .bind(leaf);
        }
        insert.execute(&mut *tx).await?;
    }
    Ok(first)
}

impl Store {
    /// Records one event that changes nothing else (a refusal), group-committed with others;
    /// returns once it is durable.
    pub async fn record_event(&self, event: &AuditEvent) -> Result<i64, Error> {
        self.append_only(vec![event.clone()]).await
    }

    /// Events with sequence numbers in `after+1..`, oldest first, at most `limit`.
    pub async fn audit_events(&self, after: i64, limit: i64) -> Result<Vec<StoredEvent>, Error> {
        let rows = sqlx::query(
            "SELECT seq, recorded_at, actor_uri, actor_role, action, target, outcome, reason, detail
             FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(decode).collect()
    }
}

pub(crate) fn decode(row: &super::DbRow) -> Result<StoredEvent, Error> {
    let outcome = match row.try_get::<String, _>("outcome")?.as_str() {
        "success" => Outcome::Success,
        "refused" => Outcome::Refused,
        "denied" => Outcome::Denied,
        _ => Outcome::Failed,
    };
    let detail: Map<String, Value> = serde_json::from_str(&row.try_get::<String, _>("detail")?)
        .map_err(|e| Error::internal("decoding audit detail", e))?;
    Ok(StoredEvent {
        seq: row.try_get("seq")?,
        event: AuditEvent {
            recorded_at: from_unix(row.try_get("recorded_at")?)?,
            actor: Actor {
                uri: row.try_get("actor_uri")?,
                role: row.try_get("actor_role")?,
            },
            action: row.try_get("action")?,
            target: row.try_get("target")?,
            outcome,
            reason: row.try_get("reason")?,
            detail,
        },
    })
}
