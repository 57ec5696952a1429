//! The audit event log: append inside a caller's transaction, or on its own for refusals.

use serde_json::{Map, Value};
use sqlx::Row;

use super::{from_unix, to_unix, Store, WriteTx};
use crate::audit::{Actor, AuditEvent, Outcome, StoredEvent};
use crate::error::Error;

/// Appends `event` inside `tx` with the next gap-free sequence number. The caller holds the
/// write lock (BEGIN IMMEDIATE), so MAX(seq) + 1 cannot race.
pub(crate) async fn append(tx: &mut WriteTx, event: &AuditEvent) -> Result<i64, Error> {
    let seq: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) + 1 FROM audit_events")
        .fetch_one(&mut **tx)
        .await?;
    let detail = serde_json::to_string(&event.detail)
        .map_err(|e| Error::internal("encoding audit detail", e))?;
    let leaf = crate::audit::ledger::leaf(seq, event)?;
    sqlx::query(
        "INSERT INTO audit_events
             (seq, recorded_at, actor_uri, actor_role, action, target, outcome, reason, detail,
              leaf_hash)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(seq)
    .bind(to_unix(event.recorded_at))
    .bind(&event.actor.uri)
    .bind(&event.actor.role)
    .bind(&event.action)
    .bind(&event.target)
    .bind(event.outcome.as_str())
    .bind(&event.reason)
    .bind(detail)
    .bind(crate::domain::hex(&leaf))
    .execute(&mut **tx)
    .await?;
    Ok(seq)
}

impl Store {
    /// Records one event in its own transaction (refusals, which change nothing else).
    pub async fn record_event(&self, event: &AuditEvent) -> Result<i64, Error> {
        let mut tx = self.begin_write().await?;
        let seq = append(&mut tx, event).await?;
        tx.commit().await?;
        Ok(seq)
    }

    /// Events with sequence numbers in `after+1..`, oldest first, at most `limit`.
    pub async fn audit_events(&self, after: i64, limit: i64) -> Result<Vec<StoredEvent>, Error> {
        let rows = sqlx::query(
            "SELECT seq, recorded_at, actor_uri, actor_role, action, target, outcome, reason, detail
             FROM audit_events WHERE seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(decode).collect()
    }
}

pub(crate) fn decode(row: &sqlx::sqlite::SqliteRow) -> Result<StoredEvent, Error> {
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
