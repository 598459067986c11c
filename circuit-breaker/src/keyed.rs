//! One breaker per key (host, route, tenant): a sick dependency behind one
//! key does not shut out the others.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, Instant};

use palisade_hints::share::OwnLine;
use tower::Layer;

use crate::breaker::{CircuitBreaker, State};
use crate::classify::ErrorsAsFailures;
use crate::config::Config;
use crate::future::now;
use crate::respond::BoxErrors;
use crate::service::{CircuitBreakerService, SelectBreaker};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// How many breakers a new key arriving at a full registry looks at for
/// one to retire.
const SCAN_BUDGET: usize = 16;

/// The breakers of a [`KeyedCircuitBreakerLayer`], made on first use of a
/// key from one configuration, and bounded.
///
/// When it holds `capacity` breakers and a new key arrives, a breaker that
/// is closed and unused for `idle_after` is retired to make room, or else
/// one unused for as long that is done being open (its open duration has
/// passed, or it is half-open with no probe under way: its next call would
/// be a probe); a breaker still open, probing, forced or recently used is
/// never retired, so a failing key
/// cannot escape its breaker by crowding it out (one that comes back after
/// `idle_after` may find a new breaker, which lets `minimum_calls` calls
/// through before it opens, where its own would have let one probe). The
/// search is
/// a clock: a hand goes round the breakers and looks at 16 at most per new
/// key, from where it stopped last, so admitting a key costs the same
/// however full the registry is and a flood of new keys cannot make the
/// registry scan itself over and over under its lock. If none of those 16
/// can be retired, the new key shares one overflow breaker (a later key
/// looks further round), and a warning is logged.
pub struct BreakerRegistry<K> {
    config: Config,
    capacity: usize,
    idle_after: Duration,
    start: Instant,
    /// On a line of its own: every lookup writes the lock's word, and the
    /// fields read on every call beside it would miss with it.
    breakers: OwnLine<RwLock<Breakers<K>>>,
    overflow: CircuitBreaker,
    /// The registry's "full" warnings: one every few seconds.
    warnings: palisade_hints::Throttle,
    /// Joins each breaker made to its fleet, once [shared](Self::share).
    #[cfg(all(feature = "redis", not(palisade_loom)))]
    fleet: std::sync::OnceLock<Joiner<K>>,
}

/// What joins a key's breaker to the registry's fleet.
#[cfg(all(feature = "redis", not(palisade_loom)))]
type Joiner<K> = Box<dyn Fn(&K, &CircuitBreaker) + Send + Sync>;

/// The breakers, in the order the clock hand visits them.
struct Breakers<K> {
    /// Each key's place in `entries`.
    index: HashMap<K, usize>,
    entries: Vec<Entry<K>>,
    /// The next entry the hand looks at.
    hand: usize,
}

struct Entry<K> {
    key: K,
    breaker: CircuitBreaker,
    /// Milliseconds since the registry began, at the key's last call.
    last_used: AtomicU64,
}

impl<K: Eq + Hash + Clone> Breakers<K> {
    fn get(&self, key: &K) -> Option<&Entry<K>> {
        self.index.get(key).map(|&at| &self.entries[at])
    }

    /// Moves the hand over at most [`SCAN_BUDGET`] entries; the place of
    /// the first closed one unused for `idle_ms`, else of the first one
    /// unused for as long that is done being open (its open duration
    /// passed, or half-open with no probe under way), if any.
    fn retirable(&mut self, now: Instant, now_ms: u64, idle_ms: u64) -> Option<usize> {
        let mut done_being_open = None;
        for _ in 0..SCAN_BUDGET.min(self.entries.len()) {
            let at = self.hand;
            self.hand = (at + 1) % self.entries.len();
            let entry = &self.entries[at];
            if now_ms.saturating_sub(entry.last_used.load(Ordering::Relaxed)) < idle_ms {
                continue;
            }
            match entry.breaker.state() {
                State::Closed => return Some(at),
                // Such a breaker never changed again: only a call moves an
                // open breaker on, so a registry full of them took no new
                // key for good.
                State::Open if entry.breaker.open_until().is_some_and(|until| until <= now) => {
                    done_being_open.get_or_insert(at);
                }
                // Not while its probe is under way: its outcome decides.
                State::HalfOpen if !entry.breaker.probing(now) => {
                    done_being_open.get_or_insert(at);
                }
                _ => {}
            }
        }
        done_being_open
    }

    /// Puts `entry` at `at` (a retired entry's place) or at the end.
    fn insert(&mut self, entry: Entry<K>, at: Option<usize>) {
        let key = entry.key.clone();
        match at {
            Some(at) => {
                let retired = std::mem::replace(&mut self.entries[at], entry);
                self.index.remove(&retired.key);
                self.index.insert(key, at);
            }
            None => {
                self.index.insert(key, self.entries.len());
                self.entries.push(entry);
            }
        }
    }
}

impl<K: Eq + Hash + Clone> BreakerRegistry<K> {
    fn new(config: Config, capacity: usize, idle_after: Duration) -> Self {
        let start = now();
        Self {
            overflow: CircuitBreaker::new_at(config.clone(), start),
            config,
            capacity: capacity.max(1),
            idle_after,
            start,
            breakers: OwnLine(RwLock::new(Breakers {
                index: HashMap::new(),
                entries: Vec::new(),
                hand: 0,
            })),
            warnings: palisade_hints::Throttle::default(),
            #[cfg(all(feature = "redis", not(palisade_loom)))]
            fleet: std::sync::OnceLock::new(),
        }
    }

    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.start).as_millis()).unwrap_or(u64::MAX)
    }

    /// The breaker of `key`, made if it has none yet.
    pub fn get(&self, key: &K) -> CircuitBreaker {
        let at = now();
        let now_ms = self.millis(at);
        {
            let breakers = self.breakers.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(entry) = breakers.get(key) {
                // Written when it moves on, about once a millisecond: a
                // line every caller of the key writes on every call is a
                // line they take turns owning. It only moves forward.
                if entry.last_used.load(Ordering::Relaxed) < now_ms {
                    entry.last_used.fetch_max(now_ms, Ordering::Relaxed);
                }
                return entry.breaker.clone();
            }
        }
        let mut breakers = self
            .breakers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = breakers.get(key) {
            return entry.breaker.clone();
        }
        let place = if breakers.entries.len() >= self.capacity {
            let idle_ms = u64::try_from(self.idle_after.as_millis()).unwrap_or(u64::MAX);
            let Some(place) = breakers.retirable(at, now_ms, idle_ms) else {
                // Every new key's while the registry stays full.
                palisade_hints::throttled!(warn, by: &self.warnings,
                    target: "palisade_circuit_breaker",
                    capacity = self.capacity,
                    "breaker registry full of busy or open breakers: a new key shares the overflow breaker"
                );
                return self.overflow.clone();
            };
            Some(place)
        } else {
            None
        };
        let breaker = CircuitBreaker::new_at(self.config.clone(), at);
        #[cfg(all(feature = "redis", not(palisade_loom)))]
        if let Some(join) = self.fleet.get() {
            join(key, &breaker);
        }
        breakers.insert(
            Entry {
                key: key.clone(),
                breaker: breaker.clone(),
                last_used: AtomicU64::new(now_ms),
            },
            place,
        );
        breaker
    }

    /// The breaker of `key`, if it has one: to read or force its state.
    pub fn breaker(&self, key: &K) -> Option<CircuitBreaker> {
        let breakers = self.breakers.read().unwrap_or_else(PoisonError::into_inner);
        breakers.get(key).map(|entry| entry.breaker.clone())
    }

    /// The breaker keys share when the registry is full.
    pub const fn overflow(&self) -> &CircuitBreaker {
        &self.overflow
    }

    /// How many keys have a breaker.
    pub fn len(&self) -> usize {
        self.breakers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .entries
            .len()
    }

    /// Whether no key has a breaker yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(all(feature = "redis", not(palisade_loom)))]
impl<K: Eq + Hash + Clone + fmt::Display> BreakerRegistry<K> {
    /// Shares each key's breaker with the registries of the other
    /// replicas that share as `name` through `fleet` (feature `redis`):
    /// key `k`'s breaker joins as `name:k` (one key's trip opens that key
    /// everywhere, and no other), the overflow breaker as
    /// `name#overflow`. Breakers there now join at once, those made later
    /// as they are made; a retired breaker leaves its fleet.
    ///
    /// The links of all the keys share the fleet's one connection and one
    /// subscription.
    ///
    /// # Errors
    ///
    /// [`AlreadyJoined`](crate::fleet::AlreadyJoined) when the registry
    /// shares already.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime; and so does [`get`](Self::get) once the
    /// registry shares, when it makes a key's breaker outside one (a
    /// layer's services are called within one).
    pub fn share(
        &self,
        fleet: &crate::fleet::Fleet,
        name: &str,
    ) -> Result<(), crate::fleet::AlreadyJoined> {
        let (joining, prefix) = (fleet.clone(), name.to_owned());
        let join: Joiner<K> = Box::new(move |key, breaker| {
            // A breaker this registry just made has joined no fleet.
            let _ = joining.join(&format!("{prefix}:{key}"), breaker);
        });
        // Under the lock, so no breaker is made between the joins of those
        // there and the first made after.
        let breakers = self
            .breakers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        self.fleet
            .set(join)
            .map_err(|_| crate::fleet::AlreadyJoined)?;
        fleet.join(&format!("{name}#overflow"), &self.overflow)?;
        for entry in &breakers.entries {
            fleet.join(&format!("{name}:{}", entry.key), &entry.breaker)?;
        }
        Ok(())
    }
}

impl<K> fmt::Debug for BreakerRegistry<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerRegistry")
            .field("capacity", &self.capacity)
            .field("idle_after", &self.idle_after)
            .finish_non_exhaustive()
    }
}

/// A breaker per key of the request: `key` picks the key (the host, the
/// route, the tenant), and every key gets its own breaker from `config`.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use palisade_circuit_breaker::{Config, KeyedCircuitBreakerLayer};
/// use tower::{ServiceBuilder, service_fn};
///
/// # fn main() -> Result<(), palisade_circuit_breaker::ConfigError> {
/// // One breaker per upstream host, at most 1,000, idle ones retired after 10 minutes.
/// let layer = KeyedCircuitBreakerLayer::new(
///     Config::builder().build()?,
///     |request: &(String, u32)| request.0.clone(),
/// )
/// .capacity(1_000, Duration::from_secs(600));
/// let service = ServiceBuilder::new()
///     .layer(layer)
///     .service(service_fn(|(_host, n): (String, u32)| async move { Ok::<_, std::io::Error>(n) }));
/// # let _ = service;
/// # Ok(()) }
/// ```
pub struct KeyedCircuitBreakerLayer<K, F, C = ErrorsAsFailures, R = BoxErrors> {
    registry: Arc<BreakerRegistry<K>>,
    key: F,
    classifier: C,
    respond: R,
}

impl<K: Eq + Hash + Clone, F> KeyedCircuitBreakerLayer<K, F> {
    /// Breakers made from `config`, one per key `key` returns; at most
    /// 10,000, closed ones retired after 10 idle minutes.
    pub fn new<Req>(config: Config, key: F) -> Self
    where
        F: Fn(&Req) -> K,
    {
        Self {
            registry: Arc::new(BreakerRegistry::new(
                config,
                10_000,
                Duration::from_secs(600),
            )),
            key,
            classifier: ErrorsAsFailures,
            respond: BoxErrors,
        }
    }
}

impl<K: Eq + Hash + Clone, F, C, R> KeyedCircuitBreakerLayer<K, F, C, R> {
    /// Holds at most `capacity` breakers, retiring closed ones unused for
    /// `idle_after` to make room. Call it before the layer is used: it
    /// starts an empty registry.
    #[must_use]
    pub fn capacity(mut self, capacity: usize, idle_after: Duration) -> Self {
        let config = self.registry.config.clone();
        self.registry = Arc::new(BreakerRegistry::new(config, capacity, idle_after));
        self
    }

    /// Classifies results with `classifier` instead.
    #[must_use]
    pub fn classify<C2>(self, classifier: C2) -> KeyedCircuitBreakerLayer<K, F, C2, R> {
        KeyedCircuitBreakerLayer {
            registry: self.registry,
            key: self.key,
            classifier,
            respond: self.respond,
        }
    }

    /// Answers refused calls with `respond` instead.
    #[must_use]
    pub fn respond_with<R2>(self, respond: R2) -> KeyedCircuitBreakerLayer<K, F, C, R2> {
        KeyedCircuitBreakerLayer {
            registry: self.registry,
            key: self.key,
            classifier: self.classifier,
            respond,
        }
    }

    /// The shared registry of breakers.
    #[must_use]
    pub fn registry(&self) -> &BreakerRegistry<K> {
        &self.registry
    }
}

impl<K, F: Clone, C: Clone, R: Clone> Clone for KeyedCircuitBreakerLayer<K, F, C, R> {
    fn clone(&self) -> Self {
        Self {
            registry: Arc::clone(&self.registry),
            key: self.key.clone(),
            classifier: self.classifier.clone(),
            respond: self.respond.clone(),
        }
    }
}

impl<K, F, C, R> fmt::Debug for KeyedCircuitBreakerLayer<K, F, C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreakerLayer")
            .field("registry", &*self.registry)
            .finish_non_exhaustive()
    }
}

impl<S, K, F: Clone, C: Clone, R: Clone> Layer<S> for KeyedCircuitBreakerLayer<K, F, C, R> {
    type Service = KeyedCircuitBreakerService<S, K, F, C, R>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreakerService::new(
            inner,
            KeyedBreakers {
                registry: Arc::clone(&self.registry),
                key: self.key.clone(),
            },
            self.classifier.clone(),
            self.respond.clone(),
        )
    }
}

/// The service made by [`KeyedCircuitBreakerLayer`].
pub type KeyedCircuitBreakerService<S, K, F, C, R> =
    CircuitBreakerService<S, KeyedBreakers<K, F>, C, R>;

/// A key function and the registry of breakers it picks from.
pub struct KeyedBreakers<K, F> {
    registry: Arc<BreakerRegistry<K>>,
    key: F,
}

impl<K, F> KeyedBreakers<K, F> {
    /// The shared registry of breakers.
    pub fn registry(&self) -> &BreakerRegistry<K> {
        &self.registry
    }
}

impl<K, F: Clone> Clone for KeyedBreakers<K, F> {
    fn clone(&self) -> Self {
        Self {
            registry: Arc::clone(&self.registry),
            key: self.key.clone(),
        }
    }
}

impl<K, F> fmt::Debug for KeyedBreakers<K, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBreakers")
            .field("registry", &*self.registry)
            .finish_non_exhaustive()
    }
}

impl<Req, K, F> SelectBreaker<Req> for KeyedBreakers<K, F>
where
    K: Eq + Hash + Clone,
    F: Fn(&Req) -> K,
{
    fn select(&self, request: &Req) -> Cow<'_, CircuitBreaker> {
        Cow::Owned(self.registry.get(&(self.key)(request)))
    }
}
