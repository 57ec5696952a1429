//! `medid backup`: an online, consistent copy of a SQLite database through SQLite's backup
//! API, taken while the service runs (readers and the writer carry on; the copy is one
//! snapshot).

use std::path::Path;
use std::time::Duration;

use crate::error::Error;
use crate::files;

/// Pages copied per step; between steps the service's writer may commit.
const PAGES_PER_STEP: std::ffi::c_int = 1024;

/// What a backup holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSummary {
    /// Audit events in the copy.
    pub events: u64,
    /// The newest signed checkpoint in the copy: (tree size, note).
    pub checkpoint: Option<(u64, String)>,
}

/// Copies the SQLite database at `source` to `out` (mode 0600, written beside it under a
/// temporary name and renamed once complete, so `out` is never a partial copy).
pub fn sqlite_online_backup(source: &Path, out: &Path) -> Result<BackupSummary, Error> {
    use rusqlite::{Connection, OpenFlags};
    let sql = |what: &'static str| move |e: rusqlite::Error| Error::internal(what, e);
    if !source.exists() {
        return Err(Error::NotFound(format!(
            "no database at {}",
            source.display()
        )));
    }
    let src = Connection::open_with_flags(source, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(sql("opening the database to back up"))?;
    let mut tmp_name = out.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".partial");
    let tmp = out.with_file_name(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    files::precreate_private(&tmp)?;
    {
        let mut dst = Connection::open(&tmp).map_err(sql("opening the backup file"))?;
        rusqlite::backup::Backup::new(&src, &mut dst)
            .map_err(sql("starting the backup"))?
            .run_to_completion(PAGES_PER_STEP, Duration::from_millis(5), None)
            .map_err(sql("copying the database"))?;
        // A self-contained file: no WAL beside it.
        dst.pragma_update(None, "journal_mode", "DELETE")
            .map_err(sql("finishing the backup"))?;
    }
    let check = Connection::open_with_flags(&tmp, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(sql("reopening the backup"))?;
    let integrity: String = check
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(sql("checking the backup"))?;
    if integrity != "ok" {
        return Err(Error::Internal(format!(
            "the backup failed its integrity check: {integrity}"
        )));
    }
    let events: i64 = check
        .query_row("SELECT COUNT(*) FROM audit_events", [], |r| r.get(0))
        .map_err(sql("counting the backup's events"))?;
    let checkpoint = check
        .query_row(
            "SELECT tree_size, note FROM audit_checkpoints ORDER BY tree_size DESC LIMIT 1",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?)),
        )
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })
        .map_err(sql("reading the backup's checkpoint"))?;
    drop(check);
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, out))
        .map_err(|e| Error::Internal(format!("writing {}: {e}", out.display())))?;
    Ok(BackupSummary {
        events: events as u64,
        checkpoint,
    })
}
