//! The in-process store.

use std::collections::{HashMap, VecDeque};
use std::future::{Ready, ready};
use std::hash::BuildHasher;

use foldhash::fast::RandomState;
use hashbrown::HashTable;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use crate::bucket::{Bucket, Decision, nanos};
use crate::error::StoreError;
use crate::store::Store;

/// Shards of the key map: a lookup takes one shard's read lock, briefly.
const SHARDS: usize = 16;

/// The longest key a [`LocalStore`] remembers as it is: a longer one is
/// remembered by a 128-bit hash of itself (seeded per store), so no key
/// costs the store more than this many bytes. A key a
/// [`RateLimitLayer`](crate::RateLimitLayer) hands a store has the layer's
/// bucket before it (`<capacity>/<interval in ns>:`, some 15 bytes), which
/// counts.
pub const MAX_KEY_BYTES: usize = 64;

/// Entries a new key looks at, at most, to find an idle one to replace
/// when its shard is full.
const EVICTION_SAMPLE: usize = 8;

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
/// with one compare-and-swap under its shard's read lock: deciding never
/// waits for another decision, only (briefly) for a new key being added to
/// the same shard. A key [pinned](Self::pin) (as a limiter whose every
/// request names one key, [`key::global`](crate::key::global), pins it) is
/// decided with the compare-and-swap alone, skipping the hash, the shard
/// and its lock.
///
/// Memory is bounded in keys and in bytes: a key longer than
/// [`MAX_KEY_BYTES`] (an 8 KiB header value, say) is remembered by a
/// 128-bit hash of itself, seeded per store. At `max_keys` a new key
/// replaces a key whose bucket is full again (it behaves exactly as an
/// unknown key), looking at a few of them in the order they came, so
/// admitting a new key costs the same however many are remembered. When
/// those it looks at are all active, the new key shares one overflow bucket
/// with the others (one for each bucket keys are decided with), so an
/// attacker rotating keys can neither exhaust memory nor escape the limit.
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
    shards: [RwLock<Shard>; SHARDS],
    per_shard: usize,
    /// The buckets shared by new keys while the map is full of active
    /// ones: one for each bucket (capacity and interval) they are decided
    /// with, as layers with other buckets keep their keys apart.
    overflow: RwLock<HashMap<(u32, Duration), Arc<AtomicU64>>>,
    hasher: RandomState,
    /// A second, independent hash: with `hasher`, 128 bits of a long key.
    long_hasher: RandomState,
    clock: Clock,
    fast: quanta::Clock,
    /// The fast clock's raw reading when the store was made.
    fast_origin: u64,
    tokio_origin: tokio::time::Instant,
}

/// A key's bucket in the table: its arrival time, or, once the key is
/// [pinned](LocalStore::pin), the word its [`PinnedBucket`]s share.
#[derive(Debug)]
enum Slot {
    Own(AtomicU64),
    Pinned(Arc<AtomicU64>),
}

impl Inner {
    /// The overflow bucket of keys decided with `bucket`.
    fn overflow(&self, bucket: &Bucket) -> Arc<AtomicU64> {
        let id = (bucket.capacity(), bucket.interval());
        let known = self
            .overflow
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned();
        known.unwrap_or_else(|| {
            self.overflow
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(id)
                .or_default()
                .clone()
        })
    }
}

impl Slot {
    /// The bucket's arrival time.
    fn tat(&self) -> &AtomicU64 {
        match self {
            Self::Own(tat) => tat,
            Self::Pinned(tat) => tat,
        }
    }
}

/// A table entry: a key as the store remembers it, and its bucket.
type Entry = (Arc<[u8]>, Slot);

/// One shard's keys: the map decisions read (a table looked up with the
/// hash that already chose the shard, so a key is hashed once a decision),
/// and the unpinned keys in the order they came, which a new key walks to
/// find an idle one to replace.
#[derive(Debug)]
struct Shard {
    map: HashTable<Entry>,
    arrivals: VecDeque<Arc<[u8]>>,
    /// How many of the keys are pinned: they are over and above the
    /// shard's room.
    pinned: usize,
}

/// Whether a table entry is `key`'s.
fn is(key: &[u8]) -> impl Fn(&Entry) -> bool + '_ {
    move |(stored, _)| **stored == *key
}

impl Shard {
    /// Forgets one key whose bucket is full at `now`, looking at no more
    /// than [`EVICTION_SAMPLE`] keys; those still active go to the back of
    /// the line, and pinned ones (never forgotten) leave it. `false` when
    /// none of them was idle.
    fn make_room(&mut self, now: u64, hasher: &RandomState) -> bool {
        for _ in 0..EVICTION_SAMPLE.min(self.arrivals.len()) {
            let Some(key) = self.arrivals.pop_front() else {
                break;
            };
            match self.map.find_entry(hasher.hash_one(&*key), is(&key)) {
                Ok(entry) => match &entry.get().1 {
                    Slot::Pinned(_) => continue,
                    Slot::Own(tat) if tat.load(Ordering::Relaxed) > now => {}
                    Slot::Own(_) => {
                        entry.remove();
                        return true;
                    }
                },
                Err(_) => return true,
            }
            self.arrivals.push_back(key);
        }
        false
    }

    /// Adds `key` (not in the table) with `slot`; the key's `Arc` is
    /// returned for the line of arrivals.
    fn insert(
        &mut self,
        hash: u64,
        key: &[u8],
        slot: Slot,
        hasher: &RandomState,
    ) -> (Arc<[u8]>, &Slot) {
        let key: Arc<[u8]> = Arc::from(key);
        let (_, slot) = self
            .map
            .insert_unique(hash, (key.clone(), slot), |(stored, _)| {
                hasher.hash_one(&**stored)
            })
            .into_mut();
        (key, slot)
    }
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
                shards: std::array::from_fn(|_| {
                    RwLock::new(Shard {
                        map: HashTable::new(),
                        arrivals: VecDeque::new(),
                        pinned: 0,
                    })
                }),
                per_shard: max_keys.div_ceil(SHARDS).max(1),
                overflow: RwLock::default(),
                hasher,
                long_hasher: RandomState::default(),
                clock,
                fast_origin: fast.raw(),
                fast,
                tokio_origin: tokio::time::Instant::now(),
            }),
        }
    }

    /// The time since the store was made, on its clock, in nanoseconds.
    #[inline]
    fn now(&self) -> u64 {
        let inner = &*self.inner;
        match inner.clock {
            Clock::Fast => inner
                .fast
                .delta_as_nanos(inner.fast_origin, inner.fast.raw()),
            Clock::Tokio => nanos(inner.tokio_origin.elapsed()),
        }
    }

    /// Decides a request of `cost` tokens for `key` now.
    #[must_use]
    pub fn decide_now(&self, key: &str, bucket: &Bucket, cost: u32) -> Decision {
        self.decide(key, bucket, cost, self.now())
    }

    /// Decides a request of `cost` tokens for `key` at `elapsed` after the
    /// store was made, whatever its clock says (for tests and simulations).
    #[must_use]
    pub fn decide_at(&self, key: &str, bucket: &Bucket, cost: u32, elapsed: Duration) -> Decision {
        self.decide(key, bucket, cost, nanos(elapsed))
    }

    fn decide(&self, key: &str, bucket: &Bucket, cost: u32, now: u64) -> Decision {
        let inner = &*self.inner;
        let mut digest = [0; 17];
        let key = self.remembered(key, &mut digest);
        let hash = inner.hasher.hash_one(key);
        let shard = &inner.shards[shard_of(hash)];
        {
            let shard = shard.read().unwrap_or_else(PoisonError::into_inner);
            if let Some((_, slot)) = shard.map.find(hash, is(key)) {
                return take(slot.tat(), bucket, now, cost);
            }
        }
        let mut shard = shard.write().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, slot)) = shard.map.find(hash, is(key)) {
            // Added by another caller since the read.
            return take(slot.tat(), bucket, now, cost);
        }
        if shard.map.len() - shard.pinned >= inner.per_shard && !shard.make_room(now, &inner.hasher)
        {
            tracing::debug!(target: "palisade_token_bucket", "key map full; using the overflow bucket");
            drop(shard);
            return take(&inner.overflow(bucket), bucket, now, cost);
        }
        let (key, slot) = shard.insert(hash, key, Slot::Own(AtomicU64::new(0)), &inner.hasher);
        let decision = take(slot.tat(), bucket, now, cost);
        shard.arrivals.push_back(key);
        decision
    }

    /// Holds `key`'s bucket: deciding through the [`PinnedBucket`] skips
    /// finding the key (the hash, the shard and its lock), and the store never forgets
    /// the key. Pinned keys are over and above `max_keys`: they take no
    /// room from the others (pin a few keys, not one per client).
    ///
    /// The bucket is the key's, pinned or not: [`decide_now`](Self::decide_now)
    /// with the same key and the pinned bucket draw on the same tokens, and
    /// pinning a key the store knows keeps its state. Pinning a key twice
    /// gives the same bucket.
    ///
    /// # Example
    ///
    /// ```
    /// use palisade_token_bucket::{Bucket, LocalStore};
    ///
    /// let store = LocalStore::new(10_000);
    /// let bucket = Bucket::new(2, 1.0)?;
    /// let everyone = store.pin("everyone");
    /// assert!(everyone.decide_now(&bucket, 1).is_allowed());
    /// assert!(store.decide_now("everyone", &bucket, 1).is_allowed());
    /// assert!(!everyone.decide_now(&bucket, 1).is_allowed(), "one bucket, spent");
    /// # Ok::<(), palisade_token_bucket::ConfigError>(())
    /// ```
    #[must_use]
    pub fn pin(&self, key: &str) -> PinnedBucket {
        let inner = &*self.inner;
        let mut digest = [0; 17];
        let key = self.remembered(key, &mut digest);
        let hash = inner.hasher.hash_one(key);
        let mut shard = inner.shards[shard_of(hash)]
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let tat = match shard.map.find_mut(hash, is(key)) {
            Some((_, Slot::Pinned(tat))) => Arc::clone(tat),
            Some((_, slot)) => {
                // Under the write lock no decision holds the word: its
                // state moves to the shared one whole.
                let tat = Arc::new(AtomicU64::new(slot.tat().load(Ordering::Acquire)));
                *slot = Slot::Pinned(Arc::clone(&tat));
                shard.pinned += 1;
                tat
            }
            None => {
                let tat = Arc::new(AtomicU64::new(0));
                shard.insert(hash, key, Slot::Pinned(Arc::clone(&tat)), &inner.hasher);
                shard.pinned += 1;
                tat
            }
        };
        PinnedBucket {
            store: self.clone(),
            tat,
        }
    }

    /// `key` as the store remembers it: itself, or for a key longer than
    /// [`MAX_KEY_BYTES`], its digest written to `digest`.
    #[inline]
    fn remembered<'k>(&self, key: &'k str, digest: &'k mut [u8; 17]) -> &'k [u8] {
        if key.len() <= MAX_KEY_BYTES {
            key.as_bytes()
        } else {
            *digest = self.digest(key);
            digest
        }
    }

    /// How a key longer than [`MAX_KEY_BYTES`] is remembered: 16 bytes of
    /// hash and a final 0xFF, which no UTF-8 text (a short key) ends with.
    #[cold]
    fn digest(&self, key: &str) -> [u8; 17] {
        let inner = &*self.inner;
        let mut digest = [0xFF; 17];
        digest[..8].copy_from_slice(&inner.hasher.hash_one(key).to_le_bytes());
        digest[8..16].copy_from_slice(&inner.long_hasher.hash_one(key).to_le_bytes());
        digest
    }

    /// Keys remembered now, pinned ones included.
    #[must_use]
    pub fn len(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|shard| {
                shard
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .map
                    .len()
            })
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

/// One key's bucket in a [`LocalStore`], held; made by [`LocalStore::pin`].
///
/// Deciding through it is one clock read and one compare-and-swap on the
/// bucket's word, shared with every other holder and with decisions made
/// by the key's name. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PinnedBucket {
    store: LocalStore,
    tat: Arc<AtomicU64>,
}

impl PinnedBucket {
    /// Decides a request of `cost` tokens now, on the store's clock.
    #[must_use]
    #[inline]
    pub fn decide_now(&self, bucket: &Bucket, cost: u32) -> Decision {
        take(&self.tat, bucket, self.store.now(), cost)
    }

    /// Decides a request of `cost` tokens at `elapsed` after the store was
    /// made (for tests and simulations).
    #[must_use]
    pub fn decide_at(&self, bucket: &Bucket, cost: u32, elapsed: Duration) -> Decision {
        take(&self.tat, bucket, nanos(elapsed), cost)
    }
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
    type Pinned = PinnedBucket;

    fn decide(&self, key: &str, bucket: &Bucket, cost: u32) -> Self::Future {
        ready(Ok(self.decide_now(key, bucket, cost)))
    }

    fn pin(&self, key: &str) -> PinnedBucket {
        Self::pin(self, key)
    }

    #[inline]
    fn decide_pinned(&self, pinned: &PinnedBucket, bucket: &Bucket, cost: u32) -> Self::Future {
        ready(Ok(pinned.decide_now(bucket, cost)))
    }
}
