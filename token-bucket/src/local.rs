//! The in-process store.

use std::collections::HashMap;
use std::future::{Ready, ready};
use std::hash::BuildHasher;

use foldhash::fast::RandomState;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use crate::bucket::{Bucket, Decision};
use crate::error::StoreError;
use crate::store::Store;

/// Shards of the key map: a lookup takes one shard's read lock, briefly.
const SHARDS: usize = 16;

/// Where a [`LocalStore`] reads the time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Clock {
    /// The processor's monotonic counter through `quanta` (calibrated
    /// against the OS clock, which it falls back to where no stable counter
    /// exists). The default: reading the OS clock would be most of a
    /// decision's cost.
    #[default]
    Fast,
    /// `tokio::time::Instant`, which follows a paused test runtime.
    Tokio,
}

/// Buckets in this process, for single-instance services, the embedded
/// default, and as the fallback of a Redis store.
///
/// Each key's state is one atomic word, its bucket's arrival time, updated
/// with one compare-and-swap: no lock is held while deciding. The key map
/// is bounded: at `max_keys` it first forgets keys whose buckets are full
/// again (they behave exactly as unknown keys), and when every key is
/// active, further new keys share one overflow bucket, so an attacker
/// rotating keys can neither exhaust memory nor escape the limit.
///
/// # Example
///
/// ```
/// use palisade_token_bucket::{Bucket, LocalStore};
///
/// let store = LocalStore::new(10_000);
/// let bucket = Bucket::new(2, 1.0)?;
/// let take = |key| store.decide_now(key, &bucket, 1).is_allowed();
/// assert!(take("alice") && take("alice"));
/// assert!(!take("alice"), "alice's burst is spent");
/// assert!(take("bob"), "bob has his own bucket");
/// # Ok::<(), palisade_token_bucket::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct LocalStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shards: [RwLock<HashMap<Box<str>, AtomicU64, RandomState>>; SHARDS],
    per_shard: usize,
    /// The bucket shared by new keys while the map is full of active ones.
    overflow: AtomicU64,
    hasher: RandomState,
    clock: Clock,
    fast: quanta::Clock,
    fast_origin: quanta::Instant,
    tokio_origin: tokio::time::Instant,
}

impl Default for LocalStore {
    /// Room for 100,000 keys.
    fn default() -> Self {
        Self::new(100_000)
    }
}

impl LocalStore {
    /// A store remembering at most about `max_keys` keys (at least 16),
    /// on the [`Clock::Fast`] clock.
    #[must_use]
    pub fn new(max_keys: usize) -> Self {
        Self::with_clock(max_keys, Clock::Fast)
    }

    /// A store remembering at most about `max_keys` keys that reads the
    /// time from `clock`.
    #[must_use]
    pub fn with_clock(max_keys: usize, clock: Clock) -> Self {
        // Seeded per store (keys an attacker picks cannot be made to
        // collide), and fast: the hash is on every decision's path.
        let hasher = RandomState::default();
        let fast = quanta::Clock::new();
        Self {
            inner: Arc::new(Inner {
                shards: std::array::from_fn(|_| RwLock::new(HashMap::with_hasher(hasher.clone()))),
                per_shard: max_keys.div_ceil(SHARDS).max(1),
                overflow: AtomicU64::new(0),
                hasher,
                clock,
                fast_origin: fast.now(),
                fast,
                tokio_origin: tokio::time::Instant::now(),
            }),
        }
    }

    /// The time since the store was made, on its clock.
    fn elapsed(&self) -> Duration {
        let inner = &*self.inner;
        match inner.clock {
            Clock::Fast => inner
                .fast
                .now()
                .saturating_duration_since(inner.fast_origin),
            Clock::Tokio => inner.tokio_origin.elapsed(),
        }
    }

    /// Decides a request of `cost` tokens for `key` now.
    #[must_use]
    pub fn decide_now(&self, key: &str, bucket: &Bucket, cost: u32) -> Decision {
        self.decide_at(key, bucket, cost, self.elapsed())
    }

    /// Decides a request of `cost` tokens for `key` at `elapsed` after the
    /// store was made, whatever its clock says (for tests and simulations).
    #[must_use]
    pub fn decide_at(&self, key: &str, bucket: &Bucket, cost: u32, elapsed: Duration) -> Decision {
        let inner = &*self.inner;
        let now = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let shard = &inner.shards[shard_of(inner.hasher.hash_one(key))];
        {
            let map = shard.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(tat) = map.get(key) {
                return take(tat, bucket, now, cost);
            }
        }
        let mut map = shard.write().unwrap_or_else(PoisonError::into_inner);
        if !map.contains_key(key) && map.len() >= inner.per_shard {
            // Full buckets hold nothing a new entry would not: forget them.
            map.retain(|_, tat| tat.load(Ordering::Relaxed) > now);
            if map.len() >= inner.per_shard {
                tracing::debug!(target: "palisade_token_bucket", "key map full; using the overflow bucket");
                return take(&inner.overflow, bucket, now, cost);
            }
        }
        let tat = map.entry(key.into()).or_insert_with(|| AtomicU64::new(0));
        take(tat, bucket, now, cost)
    }

    /// Keys remembered now.
    #[must_use]
    pub fn len(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|shard| shard.read().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// Whether no key is remembered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The shard a key's hash falls in: middle bits, which the shard's own
/// table (indexing by the low bits, tagging by the top ones) does not lean on.
#[allow(clippy::cast_possible_truncation)]
const fn shard_of(hash: u64) -> usize {
    (hash >> 32) as usize % SHARDS
}

/// Takes `cost` tokens from the bucket whose arrival time is `tat`.
fn take(tat: &AtomicU64, bucket: &Bucket, now: u64, cost: u32) -> Decision {
    let mut current = tat.load(Ordering::Acquire);
    loop {
        let (next, decision) = bucket.decide(current, now, cost);
        let Some(next) = next else {
            return decision;
        };
        match tat.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return decision,
            Err(actual) => current = actual,
        }
    }
}

impl Store for LocalStore {
    type Future = Ready<Result<Decision, StoreError>>;

    fn decide(&self, key: &str, bucket: &Bucket, cost: u32) -> Self::Future {
        ready(Ok(self.decide_now(key, bucket, cost)))
    }
}
