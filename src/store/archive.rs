//! Retention: which events may be archived, the record of each archive, and dropping the rows
//! of archived events while the stored tree keeps covering them (docs/AUDIT.md "Retention").

use time::OffsetDateTime;

use super::Store;
use crate::audit::merkle::Hash;
use crate::audit::AuditEvent;
use crate::error::Error;

/// Event rows dropped per transaction, so the write lock is never held for long.
const DROP_CHUNK: i64 = 20_000;

/// One archive: events `first_seq ..= last_seq` went to a bundle verified against the signed
/// checkpoint at tree size `last_seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveRecord {
    pub first_seq: i64,
    pub last_seq: i64,
    pub root: Hash,
    /// The signed checkpoint note at `last_seq`.
    pub note: String,
    /// SHA-256 of the bundle file, hex.
    pub bundle_sha256: String,
    pub archived_at: OffsetDateTime,
}

/// What the next archive before a time would hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveCut {
    /// Events already archived (the new archive starts after them).
    pub after: i64,
    /// The last event of the new archive: the size of a signed checkpoint.
    pub last_seq: i64,
    /// That checkpoint's note.
    pub note: String,
}

type Row = (i64, i64, Hash, String, String, OffsetDateTime);

fn record((first_seq, last_seq, root, note, bundle_sha256, archived_at): Row) -> ArchiveRecord {
    ArchiveRecord {
        first_seq,
        last_seq,
        root,
        note,
        bundle_sha256,
        archived_at,
    }
}

impl super::Retention for Store {
    async fn archives(&self) -> Result<Vec<ArchiveRecord>, Error> {
        let mut reader = self.reader().await?;
        let rows: Vec<Row> = reader
            .tx()
            .all(
                "SELECT first_seq, last_seq, root_hash, note, bundle_sha256, archived_at
                 FROM audit_archives ORDER BY last_seq",
                &[],
            )
            .await?;
        Ok(rows.into_iter().map(record).collect())
    }

    async fn archived_through(&self) -> Result<u64, Error> {
        let mut reader = self.reader().await?;
        let last: i64 = reader
            .tx()
            .one("SELECT COALESCE(MAX(last_seq), 0) FROM audit_archives", &[])
            .await?;
        Ok(last as u64)
    }

    async fn archive_cut(&self, before: OffsetDateTime) -> Result<Option<ArchiveCut>, Error> {
        let mut reader = self.reader().await?;
        let mut tx = reader.tx();
        let after: i64 = tx
            .one("SELECT COALESCE(MAX(last_seq), 0) FROM audit_archives", &[])
            .await?;
        // Every archived event was recorded before `before`: the cut stops short of the first
        // event recorded at or after it (from the time index), wherever the clock went.
        let first_late: Option<i64> = tx
            .one(
                "SELECT MIN(seq) FROM audit_events WHERE seq > $1 AND recorded_at >= $2",
                &[&after, &before],
            )
            .await?;
        let limit = match first_late {
            Some(seq) => seq - 1,
            None => {
                tx.one("SELECT COALESCE(MAX(seq), 0) FROM audit_events", &[])
                    .await?
            }
        };
        let cut: Option<(i64, String)> = tx
            .optional(
                "SELECT tree_size, note FROM audit_checkpoints
                 WHERE tree_size > $1 AND tree_size <= $2 ORDER BY tree_size DESC LIMIT 1",
                &[&after, &limit],
            )
            .await?;
        Ok(cut.map(|(last_seq, note)| ArchiveCut {
            after,
            last_seq,
            note,
        }))
    }

    async fn record_archive(
        &self,
        archive: &ArchiveRecord,
        event: &AuditEvent,
    ) -> Result<(), Error> {
        let mut tx = self.begin_write().await?;
        let mut on = tx.on();
        let after: i64 = on
            .one("SELECT COALESCE(MAX(last_seq), 0) FROM audit_archives", &[])
            .await?;
        if archive.first_seq != after + 1 {
            return Err(Error::FailedPrecondition(format!(
                "events up to {after} are archived, so the next archive starts at {} (this one \
                 starts at {}); run medid audit archive again",
                after + 1,
                archive.first_seq
            )));
        }
        let signed: Option<String> = on
            .optional(
                "SELECT root_hash FROM audit_checkpoints WHERE tree_size = $1",
                &[&archive.last_seq],
            )
            .await?;
        if signed.as_deref() != Some(crate::domain::hex(&archive.root).as_str()) {
            return Err(Error::FailedPrecondition(format!(
                "no signed checkpoint with this root at tree size {}",
                archive.last_seq
            )));
        }
        // The 16-leaf blocks whose small nodes must stay computable once the rows are gone:
        // those holding a signed checkpoint's size in the range (consistency proofs from it),
        // and the archive's last leaf (proofs of the events after it).
        let width = 1i64 << super::tree::STORED_LEVEL;
        let sizes: Vec<i64> = on
            .all(
                "SELECT tree_size FROM audit_checkpoints WHERE tree_size >= $1 AND tree_size <= $2",
                &[&archive.first_seq, &archive.last_seq],
            )
            .await?;
        let mut blocks: Vec<i64> = sizes
            .iter()
            .filter(|s| *s % width != 0)
            .map(|s| s / width)
            .collect();
        blocks.push((archive.last_seq - 1) / width);
        blocks.sort_unstable();
        blocks.dedup();
        super::tree::keep_leaves(&mut on, &blocks, archive.last_seq).await?;
        on.execute(
            "INSERT INTO audit_archives
                 (last_seq, first_seq, root_hash, note, bundle_sha256, archived_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &archive.last_seq,
                &archive.first_seq,
                &crate::domain::hex(&archive.root),
                &archive.note,
                &archive.bundle_sha256,
                &archive.archived_at,
            ],
        )
        .await?;
        super::audit::append(&mut on, event).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn drop_archived(&self, mut progress: impl FnMut(u64) + Send) -> Result<u64, Error> {
        let mut dropped = 0u64;
        loop {
            let mut tx = self.begin_write().await?;
            let mut on = tx.on();
            // The rows left of every archive recorded, oldest first (the trigger refuses any
            // other); one bounded chunk per transaction.
            let through: i64 = on
                .one("SELECT COALESCE(MAX(last_seq), 0) FROM audit_archives", &[])
                .await?;
            let first: Option<i64> = on
                .one(
                    "SELECT MIN(seq) FROM audit_events WHERE seq <= $1",
                    &[&through],
                )
                .await?;
            let Some(first) = first else {
                return Ok(dropped);
            };
            let end = (first + DROP_CHUNK - 1).min(through);
            let n = on
                .execute(
                    "DELETE FROM audit_events WHERE seq >= $1 AND seq <= $2",
                    &[&first, &end],
                )
                .await?;
            // The reporters' ids of those events: an event that old is refused as too old
            // anyway, so none of them can come back.
            on.execute(
                "DELETE FROM access_event_ids WHERE seq >= $1 AND seq <= $2",
                &[&first, &end],
            )
            .await?;
            tx.commit().await?;
            dropped += n;
            progress(dropped);
            tokio::task::yield_now().await;
        }
    }
}
