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
    /// The events before the bundle's first, archived (their compact range in the header
    /// stands for them); 0 when the bundle starts at the first event.
    pub archived_through: u64,
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
    /// A header's archived prefix: the events before the first one in the bundle.
    prefix: Option<Prefix>,
}

/// The compact range of the events before a complete bundle's first (archived ones): their
/// count and the roots of the subtrees that cover them, largest first, as [level, hash].
#[derive(Debug, Deserialize)]
struct Prefix {
    size: u64,
    peaks: Vec<(u32, String)>,
}

impl Prefix {
    fn range(&self) -> Option<merkle::CompactRange> {
        let peaks = self
            .peaks
            .iter()
            .map(|(level, hex)| hash_of(hex).map(|h| (h, *level)))
            .collect::<Option<Vec<_>>>()?;
        merkle::CompactRange::from_peaks(self.size, peaks)
    }
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

/// The event's own `seq` as [`EventSeq`] reads it (`None` if absent, repeated, not an
/// integer or not in an object), found by one walk over the text in the usual case rather
/// than a second parse: anything the walk is not sure of is left to serde.
fn own_seq(event: &str) -> Option<i64> {
    match walk_for_seq(event.as_bytes()) {
        Some(answer) => answer,
        None => serde_json::from_str::<EventSeq>(event)
            .ok()
            .and_then(|e| e.seq?.as_i64()),
    }
}

/// Walks JSON text the line's parse has already validated, looking for its top-level `seq`
/// member. `Some(answer)` when sure; `None` (ask serde) for a key with escapes, a repeated
/// `seq`, a `seq` that is not a plain integer in `i64`, or a text that is not an object.
fn walk_for_seq(b: &[u8]) -> Option<Option<i64>> {
    let at = |i: usize| b.get(i).copied();
    let skip_ws = |mut i: usize| {
        while matches!(at(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            i += 1;
        }
        i
    };
    let mut i = skip_ws(0);
    if at(i) != Some(b'{') {
        return None;
    }
    let (mut depth, mut key_next) = (0usize, false);
    let mut found: Option<Option<i64>> = None;
    while let Some(c) = at(i) {
        match c {
            b'"' => {
                let start = i + 1;
                let mut j = start;
                let mut escaped = false;
                loop {
                    match at(j)? {
                        b'\\' => {
                            escaped = true;
                            j += 2;
                        }
                        b'"' => break,
                        _ => j += 1,
                    }
                }
                i = j + 1;
                if depth == 1 && key_next {
                    key_next = false;
                    if escaped {
                        return None;
                    }
                    if &b[start..j] == b"seq" {
                        if found.is_some() {
                            return None;
                        }
                        i = skip_ws(i);
                        if at(i) != Some(b':') {
                            return None;
                        }
                        i = skip_ws(i + 1);
                        let value = i;
                        if at(i) == Some(b'-') {
                            i += 1;
                        }
                        while at(i).is_some_and(|d| d.is_ascii_digit()) {
                            i += 1;
                        }
                        let text = std::str::from_utf8(&b[value..i]).ok()?;
                        let plain =
                            !text.starts_with("-0") && matches!(at(skip_ws(i)), Some(b',' | b'}'));
                        found = Some(Some(text.parse().ok().filter(|_| plain)?));
                    }
                }
                continue;
            }
            b'{' | b'[' => {
                depth += 1;
                key_next = depth == 1;
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' => key_next = depth == 1,
            _ => {}
        }
        i += 1;
    }
    Some(found.unwrap_or(None))
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
        let own_seq = own_seq(event.get());
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
/// `first` is the number of lines before these, for line numbers in messages.
fn parse_and_hash<'a>(
    lines: &[&'a str],
    first: usize,
) -> Vec<Result<(Line<'a>, Option<Hashed>), Failure>> {
    let one = |(i, text): (usize, &'a str)| -> Result<(Line<'a>, Option<Hashed>), Failure> {
        let line: Line<'a> = serde_json::from_str(text)
            .map_err(|e| malformed(format!("line {}: {e}", first + i + 1)))?;
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
    let mut verifier = Verifier::new(public_key, previous);
    let lines: Vec<&str> = bundle.lines().collect();
    for chunk in lines.chunks(CHUNK_LINES) {
        verifier.push(chunk);
    }
    verifier.finish()
}

/// Verifies a bundle read line by line from `reader`, in chunks, so memory stays flat
/// however large the bundle is (only a filtered bundle's inclusion proofs are kept).
pub fn verify_reader(
    reader: impl std::io::BufRead,
    public_key: &[u8; 32],
    previous: Option<&str>,
) -> Result<Report, Failure> {
    let mut verifier = Verifier::new(public_key, previous);
    let mut chunk: Vec<String> = Vec::with_capacity(CHUNK_LINES);
    let push = |verifier: &mut Verifier<'_>, chunk: &mut Vec<String>| {
        let lines: Vec<&str> = chunk.iter().map(String::as_str).collect();
        verifier.push(&lines);
        chunk.clear();
    };
    for line in reader.lines() {
        chunk.push(line.map_err(|e| malformed(format!("reading the bundle: {e}")))?);
        if chunk.len() == CHUNK_LINES {
            push(&mut verifier, &mut chunk);
        }
    }
    push(&mut verifier, &mut chunk);
    verifier.finish()
}

/// Lines hashed per step: enough to keep every core busy, few enough to keep memory small.
pub const CHUNK_LINES: usize = 16_384;

/// A bundle verified as its lines arrive: [`Verifier::push`] them in order, in chunks of any
/// size, then [`Verifier::finish`]. Each chunk's events are parsed and hashed on all cores and
/// folded into the tree at once, so memory is O(log n) for a complete bundle.
///
/// The checkpoint line comes after the events, so failures are remembered, not returned, and
/// `finish` reports them in a fixed order, whatever the chunking: a malformed line first (the
/// first in the bundle), then a missing header, a missing or badly signed checkpoint, a
/// missing end line, the first event that is out of order or does not match, the end line's
/// count, the root, and last the earlier checkpoint.
pub struct Verifier<'k> {
    public_key: &'k [u8; 32],
    previous: Option<String>,
    /// Non-empty lines seen so far, for line numbers in messages.
    lines: usize,
    /// The first line's origin and filtered flag, once it was a header.
    header: Option<Header>,
    /// The first line was something else.
    headless: bool,
    /// The first line that did not parse, or an event line without its members.
    malformed: Option<Failure>,
    /// The first event that fails the in-order checks; nothing after it is checked.
    failed: Option<Failure>,
    /// Event lines hashed (all of them, as in the truncation message).
    hashed: u64,
    /// Events that passed the in-order checks.
    seen: u64,
    last_seq: i64,
    tree: merkle::CompactRange,
    /// Filtered bundles: (seq, leaf, inclusion proof), checked once the checkpoint is known.
    proven: Vec<(i64, Hash, Vec<Hash>)>,
    /// The earlier checkpoint's size, once read (its signature is checked against the header's
    /// origin), and the root of the first that many events.
    previous_size: Option<u64>,
    previous_root: Option<Hash>,
    /// The first checkpoint line's note (that line may lack one).
    note: Option<Option<String>>,
    /// The first consistency line from each size: its proof, if its hashes parsed.
    consistency: Vec<(u64, Option<Vec<Hash>>)>,
    /// The last line was an end line: its event count.
    end: Option<Option<u64>>,
    /// Events before the first in the bundle (an archived prefix in the header).
    prefix: u64,
}

struct Header {
    origin: Option<String>,
    filtered: bool,
}

impl<'k> Verifier<'k> {
    pub fn new(public_key: &'k [u8; 32], previous: Option<&str>) -> Self {
        Self {
            public_key,
            previous: previous.map(str::to_owned),
            lines: 0,
            header: None,
            headless: false,
            malformed: None,
            failed: None,
            hashed: 0,
            seen: 0,
            last_seq: 0,
            tree: merkle::CompactRange::default(),
            proven: Vec::new(),
            previous_size: None,
            previous_root: None,
            note: None,
            consistency: Vec::new(),
            end: None,
            prefix: 0,
        }
    }

    /// The next lines of the bundle, in order; blank lines are skipped.
    pub fn push(&mut self, lines: &[&str]) {
        let texts: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| !l.trim().is_empty())
            .collect();
        let first = self.lines;
        self.lines += texts.len();
        for parsed in parse_and_hash(&texts, first) {
            match parsed {
                Ok((line, hashed)) => self.take(line, hashed),
                Err(f) => {
                    self.malformed.get_or_insert(f);
                }
            }
        }
    }

    fn take(&mut self, line: Line<'_>, hashed: Option<Hashed>) {
        let kind = line.kind.as_deref().unwrap_or_default();
        if self.header.is_none() && !self.headless {
            if kind == "header" {
                self.header = Some(Header {
                    origin: line.origin.as_deref().map(str::to_owned),
                    filtered: line.filtered.unwrap_or(true),
                });
                if let Some(prefix) = &line.prefix {
                    match prefix.range() {
                        Some(range) => {
                            self.last_seq = range.size() as i64;
                            self.prefix = range.size();
                            self.tree = range;
                        }
                        None => {
                            self.malformed.get_or_insert(malformed(
                                "the header's archived prefix is not a compact range",
                            ));
                        }
                    }
                }
                self.read_previous();
            } else {
                self.headless = true;
            }
        }
        self.end = (kind == "end").then_some(line.events);
        match kind {
            "checkpoint" if self.note.is_none() => {
                self.note = Some(line.note.as_deref().map(str::to_owned));
            }
            "consistency" => {
                if let Some(from) = line.from_size {
                    if !self.consistency.iter().any(|(f, _)| *f == from) {
                        let proof = line.proof.as_deref().and_then(hashes_of);
                        self.consistency.push((from, proof));
                    }
                }
            }
            _ => {}
        }
        if let Some(h) = hashed {
            self.hashed += 1;
            if self.failed.is_none() && !self.headless {
                if let Err(f) = self.check_event(&line, h) {
                    self.failed = Some(f);
                }
            }
        }
    }

    /// The earlier checkpoint's size, if its signature holds under the header's origin (a
    /// bad one is reported by `finish`, in its place).
    fn read_previous(&mut self) {
        let origin = self.header.as_ref().and_then(|h| h.origin.as_deref());
        if let (Some(note), Some(origin)) = (&self.previous, origin) {
            if let Ok(prev) = checkpoint::verify(note, origin, self.public_key) {
                self.previous_size = Some(prev.size);
                if prev.size == self.tree.size() {
                    self.previous_root = Some(self.tree.root());
                }
            }
        }
    }

    /// The in-order checks of one event (the header came first).
    fn check_event(&mut self, line: &Line<'_>, h: Hashed) -> Result<(), Failure> {
        let filtered = self.header.as_ref().is_none_or(|h| h.filtered);
        let seq = h.seq;
        if seq <= self.last_seq {
            return Err(Failure::Reordered { seq });
        }
        if !filtered && seq != self.last_seq + 1 {
            return Err(Failure::Missing {
                seq: self.last_seq + 1,
                after: self.last_seq,
                next: seq,
            });
        }
        let recomputed = h.recomputed.map_err(malformed)?;
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
            self.proven.push((seq, recomputed, proof));
        } else {
            self.tree.push(recomputed);
            if Some(self.tree.size()) == self.previous_size {
                self.previous_root = Some(self.tree.root());
            }
        }
        self.seen += 1;
        self.last_seq = seq;
        Ok(())
    }

    /// The verdict on everything pushed.
    pub fn finish(self) -> Result<Report, Failure> {
        if let Some(f) = self.malformed {
            return Err(f);
        }
        let header = self.header.ok_or_else(|| malformed("no header line"))?;
        let origin = header
            .origin
            .ok_or_else(|| malformed("header has no origin"))?;
        let filtered = header.filtered;
        let note = self
            .note
            .flatten()
            .ok_or_else(|| malformed("no checkpoint line"))?;
        let cp: Checkpoint = checkpoint::verify(&note, &origin, self.public_key)
            .map_err(|e| Failure::BadSignature(e.to_string()))?;
        let Some(end_count) = self.end else {
            return Err(Failure::Truncated {
                have: self.hashed,
                signed: cp.size,
            });
        };
        // Filtered: the events before the first failure, each proven against the checkpoint.
        for (seq, leaf, proof) in &self.proven {
            if *seq as u64 > cp.size
                || !merkle::verify_inclusion(*seq as u64 - 1, cp.size, leaf, proof, &cp.root)
            {
                return Err(Failure::Altered { seq: *seq });
            }
        }
        if let Some(f) = self.failed {
            return Err(f);
        }
        let seen = self.seen;
        if end_count != Some(seen) {
            return Err(malformed(
                "the end line's event count does not match the events",
            ));
        }
        if !filtered {
            let have = self.prefix + seen;
            if have < cp.size {
                return Err(Failure::Truncated {
                    have,
                    signed: cp.size,
                });
            }
            if have > cp.size || self.tree.root() != cp.root {
                return Err(Failure::RootMismatch { size: cp.size });
            }
        }

        // An earlier checkpoint the auditor kept: the log must extend it.
        let mut consistent_with = None;
        if let Some(prev_note) = &self.previous {
            let prev = checkpoint::verify(prev_note, &origin, self.public_key)
                .map_err(|e| Failure::BadSignature(format!("previous checkpoint: {e}")))?;
            if prev.size > cp.size {
                return Err(Failure::Truncated {
                    have: cp.size,
                    signed: prev.size,
                });
            }
            // A complete bundle reached the earlier size itself, unless it lies in the
            // archived prefix: then, as for a filtered bundle, a consistency proof says it.
            let ok = if let (false, Some(root)) = (filtered, self.previous_root) {
                root == prev.root
            } else {
                let proof = self
                    .consistency
                    .iter()
                    .find(|(from, _)| *from == prev.size)
                    .and_then(|(_, p)| p.as_deref());
                match proof {
                    Some(p) => merkle::verify_consistency(prev.size, cp.size, &prev.root, &cp.root, p),
                    None => return Err(malformed(format!("no consistency proof from size {} in this bundle (export with --previous-checkpoint)", prev.size))),
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
            origin,
            consistent_with,
            archived_through: self.prefix,
        })
    }
}

#[cfg(test)]
mod tests {
    use ring::signature::{Ed25519KeyPair, KeyPair};

    use super::*;
    use crate::audit::{Actor, AuditEvent};

    fn key() -> (Ed25519KeyPair, [u8; 32]) {
        let key = Ed25519KeyPair::from_seed_unchecked(&[7u8; 32]).unwrap();
        let public: [u8; 32] = key.public_key().as_ref().try_into().unwrap();
        (key, public)
    }

    /// The signed checkpoint note of the tree over `leaves`.
    fn note(leaves: &[Hash]) -> String {
        let (key, public) = key();
        let body = Checkpoint {
            origin: "t/audit".into(),
            size: leaves.len() as u64,
            root: merkle::root(leaves),
        }
        .body();
        let sig = key.sign(body.as_bytes());
        checkpoint::signed_note(
            &body,
            "t/audit",
            checkpoint::key_id("t/audit", &public),
            sig.as_ref(),
        )
    }

    /// `n` events and their leaf hashes; `proven` events carry their inclusion proof.
    fn events(n: i64, proven: impl Fn(i64) -> bool) -> (Vec<(i64, String)>, Vec<Hash>) {
        let made: Vec<_> = (1..=n)
            .map(|seq| {
                let e = AuditEvent::new(
                    time::macros::datetime!(2026-11-24 12:00:00 UTC),
                    Actor::system(),
                    crate::audit::Action::DataAccess,
                    crate::audit::Target::uri(&format!("spiffe://t/device/acme/{seq}")),
                )
                .with("note", "tab\there, quote \" and ünïcödé");
                (seq, ledger::leaf(seq, &e).unwrap(), e)
            })
            .collect();
        let leaves: Vec<Hash> = made.iter().map(|(_, leaf, _)| *leaf).collect();
        let lines = made
            .iter()
            .map(|(seq, leaf, e)| {
                let proof = proven(*seq)
                    .then(|| merkle::inclusion_proof(*seq as usize - 1, &leaves).unwrap());
                let line = ledger::export_line(
                    *seq,
                    &ledger::EventFields::of(e),
                    &crate::domain::hex(leaf),
                    proof.as_deref(),
                );
                (*seq, line.unwrap())
            })
            .collect();
        (lines, leaves)
    }

    /// A bundle as medid writes it: complete, or only the events `keep` selects.
    fn bundle_of(n: i64, keep: impl Fn(i64) -> bool + Copy, filtered: bool) -> Vec<String> {
        let (events, leaves) = events(n, |seq| filtered && keep(seq));
        let mut lines = vec![format!(
            r#"{{"type":"header","origin":"t/audit","filtered":{filtered}}}"#
        )];
        lines.extend(
            events
                .into_iter()
                .filter(|(seq, _)| keep(*seq))
                .map(|(_, l)| l),
        );
        let kept = lines.len() - 1;
        lines.push(serde_json::json!({"type": "checkpoint", "note": note(&leaves)}).to_string());
        lines.push(format!(r#"{{"type":"end","events":{kept}}}"#));
        lines
    }

    /// A complete bundle of events `after + 1 ..= n` whose header carries the compact range of
    /// the first `after` (archived) events, with `peak` edited by `edit` when given.
    fn archived_bundle(n: i64, after: u64, edit: Option<usize>) -> Vec<String> {
        let (events, leaves) = events(n, |_| false);
        let mut range = merkle::CompactRange::default();
        for leaf in &leaves[..after as usize] {
            range.push(*leaf);
        }
        let peaks: Vec<serde_json::Value> = range
            .peaks()
            .iter()
            .enumerate()
            .map(|(i, (hash, level))| {
                let mut hash = *hash;
                if Some(i) == edit {
                    hash[0] ^= 1;
                }
                serde_json::json!([level, crate::domain::hex(&hash)])
            })
            .collect();
        let mut lines = vec![serde_json::json!({"type": "header", "origin": "t/audit",
            "filtered": false, "prefix": {"size": after, "peaks": peaks}})
        .to_string()];
        lines.extend(
            events
                .into_iter()
                .filter(|(seq, _)| *seq as u64 > after)
                .map(|(_, l)| l),
        );
        let kept = lines.len() - 1;
        lines.push(serde_json::json!({"type": "checkpoint", "note": note(&leaves)}).to_string());
        lines.push(format!(r#"{{"type":"end","events":{kept}}}"#));
        lines
    }

    #[test]
    fn an_archived_prefix_stands_for_its_events_only_if_the_signed_root_agrees() {
        let (_, public) = key();
        let check = |lines: &[String]| {
            let mut v = Verifier::new(&public, None);
            v.push(&lines.iter().map(String::as_str).collect::<Vec<_>>());
            v.finish()
        };
        let report = check(&archived_bundle(100, 48, None)).unwrap();
        assert_eq!((report.events, report.archived_through), (52, 48));
        assert_eq!(
            check(&archived_bundle(100, 48, Some(1))),
            Err(Failure::RootMismatch { size: 100 })
        );
        // A prefix whose peaks do not add up to its size is not one.
        let mut lines = archived_bundle(100, 48, None);
        lines[0] = lines[0].replace("\"size\":48", "\"size\":47");
        assert!(matches!(check(&lines), Err(Failure::Malformed(_))));
        // The events must start right after the prefix.
        let mut lines = archived_bundle(100, 48, None);
        lines.remove(1);
        assert_eq!(
            check(&lines),
            Err(Failure::Missing {
                seq: 49,
                after: 48,
                next: 50
            })
        );
    }

    /// A complete bundle of `n` events as medid writes it, and the public key that signed it.
    fn bundle(n: i64) -> (Vec<String>, [u8; 32]) {
        (bundle_of(n, |_| true, false), key().1)
    }

    /// Pushes `lines` in chunks of `size`.
    fn chunked(lines: &[String], size: usize, previous: Option<&str>) -> Result<Report, Failure> {
        let public = key().1;
        let mut v = Verifier::new(&public, previous);
        let texts: Vec<&str> = lines.iter().map(String::as_str).collect();
        for chunk in texts.chunks(size) {
            v.push(chunk);
        }
        v.finish()
    }

    #[test]
    fn the_verdict_does_not_depend_on_how_the_lines_arrive() {
        let n = 3000;
        let (_, leaves) = events(n, |_| false);
        let previous = note(&leaves[..1234]);
        let complete = bundle_of(n, |_| true, false);
        let filtered = bundle_of(n, |seq| seq % 7 == 0, true);
        let edit = |lines: &[String], i: usize, f: &dyn Fn(&str) -> String| {
            let mut l = lines.to_vec();
            l[i] = f(&l[i]);
            l
        };
        let without = |lines: &[String], i: usize| {
            let mut l = lines.to_vec();
            l.remove(i);
            l
        };
        type Case<'p> = (
            &'static str,
            Vec<String>,
            Option<&'p str>,
            Result<u64, Failure>,
        );
        let cases: Vec<Case<'_>> = vec![
            ("complete", complete.clone(), None, Ok(3000)),
            (
                "complete, consistent",
                complete.clone(),
                Some(&previous),
                Ok(3000),
            ),
            ("filtered", filtered.clone(), None, Ok(428)),
            (
                "altered",
                edit(&complete, 2001, &|l| l.replace("acme/2001", "acme/2002")),
                None,
                Err(Failure::Altered { seq: 2001 }),
            ),
            (
                "missing",
                without(&complete, 77),
                None,
                Err(Failure::Missing {
                    seq: 77,
                    after: 76,
                    next: 78,
                }),
            ),
            (
                "no end line",
                without(&complete, 3002),
                None,
                Err(Failure::Truncated {
                    have: 3000,
                    signed: 3000,
                }),
            ),
            (
                "bad signature beats an altered event",
                edit(
                    &edit(&complete, 10, &|l| l.replace("acme/10", "acme/11")),
                    3001,
                    &|l| l.replace("— t/audit", "— t/other"),
                ),
                None,
                Err(Failure::BadSignature("bad signature".into())),
            ),
            (
                "a malformed line beats everything",
                edit(
                    &edit(&complete, 10, &|l| l.replace("acme/10", "acme/11")),
                    2500,
                    &|_| "{".into(),
                ),
                None,
                Err(malformed("line 2501: …")),
            ),
            (
                "filtered proof",
                edit(&filtered, 100, &|l| {
                    let at = l.find("\"inclusion_proof\":[\"").unwrap() + 20;
                    let flipped = if &l[at..at + 1] == "0" { "1" } else { "0" };
                    format!("{}{flipped}{}", &l[..at], &l[at + 1..])
                }),
                None,
                Err(Failure::Altered { seq: 700 }),
            ),
            (
                "truncated below the previous checkpoint",
                bundle_of(1000, |_| true, false),
                Some(&previous),
                Err(Failure::Truncated {
                    have: 1000,
                    signed: 1234,
                }),
            ),
        ];
        // Messages come from serde or the signature check: compare their kind and line.
        let same = |got: &Result<u64, Failure>, want: &Result<u64, Failure>| match (got, want) {
            (Err(Failure::Malformed(g)), Err(Failure::Malformed(w))) => {
                g.split(':').next() == w.split(':').next()
            }
            (Err(Failure::BadSignature(_)), Err(Failure::BadSignature(_))) => true,
            _ => got == want,
        };
        for (name, lines, previous, expected) in cases {
            let whole = verify_bundle(&lines.join("\n"), &key().1, previous).map(|r| r.events);
            assert!(same(&whole, &expected), "{name}: {whole:?}");
            for size in [1, 2, 7, 1000, 5000] {
                let got = chunked(&lines, size, previous).map(|r| r.events);
                assert!(same(&got, &expected), "{name}, chunks of {size}: {got:?}");
            }
            let read = verify_reader(lines.join("\n").as_bytes(), &key().1, previous);
            assert!(same(&read.map(|r| r.events), &expected), "{name}, read");
        }
    }

    #[test]
    fn the_walk_for_seq_reads_what_serde_reads() {
        let serde = |text: &str| {
            serde_json::from_str::<EventSeq>(text)
                .ok()
                .and_then(|e| e.seq?.as_i64())
        };
        let cases = [
            r#"{"action":"a","seq":7,"z":1}"#,
            r#"{"seq":7}"#,
            r#"{"a":{"seq":8},"seq":7}"#,
            r#"{"a":[{"seq":8}],"b":"\"seq\":9","seq":7}"#,
            r#"{"a":{"seq":8}}"#,
            r#"{"detail":{"x":"}"},"seq":7}"#,
            r#"{ "seq" : 7 , "b" : [ 1 , { "c" : "seq" } ] }"#,
            r#"{"s\u0065q":7}"#,
            r#"{"seq":7,"seq":8}"#,
            r#"{"seq":7.0}"#,
            r#"{"seq":7e0}"#,
            r#"{"seq":-7}"#,
            r#"{"seq":-0}"#,
            r#"{"seq":0}"#,
            r#"{"seq":9223372036854775807}"#,
            r#"{"seq":9223372036854775808}"#,
            r#"{"seq":-9223372036854775808}"#,
            r#"{"seq":null}"#,
            r#"{"seq":"7"}"#,
            r#"{"seq":[7]}"#,
            r#"{"x\\":1,"seq":7}"#,
            r#"{}"#,
            r#"[{"seq":7}]"#,
            r#"7"#,
        ];
        for case in cases {
            assert_eq!(own_seq(case), serde(case), "{case}");
        }
        // The walk itself answers the usual shapes, so serde is not asked.
        assert_eq!(walk_for_seq(cases[0].as_bytes()), Some(Some(7)));
        assert_eq!(walk_for_seq(cases[3].as_bytes()), Some(Some(7)));
        assert_eq!(walk_for_seq(cases[4].as_bytes()), Some(None));
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
