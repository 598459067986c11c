//! A cache in front of a slow origin: coalesced misses, stale-while-
//! revalidate, stale-if-error and early refresh.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::FlightError;
use crate::flight::Coalescer;
use crate::freshness::{Entry, Freshness, State};

/// How a lookup was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Served {
    /// A fresh value from the cache.
    Fresh,
    /// A stale value, while one background refresh runs.
    Stale,
    /// A value the origin computed for this lookup (alone or coalesced).
    Miss,
    /// A stale value standing in for an origin that failed.
    StaleIfError,
}

/// A value and how it was served.
#[derive(Debug, Clone, PartialEq)]
pub struct Lookup<V> {
    /// The value.
    pub value: V,
    /// How it was served.
    pub served: Served,
    /// How old it is.
    pub age: Duration,
}

/// A bounded in-process cache of values computed by a slow origin.
///
/// - A miss is computed once however many callers ask at the same time
///   (through a [`Coalescer`]), and stored with its [`Freshness`].
/// - A fresh value is served as is; now and then, as expiry nears, a
///   caller also starts an early background refresh (XFetch).
/// - A stale value is served at once while one background refresh runs.
/// - When the origin fails, a value within its stale-if-error window is
///   served instead of the error.
///
/// Background refreshes run as Tokio tasks; their errors keep the old value
/// (and are logged). The cache holds at most `capacity` entries: past it,
/// entries past all their windows go first, else the sixteenth stored
/// longest ago.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use palisade_coalesce::{Cache, Freshness, Served};
///
/// # #[tokio::main]
/// # async fn main() {
/// let freshness = Freshness::new(Duration::from_secs(30))
///     .stale_while_revalidate(Duration::from_secs(60));
/// let trending: Cache<String, Vec<u32>, std::io::Error> = Cache::new(1_000, freshness);
/// let lookup = trending
///     .get_with("books".to_owned(), || async { Ok(vec![7, 3, 9]) })
///     .await
///     .unwrap();
/// assert_eq!((lookup.value, lookup.served), (vec![7, 3, 9], Served::Miss));
/// let again = trending.get_with("books".to_owned(), || async { Ok(vec![]) }).await.unwrap();
/// assert_eq!(again.served, Served::Fresh);
/// # }
/// ```
pub struct Cache<K, V, E> {
    store: Arc<Mutex<Store<K, V>>>,
    capacity: usize,
    freshness: Freshness,
    flights: Coalescer<K, V, E>,
}

impl<K, V, E> Clone for Cache<K, V, E> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            capacity: self.capacity,
            freshness: self.freshness,
            flights: self.flights.clone(),
        }
    }
}

impl<K, V, E> fmt::Debug for Cache<K, V, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("capacity", &self.capacity)
            .field("freshness", &self.freshness)
            .finish_non_exhaustive()
    }
}

impl<K, V, E> Cache<K, V, E>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
{
    /// A cache of at most `capacity` entries, each with `freshness`.
    #[must_use]
    pub fn new(capacity: usize, freshness: Freshness) -> Self {
        Self {
            store: Arc::new(Mutex::new(Store {
                entries: HashMap::default(),
                computing: HashMap::default(),
                computations: 0,
            })),
            capacity: capacity.max(1),
            freshness,
            flights: Coalescer::new(capacity.max(1)),
        }
    }

    /// Counts lookups by how they were served, computations, coalesced
    /// callers and early refreshes with OpenTelemetry (feature `otel`),
    /// under the attribute `cache = name`; see the crate docs for the
    /// names. Only the first call registers.
    #[cfg(feature = "otel")]
    pub fn instrument(&self, meter: &opentelemetry::metrics::Meter, name: impl Into<String>) {
        self.flights.instrument(meter, name);
    }

    /// The freshness values get when the computation does not say.
    #[must_use]
    pub const fn freshness(&self) -> Freshness {
        self.freshness
    }

    /// Entries held now.
    #[must_use]
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether the cache holds nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the value stored for `key`, if any: the next lookup computes
    /// it. A computation of `key` already running (which may have read
    /// the origin before the write that calls for this) goes on only for
    /// the callers waiting on it (a background refresh nobody waits on is
    /// dropped, or given up at the end of its window), and what it finds
    /// is not stored; the next lookup starts a computation of its own.
    pub fn invalidate(&self, key: &K) {
        let mut store = self.lock();
        store.entries.remove(key);
        let last = store.computations;
        if let Some(computing) = store.computing.get_mut(key) {
            computing.fence = last;
        }
        // Under the store's lock, so no lookup finds the value gone and
        // joins the old computation.
        self.flights.detach(key);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store<K, V>> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The value for `key`, from the cache or from `compute`.
    ///
    /// `compute` is called at most once per flight: for a miss, or for a
    /// background refresh (then on a Tokio task of its own).
    ///
    /// # Errors
    ///
    /// The origin's error (shared, see [`FlightError`]) when there is no
    /// value usable in its place.
    pub async fn get_with<F, Fut>(&self, key: K, compute: F) -> Result<Lookup<V>, FlightError<E>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        let freshness = self.freshness;
        let compute = move || {
            let computing = compute();
            async move { computing.await.map(|value| (value, Some(freshness))) }
        };
        self.get_with_freshness(key, compute).await
    }

    /// Like [`get_with`](Self::get_with), for computations that say how
    /// fresh each value is (from the response's `Cache-Control`, say):
    /// `None` is not stored, and drops the value stored before, though
    /// every waiter of the flight gets it.
    ///
    /// # Errors
    ///
    /// As [`get_with`](Self::get_with).
    pub async fn get_with_freshness<F, Fut>(
        &self,
        key: K,
        compute: F,
    ) -> Result<Lookup<V>, FlightError<E>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(V, Option<Freshness>), E>> + Send + 'static,
    {
        let now = Instant::now();
        // The entry's reference only, under the lock: its value is cloned
        // after (a response's whole header map, every hit, held every
        // other lookup of every key up).
        let cached = self.lock().entries.get(&key).map(Arc::clone);
        let Some(entry) = cached else {
            let filled = self.fill(key, compute).await;
            self.flights.events().looked_up(&filled);
            return filled;
        };
        let served = match entry.state(now, 1.0 - fastrand::f64()) {
            State::Fresh => Served::Fresh,
            State::RefreshEarly => {
                self.flights.events().early_refresh();
                self.refresh_in_background(&key, entry.refresh_alone_until(now), compute);
                Served::Fresh
            }
            State::Stale => {
                self.refresh_in_background(&key, entry.refresh_alone_until(now), compute);
                Served::Stale
            }
            State::Expired | State::Dead => {
                let filled = match self.fill(key, compute).await {
                    Err(_) if entry.usable_on_error(Instant::now()) => {
                        palisade_hints::throttled!(warn, by: &self.flights.events().warnings, target: "palisade_coalesce", "origin failed; serving a stale value");
                        Ok(Lookup {
                            age: entry.age(Instant::now()),
                            value: entry.value().clone(),
                            served: Served::StaleIfError,
                        })
                    }
                    result => result,
                };
                self.flights.events().looked_up(&filled);
                return filled;
            }
        };
        self.flights.events().served(served);
        Ok(Lookup {
            age: entry.age(now),
            value: entry.value().clone(),
            served,
        })
    }

    /// Computes `key` (coalesced) and stores the value.
    async fn fill<F, Fut>(&self, key: K, compute: F) -> Result<Lookup<V>, FlightError<E>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(V, Option<Freshness>), E>> + Send + 'static,
    {
        let value = self
            .flights
            .run(key.clone(), self.computation(key, compute))
            .await?;
        Ok(Lookup {
            value,
            served: Served::Miss,
            age: Duration::ZERO,
        })
    }

    /// Starts one background refresh of `key`, unless a flight of `key`
    /// is running already (decided now, not when a task first runs, so a
    /// burst of stale reads starts one refresh and one task). It runs on
    /// its own until `alone_until` (see [`Entry::refresh_alone_until`]),
    /// then only while lookups wait on it.
    fn refresh_in_background<F, Fut>(&self, key: &K, alone_until: Instant, compute: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(V, Option<Freshness>), E>> + Send + 'static,
    {
        let computation = self.computation(key.clone(), compute);
        let events = Arc::clone(self.flights.events());
        self.flights.start(key, alone_until, move || {
            let refreshing = computation();
            async move {
                let refreshed = refreshing.await;
                if refreshed.is_err() {
                    palisade_hints::throttled!(warn, by: &events.warnings, target: "palisade_coalesce", "background refresh failed; keeping the stale value");
                }
                refreshed
            }
        });
    }

    /// The flight's work: compute, time it, store the entry, unless the
    /// key was invalidated since the computation started.
    fn computation<F, Fut>(
        &self,
        key: K,
        compute: F,
    ) -> impl FnOnce() -> ComputeFuture<V, E> + use<K, V, E, F, Fut>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(V, Option<Freshness>), E>> + Send + 'static,
    {
        let (store, capacity) = (self.store.clone(), self.capacity);
        move || {
            // Called when the flight starts: from now on an invalidation
            // of the key fences this computation off.
            let mut computing = Computing::start(store, key.clone());
            Box::pin(async move {
                let started = Instant::now();
                let (value, fresh_for) = compute().await?;
                let Some(mut store) = computing.end() else {
                    return Ok(value);
                };
                let Some(freshness) = fresh_for else {
                    // Not to be kept: nor is an older value to be served
                    // (stale, or in place of an error) in its place.
                    store.entries.remove(&key);
                    return Ok(value);
                };
                let now = Instant::now();
                let entry = freshness.entry(value.clone(), now, now - started);
                let evicted =
                    if store.entries.len() >= capacity && !store.entries.contains_key(&key) {
                        evict(&mut store.entries, now)
                    } else {
                        Vec::new()
                    };
                store.entries.insert(key, Arc::new(entry));
                // Dropped once the lock is let go.
                drop(store);
                drop(evicted);
                Ok(value)
            })
        }
    }
}

/// What a cache holds: its values, and the computations of each key
/// running now, fenced by the key's last invalidation.
struct Store<K, V> {
    entries: HashMap<K, Arc<Entry<V>>, foldhash::fast::RandomState>,
    /// The keys with computations running.
    computing: HashMap<K, Computations, foldhash::fast::RandomState>,
    /// Computations numbered so far.
    computations: u64,
}

/// The computations of one key running now.
struct Computations {
    running: usize,
    /// Computations numbered up to this one started before the key's
    /// last invalidation: what they find is not stored.
    fence: u64,
}

/// A computation's place in its cache's store, left when it ends however
/// it ends (its value, its error, or its task cancelled).
struct Computing<K: Hash + Eq + Clone, V> {
    store: Arc<Mutex<Store<K, V>>>,
    key: K,
    number: u64,
    ended: bool,
}

impl<K: Hash + Eq + Clone, V> Computing<K, V> {
    fn start(store: Arc<Mutex<Store<K, V>>>, key: K) -> Self {
        let number = {
            let mut held = store.lock().unwrap_or_else(PoisonError::into_inner);
            held.computations += 1;
            let number = held.computations;
            held.computing
                .entry(key.clone())
                .or_insert(Computations {
                    running: 0,
                    fence: 0,
                })
                .running += 1;
            number
        };
        Self {
            store,
            key,
            number,
            ended: false,
        }
    }

    /// Leaves the computation's place; the store, locked, if it may store
    /// the key's value (it started after the key's last invalidation).
    fn end(&mut self) -> Option<std::sync::MutexGuard<'_, Store<K, V>>> {
        self.ended = true;
        let mut store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        let fenced = match store.computing.get_mut(&self.key) {
            Some(computing) => {
                computing.running -= 1;
                let fenced = self.number <= computing.fence;
                if computing.running == 0 {
                    store.computing.remove(&self.key);
                }
                fenced
            }
            // Not there only if the count went wrong: store nothing.
            None => true,
        };
        (!fenced).then_some(store)
    }
}

impl<K: Hash + Eq + Clone, V> Drop for Computing<K, V> {
    fn drop(&mut self) {
        if !self.ended {
            drop(self.end());
        }
    }
}

/// The boxed work of one flight.
type ComputeFuture<V, E> = std::pin::Pin<Box<dyn Future<Output = Result<V, E>> + Send>>;

/// Makes room: everything past all its windows goes, and, while that is
/// less than a sixteenth of the entries (at least one), the entries stored
/// longest ago up to a sixteenth. Each eviction is a pass over the map
/// under its lock; evicting a sixteenth at a time makes that one pass per
/// sixteenth of the capacity inserts, not one per insert. (Evicting only
/// what had expired, one entry among long-lived ones, made room for one:
/// the next insert passed over the whole map again, every miss of a cache
/// whose entries' lifetimes differ, as HTTP responses' do.) The evicted
/// entries are returned, to be dropped once the lock is let go.
fn evict<K: Hash + Eq, V>(
    entries: &mut HashMap<K, Arc<Entry<V>>, foldhash::fast::RandomState>,
    now: Instant,
) -> Vec<Arc<Entry<V>>> {
    let evicting = (entries.len() / 16).max(1);
    let mut evicted: Vec<Arc<Entry<V>>> = entries
        .extract_if(|_, entry| entry.keep_until() <= now)
        .map(|(_, entry)| entry)
        .collect();
    let Some(more) = evicting.checked_sub(evicted.len()).filter(|&more| more > 0) else {
        return evicted;
    };
    let mut stored: Vec<Instant> = entries.values().map(|entry| now - entry.age(now)).collect();
    if stored.is_empty() {
        return evicted;
    }
    let more = more.min(stored.len());
    let (_, &mut cutoff, _) = stored.select_nth_unstable(more - 1);
    // Everything stored before the cutoff goes, and of the entries stored
    // at it (many, under a paused clock) only as many as make the count.
    let mut tied = more - stored.iter().filter(|&&at| at < cutoff).count();
    evicted.extend(
        entries
            .extract_if(|_, entry| {
                let at = now - entry.age(now);
                if at == cutoff && tied > 0 {
                    tied -= 1;
                    return true;
                }
                at < cutoff
            })
            .map(|(_, entry)| entry),
    );
    evicted
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full cache holding one expired entry among long-lived ones makes
    /// a sixteenth of its room: it made room for that one only.
    #[test]
    fn an_eviction_makes_a_sixteenth_of_room_with_one_entry_expired() {
        let now = Instant::now();
        let long = Freshness::new(Duration::from_secs(3_600));
        let short = Freshness::new(Duration::from_millis(1));
        let mut entries = HashMap::with_hasher(foldhash::fast::RandomState::default());
        for key in 0..1_023 {
            entries.insert(key, Arc::new(long.entry((), now, Duration::ZERO)));
        }
        entries.insert(1_023, Arc::new(short.entry((), now, Duration::ZERO)));
        let evicted = evict(&mut entries, now + Duration::from_secs(1));
        assert_eq!(evicted.len(), 64);
        assert_eq!(entries.len(), 1_024 - 64);
        assert!(!entries.contains_key(&1_023), "the expired entry went");
    }

    /// Entries past their windows all go, however many; with none, the
    /// sixteenth stored longest ago.
    #[test]
    fn an_eviction_takes_the_expired_then_the_oldest() {
        let now = Instant::now();
        let long = Freshness::new(Duration::from_secs(3_600));
        let short = Freshness::new(Duration::from_millis(1));
        let mut entries = HashMap::with_hasher(foldhash::fast::RandomState::default());
        for key in 0..100 {
            entries.insert(key, Arc::new(short.entry((), now, Duration::ZERO)));
        }
        for key in 100..160 {
            let stored = now + Duration::from_millis(key);
            entries.insert(key, Arc::new(long.entry((), stored, Duration::ZERO)));
        }
        let later = now + Duration::from_secs(1);
        assert_eq!(evict(&mut entries, later).len(), 100);
        assert_eq!(entries.len(), 60);
        assert_eq!(evict(&mut entries, later).len(), 3);
        let mut kept: Vec<u64> = entries.keys().copied().collect();
        kept.sort_unstable();
        assert_eq!(kept, (103..160).collect::<Vec<u64>>(), "the oldest went");
    }
}
