//! The audit log's Merkle tree (RFC 9162), stored as the log grows: every complete subtree of
//! 16 leaves or more (levels 4 and up) is one row of `merkle_nodes` (level,
//! index, root), written in the transaction that appends the leaf completing it. A smaller
//! subtree is hashed from its leaves when a proof needs it (at most 8 leaves, one read). A
//! proof then needs O(log n) reads however long the log is, instead of a pass over every leaf,
//! and the log stores one node for every 16 events.
//!
//! Node (level, idx) covers leaves `idx * 2^level .. (idx + 1) * 2^level`; level 0 is the
//! leaf hash kept with each event (`audit_events.leaf_hash`, event `seq` is leaf `seq - 1`),
//! or, for an archived event whose small subtrees are still needed, a level-0 row of
//! `merkle_nodes` ([`keep_leaves`]). `merkle_state.size` is how many leaves the stored nodes
//! cover.

use std::ops::Range;

use super::sql::{Bind, Tx};
use crate::audit::merkle::{node_hash, Hash};
use crate::error::Error;

/// A complete subtree and its root.
#[derive(Debug, Clone, Copy)]
struct Node {
    level: u32,
    idx: i64,
    hash: Hash,
}

/// The lowest level stored: subtrees of 2^4 = 16 leaves and more. Storing every level cost
/// about a fifth of stream ingest (one more B-tree row per event).
pub const STORED_LEVEL: u32 = 4;

/// Rows per multi-row INSERT of nodes (three parameters each).
const NODES_PER_INSERT: usize = 256;

/// The leaves the stored nodes cover.
pub(super) async fn covered(tx: &mut Tx<'_>) -> Result<i64, Error> {
    tx.one("SELECT size FROM merkle_state WHERE id = 1", &[])
        .await
}

/// Extends the stored tree to cover the first `size` leaves. `fresh` holds the leaf hashes of
/// events `fresh_first ..` just appended in this transaction (so they need not be read back);
/// any other leaf not yet covered is read from the log. Runs under the write lock.
pub(super) async fn extend(
    tx: &mut Tx<'_>,
    size: i64,
    fresh_first: i64,
    fresh: &[Hash],
) -> Result<(), Error> {
    let (from, edge): (i64, Option<Vec<u8>>) = tx
        .one("SELECT size, edge FROM merkle_state WHERE id = 1", &[])
        .await?;
    if from >= size {
        return Ok(());
    }
    let mut stack = right_edge(tx, from, edge).await?;
    let mut made = Vec::new();
    // Leaves from + 1 .. fresh_first - 1 (by seq) are older events: read them back.
    let older_end = (fresh_first - 1).min(size);
    if from < older_end {
        let mut next = from;
        let mut failed = None;
        tx.scan(
            "SELECT seq, leaf_hash FROM audit_events WHERE seq > $1 AND seq <= $2 ORDER BY seq",
            &[&from, &older_end],
            &mut |row| {
                let seq: i64 = row.get(0)?;
                let hash: Hash = row.get(1)?;
                if seq != next + 1 {
                    failed = Some(next + 1);
                    return Err(Error::Integrity(format!(
                        "audit log: event {} is missing",
                        next + 1
                    )));
                }
                next = seq;
                push(&mut stack, &mut made, seq - 1, hash);
                Ok(())
            },
        )
        .await?;
        if next != older_end {
            return Err(Error::Integrity(format!(
                "audit log: event {} is missing",
                failed.unwrap_or(next + 1)
            )));
        }
    }
    for (seq, hash) in (fresh_first..).zip(fresh) {
        if seq > from && seq <= size {
            push(&mut stack, &mut made, seq - 1, *hash);
        }
    }
    insert_nodes(tx, &made).await?;
    let edge: Vec<u8> = size
        .to_be_bytes()
        .into_iter()
        .chain(
            stack
                .iter()
                .filter(|n| n.level < STORED_LEVEL)
                .flat_map(|n| n.hash),
        )
        .collect();
    tx.execute(
        "UPDATE merkle_state SET size = $1, edge = $2 WHERE id = 1",
        &[&size, &edge],
    )
    .await?;
    Ok(())
}

/// The complete subtrees that cover leaves `0 .. size` (the covered size, whose right edge
/// below the stored level is `edge` when recorded), largest first. The stored nodes come
/// from the tree, the small ones from `edge`: never from the newest events themselves, so a
/// damaged row among them cannot stop the log from growing.
async fn right_edge(tx: &mut Tx<'_>, size: i64, edge: Option<Vec<u8>>) -> Result<Vec<Node>, Error> {
    let small = size & ((1i64 << STORED_LEVEL) - 1);
    // The size it was written for, then one hash per small subtree.
    let Some(hashes) = edge
        .as_deref()
        .and_then(|e| e.strip_prefix(&size.to_be_bytes()[..]))
        .filter(|h| h.len() == 32 * small.count_ones() as usize)
    else {
        return frontier(tx, size).await;
    };
    let mut out = frontier(tx, size - small).await?;
    let mut start = size - small;
    let mut hashes = hashes.chunks_exact(32);
    for level in (0..STORED_LEVEL).rev() {
        let width = 1i64 << level;
        if small & width != 0 {
            let hash: Hash = hashes
                .next()
                .and_then(|h| h.try_into().ok())
                .expect("the edge was checked to hold one hash per small subtree");
            out.push(Node {
                level,
                idx: start >> level,
                hash,
            });
            start += width;
        }
    }
    Ok(out)
}

/// Pushes leaf `index` onto the right edge of the tree, merging the complete subtrees it
/// completes (each one a new node to store).
fn push(stack: &mut Vec<Node>, made: &mut Vec<Node>, index: i64, hash: Hash) {
    let mut node = Node {
        level: 0,
        idx: index,
        hash,
    };
    while let Some(left) = stack.last().filter(|l| l.level == node.level) {
        node = Node {
            level: node.level + 1,
            idx: left.idx / 2,
            hash: node_hash(&left.hash, &node.hash),
        };
        stack.pop();
        if node.level >= STORED_LEVEL {
            made.push(node);
        }
    }
    stack.push(node);
}

/// The complete subtrees that cover leaves `0 .. size`, largest (leftmost) first.
async fn frontier(tx: &mut Tx<'_>, size: i64) -> Result<Vec<Node>, Error> {
    let mut out = Vec::new();
    let mut start = 0i64;
    for level in (0..63u32).rev() {
        let width = 1i64 << level;
        if size & width != 0 {
            let idx = start >> level;
            out.push(Node {
                level,
                idx,
                hash: node(tx, level, idx).await?,
            });
            start += width;
        }
    }
    Ok(out)
}

/// The compact range of the first `size` leaves, from the stored tree.
pub(super) async fn compact_range(
    tx: &mut Tx<'_>,
    size: i64,
) -> Result<crate::audit::merkle::CompactRange, Error> {
    let peaks = frontier(tx, size).await?;
    crate::audit::merkle::CompactRange::from_peaks(
        size as u64,
        peaks.iter().map(|n| (n.hash, n.level)).collect(),
    )
    .ok_or_else(|| Error::Internal(format!("the frontier of {size} leaves is not one")))
}

/// Compares recomputed roots with the stored nodes (stored levels only).
pub(super) async fn check_nodes(tx: &mut Tx<'_>, nodes: &[(u32, u64, Hash)]) -> Result<(), Error> {
    // Where each statement is a round trip, the stored nodes are read a few hundred at once.
    let batched = if tx.numbered_params() {
        let keys: Vec<(u32, i64)> = nodes
            .iter()
            .filter(|n| n.0 >= STORED_LEVEL)
            .map(|&(level, idx, _)| (level, idx as i64))
            .collect();
        stored_nodes(tx, &keys).await?
    } else {
        Default::default()
    };
    for &(level, idx, hash) in nodes {
        if level < STORED_LEVEL {
            continue;
        }
        let stored = match batched.get(&(level, idx as i64)) {
            Some(h) => *h,
            // Not read in a batch, or absent: one read, which names an absent node.
            None => node(tx, level, idx as i64).await?,
        };
        if stored != hash {
            let width = 1u64 << level;
            return Err(Error::Integrity(format!(
                "the stored Merkle node {idx} at level {level} (events {}..={}) does not match \
                 the events it covers",
                idx * width + 1,
                (idx + 1) * width
            )));
        }
    }
    Ok(())
}

/// The stored root of node (level, idx).
async fn node(tx: &mut Tx<'_>, level: u32, idx: i64) -> Result<Hash, Error> {
    let missing = || {
        Error::Integrity(format!(
            "the stored Merkle tree has no node {idx} at level {level}"
        ))
    };
    if level < STORED_LEVEL {
        // Not stored: hashed from its leaves (events first + 1 ..= first + width).
        let width = 1i64 << level;
        let leaves = leaves(tx, idx * width, width).await?;
        if leaves.len() as i64 != width {
            return Err(missing());
        }
        return Ok(crate::audit::merkle::root(&leaves));
    }
    let bytes: Option<Vec<u8>> = tx
        .optional(
            "SELECT hash FROM merkle_nodes WHERE level = $1 AND idx = $2",
            &[&i64::from(level), &idx],
        )
        .await?;
    let bytes = bytes.ok_or_else(missing)?;
    hash_of(bytes, level, idx)
}

fn hash_of(bytes: Vec<u8>, level: u32, idx: i64) -> Result<Hash, Error> {
    bytes.try_into().map_err(|_| {
        Error::Integrity(format!(
            "the stored Merkle node {idx} at level {level} is not 32 bytes"
        ))
    })
}

/// The leaf hashes of leaves `first .. first + width` (fewer if some are absent), in order:
/// from the events, or for archived events whose leaves were kept (see [`keep_leaves`]) from
/// the level-0 rows of the stored tree.
async fn leaves(tx: &mut Tx<'_>, first: i64, width: i64) -> Result<Vec<Hash>, Error> {
    let live: Vec<(i64, Hash)> = tx
        .all(
            "SELECT seq, leaf_hash FROM audit_events WHERE seq > $1 AND seq <= $2 ORDER BY seq",
            &[&first, &(first + width)],
        )
        .await?;
    if live.len() as i64 == width {
        return Ok(live.into_iter().map(|(_, h)| h).collect());
    }
    let kept: Vec<(i64, Vec<u8>)> = tx
        .all(
            "SELECT idx, hash FROM merkle_nodes WHERE level = 0 AND idx >= $1 AND idx < $2
             ORDER BY idx",
            &[&first, &(first + width)],
        )
        .await?;
    let mut by_index = std::collections::BTreeMap::new();
    for (idx, bytes) in kept {
        by_index.insert(idx, hash_of(bytes, 0, idx)?);
    }
    for (seq, hash) in live {
        by_index.insert(seq - 1, hash);
    }
    Ok(by_index.into_values().collect())
}

/// Before the events of `blocks` are dropped (medid audit archive), keeps the leaf hashes of
/// each 16-leaf block named, at or below `upto`, as level-0 rows of the stored tree: the nodes
/// below the stored level in those blocks stay computable. The blocks are those holding the
/// size of a signed checkpoint (consistency proofs from it need them) and the archive's end.
pub(super) async fn keep_leaves(tx: &mut Tx<'_>, blocks: &[i64], upto: i64) -> Result<(), Error> {
    let width = 1i64 << STORED_LEVEL;
    let mut kept = Vec::new();
    for &block in blocks {
        let first = block * width;
        let rows: Vec<(i64, Hash)> = tx
            .all(
                "SELECT seq, leaf_hash FROM audit_events WHERE seq > $1 AND seq <= $2
                 ORDER BY seq",
                &[&first, &(first + width).min(upto)],
            )
            .await?;
        kept.extend(rows.into_iter().map(|(seq, hash)| Node {
            level: 0,
            idx: seq - 1,
            hash,
        }));
    }
    kept.sort_by_key(|n| n.idx);
    kept.dedup_by_key(|n| n.idx);
    // Leaves kept by an earlier archive are not written twice.
    let mut fresh = Vec::with_capacity(kept.len());
    for n in kept {
        let there: Option<i64> = tx
            .optional(
                "SELECT idx FROM merkle_nodes WHERE level = 0 AND idx = $1",
                &[&n.idx],
            )
            .await?;
        if there.is_none() {
            fresh.push(n);
        }
    }
    insert_nodes(tx, &fresh).await
}

async fn insert_nodes(tx: &mut Tx<'_>, nodes: &[Node]) -> Result<(), Error> {
    let numbered = tx.numbered_params();
    let mut rest = nodes;
    while !rest.is_empty() {
        // With plain `?` (SQLite), a power of two rows per statement, so a handful of
        // statements are prepared once and cached, as for the events themselves.
        let most = rest.len().min(NODES_PER_INSERT);
        let take = if numbered { most } else { 1 << most.ilog2() };
        let (chunk, tail) = rest.split_at(take);
        rest = tail;
        let mut sql = String::from("INSERT INTO merkle_nodes (level, idx, hash) VALUES ");
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push_str(", ");
            }
            if numbered {
                sql.push_str(&format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3));
            } else {
                sql.push_str("(?, ?, ?)");
            }
        }
        let rows: Vec<(i64, i64, &[u8])> = chunk
            .iter()
            .map(|n| (i64::from(n.level), n.idx, n.hash.as_slice()))
            .collect();
        let mut args: Vec<&(dyn Bind + Sync)> = Vec::with_capacity(3 * rows.len());
        for (level, idx, hash) in &rows {
            args.extend([level as &(dyn Bind + Sync), idx, hash]);
        }
        tx.execute(&sql, &args).await?;
    }
    Ok(())
}

/// The complete aligned subtrees that make up `range` (level, index), largest first: what its
/// root is hashed from.
fn parts(range: &Range<u64>) -> Vec<(u32, i64)> {
    let mut parts = Vec::new();
    let mut at = range.start;
    while at < range.end {
        let mut level = 0u32;
        while level < 62 {
            let width = 1u64 << (level + 1);
            if at % width != 0 || at + width > range.end {
                break;
            }
            level += 1;
        }
        parts.push((level, (at >> level) as i64));
        at += 1u64 << level;
    }
    parts
}

/// Hashes the roots of a range's parts together, from the right.
fn fold(parts: impl DoubleEndedIterator<Item = Hash>) -> Result<Hash, Error> {
    let mut parts = parts.rev();
    let last = parts
        .next()
        .ok_or_else(|| Error::Internal("the root of an empty range".into()))?;
    Ok(parts.fold(last, |right, left| node_hash(&left, &right)))
}

/// The root (MTH) of the leaves in `range`, a subtree of the RFC 9162 tree (as the ranges of
/// [`crate::audit::merkle::inclusion_ranges`] and `consistency_ranges` are): its complete
/// aligned parts, largest first, read from the stored tree and hashed from the right.
pub(super) async fn range_root(tx: &mut Tx<'_>, range: Range<u64>) -> Result<Hash, Error> {
    let mut roots = Vec::new();
    for (level, idx) in parts(&range) {
        roots.push(node(tx, level, idx).await?);
    }
    fold(roots.into_iter())
}

/// The stored nodes among `nodes` (levels [`STORED_LEVEL`] and up), read a few hundred per
/// statement; an absent one is absent from the map.
async fn stored_nodes(
    tx: &mut Tx<'_>,
    nodes: &[(u32, i64)],
) -> Result<std::collections::HashMap<(u32, i64), Hash>, Error> {
    let mut known = std::collections::HashMap::with_capacity(nodes.len());
    for chunk in nodes.chunks(READ_CHUNK) {
        let mut sql =
            String::from("SELECT level, idx, hash FROM merkle_nodes WHERE (level, idx) IN (");
        let keys: Vec<(i64, i64)> = chunk.iter().map(|&(l, i)| (i64::from(l), i)).collect();
        let mut args: Vec<&(dyn Bind + Sync)> = Vec::with_capacity(2 * chunk.len());
        for (i, (level, idx)) in keys.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("(${}, ${})", 2 * i + 1, 2 * i + 2));
            args.extend([level as &(dyn Bind + Sync), idx]);
        }
        sql.push(')');
        let rows: Vec<(i64, i64, Vec<u8>)> = tx.all(&sql, &args).await?;
        for (level, idx, bytes) in rows {
            let level = level as u32;
            known.insert((level, idx), hash_of(bytes, level, idx)?);
        }
    }
    Ok(known)
}

/// Stored nodes, or leaves, read per statement where each statement is a round trip.
const READ_CHUNK: usize = 256;

/// The roots of many ranges (a page of proofs). Where each statement is a round trip
/// (PostgreSQL), the nodes and leaves they need are read a few hundred per statement instead
/// of one each; elsewhere this is [`range_root`] for each.
pub(super) async fn range_roots(
    tx: &mut Tx<'_>,
    ranges: &[Range<u64>],
) -> Result<Vec<Hash>, Error> {
    if !tx.numbered_params() {
        let mut roots = Vec::with_capacity(ranges.len());
        for r in ranges {
            roots.push(range_root(tx, r.clone()).await?);
        }
        return Ok(roots);
    }
    let split: Vec<Vec<(u32, i64)>> = ranges.iter().map(parts).collect();
    let all: std::collections::BTreeSet<(u32, i64)> = split.iter().flatten().copied().collect();
    let stored: Vec<(u32, i64)> = all
        .iter()
        .filter(|(level, _)| *level >= STORED_LEVEL)
        .copied()
        .collect();
    let mut known = stored_nodes(tx, &stored).await?;
    let seqs: Vec<i64> = all
        .iter()
        .filter(|(level, _)| *level < STORED_LEVEL)
        .flat_map(|&(level, idx)| {
            let width = 1i64 << level;
            (idx * width + 1)..=(idx * width + width)
        })
        .collect::<std::collections::BTreeSet<i64>>()
        .into_iter()
        .collect();
    let mut leaves: std::collections::HashMap<i64, Hash> = Default::default();
    for chunk in seqs.chunks(READ_CHUNK) {
        let mut sql = String::from("SELECT seq, leaf_hash FROM audit_events WHERE seq IN (");
        let mut args: Vec<&(dyn Bind + Sync)> = Vec::with_capacity(chunk.len());
        for (i, seq) in chunk.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("${}", i + 1));
            args.push(seq);
        }
        sql.push(')');
        let rows: Vec<(i64, Hash)> = tx.all(&sql, &args).await?;
        leaves.extend(rows);
    }
    let mut roots = Vec::with_capacity(ranges.len());
    for parts in split {
        let mut hashes = Vec::with_capacity(parts.len());
        for (level, idx) in parts {
            let hash = match known.get(&(level, idx)) {
                Some(h) => *h,
                None if level < STORED_LEVEL => {
                    let width = 1i64 << level;
                    let mine: Option<Vec<Hash>> = (idx * width + 1..=idx * width + width)
                        .map(|seq| leaves.get(&seq).copied())
                        .collect();
                    let hash = match mine {
                        Some(mine) => crate::audit::merkle::root(&mine),
                        // Some leaves archived (kept in the tree) or absent: one by one.
                        None => node(tx, level, idx).await?,
                    };
                    known.insert((level, idx), hash);
                    hash
                }
                // Absent: the one-by-one read names it.
                None => node(tx, level, idx).await?,
            };
            hashes.push(hash);
        }
        roots.push(fold(hashes.into_iter())?);
    }
    Ok(roots)
}
