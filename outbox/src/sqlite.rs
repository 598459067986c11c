//! The outbox and the inbox in SQLite (feature `sqlite`), for the embedded
//! default: one file, no server.

use std::sync::Arc;

use sqlx::SqliteConnection;
use sqlx::sqlite::SqlitePool;

use crate::sql::Dialect;
use crate::stores::{sql_inbox, sql_outbox};

sql_outbox! {
    /// The outbox table in SQLite.
    ///
    /// [`enqueue`](Self::enqueue) writes events in the caller's
    /// transaction. SQLite has one writer at a time, so a claim is a single
    /// `UPDATE … RETURNING` with a lease, and several relays (even in
    /// several processes on one file) never claim the same event; `seq`
    /// order is commit order.
    ///
    /// Relays in this process are woken when a transaction that enqueued
    /// commits (through SQLite's commit hook on that connection, which
    /// replaces any commit hook of your own there); relays in other
    /// processes poll.
    ///
    /// Times are SQLite's `julianday('now')`, kept as milliseconds since
    /// the Unix epoch. A `schema.name` table lives in the attached database
    /// `schema`.
    ///
    /// # Example
    ///
    /// ```
    /// use palisade_outbox::{Event, MemoryBroker, OutboxConfig, Relay, SqliteOutbox};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
    /// let outbox = SqliteOutbox::new(pool.clone(), OutboxConfig::new("outbox")?);
    /// outbox.migrate().await?;
    /// sqlx::query("CREATE TABLE orders (id TEXT PRIMARY KEY)").execute(&pool).await?;
    ///
    /// let mut tx = pool.begin().await?;
    /// sqlx::query("INSERT INTO orders (id) VALUES ('o-17')").execute(&mut *tx).await?;
    /// outbox.enqueue(&mut tx, &Event::new("order", "o-17", "OrderCreated", b"{}".to_vec())).await?;
    /// tx.commit().await?;
    ///
    /// let broker = MemoryBroker::new(16);
    /// let mut subscriber = broker.subscribe();
    /// Relay::new(outbox, broker).run_once().await?;
    /// assert_eq!(subscriber.recv().await.unwrap().event.event_type(), "OrderCreated");
    /// # Ok(()) }
    /// ```
    SqliteOutbox, SqlitePool, SqliteConnection, Dialect::Sqlite
}

sql_inbox! {
    /// Remembers which messages each consumer has processed, in the
    /// consumer's own SQLite database; see [`PgInbox`](crate::PgInbox)
    /// (feature `postgres`) for why.
    ///
    /// # Example
    ///
    /// ```
    /// use palisade_outbox::SqliteInbox;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
    /// let inbox = SqliteInbox::new(pool.clone(), "inbox")?;
    /// inbox.migrate().await?;
    /// let message_id = uuid::Uuid::now_v7();
    /// for delivery in 0..2 {
    ///     let mut tx = pool.begin().await?;
    ///     let first = inbox.process_once(&mut tx, "reserve-stock", message_id).await?;
    ///     assert_eq!(first, delivery == 0);
    ///     tx.commit().await?;
    /// }
    /// # Ok(()) }
    /// ```
    SqliteInbox, sqlx::Sqlite, SqlitePool, SqliteConnection, Dialect::Sqlite
}

impl SqliteOutbox {
    /// Has this process's relays woken when the transaction commits.
    async fn announce(&self, tx: &mut SqliteConnection) -> Result<(), sqlx::Error> {
        let wake = Arc::downgrade(&self.wake);
        tx.lock_handle().await?.set_commit_hook(move || {
            if let Some(wake) = wake.upgrade() {
                wake.notify_one();
            }
            true
        });
        Ok(())
    }
}
