//! Single flight in process: concurrent callers of one key share one
//! computation.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};

use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::error::FlightError;
use crate::events::Events;

/// What a flight ends with, shared by every waiter.
type Landing<V, E> = Option<Result<V, FlightError<E>>>;

/// Where a flight's task sends its landing.
type LandingSender<V, E> = watch::Sender<Landing<V, E>>;

/// Concurrent callers of the same key share one computation.
///
/// The first caller's computation runs as its own task; every caller of the
/// key while it runs waits for the same result, and later callers' closures
/// are never run. The task keeps running while at least one caller waits
/// (dropping the first caller's future does not cancel it, and the others
/// do not start their own), and is cancelled when the last waiter leaves.
/// An error reaches every waiter (shared in an `Arc`), and so does a panic,
/// as [`FlightError::Panicked`]: never a hang, never a crashed process.
///
/// The map of flights is bounded: past `max_flights` keys in flight at
/// once, a caller computes on its own, uncoalesced, rather than wait for
/// room. An entry leaves the map when its flight ends.
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use palisade_coalesce::Coalescer;
///
/// # #[tokio::main]
/// # async fn main() {
/// let coalescer: Coalescer<&str, u64, std::io::Error> = Coalescer::new(10_000);
/// let origin_calls = Arc::new(AtomicUsize::new(0));
/// let callers = (0..100).map(|_| {
///     let (coalescer, calls) = (coalescer.clone(), origin_calls.clone());
///     tokio::spawn(async move {
///         coalescer
///             .run("trending", move || async move {
///                 calls.fetch_add(1, Ordering::SeqCst);
///                 tokio::time::sleep(std::time::Duration::from_millis(50)).await;
///                 Ok(42)
///             })
///             .await
///     })
/// });
/// for caller in callers.collect::<Vec<_>>() {
///     assert_eq!(caller.await.unwrap().unwrap(), 42);
/// }
/// assert_eq!(origin_calls.load(Ordering::SeqCst), 1);
/// # }
/// ```
pub struct Coalescer<K, V, E> {
    inner: Arc<Inner<K, V, E>>,
}

impl<K, V, E> Clone for Coalescer<K, V, E> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<K, V, E> fmt::Debug for Coalescer<K, V, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coalescer")
            .field("in_flight", &lock(&self.inner.flights).len())
            .field("max_flights", &self.inner.max_flights)
            .finish()
    }
}

struct Inner<K, V, E> {
    flights: Mutex<FlightMap<K, V, E>>,
    max_flights: usize,
    events: Arc<Events>,
    /// Whether a flight is a call to the origin, counted as one; a
    /// flight that relays to a shared store counts its origin calls
    /// itself.
    counts_origin_calls: bool,
}

/// The flights by key.
type FlightMap<K, V, E> = HashMap<K, Arc<Flight<V, E>>, foldhash::fast::RandomState>;

/// One computation in flight.
struct Flight<V, E> {
    landing: watch::Receiver<Landing<V, E>>,
    /// Set by the caller that started the flight, before it can leave.
    task: OnceLock<AbortHandle>,
    /// Callers waiting; changed only under the map's lock.
    waiters: AtomicUsize,
}

impl<K: Hash + Eq, V, E> Inner<K, V, E> {
    /// Whether a new flight may start beside `flights`: there is room,
    /// and a Tokio runtime to run its task (asked outside one, by a caller
    /// of its own executor, a caller computes alone rather than leave a
    /// flight no task will ever land).
    fn can_start(&self, flights: &FlightMap<K, V, E>) -> bool {
        flights.len() < self.max_flights && tokio::runtime::Handle::try_current().is_ok()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<K, V, E> Coalescer<K, V, E>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
{
    /// A coalescer with room for `max_flights` keys in flight at once.
    #[must_use]
    pub fn new(max_flights: usize) -> Self {
        Self::with_origin_calls(max_flights, true)
    }

    /// A coalescer whose flights relay to a shared store, which calls the
    /// origin (and counts those calls) only when it must.
    #[cfg(feature = "redis")]
    pub(crate) fn relaying(max_flights: usize) -> Self {
        Self::with_origin_calls(max_flights, false)
    }

    fn with_origin_calls(max_flights: usize, counts_origin_calls: bool) -> Self {
        Self {
            inner: Arc::new(Inner {
                flights: Mutex::new(HashMap::default()),
                max_flights,
                events: Arc::default(),
                counts_origin_calls,
            }),
        }
    }

    fn started(&self) {
        if self.inner.counts_origin_calls {
            self.inner.events.started();
        }
    }

    /// Counts computations started and callers coalesced into running ones
    /// with OpenTelemetry (feature `otel`), under the attribute
    /// `cache = name`; see the crate docs for the names. Only the first
    /// call registers.
    #[cfg(feature = "otel")]
    pub fn instrument(&self, meter: &opentelemetry::metrics::Meter, name: impl Into<String>) {
        self.inner.events.instrument(meter, &name.into());
    }

    /// Where this coalescer's (and its cache's) events go.
    pub(crate) fn events(&self) -> &Arc<Events> {
        &self.inner.events
    }

    /// Keys in flight now.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        lock(&self.inner.flights).len()
    }

    /// Callers waiting on `key`'s flight now (0 when none is in flight; a
    /// cache's background refresh counts as one until it runs on
    /// without its starter).
    #[must_use]
    pub fn waiters(&self, key: &K) -> usize {
        lock(&self.inner.flights)
            .get(key)
            .map_or(0, |flight| flight.waiters.load(Ordering::Relaxed))
    }

    /// The result of `compute` for `key`, computed once for every caller
    /// that asks while it runs.
    ///
    /// `compute` is called only if no flight for `key` is running, outside
    /// the coalescer's lock (it may look at this coalescer), and its future
    /// runs on the Tokio runtime as a task of its own. A panic in either
    /// reaches every waiter as [`FlightError::Panicked`]. With the map full,
    /// or asked outside a Tokio runtime, a caller computes alone.
    ///
    /// # Errors
    ///
    /// [`FlightError::Failed`] with the computation's error (shared by
    /// every waiter), [`FlightError::Panicked`] if it panicked, and
    /// [`FlightError::Cancelled`] if its task was cancelled from outside
    /// (the runtime shutting down).
    pub async fn run<F, Fut>(&self, key: K, compute: F) -> Result<V, FlightError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        let (flight, mut landing) = match self.board(&key, compute) {
            Boarding::Aboard(flight, landing) => (flight, landing),
            Boarding::Alone(compute) => {
                tracing::debug!(target: "palisade_coalesce", "no flight to join or start (the map full, or no Tokio runtime here); computing uncoalesced");
                self.started();
                return land(CatchUnwind::call(compute).await);
            }
        };
        let waiting = Waiting {
            inner: &self.inner,
            key: &key,
            flight: &flight,
        };
        let landed = landing
            .wait_for(Option::is_some)
            .await
            .map(|landed| landed.clone());
        drop(waiting);
        match landed {
            Ok(Some(result)) => result,
            // The task ended without a result: cancelled from outside.
            Ok(None) | Err(_) => Err(FlightError::Cancelled),
        }
    }
}

impl<K, V, E> Coalescer<K, V, E>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
{
    /// Starts a flight for `key` with `compute` unless one is running,
    /// without waiting for it: a background refresh. The flight counts
    /// one waiter that stays until it lands or `alone_until` passes, so it
    /// runs on whoever joins and leaves it until then, and after that
    /// only while callers wait on it (an origin that never answers holds
    /// the key no longer than a miss would). With the map full, nothing
    /// starts.
    pub(crate) fn start<F, Fut>(&self, key: &K, alone_until: Instant, compute: F)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        let mut flights = lock(&self.inner.flights);
        if flights.contains_key(key) {
            return;
        }
        if !self.inner.can_start(&flights) {
            drop(flights);
            tracing::debug!(target: "palisade_coalesce", "flight map full, or no Tokio runtime here; background refresh skipped");
            return;
        }
        let (flight, sender) = insert(&mut flights, key);
        // The task's place is the one counted; this caller holds one more
        // until the task's abort handle is set, so no caller that joins
        // and leaves meanwhile finds the flight abandoned with no handle
        // to cancel it.
        flight.waiters.fetch_add(1, Ordering::Relaxed);
        drop(flights);
        self.launch(key, &flight, sender, Some(alone_until), compute);
        if leave(&self.inner, key, &flight)
            && let Some(task) = flight.task.get()
        {
            task.abort();
        }
    }

    /// Takes `key`'s flight, if one is running, out of the map: its
    /// waiters still get its result, and a caller from now on starts a
    /// new flight (a cache's invalidation: the running one may have read
    /// what was just overwritten). A flight no caller waits on (a
    /// background refresh's: only the map holds it) is cancelled.
    pub(crate) fn detach(&self, key: &K) {
        let mut flights = lock(&self.inner.flights);
        if let Some(flight) = flights.remove(key)
            && Arc::strong_count(&flight) == 1
            && let Some(task) = flight.task.get()
        {
            task.abort();
        }
    }

    /// Joins `key`'s flight, or starts it with `compute`.
    fn board<F, Fut>(&self, key: &K, compute: F) -> Boarding<V, E, F>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        let mut flights = lock(&self.inner.flights);
        if let Some(flight) = flights.get(key) {
            flight.waiters.fetch_add(1, Ordering::Relaxed);
            self.inner.events.joined();
            return Boarding::Aboard(flight.clone(), flight.landing.clone());
        }
        if !self.inner.can_start(&flights) {
            return Boarding::Alone(compute);
        }
        let (flight, sender) = insert(&mut flights, key);
        drop(flights);
        self.launch(key, &flight, sender, None, compute);
        let landing = flight.landing.clone();
        Boarding::Aboard(flight, landing)
    }

    /// Calls `compute` and runs its future as `flight`'s task. The map's
    /// lock is not held: the closure may panic or use this coalescer.
    /// With `alone_until`, the starter's place is the task's own, left
    /// when that passes (a background refresh's: see [`start`](Self::start)).
    fn launch<F, Fut>(
        &self,
        key: &K,
        flight: &Arc<Flight<V, E>>,
        sender: LandingSender<V, E>,
        alone_until: Option<Instant>,
        compute: F,
    ) where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        self.started();
        let computation = crate::context::in_starters_context(CatchUnwind::call(compute));
        let (inner, own_key, own) = (
            Arc::downgrade(&self.inner),
            key.clone(),
            Arc::downgrade(flight),
        );
        let task = tokio::spawn(async move {
            let mut computation = std::pin::pin!(computation);
            let caught = match alone_until {
                Some(until) => tokio::select! {
                    caught = &mut computation => caught,
                    () = tokio::time::sleep_until(until) => {
                        // The starter leaves. With no caller waiting (none
                        // can once the coalescer or the flight, detached
                        // and joined by none, is gone), the flight ends
                        // here, its computation dropped.
                        let abandoned = match (inner.upgrade(), own.upgrade()) {
                            (Some(inner), Some(flight)) => leave(&inner, &own_key, &flight),
                            _ => true,
                        };
                        if abandoned {
                            tracing::debug!(target: "palisade_coalesce", "background refresh given up: the origin took too long");
                            return;
                        }
                        computation.await
                    }
                },
                None => computation.await,
            };
            let result = land(caught);
            // Leave the map first (unless a newer flight of the key took
            // this one's place): a caller from now on starts anew.
            if let Some(inner) = inner.upgrade() {
                let mut flights = lock(&inner.flights);
                if flights
                    .get(&own_key)
                    .is_some_and(|f| std::ptr::eq(Arc::as_ptr(f), own.as_ptr()))
                {
                    flights.remove(&own_key);
                }
            }
            sender.send_replace(Some(result));
        });
        // The starting caller counts as a waiter until it has returned
        // from here (a background refresh's starter too, beside its
        // task's own place), so no caller can find the flight abandoned
        // before this is set.
        let _ = flight.task.set(task.abort_handle());
    }
}

/// A new flight of `key` in `flights`, with one waiter: its starter.
fn insert<K: Hash + Eq + Clone, V, E>(
    flights: &mut FlightMap<K, V, E>,
    key: &K,
) -> (Arc<Flight<V, E>>, LandingSender<V, E>) {
    let (sender, landing) = watch::channel(None);
    let flight = Arc::new(Flight {
        landing,
        task: OnceLock::new(),
        waiters: AtomicUsize::new(1),
    });
    flights.insert(key.clone(), flight.clone());
    (flight, sender)
}

/// A caller's way into a flight.
enum Boarding<V, E, F> {
    /// Waiting on this flight.
    Aboard(Arc<Flight<V, E>>, watch::Receiver<Landing<V, E>>),
    /// No room, or no runtime to run a flight on: compute alone.
    Alone(F),
}

/// One caller's place in a flight: leaving makes the flight one waiter
/// lighter, and cancels it when it was the last.
struct Waiting<'a, K: Hash + Eq, V, E> {
    inner: &'a Inner<K, V, E>,
    key: &'a K,
    flight: &'a Arc<Flight<V, E>>,
}

impl<K: Hash + Eq, V, E> Drop for Waiting<'_, K, V, E> {
    fn drop(&mut self) {
        if leave(self.inner, self.key, self.flight) {
            if let Some(task) = self.flight.task.get() {
                task.abort();
            }
            tracing::debug!(target: "palisade_coalesce", "every waiter left; flight cancelled");
        }
    }
}

/// One waiter leaves `key`'s `flight`. Whether the flight is abandoned
/// (that was the last, and it has not landed): it is then out of the map,
/// so no caller joins it, and its task is to end.
fn leave<K: Hash + Eq, V, E>(inner: &Inner<K, V, E>, key: &K, flight: &Arc<Flight<V, E>>) -> bool {
    let mut flights = lock(&inner.flights);
    let left = flight.waiters.fetch_sub(1, Ordering::Relaxed) - 1;
    let abandoned = left == 0 && flight.landing.borrow().is_none();
    if abandoned && flights.get(key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
        flights.remove(key);
    }
    abandoned
}

/// A computation's end as what its waiters get.
fn land<V, E>(caught: Result<Result<V, E>, Box<dyn Any + Send>>) -> Result<V, FlightError<E>> {
    match caught {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(FlightError::Failed(Arc::new(error))),
        Err(panic) => {
            let message = palisade_hints::panic_message(&*panic);
            tracing::error!(target: "palisade_coalesce", %message, "the computation panicked");
            Err(FlightError::Panicked(message.into()))
        }
    }
}

/// A computation whose panic, in its closure or its future, becomes a
/// value.
enum CatchUnwind<Fut> {
    Running(Pin<Box<Fut>>),
    /// The closure panicked; the panic, until polled.
    Panicked(Option<Box<dyn Any + Send>>),
}

impl<Fut> CatchUnwind<Fut> {
    /// Calls `compute`, catching a panic before its future exists.
    fn call(compute: impl FnOnce() -> Fut) -> Self {
        match std::panic::catch_unwind(AssertUnwindSafe(compute)) {
            Ok(future) => Self::Running(Box::pin(future)),
            Err(panic) => Self::Panicked(Some(panic)),
        }
    }
}

impl<T, Fut: Future<Output = T>> Future for CatchUnwind<Fut> {
    type Output = Result<T, Box<dyn Any + Send>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // The future is boxed: nothing here is pinned in place.
        let future = match self.get_mut() {
            Self::Running(future) => future.as_mut(),
            Self::Panicked(panic) => {
                return Poll::Ready(Err(panic
                    .take()
                    .unwrap_or_else(|| Box::new("polled again"))));
            }
        };
        match std::panic::catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}
