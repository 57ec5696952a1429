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
    let mut canonical = Vec::with_capacity(320);
    write_canonical(seq, e, &mut canonical)?;
    Ok(merkle::leaf_hash(&canonical))
}

/// The RFC 9162 leaf hash of event `seq` from its members as stored: what an integrity check
/// compares with the leaf hash stored beside them.
pub fn leaf_of_fields(seq: i64, e: &EventFields<'_>) -> Result<Hash, Error> {
    let mut canonical = Vec::with_capacity(512);
    write_canonical_parts(seq, e, &mut canonical)?;
    Ok(merkle::leaf_hash(&canonical))
}

/// An event prepared for the log before its sequence number is known: its canonical form with
/// the number left open (the bytes before it already hashed), and its detail as stored. The
/// group-commit writer then only finishes the hash with `seq ‖ tail`, leaving the
/// canonicalization and most of the hashing to the callers' threads.
#[derive(Debug, Clone)]
pub struct Sealed {
    head: merkle::LeafPrefix,
    tail: Vec<u8>,
    /// The `detail` column: the event's detail as JSON text.
    pub detail: String,
}

/// An event's members, borrowed: from a typed event, or from a stored row whose detail is
/// still the JSON text it was stored as.
#[derive(Debug, Clone, Copy)]
pub struct EventFields<'a> {
    pub recorded_at: OffsetDateTime,
    pub actor_uri: &'a str,
    pub actor_role: &'a str,
    pub action: super::Action,
    pub target: &'a str,
    pub outcome: Outcome,
    pub reason: Option<&'a str>,
    pub detail: Detail<'a>,
}

/// An event's detail: a map, or the JSON text of the `detail` column.
#[derive(Debug, Clone, Copy)]
pub enum Detail<'a> {
    Map(&'a Map<String, Value>),
    Stored(&'a str),
}

impl<'a> EventFields<'a> {
    pub fn of(e: &'a AuditEvent) -> Self {
        Self {
            recorded_at: e.recorded_at,
            actor_uri: &e.actor.uri,
            actor_role: &e.actor.role,
            action: e.action,
            target: &e.target,
            outcome: e.outcome,
            reason: e.reason.as_deref(),
            detail: Detail::Map(&e.detail),
        }
    }
}

/// Whether a stored detail text is already its own canonical form (RFC 8785), so an export
/// can copy it instead of parsing and re-writing it. The detail column holds
/// `serde_json::to_string` of a map, whose keys serde_json keeps sorted by UTF-8 bytes; that
/// is the canonical form unless the text has something where the two could differ. So this
/// says yes only for a compact object (no whitespace outside strings) with no escapes, no
/// character at or above U+E000 (where UTF-8 and UTF-16 orders part), and no fraction or
/// exponent. Anything else is parsed and canonicalized, as before.
pub fn stored_detail_is_canonical(text: &str) -> bool {
    let bytes = text.as_bytes();
    if bytes.first() != Some(&b'{') {
        return false;
    }
    let mut in_string = false;
    let mut previous = 0u8;
    for &b in bytes {
        if b == b'\\' || b >= 0xee {
            return false;
        }
        if b == b'"' {
            in_string = !in_string;
        } else if !in_string {
            let fraction_or_exponent =
                b == b'.' || b == b'E' || (b == b'e' && previous.is_ascii_digit());
            if fraction_or_exponent || b.is_ascii_whitespace() {
                return false;
            }
        }
        previous = b;
    }
    !in_string
}

/// Writes the canonical form (RFC 8785) of `event_json(seq, e)` without building it: the
/// members in their sorted order, `"seq"` just before `"target"`, the last. Returns the offsets
/// in `out` where the sequence number's digits start and end, so [`seal`] can cut there.
fn write_canonical_parts(
    seq: i64,
    e: &EventFields<'_>,
    out: &mut Vec<u8>,
) -> Result<(usize, usize), Error> {
    out.extend_from_slice(b"{\"action\":");
    jcs::write_string(e.action.name(), out);
    out.extend_from_slice(b",\"actor\":{\"role\":");
    jcs::write_string(e.actor_role, out);
    out.extend_from_slice(b",\"uri\":");
    jcs::write_string(e.actor_uri, out);
    out.extend_from_slice(b"},\"detail\":");
    match e.detail {
        Detail::Map(map) => jcs::write_object(map, out)?,
        Detail::Stored(text) if stored_detail_is_canonical(text) => {
            out.extend_from_slice(text.as_bytes())
        }
        Detail::Stored(text) => {
            let map: Map<String, Value> = serde_json::from_str(text)
                .map_err(|err| Error::internal("decoding audit detail", err))?;
            jcs::write_object(&map, out)?
        }
    }
    out.extend_from_slice(b",\"outcome\":");
    jcs::write_string(e.outcome.as_str(), out);
    out.extend_from_slice(b",\"reason\":");
    match e.reason {
        Some(r) => jcs::write_string(r, out),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"recorded_at\":");
    jcs::write_string(&rfc3339(e.recorded_at)?, out);
    out.extend_from_slice(b",\"seq\":");
    let seq_at = out.len();
    out.extend_from_slice(seq.to_string().as_bytes());
    let seq_end = out.len();
    out.extend_from_slice(b",\"target\":");
    jcs::write_string(e.target, out);
    out.push(b'}');
    Ok((seq_at, seq_end))
}

/// Appends the canonical bytes of event `seq` (what its leaf hash covers) to `out`.
pub fn write_canonical(seq: i64, e: &AuditEvent, out: &mut Vec<u8>) -> Result<(), Error> {
    write_canonical_parts(seq, &EventFields::of(e), out).map(|_| ())
}

/// A bundle's event line (docs/AUDIT.md "The bundle"), written directly: the `event` member is
/// exactly the canonical bytes the leaf hash covers, so a verifier can hash it as it stands.
pub fn export_line(
    seq: i64,
    e: &EventFields<'_>,
    leaf_hash: &str,
    inclusion_proof: Option<&[Hash]>,
) -> Result<String, Error> {
    finish_export_line(export_line_start(seq, e)?, seq, leaf_hash, inclusion_proof)
}

/// The first part of an event line, up to its event: what an export writes from the row a
/// reader lends, before it has the event's inclusion proof.
pub fn export_line_start(seq: i64, e: &EventFields<'_>) -> Result<Vec<u8>, Error> {
    let mut line = Vec::with_capacity(512);
    line.extend_from_slice(b"{\"event\":");
    write_canonical_parts(seq, e, &mut line)?;
    Ok(line)
}

/// An event line from its [`export_line_start`], its leaf hash and its inclusion proof.
pub fn finish_export_line(
    mut line: Vec<u8>,
    seq: i64,
    leaf_hash: &str,
    inclusion_proof: Option<&[Hash]>,
) -> Result<String, Error> {
    if let Some(proof) = inclusion_proof {
        line.extend_from_slice(b",\"inclusion_proof\":[");
        for (i, h) in proof.iter().enumerate() {
            if i > 0 {
                line.push(b',');
            }
            line.push(b'"');
            line.extend_from_slice(crate::domain::hex(h).as_bytes());
            line.push(b'"');
        }
        line.push(b']');
    }
    line.extend_from_slice(b",\"leaf_hash\":");
    jcs::write_string(leaf_hash, &mut line);
    line.extend_from_slice(b",\"seq\":");
    line.extend_from_slice(seq.to_string().as_bytes());
    line.extend_from_slice(b",\"type\":\"event\"}");
    String::from_utf8(line).map_err(|e| Error::internal("an export line is not UTF-8", e))
}

/// Prepares `e` for the log; `seal(e)?.leaf(seq) == leaf(seq, e)` for every `seq`.
pub fn seal(e: &AuditEvent) -> Result<Sealed, Error> {
    let mut canonical = Vec::with_capacity(320);
    let (seq_at, seq_end) = write_canonical_parts(0, &EventFields::of(e), &mut canonical)?;
    let detail = serde_json::to_string(&e.detail)
        .map_err(|err| Error::internal("encoding audit detail", err))?;
    Ok(Sealed {
        head: merkle::LeafPrefix::new(&canonical[..seq_at]),
        tail: canonical[seq_end..].to_vec(),
        detail,
    })
}

impl Sealed {
    /// The leaf hash of this event as event `seq`.
    pub fn leaf(&self, seq: i64) -> Hash {
        self.head.finish(&[seq.to_string().as_bytes(), &self.tail])
    }

    /// The hash begun on the bytes before the sequence number, the canonical bytes after it,
    /// and the detail as stored.
    pub fn into_parts(self) -> (merkle::LeafPrefix, Vec<u8>, String) {
        (self.head, self.tail, self.detail)
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
            action: super::Action::parse(v.get("action")?.as_str()?)?,
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
        let marker = format!(",\"seq\":{},\"target\":\"x\"}}", i64::MIN);
        let mut nested = Map::new();
        nested.insert("seq".into(), json!(i64::MIN));
        nested.insert("target".into(), json!("x"));
        let events = [
            AuditEvent::new(
                time::macros::datetime!(2026-11-23 12:00:00 UTC),
                Actor::system(),
                crate::audit::Action::DeviceEnroll,
                crate::audit::Target::uri("spiffe://t/device/acme/1"),
            )
            .with("serial", "ab"),
            // Details and a target that spell a top-level seq member, as text and nested.
            AuditEvent::new(
                time::macros::datetime!(2026-11-23 12:00:01 UTC),
                Actor::system(),
                crate::audit::Action::DataAccess,
                crate::audit::Target::uri(&marker),
            )
            .with("note", marker.clone())
            .with("nested", Value::Object(nested)),
        ];
        for e in &events {
            let sealed = seal(e).unwrap();
            assert_eq!(sealed.detail, serde_json::to_string(&e.detail).unwrap());
            for seq in [0, 1, 9, 10, 42, 1_000_000_007, i64::MAX] {
                assert_eq!(sealed.leaf(seq), leaf(seq, e).unwrap(), "seq {seq}");
                // The direct writer is the canonical form of the event object, byte for byte.
                let mut direct = Vec::new();
                write_canonical(seq, e, &mut direct).unwrap();
                assert_eq!(
                    direct,
                    jcs::canonical(&event_json(seq, e).unwrap()).unwrap()
                );
            }
        }
    }

    #[test]
    fn the_leaf_depends_on_every_field_and_the_sequence_number() {
        let e = AuditEvent::new(
            time::macros::datetime!(2026-11-23 12:00:00 UTC),
            Actor::system(),
            crate::audit::Action::DeviceEnroll,
            crate::audit::Target::uri("spiffe://t/device/acme/1"),
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

    #[test]
    fn stored_details_are_copied_only_when_they_are_already_canonical() {
        let details: Vec<Value> = vec![
            json!({}),
            json!({"serial": "ab", "n": 42, "neg": -7, "ok": true, "no": false, "none": null}),
            json!({"b": {"z": 1, "a": [1, "two", {"y": null, "x": "é"}]}, "a": "ü 中 x"}),
            json!({"note": "1e5 and 2.5 and E inside a string", "count": 10}),
            // Escapes: copied or not, the line must come out canonical.
            json!({"quote": "say \"hi\"", "tab": "a\tb", "ctl": "\u{1}"}),
            // Keys whose UTF-8 and UTF-16 orders differ: U+E000 against an emoji.
            json!({"\u{e000}": 1, "\u{1F600}": 2, "a": 3}),
            json!({"private use": "\u{f8ff}"}),
        ];
        let mut copied = 0;
        for detail in details {
            let map = detail.as_object().unwrap().clone();
            let stored = serde_json::to_string(&map).unwrap();
            let mut event = AuditEvent::new(
                time::macros::datetime!(2026-11-24 09:00:00 UTC),
                Actor::system(),
                crate::audit::Action::DataAccess,
                crate::audit::Target::uri("spiffe://t/device/acme/1"),
            );
            event.detail = map;
            let from_map = export_line(5, &EventFields::of(&event), "00", None).unwrap();
            let mut fields = EventFields::of(&event);
            fields.detail = Detail::Stored(&stored);
            let from_text = export_line(5, &fields, "00", None).unwrap();
            assert_eq!(from_text, from_map, "{stored}");
            if stored_detail_is_canonical(&stored) {
                copied += 1;
                let mut canonical = Vec::new();
                jcs::write_object(&event.detail, &mut canonical).unwrap();
                assert_eq!(stored.as_bytes(), canonical, "copied but not canonical");
            }
        }
        assert_eq!(copied, 4, "the plain details take the fast path");
        // Text that is not serde_json's compact form is never copied.
        for text in [
            "{\"a\": 1}",
            "{\"a\":1.5}",
            "{\"a\":1e3}",
            "{\"a\":1E3}",
            "[1]",
            "{\"a\":\"unterminated}",
            "{\"a\":\"\\u00e9\"}",
            "{\"\u{e000}\":1}",
        ] {
            assert!(!stored_detail_is_canonical(text), "{text}");
        }
    }
}
