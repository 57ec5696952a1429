//! Offline verification of an exported bundle (`medid audit verify`): no server, no database,
//! only the bundle and the audit public key. See docs/AUDIT.md "Verifying a bundle".

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

fn hash_of(v: &Value) -> Option<Hash> {
    crate::domain::unhex(v.as_str()?)?.try_into().ok()
}

/// Verifies `bundle` (JSON lines) with the audit `public_key`; `previous` is an earlier
/// signed checkpoint note the auditor kept.
pub fn verify_bundle(
    bundle: &str,
    public_key: &[u8; 32],
    previous: Option<&str>,
) -> Result<Report, Failure> {
    let lines: Vec<Value> = bundle
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| malformed(format!("line {}: {e}", i + 1)))
        })
        .collect::<Result<_, _>>()?;
    let kind = |v: &Value| {
        v.get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let header = lines
        .first()
        .filter(|h| kind(h) == "header")
        .ok_or_else(|| malformed("no header line"))?;
    let origin = header
        .get("origin")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed("header has no origin"))?;
    let filtered = header
        .get("filtered")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let note = lines
        .iter()
        .find(|l| kind(l) == "checkpoint")
        .and_then(|l| l.get("note")?.as_str())
        .ok_or_else(|| malformed("no checkpoint line"))?;
    let cp: Checkpoint = checkpoint::verify(note, origin, public_key)
        .map_err(|e| Failure::BadSignature(e.to_string()))?;
    if lines.last().map(kind).as_deref() != Some("end") {
        return Err(Failure::Truncated {
            have: count_events(&lines),
            signed: cp.size,
        });
    }

    // Events: in order, each matching its leaf hash (and, filtered, its inclusion proof).
    let mut leaves: Vec<Hash> = Vec::new();
    let mut last_seq = 0i64;
    let mut seen = 0u64;
    for line in lines.iter().filter(|l| kind(l) == "event") {
        let seq = line
            .get("seq")
            .and_then(Value::as_i64)
            .ok_or_else(|| malformed("event without seq"))?;
        let event = line
            .get("event")
            .ok_or_else(|| malformed("event line without event"))?;
        let declared = line
            .get("leaf_hash")
            .and_then(hash_of)
            .ok_or_else(|| malformed(format!("event {seq}: no leaf hash")))?;
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
        let recomputed = ledger::leaf_of_json(event).map_err(|e| malformed(e.to_string()))?;
        if event.get("seq").and_then(Value::as_i64) != Some(seq) {
            return Err(Failure::Reordered { seq });
        }
        if recomputed != declared {
            // Moved rather than edited? Its content hashes correctly under a neighbour's number.
            let moved = [seq - 1, seq + 1].into_iter().any(|other| {
                let mut e = event.clone();
                e["seq"] = other.into();
                ledger::leaf_of_json(&e)
                    .map(|h| h == declared)
                    .unwrap_or(false)
            });
            return Err(if moved {
                Failure::Reordered { seq }
            } else {
                Failure::Altered { seq }
            });
        }
        if filtered {
            let proof: Vec<Hash> = line
                .get("inclusion_proof")
                .and_then(Value::as_array)
                .ok_or_else(|| malformed(format!("event {seq}: no inclusion proof")))?
                .iter()
                .map(hash_of)
                .collect::<Option<_>>()
                .ok_or_else(|| malformed(format!("event {seq}: bad proof hash")))?;
            if seq as u64 > cp.size
                || !merkle::verify_inclusion(seq as u64 - 1, cp.size, &recomputed, &proof, &cp.root)
            {
                return Err(Failure::Altered { seq });
            }
        }
        leaves.push(recomputed);
        last_seq = seq;
        seen += 1;
    }
    let end_count = lines
        .last()
        .and_then(|l| l.get("events"))
        .and_then(Value::as_u64);
    if end_count != Some(seen) {
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
                .find(|l| {
                    kind(l) == "consistency"
                        && l.get("from_size").and_then(Value::as_u64) == Some(prev.size)
                })
                .and_then(|l| l.get("proof")?.as_array()?.iter().map(hash_of).collect());
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

fn count_events(lines: &[Value]) -> u64 {
    lines
        .iter()
        .filter(|l| l.get("type").and_then(Value::as_str) == Some("event"))
        .count() as u64
}
