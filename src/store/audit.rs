//! The audit event log: append inside a caller's transaction, or on its own for refusals.

use serde_json::{Map, Value};

use super::sql::{Bind, FromRow, Row, Tx};
use super::Store;
use crate::audit::{Action, Actor, AuditEvent, Outcome, StoredEvent};
use crate::error::Error;

/// An event ready to append: sealed ([`crate::audit::ledger::seal`]) on the caller's thread,
/// so the writer only numbers it, finishes its leaf hash and inserts it. It keeps only what the
/// row needs, its text in one buffer, so the one writer thread frees one allocation per event
/// instead of the event's detail tree.
#[derive(Debug, Clone)]
pub(crate) struct Ready {
    recorded_at: time::OffsetDateTime,
    action: Action,
    outcome: Outcome,
    head: crate::audit::merkle::LeafPrefix,
    /// The [`Part`]s, back to back; `ends` holds where each ends.
    text: String,
    ends: [usize; PARTS],
    has_reason: bool,
}

/// The text fields of a [`Ready`] event, in the order they are kept.
#[derive(Debug, Clone, Copy)]
enum Part {
    ActorUri,
    ActorRole,
    Target,
    Reason,
    /// The detail as stored (JSON).
    Detail,
    /// The event's canonical bytes after its sequence number (what its leaf hash covers).
    Canonical,
}

const PARTS: usize = 6;

impl Ready {
    pub(crate) fn new(event: &AuditEvent) -> Result<Self, Error> {
        let (head, tail, detail) = crate::audit::ledger::seal(event)?.into_parts();
        let tail = std::str::from_utf8(&tail)
            .map_err(|e| Error::internal("canonical JSON is not UTF-8", e))?;
        let reason = event.reason.as_deref().unwrap_or("");
        // In the order of `Part`.
        let parts: [&str; PARTS] = [
            event.actor.uri.as_str(),
            &event.actor.role,
            &event.target,
            reason,
            &detail,
            tail,
        ];
        let mut text = String::with_capacity(parts.iter().map(|p| p.len()).sum());
        let mut ends = [0; PARTS];
        for (end, part) in ends.iter_mut().zip(parts) {
            text.push_str(part);
            *end = text.len();
        }
        Ok(Self {
            recorded_at: event.recorded_at,
            action: event.action,
            outcome: event.outcome,
            head,
            text,
            ends,
            has_reason: event.reason.is_some(),
        })
    }

    pub(crate) fn all(events: &[AuditEvent]) -> Result<Vec<Self>, Error> {
        events.iter().map(Self::new).collect()
    }

    pub(crate) fn recorded_at(&self) -> time::OffsetDateTime {
        self.recorded_at
    }

    fn part(&self, part: Part) -> &str {
        let i = part as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.text[start..self.ends[i]]
    }

    pub(crate) fn actor_uri(&self) -> &str {
        self.part(Part::ActorUri)
    }

    fn actor_role(&self) -> &str {
        self.part(Part::ActorRole)
    }

    fn target(&self) -> &str {
        self.part(Part::Target)
    }

    /// None and an empty reason stay apart.
    fn reason(&self) -> Option<&str> {
        self.has_reason.then(|| self.part(Part::Reason))
    }

    fn detail(&self) -> &str {
        self.part(Part::Detail)
    }

    /// The leaf hash of this event as event `seq`.
    fn leaf(&self, seq: i64) -> crate::audit::merkle::Hash {
        self.head.finish(&[
            seq.to_string().as_bytes(),
            self.part(Part::Canonical).as_bytes(),
        ])
    }
}

/// Appends one sealed event inside `tx` (see [`append`]).
pub(crate) async fn append_ready(tx: &mut Tx<'_>, event: &Ready) -> Result<i64, Error> {
    append_many(tx, std::slice::from_ref(event)).await
}

/// Appends `event` inside `tx` with the next gap-free sequence number. The caller holds the
/// write lock (BEGIN IMMEDIATE), so MAX(seq) + 1 cannot race.
pub(crate) async fn append(tx: &mut Tx<'_>, event: &AuditEvent) -> Result<i64, Error> {
    append_many(tx, &[Ready::new(event)?]).await
}

/// An event's text columns, borrowed.
struct Fields<'a> {
    actor_uri: &'a str,
    actor_role: &'a str,
    target: &'a str,
    reason: Option<&'a str>,
    detail: &'a str,
}

/// The columns of an audit row, in INSERT order.
const COLUMNS: usize = 10;

/// Appends `events` in order with contiguous sequence numbers, by multi-row INSERTs (or one
/// cached single-row statement each, where statements are direct calls); returns the first
/// sequence number.
/// Of the (actor, event id) pairs given, those already in the log, with their events'
/// sequence numbers.
pub(crate) async fn known_event_ids(
    tx: &mut Tx<'_>,
    wanted: &[(&str, &str)],
) -> Result<std::collections::HashMap<(String, String), i64>, Error> {
    let mut known = std::collections::HashMap::new();
    let numbered = tx.numbered_params();
    // A batch usually comes from one reporter: one statement per actor and chunk of ids.
    let mut by_actor: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for (actor, id) in wanted {
        by_actor.entry(actor).or_default().push(id);
    }
    for (actor, ids) in by_actor {
        for chunk in ids.chunks(256) {
            let mut sql =
                String::from("SELECT event_id, seq FROM access_event_ids WHERE actor_uri = ");
            sql.push_str(if numbered { "$1" } else { "?" });
            sql.push_str(" AND event_id IN (");
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push_str(", ");
                }
                if numbered {
                    sql.push_str(&format!("${}", i + 2));
                } else {
                    sql.push('?');
                }
            }
            sql.push(')');
            let mut args: Vec<&(dyn Bind + Sync)> = Vec::with_capacity(chunk.len() + 1);
            args.push(&actor);
            for id in chunk {
                args.push(id);
            }
            let rows: Vec<(String, i64)> = tx.all(&sql, &args).await?;
            for (id, seq) in rows {
                known.insert((actor.to_owned(), id), seq);
            }
        }
    }
    Ok(known)
}

/// Remembers the reporter's id of each (seq, actor, id) appended, in the same transaction.
pub(crate) async fn remember_event_ids(
    tx: &mut Tx<'_>,
    rows: &[(i64, String, String)],
) -> Result<(), Error> {
    for (seq, actor, id) in rows {
        tx.execute(
            "INSERT INTO access_event_ids (actor_uri, event_id, seq) VALUES ($1, $2, $3)",
            &[actor, id, seq],
        )
        .await?;
    }
    Ok(())
}

pub(crate) async fn append_many(tx: &mut Tx<'_>, events: &[Ready]) -> Result<i64, Error> {
    let first: i64 = tx
        .one("SELECT COALESCE(MAX(seq), 0) + 1 FROM audit_events", &[])
        .await?;
    let mut rows = Vec::with_capacity(events.len());
    let mut leaves = Vec::with_capacity(events.len());
    for (seq, ready) in (first..).zip(events) {
        let leaf = ready.leaf(seq);
        leaves.push(leaf);
        rows.push((seq, ready, crate::domain::hex(&leaf)));
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
        // The text fields, borrowed from the events for the statement.
        let fields: Vec<Fields<'_>> = chunk
            .iter()
            .map(|(_, r, _)| Fields {
                actor_uri: r.actor_uri(),
                actor_role: r.actor_role(),
                target: r.target(),
                reason: r.reason(),
                detail: r.detail(),
            })
            .collect();
        let mut args: Vec<&(dyn Bind + Sync)> = Vec::with_capacity(chunk.len() * COLUMNS);
        for ((seq, ready, leaf), f) in chunk.iter().zip(&fields) {
            args.extend([
                seq as &(dyn Bind + Sync),
                &ready.recorded_at,
                &f.actor_uri,
                &f.actor_role,
                &ready.action,
                &f.target,
                &ready.outcome,
                &f.reason,
                &f.detail,
                leaf,
            ]);
        }
        tx.execute(&sql, &args).await?;
    }
    // The stored tree grows in the same transaction (store/tree.rs).
    let last = first + events.len() as i64 - 1;
    super::tree::extend(tx, last, first, &leaves).await?;
    Ok(first)
}

/// A stored event from a row of seq, recorded_at, actor_uri, actor_role, action, target,
/// outcome, reason, detail.
impl FromRow for StoredEvent {
    fn from_row(row: &Row<'_>) -> Result<Self, Error> {
        let detail: Map<String, Value> = serde_json::from_str(row.get("detail")?)
            .map_err(|e| Error::internal("decoding audit detail", e))?;
        Ok(StoredEvent {
            seq: row.get("seq")?,
            event: AuditEvent {
                recorded_at: row.get("recorded_at")?,
                actor: Actor {
                    uri: row.get("actor_uri")?,
                    role: row.get("actor_role")?,
                },
                action: row.get::<Action>("action")?,
                target: row.get("target")?,
                outcome: row.get::<Outcome>("outcome")?,
                reason: row.get("reason")?,
                detail,
            },
        })
    }
}

impl super::AuditLog for Store {
    async fn record_event(&self, event: &AuditEvent) -> Result<i64, Error> {
        let seqs = self
            .append_only(vec![Ready::new(event)?], Vec::new())
            .await?;
        seqs.first()
            .copied()
            .ok_or_else(|| Error::Internal("an appended event got no sequence number".into()))
    }

    async fn record_events(&self, events: &[AuditEvent]) -> Result<(), Error> {
        if events.is_empty() {
            return Ok(());
        }
        let ready = events
            .iter()
            .map(Ready::new)
            .collect::<Result<Vec<_>, _>>()?;
        self.append_only(ready, Vec::new()).await.map(|_| ())
    }

    async fn audit_events(&self, after: i64, limit: i64) -> Result<Vec<StoredEvent>, Error> {
        let mut reader = self.reader().await?;
        reader
            .tx()
            .all(
                "SELECT seq, recorded_at, actor_uri, actor_role, action, target, outcome, reason,
                        detail
                 FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&after, &limit],
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::ledger;

    #[test]
    fn a_ready_event_keeps_every_column_and_the_leaf_of_its_event() {
        let base = AuditEvent::new(
            time::macros::datetime!(2026-11-24 08:00:00 UTC),
            Actor::system(),
            crate::audit::Action::DataAccess,
            crate::audit::Target::uri("spiffe://t/device/acme/ü-1"),
        )
        .with("note", "quote \" and \u{1F600}");
        let mut empty_reason = base.clone().refused(&Error::NotFound("x".into()));
        empty_reason.reason = Some(String::new());
        for e in [
            base.clone(),
            base.refused(&Error::NotFound("gone".into())),
            empty_reason,
        ] {
            let r = Ready::new(&e).unwrap();
            assert_eq!(r.actor_uri(), e.actor.uri);
            assert_eq!(r.actor_role(), e.actor.role);
            assert_eq!(r.action, e.action);
            assert_eq!(r.target(), e.target);
            // No reason and an empty reason stay apart.
            assert_eq!(r.reason(), e.reason.as_deref());
            assert_eq!(r.detail(), serde_json::to_string(&e.detail).unwrap());
            assert_eq!(r.recorded_at(), e.recorded_at);
            assert_eq!(r.outcome, e.outcome);
            for seq in [1, 63, 64, 65, 1_000_000] {
                assert_eq!(r.leaf(seq), ledger::leaf(seq, &e).unwrap(), "seq {seq}");
            }
        }
    }
}
