//! The only module that speaks SQL, through sqlx's `Any` driver so that one set of queries
//! (numbered `$N` parameters, which both engines accept) serves both backends:
//!
//! - **SQLite** (the embedded default): WAL journal, `synchronous = FULL` so a committed
//!   transaction survives power loss, every write transaction opened with `BEGIN IMMEDIATE` on a
//!   single writer connection, so writers queue instead of failing with "database is locked".
//! - **PostgreSQL** (replicas): every write transaction first takes one advisory lock, so
//!   writers on all replicas queue the same way; commits are durable by PostgreSQL's default
//!   `synchronous_commit = on`.
//!
//! The few dialect differences (JSON access, the write lock, the schema) are in this file.
//!
//! Split by consumer: [`certificates`] (the issuance cycle and peer lookup), [`registry`]
//! (manufacturers, devices, principals) and [`audit`] (the event log). Schema changes live in
//! `migrations/sqlite/` and `migrations/postgres/` and are applied at start.

pub mod audit;
pub mod backup;
pub mod binding;
pub mod certificates;
pub mod ledger;
pub mod lifecycle;
pub mod recovery;
pub mod registry;
pub(crate) mod sql;
mod traits;
mod writer;

pub use traits::{
    AuditLog, CertificateLedger, CertificateRecords, MerkleLog, PkiBinding, RecoveryStore,
    Registry, RevocationStore, TokenStore,
};
pub use writer::WriterStats;

use std::ops::{Deref, DerefMut};
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

/// Handle to the database: one writer connection, a few readers.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Backend,
    writer: AnyPool,
    /// Group commit for the hot writes (`store/writer.rs`).
    writer_task: writer::Writer,
    /// SQLite: taken by every write transaction on `writer` and by each group-commit batch
    /// (which has its own connection), so the two take turns in order instead of spinning on
    /// SQLite's lock. Unused on PostgreSQL, where the advisory lock orders writers.
    write_gate: Arc<Mutex<()>>,
    /// Where reads run: SQLite's direct read-only connections (`store/sql.rs`), or
    /// PostgreSQL's read pool.
    readers: Readers,
}

#[derive(Debug, Clone)]
enum Readers {
    Lite(Arc<sql::LiteReaders>),
    Pool(AnyPool),
}

/// A write transaction on the store's write connection; derefs to the connection.
pub(crate) struct WriteTx {
    tx: Transaction<'static, Any>,
    _turn: Option<OwnedMutexGuard<()>>,
}

impl WriteTx {
    /// This transaction's connection, to run statements on.
    pub(crate) fn on(&mut self) -> sql::Tx<'_> {
        sql::Tx::Any(&mut self.tx)
    }

    pub(crate) async fn commit(self) -> Result<(), Error> {
        Ok(self.tx.commit().await?)
    }
}

impl Deref for WriteTx {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        &self.tx
    }
}

impl DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut Conn {
        &mut self.tx
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
                .after_connect(move |conn, _meta| Box::pin(prepare_connection(conn, backend)))
        };
        let unavailable = |e: sqlx::Error| {
            Error::Unavailable(format!("opening database {}: {e}", redact_url(url)))
        };
        let writer = pool(1).connect(url).await.map_err(unavailable)?;
        let write_gate = Arc::new(Mutex::new(()));
        let (writer_task, readers) = match backend {
            Backend::Sqlite => {
                let path = Path::new(sqlite_path(url));
                (
                    writer::Writer::spawn_sqlite(path, write_gate.clone())
                        .map_err(|e| Error::Unavailable(format!("opening database {url}: {e}")))?,
                    Readers::Lite(Arc::new(sql::LiteReaders::new(path.to_owned()))),
                )
            }
            Backend::Postgres => (
                writer::Writer::spawn_sqlx(writer.clone(), backend),
                Readers::Pool(
                    pool(POSTGRES_READERS)
                        .connect(url)
                        .await
                        .map_err(unavailable)?,
                ),
            ),
        };
        let store = Self {
            backend,
            writer_task,
            writer,
            write_gate,
            readers,
        };
        store.migrate().await?;
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
        let turn = match self.backend {
            Backend::Sqlite => Some(self.write_gate.clone().lock_owned().await),
            Backend::Postgres => None,
        };
        let mut tx = begin_write_on(&self.writer, self.backend).await?;
        tx._turn = turn;
        Ok(tx)
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
        self.writer.close().await;
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

/// Settings every new connection gets. SQLite: WAL so readers never block the writer; FULL so a
/// commit is on disk before it is acknowledged; foreign keys on.
async fn prepare_connection(conn: &mut Conn, backend: Backend) -> Result<(), sqlx::Error> {
    if backend == Backend::Sqlite {
        for pragma in [
            "PRAGMA journal_mode = WAL",
            "PRAGMA synchronous = FULL",
            "PRAGMA foreign_keys = ON",
            "PRAGMA busy_timeout = 10000",
        ] {
            sqlx::query(pragma).execute(&mut *conn).await?;
        }
    }
    Ok(())
}

/// See [`Store::begin_write`]; also used by the group-commit writer.
pub(crate) async fn begin_write_on(pool: &AnyPool, backend: Backend) -> Result<WriteTx, Error> {
    let tx = match backend {
        Backend::Sqlite => pool.begin_with("BEGIN IMMEDIATE").await?,
        Backend::Postgres => {
            let mut tx = pool.begin().await?;
            sqlx::query("SELECT 1 AS locked FROM (SELECT pg_advisory_xact_lock($1)) AS l")
                .bind(POSTGRES_WRITE_LOCK)
                .execute(&mut *tx)
                .await?;
            tx
        }
    };
    Ok(WriteTx { tx, _turn: None })
}

/// The file a `sqlite://PATH?options` (or `sqlite:PATH`) URL names.
fn sqlite_path(url: &str) -> &str {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    rest.split('?').next().unwrap_or(rest)
}
