//! Requests waiting for an order's saga to end, by order id: a bounded
//! map of wake-ups whose entries leave with their last waiter. A wake-up
//! carries the ended order when this process's consumer ended it, so the
//! woken requests answer without reading it again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;
use tokio::sync::futures::Notified;

use super::Order;

/// One order's wake-up, and its end once committed.
#[derive(Debug, Default)]
struct Slot {
    notify: Notify,
    end: Mutex<End>,
}

/// An order's end as the consumer's transaction wrote it: `written`
/// before the commit (a rolled-back batch writes it again, or never
/// commits it), `committed` once [`Waiters::wake`] ran after the commit.
#[derive(Debug, Default)]
struct End {
    written: Option<Order>,
    committed: Option<Order>,
}

impl Slot {
    fn end(&self) -> MutexGuard<'_, End> {
        self.end.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The order ids that requests wait for, with one wake-up each, holding
/// at most `capacity` ids. An entry exists only while a [`Waiter`] for
/// it lives: dropping the last one (an answer, an error, a client gone)
/// removes it.
#[derive(Debug, Clone)]
pub(crate) struct Waiters {
    waiting: Arc<Mutex<HashMap<String, Arc<Slot>>>>,
    capacity: usize,
    /// Set for a stop: every wait ends at once, now and from now on.
    closed: Arc<AtomicBool>,
}

impl Waiters {
    /// Room for `capacity` order ids waited for at once.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            waiting: Arc::default(),
            capacity,
            closed: Arc::default(),
        }
    }

    /// Ends every wait, now and from now on: each waiter is woken, and
    /// [`closed`](Self::closed) tells it to answer as things stand.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        for slot in self.lock().values() {
            slot.notify.notify_waiters();
        }
    }

    /// Whether the waits are over ([`close`](Self::close)).
    pub(crate) fn closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Slot>>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A wait for `order_id`'s wake-up; `None` when `capacity` other
    /// orders are waited for already (the caller then polls).
    pub(crate) fn register(&self, order_id: &str) -> Option<Waiter> {
        let mut waiting = self.lock();
        let slot = match waiting.get(order_id) {
            Some(slot) => Arc::clone(slot),
            None if waiting.len() >= self.capacity => return None,
            None => Arc::clone(waiting.entry(order_id.to_owned()).or_default()),
        };
        Some(Waiter {
            waiters: self.clone(),
            order_id: order_id.to_owned(),
            slot,
        })
    }

    /// Notes `order`'s end as written in a transaction not yet
    /// committed, when someone waits for it; [`wake`](Self::wake) hands
    /// it to them once the transaction commits.
    pub(crate) fn written(&self, order: Order) {
        if let Some(slot) = self.lock().get(&order.id) {
            slot.end().written = Some(order);
        }
    }

    /// Wakes every request waiting for `order_id`, whose end is
    /// committed: with the end [`written`](Self::written) for it, if any.
    pub(crate) fn wake(&self, order_id: &str) {
        if let Some(slot) = self.lock().get(order_id) {
            {
                let mut end = slot.end();
                end.committed = end.written.take();
            }
            slot.notify.notify_waiters();
        }
    }

    /// How many order ids are waited for.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// One request's wait for an order; dropping it removes the order's
/// entry when no one else waits for it.
#[derive(Debug)]
pub(crate) struct Waiter {
    waiters: Waiters,
    order_id: String,
    slot: Arc<Slot>,
}

impl Waiter {
    /// The next wake-up. It counts from this call, so create it before
    /// reading the order: an end committed in between is not missed.
    pub(crate) fn notified(&self) -> Notified<'_> {
        self.slot.notify.notified()
    }

    /// The order's end, once committed and woken for by this process.
    pub(crate) fn ended(&self) -> Option<Order> {
        self.slot.end().committed.clone()
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut waiting = self.waiters.lock();
        // Every clone of the wake-up is made under this lock: the map's
        // and this one's are the last two when no one else waits.
        if Arc::strong_count(&self.slot) == 2 {
            waiting.remove(&self.order_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_lives_while_someone_waits_and_the_map_is_bounded() {
        let waiters = Waiters::new(2);
        let (a, also_a) = (waiters.register("a"), waiters.register("a"));
        let b = waiters.register("b");
        assert_eq!(waiters.len(), 2);
        assert!(waiters.register("c").is_none(), "full");
        assert!(waiters.register("a").is_some(), "a known id still joins");
        drop(a);
        assert_eq!(waiters.len(), 2, "a is still waited for");
        drop(also_a);
        assert_eq!(waiters.len(), 1);
        assert!(waiters.register("c").is_some(), "room again");
        drop(b);
        assert_eq!(waiters.len(), 0, "c's waiter was dropped at once");
    }

    fn ended(id: &str, status: &str) -> Order {
        Order {
            id: id.to_owned(),
            sku: "sku-1".to_owned(),
            quantity: 1,
            amount_cents: 100,
            status: status.to_owned(),
            reason: None,
            saga_ms: Some(5),
        }
    }

    #[test]
    fn a_wake_hands_over_the_end_written_before_its_commit_and_no_other() {
        let waiters = Waiters::new(4);
        let waiter = waiters.register("a").unwrap();
        waiters.written(ended("a", "cancelled"));
        // A rolled-back batch's end is written again by the batch that
        // commits.
        waiters.written(ended("a", "confirmed"));
        assert_eq!(waiter.ended(), None, "not committed yet");
        waiters.wake("a");
        assert_eq!(waiter.ended(), Some(ended("a", "confirmed")));
        // An end no one waits for is not kept.
        waiters.written(ended("b", "confirmed"));
        assert_eq!(waiters.len(), 1);
        // Woken with no end written here (another process's consumer):
        // the waiter reads the order.
        let c = waiters.register("c").unwrap();
        waiters.wake("c");
        assert_eq!(c.ended(), None);
    }

    #[tokio::test]
    async fn a_wake_reaches_a_wait_made_before_it() {
        let waiters = Waiters::new(1);
        let waiter = waiters.register("a").unwrap();
        let notified = waiter.notified();
        waiters.wake("a");
        notified.await;
    }
}
