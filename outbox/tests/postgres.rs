//! The outbox on a real PostgreSQL (`DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`). Each test works in a fresh
//! schema.
#![cfg(feature = "postgres")]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use palisade_outbox::{
    Event, MemoryBroker, Message, OutboxConfig, OutboxStore, PgOutbox, PublishError, Published,
    Publisher, Relay,
};
use sqlx::PgPool;
use tokio::sync::broadcast;

async fn pool() -> PgPool {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(&url)
        .await
        .expect("a reachable PostgreSQL (run scripts/services)")
}

/// A fresh schema with an `orders` table and the outbox.
async fn outbox(config: impl FnOnce(OutboxConfig) -> OutboxConfig) -> (PgPool, PgOutbox, String) {
    let pool = pool().await;
    let schema = format!("outbox_test_{}", fastrand::u64(..));
    let outbox = PgOutbox::new(
        pool.clone(),
        config(OutboxConfig::new(&format!("{schema}.outbox")).unwrap()),
    );
    outbox.migrate().await.unwrap();
    sqlx::query(&format!(
        "CREATE TABLE {schema}.orders (id TEXT PRIMARY KEY)"
    ))
    .execute(&pool)
    .await
    .unwrap();
    (pool, outbox, schema)
}

async fn place(pool: &PgPool, outbox: &PgOutbox, schema: &str, events: &[Event], commit: bool) {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query(&format!("INSERT INTO {schema}.orders (id) VALUES ($1)"))
        .bind(format!("order-{}", fastrand::u64(..)))
        .execute(&mut *tx)
        .await
        .unwrap();
    outbox.enqueue_all(&mut tx, events).await.unwrap();
    if commit {
        tx.commit().await.unwrap();
    } else {
        tx.rollback().await.unwrap();
    }
}

/// Drops a test's schema once it passed.
async fn drop_schema(pool: &PgPool, schema: &str) {
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(pool)
        .await
        .unwrap();
}

fn event(aggregate: &str, n: u32) -> Event {
    Event::new(
        "order",
        aggregate,
        "OrderUpdated",
        n.to_string().into_bytes(),
    )
}

fn drain(subscriber: &mut broadcast::Receiver<Message>) -> Vec<Message> {
    let mut got = Vec::new();
    while let Ok(message) = subscriber.try_recv() {
        got.push(message);
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_exists_only_if_its_transaction_commits() {
    let (pool, outbox, schema) = outbox(|c| c).await;
    place(&pool, &outbox, &schema, &[event("a", 1)], false).await;
    assert_eq!(
        outbox.backlog().await.unwrap().pending,
        0,
        "rolled back: no event"
    );
    place(&pool, &outbox, &schema, &[event("a", 2)], true).await;
    assert_eq!(outbox.backlog().await.unwrap().pending, 1);

    let broker = MemoryBroker::new(100);
    let mut subscriber = broker.subscribe();
    let relay = Relay::new(outbox.clone(), broker);
    let report = relay.run_once().await.unwrap();
    assert_eq!((report.claimed, report.published), (1, 1));
    assert_eq!(relay.run_once().await.unwrap().claimed, 0, "published once");
    let got = drain(&mut subscriber);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].event.payload(), b"2");
    assert_eq!(outbox.backlog().await.unwrap().pending, 0);
    drop_schema(&pool, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_publish_each_event_once_in_aggregate_order() {
    let (pool, outbox, schema) = outbox(|c| c.batch_size(7)).await;
    for n in 0..40 {
        let events: Vec<Event> = ["a", "b", "c"]
            .iter()
            .map(|aggregate| event(aggregate, n))
            .collect();
        place(&pool, &outbox, &schema, &events, true).await;
    }
    let broker = MemoryBroker::new(1000);
    let mut subscriber = broker.subscribe();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let relays: Vec<_> = (0..2)
        .map(|_| {
            let relay = Relay::new(outbox.clone(), broker.clone());
            let mut stopped = stopped.clone();
            tokio::spawn(relay.run(async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            }))
        })
        .collect();
    let mut got = Vec::new();
    while got.len() < 120 {
        let message = tokio::time::timeout(Duration::from_secs(30), subscriber.recv())
            .await
            .expect("every event is published")
            .unwrap();
        got.push(message);
    }
    stop.send(true).unwrap();
    for relay in relays {
        relay.await.unwrap();
    }
    let ids: HashSet<_> = got.iter().map(|m| m.event.id()).collect();
    assert_eq!(ids.len(), 120, "no event published twice");
    let mut by_aggregate: HashMap<String, Vec<u32>> = HashMap::new();
    for message in &got {
        let n = std::str::from_utf8(message.event.payload())
            .unwrap()
            .parse()
            .unwrap();
        by_aggregate
            .entry(message.event.aggregate_id().to_owned())
            .or_default()
            .push(n);
    }
    for (aggregate, numbers) in by_aggregate {
        assert_eq!(
            numbers,
            (0..40).collect::<Vec<_>>(),
            "aggregate {aggregate} in order"
        );
    }
    drop_schema(&pool, &schema).await;
}

/// Fails every event of type `Poison` while `failing` is set.
#[derive(Clone)]
struct Poisoned {
    broker: MemoryBroker,
    failing: Arc<AtomicBool>,
}

impl Publisher for Poisoned {
    async fn publish(&self, message: &Message) -> Result<Published, PublishError> {
        if message.event.event_type() == "Poison" && self.failing.load(Ordering::SeqCst) {
            return Err(PublishError::new("the broker rejects this event"));
        }
        self.broker.publish(message).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_dies_alone_and_holds_only_its_aggregate() {
    let (pool, outbox, schema) = outbox(|c| {
        c.max_attempts(3)
            .backoff(Duration::from_millis(1), Duration::from_millis(5))
    })
    .await;
    let poison = Event::new("order", "a", "Poison", b"p".to_vec());
    let poison_id = poison.id();
    place(
        &pool,
        &outbox,
        &schema,
        &[event("a", 1), event("b", 1)],
        true,
    )
    .await;
    place(&pool, &outbox, &schema, &[poison, event("b", 2)], true).await;
    place(
        &pool,
        &outbox,
        &schema,
        &[event("a", 3), event("b", 3)],
        true,
    )
    .await;

    let broker = MemoryBroker::new(100);
    let mut subscriber = broker.subscribe();
    let failing = Arc::new(AtomicBool::new(true));
    let relay = Relay::new(
        outbox.clone(),
        Poisoned {
            broker,
            failing: failing.clone(),
        },
    );
    let mut dead = 0;
    for _ in 0..200 {
        dead += relay.run_once().await.unwrap().dead;
        if dead == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(dead, 1, "dead after its third attempt");
    let got: Vec<(String, String)> = drain(&mut subscriber)
        .iter()
        .map(|m| {
            (
                m.event.aggregate_id().to_owned(),
                String::from_utf8_lossy(m.event.payload()).into_owned(),
            )
        })
        .collect();
    let b: Vec<_> = got
        .iter()
        .filter(|(a, _)| a == "b")
        .map(|(_, p)| p.as_str())
        .collect();
    assert_eq!(b, ["1", "2", "3"], "the other aggregate was not held up");
    let a: Vec<_> = got
        .iter()
        .filter(|(a, _)| a == "a")
        .map(|(_, p)| p.as_str())
        .collect();
    assert_eq!(a, ["1"], "later events of the poisoned aggregate wait");
    let backlog = outbox.backlog().await.unwrap();
    assert_eq!((backlog.pending, backlog.dead), (1, 1));

    // An operator fixes the cause and requeues: the aggregate resumes in order.
    failing.store(false, Ordering::SeqCst);
    assert!(outbox.requeue(poison_id).await.unwrap());
    relay.run_once().await.unwrap();
    relay.run_once().await.unwrap();
    let resumed: Vec<String> = drain(&mut subscriber)
        .iter()
        .map(|m| String::from_utf8_lossy(m.event.payload()).into_owned())
        .collect();
    assert_eq!(resumed, ["p", "3"]);
    drop_schema(&pool, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_relays_claims_return_when_its_lease_ends() {
    let (pool, outbox, schema) = outbox(|c| c.lease(Duration::from_millis(300))).await;
    place(
        &pool,
        &outbox,
        &schema,
        &[event("a", 1), event("b", 1)],
        true,
    )
    .await;
    // A relay claims, then dies before publishing.
    assert_eq!(outbox.claim().await.unwrap().len(), 2);
    let relay = Relay::new(outbox.clone(), MemoryBroker::new(10));
    assert_eq!(relay.run_once().await.unwrap().claimed, 0, "still leased");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        relay.run_once().await.unwrap().published,
        2,
        "the lease ended"
    );
    drop_schema(&pool, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify_wakes_a_relay_that_would_poll_only_every_minute() {
    let (pool, outbox, schema) = outbox(|c| c.poll_interval(Duration::from_secs(60))).await;
    outbox.listen().await.unwrap();
    let broker = MemoryBroker::new(10);
    let mut subscriber = broker.subscribe();
    let relay = tokio::spawn(Relay::new(outbox.clone(), broker).run(std::future::pending()));
    // The relay is now waiting (nothing to do); a commit wakes it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    place(&pool, &outbox, &schema, &[event("a", 1)], true).await;
    let message = tokio::time::timeout(Duration::from_secs(30), subscriber.recv())
        .await
        .expect("woken long before the minute is up")
        .unwrap();
    assert_eq!(message.event.payload(), b"1");
    relay.abort();
    drop_schema(&pool, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sent_events_are_cleaned_up_in_bounded_batches() {
    let (pool, outbox, schema) = outbox(|c| c.retention(Duration::ZERO, 2)).await;
    let events: Vec<Event> = (0..5).map(|n| event(&format!("x{n}"), n)).collect();
    place(&pool, &outbox, &schema, &events, true).await;
    let relay = Relay::new(outbox.clone(), MemoryBroker::new(10));
    assert_eq!(relay.run_once().await.unwrap().published, 5);
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(outbox.clean_up().await.unwrap(), 2);
    assert_eq!(outbox.clean_up().await.unwrap(), 2);
    assert_eq!(outbox.clean_up().await.unwrap(), 1);
    assert_eq!(outbox.clean_up().await.unwrap(), 0);
    drop_schema(&pool, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbox_applies_each_message_once_with_its_effect() {
    let (pool, _, schema) = outbox(|c| c).await;
    let inbox = palisade_outbox::Inbox::new(pool.clone(), &format!("{schema}.inbox")).unwrap();
    inbox.migrate().await.unwrap();
    let message = uuid::Uuid::now_v7();
    // A first delivery whose effect fails: nothing is recorded.
    let mut tx = pool.begin().await.unwrap();
    assert!(
        inbox
            .process_once(&mut tx, "reserve", message)
            .await
            .unwrap()
    );
    tx.rollback().await.unwrap();
    // The redelivery applies it, once; later deliveries are skipped.
    let mut applied = 0;
    for _ in 0..3 {
        let mut tx = pool.begin().await.unwrap();
        if inbox
            .process_once(&mut tx, "reserve", message)
            .await
            .unwrap()
        {
            applied += 1;
        }
        tx.commit().await.unwrap();
    }
    assert_eq!(applied, 1);
    // Another consumer has its own record.
    let mut tx = pool.begin().await.unwrap();
    assert!(
        inbox
            .process_once(&mut tx, "notify", message)
            .await
            .unwrap()
    );
    tx.commit().await.unwrap();
    assert_eq!(
        inbox.forget_older_than(Duration::ZERO, 10).await.unwrap(),
        2
    );
    drop_schema(&pool, &schema).await;
}
