//! The only module that speaks SQL. Every query is written once, with numbered `$N`
//! parameters (both engines accept them), against the typed layer of [`sql`]; each engine is
//! reached by one driver:
//!
//! - **SQLite** (the embedded default), through rusqlite: WAL journal, `synchronous = FULL` so
//!   a committed transaction survives power loss, every write transaction opened with
//!   `BEGIN IMMEDIATE` behind one write gate, so writers queue instead of failing with
//!   "database is locked".
//! - **PostgreSQL** (replicas), through sqlx: every write transaction first takes one advisory
//!   lock, so writers on all replicas queue the same way; commits are durable by PostgreSQL's
//!   default `synchronous_commit = on`.
//!
//! The few dialect differences (JSON access, the write lock, the schema) are in this file.
//!
//! Split by consumer behind narrow traits (`traits.rs`): [`certificates`] (the issuance cycle
//! and peer lookup), [`lifecycle`] (revocation, CRLs, tokens), [`registry`] (manufacturers,
//! devices, principals), [`audit`] and [`ledger`] (the event log), [`recovery`], [`binding`].
//! Schema changes live in `migrations/sqlite/` and `migrations/postgres/` and are applied at
//! start.

pub mod anomaly;
pub mod archive;
pub mod audit;
pub mod backup;
pub mod binding;
pub mod certificates;
pub mod feed;
pub mod ledger;
pub mod lifecycle;
pub mod recovery;
pub mod registry;
pub(crate) mod sql;
pub mod stats;
mod traits;
mod tree;
mod writer;

pub use traits::{
    AnomalyStore, AuditLog, CertificateLedger, CertificateRecords, ConsoleStats, FeedCursors,
    MerkleLog, PkiBinding, RecoveryStore, Registry, Retention, RevocationStore, TokenStore,
};
/// The lowest level of the Merkle tree stored (subtrees of 16 leaves and more).
pub use tree::STORED_LEVEL as STORED_TREE_LEVEL;
pub use writer::WriterStats;

use std::path::Path;
use std::sync::{Arc, Once};
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;
use sqlx::{Any, Transaction};
use time::OffsetDateTime;
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::error::Error;

/// SQLite migrations, embedded in the binary, applied in order; each runs once.
const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
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
    (
        5,
        "pki_binding",
        include_str!("../../migrations/sqlite/0005_pki_binding.sql"),
    ),
    (
        6,
        "issuer_generations",
        include_str!("../../migrations/sqlite/0006_issuer_generations.sql"),
    ),
    (
        7,
        "certificate_census",
        include_str!("../../migrations/sqlite/0007_certificate_census.sql"),
    ),
    (
        8,
        "merkle_nodes",
        include_str!("../../migrations/sqlite/0008_merkle_nodes.sql"),
    ),
    (
        9,
        "ledger_filters",
        include_str!("../../migrations/sqlite/0009_ledger_filters.sql"),
    ),
    (
        10,
        "audit_archives",
        include_str!("../../migrations/sqlite/0010_audit_archives.sql"),
    ),
    (
        11,
        "merkle_edge",
        include_str!("../../migrations/sqlite/0011_merkle_edge.sql"),
    ),
    (
        12,
        "revocation_times",
        include_str!("../../migrations/sqlite/0012_revocation_times.sql"),
    ),
    (
        13,
        "feed_cursors",
        include_str!("../../migrations/sqlite/0013_feed_cursors.sql"),
    ),
    (
        14,
        "access_event_ids",
        include_str!("../../migrations/sqlite/0014_access_event_ids.sql"),
    ),
    (
        15,
        "access_anomalies",
        include_str!("../../migrations/sqlite/0015_access_anomalies.sql"),
    ),
];

/// PostgreSQL migrations: the same schema, written for PostgreSQL from the start.
const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "schema",
        include_str!("../../migrations/postgres/0001_schema.sql"),
    ),
    (
        2,
        "pki_binding",
        include_str!("../../migrations/postgres/0002_pki_binding.sql"),
    ),
    (
        3,
        "issuer_generations",
        include_str!("../../migrations/postgres/0003_issuer_generations.sql"),
    ),
    (
        4,
        "certificate_census",
        include_str!("../../migrations/postgres/0004_certificate_census.sql"),
    ),
    (
        5,
        "merkle_nodes",
        include_str!("../../migrations/postgres/0005_merkle_nodes.sql"),
    ),
    (
        6,
        "ledger_filters",
        include_str!("../../migrations/postgres/0006_ledger_filters.sql"),
    ),
    (
        7,
        "audit_archives",
        include_str!("../../migrations/postgres/0007_audit_archives.sql"),
    ),
    (
        8,
        "merkle_edge",
        include_str!("../../migrations/postgres/0008_merkle_edge.sql"),
    ),
    (
        9,
        "revocation_times",
        include_str!("../../migrations/postgres/0009_revocation_times.sql"),
    ),
    (
        10,
        "feed_cursors",
        include_str!("../../migrations/postgres/0010_feed_cursors.sql"),
    ),
    (
        11,
        "access_event_ids",
        include_str!("../../migrations/postgres/0011_access_event_ids.sql"),
    ),
    (
        12,
        "access_anomalies",
        include_str!("../../migrations/postgres/0012_access_anomalies.sql"),
    ),
];

/// Every write transaction on PostgreSQL first takes this transaction-scoped advisory lock, so
/// writers on all replicas run one at a time, as SQLite's single writer does: sequence numbers,
/// CRL numbers, uniqueness checks and token spending cannot race across replicas.
const POSTGRES_WRITE_LOCK: i64 = 0x6d65_6469_645f_7772; // "medid_wr"

/// How long a request waits for a database connection before it is refused as UNAVAILABLE
/// (the database is down or every connection is busy).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// The database engine behind a [`Store`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded default: one file, one node.
    Sqlite,
    /// Scale-out: several replicas on one database (docs/DEPLOYMENT.md).
    Postgres,
}

impl Backend {
    /// The backend a database URL names: `postgres://` / `postgresql://`, or `sqlite:` (or a
    /// plain path, which [`crate::config::Config`] turns into a `sqlite://` URL).
    pub fn of_url(url: &str) -> Result<Self, Error> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else {
            Err(Error::InvalidArgument(format!(
                "database_url must start with sqlite:// or postgres:// (got {:?})",
                redact_url(url)
            )))
        }
    }
}

/// A database URL with any password replaced, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Handle to the database: the group-commit writer, a connection for the rare writes, and
/// readers. Each engine is spoken to by one driver: SQLite by rusqlite, PostgreSQL by sqlx.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Backend,
    /// Group commit for the hot writes (`store/writer.rs`).
    writer_task: writer::Writer,
    /// The rare writes (revocations, CRLs, tokens, checkpoints, migrations).
    writes: Writes,
    /// Where reads run: SQLite's direct read-only connections (`store/sql.rs`), or
    /// PostgreSQL's read pool.
    readers: Readers,
}

#[derive(Debug, Clone)]
enum Writes {
    /// SQLite: the rare writes' connection, behind the write gate. Each group-commit batch
    /// (which has its own connection) and the checkpointer's held pass take the same gate, so
    /// they take turns in order instead of spinning on SQLite's lock.
    Lite(WriteGate),
    /// PostgreSQL: one connection; the advisory lock orders writers on every replica.
    Pool(AnyPool),
}

/// SQLite's write gate, with the rare writes' connection inside (`None` once the store is
/// closed).
pub(crate) type WriteGate = Arc<Mutex<Option<sql::LiteConn>>>;

#[derive(Debug, Clone)]
enum Readers {
    Lite(Arc<sql::LiteReaders>),
    Pool(AnyPool),
}

/// A write transaction holding the write lock: SQLite's `BEGIN IMMEDIATE` on the rare writes'
/// connection (its gate held), or a PostgreSQL transaction holding the advisory lock. Dropped
/// without [`WriteTx::commit`], it is rolled back.
pub(crate) enum WriteTx {
    Lite(LiteWrite),
    Any(Transaction<'static, Any>),
}

/// SQLite's open write transaction; rolled back when dropped uncommitted.
/// (The guard holds `Some` connection: [`Store::begin_write`] checks, and only
/// [`Store::close`], which takes the same lock, empties it.)
pub(crate) struct LiteWrite(Option<OwnedMutexGuard<Option<sql::LiteConn>>>);

const OPEN_WRITE: &str = "an open SQLite write holds its connection until it ends";

impl Drop for LiteWrite {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            // Nothing to undo if the transaction never began; the error would say only that.
            let _ = conn.as_ref().expect(OPEN_WRITE).batch("ROLLBACK");
        }
    }
}

impl WriteTx {
    /// This transaction's connection, to run statements on.
    pub(crate) fn on(&mut self) -> sql::Tx<'_> {
        match self {
            WriteTx::Lite(LiteWrite(conn)) => {
                sql::Tx::Lite(conn.as_mut().and_then(|c| c.as_mut()).expect(OPEN_WRITE))
            }
            WriteTx::Any(tx) => sql::Tx::Any(tx),
        }
    }

    /// Commits; returns once the transaction is durable.
    pub(crate) async fn commit(self) -> Result<(), Error> {
        match self {
            WriteTx::Lite(mut write) => {
                let guard = write.0.take().expect(OPEN_WRITE);
                let conn = guard.as_ref().expect(OPEN_WRITE);
                // The fsync of the commit blocks; let the runtime move other tasks off this
                // worker meanwhile.
                let committed = crate::files::blocking(|| conn.batch("COMMIT"));
                if committed.is_err() {
                    let _ = conn.batch("ROLLBACK");
                }
                committed
            }
            WriteTx::Any(tx) => Ok(tx.commit().await?),
        }
    }
}

/// A sqlx connection: PostgreSQL's, and SQLite's for rare writes and migrations.
pub(crate) type Conn = sqlx::AnyConnection;

impl Store {
    /// Opens (creating if missing) the SQLite database at `path` and applies migrations.
    pub async fn open_sqlite(path: &Path) -> Result<Self, Error> {
        Self::open_url(&format!("sqlite://{}?mode=rwc", path.display())).await
    }

    /// Opens the database a URL names (`sqlite://PATH` or `postgres://…`) and applies
    /// migrations. An unreachable database is UNAVAILABLE, with the reason.
    pub async fn open_url(url: &str) -> Result<Self, Error> {
        static DRIVERS: Once = Once::new();
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let backend = Backend::of_url(url)?;
        // PostgreSQL's readers; SQLite reads on direct connections instead.
        const POSTGRES_READERS: u32 = 8;
        let pool = |size: u32| {
            AnyPoolOptions::new()
                .max_connections(size)
                .acquire_timeout(ACQUIRE_TIMEOUT)
        };
        let unavailable = |e: sqlx::Error| {
            Error::Unavailable(format!("opening database {}: {e}", redact_url(url)))
        };
        let (writer_task, writes, readers) = match backend {
            Backend::Sqlite => {
                let path = Path::new(sqlite_path(url));
                let opening = |e: Error| {
                    Error::Unavailable(format!("opening database {}: {e}", path.display()))
                };
                let rare = sql::LiteConn::open(path)
                    .and_then(sql::LiteConn::without_autocheckpoint)
                    .map_err(opening)?;
                let gate: WriteGate = Arc::new(Mutex::new(Some(rare)));
                (
                    writer::Writer::spawn_sqlite(path, gate.clone()).map_err(opening)?,
                    Writes::Lite(gate),
                    Readers::Lite(Arc::new(sql::LiteReaders::new(path.to_owned()))),
                )
            }
            Backend::Postgres => {
                let writer = pool(1).connect(url).await.map_err(unavailable)?;
                (
                    writer::Writer::spawn_sqlx(writer.clone()),
                    Writes::Pool(writer),
                    Readers::Pool(
                        pool(POSTGRES_READERS)
                            .connect(url)
                            .await
                            .map_err(unavailable)?,
                    ),
                )
            }
        };
        let store = Self {
            backend,
            writer_task,
            writes,
            readers,
        };
        store.migrate().await?;
        MerkleLog::build_tree(&store).await?;
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    async fn migrate(&self) -> Result<(), Error> {
        let mut tx = self.begin_write().await?;
        let mut on = tx.on();
        on.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
            &[],
        )
        .await?;
        let migrations = match self.backend {
            Backend::Sqlite => SQLITE_MIGRATIONS,
            Backend::Postgres => POSTGRES_MIGRATIONS,
        };
        for (version, name, sql) in migrations {
            let applied: Option<i64> = on
                .optional(
                    "SELECT version FROM schema_migrations WHERE version = $1",
                    &[version],
                )
                .await?;
            if applied.is_some() {
                continue;
            }
            on.batch(sql).await?;
            on.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                &[version, name, &OffsetDateTime::now_utc()],
            )
            .await?;
            tracing::info!(version, name, "applied database migration");
        }
        tx.commit().await?;
        Ok(())
    }

    /// A write transaction holding the write lock from its first statement: SQLite's
    /// `BEGIN IMMEDIATE`, or PostgreSQL's advisory lock shared by all replicas.
    pub(crate) async fn begin_write(&self) -> Result<WriteTx, Error> {
        match &self.writes {
            Writes::Lite(gate) => {
                let conn = gate.clone().lock_owned().await;
                conn.as_ref()
                    .ok_or_else(|| Error::Unavailable("database closed; retry later".into()))?
                    .batch("BEGIN IMMEDIATE")?;
                Ok(WriteTx::Lite(LiteWrite(Some(conn))))
            }
            Writes::Pool(pool) => begin_write_on(pool).await,
        }
    }

    /// A connection for a hot read: a direct SQLite reader, or one from the read pool.
    pub(crate) async fn reader(&self) -> Result<sql::Reader<'_>, Error> {
        match &self.readers {
            Readers::Lite(readers) => sql::Reader::lite(readers),
            Readers::Pool(pool) => Ok(sql::Reader::Pool(pool.acquire().await?)),
        }
    }

    /// Readiness: the database answers a query.
    pub async fn ping(&self) -> Result<(), Error> {
        let mut reader = self.reader().await?;
        let _: i64 = reader.tx().one("SELECT 1", &[]).await?;
        Ok(())
    }

    /// The group-commit writer's batch figures.
    pub fn writer_stats(&self) -> &WriterStats {
        self.writer_task.stats()
    }

    /// Commits the queued writes and closes every connection: the group-commit writer and
    /// the checkpointer (their threads joined), the pools, the idle direct readers. Returns
    /// once no connection of this store is open but those of reads still in progress.
    pub async fn close(&self) {
        self.writer_task.close().await;
        match &self.writes {
            Writes::Lite(gate) => drop(gate.lock().await.take()),
            Writes::Pool(pool) => pool.close().await,
        }
        match &self.readers {
            Readers::Lite(readers) => readers.close(),
            Readers::Pool(pool) => pool.close().await,
        }
    }

    /// The text of JSON field `key` of the `detail` column, in this backend's dialect.
    pub(crate) fn detail_field(&self, key: &str) -> String {
        debug_assert!(key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        match self.backend {
            Backend::Sqlite => format!("json_extract(detail, '$.{key}')"),
            Backend::Postgres => format!("(detail::jsonb ->> '{key}')"),
        }
    }
}

/// A PostgreSQL write transaction holding the advisory lock shared by all replicas (see
/// [`Store::begin_write`]); also used by the group-commit writer.
pub(crate) async fn begin_write_on(pool: &AnyPool) -> Result<WriteTx, Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT 1 AS locked FROM (SELECT pg_advisory_xact_lock($1)) AS l")
        .bind(POSTGRES_WRITE_LOCK)
        .execute(&mut *tx)
        .await?;
    Ok(WriteTx::Any(tx))
}

/// The file a `sqlite://PATH?options` (or `sqlite:PATH`) URL names.
fn sqlite_path(url: &str) -> &str {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    rest.split('?').next().unwrap_or(rest)
}
