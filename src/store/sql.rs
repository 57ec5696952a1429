//! The store's one way of talking to a database: statements with typed parameters
//! ([`Bind`]), rows decoded into typed values ([`Column`], [`FromRow`]), run on a [`Tx`], which
//! is one of two connections:
//!
//! - [`Tx::Lite`]: a SQLite connection through rusqlite ([`LiteConn`]): the group-commit
//!   writer thread's (`store/writer.rs`), the rare writes', and the readers'. A statement is a
//!   direct call into SQLite, prepared once and cached, so a batch of a hundred enrollments
//!   costs no thread hand-off per statement (docs/PERFORMANCE.md). Its futures are ready when
//!   first polled.
//! - [`Tx::Any`]: a PostgreSQL connection through sqlx's `Any` driver, where every statement
//!   is a round trip to the server.
//!
//! Queries use numbered `$N` parameters on both. Every store module writes its SQL once,
//! against this type; none touches sqlx or rusqlite itself.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use futures_util::TryStreamExt;
use sqlx::{Row as _, ValueRef as _};
use time::OffsetDateTime;

use super::Conn;
use crate::error::Error;

/// The type of a NULL parameter, which PostgreSQL needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Int,
    Text,
    Blob,
}

/// A statement parameter, as a [`Bind`] value gives it.
#[derive(Debug, Clone)]
pub(crate) enum Arg<'a> {
    Int(i64),
    Text(Cow<'a, str>),
    Blob(&'a [u8]),
    Null(Kind),
}

/// A value that can be a statement parameter. Domain types bind as the column text or code
/// the schema stores, so no caller spells a status or a profile as a literal.
pub(crate) trait Bind {
    fn arg(&self) -> Arg<'_>;
}

/// The parameter type a [`Bind`] type's NULL has (for `Option`); apart from [`Bind`] so
/// that `dyn Bind` exists.
pub(crate) trait Typed {
    const KIND: Kind;
}

/// The parameters of one statement: `&[&serial, &profile, &now]`.
pub(crate) type Args<'a> = [&'a (dyn Bind + Sync)];

impl<T: Typed + ?Sized> Typed for &T {
    const KIND: Kind = T::KIND;
}

impl<T: Bind + ?Sized> Bind for &T {
    fn arg(&self) -> Arg<'_> {
        (**self).arg()
    }
}

impl<T: Bind + Typed> Bind for Option<T> {
    fn arg(&self) -> Arg<'_> {
        match self {
            Some(v) => v.arg(),
            None => Arg::Null(T::KIND),
        }
    }
}

impl Typed for i64 {
    const KIND: Kind = Kind::Int;
}

impl Bind for i64 {
    fn arg(&self) -> Arg<'_> {
        Arg::Int(*self)
    }
}

impl Typed for str {
    const KIND: Kind = Kind::Text;
}

impl Bind for str {
    fn arg(&self) -> Arg<'_> {
        Arg::Text(Cow::Borrowed(self))
    }
}

impl Typed for String {
    const KIND: Kind = Kind::Text;
}

impl Bind for String {
    fn arg(&self) -> Arg<'_> {
        Arg::Text(Cow::Borrowed(self))
    }
}

impl Typed for [u8] {
    const KIND: Kind = Kind::Blob;
}

impl Bind for [u8] {
    fn arg(&self) -> Arg<'_> {
        Arg::Blob(self)
    }
}

impl Typed for Vec<u8> {
    const KIND: Kind = Kind::Blob;
}

impl Bind for Vec<u8> {
    fn arg(&self) -> Arg<'_> {
        Arg::Blob(self)
    }
}

/// Times are stored as Unix seconds.
impl Typed for OffsetDateTime {
    const KIND: Kind = Kind::Int;
}

impl Bind for OffsetDateTime {
    fn arg(&self) -> Arg<'_> {
        Arg::Int(self.unix_timestamp())
    }
}

/// A domain type stored as its `as_str()` text, read back with its `parse`.
macro_rules! text_column {
    ($ty:ty, $what:literal, $parse:expr) => {
        impl Typed for $ty {
            const KIND: Kind = Kind::Text;
        }

        impl Bind for $ty {
            fn arg(&self) -> Arg<'_> {
                Arg::Text(Cow::Borrowed(self.as_str()))
            }
        }

        impl<'r> Column<'r> for $ty {
            fn from_value(v: Value<'r>) -> Result<Self, Error> {
                let text = <&str>::from_value(v)?;
                let parse: fn(&str) -> Option<$ty> = $parse;
                parse(text).ok_or_else(|| {
                    Error::Integrity(format!("the store holds an unknown {} {text:?}", $what))
                })
            }
        }
    };
}

text_column!(
    crate::domain::Profile,
    "certificate profile",
    crate::domain::Profile::parse
);
text_column!(crate::domain::Role, "role", crate::domain::Role::parse);
text_column!(
    crate::domain::CertState,
    "certificate status",
    crate::domain::CertState::parse
);
text_column!(
    crate::domain::SubjectState,
    "subject state",
    crate::domain::SubjectState::parse
);
text_column!(
    crate::domain::PkiPart,
    "PKI part",
    crate::domain::PkiPart::parse
);
text_column!(
    crate::audit::Outcome,
    "audit outcome",
    crate::audit::Outcome::parse
);
text_column!(crate::store::registry::DeviceState, "device state", |s| {
    crate::store::registry::DeviceState::parse(s)
});
text_column!(crate::domain::ManufacturerId, "manufacturer id", |s| {
    crate::domain::ManufacturerId::parse(s).ok()
});

impl Typed for crate::domain::DeviceSerial {
    const KIND: Kind = Kind::Text;
}

impl Bind for crate::domain::DeviceSerial {
    fn arg(&self) -> Arg<'_> {
        Arg::Text(Cow::Borrowed(self.as_str()))
    }
}

impl Typed for crate::audit::Action {
    const KIND: Kind = Kind::Text;
}

impl Bind for crate::audit::Action {
    fn arg(&self) -> Arg<'_> {
        Arg::Text(Cow::Borrowed(self.name()))
    }
}

impl<'r> Column<'r> for crate::audit::Action {
    fn from_value(v: Value<'r>) -> Result<Self, Error> {
        let text = <&str>::from_value(v)?;
        crate::audit::Action::parse(text).ok_or_else(|| {
            Error::Integrity(format!("the store holds an unknown audit action {text:?}"))
        })
    }
}

impl Typed for crate::issuance::IssuerId {
    const KIND: Kind = Kind::Text;
}

impl Bind for crate::issuance::IssuerId {
    fn arg(&self) -> Arg<'_> {
        Arg::Text(Cow::Owned(self.label()))
    }
}

impl<'r> Column<'r> for crate::issuance::IssuerId {
    fn from_value(v: Value<'r>) -> Result<Self, Error> {
        let text = <&str>::from_value(v)?;
        crate::issuance::IssuerId::parse(text)
            .ok_or_else(|| Error::Integrity(format!("the store holds an unknown issuer {text:?}")))
    }
}

/// A certificate serial is stored as lowercase hex.
impl Typed for crate::domain::CertSerial {
    const KIND: Kind = Kind::Text;
}

impl Bind for crate::domain::CertSerial {
    fn arg(&self) -> Arg<'_> {
        Arg::Text(Cow::Owned(self.to_hex()))
    }
}

impl<'r> Column<'r> for crate::domain::CertSerial {
    fn from_value(v: Value<'r>) -> Result<Self, Error> {
        let text = <&str>::from_value(v)?;
        crate::domain::CertSerial::parse_hex(text).map_err(|_| {
            Error::Integrity(format!(
                "the store holds a serial that is not hex: {text:?}"
            ))
        })
    }
}

/// A revocation reason is stored as its RFC 5280 code (NULL when none was given).
impl Typed for crate::domain::RevocationReason {
    const KIND: Kind = Kind::Int;
}

impl Bind for crate::domain::RevocationReason {
    fn arg(&self) -> Arg<'_> {
        Arg::Int(self.code())
    }
}

/// A stored revocation reason: NULL or 0 for none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StoredReason(pub(crate) Option<crate::domain::RevocationReason>);

impl<'r> Column<'r> for StoredReason {
    fn from_value(v: Value<'r>) -> Result<Self, Error> {
        match Option::<i64>::from_value(v)? {
            None => Ok(StoredReason(None)),
            Some(code) => crate::domain::RevocationReason::from_code(code)
                .map(StoredReason)
                .map_err(|_| {
                    Error::Integrity(format!(
                        "the store holds an unknown revocation reason {code}"
                    ))
                }),
        }
    }
}

/// A column value as the database returned it, borrowed from the row.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Value<'r> {
    Null,
    Int(i64),
    Text(&'r str),
    Blob(&'r [u8]),
}

impl Value<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Value::Null => "NULL",
            Value::Int(_) => "an integer",
            Value::Text(_) => "text",
            Value::Blob(_) => "a blob",
        }
    }
}

fn mismatch(want: &str, got: Value<'_>) -> Error {
    Error::Internal(format!(
        "database column: expected {want}, found {}",
        got.kind()
    ))
}

/// A type one column decodes into.
pub(crate) trait Column<'r>: Sized {
    fn from_value(v: Value<'r>) -> Result<Self, Error>;
}

impl<'r, T: Column<'r>> Column<'r> for Option<T> {
    fn from_value(v: Value<'r>) -> Result<Self, Error> {
        match v {
            Value::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
}

impl<'r> Column<'r> for i64 {
    fn from_value(v: Value<'r>) -> Result<Self, Error> {
        match v {
            Value::Int(i) => Ok(i),
            v => Err(mismatch("an integer", v)),
        }
    }
}

/// Counts and sizes: a negative stored value is a corrupt row.
impl<'r> Column<'r> for u64 {
    fn from_value(v: Value<'r>) -> Result<Self, Error> {
        let i = i64::from_value(v)?;
        u64::try_from(i)
            .map_err(|_| Error::Integrity(format!("the store holds a negative count {i}")))
    }
}

/// A flag computed by a query (`CASE … THEN 1 ELSE 0`).
impl<'r> Column<'r> for bool {
    fn from_value(v: Value<'r>) -> Result<Self, Error> {
        Ok(i64::from_value(v)? != 0)
    }
}

impl<'r> Column<'r> for &'r str {
    fn from_value(v: Value<'r>) -> Result<Self, Error> {
        match v {
            Value::Text(t) => Ok(t),
            v => Err(mismatch("text", v)),
        }
    }
}

impl<'r> Column<'r> for String {
    fn from_value(v: Value<'r>) -> Result<Self, Error> {
        <&str>::from_value(v).map(str::to_owned)
    }
}

impl<'r> Column<'r> for Vec<u8> {
    fn from_value(v: Value<'r>) -> Result<Self, Error> {
        match v {
            Value::Blob(b) => Ok(b.to_vec()),
            v => Err(mismatch("a blob", v)),
        }
    }
}

impl<'r> Column<'r> for OffsetDateTime {
    fn from_value(v: Value<'r>) -> Result<Self, Error> {
        let s = i64::from_value(v)?;
        OffsetDateTime::from_unix_timestamp(s)
            .map_err(|e| Error::Integrity(format!("stored time {s} out of range: {e}")))
    }
}

/// A SHA-256 hash stored as lowercase hex.
impl<'r> Column<'r> for crate::audit::merkle::Hash {
    fn from_value(v: Value<'r>) -> Result<Self, Error> {
        let text = <&str>::from_value(v)?;
        crate::domain::unhex_array::<32>(text)
            .ok_or_else(|| Error::Integrity(format!("the store holds a bad hash {text:?}")))
    }
}

/// A column by position or by name.
pub(crate) trait ColumnIndex:
    sqlx::ColumnIndex<sqlx::any::AnyRow> + std::fmt::Debug + Copy
{
    /// The position of this column in a SQLite row whose statement's columns are `names`.
    fn position(self, names: &LiteColumns, row: &rusqlite::Row<'_>) -> Result<usize, Error>;
}

impl ColumnIndex for usize {
    fn position(self, _: &LiteColumns, _: &rusqlite::Row<'_>) -> Result<usize, Error> {
        Ok(self)
    }
}

impl ColumnIndex for &str {
    fn position(self, names: &LiteColumns, row: &rusqlite::Row<'_>) -> Result<usize, Error> {
        names
            .of(row)
            .iter()
            .position(|n| n == self)
            .ok_or_else(|| Error::Internal(format!("the query has no column {self:?}")))
    }
}

/// A SQLite statement's column names, read once per query and only if a column is asked for
/// by name (rusqlite's own lookup by name asks SQLite for every name on every call).
#[derive(Default)]
pub(crate) struct LiteColumns(std::cell::OnceCell<Vec<String>>);

impl LiteColumns {
    fn of(&self, row: &rusqlite::Row<'_>) -> &[String] {
        self.0.get_or_init(|| {
            let stmt: &rusqlite::Statement<'_> = row.as_ref();
            stmt.column_names().into_iter().map(str::to_owned).collect()
        })
    }
}

/// A fetched row, lent by the connection: SQLite's current row (with its statement's column
/// names), or a sqlx row.
pub(crate) enum Row<'r> {
    Lite(&'r rusqlite::Row<'r>, &'r LiteColumns),
    Any(&'r sqlx::any::AnyRow),
}

impl<'r> Row<'r> {
    fn value(&self, i: impl ColumnIndex) -> Result<Value<'r>, Error> {
        use rusqlite::types::ValueRef;
        match *self {
            Row::Lite(row, names) => Ok(match row.get_ref(i.position(names, row)?)? {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(v) => Value::Int(v),
                ValueRef::Text(v) => Value::Text(
                    std::str::from_utf8(v).map_err(|e| Error::internal("database text", e))?,
                ),
                ValueRef::Blob(v) => Value::Blob(v),
                ValueRef::Real(v) => {
                    return Err(Error::Internal(format!(
                        "unexpected floating-point value {v} in column {i:?}"
                    )))
                }
            }),
            Row::Any(row) => {
                let raw = row.try_get_raw(i)?;
                if raw.is_null() {
                    return Ok(Value::Null);
                }
                use sqlx::any::AnyTypeInfoKind as K;
                Ok(match raw.type_info().kind() {
                    K::Blob => Value::Blob(row.try_get::<&[u8], _>(i)?),
                    K::Text => Value::Text(row.try_get::<&str, _>(i)?),
                    K::Bool => Value::Int(i64::from(row.try_get::<bool, _>(i)?)),
                    K::SmallInt | K::Integer | K::BigInt => Value::Int(row.try_get::<i64, _>(i)?),
                    other => {
                        return Err(Error::Internal(format!(
                            "unexpected {other:?} value in column {i:?}"
                        )))
                    }
                })
            }
        }
    }

    /// Column `i` (a position or a name) as a `T`.
    pub(crate) fn get<T: Column<'r>>(&self, i: impl ColumnIndex) -> Result<T, Error> {
        T::from_value(self.value(i)?).map_err(|e| match e {
            Error::Internal(m) => Error::Internal(format!("{m} (column {i:?})")),
            other => other,
        })
    }
}

/// A type one whole row decodes into: a record, a tuple of columns, or one column.
pub(crate) trait FromRow: Sized {
    fn from_row(row: &Row<'_>) -> Result<Self, Error>;
}

impl<T: for<'r> Column<'r>> FromRow for T {
    fn from_row(row: &Row<'_>) -> Result<Self, Error> {
        row.get(0)
    }
}

macro_rules! tuple_row {
    ($($t:ident $i:tt),+) => {
        impl<$($t: for<'r> Column<'r>),+> FromRow for ($($t,)+) {
            fn from_row(row: &Row<'_>) -> Result<Self, Error> {
                Ok(($(row.get::<$t>($i)?,)+))
            }
        }
    };
}

tuple_row!(A 0, B 1);
tuple_row!(A 0, B 1, C 2);
tuple_row!(A 0, B 1, C 2, D 3);
tuple_row!(A 0, B 1, C 2, D 3, E 4);
tuple_row!(A 0, B 1, C 2, D 3, E 4, F 5);

/// A connection to run statements on, inside a write transaction or for reads.
pub(crate) enum Tx<'c> {
    Lite(&'c mut LiteConn),
    Any(&'c mut Conn),
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

fn bind_all<'q>(sql: &'q str, args: &'q [Arg<'q>]) -> AnyQuery<'q> {
    args.iter().fold(sqlx::query(sql), |q, arg| match arg {
        Arg::Int(v) => q.bind(*v),
        Arg::Text(v) => q.bind(v.as_ref()),
        Arg::Blob(v) => q.bind(*v),
        Arg::Null(Kind::Int) => q.bind(None::<i64>),
        Arg::Null(Kind::Text) => q.bind(None::<String>),
        Arg::Null(Kind::Blob) => q.bind(None::<Vec<u8>>),
    })
}

fn args<'a>(args: &'a Args<'_>) -> Vec<Arg<'a>> {
    args.iter().map(|a| a.arg()).collect()
}

impl Tx<'_> {
    /// Runs a statement; returns the number of rows it changed.
    pub(crate) async fn execute(&mut self, sql: &str, params: &Args<'_>) -> Result<u64, Error> {
        let params = args(params);
        match self {
            Tx::Lite(conn) => Ok(conn.bound(sql, &params)?.raw_execute()? as u64),
            Tx::Any(conn) => Ok(bind_all(sql, &params)
                .execute(&mut **conn)
                .await?
                .rows_affected()),
        }
    }

    /// Runs statements without parameters (a migration script, BEGIN, COMMIT).
    pub(crate) async fn batch(&mut self, sql: &str) -> Result<(), Error> {
        match self {
            Tx::Lite(conn) => conn.batch(sql),
            Tx::Any(conn) => {
                // An unprepared statement string: several statements may run at once.
                sqlx::Executor::execute(&mut **conn, sql).await?;
                Ok(())
            }
        }
    }

    /// Runs a query and lends each row to `each`, without collecting them: SQLite's direct
    /// connections lend the row straight from the statement, with no allocation per row.
    pub(crate) async fn scan(
        &mut self,
        sql: &str,
        params: &Args<'_>,
        each: &mut (dyn FnMut(&Row<'_>) -> Result<(), Error> + Send),
    ) -> Result<(), Error> {
        self.scan_up_to(sql, params, usize::MAX, each).await
    }

    async fn scan_up_to(
        &mut self,
        sql: &str,
        params: &Args<'_>,
        limit: usize,
        each: &mut (dyn FnMut(&Row<'_>) -> Result<(), Error> + Send),
    ) -> Result<(), Error> {
        let params = args(params);
        let mut seen = 0;
        match self {
            Tx::Lite(conn) => {
                let mut stmt = conn.bound(sql, &params)?;
                let mut rows = stmt.raw_query();
                let names = LiteColumns::default();
                while seen < limit {
                    let Some(row) = rows.next()? else { break };
                    each(&Row::Lite(row, &names))?;
                    seen += 1;
                }
            }
            Tx::Any(conn) => {
                let mut rows = bind_all(sql, &params).fetch(&mut **conn);
                while seen < limit {
                    let Some(row) = rows.try_next().await? else {
                        break;
                    };
                    each(&Row::Any(&row))?;
                    seen += 1;
                }
            }
        }
        Ok(())
    }

    /// Runs a query; returns its first row, if any.
    pub(crate) async fn optional<T: FromRow + Send>(
        &mut self,
        sql: &str,
        params: &Args<'_>,
    ) -> Result<Option<T>, Error> {
        let mut out = None;
        self.scan_up_to(sql, params, 1, &mut |row| {
            out = Some(T::from_row(row)?);
            Ok(())
        })
        .await?;
        Ok(out)
    }

    /// Runs a query that returns exactly one row (an aggregate).
    pub(crate) async fn one<T: FromRow + Send>(
        &mut self,
        sql: &str,
        params: &Args<'_>,
    ) -> Result<T, Error> {
        self.optional(sql, params)
            .await?
            .ok_or_else(|| Error::Internal("database returned no row for an aggregate".into()))
    }

    /// Runs a query; returns all its rows.
    pub(crate) async fn all<T: FromRow + Send>(
        &mut self,
        sql: &str,
        params: &Args<'_>,
    ) -> Result<Vec<T>, Error> {
        let mut out = Vec::new();
        self.scan(sql, params, &mut |row| {
            out.push(T::from_row(row)?);
            Ok(())
        })
        .await?;
        Ok(out)
    }

    /// Rows per multi-row INSERT at most: many where each statement is a round trip, fewer
    /// where statements are direct calls and prepared once per size.
    pub(crate) fn rows_per_insert(&self) -> usize {
        match self {
            Tx::Lite(_) => 64,
            // 10 parameters per audit row: well under SQLite's limit of 32,766.
            Tx::Any(_) => 256,
        }
    }

    /// Rows changed on this connection so far, where that is cheap to know (SQLite's
    /// `total_changes`): a job that fails without changing anything then needs no savepoint.
    pub(crate) fn changes(&self) -> Option<u64> {
        match self {
            Tx::Lite(conn) => Some(conn.conn.total_changes()),
            Tx::Any(_) => None,
        }
    }

    /// Whether a generated multi-row statement should number its parameters (`$N`) or use
    /// plain `?`: SQLite looks `$N` names up linearly, which is quadratic over a large INSERT.
    pub(crate) fn numbered_params(&self) -> bool {
        match self {
            Tx::Lite(_) => false,
            Tx::Any(_) => true,
        }
    }
}

/// A direct SQLite connection, in WAL mode with `synchronous = FULL` like every other: a
/// commit is on disk before it is acknowledged.
pub(crate) struct LiteConn {
    conn: rusqlite::Connection,
}

/// Prepared statements kept per connection: the write path has a few dozen.
const STATEMENT_CACHE: usize = 64;

impl LiteConn {
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

    /// This connection as a [`Tx`].
    pub(crate) fn tx(&mut self) -> Tx<'_> {
        Tx::Lite(self)
    }

    /// Runs statements without parameters (BEGIN, COMMIT, pragmas).
    pub(crate) fn batch(&self, sql: &str) -> Result<(), Error> {
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
            match arg {
                Arg::Int(v) => stmt.raw_bind_parameter(i, *v)?,
                Arg::Text(v) => stmt.raw_bind_parameter(i, v.as_ref())?,
                Arg::Blob(v) => stmt.raw_bind_parameter(i, *v)?,
                Arg::Null(_) => stmt.raw_bind_parameter(i, rusqlite::types::Null)?,
            }
        }
        Ok(stmt)
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
    idle: Mutex<Vec<LiteConn>>,
    closed: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for LiteConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiteConn")
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

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<LiteConn>> {
        // A poisoned list of idle connections is still a list of idle connections.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(&self) -> Result<LiteConn, Error> {
        let idle = self.idle().pop();
        match idle {
            Some(conn) => Ok(conn),
            None => LiteConn::open_read(&self.path),
        }
    }

    fn give(&self, conn: LiteConn) {
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
    Lite(&'s LiteReaders, Option<LiteConn>),
    Pool(sqlx::pool::PoolConnection<sqlx::Any>),
}

impl<'s> Reader<'s> {
    pub(crate) fn lite(readers: &'s LiteReaders) -> Result<Self, Error> {
        Ok(Reader::Lite(readers, Some(readers.take()?)))
    }

    pub(crate) fn tx(&mut self) -> Tx<'_> {
        match self {
            Reader::Lite(_, conn) => Tx::Lite(
                conn.as_mut()
                    .expect("a reader holds its connection until it is dropped"),
            ),
            Reader::Pool(conn) => Tx::Any(conn),
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
/// that the log can start again from its beginning: 8,192 frames, 32 MiB of 4 KiB pages (a
/// frame is a page and a 24-byte header, so about 34 MB of file). Half of [`WAL_KEEP_BYTES`],
/// so that what the writer appends between two checkpoint passes still fits under it.
pub(crate) const WAL_RESTART_FRAMES: i64 = 8_192;

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
    gate: super::WriteGate,
    stop: std::sync::mpsc::Receiver<()>,
) -> Result<std::thread::JoinHandle<()>, Error> {
    let conn = LiteConn::open(&path)?;
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
fn checkpoint_pass<T>(
    conn: &LiteConn,
    gate: &tokio::sync::Mutex<T>,
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
    use std::sync::Arc;

    /// Under writes that never pause, PASSIVE passes alone never let SQLite start the log
    /// again. One pass with the writer held (between two of its commits, as the group-commit
    /// writer holds the gate for each batch) does: the writer's next commit starts it over.
    #[test]
    fn a_held_pass_lets_the_log_start_again_under_steady_writes() {
        const RESTART: i64 = 256;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("wal.sqlite");
        let writer = LiteConn::open(&path)
            .and_then(LiteConn::without_autocheckpoint)
            .expect("writer connection");
        writer
            .batch("CREATE TABLE t (x BLOB)")
            .expect("create table");
        let checkpointer = LiteConn::open(&path).expect("checkpoint connection");
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
        let rows: i64 = checkpointer
            .conn
            .query_row("SELECT COUNT(*) FROM t", [], |row| row.get(0))
            .expect("count");
        assert_eq!(rows, commits, "every commit kept");
    }
}
