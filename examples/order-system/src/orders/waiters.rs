//! Requests waiting for an order's saga to end, by order id: a bounded
//! map of wake-ups whose entries leave with their last waiter.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;
use tokio::sync::futures::Notified;

/// The order ids that requests wait for, with one wake-up each, holding
/// at most `capacity` ids. An entry exists only while a [`Waiter`] for
/// it lives: dropping the last one (an answer, an error, a client gone)
/// removes it.
#[derive(Debug, Clone)]
pub(crate) struct Waiters {
    waiting: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
    capacity: usize,
}

impl Waiters {
    /// Room for `capacity` order ids waited for at once.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            waiting: Arc::default(),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Notify>>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A wait for `order_id`'s wake-up; `None` when `capacity` other
    /// orders are waited for already (the caller then polls).
    pub(crate) fn register(&self, order_id: &str) -> Option<Waiter> {
        let mut waiting = self.lock();
        let notify = match waiting.get(order_id) {
            Some(notify) => Arc::clone(notify),
            None if waiting.len() >= self.capacity => return None,
            None => Arc::clone(waiting.entry(order_id.to_owned()).or_default()),
        };
        Some(Waiter {
            waiters: self.clone(),
            order_id: order_id.to_owned(),
            notify,
        })
    }

    /// Wakes every request waiting for `order_id`.
    pub(crate) fn wake(&self, order_id: &str) {
        if let Some(notify) = self.lock().get(order_id) {
            notify.notify_waiters();
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
    notify: Arc<Notify>,
}

impl Waiter {
    /// The next wake-up. It counts from this call, so create it before
    /// reading the order: an end committed in between is not missed.
    pub(crate) fn notified(&self) -> Notified<'_> {
        self.notify.notified()
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut waiting = self.waiters.lock();
        // Every clone of the wake-up is made under this lock: the map's
        // and this one's are the last two when no one else waits.
        if Arc::strong_count(&self.notify) == 2 {
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

    #[tokio::test]
    async fn a_wake_reaches_a_wait_made_before_it() {
        let waiters = Waiters::new(1);
        let waiter = waiters.register("a").unwrap();
        let notified = waiter.notified();
        waiters.wake("a");
        notified.await;
    }
}
