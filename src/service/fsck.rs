//! `medid audit fsck`: the full integrity check. Re-derives everything from the stored events
//! — every leaf hash from the event's members, every stored tree node from the leaves, every
//! stored checkpoint's root and signature — in one pass over the log in sequence order (O(n)
//! time, O(log n) memory), and stops at the first entry that does not hold, naming it.

use crate::audit::checkpoint;
use crate::audit::ledger::{self, EventFields};
use crate::audit::merkle::CompactRange;
use crate::error::Error;
use crate::store::ledger::AuditQuery;
use crate::store::{MerkleLog, Retention, Store};

/// Events a page reads.
const PAGE: i64 = 4096;

/// What a complete check covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsckReport {
    pub events: u64,
    /// Stored tree nodes compared with the roots recomputed from the leaves.
    pub nodes: u64,
    /// Signed checkpoints verified against the recomputed root at their size (from the
    /// database, and the copies outside it when given).
    pub checkpoints: u64,
    /// Events archived (no rows): each archive's signed root was checked against the stored
    /// tree, and the pass started from it.
    pub archived: u64,
}

/// Re-derives events `range.size() + 1 ..= size` from their stored members, a page of `page`
/// at a time: each event's leaf hash recomputed and compared with the stored one, pushed onto
/// `range`, and the stored tree nodes it completes compared with their recomputed roots.
/// `each(range)` runs after every event, `page_done(events so far)` after every page. Returns
/// how many stored nodes were compared. The first damage is an [`Error::Integrity`] naming it.
/// Shared by the full check and the incremental one (`Ca::verify_since`).
pub(super) async fn rehash(
    store: &Store,
    range: &mut CompactRange,
    size: u64,
    page: i64,
    mut each: impl FnMut(&CompactRange) -> Result<(), Error> + Send,
    mut page_done: impl FnMut(u64),
) -> Result<u64, Error> {
    let all = AuditQuery::default();
    let mut at = range.size() as i64;
    let mut nodes = 0u64;
    while at < size as i64 {
        let after = at;
        let mut made = Vec::new();
        let mut check = |seq: i64, fields: EventFields<'_>, stored: &str| {
            if seq != at + 1 {
                return Err(Error::Integrity(format!(
                    "audit log: event {} is missing (the sequence jumps from {at} to {seq})",
                    at + 1
                )));
            }
            let leaf = ledger::leaf_of_fields(seq, &fields)?;
            if crate::domain::hex(&leaf) != stored {
                return Err(Error::Integrity(format!(
                    "audit log: event {seq} does not match its stored leaf hash"
                )));
            }
            range.push_noting(leaf, |level, idx, root| made.push((level, idx, *root)));
            at = seq;
            each(range)
        };
        store
            .scan_ledger(&all, after, size as i64, page, &mut check)
            .await?;
        if at == after {
            return Err(Error::Integrity(format!(
                "audit log: event {} is missing (the log ends at {at}, {size} expected)",
                at + 1
            )));
        }
        store.check_stored_nodes(&made).await?;
        nodes += made
            .iter()
            .filter(|n| n.0 >= crate::store::STORED_TREE_LEVEL)
            .count() as u64;
        page_done(at as u64);
    }
    Ok(nodes)
}

/// Checks the whole log in `store` against the audit `public_key`; `outside` are checkpoint
/// notes kept outside the database (`checkpoints.log`), checked too. `progress(done, total)`
/// is called after every page. The first damage is an [`Error::Integrity`] naming it.
pub async fn fsck(
    store: &Store,
    public_key: &[u8; 32],
    outside: &[String],
    mut progress: impl FnMut(u64, u64),
) -> Result<FsckReport, Error> {
    let size = store.tree_size().await?;
    let mut notes = store.checkpoints().await?;
    notes.extend(outside.iter().cloned());
    let mut checkpoints = Vec::with_capacity(notes.len());
    for note in notes {
        let origin = note.lines().next().unwrap_or_default().to_owned();
        let cp = checkpoint::verify(&note, &origin, public_key)
            .map_err(|e| Error::Integrity(format!("a stored checkpoint does not verify: {e}")))?;
        if cp.size > size {
            return Err(Error::Integrity(format!(
                "the signed checkpoint at size {} is beyond the log, which has {size} events",
                cp.size
            )));
        }
        checkpoints.push(cp);
    }
    checkpoints.sort_by_key(|c| c.size);
    // Archived events have no rows: each archive's signed checkpoint must still be what the
    // stored tree yields at its size, and so must every checkpoint inside the archived part
    // (their boundary leaves are kept); the pass over the events starts after them.
    let mut archived = 0u64;
    for a in store.archives().await? {
        let origin = a.note.lines().next().unwrap_or_default().to_owned();
        let cp = checkpoint::verify(&a.note, &origin, public_key).map_err(|e| {
            Error::Integrity(format!(
                "the checkpoint of the archive of events {}..={} does not verify: {e}",
                a.first_seq, a.last_seq
            ))
        })?;
        if cp.size != a.last_seq as u64 || cp.root != a.root || a.first_seq as u64 != archived + 1 {
            return Err(Error::Integrity(format!(
                "the archive record of events {}..={} does not match its signed checkpoint or \
                 does not follow the archive before it",
                a.first_seq, a.last_seq
            )));
        }
        archived = a.last_seq as u64;
    }
    let mut next_cp = 0;
    while let Some(cp) = checkpoints.get(next_cp).filter(|c| c.size <= archived) {
        if store.compact_range(cp.size).await?.root() != cp.root {
            return Err(Error::Integrity(format!(
                "the signed checkpoint at size {} (in the archived part) does not match the \
                 stored Merkle tree",
                cp.size
            )));
        }
        next_cp += 1;
    }
    let check_at = |range: &CompactRange, next_cp: &mut usize| -> Result<(), Error> {
        while let Some(cp) = checkpoints.get(*next_cp).filter(|c| c.size == range.size()) {
            if cp.root != range.root() {
                return Err(Error::Integrity(format!(
                    "the signed checkpoint at size {} does not match the first {} events \
                     (its root differs from theirs)",
                    cp.size, cp.size
                )));
            }
            *next_cp += 1;
        }
        Ok(())
    };
    let mut range: CompactRange = store.compact_range(archived).await?;
    check_at(&range, &mut next_cp)?;
    let mut failed = None;
    let walked = rehash(
        store,
        &mut range,
        size,
        PAGE,
        |range| {
            // A checkpoint inside a page is checked where the log reaches its size.
            check_at(range, &mut next_cp).map_err(|e| {
                failed = Some(e);
                Error::Internal("stopped".into())
            })
        },
        |at| progress(at, size),
    )
    .await;
    if let Some(e) = failed {
        return Err(e);
    }
    let nodes = walked?;
    if next_cp != checkpoints.len() {
        return Err(Error::Internal(
            "a checkpoint was not reached by the pass over the log".into(),
        ));
    }
    let covered = store.tree_covered().await?;
    if covered != size {
        return Err(Error::Integrity(format!(
            "the stored Merkle tree covers {covered} events but the log has {size}"
        )));
    }
    Ok(FsckReport {
        events: size - archived,
        nodes,
        checkpoints: checkpoints.len() as u64,
        archived,
    })
}
