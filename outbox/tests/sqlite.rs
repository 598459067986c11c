//! The outbox on SQLite, the embedded default: each test in a fresh file.
#![cfg(feature = "sqlite")]

mod support;

use std::path::PathBuf;
use std::time::Duration;

use palisade_outbox::{CommitWake, Event, OutboxConfig, SqliteInbox, SqliteOutbox};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use support::Harness;
use uuid::Uuid;

/// `HOOKED`: the pool installs a [`CommitWake`] on each connection
/// (`SqliteOutbox::woken_by`) instead of `enqueue` hooking each
/// transaction.
struct Lite<const HOOKED: bool = false> {
    pool: SqlitePool,
    outbox: SqliteOutbox,
    inbox: SqliteInbox,
    file: PathBuf,
}

impl<const HOOKED: bool> Harness for Lite<HOOKED> {
    type Store = SqliteOutbox;

    async fn start(config: impl FnOnce(OutboxConfig) -> OutboxConfig + Send) -> Self {
        let file = std::env::temp_dir().join(format!("palisade-outbox-{}.db", fastrand::u64(..)));
        let options = SqliteConnectOptions::new()
            .filename(&file)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal);
        let config = config(OutboxConfig::new("outbox").unwrap());
        let wake = CommitWake::new(&config);
        let mut pool = SqlitePoolOptions::new().max_connections(4);
        if HOOKED {
            let installer = wake.clone();
            pool = pool.after_connect(move |connection, _| {
                let installer = installer.clone();
                Box::pin(async move { installer.install(connection).await })
            });
        }
        let pool = pool.connect_with(options).await.unwrap();
        let mut outbox = SqliteOutbox::new(pool.clone(), config);
        if HOOKED {
            outbox = outbox.woken_by(wake);
        }
        outbox.migrate().await.unwrap();
        let inbox = SqliteInbox::new(pool.clone(), "inbox").unwrap();
        inbox.migrate().await.unwrap();
        sqlx::query("CREATE TABLE orders (id TEXT PRIMARY KEY)")
            .execute(&pool)
            .await
            .unwrap();
        Self {
            pool,
            outbox,
            inbox,
            file,
        }
    }

    fn store(&self) -> &SqliteOutbox {
        &self.outbox
    }

    same_on_every_database!(|_: &Self| "orders");

    async fn listen(&self) {}

    async fn finish(self) {
        self.pool.close().await;
        for suffix in ["", "-wal", "-shm"] {
            let mut name = self.file.clone().into_os_string();
            name.push(suffix);
            let _ = std::fs::remove_file(name);
        }
    }
}

scenarios!(Lite:
    an_event_exists_only_if_its_transaction_commits,
    two_relays_publish_each_event_once_in_aggregate_order,
    a_poison_event_dies_alone_and_holds_only_its_aggregate,
    a_discarded_dead_event_releases_its_aggregate,
    dead_events_are_listed_and_requeued_with_fresh_attempts,
    a_crashed_relays_claims_return_when_its_lease_ends,
    a_stopped_relay_leaves_no_event_claimed,
    a_late_failure_does_not_undo_another_relays_sent,
    a_late_sent_does_not_settle_another_relays_claim,
    a_publish_never_outlives_its_lease,
    a_commit_wakes_a_relay_that_would_poll_only_every_minute,
    sent_events_are_cleaned_up_in_bounded_batches,
    an_endless_retention_keeps_every_row,
    a_relay_cleans_up_batch_after_batch_while_they_are_full,
    a_config_out_of_bounds_is_taken_at_its_bound,
    the_backlog_reports_the_oldest_pending_age,
    the_inbox_applies_each_message_once_with_its_effect,
    the_inbox_checks_a_batch_at_once,
    deliveries_handed_back_are_counted_per_consumer,
    a_transactions_many_events_keep_their_columns_and_order,
);

/// The same wake-up and order with the hook installed once per connection.
mod hooked {
    use super::{Lite, support};

    crate::scenarios!(Lite<true>:
        a_commit_wakes_a_relay_that_would_poll_only_every_minute,
        two_relays_publish_each_event_once_in_aggregate_order,
    );
}

/// An inbox not migrated since it had no counts of deliveries handed back
/// forgets its old records all the same.
#[tokio::test]
async fn an_inbox_without_counts_handed_back_forgets_its_records() {
    let lite = Lite::<false>::start(|config| config).await;
    sqlx::query("DROP TABLE inbox_handed_back")
        .execute(&lite.pool)
        .await
        .unwrap();
    assert!(lite.process_once("reserve", Uuid::now_v7(), true).await);
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        lite.inbox
            .forget_older_than(Duration::ZERO, 100)
            .await
            .unwrap(),
        1
    );
    lite.finish().await;
}
