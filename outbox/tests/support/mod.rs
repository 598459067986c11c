//! The outbox's behaviour, written once and run on every database: each
//! database's test file implements [`Harness`] and lists the scenarios with
//! [`scenarios!`].
#![allow(dead_code, unreachable_pub)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_outbox::{
    DeadEvents, Event, Failed, MemoryBroker, Message, OutboxConfig, OutboxStore, PublishError,
    Published, Publisher, Relay,
};
use tokio::sync::mpsc;
use uuid::Uuid;

/// One fresh outbox (and inbox) in a database of its own kind, next to an
/// `orders` table.
pub trait Harness: Sized + Send + Sync {
    type Store: OutboxStore + DeadEvents;

    /// A fresh outbox in table `table`, configured by `config`.
    async fn start(config: impl FnOnce(OutboxConfig) -> OutboxConfig + Send) -> Self;
    fn store(&self) -> &Self::Store;
    /// Writes an order and `events` in one transaction, committed or not.
    async fn place(&self, events: &[Event], commit: bool);
    async fn requeue(&self, id: Uuid) -> bool;
    async fn discard(&self, id: Uuid) -> bool;
    /// Makes the relays wake when events commit (PostgreSQL's LISTEN;
    /// SQLite needs nothing).
    async fn listen(&self);
    /// In one transaction: the inbox's verdict on (`consumer`,
    /// `message`), then commit or roll back.
    async fn process_once(&self, consumer: &str, message: Uuid, commit: bool) -> bool;
    /// The same for a batch of message ids, checked at once.
    async fn process_all(&self, consumer: &str, messages: &[&str], commit: bool) -> Vec<bool>;
    async fn forget_inbox(&self) -> u64;
    /// Counts one more delivery of each of `messages` handed back untried
    /// by `consumer`.
    async fn hand_back(&self, consumer: &str, messages: &[&str]);
    /// The deliveries `consumer` handed back untried, of `messages`.
    async fn handed_back(&self, consumer: &str, messages: &[&str]) -> Vec<(String, u64)>;
    /// How many rows the outbox table holds, sent ones included.
    async fn rows(&self) -> i64;
    /// Cleans up after a test that passed.
    async fn finish(self);
}

/// The harness methods every database writes the same way, given the
/// harness's `pool`, `outbox` and `inbox` fields and the name of its
/// `orders` table.
#[macro_export]
macro_rules! same_on_every_database {
    ($orders:expr) => {
        async fn place(&self, events: &[Event], commit: bool) {
            let mut tx = self.pool.begin().await.unwrap();
            sqlx::query(&format!("INSERT INTO {} (id) VALUES ($1)", $orders(self)))
                .bind(format!("order-{}", fastrand::u64(..)))
                .execute(&mut *tx)
                .await
                .unwrap();
            self.outbox.enqueue_all(&mut tx, events).await.unwrap();
            if commit {
                tx.commit().await.unwrap();
            } else {
                tx.rollback().await.unwrap();
            }
        }

        async fn requeue(&self, id: Uuid) -> bool {
            self.outbox.requeue(id).await.unwrap()
        }

        async fn discard(&self, id: Uuid) -> bool {
            self.outbox.discard(id).await.unwrap()
        }

        async fn process_once(&self, consumer: &str, message: Uuid, commit: bool) -> bool {
            let mut tx = self.pool.begin().await.unwrap();
            let first = self
                .inbox
                .process_once(&mut tx, consumer, message)
                .await
                .unwrap();
            if commit {
                tx.commit().await.unwrap();
            } else {
                tx.rollback().await.unwrap();
            }
            first
        }

        async fn process_all(&self, consumer: &str, messages: &[&str], commit: bool) -> Vec<bool> {
            let mut tx = self.pool.begin().await.unwrap();
            let first_times = self
                .inbox
                .process_all(&mut tx, consumer, messages)
                .await
                .unwrap();
            if commit {
                tx.commit().await.unwrap();
            } else {
                tx.rollback().await.unwrap();
            }
            first_times
        }

        async fn forget_inbox(&self) -> u64 {
            self.inbox
                .forget_older_than(Duration::ZERO, 10)
                .await
                .unwrap()
        }

        async fn hand_back(&self, consumer: &str, messages: &[&str]) {
            self.inbox.hand_back(consumer, messages).await.unwrap();
        }

        async fn handed_back(&self, consumer: &str, messages: &[&str]) -> Vec<(String, u64)> {
            let mut handed: Vec<_> = self
                .inbox
                .handed_back(consumer, messages)
                .await
                .unwrap()
                .into_iter()
                .collect();
            handed.sort();
            handed
        }

        async fn rows(&self) -> i64 {
            let count = format!("SELECT count(*) FROM {}", self.outbox.config().table());
            sqlx::query_scalar(&count)
                .fetch_one(&self.pool)
                .await
                .unwrap()
        }
    };
}

/// A fresh PostgreSQL schema for one test (`DATABASE_URL`), dropped by
/// [`drop`](Self::drop) once the test passed.
#[cfg(feature = "postgres")]
pub struct PgSchema {
    pub pool: sqlx::PgPool,
    pub name: String,
}

#[cfg(feature = "postgres")]
impl PgSchema {
    pub async fn new() -> Self {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(8)
            .connect(&palisade_testkit::servers::database_url())
            .await
            .expect("a reachable PostgreSQL (run scripts/services)");
        Self {
            pool,
            name: format!("outbox_test_{}", fastrand::u64(..)),
        }
    }

    /// `table` in this schema.
    pub fn table(&self, table: &str) -> String {
        format!("{}.{table}", self.name)
    }

    /// The migrated outbox `<schema>.outbox`, configured by `config`.
    pub async fn outbox(
        &self,
        config: impl FnOnce(OutboxConfig) -> OutboxConfig,
    ) -> palisade_outbox::PgOutbox {
        let outbox = palisade_outbox::PgOutbox::new(
            self.pool.clone(),
            config(OutboxConfig::new(&self.table("outbox")).unwrap()),
        );
        outbox.migrate().await.unwrap();
        outbox
    }

    pub async fn drop(self) {
        sqlx::query(&format!("DROP SCHEMA {} CASCADE", self.name))
            .execute(&self.pool)
            .await
            .unwrap();
    }
}

/// Lists each scenario as a test of this file's `$harness`.
#[macro_export]
macro_rules! scenarios {
    ($harness:ty: $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                support::$name::<$harness>().await;
            }
        )*
    };
}

pub fn event(aggregate: &str, n: u32) -> Event {
    Event::new(
        "order",
        aggregate,
        "OrderUpdated",
        n.to_string().into_bytes(),
    )
}

/// Each aggregate's payloads, in the order `messages` has them.
pub fn by_aggregate(messages: &[Message]) -> HashMap<String, Vec<u32>> {
    let mut by_aggregate: HashMap<String, Vec<u32>> = HashMap::new();
    for message in messages {
        by_aggregate
            .entry(message.event.aggregate_id().to_owned())
            .or_default()
            .push(payload(message).parse().unwrap());
    }
    by_aggregate
}

pub fn drain(subscriber: &mut mpsc::Receiver<Message>) -> Vec<Message> {
    let mut got = Vec::new();
    while let Ok(message) = subscriber.try_recv() {
        got.push(message);
    }
    got
}

fn payload(message: &Message) -> String {
    String::from_utf8_lossy(message.event.payload()).into_owned()
}

pub async fn an_event_exists_only_if_its_transaction_commits<H: Harness>() {
    let h = H::start(|c| c).await;
    h.place(&[event("a", 1)], false).await;
    assert_eq!(
        h.store().backlog().await.unwrap().pending,
        0,
        "rolled back: no event"
    );
    h.place(&[event("a", 2)], true).await;
    assert_eq!(h.store().backlog().await.unwrap().pending, 1);

    let broker = MemoryBroker::new(100);
    let mut subscriber = broker.subscribe();
    let relay = Relay::new(h.store().clone(), broker);
    let report = relay.run_once().await.unwrap();
    assert_eq!((report.claimed, report.published), (1, 1));
    assert_eq!(relay.run_once().await.unwrap().claimed, 0, "published once");
    let got = drain(&mut subscriber);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].event.payload(), b"2");
    assert_eq!(h.store().backlog().await.unwrap().pending, 0);
    h.finish().await;
}

/// Every publish a broker acknowledged, in order, duplicates included:
/// what the relays did, before the broker's duplicate detection hides it.
/// Records every event the broker took, in the order it took them.
#[derive(Clone)]
pub struct Recorded {
    pub broker: MemoryBroker,
    pub published: Arc<Mutex<Vec<Message>>>,
}

impl Publisher for Recorded {
    async fn publish(&self, message: &Message) -> Result<Published, PublishError> {
        let published = self.broker.publish(message).await?;
        self.published.lock().unwrap().push(message.clone());
        Ok(published)
    }
}

pub async fn two_relays_publish_each_event_once_in_aggregate_order<H: Harness>() {
    let h = H::start(|c| c.batch_size(7)).await;
    for n in 0..40 {
        let events: Vec<Event> = ["a", "b", "c"]
            .iter()
            .map(|aggregate| event(aggregate, n))
            .collect();
        h.place(&events, true).await;
    }
    let publisher = Recorded {
        broker: MemoryBroker::new(1000),
        published: Arc::default(),
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let relays: Vec<_> = (0..2)
        .map(|_| {
            let relay = Relay::new(h.store().clone(), publisher.clone());
            let mut stopped = stopped.clone();
            tokio::spawn(relay.run(async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            }))
        })
        .collect();
    for _ in 0..600 {
        if h.store().backlog().await.unwrap().pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.send(true).unwrap();
    for relay in relays {
        relay.await.unwrap();
    }
    let got = publisher.published.lock().unwrap().clone();
    let ids: HashSet<_> = got.iter().map(|m| m.event.id()).collect();
    assert_eq!(ids.len(), 120, "every event is published");
    assert_eq!(got.len(), 120, "no event published twice");
    for (aggregate, numbers) in by_aggregate(&got) {
        assert_eq!(
            numbers,
            (0..40).collect::<Vec<_>>(),
            "aggregate {aggregate} in order"
        );
    }
    h.finish().await;
}

/// Fails every event of type `Poison` while `failing` is set.
#[derive(Clone)]
pub struct Poisoned {
    pub broker: MemoryBroker,
    pub failing: Arc<AtomicBool>,
}

impl Publisher for Poisoned {
    async fn publish(&self, message: &Message) -> Result<Published, PublishError> {
        if message.event.event_type() == "Poison" && self.failing.load(Ordering::SeqCst) {
            return Err(PublishError::rejected("the broker rejects this event"));
        }
        self.broker.publish(message).await
    }
}

pub async fn a_poison_event_dies_alone_and_holds_only_its_aggregate<H: Harness>() {
    let h = H::start(|c| {
        c.max_attempts(3)
            .backoff(Duration::from_millis(1), Duration::from_millis(5))
    })
    .await;
    let poison = Event::new("order", "a", "Poison", b"p".to_vec());
    let poison_id = poison.id();
    h.place(&[event("a", 1), event("b", 1)], true).await;
    h.place(&[poison, event("b", 2)], true).await;
    h.place(&[event("a", 3), event("b", 3)], true).await;

    let broker = MemoryBroker::new(100);
    let mut subscriber = broker.subscribe();
    let failing = Arc::new(AtomicBool::new(true));
    let relay = Relay::new(
        h.store().clone(),
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
    let got = drain(&mut subscriber);
    let of = |aggregate: &str| -> Vec<String> {
        got.iter()
            .filter(|m| m.event.aggregate_id() == aggregate)
            .map(payload)
            .collect()
    };
    assert_eq!(
        of("b"),
        ["1", "2", "3"],
        "the other aggregate was not held up"
    );
    assert_eq!(
        of("a"),
        ["1"],
        "later events of the poisoned aggregate wait"
    );
    let backlog = h.store().backlog().await.unwrap();
    assert_eq!(
        (backlog.pending, backlog.dead, backlog.held),
        (1, 1, 1),
        "a/3 is held behind the dead event"
    );

    // An operator fixes the cause and requeues: the aggregate resumes in order.
    failing.store(false, Ordering::SeqCst);
    assert!(h.requeue(poison_id).await);
    assert!(!h.requeue(poison_id).await, "no longer dead");
    relay.run_once().await.unwrap();
    relay.run_once().await.unwrap();
    let resumed: Vec<String> = drain(&mut subscriber).iter().map(payload).collect();
    assert_eq!(resumed, ["p", "3"]);
    h.finish().await;
}

/// An operator lists the dead events, oldest first, and requeues them (all,
/// or one by id) with their attempts reset.
pub async fn dead_events_are_listed_and_requeued_with_fresh_attempts<H: Harness>() {
    let h = H::start(|c| c.max_attempts(1)).await;
    let poison: Vec<Event> = (0..3)
        .map(|n| Event::new("order", format!("p{n}"), "Poison", b"p".to_vec()))
        .collect();
    h.place(&poison, true).await;
    h.place(&[event("a", 1)], true).await;
    let failing = Arc::new(AtomicBool::new(true));
    let relay = Relay::new(
        h.store().clone(),
        Poisoned {
            broker: MemoryBroker::new(10),
            failing: failing.clone(),
        },
    );
    assert_eq!(relay.run_once().await.unwrap().dead, 3);

    let oldest = h.store().dead_events(2).await.unwrap();
    let ids: Vec<Uuid> = oldest.iter().map(|dead| dead.id).collect();
    assert_eq!(ids, [poison[0].id(), poison[1].id()], "oldest first");
    let first = &oldest[0];
    assert_eq!(
        (
            first.aggregate_type.as_str(),
            first.aggregate_id.as_str(),
            first.event_type.as_str(),
            first.attempts
        ),
        ("order", "p0", "Poison", 1)
    );
    assert!(
        first
            .last_error
            .as_deref()
            .is_some_and(|error| error.contains("rejects this event")),
        "{first:?}"
    );
    assert!(first.created_at_ms > 0);

    // Requeued with fresh attempts: each gets its one attempt again.
    assert_eq!(h.store().requeue_all().await.unwrap(), 3);
    assert!(h.store().dead_events(10).await.unwrap().is_empty());
    assert_eq!(h.store().requeue_all().await.unwrap(), 0, "none dead now");
    assert_eq!(relay.run_once().await.unwrap().dead, 3);

    // The cause fixed, one by id.
    failing.store(false, Ordering::SeqCst);
    assert!(
        DeadEvents::requeue(h.store(), poison[2].id())
            .await
            .unwrap()
    );
    assert!(
        !DeadEvents::requeue(h.store(), poison[2].id())
            .await
            .unwrap()
    );
    assert!(
        !DeadEvents::requeue(h.store(), Uuid::now_v7())
            .await
            .unwrap()
    );
    assert_eq!(relay.run_once().await.unwrap().published, 1);
    assert_eq!(h.store().dead_events(10).await.unwrap().len(), 2);
    h.finish().await;
}

pub async fn a_discarded_dead_event_releases_its_aggregate<H: Harness>() {
    let h = H::start(|c| c.max_attempts(1)).await;
    let poison = Event::new("order", "a", "Poison", b"p".to_vec());
    let poison_id = poison.id();
    h.place(&[poison, event("a", 2)], true).await;
    let broker = MemoryBroker::new(10);
    let mut subscriber = broker.subscribe();
    let relay = Relay::new(
        h.store().clone(),
        Poisoned {
            broker,
            failing: Arc::new(AtomicBool::new(true)),
        },
    );
    assert_eq!(relay.run_once().await.unwrap().dead, 1);
    assert_eq!(h.store().backlog().await.unwrap().held, 1);
    assert!(!h.discard(Uuid::now_v7()).await, "no such dead event");
    assert!(h.discard(poison_id).await);
    assert!(!h.requeue(poison_id).await, "gone for good");
    relay.run_once().await.unwrap();
    let got: Vec<String> = drain(&mut subscriber).iter().map(payload).collect();
    assert_eq!(got, ["2"], "the aggregate moves on");
    let backlog = h.store().backlog().await.unwrap();
    assert_eq!((backlog.pending, backlog.dead, backlog.held), (0, 0, 0));
    h.finish().await;
}

pub async fn a_crashed_relays_claims_return_when_its_lease_ends<H: Harness>() {
    const LEASE: Duration = Duration::from_millis(300);
    let h = H::start(|c| c.lease(LEASE)).await;
    h.place(&[event("a", 1), event("b", 1)], true).await;
    // A relay claims, then dies before publishing.
    let claimed_at = std::time::Instant::now();
    assert_eq!(h.store().claim().await.unwrap().len(), 2);
    let relay = Relay::new(h.store().clone(), MemoryBroker::new(10));
    let report = relay.run_once().await.unwrap();
    // Judged only when both claims fell within the lease: a machine
    // stalled longer (a slow commit) has seen the lease end already.
    if claimed_at.elapsed() >= LEASE {
        assert_eq!(report.published, 2, "the lease ended");
        h.finish().await;
        return;
    }
    assert_eq!(report.claimed, 0, "still leased");
    tokio::time::sleep(LEASE + Duration::from_millis(100)).await;
    assert_eq!(
        relay.run_once().await.unwrap().published,
        2,
        "the lease ended"
    );
    h.finish().await;
}

/// Asks the relay to stop at its first publish.
#[derive(Clone)]
struct StopAtFirstPublish {
    broker: MemoryBroker,
    stop: Arc<tokio::sync::watch::Sender<bool>>,
    published: Arc<AtomicUsize>,
}

impl Publisher for StopAtFirstPublish {
    async fn publish(&self, message: &Message) -> Result<Published, PublishError> {
        self.stop.send_replace(true);
        self.published.fetch_add(1, Ordering::SeqCst);
        self.broker.publish(message).await
    }
}

/// A relay asked to stop while a full batch is published settles what it
/// claimed before it returns: every event is either published or claimable
/// at once, none left leased until the lease ends.
pub async fn a_stopped_relay_leaves_no_event_claimed<H: Harness>() {
    let h = H::start(|c| c.batch_size(5).lease(Duration::from_secs(600))).await;
    let events: Vec<Event> = (0..15).map(|n| event(&format!("agg-{n}"), 0)).collect();
    h.place(&events, true).await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let publisher = StopAtFirstPublish {
        broker: MemoryBroker::new(100),
        stop: Arc::new(stop),
        published: Arc::default(),
    };
    let mut stopped = stopped.clone();
    Relay::new(h.store().clone(), publisher.clone())
        .run(async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        })
        .await;
    let published = publisher.published.load(Ordering::SeqCst);
    assert!(published >= 5, "the batch under way was published");
    let mut claimable = 0;
    loop {
        let claimed = h.store().claim().await.unwrap().len();
        if claimed == 0 {
            break;
        }
        claimable += claimed;
    }
    assert_eq!(published + claimable, 15, "no event left leased");
    h.finish().await;
}

/// Holds every publish until the end of time: a stalled broker connection.
#[derive(Clone)]
struct Stalled;

impl Publisher for Stalled {
    async fn publish(&self, _: &Message) -> Result<Published, PublishError> {
        std::future::pending().await
    }
}

/// Claims again until the lease of `store`'s last claim has ended and the
/// claim comes back (the database's clock decides, so poll).
async fn claim_after_the_lease<S: OutboxStore>(store: &S) -> Vec<Message> {
    for _ in 0..600 {
        let claimed = store.claim().await.unwrap();
        if !claimed.is_empty() {
            return claimed;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the lease never ended");
}

/// Relay A stalls past its lease; B claims the event again, publishes it
/// and marks it sent, then publishes the aggregate's next event. A's late
/// failure must change nothing: the claim it comes from is over.
pub async fn a_late_failure_does_not_undo_another_relays_sent<H: Harness>() {
    let h = H::start(|c| c.lease(Duration::from_millis(200)).max_attempts(2)).await;
    h.place(&[event("a", 1), event("a", 2)], true).await;
    let stalled = h.store().claim().await.unwrap();
    assert_eq!(stalled.len(), 1, "a/1 first: per-aggregate order");

    let broker = MemoryBroker::new(10);
    let mut subscriber = broker.subscribe();
    let relay = Relay::new(h.store().clone(), broker);
    let taken_over = claim_after_the_lease(h.store()).await;
    assert_eq!(taken_over[0].event.id(), stalled[0].event.id());
    assert_eq!(h.store().mark_sent(&taken_over).await.unwrap(), 1);
    assert_eq!(relay.run_once().await.unwrap().published, 1, "a/2");

    // A's publish times out at last.
    assert_eq!(
        h.store()
            .mark_failed(&stalled[0], "timed out")
            .await
            .unwrap(),
        Failed::Superseded
    );
    // Nor may A hand it back as if the broker were unavailable.
    assert_eq!(
        h.store()
            .release(&stalled, Duration::ZERO, "broker unavailable")
            .await
            .unwrap(),
        0
    );
    let backlog = h.store().backlog().await.unwrap();
    assert_eq!((backlog.pending, backlog.dead), (0, 0), "{backlog:?}");
    assert_eq!(
        relay.run_once().await.unwrap().claimed,
        0,
        "not published again"
    );
    let got: Vec<String> = drain(&mut subscriber).iter().map(payload).collect();
    assert_eq!(got, ["2"]);
    h.finish().await;
}

/// Relay A's claim ends while B holds the event: A's late "sent" must not
/// settle B's claim (B's publish may yet fail, and the aggregate's next
/// event must wait for B's outcome).
pub async fn a_late_sent_does_not_settle_another_relays_claim<H: Harness>() {
    let h = H::start(|c| {
        c.lease(Duration::from_millis(200))
            .backoff(Duration::from_secs(60), Duration::from_secs(60))
    })
    .await;
    h.place(&[event("a", 1)], true).await;
    let stalled = h.store().claim().await.unwrap();
    let taken_over = claim_after_the_lease(h.store()).await;
    assert_eq!(h.store().mark_sent(&stalled).await.unwrap(), 0);
    let backlog = h.store().backlog().await.unwrap();
    assert_eq!(backlog.pending, 1, "still B's to settle: {backlog:?}");
    assert_eq!(
        h.store()
            .mark_failed(&taken_over[0], "rejected")
            .await
            .unwrap(),
        Failed::BackingOff
    );
    let backlog = h.store().backlog().await.unwrap();
    assert_eq!(backlog.pending, 1, "B's failure counts: {backlog:?}");
    h.finish().await;
}

/// A publish that hangs is cut when the claim's lease ends, as a timeout:
/// the relay goes on, and the event waits with its attempts untouched.
pub async fn a_publish_never_outlives_its_lease<H: Harness>() {
    let h = H::start(|c| c.lease(Duration::from_millis(300))).await;
    h.place(&[event("a", 1)], true).await;
    let relay = Relay::new(h.store().clone(), Stalled);
    let report = tokio::time::timeout(Duration::from_secs(30), relay.run_once())
        .await
        .expect("the publish is cut at the end of its lease")
        .unwrap();
    assert_eq!(
        (report.claimed, report.unavailable, report.failed),
        (1, 1, 0),
        "{report:?}"
    );
    assert_eq!(h.store().backlog().await.unwrap().pending, 1);
    assert!(h.store().dead_events(10).await.unwrap().is_empty());
    h.finish().await;
}

pub async fn a_commit_wakes_a_relay_that_would_poll_only_every_minute<H: Harness>() {
    let h = H::start(|c| c.poll_interval(Duration::from_secs(60))).await;
    h.listen().await;
    let broker = MemoryBroker::new(10);
    let mut subscriber = broker.subscribe();
    let relay = tokio::spawn(Relay::new(h.store().clone(), broker).run(std::future::pending()));
    // The relay is now waiting (nothing to do); a commit wakes it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    h.place(&[event("a", 1)], true).await;
    let message = tokio::time::timeout(Duration::from_secs(30), subscriber.recv())
        .await
        .expect("woken long before the minute is up")
        .unwrap();
    assert_eq!(message.event.payload(), b"1");
    relay.abort();
    h.finish().await;
}

pub async fn sent_events_are_cleaned_up_in_bounded_batches<H: Harness>() {
    let h = H::start(|c| c.retention(Duration::ZERO, 2)).await;
    let events: Vec<Event> = (0..5).map(|n| event(&format!("x{n}"), n)).collect();
    h.place(&events, true).await;
    let relay = Relay::new(h.store().clone(), MemoryBroker::new(10));
    assert_eq!(relay.run_once().await.unwrap().published, 5);
    tokio::time::sleep(Duration::from_millis(5)).await;
    for expected in [2, 2, 1, 0] {
        let done = h.store().clean_up().await.unwrap();
        assert_eq!((done.deleted, done.full), (expected, expected == 2));
    }
    h.finish().await;
}

/// A retention of `Duration::MAX` ("keep them for good") keeps every row
/// and fails nothing: PostgreSQL refused its interval as out of range, and
/// every clean-up failed.
pub async fn an_endless_retention_keeps_every_row<H: Harness>() {
    let h = H::start(|c| c.retention(Duration::MAX, 2)).await;
    let events: Vec<Event> = (0..2).map(|n| event(&format!("x{n}"), n)).collect();
    h.place(&events, true).await;
    let relay = Relay::new(h.store().clone(), MemoryBroker::new(10));
    assert_eq!(relay.run_once().await.unwrap().published, 2);
    let done = h.store().clean_up().await.unwrap();
    assert_eq!(done.deleted, 0);
    assert_eq!(h.rows().await, 2);
    h.finish().await;
}

/// A relay deletes a batch of sent events when it starts, and the next
/// at its next turn while the batches are full, not one batch a minute
/// (a thousand rows a minute by default, about 17 events a second: a
/// busier outbox grew without bound).
pub async fn a_relay_cleans_up_batch_after_batch_while_they_are_full<H: Harness>() {
    let h = H::start(|c| {
        c.retention(Duration::ZERO, 2)
            .poll_interval(Duration::from_millis(20))
    })
    .await;
    let events: Vec<Event> = (0..5).map(|n| event(&format!("x{n}"), n)).collect();
    h.place(&events, true).await;
    let broker = MemoryBroker::new(10);
    let relay = Relay::new(h.store().clone(), broker.clone());
    assert_eq!(relay.run_once().await.unwrap().published, 5);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let relay = tokio::spawn(
        relay
            .clean_up_every(Duration::from_secs(3_600))
            .run(std::future::pending()),
    );
    for _ in 0..600 {
        if h.rows().await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(h.rows().await, 0, "three batches, with no interval between");
    relay.abort();
    h.finish().await;
}

/// A batch of none (nothing was ever published) and a lease too long to
/// make a deadline of (every batch panicked) are taken at their bounds.
pub async fn a_config_out_of_bounds_is_taken_at_its_bound<H: Harness>() {
    let h = H::start(|c| c.batch_size(0).lease(Duration::MAX)).await;
    h.place(&[event("a", 1)], true).await;
    let relay = Relay::new(h.store().clone(), MemoryBroker::new(10));
    assert_eq!(relay.run_once().await.unwrap().published, 1);
    assert_eq!(h.store().lease(), Duration::from_secs(86_400));
    h.finish().await;
    // A batch of `u32::MAX` asked for room for as many events at once,
    // and aborted the process; an idle relay polling every 0 s spun.
    let h = H::start(|c| c.batch_size(u32::MAX).poll_interval(Duration::ZERO)).await;
    h.place(&[event("a", 1)], true).await;
    let relay = Relay::new(h.store().clone(), MemoryBroker::new(10));
    assert_eq!(relay.run_once().await.unwrap().published, 1);
    h.finish().await;
    let config = OutboxConfig::default()
        .batch_size(u32::MAX)
        .poll_interval(Duration::ZERO);
    let config = format!("{config:?}");
    assert!(
        config.contains("batch_size: 100000") && config.contains("poll_interval: 1ms"),
        "{config}"
    );
}

pub async fn the_backlog_reports_the_oldest_pending_age<H: Harness>() {
    let h = H::start(|c| c).await;
    assert_eq!(h.store().backlog().await.unwrap().oldest_pending, None);
    h.place(&[event("a", 1)], true).await;
    tokio::time::sleep(Duration::from_millis(60)).await;
    h.place(&[event("b", 1)], true).await;
    let oldest = h.store().backlog().await.unwrap().oldest_pending.unwrap();
    assert!(
        oldest >= Duration::from_millis(50) && oldest < Duration::from_secs(30),
        "{oldest:?}"
    );
    h.finish().await;
}

pub async fn the_inbox_applies_each_message_once_with_its_effect<H: Harness>() {
    let h = H::start(|c| c).await;
    let message = Uuid::now_v7();
    // A first delivery whose effect fails: nothing is recorded.
    assert!(h.process_once("reserve", message, false).await);
    // The redelivery applies it, once; later deliveries are skipped.
    let mut applied = 0;
    for _ in 0..3 {
        applied += usize::from(h.process_once("reserve", message, true).await);
    }
    assert_eq!(applied, 1);
    // Another consumer has its own record.
    assert!(h.process_once("notify", message, true).await);
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(h.forget_inbox().await, 2);
    h.finish().await;
}

pub async fn the_inbox_checks_a_batch_at_once<H: Harness>() {
    let h = H::start(|c| c).await;
    let done = Uuid::now_v7();
    assert!(h.process_once("reserve", done, true).await);
    let done = done.to_string();
    // Any CloudEvents id, not only UUIDs: commas, quotes, other scripts.
    let (odd, other) = ("a,b \"c\"", "réservé/1");
    // One already processed, one twice in the batch (its first place
    // only is new), one new; rolled back, so nothing is recorded.
    assert_eq!(
        h.process_all("reserve", &[&done, odd, other, odd], false)
            .await,
        [false, true, true, false]
    );
    assert_eq!(
        h.process_all("reserve", &[odd, other], true).await,
        [true, true]
    );
    assert_eq!(
        h.process_all("reserve", &[other, &done, odd], true).await,
        [false, false, false]
    );
    // Another consumer has its own records; an empty batch records nothing.
    assert_eq!(h.process_all("notify", &[&done], true).await, [true]);
    assert!(h.process_all("notify", &[], true).await.is_empty());
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(h.forget_inbox().await, 4);
    h.finish().await;
}

/// The deliveries a consumer handed back untried are counted per consumer
/// and message, and forgotten with the inbox's old records.
pub async fn deliveries_handed_back_are_counted_per_consumer<H: Harness>() {
    let h = H::start(|c| c).await;
    let odd = "a,b \"c\"";
    // An id twice in one hand-back (a stale delivery beside its
    // redelivery) counts twice.
    h.hand_back("reserve", &["m-1", odd, "m-1"]).await;
    h.hand_back("reserve", &["m-1"]).await;
    h.hand_back("notify", &["m-1"]).await;
    h.hand_back("reserve", &[]).await;
    assert_eq!(
        h.handed_back("reserve", &["m-1", odd, "m-9"]).await,
        [(odd.to_owned(), 1), ("m-1".to_owned(), 3)]
    );
    assert_eq!(
        h.handed_back("notify", &["m-1"]).await,
        [("m-1".to_owned(), 1)]
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    h.forget_inbox().await;
    assert_eq!(h.handed_back("reserve", &["m-1", odd]).await, []);
    h.finish().await;
}

/// One transaction writing more events than one statement takes (SQLite
/// writes up to 500 in a statement: 1,001 events are two full statements
/// and one of a single event): each is published once, every column as
/// written, and each aggregate's in the order written.
pub async fn a_transactions_many_events_keep_their_columns_and_order<H: Harness>() {
    let h = H::start(|c| c.batch_size(256)).await;
    let events: Vec<Event> = (0..1001_u32)
        .map(|n| {
            let aggregate = ["a", "b", "c"][n as usize % 3];
            let payload = [n.to_le_bytes().as_slice(), &[0, 255]].concat();
            Event::new("order", aggregate, format!("Type{}", n % 7), payload)
                .header("n", n.to_string())
        })
        .collect();
    h.place(&events, true).await;
    let broker = MemoryBroker::new(2000);
    let mut subscriber = broker.subscribe();
    let relay = Relay::new(h.store().clone(), broker);
    while relay.run_once().await.unwrap().claimed > 0 {}
    let got: Vec<Event> = drain(&mut subscriber)
        .into_iter()
        .map(|message| message.event)
        .collect();
    assert_eq!(got.len(), events.len());
    for aggregate in ["a", "b", "c"] {
        let of = |events: &[Event]| -> Vec<Event> {
            events
                .iter()
                .filter(|event| event.aggregate_id() == aggregate)
                .cloned()
                .collect()
        };
        assert_eq!(of(&got), of(&events), "aggregate {aggregate}");
    }
    h.finish().await;
}
