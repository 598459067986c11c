//! The consumer's side: each message's effect applied once.

use std::time::Duration;

use sqlx::PgConnection;
use sqlx::postgres::PgPool;

use crate::error::ConfigError;

/// Remembers which messages each consumer has processed, in the consumer's
/// own database (feature `postgres`).
///
/// A broker delivers at least once: after a redelivery, or a duplicate the
/// broker's window did not catch, a consumer sees a message again.
/// [`process_once`](Self::process_once) records the message in the same
/// transaction as its effect, so the effect and the record commit or roll
/// back together, and the second delivery finds the record and does nothing.
///
/// # Example
///
/// ```no_run
/// use palisade_outbox::Inbox;
///
/// # async fn run(pool: sqlx::PgPool, message_id: uuid::Uuid) -> Result<(), Box<dyn std::error::Error>> {
/// let inbox = Inbox::new(pool.clone(), "inventory.inbox")?;
/// inbox.migrate().await?;
/// let mut tx = pool.begin().await?;
/// if inbox.process_once(&mut tx, "reserve-stock", message_id).await? {
///     // ... apply the effect in `tx` ...
/// }
/// tx.commit().await?; // then acknowledge the message
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Inbox {
    pool: PgPool,
    table: String,
}

impl Inbox {
    /// The inbox in `table` (`name` or `schema.name`).
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when `table` is not a plain identifier.
    pub fn new(pool: PgPool, table: &str) -> Result<Self, ConfigError> {
        crate::config::OutboxConfig::new(table)?;
        Ok(Self {
            pool,
            table: table.to_owned(),
        })
    }

    /// Creates the schema and table if missing.
    ///
    /// # Errors
    ///
    /// The database's error.
    pub async fn migrate(&self) -> Result<(), sqlx::Error> {
        let t = &self.table;
        if let Some((schema, _)) = t.split_once('.') {
            sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                .execute(&self.pool)
                .await?;
        }
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {t} (consumer TEXT NOT NULL, message_id TEXT NOT NULL, \
             processed_at TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY (consumer, message_id))"
        ))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records that `consumer` processes `message_id` in the caller's
    /// transaction; `true` the first time, `false` for a message already
    /// processed (skip its effect, and acknowledge it).
    ///
    /// # Errors
    ///
    /// The database's error.
    pub async fn process_once(
        &self,
        tx: &mut PgConnection,
        consumer: &str,
        message_id: uuid::Uuid,
    ) -> Result<bool, sqlx::Error> {
        let inserted = sqlx::query(&format!(
            "INSERT INTO {} (consumer, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            self.table
        ))
        .bind(consumer)
        .bind(message_id.to_string())
        .execute(&mut *tx)
        .await?;
        Ok(inserted.rows_affected() == 1)
    }

    /// Forgets records older than `age`, at most `batch` of them; returns
    /// how many went. Keep `age` longer than the broker may redeliver or
    /// duplicate (JetStream: its duplicate window and the consumer's
    /// redelivery horizon): a message redelivered after its record is gone
    /// would be processed again.
    ///
    /// # Errors
    ///
    /// The database's error.
    pub async fn forget_older_than(&self, age: Duration, batch: u32) -> Result<u64, sqlx::Error> {
        let t = &self.table;
        let done = sqlx::query(&format!(
            "DELETE FROM {t} WHERE ctid IN (SELECT ctid FROM {t} WHERE processed_at < now() - $1 * interval '1 millisecond' LIMIT $2)"
        ))
        .bind(age.as_secs_f64() * 1000.0)
        .bind(i64::from(batch))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}
