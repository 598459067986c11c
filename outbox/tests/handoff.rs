//! The in-process transport whose acknowledgement means applied: a publish
//! completes only once its consumers settled the event, and what a consumer
//! never applied stays in the outbox to be published again.
#![cfg(feature = "sqlite")]

use std::time::Duration;

use futures_util::FutureExt;
use palisade_outbox::{
    BoxError, Delivery, Event, Handled, Handler, HandoffBroker, MemoryConsumer, OutboxConfig,
    OutboxStore, Published, Publisher, Relay, SqliteInbox, SqliteOutbox,
};
use sqlx::{SqliteConnection, SqlitePool};
use tokio::sync::watch;

/// An outbox (unordered, so a batch holds every event) and its inbox in
/// one in-memory database, with `events` enqueued, and a table of what
/// was applied.
async fn outbox_with(events: &[Event]) -> (SqlitePool, SqliteOutbox, SqliteInbox) {
    outbox_of(unordered(), events).await
}

/// Unordered, each retry after a millisecond.
fn unordered() -> OutboxConfig {
    OutboxConfig::default()
        .ordered(false)
        .backoff(Duration::from_millis(1), Duration::from_millis(1))
}

/// [`outbox_with`] under `config`.
async fn outbox_of(
    config: OutboxConfig,
    events: &[Event],
) -> (SqlitePool, SqliteOutbox, SqliteInbox) {
    let pool = SqlitePool::connect("sqlite::memory:").await.unwrap();
    let outbox = SqliteOutbox::new(pool.clone(), config);
    outbox.migrate().await.unwrap();
    let inbox = SqliteInbox::new(pool.clone(), "inbox").unwrap();
    inbox.migrate().await.unwrap();
    Apply::create_table(&pool).await;
    let mut tx = pool.begin().await.unwrap();
    outbox.enqueue_all(&mut tx, events).await.unwrap();
    tx.commit().await.unwrap();
    (pool, outbox, inbox)
}

fn events(n: u8) -> Vec<Event> {
    (0..n)
        .map(|n| Event::new("order", format!("o-{n}"), "OrderCreated", vec![n]))
        .collect()
}

/// Records each event it applies; tells `applied` how many it has.
#[derive(Debug)]
struct Apply {
    applied: watch::Sender<usize>,
}

impl Apply {
    /// The table of what was applied, in `pool`.
    async fn create_table(pool: &SqlitePool) {
        sqlx::query("CREATE TABLE applied (id TEXT)")
            .execute(pool)
            .await
            .unwrap();
    }

    /// Records `delivery` as applied, in `tx`.
    async fn record(tx: &mut SqliteConnection, delivery: &Delivery) -> Result<Handled, BoxError> {
        sqlx::query("INSERT INTO applied (id) VALUES ($1)")
            .bind(&delivery.envelope.id)
            .execute(tx)
            .await?;
        Ok(Handled::Applied)
    }
}

impl Handler<SqliteConnection> for Apply {
    async fn handle(
        &self,
        tx: &mut SqliteConnection,
        delivery: &Delivery,
    ) -> Result<Handled, BoxError> {
        Self::record(tx, delivery).await
    }

    fn committed(&self, _: &Delivery) {
        self.applied.send_modify(|applied| *applied += 1);
    }
}

#[tokio::test]
async fn a_publish_is_acknowledged_only_once_the_consumer_settled_it() {
    let (_pool, outbox, _) = outbox_with(&events(1)).await;
    let message = outbox.claim().await.unwrap().remove(0);
    let broker = HandoffBroker::new(4);
    let mut subscription = broker.subscribe();

    let mut publish = Box::pin(broker.publish(&message));
    assert!(
        publish.as_mut().now_or_never().is_none(),
        "queued, not yet applied: no acknowledgement"
    );
    let handoff = subscription.recv().await.unwrap();
    assert_eq!(handoff.message().event.id(), message.event.id());
    assert!(publish.as_mut().now_or_never().is_none());
    handoff.settle();
    assert_eq!(publish.await.unwrap(), Published::Stored);
}

#[tokio::test]
async fn an_ended_subscription_fails_the_publishes_it_would_take() {
    let (_pool, outbox, _) = outbox_with(&[
        Event::new("order", "o-1", "OrderCreated", b"{}".to_vec()),
        Event::new("order", "o-1", "OrderConfirmed", b"{}".to_vec()),
    ])
    .await;
    let claimed = outbox.claim().await.unwrap();
    let broker = HandoffBroker::new(4);
    drop(broker.subscribe_to(["OrderCreated"]));

    let error = broker.publish(&claimed[0]).await.unwrap_err();
    assert!(error.is_unavailable(), "{error}");
    assert_eq!(
        broker.publish(&claimed[1]).await.unwrap(),
        Published::Stored,
        "no subscriber takes it: nothing to wait for"
    );
}

/// A subscription to the same event types takes the place of one that
/// ended (its consumer started again): what the ended one held back
/// reaches the new one. The ended one stayed registered for good, and
/// every publish of its types failed, however often the consumer started
/// again, until the process did.
#[tokio::test]
async fn a_consumer_subscribing_again_takes_the_place_of_its_ended_subscription() {
    let (_pool, outbox, _) = outbox_with(&events(1)).await;
    let message = outbox.claim().await.unwrap().remove(0);
    let broker = HandoffBroker::new(4);
    let other = broker.subscribe_to(["OrderConfirmed"]);
    drop(other);
    drop(broker.subscribe_to(["OrderCreated", "OrderShipped"]));
    let error = broker.publish(&message).await.unwrap_err();
    assert!(error.is_unavailable(), "{error}");

    let mut again = broker.subscribe_to(["OrderShipped", "OrderCreated"]);
    let mut publish = Box::pin(broker.publish(&message));
    assert!(publish.as_mut().now_or_never().is_none(), "handed over");
    again.recv().await.unwrap().settle();
    assert_eq!(publish.await.unwrap(), Published::Stored);
}

#[tokio::test]
async fn a_consumer_that_stops_with_events_queued_leaves_them_in_the_outbox() {
    let (pool, outbox, _) = outbox_with(&events(5)).await;
    let broker = HandoffBroker::new(16);
    let mut subscription = broker.subscribe();
    let relay = Relay::new(outbox.clone(), broker.clone());
    let batch = tokio::spawn(async move { relay.run_once().await.unwrap() });

    // The consumer applies the first event and stops with four queued.
    let first = subscription.recv().await.unwrap();
    first.settle();
    let mut queued = Vec::new();
    while queued.len() < 4 {
        queued.push(subscription.recv().await.unwrap());
    }
    drop((queued, subscription));

    let report = batch.await.unwrap();
    assert_eq!((report.claimed, report.published), (5, 1));
    let pending = outbox.backlog().await.unwrap().pending;
    assert_eq!(pending, 4, "handed back, not marked sent");
    drop(pool);
}

/// A consumer stopped while events wait for it, then a new process (a new
/// transport and consumer on the same database): every event is applied,
/// each once, and the outbox drains.
#[tokio::test]
async fn every_event_is_applied_once_across_a_stop_and_a_restart() {
    const EVENTS: u8 = 40;
    let (pool, outbox, inbox) = outbox_with(&events(EVENTS)).await;

    let (applied, mut applied_rx) = watch::channel(0);
    let (stop, stopped) = watch::channel(false);
    let broker = HandoffBroker::new(64);
    let subscription = broker.subscribe();
    let consumer = MemoryConsumer::new("recorder", inbox.clone(), Apply { applied }).batch(1);
    let consuming = tokio::spawn(async move {
        let mut stopped = stopped;
        consumer
            .run(subscription, async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            })
            .await;
    });
    let relay = Relay::new(outbox.clone(), broker);
    let batch = tokio::spawn(async move { relay.run_once().await.unwrap() });
    applied_rx.wait_for(|applied| *applied >= 3).await.unwrap();
    stop.send(true).unwrap();
    consuming.await.unwrap();
    let report = batch.await.unwrap();
    assert!(
        report.published < usize::from(EVENTS),
        "the consumer stopped with events queued: {report:?}"
    );
    let left = outbox.backlog().await.unwrap().pending;
    assert_eq!(
        left,
        u64::from(EVENTS) - u64::try_from(report.published).unwrap()
    );

    // Restarted: a new transport and consumer, the same outbox and inbox.
    let (applied, _) = watch::channel(0);
    let broker = HandoffBroker::new(64);
    let subscription = broker.subscribe();
    let consumer = MemoryConsumer::new("recorder", inbox, Apply { applied });
    let relay = Relay::new(outbox.clone(), broker.clone());
    let consuming = tokio::spawn(async move {
        consumer.run(subscription, std::future::pending()).await;
        consumer
    });
    for _ in 0..1000 {
        relay.run_once().await.unwrap();
        if outbox.backlog().await.unwrap().pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(outbox.backlog().await.unwrap().pending, 0);
    drop((relay, broker));
    consuming.await.unwrap();

    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT id) FROM applied")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((rows, distinct), (i64::from(EVENTS), i64::from(EVENTS)));
}

/// Applies every event but one, which it always fails.
#[derive(Debug)]
struct FailsOne {
    poison: String,
}

impl Handler<SqliteConnection> for FailsOne {
    async fn handle(
        &self,
        tx: &mut SqliteConnection,
        delivery: &Delivery,
    ) -> Result<Handled, BoxError> {
        if delivery.payload.as_ref() == self.poison.as_bytes() {
            return Err("the handler cannot apply this one".into());
        }
        Apply::record(tx, delivery).await
    }
}

/// A consumer that gives up on the events whose payload is `poison` after
/// two tries, `retry` apart.
fn giving_up_on_poison(
    inbox: SqliteInbox,
    retry: Duration,
) -> MemoryConsumer<SqliteInbox, FailsOne> {
    MemoryConsumer::new(
        "recorder",
        inbox,
        FailsOne {
            poison: "poison".to_owned(),
        },
    )
    .max_deliver(2)
    .retry_delay(retry, retry)
}

/// A consumer that gives up on an event hands it back to the outbox as
/// rejected: it spends the event's attempts there, and after its last the
/// event is dead in the outbox, kept for an operator, not marked sent.
#[tokio::test]
async fn an_event_its_consumer_gives_up_on_is_dead_in_the_outbox_not_sent() {
    let events: Vec<Event> = ["a", "poison", "b"]
        .into_iter()
        .map(|payload| {
            Event::new(
                "order",
                payload,
                "OrderCreated",
                payload.as_bytes().to_vec(),
            )
        })
        .collect();
    let (pool, outbox, inbox) = outbox_of(unordered().max_attempts(2), &events).await;

    let broker = HandoffBroker::new(16);
    let subscription = broker.subscribe();
    let consumer = giving_up_on_poison(inbox, Duration::from_millis(1));
    let consuming = tokio::spawn(async move {
        consumer.run(subscription, std::future::pending()).await;
        consumer
    });
    let relay = Relay::new(outbox.clone(), broker.clone());
    for _ in 0..1000 {
        relay.run_once().await.unwrap();
        if outbox.backlog().await.unwrap().pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let backlog = outbox.backlog().await.unwrap();
    assert_eq!((backlog.pending, backlog.dead), (0, 1));
    let dead = outbox.dead_events(10).await.unwrap();
    assert_eq!(dead[0].aggregate_id, "poison");
    assert_eq!(dead[0].attempts, 2);
    let reason = dead[0].last_error.as_deref().unwrap_or_default();
    assert!(
        reason.contains("the handler cannot apply this one"),
        "{reason}"
    );
    drop((relay, broker));
    let consumer = consuming.await.unwrap();
    assert_eq!(
        consumer.stats().dead_lettered,
        2,
        "given up on at each attempt"
    );
    let applied: Vec<String> = sqlx::query_scalar("SELECT id FROM applied")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(applied.len(), 2, "the others applied, once each");
}

/// A consumer's rejections reach the relay one by one, each as soon as it
/// gives up, not together at the end of its batch: the relay waits for an
/// acknowledgement only until its lease ends, and one that comes later is
/// taken for an outage (no attempt spent). Twelve poison events, each
/// given up on after 200 ms of tries in place: the first rejections come
/// well within a 2 s lease, the batch's end after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumers_rejections_reach_the_relay_within_its_lease() {
    let events: Vec<Event> = (0..12)
        .map(|n| {
            Event::new(
                "order",
                format!("o-{n}"),
                "OrderCreated",
                b"poison".to_vec(),
            )
        })
        .collect();
    let config = unordered().max_attempts(1).lease(Duration::from_secs(2));
    let (_pool, outbox, inbox) = outbox_of(config, &events).await;
    let broker = HandoffBroker::new(16);
    let subscription = broker.subscribe();
    let consumer = giving_up_on_poison(inbox, Duration::from_millis(200));
    tokio::spawn(async move { consumer.run(subscription, std::future::pending()).await });
    let relay = Relay::new(outbox.clone(), broker.clone());
    // Each batch takes a lease (2 s) at most; those whose rejection came
    // late wait out the relay's outage backoff before they are claimed.
    // (A bound for a failure only: it takes a few seconds.)
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        if relay.run_once().await.unwrap().claimed == 0 {
            if outbox.backlog().await.unwrap().pending == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let backlog = outbox.backlog().await.unwrap();
    assert_eq!(
        (backlog.pending, backlog.dead),
        (0, 12),
        "every poison event dead"
    );
}
