//! The in-process transport that acknowledges a publish only once every
//! consumer applied the event: the outbox stays the log.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{mpsc, oneshot};

use crate::consume::EventTypes;
use crate::error::PublishError;
use crate::event::Message;
use crate::publisher::{Published, Publisher};

/// An in-process transport whose acknowledgement means *applied*: a
/// publish is acknowledged only once every consumer subscribed to the
/// event's type has applied it (committed its inbox transaction) or
/// settled it otherwise, so the relay marks an event sent only then.
///
/// The transport keeps nothing of its own: the producer's outbox is the
/// log. A process that dies, or stops, with events queued for a consumer
/// leaves them pending (or claimed, until their lease ends) in the outbox;
/// the next relay publishes them again and the consumer's inbox drops
/// those it had applied. So, unlike [`MemoryBroker`](crate::MemoryBroker),
/// nothing acknowledged is ever only in memory; this is the transport for
/// an embedded system on SQLite files.
///
/// Subscribe every consumer before a relay publishes: an event no
/// subscriber takes is acknowledged at once (no consumer needs it). A
/// subscription that ends (its receiver dropped, as a
/// [`MemoryConsumer`](crate::MemoryConsumer) drops it when it stops) stays
/// registered until a subscription to the same event types takes its
/// place (its consumer started again): meanwhile, publishes it would take
/// fail (and the relay tries them again later) instead of passing it by.
/// Each subscriber has a queue of `capacity` events; a publish waits for
/// room (backpressure).
///
/// The relay waits for the acknowledgements of a batch before it claims
/// the next, so its pace is its consumers'; a consumer slower than the
/// outbox's lease (a handler retried in place for long) has the event
/// published again after the lease, and the inbox drops the copy if it
/// was applied meanwhile. A consumer that gives up on an event hands it
/// back as rejected ([`Handoff::reject`]), which spends one of the
/// event's attempts if it comes within the lease. Like any late
/// acknowledgement, a rejection after the lease is taken for an outage
/// and spends nothing. The relay publishes a whole batch under one lease
/// and a consumer works through it in order, so for a poison event to
/// end dead, the tries in place of the poison events ahead of it in the
/// batch, and its own, must fit in the producer's lease.
///
/// # Example
///
/// On SQLite (run as a doctest with feature `sqlite`):
///
#[cfg_attr(feature = "sqlite", doc = "```")]
#[cfg_attr(not(feature = "sqlite"), doc = "```ignore")]
/// use palisade_outbox::{
///     BoxError, Delivery, Event, Handled, Handler, HandoffBroker, MemoryConsumer, OutboxConfig,
///     Relay, SqliteInbox, SqliteOutbox,
/// };
/// use sqlx::SqliteConnection;
///
/// struct CountOrders;
///
/// impl Handler<SqliteConnection> for CountOrders {
///     async fn handle(&self, tx: &mut SqliteConnection, _: &Delivery) -> Result<Handled, BoxError> {
///         sqlx::query("UPDATE counts SET orders = orders + 1").execute(tx).await?;
///         Ok(Handled::Applied)
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
/// sqlx::query("CREATE TABLE counts (orders INTEGER)").execute(&pool).await?;
/// sqlx::query("INSERT INTO counts VALUES (0)").execute(&pool).await?;
/// let outbox = SqliteOutbox::new(pool.clone(), OutboxConfig::default());
/// let inbox = SqliteInbox::new(pool.clone(), "inbox")?;
/// outbox.migrate().await?;
/// inbox.migrate().await?;
///
/// let broker = HandoffBroker::new(64);
/// let subscription = broker.subscribe_to(["OrderCreated"]);
/// let consumer = MemoryConsumer::new("counter", inbox, CountOrders);
/// let consuming = tokio::spawn(async move {
///     consumer.run(subscription, std::future::pending()).await;
///     consumer
/// });
///
/// let mut tx = pool.begin().await?;
/// outbox.enqueue(&mut tx, &Event::new("order", "o-1", "OrderCreated", b"{}".to_vec())).await?;
/// tx.commit().await?;
/// // Returns once the consumer has applied the event.
/// let report = Relay::new(outbox, broker.clone()).run_once().await?;
/// assert_eq!(report.published, 1);
/// let orders: i64 = sqlx::query_scalar("SELECT orders FROM counts").fetch_one(&pool).await?;
/// assert_eq!(orders, 1);
///
/// drop(broker); // the subscription ends once the broker is gone
/// assert_eq!(consuming.await?.stats().applied, 1);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct HandoffBroker {
    subscribers: Arc<Mutex<Vec<Subscriber>>>,
    capacity: usize,
}

/// A subscription's queue, and the event types it takes.
#[derive(Debug, Clone)]
struct Subscriber {
    queue: mpsc::Sender<Handoff>,
    takes: EventTypes,
}

/// A message handed to a subscriber, with its acknowledgement: settle it
/// once the message is applied (or ignored), reject it when the consumer
/// gives up on it. Dropping it unsettled tells the publisher the message
/// was not applied, and the relay publishes it again later.
#[derive(Debug)]
pub struct Handoff {
    message: Message,
    ack: oneshot::Sender<Outcome>,
}

/// What a subscriber made of a message.
#[derive(Debug)]
enum Outcome {
    Settled,
    /// Given up on, for this reason.
    Rejected(String),
}

impl Handoff {
    /// The message.
    #[must_use]
    pub const fn message(&self) -> &Message {
        &self.message
    }

    /// Acknowledges the message: its publish completes.
    pub fn settle(self) {
        // The publisher may have given up (its lease ended): nothing to do.
        let _ = self.ack.send(Outcome::Settled);
    }

    /// Hands the message back as one its consumer gave up on: the publish
    /// fails as [`Rejected`](crate::PublishErrorKind::Rejected), which
    /// spends one of the event's attempts in the producer's outbox; after
    /// its last, the event is dead there, kept for an operator to send
    /// again ([`SqliteOutbox::requeue`](crate::SqliteOutbox::requeue))
    /// or drop. The consumers that applied it drop the copies that come
    /// again (their inboxes).
    pub fn reject(self, reason: impl std::fmt::Display) {
        let _ = self.ack.send(Outcome::Rejected(reason.to_string()));
    }
}

/// A message from a subscription, as a consumer takes it: a
/// [`MemoryBroker`](crate::MemoryBroker) subscription's bare [`Message`]
/// (nothing to settle) or a [`HandoffBroker`] subscription's [`Handoff`].
pub trait Inbound: Send + 'static {
    /// The message.
    fn message(&self) -> &Message;

    /// Tells the transport the message is applied (or ignored).
    fn settle(self);

    /// Tells the transport the consumer gave up on the message after its
    /// last try, for `reason`. What the transport does with it is its
    /// own: a [`Handoff`] goes back to the producer's outbox as rejected;
    /// by default the message is settled (a
    /// [`MemoryBroker`](crate::MemoryBroker)'s keeps nothing to go back
    /// to).
    fn reject(self, reason: String)
    where
        Self: Sized,
    {
        let _ = reason;
        self.settle();
    }
}

impl Inbound for Message {
    fn message(&self) -> &Message {
        self
    }

    fn settle(self) {}
}

impl Inbound for Handoff {
    fn message(&self) -> &Message {
        Self::message(self)
    }

    fn settle(self) {
        Self::settle(self);
    }

    fn reject(self, reason: String) {
        Self::reject(self, reason);
    }
}

/// A subscriber ended before it applied the event.
#[derive(Debug)]
struct NotApplied;

impl std::fmt::Display for NotApplied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a consumer stopped before applying the event")
    }
}

impl std::error::Error for NotApplied {}

/// A subscriber gave up on the event.
#[derive(Debug)]
struct GivenUp(String);

impl std::fmt::Display for GivenUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a consumer gave up on the event: {}", self.0)
    }
}

impl std::error::Error for GivenUp {}

impl HandoffBroker {
    /// A transport with queues of `capacity` events per subscriber (at
    /// least 1, at most what a tokio channel takes, `usize::MAX >> 3`).
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            subscribers: Arc::default(),
            capacity: crate::publisher::queue_capacity(capacity),
        }
    }

    /// A subscription to every event published from now on. It ends
    /// (`recv` gives `None`) once every handle of the broker is dropped.
    #[must_use]
    pub fn subscribe(&self) -> mpsc::Receiver<Handoff> {
        self.subscribe_with(EventTypes::default())
    }

    /// A subscription to the events of these types published from now on;
    /// the others are not waited for on its account.
    #[must_use]
    pub fn subscribe_to<T: Into<String>>(
        &self,
        event_types: impl IntoIterator<Item = T>,
    ) -> mpsc::Receiver<Handoff> {
        self.subscribe_with(EventTypes::only(event_types))
    }

    fn subscribe_with(&self, takes: EventTypes) -> mpsc::Receiver<Handoff> {
        let (queue, receiver) = mpsc::channel(self.capacity);
        let mut subscribers = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // An ended subscription to the same types is this one's
        // predecessor: what it held back is this one's to take.
        subscribers.retain(|ended| !(ended.queue.is_closed() && ended.takes.same_as(&takes)));
        subscribers.push(Subscriber { queue, takes });
        receiver
    }
}

impl Publisher for HandoffBroker {
    async fn publish(&self, message: &Message) -> Result<Published, PublishError> {
        let takers: Vec<mpsc::Sender<Handoff>> = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|subscriber| subscriber.takes.admits(message.event.event_type()))
            .map(|subscriber| subscriber.queue.clone())
            .collect();
        let mut acks = Vec::with_capacity(takers.len());
        for queue in &takers {
            let (ack, acked) = oneshot::channel();
            let handoff = Handoff {
                message: message.clone(),
                ack,
            };
            // Waits while the queue is full: backpressure.
            queue
                .send(handoff)
                .await
                .map_err(|_| PublishError::unavailable(NotApplied))?;
            acks.push(acked);
        }
        for (queue, acked) in takers.iter().zip(acks) {
            tokio::select! {
                biased;
                settled = acked => match settled {
                    Ok(Outcome::Settled) => {}
                    Ok(Outcome::Rejected(reason)) => {
                        return Err(PublishError::rejected(GivenUp(reason)));
                    }
                    Err(_) => return Err(PublishError::unavailable(NotApplied)),
                },
                // Ended with the event still queued: not applied.
                () = queue.closed() => return Err(PublishError::unavailable(NotApplied)),
            }
        }
        Ok(Published::Stored)
    }
}
