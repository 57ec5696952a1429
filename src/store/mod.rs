//! The only module that speaks SQL. SQLite through sqlx: WAL journal, `synchronous = FULL` so a
//! committed transaction survives power loss, and every write transaction opened with
//! `BEGIN IMMEDIATE` on a single writer connection, so writers queue instead of failing with
//! "database is locked".
//!
//! Split by consumer: [`certificates`] (the issuance cycle and peer lookup), [`registry`]
//! (manufacturers, devices, principals) and [`audit`] (the event log). Schema changes live in
//! `migrations/sqlite/` and are applied at start.

pub mod audit;
pub mod certificates;
pub mod ledger;
pub mod lifecycle;
pub mod registry;
mod writer;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};
use time::OffsetDateTime;

use crate::error::Error;

/// Migrations, embedded in the binary, applied in order; each runs once.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "core",
        include_str!("../../migrations/sqlite/0001_core.sql"),
    ),
    (
        2,
        "lifecycle",
        include_str!("../../migrations/sqlite/0002_lifecycle.sql"),
    ),
    (
        3,
        "ledger",
        include_str!("../../migrations/sqlite/0003_ledger.sql"),
    ),
    (
        4,
        "issue_order_index",
        include_str!("../../migrations/sqlite/0004_issue_order_index.sql"),
    ),
];

/// Handle to the database: one writer connection, a few readers.
#[derive(Debug, Clone)]
pub struct Store {
    writer: SqlitePool,
    reader: SqlitePool,
    /// Group commit for the hot writes (`store/writer.rs`).
    writer_task: writer::Writer,
}

pub(crate) type WriteTx = Transaction<'static, Sqlite>;
/// The connection a write job runs on, inside the batch's transaction.
pub(crate) type Conn = sqlx::SqliteConnection;

impl Store {
    /// Opens (creating if missing) the SQLite database at `path` and applies migrations.
    pub async fn open_sqlite(path: &Path) -> Result<Self, Error> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        Self::open_with(options).await
    }

    /// Opens a database given as a `sqlite:` URL.
    pub async fn open_url(url: &str) -> Result<Self, Error> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| Error::InvalidArgument(format!("database URL {url:?}: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        Self::open_with(options).await
    }

    async fn open_with(options: SqliteConnectOptions) -> Result<Self, Error> {
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone())
            .await
            .map_err(|e| Error::Unavailable(format!("opening database: {e}")))?;
        let store = Self {
            reader: SqlitePoolOptions::new()
                .max_connections(4)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(options.read_only(false))
                .await
                .map_err(|e| Error::Unavailable(format!("opening database: {e}")))?,
            writer_task: writer::Writer::spawn(writer.clone()),
            writer,
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), Error> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)",
        )
        .execute(&mut *tx)
        .await?;
        for (version, name, sql) in MIGRATIONS {
            let applied: Option<i64> =
                sqlx::query_scalar("SELECT version FROM schema_migrations WHERE version = ?")
                    .bind(version)
                    .fetch_optional(&mut *tx)
                    .await?;
            if applied.is_some() {
                continue;
            }
            sqlx::raw_sql(sql).execute(&mut *tx).await?;
            sqlx::query(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
            )
            .bind(version)
            .bind(name)
            .bind(OffsetDateTime::now_utc().unix_timestamp())
            .execute(&mut *tx)
            .await?;
            tracing::info!(version, name, "applied database migration");
        }
        tx.commit().await?;
        Ok(())
    }

    /// A write transaction holding SQLite's write lock from its first statement.
    pub(crate) async fn begin_write(&self) -> Result<WriteTx, Error> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// Readiness: the database answers a query.
    pub async fn ping(&self) -> Result<(), Error> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }
}

pub(crate) fn to_unix(t: OffsetDateTime) -> i64 {
    t.unix_timestamp()
}

pub(crate) fn from_unix(s: i64) -> Result<OffsetDateTime, Error> {
    OffsetDateTime::from_unix_timestamp(s)
        .map_err(|e| Error::Internal(format!("stored time {s} out of range: {e}")))
}
