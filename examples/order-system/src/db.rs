//! One service's database: its tables, its outbox and its inbox. Embedded,
//! a SQLite file of its own; on real infrastructure, a PostgreSQL schema of
//! its own (named after the service, the pool's `search_path`).
//!
//! The services' SQL is the subset both databases speak, written once and
//! one way: a statement and its [`Param`]s, run through [`Tx`], which a
//! transaction's connection of either database is (what the saga handlers
//! are given), and so is a [`ServiceTx`] (a transaction a service begins
//! itself, [`ServiceDb::begin`]). A statement outside a transaction runs
//! on the [`ServiceDb`] itself, with the same methods ([`Statements`]).
//!
//! The database's kind is carried by types where events are written: an
//! event is appended through [`Emit`], which only a transaction that came
//! with its service's outbox offers (a [`ServiceTx`], or a consumer's
//! transaction as [`Emitting`] hands it to the service), so no
//! transaction can write to another database's outbox.
//!
//! Points in time that several processes compare (when a payment's claim
//! runs out, how long a saga took from one gateway's placing to another's
//! end) are told on the database's clock ([`ServiceDb::now_ms`]), which
//! every process sharing the database reads alike.

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use palisade_hints::clock::ServerClock;
use palisade_outbox::{
    Backlog, CommitWake, Event, OutboxConfig, OutboxStore, PgInbox, PgOutbox, SqliteInbox,
    SqliteOutbox,
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{
    Connection, FromRow, PgConnection, PgPool, Postgres, Sqlite, SqliteConnection, SqlitePool,
    Transaction,
};

/// A service's database.
#[derive(Debug, Clone)]
pub enum ServiceDb {
    /// The embedded default: a SQLite file.
    Sqlite {
        /// The pool.
        pool: SqlitePool,
        /// The events the service publishes.
        outbox: SqliteOutbox,
        /// The events it has applied.
        inbox: SqliteInbox,
    },
    /// A schema of a PostgreSQL database.
    Postgres {
        /// The pool (its `search_path` is the service's schema).
        pool: PgPool,
        /// The events the service publishes.
        outbox: PgOutbox,
        /// The events it has applied.
        inbox: PgInbox,
        /// The database's clock, as last read.
        clock: DbClock,
    },
}

/// How long a reading of the database's clock is run on by this process's
/// monotonic clock before the database is asked again.
const CLOCK_READ_EVERY: Duration = Duration::from_secs(10);

/// The database's clock as this process last read it (see
/// [`ServiceDb::now_ms`]).
#[derive(Debug, Clone, Default)]
pub struct DbClock(Arc<Mutex<Option<ServerClock>>>);

impl DbClock {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<ServerClock>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps the database's time `server_ms`, asked at `sent`: now on it.
    fn remember(&self, server_ms: i64, sent: Instant) -> i64 {
        let read = ServerClock::read(u64::try_from(server_ms).unwrap_or(0), sent, Instant::now());
        *self.lock() = Some(read);
        as_i64(read.at(Instant::now()))
    }
}

/// The database's time now, in Unix milliseconds (PostgreSQL).
const ASK_CLOCK: &str = "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint";

/// Now on the database's clock, or the clock to read it into.
enum Reading<'a> {
    Known(i64),
    Ask(&'a DbClock),
}

/// A pool of either database, borrowed.
#[derive(Debug, Clone, Copy)]
pub enum Pool<'a> {
    /// SQLite's.
    Sqlite(&'a SqlitePool),
    /// PostgreSQL's.
    Postgres(&'a PgPool),
}

/// Runs `$body` with `$connection` a connection taken from `$pool`,
/// whichever database it is.
macro_rules! on_connection {
    ($pool:expr, |$connection:ident| $body:expr) => {
        match $pool {
            Pool::Sqlite(pool) => {
                let $connection = &mut *pool.acquire().await?;
                $body
            }
            Pool::Postgres(pool) => {
                let $connection = &mut *pool.acquire().await?;
                $body
            }
        }
    };
}

/// Statements outside a consumer's transaction, written as [`Tx`]'s are:
/// what anything with a pool of either database runs its SQL through (a
/// [`ServiceDb`], the card processor's
/// [`ChargeStore`](crate::processor::ChargeStore)).
pub trait Statements: Sync {
    /// The pool the statements run on.
    fn pool(&self) -> Pool<'_>;

    /// Runs `sql` with `params` bound to `$1`, `$2`, … outside a
    /// transaction; the number of rows it changed.
    fn execute(
        &self,
        sql: &str,
        params: &[Param<'_>],
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send {
        async move {
            on_connection!(self.pool(), |connection| connection
                .execute(sql, params)
                .await)
        }
    }

    /// The rows `sql` returns, `params` bound, outside a transaction.
    fn fetch_all<T: Row>(
        &self,
        sql: &str,
        params: &[Param<'_>],
    ) -> impl Future<Output = Result<Vec<T>, sqlx::Error>> + Send {
        async move {
            on_connection!(self.pool(), |connection| connection
                .fetch_all(sql, params)
                .await)
        }
    }

    /// The first row `sql` returns, if any, `params` bound, outside a
    /// transaction.
    fn fetch_optional<T: Row>(
        &self,
        sql: &str,
        params: &[Param<'_>],
    ) -> impl Future<Output = Result<Option<T>, sqlx::Error>> + Send {
        async move {
            on_connection!(self.pool(), |connection| connection
                .fetch_optional(sql, params)
                .await)
        }
    }

    /// The first row `sql` returns, `params` bound, outside a transaction
    /// ([`sqlx::Error::RowNotFound`] when none).
    fn fetch_one<T: Row>(
        &self,
        sql: &str,
        params: &[Param<'_>],
    ) -> impl Future<Output = Result<T, sqlx::Error>> + Send {
        async move {
            self.fetch_optional(sql, params)
                .await?
                .ok_or(sqlx::Error::RowNotFound)
        }
    }

    /// Closes the pool: every statement after fails.
    fn close(&self) -> impl Future<Output = ()> + Send {
        async move {
            match self.pool() {
                Pool::Sqlite(pool) => pool.close().await,
                Pool::Postgres(pool) => pool.close().await,
            }
        }
    }
}

impl Statements for ServiceDb {
    fn pool(&self) -> Pool<'_> {
        match self {
            Self::Sqlite { pool, .. } => Pool::Sqlite(pool),
            Self::Postgres { pool, .. } => Pool::Postgres(pool),
        }
    }
}

fn as_i64(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// The inbox's table in each service's database.
pub(crate) const INBOX: &str = "inbox";

fn config_error(error: impl std::error::Error + Send + Sync + 'static) -> sqlx::Error {
    sqlx::Error::Configuration(error.into())
}

/// The outbox's pace: batches of 500, a poll every half second besides
/// the wake-ups on commit, and a 5 s lease (a relay killed mid-batch holds
/// its events that long; publishing 500 takes milliseconds).
fn outbox_config(table: &str) -> Result<OutboxConfig, sqlx::Error> {
    Ok(OutboxConfig::new(table)
        .map_err(config_error)?
        .batch_size(500)
        .poll_interval(Duration::from_millis(500))
        .lease(Duration::from_secs(5)))
}

impl ServiceDb {
    /// Opens (creating if needed) `dir/<service>.db` and its tables:
    /// `tables` are the service's own `CREATE TABLE IF NOT EXISTS`
    /// statements.
    ///
    /// # Errors
    ///
    /// The database's error.
    pub async fn open_sqlite(
        dir: &Path,
        service: &str,
        tables: &[&str],
    ) -> Result<Self, sqlx::Error> {
        let options = SqliteConnectOptions::new()
            .filename(dir.join(format!("{service}.db")))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL with NORMAL stays consistent after a crash; the last
            // commits may be lost on a power cut, which the demo accepts.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30));
        // Two connections: on two cores more of them only add thread
        // switches.
        // sqlx-sqlite runs each connection on a thread of its own: every
        // statement is a round trip between threads, so the pool saves the
        // ones it can. A file's connection does not go stale (no ping each
        // time it is taken), and the relays' wake-up is installed once per
        // connection rather than by every transaction that enqueues.
        let config = outbox_config("outbox")?;
        let wake = CommitWake::new(&config);
        let installer = wake.clone();
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .test_before_acquire(false)
            .after_connect(move |connection, _| {
                let installer = installer.clone();
                Box::pin(async move { installer.install(connection).await })
            })
            .connect_with(options)
            .await?;
        let outbox = SqliteOutbox::new(pool.clone(), config).woken_by(wake);
        outbox.migrate().await?;
        let inbox = SqliteInbox::new(pool.clone(), INBOX).map_err(config_error)?;
        inbox.migrate().await?;
        for table in tables {
            sqlx::query(table).execute(&pool).await?;
        }
        Ok(Self::Sqlite {
            pool,
            outbox,
            inbox,
        })
    }

    /// Opens the schema `service` (lowercase letters, digits and `_`) of
    /// the PostgreSQL database at `url`
    /// (creating it, its outbox, its inbox and `tables` if needed), with
    /// up to `connections` connections.
    ///
    /// Replicas starting at once create the schema one at a time (under
    /// an advisory lock).
    ///
    /// # Errors
    ///
    /// The database's error.
    pub async fn open_postgres(
        url: &str,
        service: &str,
        tables: &[&str],
        connections: u32,
    ) -> Result<Self, sqlx::Error> {
        if !is_identifier(service) {
            return Err(sqlx::Error::Configuration(
                format!("{service:?} is not a schema name (lowercase letters, digits and `_`)")
                    .into(),
            ));
        }
        let options: PgConnectOptions = url.parse()?;
        let mut setup = PgConnection::connect_with(&options).await?;
        sqlx::query("SELECT pg_advisory_lock(hashtext('palisade-order-system schemas'))")
            .execute(&mut setup)
            .await?;
        let opened = async {
            sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {service}"))
                .execute(&mut setup)
                .await?;
            let pool = PgPoolOptions::new()
                .max_connections(connections)
                .connect_with(options.clone().options([("search_path", service)]))
                .await?;
            let outbox = PgOutbox::new(pool.clone(), outbox_config(&format!("{service}.outbox"))?);
            outbox.migrate().await?;
            let inbox =
                PgInbox::new(pool.clone(), &format!("{service}.{INBOX}")).map_err(config_error)?;
            inbox.migrate().await?;
            for table in tables {
                sqlx::query(table).execute(&pool).await?;
            }
            Ok(Self::Postgres {
                pool,
                outbox,
                inbox,
                clock: DbClock::default(),
            })
        }
        .await;
        // Closing the session releases the lock whatever happened.
        let _ = setup.close().await;
        opened
    }

    /// The outbox and inbox, when the database is SQLite.
    #[must_use]
    pub const fn as_sqlite(&self) -> Option<(&SqliteOutbox, &SqliteInbox)> {
        match self {
            Self::Sqlite { outbox, inbox, .. } => Some((outbox, inbox)),
            Self::Postgres { .. } => None,
        }
    }

    /// The outbox and inbox, when the database is PostgreSQL.
    #[must_use]
    pub const fn as_postgres(&self) -> Option<(&PgOutbox, &PgInbox)> {
        match self {
            Self::Postgres { outbox, inbox, .. } => Some((outbox, inbox)),
            Self::Sqlite { .. } => None,
        }
    }

    /// Now on the database's clock, in Unix milliseconds: PostgreSQL's,
    /// read at most every 10 s and run on by this process's monotonic
    /// clock between reads; SQLite's is this machine's, its only user's.
    /// Each process's own wall clock disagrees with the others' and steps:
    /// a payment worker 10 s ahead took the others' claimed intents as due
    /// and charged them again, and a saga placed by one gateway and ended
    /// by another took as long as their clocks said.
    ///
    /// # Errors
    ///
    /// The database's error, when it is read.
    pub async fn now_ms(&self) -> Result<i64, sqlx::Error> {
        match self.reading() {
            Reading::Known(now) => Ok(now),
            Reading::Ask(clock) => {
                let sent = Instant::now();
                let (server_ms,): (i64,) = self.fetch_one(ASK_CLOCK, &[]).await?;
                Ok(clock.remember(server_ms, sent))
            }
        }
    }

    /// [`now_ms`](Self::now_ms), asked through `tx` when the database is
    /// to be read (a transaction holding a connection need not wait for
    /// another).
    ///
    /// # Errors
    ///
    /// The database's error, when it is read.
    pub async fn now_ms_in<T: Tx>(&self, tx: &mut T) -> Result<i64, sqlx::Error> {
        match self.reading() {
            Reading::Known(now) => Ok(now),
            Reading::Ask(clock) => {
                let sent = Instant::now();
                let (server_ms,): (i64,) = tx
                    .fetch_optional(ASK_CLOCK, &[])
                    .await?
                    .ok_or(sqlx::Error::RowNotFound)?;
                Ok(clock.remember(server_ms, sent))
            }
        }
    }

    /// Now, when known without asking the database.
    fn reading(&self) -> Reading<'_> {
        match self {
            Self::Sqlite { .. } => Reading::Known(crate::orders::now_ms()),
            Self::Postgres { clock, .. } => {
                let now = Instant::now();
                match *clock.lock() {
                    Some(read)
                        if now.saturating_duration_since(read.read_at()) < CLOCK_READ_EVERY =>
                    {
                        Reading::Known(as_i64(read.at(now)))
                    }
                    _ => Reading::Ask(clock),
                }
            }
        }
    }

    /// The outbox's backlog.
    ///
    /// # Errors
    ///
    /// The database's error.
    pub async fn backlog(&self) -> Result<Backlog, sqlx::Error> {
        match self {
            Self::Sqlite { outbox, .. } => outbox.backlog().await,
            Self::Postgres { outbox, .. } => outbox.backlog().await,
        }
    }

    /// Begins a transaction of the service's own, with its outbox.
    ///
    /// # Errors
    ///
    /// The database's error.
    pub async fn begin(&self) -> Result<ServiceTx, sqlx::Error> {
        Ok(match self {
            Self::Sqlite { pool, outbox, .. } => {
                ServiceTx::Sqlite(pool.begin().await?, outbox.clone())
            }
            Self::Postgres { pool, outbox, .. } => {
                ServiceTx::Postgres(pool.begin().await?, outbox.clone())
            }
        })
    }
}

/// `url` fit for an error or a log: its password (and a NATS token, the
/// user part of a `nats://` or `tls://` URL without a password; and a
/// password in the query, `?password=` or `?pass=`) replaced by `***`. A
/// URL that does not parse is shown as `<URL not shown>` unless it has no
/// `@` and no such query (so no credentials) at all.
///
/// ```
/// use palisade_order_system::db::redact_url;
///
/// assert_eq!(redact_url("postgres://u:secret@h/db"), "postgres://u:***@h/db");
/// assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
/// ```
#[must_use]
pub fn redact_url(url: &str) -> String {
    // A password in the query (`?password=` for sqlx, `?pass=` for a
    // Redis socket) as well.
    let secret = |key: &str| {
        [
            "password",
            "pass",
            "passwd",
            "pwd",
            "sslpassword",
            "token",
            "secret",
        ]
        .iter()
        .any(|name| key.eq_ignore_ascii_case(name))
    };
    let Ok(mut parsed) = url::Url::parse(url) else {
        let query = url.split_once('?').map_or("", |(_, query)| query);
        let named = query
            .split('&')
            .any(|pair| secret(pair.split_once('=').map_or(pair, |(key, _)| key)));
        return if url.contains('@') || named {
            "<URL not shown>".to_owned()
        } else {
            url.to_owned()
        };
    };
    let token = matches!(parsed.scheme(), "nats" | "tls")
        && parsed.password().is_none()
        && !parsed.username().is_empty();
    let redacted = if parsed.password().is_some() {
        parsed.set_password(Some("***")).is_ok()
    } else if token {
        parsed.set_username("***").is_ok()
    } else {
        true
    };
    if parsed.query_pairs().any(|(key, _)| secret(&key)) {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(key, value)| {
                let value = if secret(&key) {
                    "***".to_owned()
                } else {
                    value.into_owned()
                };
                (key.into_owned(), value)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    if redacted {
        parsed.to_string()
    } else {
        "<URL not shown>".to_owned()
    }
}

/// Whether `name` is lowercase letters, digits and `_`, starting with a
/// letter: safe as a schema name (and as a prefix of one).
#[must_use]
pub fn is_identifier(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// A value bound to a statement's placeholder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param<'a> {
    /// Text.
    Text(&'a str),
    /// Text or `NULL`.
    OptionalText(Option<&'a str>),
    /// An integer.
    Int(i64),
}

/// A row a statement returns, read the same way from either database: a
/// tuple of columns (`(i64,)` for one), or a struct deriving
/// [`sqlx::FromRow`].
pub trait Row: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin {}

impl<T> Row for T where T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin
{}

/// `rows` rows of `columns` numbered parameters each, for a multi-row
/// `VALUES`: `($1, $2), ($3, $4)`.
pub(crate) fn placeholders(rows: usize, columns: usize) -> String {
    (0..rows)
        .map(|row| {
            let numbers: Vec<String> = (1..=columns)
                .map(|column| format!("${}", row * columns + column))
                .collect();
            format!("({})", numbers.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A connection of either database, in a transaction or not: what the
/// services' SQL runs through.
pub trait Tx: Send {
    /// Runs `sql` with `params` bound to `$1`, `$2`, …; the number of rows
    /// it changed.
    fn execute(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;

    /// The rows `sql` returns, `params` bound.
    fn fetch_all<T: Row>(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
    ) -> impl Future<Output = Result<Vec<T>, sqlx::Error>> + Send;

    /// The first row `sql` returns, if any, `params` bound.
    fn fetch_optional<T: Row>(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
    ) -> impl Future<Output = Result<Option<T>, sqlx::Error>> + Send;

    /// Locks every row of `table`, in `key` order, until the transaction
    /// ends: transactions that write several of its rows in any order then
    /// take turns instead of deadlocking. (SQLite has one writer at a time:
    /// nothing to do.) `table` and `key` are the caller's constants.
    fn lock_in_order(
        &mut self,
        table: &str,
        key: &str,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// Keeps every other transaction from writing to `tables` until this
    /// one ends (they may still read them). (SQLite has one writer at a
    /// time: nothing to do.) `tables` are the caller's constants.
    fn lock_tables(
        &mut self,
        tables: &[&str],
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
}

/// A transaction that also appends events to its service's outbox: the
/// outbox comes with the transaction (a [`ServiceTx`] holds its service's,
/// a consumer's transaction is handed to the service with its own, see
/// [`Emitting`]), so no event can go to another database's outbox.
pub trait Emit: Tx {
    /// Appends `event` to the outbox in this transaction, the one writing
    /// the change it announces.
    fn enqueue(&mut self, event: &Event) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// Appends `events`, in order, as [`enqueue`](Self::enqueue) does
    /// (on SQLite in one statement).
    fn enqueue_all(
        &mut self,
        events: &[Event],
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
}

/// An outbox of either database, and the connection its events are
/// written on.
pub trait Outbox: Clone + Send + Sync + std::fmt::Debug + 'static {
    /// The connection of its database.
    type Connection: Tx;

    /// Appends `event` on `connection`, in its transaction.
    fn enqueue(
        &self,
        connection: &mut Self::Connection,
        event: &Event,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// Appends `events`, in order, on `connection`, in its transaction.
    fn enqueue_all(
        &self,
        connection: &mut Self::Connection,
        events: &[Event],
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
}

/// A consumer's transaction with its service's outbox: what a service's
/// [`apply`](crate::service::SagaService::apply) is given.
#[derive(Debug)]
pub struct Emitting<'a, O: Outbox> {
    /// The transaction's connection.
    pub connection: &'a mut O::Connection,
    /// The service's outbox.
    pub outbox: &'a O,
}

impl<O: Outbox> Tx for Emitting<'_, O> {
    fn execute(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send {
        self.connection.execute(sql, params)
    }

    fn fetch_all<T: Row>(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
    ) -> impl Future<Output = Result<Vec<T>, sqlx::Error>> + Send {
        self.connection.fetch_all(sql, params)
    }

    fn fetch_optional<T: Row>(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
    ) -> impl Future<Output = Result<Option<T>, sqlx::Error>> + Send {
        self.connection.fetch_optional(sql, params)
    }

    fn lock_in_order(
        &mut self,
        table: &str,
        key: &str,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        self.connection.lock_in_order(table, key)
    }

    fn lock_tables(
        &mut self,
        tables: &[&str],
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        self.connection.lock_tables(tables)
    }
}

impl<O: Outbox> Emit for Emitting<'_, O> {
    fn enqueue(&mut self, event: &Event) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        self.outbox.enqueue(self.connection, event)
    }

    fn enqueue_all(
        &mut self,
        events: &[Event],
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        self.outbox.enqueue_all(self.connection, events)
    }
}

/// `$query` with `$params` bound, in order.
macro_rules! bound {
    ($query:expr, $params:expr) => {{
        let mut query = $query;
        for param in $params {
            query = match *param {
                Param::Text(value) => query.bind(value),
                Param::OptionalText(value) => query.bind(value),
                Param::Int(value) => query.bind(value),
            };
        }
        query
    }};
}

macro_rules! tx {
    ($connection:ty, $outbox:ty, row_locks: $row_locks:literal) => {
        impl Tx for $connection {
            async fn execute(
                &mut self,
                sql: &str,
                params: &[Param<'_>],
            ) -> Result<u64, sqlx::Error> {
                Ok(bound!(sqlx::query(sql), params)
                    .execute(&mut *self)
                    .await?
                    .rows_affected())
            }

            async fn fetch_all<T: Row>(
                &mut self,
                sql: &str,
                params: &[Param<'_>],
            ) -> Result<Vec<T>, sqlx::Error> {
                bound!(sqlx::query_as(sql), params)
                    .fetch_all(&mut *self)
                    .await
            }

            async fn fetch_optional<T: Row>(
                &mut self,
                sql: &str,
                params: &[Param<'_>],
            ) -> Result<Option<T>, sqlx::Error> {
                bound!(sqlx::query_as(sql), params)
                    .fetch_optional(&mut *self)
                    .await
            }

            async fn lock_in_order(&mut self, table: &str, key: &str) -> Result<(), sqlx::Error> {
                if $row_locks {
                    sqlx::query(&format!("SELECT 1 FROM {table} ORDER BY {key} FOR UPDATE"))
                        .execute(&mut *self)
                        .await?;
                }
                Ok(())
            }

            async fn lock_tables(&mut self, tables: &[&str]) -> Result<(), sqlx::Error> {
                if $row_locks {
                    sqlx::query(&format!(
                        "LOCK TABLE {} IN EXCLUSIVE MODE",
                        tables.join(", ")
                    ))
                    .execute(&mut *self)
                    .await?;
                }
                Ok(())
            }
        }

        impl Outbox for $outbox {
            type Connection = $connection;

            fn enqueue(
                &self,
                connection: &mut $connection,
                event: &Event,
            ) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
                <$outbox>::enqueue(self, connection, event)
            }

            fn enqueue_all(
                &self,
                connection: &mut $connection,
                events: &[Event],
            ) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
                <$outbox>::enqueue_all(self, connection, events)
            }
        }
    };
}

tx!(SqliteConnection, SqliteOutbox, row_locks: false);
tx!(PgConnection, PgOutbox, row_locks: true);

/// A transaction a service begins itself ([`ServiceDb::begin`]), of either
/// database, with the service's outbox; it rolls back unless
/// [`commit`](Self::commit)ted.
#[derive(Debug)]
pub enum ServiceTx {
    /// On SQLite.
    Sqlite(Transaction<'static, Sqlite>, SqliteOutbox),
    /// On PostgreSQL.
    Postgres(Transaction<'static, Postgres>, PgOutbox),
}

impl ServiceTx {
    /// Commits the transaction.
    ///
    /// # Errors
    ///
    /// The database's error.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Self::Sqlite(tx, _) => tx.commit().await,
            Self::Postgres(tx, _) => tx.commit().await,
        }
    }

    /// Rolls the transaction back now (dropping it does too, later).
    ///
    /// # Errors
    ///
    /// The database's error.
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        match self {
            Self::Sqlite(tx, _) => tx.rollback().await,
            Self::Postgres(tx, _) => tx.rollback().await,
        }
    }
}

/// Runs `$body` with `$connection` the transaction's connection and
/// `$outbox` its service's outbox.
macro_rules! in_tx {
    ($tx:expr, |$connection:ident, $outbox:pat_param| $body:expr) => {
        match $tx {
            ServiceTx::Sqlite(tx, $outbox) => {
                let $connection = &mut **tx;
                $body
            }
            ServiceTx::Postgres(tx, $outbox) => {
                let $connection = &mut **tx;
                $body
            }
        }
    };
}

impl Tx for ServiceTx {
    async fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, sqlx::Error> {
        in_tx!(self, |connection, _| connection.execute(sql, params).await)
    }

    async fn fetch_all<T: Row>(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Vec<T>, sqlx::Error> {
        in_tx!(self, |connection, _| connection
            .fetch_all(sql, params)
            .await)
    }

    async fn fetch_optional<T: Row>(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Option<T>, sqlx::Error> {
        in_tx!(self, |connection, _| connection
            .fetch_optional(sql, params)
            .await)
    }

    async fn lock_in_order(&mut self, table: &str, key: &str) -> Result<(), sqlx::Error> {
        in_tx!(self, |connection, _| connection
            .lock_in_order(table, key)
            .await)
    }

    async fn lock_tables(&mut self, tables: &[&str]) -> Result<(), sqlx::Error> {
        in_tx!(self, |connection, _| connection.lock_tables(tables).await)
    }
}

impl Emit for ServiceTx {
    async fn enqueue(&mut self, event: &Event) -> Result<(), sqlx::Error> {
        in_tx!(self, |connection, outbox| outbox
            .enqueue(connection, event)
            .await)
    }

    async fn enqueue_all(&mut self, events: &[Event]) -> Result<(), sqlx::Error> {
        in_tx!(self, |connection, outbox| outbox
            .enqueue_all(connection, events)
            .await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_urls_lose_their_passwords() {
        for (url, shown) in [
            ("postgres://u:secret@h/db", "postgres://u:***@h/db"),
            (
                "postgres://postgres:secret@127.0.0.1:5432/test?sslmode=disable",
                "postgres://postgres:***@127.0.0.1:5432/test?sslmode=disable",
            ),
            (
                "redis://:secret@127.0.0.1:6379/0",
                "redis://:***@127.0.0.1:6379/0",
            ),
            ("nats://alice:secret@h:4222", "nats://alice:***@h:4222"),
            ("nats://secret@h:4222", "nats://***@h:4222"),
            (
                "postgres://postgres@127.0.0.1:5432/test",
                "postgres://postgres@127.0.0.1:5432/test",
            ),
            ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
            (
                "postgres://u@h/db?sslmode=disable&password=secret",
                "postgres://u@h/db?sslmode=disable&password=***",
            ),
            (
                "redis+unix:///run/redis.sock?db=0&pass=secret",
                "redis+unix:///run/redis.sock?db=0&pass=***",
            ),
            ("not a url : secret@", "<URL not shown>"),
            ("postgres://h:99999/db?password=secret", "<URL not shown>"),
            ("not a url", "not a url"),
        ] {
            let redacted = redact_url(url);
            assert_eq!(redacted, shown, "{url}");
            assert!(!redacted.contains("secret"), "{redacted}");
        }
    }

    /// On PostgreSQL the times processes compare are the database's: its
    /// reading here says an hour past this machine's clock (as a gateway
    /// whose clock is an hour behind the others' would find), and an
    /// order is placed at the database's time. Once the reading is old,
    /// the database is asked again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_postgres_an_order_is_placed_at_the_databases_time() {
        use crate::orders::{Orders, TokenizedOrder};
        use crate::service::SagaService;
        let schema = format!("db_clock_{}", fastrand::u64(..));
        let db = ServiceDb::open_postgres(
            &palisade_testkit::servers::database_url(),
            &schema,
            Orders::TABLES,
            2,
        )
        .await
        .unwrap();
        let ServiceDb::Postgres { clock, .. } = &db else {
            unreachable!("opened on PostgreSQL")
        };
        let hour = 3_600_000;
        clock.remember(crate::orders::now_ms() + hour, Instant::now());
        let order = TokenizedOrder {
            sku: "sku-1".to_owned(),
            quantity: 1,
            card: crate::card::CardToken {
                token: "card_0123456789abcdef0123456789abcdef".to_owned(),
                last4: "4242".to_owned(),
            },
        };
        Orders::new(db.clone())
            .place("alice", "k", &order)
            .await
            .unwrap();
        let (created_ms,): (i64,) = db
            .fetch_one("SELECT created_ms FROM orders", &[])
            .await
            .unwrap();
        let here = crate::orders::now_ms();
        assert!(
            (here + hour - 60_000..=here + hour).contains(&created_ms),
            "placed at {created_ms}, this machine's clock says {here}"
        );
        // A reading older than it may be: the database is asked.
        *clock.lock() = Some(ServerClock::read(
            0,
            Instant::now() - CLOCK_READ_EVERY,
            Instant::now() - CLOCK_READ_EVERY,
        ));
        let (asked,): (i64,) = db.fetch_one(ASK_CLOCK, &[]).await.unwrap();
        let now = db.now_ms().await.unwrap();
        assert!(
            (asked..asked + 60_000).contains(&now),
            "{now} against {asked}"
        );
        db.execute(&format!("DROP SCHEMA {schema} CASCADE"), &[])
            .await
            .unwrap();
    }
}
