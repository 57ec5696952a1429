//! Offline verification of an exported bundle (`medid audit verify`): no server, no database,
//! only the bundle and the audit public key. See docs/AUDIT.md "Verifying a bundle".

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::checkpoint::{self, Checkpoint};
use super::ledger;
use super::merkle::{self, Hash};

/// What was proven.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub events: u64,
    pub tree_size: u64,
    pub filtered: bool,
    pub origin: String,
    /// Checked consistency with an earlier checkpoint of this size.
    pub consistent_with: Option<u64>,
}

/// Why a bundle failed, naming the first bad sequence number where there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("malformed bundle: {0}")]
    Malformed(String),
    #[error("bad signature: {0}")]
    BadSignature(String),
    #[error("altered: event {seq} does not match its leaf hash or its proof")]
    Altered { seq: i64 },
    #[error("missing: event {seq} is absent (the sequence jumps from {after} to {next})")]
    Missing { seq: i64, after: i64, next: i64 },
    #[error("reordered: event {seq} is out of place")]
    Reordered { seq: i64 },
    #[error("truncated below a signed checkpoint: {have} events, but a signed checkpoint covers {signed}")]
    Truncated { have: u64, signed: u64 },
    #[error("rewritten: the events do not produce the signed root of tree size {size}")]
    RootMismatch { size: u64 },
    #[error("rewritten: the log is not consistent with the earlier checkpoint of size {size}")]
    Inconsistent { size: u64 },
}

impl Failure {
    /// The kind word the CLI prints first.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Malformed(_) => "malformed",
            Failure::BadSignature(_) => "bad-signature",
            Failure::Altered { .. } => "altered",
            Failure::Missing { .. } => "missing",
            Failure::Reordered { .. } => "reordered",
            Failure::Truncated { .. } => "truncated",
            Failure::RootMismatch { .. } | Failure::Inconsistent { .. } => "rewritten",
        }
    }
}

fn malformed(s: impl Into<String>) -> Failure {
    Failure::Malformed(s.into())
}

fn hash_of(hex: &str) -> Option<Hash> {
    crate::domain::unhex_array(hex)
}

fn hashes_of(hexes: &[Cow<'_, str>]) -> Option<Vec<Hash>> {
    hexes.iter().map(|h| hash_of(h)).collect()
}

/// One bundle line, every line type's members in one shape; members a line does not have are
/// `None`. Strings borrow from the bundle, and an event stays as the raw text it was sent as.
#[derive(Debug, Default, Deserialize)]
struct Line<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    seq: Option<i64>,
    #[serde(borrow)]
    leaf_hash: Option<Cow<'a, str>>,
    #[serde(borrow)]
    event: Option<&'a RawValue>,
    #[serde(borrow)]
    inclusion_proof: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow)]
    origin: Option<Cow<'a, str>>,
    filtered: Option<bool>,
    #[serde(borrow)]
    note: Option<Cow<'a, str>>,
    events: Option<u64>,
    from_size: Option<u64>,
    #[serde(borrow)]
    proof: Option<Vec<Cow<'a, str>>>,
}

impl Line<'_> {
    fn is(&self, kind: &str) -> bool {
        self.kind.as_deref() == Some(kind)
    }
}

/// The only member of an event object the verifier reads itself; the rest is hashed.
#[derive(Deserialize)]
struct EventSeq {
    seq: Option<Value>,
}

/// What hashing one event line found, before the in-order checks.
struct Hashed {
    seq: i64,
    declared: Hash,
    /// The leaf hash of the event's canonical form, or why it has none.
    recomputed: Result<Hash, String>,
    /// The `seq` inside the event object.
    own_seq: Option<i64>,
    /// The event hashes to the declared leaf under a neighbouring sequence number.
    moved: bool,
}

/// Hashes one event line. The event is hashed as sent first: a bundle medid wrote carries the
/// canonical bytes, so an event that matches its declared leaf needs no re-canonicalization.
/// Anything else (re-formatted, edited) is parsed and canonicalized, as RFC 8785 defines it.
fn hash_event(line: &Line<'_>) -> Result<Hashed, Failure> {
    let seq = line.seq.ok_or_else(|| malformed("event without seq"))?;
    let event = line
        .event
        .ok_or_else(|| malformed("event line without event"))?;
    let declared = line
        .leaf_hash
        .as_deref()
        .and_then(hash_of)
        .ok_or_else(|| malformed(format!("event {seq}: no leaf hash")))?;
    let as_sent = merkle::leaf_hash(event.get().as_bytes());
    if as_sent == declared {
        let own_seq = serde_json::from_str::<EventSeq>(event.get())
            .ok()
            .and_then(|e| e.seq?.as_i64());
        return Ok(Hashed {
            seq,
            declared,
            recomputed: Ok(as_sent),
            own_seq,
            moved: false,
        });
    }
    let value: Value =
        serde_json::from_str(event.get()).map_err(|e| malformed(format!("event {seq}: {e}")))?;
    let recomputed = ledger::leaf_of_json(&value).map_err(|e| e.to_string());
    // Moved rather than edited? Its content hashes correctly under a neighbour's number.
    let moved = recomputed.as_ref().is_ok_and(|r| *r != declared)
        && [seq - 1, seq + 1].into_iter().any(|other| {
            let mut e = value.clone();
            e["seq"] = other.into();
            ledger::leaf_of_json(&e)
                .map(|h| h == declared)
                .unwrap_or(false)
        });
    Ok(Hashed {
        seq,
        declared,
        recomputed,
        own_seq: value.get("seq").and_then(Value::as_i64),
        moved,
    })
}

/// Parses every line and hashes every event, on all cores; results stay in line order.
fn parse_and_hash<'a>(lines: &[&'a str]) -> Vec<Result<(Line<'a>, Option<Hashed>), Failure>> {
    let one = |(i, text): (usize, &'a str)| -> Result<(Line<'a>, Option<Hashed>), Failure> {
        let line: Line<'a> =
            serde_json::from_str(text).map_err(|e| malformed(format!("line {}: {e}", i + 1)))?;
        let hashed = if line.is("event") {
            Some(hash_event(&line)?)
        } else {
            None
        };
        Ok((line, hashed))
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads < 2 || lines.len() < 4096 {
        return lines.iter().copied().enumerate().map(one).collect();
    }
    let per = lines.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let parts: Vec<_> = lines
            .chunks(per)
            .enumerate()
            .map(|(c, chunk)| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .enumerate()
                        .map(|(i, text)| one((c * per + i, *text)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|p| p.join().expect("a verifier thread does not panic"))
            .collect()
    })
}

/// Verifies `bundle` (JSON lines) with the audit `public_key`; `previous` is an earlier
/// signed checkpoint note the auditor kept.
pub fn verify_bundle(
    bundle: &str,
    public_key: &[u8; 32],
    previous: Option<&str>,
) -> Result<Report, Failure> {
    let texts: Vec<&str> = bundle.lines().filter(|l| !l.trim().is_empty()).collect();
    let parsed = parse_and_hash(&texts);
    drop(texts);
    let mut lines: Vec<Line<'_>> = Vec::with_capacity(parsed.len());
    let mut hashed: Vec<Hashed> = Vec::new();
    for p in parsed {
        let (line, h) = p?;
        lines.push(line);
        hashed.extend(h);
    }
    let header = lines
        .first()
        .filter(|h| h.is("header"))
        .ok_or_else(|| malformed("no header line"))?;
    let origin = header
        .origin
        .as_deref()
        .ok_or_else(|| malformed("header has no origin"))?;
    let filtered = header.filtered.unwrap_or(true);
    let note = lines
        .iter()
        .find(|l| l.is("checkpoint"))
        .and_then(|l| l.note.as_deref())
        .ok_or_else(|| malformed("no checkpoint line"))?;
    let cp: Checkpoint = checkpoint::verify(note, origin, public_key)
        .map_err(|e| Failure::BadSignature(e.to_string()))?;
    if !lines.last().is_some_and(|l| l.is("end")) {
        return Err(Failure::Truncated {
            have: hashed.len() as u64,
            signed: cp.size,
        });
    }

    // Events: in order, each matching its leaf hash (and, filtered, its inclusion proof).
    let mut leaves: Vec<Hash> = Vec::with_capacity(hashed.len());
    let mut last_seq = 0i64;
    let event_lines = lines.iter().filter(|l| l.is("event"));
    for (line, h) in event_lines.zip(&hashed) {
        let seq = h.seq;
        if seq <= last_seq {
            return Err(Failure::Reordered { seq });
        }
        if !filtered && seq != last_seq + 1 {
            return Err(Failure::Missing {
                seq: last_seq + 1,
                after: last_seq,
                next: seq,
            });
        }
        let recomputed = h.recomputed.clone().map_err(malformed)?;
        if h.own_seq != Some(seq) {
            return Err(Failure::Reordered { seq });
        }
        if recomputed != h.declared {
            return Err(if h.moved {
                Failure::Reordered { seq }
            } else {
                Failure::Altered { seq }
            });
        }
        if filtered {
            let proof = line
                .inclusion_proof
                .as_deref()
                .ok_or_else(|| malformed(format!("event {seq}: no inclusion proof")))
                .and_then(|p| {
                    hashes_of(p).ok_or_else(|| malformed(format!("event {seq}: bad proof hash")))
                })?;
            if seq as u64 > cp.size
                || !merkle::verify_inclusion(seq as u64 - 1, cp.size, &recomputed, &proof, &cp.root)
            {
                return Err(Failure::Altered { seq });
            }
        }
        leaves.push(recomputed);
        last_seq = seq;
    }
    let seen = leaves.len() as u64;
    if lines.last().and_then(|l| l.events) != Some(seen) {
        return Err(malformed(
            "the end line's event count does not match the events",
        ));
    }
    if !filtered {
        if seen < cp.size {
            return Err(Failure::Truncated {
                have: seen,
                signed: cp.size,
            });
        }
        if seen > cp.size || merkle::root(&leaves) != cp.root {
            return Err(Failure::RootMismatch { size: cp.size });
        }
    }

    // An earlier checkpoint the auditor kept: the log must extend it.
    let mut consistent_with = None;
    if let Some(prev_note) = previous {
        let prev = checkpoint::verify(prev_note, origin, public_key)
            .map_err(|e| Failure::BadSignature(format!("previous checkpoint: {e}")))?;
        if prev.size > cp.size {
            return Err(Failure::Truncated {
                have: cp.size,
                signed: prev.size,
            });
        }
        let ok = if !filtered {
            merkle::root(&leaves[..prev.size as usize]) == prev.root
        } else {
            let proof: Option<Vec<Hash>> = lines
                .iter()
                .find(|l| l.is("consistency") && l.from_size == Some(prev.size))
                .and_then(|l| hashes_of(l.proof.as_deref()?));
            match proof {
                Some(p) => merkle::verify_consistency(prev.size, cp.size, &prev.root, &cp.root, &p),
                None => return Err(malformed(format!("no consistency proof from size {} in this filtered bundle (export with --previous-checkpoint)", prev.size))),
            }
        };
        if !ok {
            return Err(Failure::Inconsistent { size: prev.size });
        }
        consistent_with = Some(prev.size);
    }
    Ok(Report {
        events: seen,
        tree_size: cp.size,
        filtered,
        origin: origin.to_owned(),
        consistent_with,
    })
}

#[cfg(test)]
mod tests {
    use ring::signature::{Ed25519KeyPair, KeyPair};

    use super::*;
    use crate::audit::{Actor, AuditEvent};

    /// A complete bundle of `n` events as medid writes it, and the public key that signed it.
    fn bundle(n: i64) -> (Vec<String>, [u8; 32]) {
        let key = Ed25519KeyPair::from_seed_unchecked(&[7u8; 32]).unwrap();
        let public: [u8; 32] = key.public_key().as_ref().try_into().unwrap();
        let mut lines =
            vec![r#"{"type":"header","origin":"t/audit","filtered":false}"#.to_string()];
        let mut leaves = Vec::new();
        for seq in 1..=n {
            let e = AuditEvent::new(
                time::macros::datetime!(2026-11-24 12:00:00 UTC),
                Actor::system(),
                "data.access",
                format!("spiffe://t/device/acme/{seq}"),
            )
            .with("note", "tab\there, quote \" and ünïcödé");
            let leaf = ledger::leaf(seq, &e).unwrap();
            leaves.push(leaf);
            let hex = crate::domain::hex(&leaf);
            lines.push(ledger::export_line(seq, &ledger::EventFields::of(&e), &hex, None).unwrap());
        }
        let body = Checkpoint {
            origin: "t/audit".into(),
            size: n as u64,
            root: merkle::root(&leaves),
        }
        .body();
        let sig = key.sign(body.as_bytes());
        let note = checkpoint::signed_note(
            &body,
            "t/audit",
            checkpoint::key_id("t/audit", &public),
            sig.as_ref(),
        );
        lines.push(serde_json::json!({"type": "checkpoint", "note": note}).to_string());
        lines.push(format!(r#"{{"type":"end","events":{n}}}"#));
        (lines, public)
    }

    #[test]
    fn events_verify_as_sent_and_reformatted_and_edits_are_named() {
        let (lines, key) = bundle(5000);
        let as_sent = lines.join("\n");
        assert_eq!(verify_bundle(&as_sent, &key, None).unwrap().events, 5000);

        // Re-formatted by a tool (members reordered, spaces): not the hashed bytes any more,
        // so each event is canonicalized again, and the bundle still verifies.
        let reformatted: Vec<String> = lines
            .iter()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                serde_json::to_string_pretty(&v).unwrap().replace('\n', " ")
            })
            .collect();
        assert_eq!(
            verify_bundle(&reformatted.join("\n"), &key, None)
                .unwrap()
                .events,
            5000
        );

        // One edited byte inside an event, on the fast path's side of the threads' split.
        let mut edited = lines.clone();
        edited[4321] = edited[4321].replace("acme/4321", "acme/4322");
        assert_eq!(
            verify_bundle(&edited.join("\n"), &key, None),
            Err(Failure::Altered { seq: 4321 })
        );

        // Two events swapped under their lines' numbers and leaf hashes: named as reordered.
        let mut swapped = lines.clone();
        let mut a: Value = serde_json::from_str(&lines[100]).unwrap();
        let mut b: Value = serde_json::from_str(&lines[101]).unwrap();
        std::mem::swap(&mut a["event"], &mut b["event"]);
        (swapped[100], swapped[101]) = (a.to_string(), b.to_string());
        assert_eq!(
            verify_bundle(&swapped.join("\n"), &key, None),
            Err(Failure::Reordered { seq: 100 })
        );
    }
}
