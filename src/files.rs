//! Files and directories medid creates, with their modes fixed at creation whatever the umask:
//! secrets and data (keys, the database, checkpoints, CRL copies, exports) 0600, directories
//! 0700, public certificates 0644. Replacement is atomic (temporary file, fsync, rename, fsync
//! of the directory), so a crash leaves the old file or the new one, never half of either.
//! Also the start-up check that names a secret or data file others can read.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::error::Error;

/// Who may read a file medid writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Keys, the database, checkpoints, CRL copies, exports: the owner only (0600).
    Private,
    /// Certificates and public keys: anyone (0644).
    Public,
}

impl Access {
    fn mode(self) -> u32 {
        match self {
            Access::Private => 0o600,
            Access::Public => 0o644,
        }
    }
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::Internal(format!("writing {}: {e}", path.display()))
}

/// Creates `dir` and any missing parents, each new one 0700. Existing directories keep their
/// mode: an operator who chose it knows why.
pub fn create_private_dir(dir: &Path) -> Result<(), Error> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::Internal(format!("creating {}: {e}", dir.display())))
}

/// Replaces `path` with `contents` atomically, the new file created with `access`'s mode.
pub fn write_atomic(path: &Path, contents: &[u8], access: Access) -> Result<(), Error> {
    let io = io_error(path);
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(access.mode())
        .open(&tmp)
        .map_err(&io)?;
    f.write_all(contents).map_err(&io)?;
    f.sync_all().map_err(&io)?;
    fs::rename(&tmp, path).map_err(&io)?;
    sync_parent(path);
    Ok(())
}

/// Opens `path` for writing from the start, 0600. An existing file is truncated and its mode
/// narrowed to 0600 (an export over an old, readable file must not stay readable).
pub fn create_private(path: &Path) -> Result<File, Error> {
    let io = io_error(path);
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(&io)?;
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(&io)?;
    Ok(f)
}

/// Opens `path` for appending, created 0600 when missing.
pub fn append_private(path: &Path) -> Result<File, Error> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error(path))
}

/// Creates `path` empty with mode 0600 when it does not exist yet, so that what opens it next
/// (SQLite, which also gives its WAL and shared-memory files the database file's mode) keeps
/// it private.
pub fn precreate_private(path: &Path) -> Result<(), Error> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(f) => {
            f.sync_all().map_err(io_error(path))?;
            sync_parent(path);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_error(path)(e)),
    }
}

/// The permission bits of `path` when its group or others may read or write it.
pub fn exposed_mode(path: &Path) -> Option<u32> {
    let mode = fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then_some(mode)
}

/// Logs a warning for each of `paths` that exists and that others may read.
pub fn warn_if_exposed<'a>(paths: impl IntoIterator<Item = &'a Path>) {
    for path in paths {
        if let Some(mode) = exposed_mode(path) {
            tracing::warn!(
                file = %path.display(),
                mode = format!("{mode:04o}"),
                "readable by others; it holds keys or patient references (chmod 600)"
            );
        }
    }
}

/// After a rename, the directory entry must reach the disk too.
pub fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

/// Runs `f`, which blocks on a disk or a device (an HSM), where the runtime allows it to
/// without stalling other tasks (`block_in_place` on a multi-threaded runtime); directly
/// elsewhere.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_export_over_a_readable_file_becomes_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("export.jsonl");
        fs::write(&path, "old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(exposed_mode(&path), Some(0o644));
        let mut f = create_private(&path).unwrap();
        f.write_all(b"new").unwrap();
        assert_eq!(exposed_mode(&path), None);
        assert_eq!(fs::read(&path).unwrap(), b"new");
    }

    #[test]
    fn atomic_replacement_leaves_no_temporary_file_and_sets_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latest.note");
        write_atomic(&path, b"one", Access::Private).unwrap();
        write_atomic(&path, b"two", Access::Private).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn new_directories_are_0700_and_existing_ones_keep_their_mode() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        create_private_dir(&nested).unwrap();
        for d in [dir.path().join("a"), nested.clone()] {
            assert_eq!(
                fs::metadata(&d).unwrap().permissions().mode() & 0o777,
                0o700
            );
        }
        fs::set_permissions(&nested, fs::Permissions::from_mode(0o750)).unwrap();
        create_private_dir(&nested).unwrap();
        assert_eq!(
            fs::metadata(&nested).unwrap().permissions().mode() & 0o777,
            0o750
        );
    }
}
