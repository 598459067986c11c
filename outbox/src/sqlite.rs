//! The outbox and the inbox in SQLite (feature `sqlite`), for the embedded
//! default: one file, no server.

use std::sync::Arc;

use sqlx::SqliteConnection;
use sqlx::sqlite::SqlitePool;
use tokio::sync::Notify;

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
    /// replaces any commit hook of your own there; or, with
    /// [`woken_by`](Self::woken_by), a hook installed once per
    /// connection); relays in other processes poll.
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

/// Wakes an outbox's relays whenever a connection it is installed on
/// commits: installed once per connection, when the pool opens it, instead
/// of by every [`SqliteOutbox::enqueue`] (each install is a round trip to
/// the connection's thread).
///
/// Every commit on those connections wakes the relays, events or not; a
/// relay woken for nothing finds nothing to claim and waits again.
///
/// # Example
///
/// ```
/// use palisade_outbox::{CommitWake, OutboxConfig, SqliteOutbox};
/// use sqlx::sqlite::SqlitePoolOptions;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let wake = CommitWake::default();
/// let installer = wake.clone();
/// let pool = SqlitePoolOptions::new()
///     .after_connect(move |connection, _| {
///         let installer = installer.clone();
///         Box::pin(async move { installer.install(connection).await })
///     })
///     .connect("sqlite::memory:")
///     .await?;
/// let outbox = SqliteOutbox::new(pool, OutboxConfig::new("outbox")?).woken_by(wake);
/// outbox.migrate().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct CommitWake(Arc<Notify>);

impl CommitWake {
    /// Installs the hook on `connection` (replacing any commit hook of
    /// your own there).
    ///
    /// # Errors
    ///
    /// The connection's error.
    pub async fn install(&self, connection: &mut SqliteConnection) -> Result<(), sqlx::Error> {
        hook(connection, &self.0).await
    }
}

/// Sets `connection`'s commit hook to wake `wake`'s waiters (while anyone
/// still holds `wake`).
async fn hook(connection: &mut SqliteConnection, wake: &Arc<Notify>) -> Result<(), sqlx::Error> {
    let wake = Arc::downgrade(wake);
    connection.lock_handle().await?.set_commit_hook(move || {
        if let Some(wake) = wake.upgrade() {
            wake.notify_one();
        }
        true
    });
    Ok(())
}

impl SqliteOutbox {
    /// Relays wake through `wake`, which the pool installs on every
    /// connection it opens (see [`CommitWake`]); `enqueue` then sets no hook
    /// of its own. Every connection of the pool must have it, or relays
    /// wait for their next poll.
    #[must_use]
    pub fn woken_by(mut self, wake: CommitWake) -> Self {
        self.wake = wake.0;
        self.hooked = true;
        self
    }

    /// Has this process's relays woken when the transaction commits.
    async fn announce(&self, tx: &mut SqliteConnection) -> Result<(), sqlx::Error> {
        hook(tx, &self.wake).await
    }
}
