//! Where the relay publishes: a broker that acknowledges.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::broadcast;

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

/// An in-process broker, for the embedded default and for tests without a
/// server: every subscriber gets every event (bounded: a subscriber more
/// than `capacity` events behind misses the oldest), and an event id seen
/// among the last `capacity` is acknowledged as a duplicate, as JetStream
/// does within its window.
#[derive(Debug, Clone)]
pub struct MemoryBroker {
    sender: broadcast::Sender<Message>,
    recent: Arc<Mutex<(HashSet<uuid::Uuid>, VecDeque<uuid::Uuid>)>>,
    capacity: usize,
}

impl MemoryBroker {
    /// A broker keeping `capacity` events for slow subscribers and for
    /// duplicate detection.
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            sender: broadcast::channel(capacity.max(1)).0,
            recent: Arc::default(),
            capacity: capacity.max(1),
        }
    }

    /// A new subscriber, receiving events published from now on.
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<Message> {
        self.sender.subscribe()
    }
}

impl Publisher for MemoryBroker {
    async fn publish(&self, message: &Message) -> Result<Published, PublishError> {
        {
            let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
            let (seen, order) = &mut *recent;
            if !seen.insert(message.event.id) {
                return Ok(Published::Duplicate);
            }
            order.push_back(message.event.id);
            if order.len() > self.capacity
                && let Some(oldest) = order.pop_front()
            {
                seen.remove(&oldest);
            }
        }
        // No subscriber is not an error: the broker has it.
        let _ = self.sender.send(message.clone());
        Ok(Published::Stored)
    }
}
