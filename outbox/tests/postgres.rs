//! The outbox on a real PostgreSQL (`DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`). Each test works in a fresh
//! schema, dropped once it passed.
#![cfg(feature = "postgres")]

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use palisade_outbox::{
    BoxError, Delivery, Event, Handled, Handler, MemoryBroker, MemoryConsumer, Message,
    OutboxConfig, OutboxStore, PgInbox, PgOutbox, PublishError, Published, Publisher, Relay,
};
use sqlx::{PgConnection, PgPool};
use support::{Harness, Poisoned, Recorded, by_aggregate, drain, event};
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

impl Pg {
    /// Commits `events` and relays them all, at once, to an in-process
    /// broker: the subscription they went to.
    async fn relayed(&self, events: &[Event]) -> tokio::sync::mpsc::Receiver<Message> {
        self.place(events, true).await;
        let broker = MemoryBroker::new(10);
        let subscription = broker.subscribe();
        let sent = Relay::new(self.outbox.clone(), broker)
            .run_once()
            .await
            .unwrap();
        assert_eq!(sent.published, events.len());
        subscription
    }

    /// A table `applied` of ids in the schema, holding `row`: its name.
    async fn applied_with(&self, row: &str) -> String {
        let table = format!("{}.applied", self.schema);
        sqlx::query(&format!("CREATE TABLE {table} (id TEXT PRIMARY KEY)"))
            .execute(&self.pool)
            .await
            .unwrap();
        sqlx::query(&format!("INSERT INTO {table} (id) VALUES ($1)"))
            .bind(row)
            .execute(&self.pool)
            .await
            .unwrap();
        table
    }

    /// Drops the schema's index `{schema}_{suffix}`, as a table made by
    /// an earlier version lacks it: its name.
    async fn without_index(&self, suffix: &str) -> String {
        let index = format!("{}_{suffix}", self.schema);
        sqlx::query(&format!("DROP INDEX {}.{index}", self.schema))
            .execute(&self.pool)
            .await
            .unwrap();
        index
    }

    /// How many events are set aside (held behind their aggregate's first
    /// unsent event), and how many pending events a claim would walk.
    async fn set_aside(&self) -> (i64, i64) {
        sqlx::query_as(&format!(
            "SELECT count(*) FILTER (WHERE blocked), \
             count(*) FILTER (WHERE status = 'pending' AND NOT blocked) FROM {}.outbox",
            self.schema
        ))
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }
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
    an_endless_retention_keeps_every_row,
    a_relay_cleans_up_batch_after_batch_while_they_are_full,
    a_config_out_of_bounds_is_taken_at_its_bound,
    the_backlog_reports_the_oldest_pending_age,
    the_inbox_applies_each_message_once_with_its_effect,
    the_inbox_checks_a_batch_at_once,
    deliveries_handed_back_are_counted_per_consumer,
    a_transactions_many_events_keep_their_columns_and_order,
);

/// Closing the pool of an outbox that listens closes the listening
/// connection too: the listening task kept it open on the server, and
/// warned "LISTEN failed" every second, until the outbox was dropped.
///
/// The server is asked, not the pool: a pool closed while another of its
/// connections is on its way back (as the schema's last statement's is)
/// may keep that one idle and counted, a race inside sqlx's `close`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_pool_of_a_listening_outbox_closes_its_connection() {
    let pg = Pg::start(|config| config).await;
    pg.listen().await;
    let mut observer = observer().await;
    let listening = listening_session(&mut observer, &pg.schema)
        .await
        .expect("the listening session");
    tokio::time::timeout(Duration::from_secs(30), pg.pool.close())
        .await
        .expect("the pool closes with the outbox listening");
    tokio::time::timeout(Duration::from_secs(30), async {
        while session_exists(&mut observer, listening).await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the listening session closes with the pool");
    sqlx::query(&format!("DROP SCHEMA {} CASCADE", pg.schema))
        .execute(&mut observer)
        .await
        .unwrap();
}

/// Dropping an outbox that listens gives its listening connection back to
/// the pool, with no NOTIFY to wake the task: it held it, in use, for as
/// long as the pool lived and nothing was enqueued on the channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_listening_outbox_gives_its_connection_back() {
    let pg = Pg::start(|config| config).await;
    pg.listen().await;
    let mut observer = observer().await;
    listening_session(&mut observer, &pg.schema)
        .await
        .expect("the listening session");
    let Pg {
        pool,
        outbox,
        inbox,
        schema,
    } = pg;
    drop((outbox, inbox));
    let in_use = |pool: &PgPool| pool.size() - u32::try_from(pool.num_idle()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), async {
        while listening_session(&mut observer, &schema).await.is_some() || in_use(&pool) > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the listening connection given back once the outbox is dropped");
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&pool)
        .await
        .unwrap();
}

/// A connection of its own, outside every pool, to watch the server's
/// sessions with.
async fn observer() -> PgConnection {
    sqlx::Connection::connect(&palisade_testkit::servers::database_url())
        .await
        .unwrap()
}

/// The server process of the session whose last statement is the LISTEN
/// on the channel of the outbox in `schema` (as sqlx sends it).
async fn listening_session(observer: &mut PgConnection, schema: &str) -> Option<i32> {
    sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE query = $1")
        .bind(format!(r#"LISTEN "palisade_outbox_{schema}_outbox""#))
        .fetch_optional(observer)
        .await
        .unwrap()
}

async fn session_exists(observer: &mut PgConnection, pid: i32) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)")
        .bind(pid)
        .fetch_one(observer)
        .await
        .unwrap()
}

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

/// Outboxes in two schemas of one database, as the order system's
/// services have them: a transaction writing an aggregate to one does not
/// wait for one writing the same aggregate to the other. It waited (the
/// lock was the aggregate's in the whole database), and two transactions
/// writing two aggregates in opposite orders to two outboxes deadlocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outboxes_of_two_tables_do_not_wait_on_each_others_aggregates() {
    let (one, other) = (Pg::start(|c| c).await, Pg::start(|c| c).await);
    let mut holding = one.pool.begin().await.unwrap();
    one.outbox
        .enqueue(&mut holding, &event("a", 1))
        .await
        .unwrap();
    let mut tx = other.pool.begin().await.unwrap();
    // A wait for a lock fails rather than hang (it would end with `holding`).
    sqlx::query("SET LOCAL lock_timeout = '2s'")
        .execute(&mut *tx)
        .await
        .unwrap();
    other
        .outbox
        .enqueue(&mut tx, &event("a", 1))
        .await
        .expect("no wait on the other table's aggregate");
    tx.commit().await.unwrap();
    holding.commit().await.unwrap();
    one.finish().await;
    other.finish().await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_made_before_set_aside_events_gains_the_column() {
    let h = Pg::start(|c| c).await;
    let schema = &h.schema;
    for statement in [
        format!("ALTER TABLE {schema}.outbox DROP COLUMN blocked"),
        format!(
            "CREATE INDEX {schema}_outbox_due ON {schema}.outbox (seq) WHERE status = 'pending'"
        ),
    ] {
        sqlx::query(&statement).execute(&h.pool).await.unwrap();
    }
    h.outbox.migrate().await.unwrap();
    h.outbox.migrate().await.unwrap();
    for built_now in ["ready", "blocked"] {
        built(&h.pool, schema, &format!("{schema}_outbox_{built_now}")).await;
    }
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes WHERE schemaname = $1 ORDER BY indexname",
    )
    .bind(schema)
    .fetch_all(&h.pool)
    .await
    .unwrap();
    let suffixes: Vec<&str> = indexes
        .iter()
        .filter_map(|index| index.strip_prefix(&format!("{schema}_outbox_")))
        .collect();
    assert_eq!(
        suffixes,
        ["blocked", "due", "ready", "sent", "unsent"],
        "{indexes:?} (`due` stays for relays of earlier versions)"
    );
    h.place(&[event("a", 1), event("a", 2)], true).await;
    let relay = Relay::new(h.outbox.clone(), MemoryBroker::new(2));
    assert_eq!(relay.run_once().await.unwrap().published, 1);
    assert_eq!(relay.run_once().await.unwrap().published, 1);
    h.finish().await;
}

/// A dead event holds 300 later events of its aggregate. The first claim
/// sets aside all but the three next in line, so the claims after it walk
/// those three (the others are out of the index claims walk). Discarding
/// the dead event, or requeuing it once the broker takes it, frees one
/// more, and each one sent frees the next, in order.
async fn a_dead_events_set_aside_line(discard: bool) {
    let h = Pg::start(|c| c.max_attempts(1).batch_size(50)).await;
    let poison = Event::new("order", "p", "Poison", b"0".to_vec());
    let poison_id = poison.id();
    let mut held = vec![poison];
    held.extend((1..=300).map(|n| event("p", n)));
    h.place(&held, true).await;
    let others: Vec<Event> = (1..=20).map(|n| event(&format!("o{n}"), 0)).collect();
    h.place(&others, true).await;
    let broker = MemoryBroker::new(1000);
    let mut subscriber = broker.subscribe();
    let failing = Arc::new(AtomicBool::new(true));
    let relay = Relay::new(
        h.outbox.clone(),
        Poisoned {
            broker,
            failing: failing.clone(),
        },
    );

    let report = relay.run_once().await.unwrap();
    assert_eq!(
        (report.claimed, report.published, report.dead),
        (21, 20, 1),
        "one claim walks past the held events to the other aggregates"
    );
    assert_eq!(h.set_aside().await, (297, 3));
    assert_eq!(relay.run_once().await.unwrap().claimed, 0);
    let backlog = h.outbox.backlog().await.unwrap();
    assert_eq!((backlog.pending, backlog.dead, backlog.held), (300, 1, 300));

    let expected: Vec<u32> = if discard {
        assert!(h.discard(poison_id).await);
        assert_eq!(h.set_aside().await, (296, 4), "p/1 is first in line");
        (1..=300).collect()
    } else {
        failing.store(false, Ordering::SeqCst);
        assert!(h.requeue(poison_id).await);
        assert_eq!(h.set_aside().await, (297, 4), "p/0 is first in line again");
        (0..=300).collect()
    };
    drain(&mut subscriber);
    while relay.run_once().await.unwrap().claimed > 0 {}
    let got = drain(&mut subscriber);
    assert_eq!(
        by_aggregate(&got).remove("p"),
        Some(expected),
        "the aggregate moves on, in order"
    );
    assert_eq!(h.set_aside().await, (0, 0));
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discarded_dead_event_frees_its_set_aside_line_in_order() {
    a_dead_events_set_aside_line(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requeued_dead_event_leads_its_set_aside_line_in_order() {
    a_dead_events_set_aside_line(false).await;
}

/// An outbox set up unordered after events were set aside while it was
/// ordered: its sweep frees them all, and they are published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_set_aside_while_ordered_are_published_once_unordered() {
    let h = Pg::start(|c| c).await;
    let line: Vec<Event> = (1..=8).map(|n| event("a", n)).collect();
    h.place(&line, true).await;
    let broker = MemoryBroker::new(100);
    let mut subscriber = broker.subscribe();
    let relay = Relay::new(h.outbox.clone(), broker.clone());
    assert_eq!(relay.run_once().await.unwrap().published, 1);
    assert_eq!(
        h.set_aside().await,
        (3, 4),
        "a/6 to a/8 set aside, a/5 freed"
    );

    let unordered = PgOutbox::new(h.pool.clone(), h.outbox.config().clone().ordered(false));
    let relay = Relay::new(unordered, broker);
    assert_eq!(relay.run_once().await.unwrap().published, 7);
    assert_eq!(h.set_aside().await, (0, 0));
    assert_eq!(drain(&mut subscriber).len(), 8);
    h.finish().await;
}

/// What a claim's race with settles can leave (see the unit test of the
/// race itself): the first event of a line set aside, here of two lines.
/// The sweep finds each, and the lines are published in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_set_aside_by_a_race_is_freed_by_the_next_sweep() {
    let h = Pg::start(|c| c.poll_interval(Duration::from_millis(20))).await;
    h.place(
        &[event("a", 1), event("a", 2), event("b", 1), event("c", 1)],
        true,
    )
    .await;
    // What the race leaves: a/1 and c/1, first in line, set aside (the
    // sweep finds each aggregate's first set-aside event).
    sqlx::query(&format!(
        "UPDATE {}.outbox SET blocked = true WHERE aggregate_id <> 'b' \
         AND seq IN (SELECT min(seq) FROM {0}.outbox GROUP BY aggregate_id)",
        h.schema
    ))
    .execute(&h.pool)
    .await
    .unwrap();
    assert_eq!(h.set_aside().await, (2, 2));
    let broker = MemoryBroker::new(10);
    let mut subscriber = broker.subscribe();
    let relay = Relay::new(h.outbox.clone(), broker);
    let mut got = Vec::new();
    for _ in 0..100 {
        relay.run_once().await.unwrap();
        got.extend(drain(&mut subscriber));
        if got.len() == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = by_aggregate(&got);
    assert_eq!(
        [&got["a"][..], &got["b"][..], &got["c"][..]],
        [&[1, 2][..], &[1][..], &[1][..]]
    );
    assert_eq!(h.set_aside().await, (0, 0));
    h.finish().await;
}

/// Rejects about one publish in four, for the relay to try again.
#[derive(Clone)]
struct Flaky(Recorded);

impl Publisher for Flaky {
    async fn publish(&self, message: &Message) -> Result<Published, PublishError> {
        if fastrand::u8(..4) == 0 {
            return Err(PublishError::rejected("the broker refused, this time"));
        }
        self.0.publish(message).await
    }
}

/// Four relays drain eight aggregates' interleaved backlogs while publishes
/// fail now and then: claims set events aside and settles free them under
/// one another, and every event is still published once, in its
/// aggregate's order, with none left set aside.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relays_setting_events_aside_side_by_side_keep_each_aggregates_order() {
    let h = Pg::start(|c| {
        c.batch_size(16)
            .max_attempts(1_000)
            .backoff(Duration::from_millis(1), Duration::from_millis(5))
            .poll_interval(Duration::from_millis(20))
    })
    .await;
    let aggregates: Vec<String> = (0..8).map(|n| format!("agg{n}")).collect();
    for n in 0..100 {
        let events: Vec<Event> = aggregates.iter().map(|a| event(a, n)).collect();
        h.place(&events, true).await;
    }
    let publisher = Flaky(Recorded {
        broker: MemoryBroker::new(1_000),
        published: Arc::default(),
    });
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let relays: Vec<_> = (0..4)
        .map(|_| {
            let relay = Relay::new(h.outbox.clone(), publisher.clone());
            let mut stopped = stopped.clone();
            tokio::spawn(relay.run(async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            }))
        })
        .collect();
    for _ in 0..1_200 {
        if h.outbox.backlog().await.unwrap().pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.send(true).unwrap();
    for relay in relays {
        relay.await.unwrap();
    }
    let got = publisher.0.published.lock().unwrap().clone();
    let ids: HashSet<_> = got.iter().map(|m| m.event.id()).collect();
    assert_eq!((ids.len(), got.len()), (800, 800), "each event once");
    for (aggregate, numbers) in by_aggregate(&got) {
        assert_eq!(
            numbers,
            (0..100).collect::<Vec<_>>(),
            "{aggregate} in order"
        );
    }
    assert_eq!(h.set_aside().await, (0, 0));
    h.finish().await;
}

/// Applies an event by recording its id in `applied`, except the event
/// whose payload is `1`: it records the id `taken`, which is there
/// already, and takes the unique violation for "already done", carrying on
/// without its error, as a handler written for MySQL or SQLite would. The
/// event whose payload is `3` fails before any statement.
struct TakesAFailureForDone {
    applied: String,
}

impl Handler<PgConnection> for TakesAFailureForDone {
    async fn handle(
        &self,
        tx: &mut PgConnection,
        delivery: &Delivery,
    ) -> Result<Handled, BoxError> {
        if delivery.payload[..] == *b"3" {
            return Err("3 is not for us".into());
        }
        let id = if delivery.payload[..] == *b"1" {
            "taken"
        } else {
            &delivery.envelope.id
        };
        let recorded = sqlx::query(&format!("INSERT INTO {} (id) VALUES ($1)", self.applied))
            .bind(id)
            .execute(&mut *tx)
            .await;
        match recorded {
            Err(sqlx::Error::Database(error)) if error.is_unique_violation() => {}
            recorded => {
                recorded?;
            }
        }
        Ok(Handled::Applied)
    }
}

/// A statement that failed aborts a PostgreSQL transaction, whose `COMMIT`
/// then rolls back and answers success: a handler that went on without
/// the statement's error had its whole batch acknowledged as applied with
/// nothing written (and the delivery after it blamed for the failure).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_going_on_after_a_failed_statement_has_failed_its_delivery() {
    let h = Pg::start(|c| c).await;
    let applied = h.applied_with("taken").await;
    // Found at the commit (b, its next delivery failing by itself), and at
    // the next delivery's first statement (e).
    let events = [
        event("a", 0),
        event("b", 1),
        event("d", 3),
        event("c", 2),
        event("e", 1),
        event("f", 2),
    ];
    let subscription = h.relayed(&events).await;
    let consumer = MemoryConsumer::new(
        "orders",
        h.inbox.clone(),
        TakesAFailureForDone {
            applied: applied.clone(),
        },
    )
    .max_deliver(2)
    .retry_delay(Duration::from_millis(1), Duration::from_millis(1));
    // One batch, as the six are queued; the subscription ends with them.
    consumer.run(subscription, std::future::pending()).await;

    let stats = consumer.stats();
    assert_eq!(
        (stats.applied, stats.retried, stats.dead_lettered),
        (3, 3, 3),
        "b, d and e failed, each tried twice; no other was blamed: {stats:?}"
    );
    let mut recorded: Vec<String> = sqlx::query_scalar(&format!("SELECT id FROM {applied}"))
        .fetch_all(&h.pool)
        .await
        .unwrap();
    recorded.sort();
    let mut expected = vec![
        events[0].id().to_string(),
        events[3].id().to_string(),
        events[5].id().to_string(),
        "taken".to_owned(),
    ];
    expected.sort();
    assert_eq!(recorded, expected);
    let inbox: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {}.inbox", h.schema))
        .fetch_one(&h.pool)
        .await
        .unwrap();
    assert_eq!(inbox, 3, "only what was applied is recorded");
    h.finish().await;
}

/// Runs `stall` on the delivery whose payload is `1`, then records each
/// delivery in `table`.
struct Stalls {
    table: String,
    stall: String,
}

impl Handler<PgConnection> for Stalls {
    async fn handle(
        &self,
        tx: &mut PgConnection,
        delivery: &Delivery,
    ) -> Result<Handled, BoxError> {
        if delivery.payload[..] == *b"1" {
            sqlx::query(&self.stall).execute(&mut *tx).await?;
        }
        sqlx::query(&format!("INSERT INTO {} (id) VALUES ($1)", self.table))
            .bind(&delivery.envelope.id)
            .execute(&mut *tx)
            .await?;
        Ok(Handled::Applied)
    }
}

/// A handler the handler timeout cuts off while PostgreSQL waits for a
/// lock leaves no wait behind: the transaction bounds its statements on
/// the server too. (The abandoned statement waited on, holding the inbox
/// rows its transaction wrote, and the next try waited on those: the
/// consumer hung until the lock came.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_cut_off_in_a_lock_wait_leaves_no_wait_behind() {
    let h = Pg::start(|c| c).await;
    let table = h.applied_with("held").await;
    let mut holder = h.pool.begin().await.unwrap();
    sqlx::query(&format!(
        "SELECT id FROM {table} WHERE id = 'held' FOR UPDATE"
    ))
    .execute(&mut *holder)
    .await
    .unwrap();
    let subscription = h.relayed(&[event("a", 1), event("b", 2)]).await;
    let consumer = MemoryConsumer::new(
        "orders",
        h.inbox.clone(),
        Stalls {
            // A row lock another session holds: waited for, for ever.
            stall: format!("SELECT id FROM {table} WHERE id = 'held' FOR UPDATE"),
            table: table.clone(),
        },
    )
    .handler_timeout(Duration::from_secs(1))
    .max_deliver(2)
    .retry_delay(Duration::from_millis(1), Duration::from_millis(1));
    tokio::time::timeout(
        Duration::from_secs(60),
        consumer.run(subscription, std::future::pending()),
    )
    .await
    .expect("the consumer went on past the lock wait");
    let stats = consumer.stats();
    assert_eq!((stats.applied, stats.dead_lettered), (1, 1), "{stats:?}");
    holder.rollback().await.unwrap();
    h.finish().await;
}

/// The consumer's bound on its transaction's statements only tightens a
/// `statement_timeout` already in force (here the connection's 300 ms,
/// as a role's or a database's would be): the handler's one-second
/// statement is cut at 300 ms, not let run for the handler timeout's
/// minute (the bound replaced the tighter limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tighter_statement_timeout_in_force_stands() {
    let h = Pg::start(|c| c).await;
    let table = h.applied_with("unused").await;
    let options: sqlx::postgres::PgConnectOptions = palisade_testkit::servers::database_url()
        .parse::<sqlx::postgres::PgConnectOptions>()
        .unwrap()
        .options([("statement_timeout", "300")]);
    let tight = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .unwrap();
    let inbox = PgInbox::new(tight, &format!("{}.inbox", h.schema)).unwrap();
    let subscription = h.relayed(&[event("a", 1), event("b", 2)]).await;
    let consumer = MemoryConsumer::new(
        "orders",
        inbox,
        Stalls {
            stall: "SELECT pg_sleep(1)".to_owned(),
            table: table.clone(),
        },
    )
    .max_deliver(1);
    consumer.run(subscription, std::future::pending()).await;
    let stats = consumer.stats();
    assert_eq!((stats.applied, stats.dead_lettered), (1, 1), "{stats:?}");
    h.finish().await;
}

/// Forgetting old records tells of a failure to forget the old counts of
/// deliveries handed back (it was a warning, and the call said it
/// succeeded), but not of an inbox not migrated since it had no counts.
#[tokio::test]
async fn forgetting_reports_a_failure_to_forget_the_counts_handed_back() {
    let pg = Pg::start(|config| config).await;
    let schema = &pg.schema;
    for statement in [
        format!(
            "CREATE FUNCTION {schema}.refuse() RETURNS trigger LANGUAGE plpgsql \
             AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$"
        ),
        format!(
            "CREATE TRIGGER refuse BEFORE DELETE ON {schema}.inbox_handed_back \
             FOR EACH STATEMENT EXECUTE FUNCTION {schema}.refuse()"
        ),
    ] {
        sqlx::query(&statement).execute(&pg.pool).await.unwrap();
    }
    let error = pg
        .inbox
        .forget_older_than(Duration::ZERO, 100)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("refused"), "{error}");
    sqlx::query(&format!("DROP TABLE {schema}.inbox_handed_back"))
        .execute(&pg.pool)
        .await
        .unwrap();
    assert_eq!(
        pg.inbox
            .forget_older_than(Duration::ZERO, 100)
            .await
            .unwrap(),
        0
    );
    pg.finish().await;
}

/// A start against tables set up already (a replica restarting) waits on
/// no transaction writing them: `CREATE INDEX IF NOT EXISTS` took a share
/// lock on each table, so the start waited for every open transaction
/// that wrote the outbox or the inbox, and every write after it waited on
/// the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_waits_on_no_transaction_writing_the_tables() {
    let pg = Pg::start(|config| config).await;
    let mut producing = pg.pool.begin().await.unwrap();
    pg.outbox
        .enqueue(&mut producing, &event("a", 1))
        .await
        .unwrap();
    let mut consuming = pg.pool.begin().await.unwrap();
    assert!(
        pg.inbox
            .process_once(&mut consuming, "reserve", Uuid::now_v7())
            .await
            .unwrap()
    );
    tokio::time::timeout(Duration::from_secs(10), async {
        pg.outbox.migrate().await.unwrap();
        pg.inbox.migrate().await.unwrap();
    })
    .await
    .expect("the start waited on the open transactions");
    producing.commit().await.unwrap();
    consuming.commit().await.unwrap();
    pg.finish().await;
}

/// Two tables of one new schema migrated at once (a relay's outbox and a
/// consumer's inbox, in two processes starting together) both start: each
/// made the schema under a lock of its own table's, and the second
/// `CREATE SCHEMA` failed on the first's row. Here the outbox's migration
/// holds the schema's lock with the schema made and not yet committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tables_migrated_at_once_make_their_schema_once() {
    let pool = pool().await;
    let schema = format!("outbox_test_{}", fastrand::u64(..));
    let mut outbox_migration = pool.begin().await.unwrap();
    for statement in [
        format!("SELECT pg_advisory_xact_lock(hashtext('palisade_outbox:{schema}'))"),
        format!("CREATE SCHEMA IF NOT EXISTS {schema}"),
    ] {
        sqlx::query(&statement)
            .execute(&mut *outbox_migration)
            .await
            .unwrap();
    }
    let inbox = PgInbox::new(pool.clone(), &format!("{schema}.inbox")).unwrap();
    let inbox_migration = tokio::spawn(async move { inbox.migrate().await });
    seen_waiting(&pool, &schema, "").await;
    outbox_migration.commit().await.unwrap();
    inbox_migration.await.unwrap().unwrap();
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&pool)
        .await
        .unwrap();
}

/// Returns once a statement naming `schema` and holding `words` waits on
/// a lock.
async fn seen_waiting(pool: &PgPool, schema: &str, words: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE wait_event_type = 'Lock' AND strpos(query, $1) > 0 AND strpos(query, $2) > 0",
        )
        .bind(schema)
        .bind(words)
        .fetch_one(pool)
        .await
        .unwrap();
        if waiting > 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no statement on {schema} holding {words:?} waited"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether `schema`'s index `name` is there and valid (`None`: missing).
async fn index_valid(pool: &PgPool, schema: &str, name: &str) -> Option<bool> {
    sqlx::query_scalar(
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
    )
    .bind(schema)
    .bind(name)
    .fetch_optional(pool)
    .await
    .unwrap()
}

/// Returns once `schema`'s index `name` is built and valid.
async fn built(pool: &PgPool, schema: &str, name: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while index_valid(pool, schema, name).await != Some(true) {
        assert!(
            std::time::Instant::now() < deadline,
            "{schema}.{name} was never built"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A table made by an earlier version gains the index it lacks while
/// writers go on: the index was built in the migration's transaction,
/// whose share lock on the table waited for the transactions writing it
/// and held up every write after it until the build ended. The start
/// does not wait for the build either: it waits for every older
/// transaction in the database, one of which may be waiting on the
/// starting process (a lock it holds while it migrates).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_a_table_lacks_is_built_while_writers_and_the_start_go_on() {
    let pg = Pg::start(|config| config).await;
    let schema = pg.schema.clone();
    let ready = pg.without_index("outbox_ready").await;
    let mut writing = pg.pool.begin().await.unwrap();
    pg.outbox
        .enqueue(&mut writing, &event("a", 1))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), pg.outbox.migrate())
        .await
        .expect("the start waited on the index's build")
        .unwrap();
    seen_waiting(&pg.pool, &schema, "INDEX").await;
    tokio::time::timeout(Duration::from_secs(30), pg.place(&[event("b", 1)], true))
        .await
        .expect("a write waited on the index's build");
    writing.commit().await.unwrap();
    built(&pg.pool, &schema, &ready).await;
    pg.finish().await;
}

/// Adding a column waits on the transactions using the table, and every
/// statement on the table waits behind it: the migration gives way and
/// tries again, so writers go on while a long transaction reads the
/// table (they all waited for it to end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_column_gives_way_to_writers() {
    let pg = Pg::start(|config| config).await;
    let schema = pg.schema.clone();
    sqlx::query(&format!("ALTER TABLE {schema}.outbox DROP COLUMN claim_id"))
        .execute(&pg.pool)
        .await
        .unwrap();
    let mut reading = pg.pool.begin().await.unwrap();
    sqlx::query(&format!("SELECT count(*) FROM {schema}.outbox"))
        .execute(&mut *reading)
        .await
        .unwrap();
    let outbox = pg.outbox.clone();
    let migration = tokio::spawn(async move { outbox.migrate().await });
    seen_waiting(&pg.pool, &schema, "ADD COLUMN").await;
    tokio::time::timeout(Duration::from_secs(30), pg.place(&[event("b", 1)], true))
        .await
        .expect("a write waited on the migration");
    reading.commit().await.unwrap();
    migration.await.unwrap().unwrap();
    let relay = Relay::new(pg.outbox.clone(), MemoryBroker::new(1));
    assert_eq!(relay.run_once().await.unwrap().published, 1);
    pg.finish().await;
}

/// An index whose build was cut off (a process stopped mid-build leaves
/// it invalid: PostgreSQL keeps it up to date but never reads it) is
/// built again; it was taken for there, and never used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_build_cut_off_is_built_again() {
    let pg = Pg::start(|config| config).await;
    let schema = pg.schema.clone();
    let ready = format!("{schema}_outbox_ready");
    sqlx::query(&format!(
        "UPDATE pg_index SET indisvalid = false WHERE indexrelid = '{schema}.{ready}'::regclass"
    ))
    .execute(&pg.pool)
    .await
    .unwrap();
    pg.outbox.migrate().await.unwrap();
    built(&pg.pool, &schema, &ready).await;
    pg.finish().await;
}

/// Processes starting together on a table made before all start, and the
/// index it lacked is built.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn processes_upgrading_one_table_together_all_start() {
    let pg = Pg::start(|config| config).await;
    let schema = pg.schema.clone();
    let ready = pg.without_index("outbox_ready").await;
    let mut starts = Vec::new();
    for _ in 0..4 {
        let outbox = PgOutbox::new(
            pool().await,
            OutboxConfig::new(&format!("{schema}.outbox")).unwrap(),
        );
        starts.push(tokio::spawn(async move { outbox.migrate().await }));
    }
    for start in starts {
        start.await.unwrap().unwrap();
    }
    built(&pg.pool, &schema, &ready).await;
    pg.finish().await;
}

/// An inbox made by an earlier version gains the index it lacks while
/// consumers go on recording what they processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_an_inbox_lacks_is_built_while_consumers_record() {
    let pg = Pg::start(|config| config).await;
    let schema = pg.schema.clone();
    let index = pg.without_index("inbox_consumer_processed").await;
    let mut consuming = pg.pool.begin().await.unwrap();
    assert!(
        pg.inbox
            .process_once(&mut consuming, "reserve", Uuid::now_v7())
            .await
            .unwrap()
    );
    let inbox = pg.inbox.clone();
    let migration = tokio::spawn(async move { inbox.migrate().await });
    seen_waiting(&pg.pool, &schema, "INDEX").await;
    tokio::time::timeout(
        Duration::from_secs(30),
        pg.process_once("ship", Uuid::now_v7(), true),
    )
    .await
    .expect("a consumer waited on the index's build");
    consuming.commit().await.unwrap();
    migration.await.unwrap().unwrap();
    built(&pg.pool, &schema, &index).await;
    pg.finish().await;
}

/// A table whose name makes PostgreSQL's names longer than its 63 bytes
/// works: the `NOTIFY` channel was refused as too long (every write
/// failed), and its indexes' names, cut to one, made only the first; an
/// inbox's table of hand-back counts, its name cut to the inbox's own,
/// was the inbox.
#[tokio::test]
async fn a_table_with_a_long_name_takes_writes_and_has_every_index() {
    let schema = format!("outbox_test_long_{}", fastrand::u64(..));
    let pool = pool().await;
    let table = format!("{schema}.{}", "o".repeat(40));
    let outbox = PgOutbox::new(pool.clone(), OutboxConfig::new(&table).unwrap());
    outbox.migrate().await.unwrap();
    outbox.migrate().await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    outbox.enqueue(&mut tx, &event("a", 1)).await.unwrap();
    tx.commit().await.unwrap();
    let indexes: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_indexes WHERE schemaname = $1 AND indexdef NOT LIKE '%UNIQUE%'",
    )
    .bind(&schema)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(indexes, 4, "unsent, ready, sent and blocked");
    let inbox = PgInbox::new(pool.clone(), &format!("{schema}.{}", "i".repeat(63))).unwrap();
    inbox.migrate().await.unwrap();
    inbox.hand_back("reserve", &["m-1"]).await.unwrap();
    assert_eq!(
        inbox.handed_back("reserve", &["m-1"]).await.unwrap(),
        std::collections::HashMap::from([("m-1".to_owned(), 1)])
    );
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&pool)
        .await
        .unwrap();
}
