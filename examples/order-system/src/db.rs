//! One service's database: its tables, its outbox and its inbox, in a
//! SQLite file of its own (the embedded default).

use std::path::Path;
use std::time::Duration;

use palisade_outbox::{OutboxConfig, SqliteInbox, SqliteOutbox};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

/// A service's database.
#[derive(Debug, Clone)]
pub struct ServiceDb {
    /// The pool.
    pub pool: SqlitePool,
    /// The service's outbox: the events it publishes.
    pub outbox: SqliteOutbox,
    /// The service's inbox: the events it has applied.
    pub inbox: SqliteInbox,
}

impl ServiceDb {
    /// Opens (creating if needed) `dir/<service>.db` and its tables:
    /// `tables` are the service's own `CREATE TABLE IF NOT EXISTS`
    /// statements.
    ///
    /// # Errors
    ///
    /// The database's error.
    pub async fn open(dir: &Path, service: &str, tables: &[&str]) -> Result<Self, sqlx::Error> {
        let options = SqliteConnectOptions::new()
            .filename(dir.join(format!("{service}.db")))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL with NORMAL stays consistent after a crash; the last
            // commits may be lost on a power cut, which the demo accepts.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await?;
        let outbox = SqliteOutbox::new(
            pool.clone(),
            OutboxConfig::new("outbox")
                .map_err(|error| sqlx::Error::Configuration(error.into()))?
                .batch_size(500)
                .poll_interval(Duration::from_millis(500)),
        );
        outbox.migrate().await?;
        let inbox = SqliteInbox::new(pool.clone(), "inbox")
            .map_err(|error| sqlx::Error::Configuration(error.into()))?;
        inbox.migrate().await?;
        for table in tables {
            sqlx::query(table).execute(&pool).await?;
        }
        Ok(Self {
            pool,
            outbox,
            inbox,
        })
    }
}
