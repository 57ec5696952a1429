//! The statements of the group-committed write path, written once for two kinds of connection:
//!
//! - [`SqlxTx`]: a sqlx `Any` connection (PostgreSQL, and SQLite's rare writes), where every
//!   statement is a round trip to the driver;
//! - [`LiteTx`]: the SQLite writer thread's own connection (`store/writer.rs`), where a
//!   statement is a direct call into SQLite, prepared once and cached. A batch of a hundred
//!   enrollments then costs no thread hand-off per statement, which is what bounded throughput
//!   before (docs/PERFORMANCE.md).
//!
//! Queries use numbered `$N` parameters on both.

use std::future::{ready, Future};
use std::ops::DerefMut;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::Row as _;

use super::Conn;
use crate::error::Error;

/// A statement parameter. NULLs carry their type, which PostgreSQL needs.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg<'a> {
    Int(i64),
    OptInt(Option<i64>),
    Text(&'a str),
    OptText(Option<&'a str>),
    Blob(&'a [u8]),
}

impl From<i64> for Arg<'_> {
    fn from(v: i64) -> Self {
        Arg::Int(v)
    }
}

impl From<Option<i64>> for Arg<'_> {
    fn from(v: Option<i64>) -> Self {
        Arg::OptInt(v)
    }
}

impl<'a> From<&'a str> for Arg<'a> {
    fn from(v: &'a str) -> Self {
        Arg::Text(v)
    }
}

impl<'a> From<&'a String> for Arg<'a> {
    fn from(v: &'a String) -> Self {
        Arg::Text(v)
    }
}

impl<'a> From<Option<&'a str>> for Arg<'a> {
    fn from(v: Option<&'a str>) -> Self {
        Arg::OptText(v)
    }
}

impl<'a> From<&'a Option<String>> for Arg<'a> {
    fn from(v: &'a Option<String>) -> Self {
        Arg::OptText(v.as_deref())
    }
}

impl<'a> From<&'a [u8]> for Arg<'a> {
    fn from(v: &'a [u8]) -> Self {
        Arg::Blob(v)
    }
}

/// One column value of a fetched row.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

/// A fetched row, read by column position.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row(Vec<Cell>);

impl Row {
    fn cell(&self, i: usize) -> Result<&Cell, Error> {
        self.0
            .get(i)
            .ok_or_else(|| Error::Internal(format!("database row has no column {i}")))
    }

    pub(crate) fn int(&self, i: usize) -> Result<i64, Error> {
        match self.cell(i)? {
            Cell::Int(v) => Ok(*v),
            other => Err(Error::Internal(format!(
                "database column {i}: expected an integer, found {other:?}"
            ))),
        }
    }

    pub(crate) fn opt_text(&self, i: usize) -> Result<Option<&str>, Error> {
        match self.cell(i)? {
            Cell::Text(v) => Ok(Some(v)),
            Cell::Null => Ok(None),
            other => Err(Error::Internal(format!(
                "database column {i}: expected text, found {other:?}"
            ))),
        }
    }

    pub(crate) fn text(&self, i: usize) -> Result<&str, Error> {
        self.opt_text(i)?
            .ok_or_else(|| Error::Internal(format!("database column {i} is NULL")))
    }
}

/// A row lent to a [`Tx::scan`] callback: a collected one, or SQLite's current row.
pub(crate) enum RowRef<'r> {
    Owned(&'r Row),
    Lite(&'r rusqlite::Row<'r>),
}

impl<'r> RowRef<'r> {
    pub(crate) fn int(&self, i: usize) -> Result<i64, Error> {
        match self {
            RowRef::Owned(row) => row.int(i),
            RowRef::Lite(row) => match row.get_ref(i)? {
                rusqlite::types::ValueRef::Integer(v) => Ok(v),
                other => Err(Error::Internal(format!(
                    "database column {i}: expected an integer, found {:?}",
                    other.data_type()
                ))),
            },
        }
    }

    pub(crate) fn opt_text(&self, i: usize) -> Result<Option<&'r str>, Error> {
        match self {
            RowRef::Owned(row) => row.opt_text(i),
            RowRef::Lite(row) => match row.get_ref(i)? {
                rusqlite::types::ValueRef::Text(v) => std::str::from_utf8(v)
                    .map(Some)
                    .map_err(|e| Error::internal("database text", e)),
                rusqlite::types::ValueRef::Null => Ok(None),
                other => Err(Error::Internal(format!(
                    "database column {i}: expected text, found {:?}",
                    other.data_type()
                ))),
            },
        }
    }

    pub(crate) fn text(&self, i: usize) -> Result<&'r str, Error> {
        self.opt_text(i)?
            .ok_or_else(|| Error::Internal(format!("database column {i} is NULL")))
    }
}

/// A connection inside a write transaction.
pub(crate) trait Tx: Send {
    /// Runs a statement; returns the number of rows it changed.
    fn execute<'a>(
        &'a mut self,
        sql: &'a str,
        args: &'a [Arg<'a>],
    ) -> BoxFuture<'a, Result<u64, Error>>;

    /// Runs a query; returns its first row, if any.
    fn fetch_optional<'a>(
        &'a mut self,
        sql: &'a str,
        args: &'a [Arg<'a>],
    ) -> BoxFuture<'a, Result<Option<Row>, Error>>;

    /// Runs a query; returns all its rows.
    fn fetch_all<'a>(
        &'a mut self,
        sql: &'a str,
        args: &'a [Arg<'a>],
    ) -> BoxFuture<'a, Result<Vec<Row>, Error>>;

    /// Runs a query and lends each row to `each` instead of collecting the rows: for long
    /// scans (the audit log's leaf hashes, exports). SQLite's direct connections lend the row
    /// straight from the statement, with no allocation per row or column.
    fn scan<'a>(
        &'a mut self,
        sql: &'a str,
        args: &'a [Arg<'a>],
        each: &'a mut (dyn FnMut(RowRef<'_>) -> Result<(), Error> + Send),
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            for row in self.fetch_all(sql, args).await? {
                each(RowRef::Owned(&row))?;
            }
            Ok(())
        })
    }

    /// Rows per multi-row INSERT at most: many where each statement is a round trip, fewer
    /// where statements are direct calls and prepared once per size.
    fn rows_per_insert(&self) -> usize;

    /// Rows changed on this connection so far, where that is cheap to know (SQLite's
    /// `total_changes`): a job that fails without changing anything then needs no savepoint.
    fn changes(&self) -> Option<u64>;

    /// Whether a generated multi-row statement should number its parameters (`$N`) or use
    /// plain `?`: SQLite looks `$N` names up linearly, which is quadratic over a large INSERT.
    fn numbered_params(&self) -> bool;
}

/// Runs a query that returns exactly one row (an aggregate).
pub(crate) async fn fetch_one(tx: &mut dyn Tx, sql: &str, args: &[Arg<'_>]) -> Result<Row, Error> {
    tx.fetch_optional(sql, args)
        .await?
        .ok_or_else(|| Error::Internal("database returned no row for an aggregate".into()))
}

/// A sqlx connection (borrowed, or pooled) as a [`Tx`].
pub(crate) struct SqlxTx<C>(pub(crate) C);

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

fn bind_all<'q>(sql: &'q str, args: &'q [Arg<'q>]) -> AnyQuery<'q> {
    args.iter().fold(sqlx::query(sql), |q, arg| match *arg {
        Arg::Int(v) => q.bind(v),
        Arg::OptInt(v) => q.bind(v),
        Arg::Text(v) => q.bind(v),
        Arg::OptText(v) => q.bind(v),
        Arg::Blob(v) => q.bind(v),
    })
}

fn sqlx_row(row: &sqlx::any::AnyRow) -> Result<Row, Error> {
    let cells = (0..row.columns().len())
        .map(|i| {
            if let Ok(v) = row.try_get::<Option<i64>, _>(i) {
                return Ok(v.map_or(Cell::Null, Cell::Int));
            }
            if let Ok(v) = row.try_get::<Option<String>, _>(i) {
                return Ok(v.map_or(Cell::Null, Cell::Text));
            }
            Ok(row
                .try_get::<Option<Vec<u8>>, _>(i)?
                .map_or(Cell::Null, Cell::Blob))
        })
        .collect::<Result<_, Error>>()?;
    Ok(Row(cells))
}

impl<C: DerefMut<Target = Conn> + Send> Tx for SqlxTx<C> {
    fn execute<'a>(
        &'a mut self,
        sql: &'a str,
        args: &'a [Arg<'a>],
    ) -> BoxFuture<'a, Result<u64, Error>> {
        Box::pin(async move {
            Ok(bind_all(sql, args)
                .execute(&mut *self.0)
                .await?
                .rows_affected())
        })
    }

    fn fetch_optional<'a>(
        &'a mut self,
        sql: &'a str,
        args: &'a [Arg<'a>],
    ) -> BoxFuture<'a, Result<Option<Row>, Error>> {
        Box::pin(async move {
            match bind_all(sql, args).fetch_optional(&mut *self.0).await? {
                Some(row) => Ok(Some(sqlx_row(&row)?)),
                None => Ok(None),
            }
        })
    }

    fn fetch_all<'a>(
        &'a mut self,
        sql: &'a str,
        args: &'a [Arg<'a>],
    ) -> BoxFuture<'a, Result<Vec<Row>, Error>> {
        Box::pin(async move {
            bind_all(sql, args)
                .fetch_all(&mut *self.0)
                .await?
                .iter()
                .map(sqlx_row)
                .collect()
        })
    }

    fn rows_per_insert(&self) -> usize {
        // 10 parameters per audit row: well under SQLite's limit of 32,766.
        256
    }

    fn numbered_params(&self) -> bool {
        (*self.0).backend_name() != "SQLite"
    }

    fn changes(&self) -> Option<u64> {
        None
    }
}

/// The SQLite writer thread's connection, in WAL mode with `synchronous = FULL` like every
/// other: a commit is on disk before it is acknowledged.
pub(crate) struct LiteTx {
    conn: rusqlite::Connection,
}

/// Prepared statements kept per connection: the write path has a few dozen.
const STATEMENT_CACHE: usize = 64;

impl LiteTx {
    pub(crate) fn open(path: &Path) -> Result<Self, Error> {
        let conn = rusqlite::Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
        )?;
        Ok(Self { conn })
    }

    /// Stops this connection from checkpointing the WAL when it commits: the writer leaves
    /// that to [`spawn_checkpointer`], off its own thread. When this connection starts the log
    /// again, it cuts the file back to [`WAL_KEEP_BYTES`].
    pub(crate) fn without_autocheckpoint(self) -> Result<Self, Error> {
        self.conn.execute_batch(&format!(
            "PRAGMA wal_autocheckpoint = 0; PRAGMA journal_size_limit = {WAL_KEEP_BYTES};"
        ))?;
        Ok(self)
    }

    /// A read-only connection for point lookups on the runtime's threads (WAL: readers never
    /// wait for the writer).
    pub(crate) fn open_read(path: &Path) -> Result<Self, Error> {
        let conn = rusqlite::Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(Self { conn })
    }

    /// Runs statements without parameters (BEGIN, COMMIT, pragmas).
    pub(crate) fn batch(&mut self, sql: &str) -> Result<(), Error> {
        self.batch_ref(sql)
    }

    fn batch_ref(&self, sql: &str) -> Result<(), Error> {
        Ok(self.conn.execute_batch(sql)?)
    }

    /// One `PRAGMA wal_checkpoint(PASSIVE)`; returns the frames in the log when it ran and
    /// how many of them are now in the database file.
    fn checkpoint(&self) -> Result<(i64, i64), Error> {
        Ok(self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                Ok((row.get(1)?, row.get(2)?))
            })?)
    }

    fn bound(&self, sql: &str, args: &[Arg<'_>]) -> Result<rusqlite::CachedStatement<'_>, Error> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        for i in 1..=stmt.parameter_count() {
            // `$N` binds argument N wherever it appears; a plain `?` takes the next position.
            let n = match stmt.parameter_name(i) {
                Some(name) => name
                    .strip_prefix('$')
                    .and_then(|n| n.parse::<usize>().ok())
                    .ok_or_else(|| {
                        Error::Internal(format!("unsupported SQL parameter {name:?}"))
                    })?,
                None => i,
            };
            let arg = args
                .get(n - 1)
                .ok_or_else(|| Error::Internal(format!("SQL parameter {n} has no argument")))?;
            match *arg {
                Arg::Int(v) => stmt.raw_bind_parameter(i, v)?,
                Arg::OptInt(v) => stmt.raw_bind_parameter(i, v)?,
                Arg::Text(v) => stmt.raw_bind_parameter(i, v)?,
                Arg::OptText(v) => stmt.raw_bind_parameter(i, v)?,
                Arg::Blob(v) => stmt.raw_bind_parameter(i, v)?,
            }
        }
        Ok(stmt)
    }

    fn run(&self, sql: &str, args: &[Arg<'_>]) -> Result<u64, Error> {
        Ok(self.bound(sql, args)?.raw_execute()? as u64)
    }

    fn first_row(&self, sql: &str, args: &[Arg<'_>]) -> Result<Option<Row>, Error> {
        Ok(self.rows(sql, args, 1)?.pop())
    }

    fn scan_rows(
        &self,
        sql: &str,
        args: &[Arg<'_>],
        each: &mut (dyn FnMut(RowRef<'_>) -> Result<(), Error> + Send),
    ) -> Result<(), Error> {
        let mut stmt = self.bound(sql, args)?;
        let mut rows = stmt.raw_query();
        while let Some(row) = rows.next()? {
            each(RowRef::Lite(row))?;
        }
        Ok(())
    }

    /// At most `limit` rows of a query.
    fn rows(&self, sql: &str, args: &[Arg<'_>], limit: usize) -> Result<Vec<Row>, Error> {
        use rusqlite::types::ValueRef;
        let mut stmt = self.bound(sql, args)?;
        let columns = stmt.column_count();
        let mut rows = stmt.raw_query();
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(row) = rows.next()? else { break };
            let cells = (0..columns)
                .map(|i| {
                    Ok(match row.get_ref(i)? {
                        ValueRef::Null => Cell::Null,
                        ValueRef::Integer(v) => Cell::Int(v),
                        ValueRef::Text(v) => Cell::Text(
                            String::from_utf8(v.to_vec())
                                .map_err(|e| Error::internal("database text", e))?,
                        ),
                        ValueRef::Blob(v) => Cell::Blob(v.to_vec()),
                        ValueRef::Real(v) => {
                            return Err(Error::Internal(format!(
                                "unexpected floating-point value {v} in column {i}"
                            )))
                        }
                    })
                })
                .collect::<Result<_, Error>>()?;
            out.push(Row(cells));
        }
        Ok(out)
    }
}

impl Tx for LiteTx {
    fn execute<'a>(
        &'a mut self,
        sql: &'a str,
        args: &'a [Arg<'a>],
    ) -> BoxFuture<'a, Result<u64, Error>> {
        Box::pin(ready(self.run(sql, args)))
    }

    fn fetch_optional<'a>(
        &'a mut self,
        sql: &'a str,
        args: &'a [Arg<'a>],
    ) -> BoxFuture<'a, Result<Option<Row>, Error>> {
        Box::pin(ready(self.first_row(sql, args)))
    }

    fn fetch_all<'a>(
        &'a mut self,
        sql: &'a str,
        args: &'a [Arg<'a>],
    ) -> BoxFuture<'a, Result<Vec<Row>, Error>> {
        Box::pin(ready(self.rows(sql, args, usize::MAX)))
    }

    fn scan<'a>(
        &'a mut self,
        sql: &'a str,
        args: &'a [Arg<'a>],
        each: &'a mut (dyn FnMut(RowRef<'_>) -> Result<(), Error> + Send),
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(ready(self.scan_rows(sql, args, each)))
    }

    fn rows_per_insert(&self) -> usize {
        64
    }

    fn numbered_params(&self) -> bool {
        false
    }

    fn changes(&self) -> Option<u64> {
        Some(self.conn.total_changes())
    }
}

/// Wakes the writer thread that is waiting in [`block_on`].
struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Drives a future to completion on the current (non-runtime) thread. The writer's jobs only
/// await [`LiteTx`] statements, which are ready at once, so this normally polls once.
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(out) => return out,
            Poll::Pending => std::thread::park(),
        }
    }
}

/// Idle direct read connections kept at most.
const IDLE_READERS: usize = 8;

/// SQLite read connections for the hot lookups (the caller of every RPC, a device), used
/// directly on the runtime's threads: an indexed lookup takes microseconds, less than handing
/// it to another thread and back.
#[derive(Debug)]
pub(crate) struct LiteReaders {
    path: PathBuf,
    idle: Mutex<Vec<LiteTx>>,
    closed: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for LiteTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiteTx")
    }
}

impl LiteReaders {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self {
            path,
            idle: Mutex::new(Vec::new()),
            closed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Closes the idle connections; a reader in use closes its own when it is done.
    pub(crate) fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        self.idle().clear();
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<LiteTx>> {
        // A poisoned list of idle connections is still a list of idle connections.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(&self) -> Result<LiteTx, Error> {
        let idle = self.idle().pop();
        match idle {
            Some(conn) => Ok(conn),
            None => LiteTx::open_read(&self.path),
        }
    }

    fn give(&self, conn: LiteTx) {
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let mut idle = self.idle();
        if idle.len() < IDLE_READERS {
            idle.push(conn);
        }
    }
}

/// A connection to read with: a direct SQLite reader, or a pooled sqlx connection.
pub(crate) enum Reader<'s> {
    Lite(&'s LiteReaders, Option<LiteTx>),
    Pool(SqlxTx<sqlx::pool::PoolConnection<sqlx::Any>>),
}

impl<'s> Reader<'s> {
    pub(crate) fn lite(readers: &'s LiteReaders) -> Result<Self, Error> {
        Ok(Reader::Lite(readers, Some(readers.take()?)))
    }

    pub(crate) fn tx(&mut self) -> &mut dyn Tx {
        match self {
            Reader::Lite(_, conn) => conn
                .as_mut()
                .expect("a reader holds its connection until it is dropped"),
            Reader::Pool(conn) => conn,
        }
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        if let Reader::Lite(readers, conn) = self {
            if let Some(conn) = conn.take() {
                readers.give(conn);
            }
        }
    }
}

/// How often the checkpointer copies the WAL back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// WAL frames (pages) past which the checkpointer holds the writer back for one short pass, so
/// that the log can start again from its beginning: 16,384 frames, 64 MiB with 4 KiB pages.
pub(crate) const WAL_RESTART_FRAMES: i64 = 16_384;

/// The size the writer cuts the WAL file back to when the log starts again
/// (`journal_size_limit`), so a file that grew during a long export does not stay large.
pub(crate) const WAL_KEEP_BYTES: i64 = 64 << 20;

/// Copies committed WAL frames into the database file (`PRAGMA wal_checkpoint(PASSIVE)`,
/// which never waits for readers or the writer) on a thread of its own, so the group-commit
/// writer does not pay for it between batches. Stops when `stop`'s sender is dropped (the
/// writer exits).
///
/// Under sustained writes a PASSIVE checkpoint never finds the log fully copied: the writer
/// has appended more by the time it ends. SQLite starts the log again from its beginning only
/// when a write finds every frame copied, so the WAL would grow for as long as the load
/// lasts. Once it holds [`WAL_RESTART_FRAMES`], the checkpointer takes the store's write
/// `gate` (between two batches) and checkpoints again: only the frames appended since its
/// previous pass are left to copy, and the writer's next batch restarts the log. A reader
/// still using old frames (a long export) keeps them, and the log, until it ends.
pub(crate) fn spawn_checkpointer(
    path: PathBuf,
    gate: Arc<tokio::sync::Mutex<()>>,
    stop: std::sync::mpsc::Receiver<()>,
) -> Result<std::thread::JoinHandle<()>, Error> {
    let conn = LiteTx::open(&path)?;
    std::thread::Builder::new()
        .name("medid-checkpoint".into())
        .spawn(move || loop {
            match stop.recv_timeout(CHECKPOINT_EVERY) {
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    let passed = checkpoint_pass(&conn, &gate, WAL_RESTART_FRAMES);
                    if let Err(e) = passed {
                        tracing::warn!(error = %e, "WAL checkpoint failed; will retry");
                    }
                }
                _ => return,
            }
        })
        .map_err(|e| Error::internal("starting the checkpoint thread", e))
}

/// Frames appended during one checkpoint pass that are few enough to copy with the writer held.
const CATCH_UP_FRAMES: i64 = 1_024;

/// One round of the checkpointer: a PASSIVE pass and, once the log holds `restart_frames`,
/// passes that catch up with what the writer appended meanwhile (each shorter than the one
/// before), then one with the writer held, after which the writer's next batch starts the
/// log again.
fn checkpoint_pass(
    conn: &LiteTx,
    gate: &tokio::sync::Mutex<()>,
    restart_frames: i64,
) -> Result<(), Error> {
    let (mut frames, mut copied) = conn.checkpoint()?;
    if frames < restart_frames {
        return Ok(());
    }
    for _ in 0..4 {
        let (now, now_copied) = conn.checkpoint()?;
        let appended = now - copied;
        (frames, copied) = (now, now_copied);
        if appended <= CATCH_UP_FRAMES {
            break;
        }
    }
    let asked = std::time::Instant::now();
    let _held = gate.blocking_lock();
    let waited = asked.elapsed();
    let (left, _) = conn.checkpoint()?;
    tracing::debug!(
        frames,
        appended = left - frames,
        waited_us = waited.as_micros() as u64,
        held_us = (asked.elapsed() - waited).as_micros() as u64,
        "WAL checkpointed with the writer held, so that the log starts again"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Under writes that never pause, PASSIVE passes alone never let SQLite start the log
    /// again. One pass with the writer held (between two of its commits, as the group-commit
    /// writer holds the gate for each batch) does: the writer's next commit starts it over.
    #[test]
    fn a_held_pass_lets_the_log_start_again_under_steady_writes() {
        const RESTART: i64 = 256;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("wal.sqlite");
        let mut writer = LiteTx::open(&path)
            .and_then(LiteTx::without_autocheckpoint)
            .expect("writer connection");
        writer
            .batch("CREATE TABLE t (x BLOB)")
            .expect("create table");
        let checkpointer = LiteTx::open(&path).expect("checkpoint connection");
        let gate = Arc::new(tokio::sync::Mutex::new(()));
        let stop = Arc::new(AtomicBool::new(false));
        let writing = std::thread::spawn({
            let (gate, stop) = (gate.clone(), stop.clone());
            move || {
                let mut commits = 0;
                while !stop.load(Ordering::Acquire) {
                    let _held = gate.blocking_lock();
                    writer
                        .batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (randomblob(3000)); COMMIT;")
                        .expect("commit");
                    commits += 1;
                }
                commits
            }
        });
        // Plain passes while the log grows, as the checkpointer makes every 200 ms.
        let mut frames = 0;
        while frames < 2 * RESTART {
            frames = checkpointer.checkpoint().expect("passive pass").0;
        }
        checkpoint_pass(&checkpointer, &gate, RESTART).expect("held pass");
        stop.store(true, Ordering::Release);
        let commits = writing.join().expect("the writer does not panic");
        let (after, _) = checkpointer.checkpoint().expect("passive pass");
        assert!(
            after < RESTART,
            "the log had {frames} frames and still has {after}: it did not start again"
        );
        let rows = checkpointer
            .first_row("SELECT COUNT(*) FROM t", &[])
            .expect("count")
            .expect("one row");
        assert_eq!(rows.int(0).expect("a count"), commits, "every commit kept");
    }
}
