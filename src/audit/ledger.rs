//! The ledger form of an audit event: its canonical JSON (RFC 8785) and leaf hash (RFC 9162).
//!
//! ```json
//! {"action":"device.enroll","actor":{"role":"manufacturer-station","uri":"spiffe://…"},
//!  "detail":{…},"outcome":"success","reason":null,"recorded_at":"2026-11-23T23:39:23Z",
//!  "seq":42,"target":"spiffe://…"}
//! ```
//! The sequence number is part of what is hashed, so moving an event changes its leaf.

use serde_json::{json, Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::merkle::{self, Hash};
use super::{jcs, Actor, AuditEvent, Outcome};
use crate::error::Error;

/// The JSON object that is canonicalised and hashed for event `seq`.
pub fn event_json(seq: i64, e: &AuditEvent) -> Result<Value, Error> {
    Ok(json!({
        "seq": seq,
        "recorded_at": rfc3339(e.recorded_at)?,
        "actor": {"uri": e.actor.uri, "role": e.actor.role},
        "action": e.action,
        "target": e.target,
        "outcome": e.outcome.as_str(),
        "reason": e.reason,
        "detail": Value::Object(e.detail.clone()),
    }))
}

pub fn rfc3339(t: OffsetDateTime) -> Result<String, Error> {
    t.format(&Rfc3339)
        .map_err(|e| Error::internal("formatting time", e))
}

/// The RFC 9162 leaf hash of event `seq`.
pub fn leaf(seq: i64, e: &AuditEvent) -> Result<Hash, Error> {
    Ok(merkle::leaf_hash(&jcs::canonical(&event_json(seq, e)?)?))
}

/// An event prepared for the log before its sequence number is known: its canonical form with
/// the number left open, and its detail as stored. The group-commit writer then only hashes
/// `head ‖ seq ‖ tail`, leaving the canonicalization to the callers' threads.
#[derive(Debug, Clone)]
pub struct Sealed {
    head: Vec<u8>,
    tail: Vec<u8>,
    /// The `detail` column: the event's detail as JSON text.
    pub detail: String,
}

/// The stand-in sequence number [`seal`] canonicalizes with. In the canonical form the keys
/// are sorted, so `"seq"` comes just before `"target"`, the last key.
const OPEN_SEQ: i64 = i64::MIN;

/// Prepares `e` for the log; `seal(e)?.leaf(seq) == leaf(seq, e)` for every `seq`.
pub fn seal(e: &AuditEvent) -> Result<Sealed, Error> {
    let canonical = jcs::canonical(&event_json(OPEN_SEQ, e)?)?;
    let marker = format!(",\"seq\":{OPEN_SEQ},\"target\":");
    // The last occurrence is the top-level one: only the target string follows it, and a JSON
    // string cannot hold the marker's unescaped quotes.
    let at = canonical
        .windows(marker.len())
        .rposition(|w| w == marker.as_bytes())
        .ok_or_else(|| Error::Internal("canonical event lacks its seq member".into()))?;
    let value_at = at + ",\"seq\":".len();
    let detail = serde_json::to_string(&e.detail)
        .map_err(|err| Error::internal("encoding audit detail", err))?;
    Ok(Sealed {
        head: canonical[..value_at].to_vec(),
        tail: canonical[value_at + OPEN_SEQ.to_string().len()..].to_vec(),
        detail,
    })
}

impl Sealed {
    /// The leaf hash of this event as event `seq`.
    pub fn leaf(&self, seq: i64) -> Hash {
        merkle::leaf_hash_of_parts(&[&self.head, seq.to_string().as_bytes(), &self.tail])
    }
}

/// The leaf hash of an event as exported (its JSON object), recomputed by a verifier.
pub fn leaf_of_json(event: &Value) -> Result<Hash, Error> {
    Ok(merkle::leaf_hash(&jcs::canonical(event)?))
}

/// Reads an exported event object back into a typed event (for CSV and FHIR renderings).
pub fn from_json(v: &Value) -> Option<(i64, AuditEvent)> {
    let seq = v.get("seq")?.as_i64()?;
    let recorded_at = OffsetDateTime::parse(v.get("recorded_at")?.as_str()?, &Rfc3339).ok()?;
    let actor = v.get("actor")?;
    let outcome = match v.get("outcome")?.as_str()? {
        "success" => Outcome::Success,
        "refused" => Outcome::Refused,
        "denied" => Outcome::Denied,
        _ => Outcome::Failed,
    };
    let detail: Map<String, Value> = v.get("detail")?.as_object()?.clone();
    Some((
        seq,
        AuditEvent {
            recorded_at,
            actor: Actor {
                uri: actor.get("uri")?.as_str()?.to_owned(),
                role: actor.get("role")?.as_str()?.to_owned(),
            },
            action: v.get("action")?.as_str()?.to_owned(),
            target: v.get("target")?.as_str()?.to_owned(),
            outcome,
            reason: v.get("reason").and_then(Value::as_str).map(str::to_owned),
            detail,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_event_hashes_as_the_event_does_at_every_sequence_number() {
        let marker = format!(",\"seq\":{OPEN_SEQ},\"target\":\"x\"}}");
        let mut nested = Map::new();
        nested.insert("seq".into(), json!(OPEN_SEQ));
        nested.insert("target".into(), json!("x"));
        let events = [
            AuditEvent::new(
                time::macros::datetime!(2026-11-23 12:00:00 UTC),
                Actor::system(),
                "device.enroll",
                "spiffe://t/device/acme/1",
            )
            .with("serial", "ab"),
            // Details that spell the marker, in a value and as a nested object.
            AuditEvent::new(
                time::macros::datetime!(2026-11-23 12:00:01 UTC),
                Actor::system(),
                "data.access",
                &marker,
            )
            .with("note", marker.clone())
            .with("nested", Value::Object(nested)),
        ];
        for e in &events {
            let sealed = seal(e).unwrap();
            assert_eq!(sealed.detail, serde_json::to_string(&e.detail).unwrap());
            for seq in [0, 1, 9, 10, 42, 1_000_000_007, i64::MAX] {
                assert_eq!(sealed.leaf(seq), leaf(seq, e).unwrap(), "seq {seq}");
            }
        }
    }

    #[test]
    fn the_leaf_depends_on_every_field_and_the_sequence_number() {
        let e = AuditEvent::new(
            time::macros::datetime!(2026-11-23 12:00:00 UTC),
            Actor::system(),
            "device.enroll",
            "spiffe://t/device/acme/1",
        )
        .with("serial", "ab");
        let base = leaf(7, &e).unwrap();
        assert_ne!(base, leaf(8, &e).unwrap());
        let mut other = e.clone();
        other.target.push('x');
        assert_ne!(base, leaf(7, &other).unwrap());
        let json = event_json(7, &e).unwrap();
        assert_eq!(leaf_of_json(&json).unwrap(), base);
        let (seq, back) = from_json(&json).unwrap();
        assert_eq!((seq, back), (7, e));
    }
}
