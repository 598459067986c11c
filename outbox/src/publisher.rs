//! Where the relay publishes: a broker that acknowledges.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::mpsc;

use crate::error::PublishError;
use crate::event::Message;

/// What the broker said about a published event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// Stored: acknowledged as new.
    Stored,
    /// Acknowledged as a duplicate of a message it already has (a retry
    /// after a lost acknowledgement); as good as stored.
    Duplicate,
}

/// Hands events to a broker and waits for its acknowledgement.
pub trait Publisher: Send + Sync + 'static {
    /// Publishes `message`; `Ok` only once the broker has it.
    fn publish(
        &self,
        message: &Message,
    ) -> impl Future<Output = Result<Published, PublishError>> + Send;
}

/// An in-process broker that acknowledges once the event is queued, for
/// tests without a server.
///
/// Every subscriber gets every event published after it subscribed, in
/// order, through a queue of `capacity` events. Nothing is dropped: a
/// publish is acknowledged once every subscriber's queue took the event,
/// so a subscriber that falls `capacity` events behind holds the relays
/// back until it catches up (drop the receiver to unsubscribe). An event id
/// published among the last `capacity` is acknowledged as a duplicate and
/// not delivered again, as JetStream does within its window; one whose
/// publish was given up before every subscriber took it is delivered
/// again (the subscribers that had it get it twice, as from any broker
/// after a lost acknowledgement). An event published again while its
/// first publish still waits for room is refused as
/// [`Full`](crate::PublishErrorKind::Full): that one may yet be given up.
///
/// Its acknowledgement is not durable: events acknowledged (and so marked
/// sent by the relay) but not yet consumed when the process ends, or when
/// a subscriber stops with its queue unread, are gone; a subscriber that
/// is gone misses what is published meanwhile. Where that matters, use
/// [`HandoffBroker`](crate::HandoffBroker) in process (feature `sqlite` or
/// `postgres`: acknowledged once applied, the outbox stays the log), or a
/// durable broker (feature `nats`).
#[derive(Debug, Clone)]
pub struct MemoryBroker {
    subscribers: Arc<Mutex<Vec<mpsc::Sender<Message>>>>,
    recent: Arc<Mutex<Recent>>,
    capacity: usize,
}

/// The last `capacity` ids, each with whether its publish reached every
/// subscriber (`false` while it runs), and the order they were first seen.
type Recent = (HashMap<uuid::Uuid, bool>, VecDeque<uuid::Uuid>);

/// What the broker knows of an id.
enum Seen {
    /// Not among the recent ids: now recorded, its publish under way.
    New,
    /// Published to every subscriber.
    Published,
    /// Its publish still runs (waiting for room).
    Publishing,
}

/// A subscriber queue's `capacity` within what a tokio channel takes: a
/// larger one panicked at `subscribe`.
pub(crate) fn queue_capacity(capacity: usize) -> usize {
    capacity.clamp(1, tokio::sync::Semaphore::MAX_PERMITS)
}

impl MemoryBroker {
    /// A broker with queues of `capacity` events per subscriber, and
    /// duplicate detection over the last `capacity` ids (at least 1, at
    /// most what a tokio channel takes, `usize::MAX >> 3`).
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            subscribers: Arc::default(),
            recent: Arc::default(),
            capacity: queue_capacity(capacity),
        }
    }

    /// A new subscriber, receiving events published from now on. The
    /// subscription ends (`recv` gives `None`) once every handle of the
    /// broker is dropped.
    #[must_use]
    pub fn subscribe(&self) -> mpsc::Receiver<Message> {
        let (sender, receiver) = mpsc::channel(self.capacity);
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(sender);
        receiver
    }

    /// Whether `id` is among the last `capacity` ids, and how far its
    /// publish went; records a new one as publishing.
    fn seen(&self, id: uuid::Uuid) -> Seen {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        let (seen, order) = &mut *recent;
        match seen.entry(id) {
            Entry::Occupied(published) if *published.get() => return Seen::Published,
            Entry::Occupied(_) => return Seen::Publishing,
            Entry::Vacant(new) => {
                new.insert(false);
            }
        }
        order.push_back(id);
        if order.len() > self.capacity
            && let Some(oldest) = order.pop_front()
        {
            seen.remove(&oldest);
        }
        Seen::New
    }

    /// Records that `id`'s publish reached every subscriber.
    fn published(&self, id: uuid::Uuid) {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(published) = recent.0.get_mut(&id) {
            *published = true;
        }
    }

    /// Forgets `id`: its publish did not reach every subscriber.
    fn forget(&self, id: uuid::Uuid) {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        let (seen, order) = &mut *recent;
        if seen.remove(&id).is_some() {
            order.retain(|recorded| *recorded != id);
        }
    }
}

/// An event published again while its first publish waits for room.
#[derive(Debug)]
struct StillPublishing;

impl std::fmt::Display for StillPublishing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the event's earlier publish still waits for room in a subscriber's queue")
    }
}

impl std::error::Error for StillPublishing {}

/// An id recorded as publishing while its publish runs: published once
/// every subscriber took the event, forgotten if the publish is dropped
/// before (the relay gave up at the end of its lease), so the next publish
/// delivers it rather than taking it for a duplicate.
struct Publishing<'a> {
    broker: &'a MemoryBroker,
    id: uuid::Uuid,
    done: bool,
}

impl Drop for Publishing<'_> {
    fn drop(&mut self) {
        if self.done {
            self.broker.published(self.id);
        } else {
            self.broker.forget(self.id);
        }
    }
}

impl Publisher for MemoryBroker {
    async fn publish(&self, message: &Message) -> Result<Published, PublishError> {
        match self.seen(message.event.id) {
            Seen::New => {}
            Seen::Published => return Ok(Published::Duplicate),
            Seen::Publishing => return Err(PublishError::full(StillPublishing)),
        }
        let mut publishing = Publishing {
            broker: self,
            id: message.event.id,
            done: false,
        };
        let subscribers: Vec<_> = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut gone = false;
        for subscriber in &subscribers {
            // Waits while the subscriber's queue is full: backpressure.
            gone |= subscriber.send(message.clone()).await.is_err();
        }
        if gone {
            self.subscribers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|subscriber| !subscriber.is_closed());
        }
        publishing.done = true;
        // No subscriber is not an error: the broker has it.
        Ok(Published::Stored)
    }
}
