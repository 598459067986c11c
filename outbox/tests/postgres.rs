//! The outbox on a real PostgreSQL (`DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`). Each test works in a fresh
//! schema, dropped once it passed.
#![cfg(feature = "postgres")]

mod support;

use std::time::Duration;

use palisade_outbox::{Event, MemoryBroker, OutboxConfig, PgInbox, PgOutbox, Relay};
use sqlx::PgPool;
use support::{Harness, drain, event};
use uuid::Uuid;

struct Pg {
    pool: PgPool,
    outbox: PgOutbox,
    inbox: PgInbox,
    schema: String,
}

async fn pool() -> PgPool {
    let url = palisade_testkit::servers::database_url();
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(&url)
        .await
        .expect("a reachable PostgreSQL (run scripts/services)")
}

impl Harness for Pg {
    type Store = PgOutbox;

    async fn start(config: impl FnOnce(OutboxConfig) -> OutboxConfig + Send) -> Self {
        let pool = pool().await;
        let schema = format!("outbox_test_{}", fastrand::u64(..));
        let outbox = PgOutbox::new(
            pool.clone(),
            config(OutboxConfig::new(&format!("{schema}.outbox")).unwrap()),
        );
        outbox.migrate().await.unwrap();
        let inbox = PgInbox::new(pool.clone(), &format!("{schema}.inbox")).unwrap();
        inbox.migrate().await.unwrap();
        sqlx::query(&format!(
            "CREATE TABLE {schema}.orders (id TEXT PRIMARY KEY)"
        ))
        .execute(&pool)
        .await
        .unwrap();
        Self {
            pool,
            outbox,
            inbox,
            schema,
        }
    }

    fn store(&self) -> &PgOutbox {
        &self.outbox
    }

    same_on_every_database!(|h: &Self| format!("{}.orders", h.schema));

    async fn listen(&self) {
        self.outbox.listen().await.unwrap();
    }

    async fn finish(self) {
        sqlx::query(&format!("DROP SCHEMA {} CASCADE", self.schema))
            .execute(&self.pool)
            .await
            .unwrap();
    }
}

scenarios!(Pg:
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
    the_backlog_reports_the_oldest_pending_age,
    the_inbox_applies_each_message_once_with_its_effect,
    the_inbox_checks_a_batch_at_once,
);

/// Two transactions writing one aggregate: the second waits for the first,
/// so events are published in commit order even though neither relay nor
/// reader sees uncommitted rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_one_aggregate_are_published_in_commit_order() {
    let h = Pg::start(|c| c).await;
    let mut first = h.pool.begin().await.unwrap();
    h.outbox.enqueue(&mut first, &event("a", 1)).await.unwrap();
    let second = {
        let (pool, outbox) = (h.pool.clone(), h.outbox.clone());
        tokio::spawn(async move {
            let mut tx = pool.begin().await.unwrap();
            outbox.enqueue(&mut tx, &event("a", 2)).await.unwrap();
            tx.commit().await.unwrap();
        })
    };
    let broker = MemoryBroker::new(10);
    let mut subscriber = broker.subscribe();
    let relay = Relay::new(h.outbox.clone(), broker);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        relay.run_once().await.unwrap().claimed,
        0,
        "the second transaction waits for the first"
    );
    first.commit().await.unwrap();
    second.await.unwrap();
    while relay.run_once().await.unwrap().claimed > 0 {}
    let order: Vec<_> = drain(&mut subscriber)
        .iter()
        .map(|m| m.event.payload().to_vec())
        .collect();
    assert_eq!(order, [b"1".to_vec(), b"2".to_vec()]);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_made_before_claim_ids_gains_the_column() {
    let h = Pg::start(|c| c).await;
    sqlx::query(&format!(
        "ALTER TABLE {}.outbox DROP COLUMN claim_id",
        h.schema
    ))
    .execute(&h.pool)
    .await
    .unwrap();
    h.outbox.migrate().await.unwrap();
    h.outbox.migrate().await.unwrap();
    h.place(&[event("a", 1)], true).await;
    let relay = Relay::new(h.outbox.clone(), MemoryBroker::new(1));
    assert_eq!(relay.run_once().await.unwrap().published, 1);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_table_name_is_refused() {
    for bad in ["Orders", "a.b.c", "1x", "x;drop", ""] {
        let error = PgInbox::new(pool().await, bad).unwrap_err();
        assert!(error.to_string().contains("table"), "{error}");
    }
}
