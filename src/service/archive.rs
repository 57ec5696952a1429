//! `medid audit archive`: retention. The events recorded before a time, up to a signed
//! checkpoint, are written to a bundle that verifies on its own against that checkpoint; the
//! bundle is read back from disk and verified; only then is the archive recorded (with its
//! audit event, in one transaction) and the events' rows dropped. The stored Merkle tree keeps
//! covering them, so proofs of later events and consistency from earlier signed checkpoints
//! still verify, and an archived event is proven by its bundle plus a consistency proof from
//! the bundle's checkpoint to today's (docs/AUDIT.md "Retention").

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;
use time::OffsetDateTime;

use crate::audit::checkpoint;
use crate::audit::ledger::{self, EventFields};
use crate::audit::{verify, Actor, AuditEvent, Target};
use crate::error::Error;
use crate::store::archive::ArchiveRecord;
use crate::store::ledger::AuditQuery;
use crate::store::{MerkleLog, Retention, Store};

/// Events a page reads.
const PAGE: i64 = 4096;

/// What an archive run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveReport {
    pub first_seq: i64,
    pub last_seq: i64,
    pub bytes: u64,
    pub bundle_sha256: String,
    /// Rows dropped (including any left by an interrupted earlier run).
    pub dropped: u64,
}

/// Where a run is, for progress on the terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Events written to the bundle so far, of the archive's.
    Written(u64, u64),
    /// The bundle was read back and verified.
    Verified,
    /// Rows dropped so far.
    Dropped(u64),
}

/// Archives the events recorded before `before` into `out` (see the module documentation).
/// `public_key` is the audit key the checkpoints are signed with. Nothing is dropped unless
/// the bundle on disk verifies; a run interrupted after recording the archive finishes the
/// drop when run again.
pub async fn archive(
    store: &Store,
    public_key: &[u8; 32],
    before: OffsetDateTime,
    out: &Path,
    now: OffsetDateTime,
    mut progress: impl FnMut(Stage) + Send,
) -> Result<ArchiveReport, Error> {
    // Rows left by a run that stopped after recording its archive go first.
    let leftover = store.drop_archived(|_| {}).await?;
    let cut = store.archive_cut(before).await?.ok_or_else(|| {
        Error::FailedPrecondition(format!(
            "nothing to archive: no signed checkpoint covers events that were all recorded \
             before {} and are not archived yet (checkpoints are signed as the log grows; \
             choose a later time, or wait for the next checkpoint)",
            ledger::rfc3339(before).unwrap_or_default()
        ))
    })?;
    let origin = cut.note.lines().next().unwrap_or_default().to_owned();
    let cp = checkpoint::verify(&cut.note, &origin, public_key).map_err(|e| {
        Error::Integrity(format!(
            "the signed checkpoint at tree size {} does not verify with this key: {e}",
            cut.last_seq
        ))
    })?;
    let first_seq = cut.after + 1;
    let prefix = store.compact_range(cut.after as u64).await?;
    let header = json!({
        "type": "header", "format": "medid-audit-bundle", "version": 1,
        "origin": cp.origin, "tree_size": cp.size, "filtered": false, "filter": {},
        "archive": {"first_seq": first_seq, "last_seq": cut.last_seq},
        "prefix": super::ledger::prefix_json(&prefix),
        "exported_by": "medid audit archive",
        "exported_at": ledger::rfc3339(now)?,
    });
    let partial = partial_path(out);
    let bytes = write_bundle(store, &partial, &header, &cut, &mut progress).await;
    let bytes = match bytes {
        Ok(b) => b,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    std::fs::rename(&partial, out).map_err(|e| {
        Error::Internal(format!(
            "renaming {} to {}: {e}",
            partial.display(),
            out.display()
        ))
    })?;
    crate::files::sync_parent(out);

    // Read back from disk, as an auditor would: nothing is dropped unless this holds.
    let file = std::fs::File::open(out)
        .map_err(|e| Error::Internal(format!("reading {}: {e}", out.display())))?;
    let report = verify::verify_reader(std::io::BufReader::new(file), public_key, None)
        .map_err(|f| Error::Integrity(format!("the archive bundle does not verify: {f}")))?;
    let expected = (cut.last_seq - cut.after) as u64;
    if report.events != expected || report.tree_size != cp.size {
        return Err(Error::Integrity(format!(
            "the archive bundle holds {} events verified at tree size {}; {expected} at {} \
             were written",
            report.events, report.tree_size, cp.size
        )));
    }
    progress(Stage::Verified);
    let bundle_sha256 = sha256_file(out)?;
    // The bundle's checkpoint beside it: `medid audit prove-consistency --since` takes it.
    crate::files::write_atomic(
        &note_path(out),
        cut.note.as_bytes(),
        crate::files::Access::Private,
    )?;

    let record = ArchiveRecord {
        first_seq,
        last_seq: cut.last_seq,
        root: cp.root,
        note: cut.note.clone(),
        bundle_sha256: bundle_sha256.clone(),
        archived_at: now,
    };
    let event = AuditEvent::new(
        now,
        Actor::system(),
        crate::audit::Action::AuditArchive,
        Target::ledger(),
    )
    .with("first_seq", first_seq)
    .with("last_seq", cut.last_seq)
    .with("before", ledger::rfc3339(before)?)
    .with("bundle_sha256", bundle_sha256.as_str())
    .with(
        "bundle",
        out.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    store.record_archive(&record, &event).await?;
    let dropped = store.drop_archived(|n| progress(Stage::Dropped(n))).await?;
    Ok(ArchiveReport {
        first_seq,
        last_seq: cut.last_seq,
        bytes,
        bundle_sha256,
        dropped: dropped + leftover,
    })
}

/// `FILE.note` beside `FILE`: the signed checkpoint the bundle verifies against.
pub fn note_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".note");
    out.with_file_name(name)
}

/// `FILE.partial` beside `FILE`: the bundle is written there, then renamed.
fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    out.with_file_name(name)
}

/// Writes the header, the events `cut.after + 1 ..= cut.last_seq` with their leaf hashes, the
/// checkpoint and the end line to `path` (0600), and makes it durable. Returns its size.
async fn write_bundle(
    store: &Store,
    path: &Path,
    header: &serde_json::Value,
    cut: &crate::store::archive::ArchiveCut,
    progress: &mut (impl FnMut(Stage) + Send),
) -> Result<u64, Error> {
    let io = |e: std::io::Error| Error::Internal(format!("writing {}: {e}", path.display()));
    let file = crate::files::create_private(path)?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    writeln!(w, "{header}").map_err(io)?;
    let all = AuditQuery::default();
    let total = (cut.last_seq - cut.after) as u64;
    let mut at = cut.after;
    while at < cut.last_seq {
        let after = at;
        let mut page = String::new();
        let mut write = |seq: i64, fields: EventFields<'_>, leaf: &str| {
            if seq != at + 1 {
                return Err(Error::Integrity(format!(
                    "audit log: event {} is missing (the sequence jumps from {at} to {seq})",
                    at + 1
                )));
            }
            page.push_str(&ledger::export_line(seq, &fields, leaf, None)?);
            page.push('\n');
            at = seq;
            Ok(())
        };
        store
            .scan_ledger(&all, after, cut.last_seq, PAGE, &mut write)
            .await?;
        if at == after {
            return Err(Error::Integrity(format!(
                "audit log: event {} is missing",
                at + 1
            )));
        }
        w.write_all(page.as_bytes()).map_err(io)?;
        progress(Stage::Written((at - cut.after) as u64, total));
    }
    writeln!(w, "{}", json!({"type": "checkpoint", "note": cut.note})).map_err(io)?;
    writeln!(w, "{}", json!({"type": "end", "events": total})).map_err(io)?;
    let file = w
        .into_inner()
        .map_err(|e| Error::Internal(format!("writing {}: {e}", path.display())))?;
    file.sync_all().map_err(io)?;
    let bytes = file.metadata().map_err(io)?.len();
    Ok(bytes)
}

/// SHA-256 of a file, hex, read in blocks.
fn sha256_file(path: &Path) -> Result<String, Error> {
    use std::io::Read;
    let io = |e: std::io::Error| Error::Internal(format!("reading {}: {e}", path.display()));
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(crate::domain::hex(ctx.finish().as_ref()))
}
