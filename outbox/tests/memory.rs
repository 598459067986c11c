//! The in-process broker and consumer: nothing dropped (backpressure
//! instead), duplicates acknowledged, each message applied once through a
//! SQLite inbox, failures retried and then given up on.
#![cfg(feature = "sqlite")]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use palisade_outbox::{
    BoxError, ConsumerStats, Delivery, Event, Handled, Handler, MemoryBroker, MemoryConsumer,
    Message, OutboxConfig, PublishErrorKind, Published, Publisher, Relay, SqliteInbox,
    SqliteOutbox, Transient,
};
use sqlx::{SqliteConnection, SqlitePool};
use tokio::sync::mpsc;

/// `n` events of distinct types `T0`, `T1`… as the relay hands them out.
async fn messages(events: Vec<Event>) -> (SqlitePool, Vec<Message>) {
    let pool = SqlitePool::connect("sqlite::memory:").await.unwrap();
    let outbox = SqliteOutbox::new(pool.clone(), OutboxConfig::default().ordered(false));
    outbox.migrate().await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    outbox.enqueue_all(&mut tx, &events).await.unwrap();
    tx.commit().await.unwrap();
    let broker = MemoryBroker::new(events.len());
    let mut subscription = broker.subscribe();
    Relay::new(outbox, broker).run_once().await.unwrap();
    let mut got = Vec::new();
    while let Ok(message) = subscription.try_recv() {
        got.push(message);
    }
    (pool, got)
}

/// A publish given up while one subscriber's queue was full (the relay's
/// lease ended) is not a duplicate the next time: the subscriber that had
/// no room gets the event then, rather than never.
#[tokio::test]
async fn a_publish_given_up_half_way_is_delivered_again_to_all() {
    let events: Vec<Event> = (0..2)
        .map(|n| Event::new("order", format!("o-{n}"), "Placed", vec![n]))
        .collect();
    let (_, source) = messages(events).await;
    let broker = MemoryBroker::new(1);
    let (mut quick, mut slow) = (broker.subscribe(), broker.subscribe());
    assert_eq!(broker.publish(&source[0]).await.unwrap(), Published::Stored);
    assert_eq!(quick.recv().await.unwrap().event.payload(), [0]);
    // The slow subscriber's queue is full: the quick one takes the second
    // event, then the publish is given up.
    let mut second = Box::pin(broker.publish(&source[1]));
    assert!(second.as_mut().now_or_never().is_none(), "waits for room");
    drop(second);
    assert_eq!(quick.recv().await.unwrap().event.payload(), [1]);
    assert_eq!(slow.recv().await.unwrap().event.payload(), [0]);
    assert_eq!(
        broker.publish(&source[1]).await.unwrap(),
        Published::Stored,
        "not a duplicate: not every subscriber took it"
    );
    assert_eq!(slow.recv().await.unwrap().event.payload(), [1]);
    // The quick one gets it twice, as after any lost acknowledgement.
    assert_eq!(quick.recv().await.unwrap().event.payload(), [1]);
}

/// A second publish of an event whose first still waits for room (a relay
/// that reclaimed it after the first one's lease ended) is no duplicate:
/// the first may yet be given up. It was acknowledged as one, the relay
/// marked the event sent, and the first, given up, left the subscriber
/// without the event for good.
#[tokio::test]
async fn a_publish_racing_one_still_waiting_for_room_is_not_a_duplicate() {
    let events: Vec<Event> = (0..2)
        .map(|n| Event::new("order", format!("o-{n}"), "Placed", vec![n]))
        .collect();
    let (_, source) = messages(events).await;
    let broker = MemoryBroker::new(1);
    let mut slow = broker.subscribe();
    assert_eq!(broker.publish(&source[0]).await.unwrap(), Published::Stored);
    let mut first = Box::pin(broker.publish(&source[1]));
    assert!(first.as_mut().now_or_never().is_none(), "waits for room");
    let second = broker
        .publish(&source[1])
        .await
        .expect_err("not acknowledged while the first may be given up");
    assert_eq!(second.kind(), PublishErrorKind::Full, "{second}");
    drop(first);
    assert_eq!(slow.recv().await.unwrap().event.payload(), [0]);
    assert_eq!(broker.publish(&source[1]).await.unwrap(), Published::Stored);
    assert_eq!(slow.recv().await.unwrap().event.payload(), [1]);
}

#[tokio::test]
async fn a_full_subscriber_holds_publishes_back_and_loses_nothing() {
    let events: Vec<Event> = (0..3)
        .map(|n| Event::new("order", format!("o-{n}"), "Placed", vec![n]))
        .collect();
    let (_, source) = messages(events).await;
    let broker = MemoryBroker::new(2);
    let mut subscriber = broker.subscribe();
    for message in &source[..2] {
        assert_eq!(broker.publish(message).await.unwrap(), Published::Stored);
    }
    let mut third = Box::pin(broker.publish(&source[2]));
    assert!(
        third.as_mut().now_or_never().is_none(),
        "the queue is full: the publish waits"
    );
    assert_eq!(subscriber.recv().await.unwrap().event.payload(), [0]);
    assert_eq!(third.await.unwrap(), Published::Stored);
    assert_eq!(subscriber.recv().await.unwrap().event.payload(), [1]);
    assert_eq!(subscriber.recv().await.unwrap().event.payload(), [2]);
    assert_eq!(
        broker.publish(&source[2]).await.unwrap(),
        Published::Duplicate
    );
    assert!(
        subscriber.try_recv().is_err(),
        "a duplicate is not delivered"
    );
    // A dropped subscriber holds nothing back. (The first event is out of
    // the two-id duplicate window by now, so it is stored again.)
    drop(subscriber);
    assert_eq!(
        broker
            .publish(&source[0])
            .now_or_never()
            .map(Result::unwrap),
        Some(Published::Stored)
    );
}

/// Records applied payloads; `Flaky` fails twice, `Bad` always, `Panics`
/// panics, `Hangs` never ends.
#[derive(Debug, Default)]
struct Record {
    tries: Mutex<HashMap<String, u32>>,
}

impl Handler<SqliteConnection> for Record {
    async fn handle(
        &self,
        tx: &mut SqliteConnection,
        delivery: &Delivery,
    ) -> Result<Handled, BoxError> {
        let kind = delivery.envelope.event_type.clone();
        let tries = {
            let mut tries = self.tries.lock().unwrap();
            let n = tries.entry(kind.clone()).or_default();
            *n += 1;
            *n
        };
        assert!(kind != "Panics", "{kind} panics (try {tries})");
        if kind == "Hangs" {
            std::future::pending::<()>().await;
        }
        if kind == "Bad" || (kind == "Flaky" && tries <= 2) {
            return Err(format!("{kind} fails (try {tries})").into());
        }
        sqlx::query("INSERT INTO applied (kind) VALUES ($1)")
            .bind(kind)
            .execute(tx)
            .await?;
        Ok(Handled::Applied)
    }
}

#[tokio::test]
async fn the_memory_consumer_applies_once_retries_and_gives_up() {
    // Every message twice, as a redelivery would bring it.
    let (stats, applied) = recorded(&["Good", "Flaky", "Bad", "Skipped"], 2, |consumer| {
        consumer.only(["Good", "Flaky", "Bad"]).max_deliver(3)
    })
    .await;
    assert_eq!(
        stats,
        ConsumerStats {
            applied: 2,
            duplicates: 2,
            ignored: 0,
            // Flaky twice; Bad twice, on each of its two deliveries.
            retried: 6,
            dead_lettered: 2,
            handed_on: 0,
        }
    );
    assert_eq!(applied, ["Good", "Flaky"]);
}

/// A handler that panics fails its delivery, which is tried again and
/// given up on as any other; the consumer goes on with the next (the
/// panic ended the consumer: nothing after it was ever applied).
#[tokio::test]
async fn a_handler_that_panics_fails_its_delivery_and_the_consumer_goes_on() {
    let (stats, applied) =
        recorded(&["Panics", "Good"], 1, |consumer| consumer.max_deliver(2)).await;
    assert_eq!(
        (stats.applied, stats.retried, stats.dead_lettered),
        (1, 1, 1)
    );
    assert_eq!(applied, ["Good"]);
}

/// A handler that hangs fails its delivery at the handler timeout, and
/// is tried again and given up on as any other; the consumer goes on with
/// the next (it waited for ever: nothing after it was applied).
#[tokio::test]
async fn a_handler_that_hangs_fails_its_delivery_and_the_consumer_goes_on() {
    let (stats, applied) = recorded(&["Hangs", "Good"], 1, |consumer| {
        consumer
            .max_deliver(2)
            .handler_timeout(Duration::from_secs(1))
    })
    .await;
    assert_eq!(
        (stats.applied, stats.retried, stats.dead_lettered),
        (1, 1, 1)
    );
    assert_eq!(applied, ["Good"]);
}

/// Events of `kinds` on one order, all of them `rounds` times over,
/// through a [`Record`]ing consumer set up by `configure` (retries after a
/// millisecond or two): its stats, and the kinds it applied in order.
async fn recorded(
    kinds: &[&str],
    rounds: usize,
    configure: impl FnOnce(MemoryConsumer<SqliteInbox, Record>) -> MemoryConsumer<SqliteInbox, Record>,
) -> (ConsumerStats, Vec<String>) {
    let events = kinds
        .iter()
        .map(|kind| Event::new("order", "o-1", *kind, b"{}".to_vec()))
        .collect();
    let (pool, source) = messages(events).await;
    sqlx::query("CREATE TABLE applied (kind TEXT)")
        .execute(&pool)
        .await
        .unwrap();
    let inbox = SqliteInbox::new(pool.clone(), "inbox").unwrap();
    inbox.migrate().await.unwrap();
    let consumer = configure(
        MemoryConsumer::new("recorder", inbox, Record::default())
            .retry_delay(Duration::from_millis(1), Duration::from_millis(2)),
    );
    let (sender, receiver) = mpsc::channel(source.len() * rounds);
    for message in std::iter::repeat_n(&source, rounds).flatten() {
        sender.send(message.clone()).await.unwrap();
    }
    drop(sender);
    consumer.run(receiver, std::future::pending()).await;
    let applied = sqlx::query_scalar("SELECT kind FROM applied ORDER BY rowid")
        .fetch_all(&pool)
        .await
        .unwrap();
    (consumer.stats(), applied)
}

/// Prepares each transaction by writing a row in it, counting its calls;
/// `Bad` fails.
#[derive(Debug, Default)]
struct Prepared {
    calls: std::sync::atomic::AtomicUsize,
}

impl Handler<SqliteConnection> for Prepared {
    async fn prepare(&self, tx: &mut SqliteConnection) -> Result<(), BoxError> {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        sqlx::query("INSERT INTO prepared DEFAULT VALUES")
            .execute(tx)
            .await?;
        Ok(())
    }

    async fn handle(
        &self,
        tx: &mut SqliteConnection,
        delivery: &Delivery,
    ) -> Result<Handled, BoxError> {
        let kind = delivery.envelope.event_type.clone();
        if kind == "Bad" {
            return Err("Bad fails".into());
        }
        sqlx::query("INSERT INTO applied (kind) VALUES ($1)")
            .bind(kind)
            .execute(tx)
            .await?;
        Ok(Handled::Applied)
    }
}

#[tokio::test]
async fn each_transaction_is_prepared_once_and_only_for_new_deliveries() {
    let events = ["A", "Bad", "C"]
        .iter()
        .map(|kind| Event::new("order", format!("o-{kind}"), *kind, b"{}".to_vec()))
        .collect();
    let (pool, source) = messages(events).await;
    for table in [
        "CREATE TABLE applied (kind TEXT)",
        "CREATE TABLE prepared (n INTEGER)",
    ] {
        sqlx::query(table).execute(&pool).await.unwrap();
    }
    let inbox = SqliteInbox::new(pool.clone(), "inbox").unwrap();
    inbox.migrate().await.unwrap();
    let consumer = MemoryConsumer::new("prepared", inbox, Prepared::default()).max_deliver(1);
    let deliver = |messages: Vec<Message>| {
        let (sender, receiver) = mpsc::channel(16);
        for message in messages {
            sender.try_send(message).unwrap();
        }
        receiver
    };

    // One batch: A, then Bad fails and rolls back; A again without it
    // (prepared again), Bad given up on, then C in a transaction of its own.
    consumer
        .run(deliver(source.clone()), std::future::pending())
        .await;
    // Then A and C again: only duplicates, nothing to prepare.
    let again = vec![source[0].clone(), source[2].clone()];
    consumer.run(deliver(again), std::future::pending()).await;

    let stats = consumer.stats();
    assert_eq!(
        (stats.applied, stats.duplicates, stats.dead_lettered),
        (2, 2, 1)
    );
    let calls = consumer
        .handler()
        .calls
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(calls, 3, "the rolled-back transaction, A's and C's");
    let prepared: i64 = sqlx::query_scalar("SELECT count(*) FROM prepared")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(prepared, 2, "in the committed transactions, once each");
    let applied: Vec<String> = sqlx::query_scalar("SELECT kind FROM applied ORDER BY rowid")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(applied, ["A", "C"]);
}

/// Down for its first five tries: a dependency outage, not the message.
#[derive(Debug, Default)]
struct Outage {
    tries: Mutex<u32>,
}

impl Handler<SqliteConnection> for Outage {
    async fn handle(&self, _: &mut SqliteConnection, _: &Delivery) -> Result<Handled, BoxError> {
        let mut tries = self.tries.lock().unwrap();
        *tries += 1;
        if *tries <= 5 {
            return Err(Box::new(Transient::new("the card processor is down")));
        }
        Ok(Handled::Applied)
    }
}

#[tokio::test]
async fn a_transient_failure_is_retried_past_max_deliver() {
    let (pool, source) = messages(vec![Event::new("order", "o-1", "Paid", b"{}".to_vec())]).await;
    let inbox = SqliteInbox::new(pool, "inbox").unwrap();
    inbox.migrate().await.unwrap();
    let consumer = MemoryConsumer::new("payment", inbox, Outage::default())
        .max_deliver(2)
        .retry_delay(Duration::from_millis(1), Duration::from_millis(2));
    let (sender, receiver) = mpsc::channel(1);
    sender.send(source[0].clone()).await.unwrap();
    drop(sender);
    consumer.run(receiver, std::future::pending()).await;
    let stats = consumer.stats();
    assert_eq!(
        (stats.applied, stats.retried, stats.dead_lettered),
        (1, 5, 0)
    );
}

/// Down for good, and says when it was first tried.
#[derive(Debug)]
struct Down {
    tried: Arc<tokio::sync::Notify>,
}

impl Handler<SqliteConnection> for Down {
    async fn handle(&self, _: &mut SqliteConnection, _: &Delivery) -> Result<Handled, BoxError> {
        self.tried.notify_one();
        Err(Box::new(Transient::new("the card processor is down")))
    }
}

/// A consumer told to stop while a message waits to be tried again stops
/// (the message left unsettled, for its publisher to send again): it
/// waited out the delay and tried again, for ever for a transient
/// failure, and the embedded system's `stop` with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_stops_while_a_message_waits_to_be_tried_again() {
    let (pool, source) = messages(vec![Event::new("order", "o-1", "Paid", b"{}".to_vec())]).await;
    let inbox = SqliteInbox::new(pool, "inbox").unwrap();
    inbox.migrate().await.unwrap();
    let tried = Arc::new(tokio::sync::Notify::new());
    let down = Down {
        tried: tried.clone(),
    };
    let consumer = MemoryConsumer::new("payment", inbox, down)
        .retry_delay(Duration::from_secs(3600), Duration::from_secs(3600));
    let (sender, receiver) = mpsc::channel(1);
    sender.send(source[0].clone()).await.unwrap();
    let shutdown = async move { tried.notified().await };
    let stopped =
        tokio::time::timeout(Duration::from_secs(60), consumer.run(receiver, shutdown)).await;
    assert!(stopped.is_ok(), "stopped, not waiting to try again");
    let stats = consumer.stats();
    assert_eq!((stats.applied, stats.dead_lettered), (0, 0));
    drop(sender);
}

#[tokio::test]
async fn a_retried_message_holds_back_later_messages_of_its_aggregate() {
    let (_, applied) = recorded(&["Flaky", "Good"], 1, |consumer| consumer).await;
    assert_eq!(applied, ["Flaky", "Good"]);
}

/// Settings at their extremes: a consumer's batch of `usize::MAX` (its
/// buffer overflowed at once) and a broker's queues of `usize::MAX`
/// (tokio's channel refused them at `subscribe`) work.
#[tokio::test]
async fn the_largest_batch_and_queues_work() {
    let (_, applied) = recorded(&["A", "B"], 1, |consumer| consumer.batch(usize::MAX)).await;
    assert_eq!(applied, ["A", "B"]);
    let _subscription = MemoryBroker::new(usize::MAX).subscribe();
    let _handed_off = palisade_outbox::HandoffBroker::new(usize::MAX).subscribe();
}

/// While it runs, the consumer forgets its records older than it keeps
/// them (a day by default), from its start: the inbox grew for ever unless
/// its user forgot them by hand. Newer ones stay, as do the other
/// consumers' and all of a consumer keeping them for ever.
#[tokio::test]
async fn a_running_consumer_forgets_the_records_it_keeps_no_longer() {
    let pool = SqlitePool::connect("sqlite::memory:").await.unwrap();
    let inbox = SqliteInbox::new(pool.clone(), "inbox").unwrap();
    inbox.migrate().await.unwrap();
    let day_ms = 24 * 3_600 * 1_000;
    // Milliseconds since the Unix epoch. The oldest is older than any age
    // an inbox forgets at (a hundred years at most): only keeping them for
    // ever keeps it.
    sqlx::query(
        "INSERT INTO inbox (consumer, message_id, processed_at) VALUES \
         ('reserve', 'old', CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER) - $1), \
         ('reserve', 'new', CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER) - $2), \
         ('reserve', 'oldest', -10000000000000), ('other', 'others', -10000000000000)",
    )
    .bind(day_ms + 60_000)
    .bind(day_ms - 60_000)
    .execute(&pool)
    .await
    .unwrap();
    let kept = || async {
        sqlx::query_scalar::<_, String>("SELECT message_id FROM inbox ORDER BY message_id")
            .fetch_all(&pool)
            .await
            .unwrap()
    };

    let forever = MemoryConsumer::new("reserve", inbox.clone(), Record::default())
        .keep_records(Duration::MAX);
    let (_sender, receiver) = mpsc::channel::<Message>(1);
    let ran = tokio::time::timeout(
        Duration::from_millis(300),
        forever.run(receiver, std::future::pending()),
    )
    .await;
    assert!(ran.is_err(), "it runs until stopped");
    assert_eq!(
        kept().await,
        ["new", "old", "oldest", "others"],
        "kept for ever"
    );

    let consumer = MemoryConsumer::new("reserve", inbox, Record::default());
    let (_sender, receiver) = mpsc::channel::<Message>(1);
    let forgotten = async {
        while kept().await.len() > 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), consumer.run(receiver, forgotten))
        .await
        .expect("the records older than a day are forgotten at the start");
    assert_eq!(kept().await, ["new", "others"]);
}
