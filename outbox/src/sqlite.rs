//! The outbox and the inbox in SQLite (feature `sqlite`), for the embedded
//! default: one file, no server.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::SqliteConnection;
use sqlx::sqlite::{SqliteOperation, SqlitePool};
use tokio::sync::Notify;

use crate::sql::{Dialect, Migration};
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

/// Wakes an outbox's relays when a transaction that wrote to the outbox
/// commits on a connection it is installed on: installed once per
/// connection, when the pool opens it, instead of by every
/// [`SqliteOutbox::enqueue`] (each install is a round trip to the
/// connection's thread).
///
/// It takes the connection's update, commit and rollback hooks (replacing
/// any of your own there).
///
/// # Example
///
/// ```
/// use palisade_outbox::{CommitWake, OutboxConfig, SqliteOutbox};
/// use sqlx::sqlite::SqlitePoolOptions;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let config = OutboxConfig::new("outbox")?;
/// let wake = CommitWake::new(&config);
/// let installer = wake.clone();
/// let pool = SqlitePoolOptions::new()
///     .after_connect(move |connection, _| {
///         let installer = installer.clone();
///         Box::pin(async move { installer.install(connection).await })
///     })
///     .connect("sqlite::memory:")
///     .await?;
/// let outbox = SqliteOutbox::new(pool, config).woken_by(wake);
/// outbox.migrate().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct CommitWake {
    wake: Arc<Notify>,
    table: Arc<str>,
}

impl CommitWake {
    /// A wake-up for the outbox `config` describes.
    #[must_use]
    pub fn new(config: &crate::OutboxConfig) -> Self {
        Self {
            wake: Arc::default(),
            table: Arc::from(config.table()),
        }
    }

    /// Installs the hooks on `connection`.
    ///
    /// # Errors
    ///
    /// The connection's error.
    pub async fn install(&self, connection: &mut SqliteConnection) -> Result<(), sqlx::Error> {
        hook(connection, &self.wake, &self.table, false).await
    }
}

/// Sets `connection`'s hooks so that a transaction that inserted into
/// `table` wakes `wake`'s waiters when it commits (while anyone still holds
/// `wake`); `enqueued`: the transaction under way has already. Other
/// commits (the relay's own claims and settlements among them) wake
/// nobody: a relay must not wake itself.
async fn hook(
    connection: &mut SqliteConnection,
    wake: &Arc<Notify>,
    table: &str,
    enqueued: bool,
) -> Result<(), sqlx::Error> {
    let (database, name) = table.split_once('.').unwrap_or(("main", table));
    let (database, name) = (database.to_owned(), name.to_owned());
    let enqueued = Arc::new(AtomicBool::new(enqueued));
    let mut handle = connection.lock_handle().await?;
    let inserted = enqueued.clone();
    handle.set_update_hook(move |change| {
        if matches!(change.operation, SqliteOperation::Insert)
            && change.table == name
            && change.database == database
        {
            inserted.store(true, Ordering::Relaxed);
        }
    });
    let rolled_back = enqueued.clone();
    handle.set_rollback_hook(move || rolled_back.store(false, Ordering::Relaxed));
    let wake = Arc::downgrade(wake);
    handle.set_commit_hook(move || {
        if enqueued.swap(false, Ordering::Relaxed)
            && let Some(wake) = wake.upgrade()
        {
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
    ///
    /// # Panics
    ///
    /// If `wake` was made for another outbox table.
    #[must_use]
    pub fn woken_by(mut self, wake: CommitWake) -> Self {
        assert_eq!(
            &*wake.table,
            self.config.table(),
            "a CommitWake made for another outbox"
        );
        self.wake = wake.wake;
        self.hooked = true;
        self
    }

    /// Has this process's relays woken when the transaction commits.
    async fn announce(&self, tx: &mut SqliteConnection) -> Result<(), sqlx::Error> {
        // The insert happened already: this transaction has enqueued.
        hook(tx, &self.wake, self.config.table(), true).await
    }
}

/// SQLite makes every index in the migration's transaction (see
/// `Dialect::existed`): none is left to build after it.
fn build_concurrently(_: &SqlitePool, _: &Arc<Migration>, late: &[usize]) {
    debug_assert!(
        late.is_empty(),
        "SQLite builds its indexes in the migration"
    );
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;
    use sqlx::sqlite::SqlitePoolOptions;

    use super::*;
    use crate::{Event, OutboxConfig};

    /// Whether a wake-up is waiting (taking it).
    fn woken(wake: &CommitWake) -> bool {
        wake.wake.notified().now_or_never().is_some()
    }

    /// An outbox in `pool` whose table an earlier version made: without
    /// the `claim_id` column.
    async fn made_before_claim_ids(pool: &SqlitePool) -> SqliteOutbox {
        let outbox = SqliteOutbox::new(pool.clone(), OutboxConfig::new("outbox").unwrap());
        outbox.migrate().await.unwrap();
        sqlx::query("ALTER TABLE outbox DROP COLUMN claim_id")
            .execute(pool)
            .await
            .unwrap();
        outbox
    }

    #[tokio::test]
    async fn a_table_made_before_claim_ids_gains_the_column() {
        let pool = SqlitePool::connect("sqlite::memory:").await.unwrap();
        let outbox = made_before_claim_ids(&pool).await;
        outbox.migrate().await.unwrap();
        outbox.migrate().await.unwrap();
        let mut tx = pool.begin().await.unwrap();
        let event = Event::new("order", "o-1", "OrderCreated", b"{}".to_vec());
        outbox.enqueue(&mut tx, &event).await.unwrap();
        tx.commit().await.unwrap();
        let broker = crate::MemoryBroker::new(1);
        let report = crate::Relay::new(outbox, broker).run_once().await.unwrap();
        assert_eq!(report.published, 1);
    }

    /// A migration beside a writer (a relay running while a replica
    /// upgrades) waits for the write lock. It began deferred, read (does
    /// the table have the column), then could not take the write lock its
    /// read transaction needed (SQLite waits for no such upgrade), and
    /// failed with "database is locked" at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_migration_beside_a_writer_waits_for_it() {
        use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
        let path =
            std::env::temp_dir().join(format!("palisade-migrate-{}.db", uuid::Uuid::now_v7()));
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(std::time::Duration::from_secs(60));
        let pool = SqlitePool::connect_with(options.clone()).await.unwrap();
        let outbox = made_before_claim_ids(&pool).await;
        let writer_pool = SqlitePool::connect_with(options).await.unwrap();
        let mut writer = writer_pool.acquire().await.unwrap();
        for statement in ["BEGIN IMMEDIATE", "CREATE TABLE orders (id TEXT)"] {
            sqlx::query(statement).execute(&mut *writer).await.unwrap();
        }
        let migrating = tokio::spawn(async move { outbox.migrate().await });
        // Long enough for the migration to meet the lock: then it must wait.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        sqlx::query("COMMIT").execute(&mut *writer).await.unwrap();
        migrating.await.unwrap().expect("waited for the writer");
        let has: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pragma_table_info('outbox') WHERE name = 'claim_id'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(has, 1);
        drop(writer);
        pool.close().await;
        writer_pool.close().await;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }

    #[tokio::test]
    async fn only_a_committed_transaction_that_enqueued_wakes_the_relays() {
        let config = OutboxConfig::new("outbox").unwrap();
        let wake = CommitWake::new(&config);
        let installer = wake.clone();
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .after_connect(move |connection, _| {
                let installer = installer.clone();
                Box::pin(async move { installer.install(connection).await })
            })
            .connect("sqlite::memory:")
            .await
            .unwrap();
        let outbox = SqliteOutbox::new(pool.clone(), config).woken_by(wake.clone());
        outbox.migrate().await.unwrap();
        sqlx::query("CREATE TABLE orders (id TEXT)")
            .execute(&pool)
            .await
            .unwrap();
        let _ = woken(&wake);
        let event = || Event::new("order", "o-1", "OrderCreated", b"{}".to_vec());

        // Another table's write, and the outbox's own updates (a relay's
        // claims and settlements): nobody is woken.
        sqlx::query("INSERT INTO orders (id) VALUES ('o-1')")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("UPDATE outbox SET attempts = attempts")
            .execute(&pool)
            .await
            .unwrap();
        assert!(!woken(&wake));

        // An enqueue rolled back: nobody.
        let mut tx = pool.begin().await.unwrap();
        outbox.enqueue(&mut tx, &event()).await.unwrap();
        tx.rollback().await.unwrap();
        assert!(!woken(&wake));

        // An enqueue committed: the relays.
        let mut tx = pool.begin().await.unwrap();
        outbox.enqueue(&mut tx, &event()).await.unwrap();
        tx.commit().await.unwrap();
        assert!(woken(&wake));
    }
}
