//! A broker that cannot take messages never kills an event: the relay hands
//! its events back with their attempts untouched for as long as the outage
//! lasts, a breaker in front of the publisher stops calling a broker that
//! is down, and the outage shows on the `broker_available` gauge (and is
//! logged once each way: `outage_log.rs`); a consumer's handler failing as
//! [`Transient`] spends none of its tries. (The same against a real NATS
//! server: `broker_down.rs`.)
#![cfg(all(feature = "sqlite", feature = "circuit-breaker", feature = "otel"))]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use palisade_circuit_breaker::{CircuitBreaker, Config, State};
use palisade_outbox::{
    BoxError, Delivery, Event, Handled, Handler, MemoryBroker, MemoryConsumer, Message,
    OutboxConfig, OutboxStore, PublishError, Published, Publisher, Relay, SqliteInbox,
    SqliteOutbox, Transient,
};
use palisade_testkit::MetricsProbe;
use sqlx::{SqliteConnection, SqlitePool};

/// A broker that is unavailable while `down` is set, counting the calls
/// that reach it.
#[derive(Clone)]
struct Switched {
    broker: MemoryBroker,
    down: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
}

impl Switched {
    fn new(broker: MemoryBroker) -> Self {
        Self {
            broker,
            down: Arc::new(AtomicBool::new(true)),
            calls: Arc::default(),
        }
    }
}

impl Publisher for Switched {
    async fn publish(&self, message: &Message) -> Result<Published, PublishError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(PublishError::unavailable("no responders"));
        }
        self.broker.publish(message).await
    }
}

/// A migrated SQLite outbox (one in-memory database) with a short ladder:
/// two attempts, 1 ms apart.
async fn outbox() -> (SqlitePool, SqliteOutbox) {
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect("sqlite::memory:")
        .await
        .unwrap();
    let config = OutboxConfig::new("outbox")
        .unwrap()
        .max_attempts(2)
        .backoff(Duration::from_millis(1), Duration::from_millis(1));
    let outbox = SqliteOutbox::new(pool.clone(), config);
    outbox.migrate().await.unwrap();
    (pool, outbox)
}

async fn place(pool: &SqlitePool, outbox: &SqliteOutbox, events: &[Event]) {
    let mut tx = pool.begin().await.unwrap();
    outbox.enqueue_all(&mut tx, events).await.unwrap();
    tx.commit().await.unwrap();
}

fn event(aggregate: &str) -> Event {
    Event::new("order", aggregate, "OrderCreated", b"{}".to_vec())
}

/// The attempts spent by every event still in the outbox.
async fn attempts(pool: &SqlitePool) -> Vec<i64> {
    sqlx::query_scalar("SELECT attempts FROM outbox WHERE status <> 'sent'")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_broker_spends_no_attempt_however_long_it_lasts() {
    let (pool, outbox) = outbox().await;
    place(&pool, &outbox, &[event("a"), event("b")]).await;
    let broker = MemoryBroker::new(10);
    let mut subscriber = broker.subscribe();
    let publisher = Switched::new(broker);
    let probe = MetricsProbe::default();
    let relay = Relay::new(outbox.clone(), publisher.clone())
        .outage_backoff(Duration::from_millis(1), Duration::from_millis(2))
        .instrument(&probe.meter(), "orders");

    // Ten times the events' two attempts, each found the broker down.
    let mut unavailable = 0;
    for _ in 0..10_000 {
        if unavailable >= 40 {
            break;
        }
        let report = relay.run_once().await.unwrap();
        assert_eq!((report.failed, report.dead), (0, 0), "{report:?}");
        unavailable += report.unavailable;
        tokio::task::yield_now().await;
    }
    assert!(unavailable >= 40, "the relay stopped trying: {unavailable}");
    assert_eq!(attempts(&pool).await, [0, 0], "no attempt spent");
    assert_eq!(outbox.backlog().await.unwrap().dead, 0);
    let label = || vec!["relay=orders".to_owned()];
    assert_eq!(
        probe.points("palisade.outbox.broker_available"),
        [(label(), 0)]
    );

    publisher.down.store(false, Ordering::SeqCst);
    let mut published = 0;
    for _ in 0..10_000 {
        if published == 2 {
            break;
        }
        published += relay.run_once().await.unwrap().published;
        tokio::task::yield_now().await;
    }
    assert_eq!(published, 2, "both events go once the broker is back");
    assert!(subscriber.try_recv().is_ok() && subscriber.try_recv().is_ok());
    assert!(subscriber.try_recv().is_err(), "each once");
    assert_eq!(
        probe.points("palisade.outbox.broker_available"),
        [(label(), 1)]
    );
    assert!(probe.points("palisade.outbox.unavailable")[0].1 >= 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_hands_events_back_without_calling_the_broker() {
    let (pool, outbox) = outbox().await;
    let publisher = Switched::new(MemoryBroker::new(10));
    let breaker = CircuitBreaker::new(
        Config::builder()
            .minimum_calls(4)
            .failure_rate_threshold(0.5)
            // Open for the rest of the test.
            .open_duration(Duration::from_secs(300))
            .build()
            .unwrap(),
    );
    let relay = Relay::new(outbox.clone(), publisher.clone())
        .outage_backoff(Duration::from_secs(60), Duration::from_secs(60))
        .circuit_breaker(breaker.clone());
    // One batch of four fails: the breaker opens.
    place(
        &pool,
        &outbox,
        &[event("a"), event("b"), event("c"), event("d")],
    )
    .await;
    assert_eq!(relay.run_once().await.unwrap().unavailable, 4);
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(publisher.calls.load(Ordering::SeqCst), 4);

    // New events while it is open: handed back, the broker never called.
    place(&pool, &outbox, &[event("e")]).await;
    let report = relay.run_once().await.unwrap();
    assert_eq!((report.claimed, report.unavailable), (1, 1), "{report:?}");
    assert_eq!(publisher.calls.load(Ordering::SeqCst), 4);
    assert_eq!(
        relay.run_once().await.unwrap().claimed,
        0,
        "they wait: the breaker is open, the outage backoff long"
    );
    assert_eq!(attempts(&pool).await, [0; 5]);
}

/// An error of the handler's own that wraps the cause.
#[derive(Debug)]
struct Charging(BoxError);

impl std::fmt::Display for Charging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "charging failed: {}", self.0)
    }
}

impl std::error::Error for Charging {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// Fails three deliveries with a wrapped [`Transient`] (a processor down),
/// the fourth with a plain error, and applies the fifth.
struct Recovering;

impl Handler<SqliteConnection> for Recovering {
    async fn handle(
        &self,
        _: &mut SqliteConnection,
        delivery: &Delivery,
    ) -> Result<Handled, BoxError> {
        match delivery.attempt {
            1..=3 => Err(Box::new(Charging(Box::new(Transient::new(
                "the processor is down",
            ))))),
            4 => Err("the processor declined".into()),
            _ => Ok(Handled::Applied),
        }
    }
}

/// A consumer's tries are spent only by failures that are not transient,
/// however the handler wraps the transient one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_spend_none_of_a_consumers_tries() {
    let (pool, outbox) = outbox().await;
    let inbox = SqliteInbox::new(pool.clone(), "inbox").unwrap();
    inbox.migrate().await.unwrap();
    let broker = MemoryBroker::new(10);
    let subscription = broker.subscribe();
    place(&pool, &outbox, &[event("a")]).await;
    Relay::new(outbox, broker).run_once().await.unwrap();
    let consumer = MemoryConsumer::new("payment", inbox, Recovering)
        .max_deliver(2)
        .retry_delay(Duration::from_millis(1), Duration::from_millis(2));
    consumer.run(subscription, std::future::pending()).await;
    let stats = consumer.stats();
    assert_eq!(
        (stats.applied, stats.retried, stats.dead_lettered),
        (1, 4, 0),
        "{stats:?}"
    );
}

/// An outbox whose `mark_failed` fails from its second call on, as a
/// database that goes away halfway through settling a batch.
#[derive(Clone)]
struct LostHalfway {
    outbox: SqliteOutbox,
    marked: Arc<AtomicUsize>,
}

impl OutboxStore for LostHalfway {
    async fn claim(&self) -> Result<Vec<Message>, sqlx::Error> {
        self.outbox.claim().await
    }

    fn lease(&self) -> Duration {
        self.outbox.lease()
    }

    async fn mark_sent(&self, sent: &[Message]) -> Result<usize, sqlx::Error> {
        self.outbox.mark_sent(sent).await
    }

    async fn release(
        &self,
        released: &[Message],
        delay: Duration,
        error: &str,
    ) -> Result<usize, sqlx::Error> {
        self.outbox.release(released, delay, error).await
    }

    async fn mark_failed(
        &self,
        message: &Message,
        error: &str,
    ) -> Result<palisade_outbox::Failed, sqlx::Error> {
        if self.marked.fetch_add(1, Ordering::SeqCst) > 0 {
            return Err(sqlx::Error::PoolTimedOut);
        }
        self.outbox.mark_failed(message, error).await
    }

    async fn clean_up(&self) -> Result<palisade_outbox::CleanUp, sqlx::Error> {
        self.outbox.clean_up().await
    }

    async fn backlog(&self) -> Result<palisade_outbox::Backlog, sqlx::Error> {
        self.outbox.backlog().await
    }

    async fn wait_for_work(&self) {
        self.outbox.wait_for_work().await;
    }
}

/// Rejects every message.
#[derive(Clone)]
struct Rejecting;

impl Publisher for Rejecting {
    async fn publish(&self, _: &Message) -> Result<Published, PublishError> {
        Err(PublishError::rejected("refused"))
    }
}

#[tokio::test]
async fn what_a_batch_settled_before_the_database_failed_is_counted() {
    let (pool, outbox) = outbox().await;
    place(&pool, &outbox, &[event("a"), event("b")]).await;
    let probe = MetricsProbe::default();
    let store = LostHalfway {
        outbox,
        marked: Arc::default(),
    };
    let relay = Relay::new(store, Rejecting).instrument(&probe.meter(), "orders");
    relay
        .run_once()
        .await
        .expect_err("the second settle's error");
    assert_eq!(
        attempts(&pool).await.iter().sum::<i64>(),
        1,
        "one rejection recorded"
    );
    assert_eq!(
        probe.points("palisade.outbox.failed"),
        [(vec!["relay=orders".to_owned()], 1)],
        "and counted"
    );
}
