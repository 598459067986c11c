//! Token leasing (feature `redis`): tokens taken from Redis a batch at a
//! time and spent in process, so most decisions cost no round trip.

use std::future::Future;
use std::hash::BuildHasher;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use foldhash::fast::RandomState;
use hashbrown::HashMap;
use redis::aio::ConnectionLike;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use crate::bucket::{Bucket, Decision};
use crate::error::{ConfigError, StoreError, config_error};
use crate::redis_store::{Answer, Ask, Ran, RedisStore};
use crate::store::Store;

/// Shards of the lease map: a decision takes one shard's read lock.
const SHARDS: usize = 16;

/// The longest [`Leasing::hold`]: a day.
const LONGEST_HOLD: Duration = Duration::from_secs(86_400);

/// How a [`LeasingStore`] sizes, holds and keeps its leases.
///
/// A lease covers [`cover`](Self::cover) of the key's recent traffic in
/// this process, and never more than [`max_share`](Self::max_share) of the
/// bucket's capacity; tokens unspent after [`hold`](Self::hold) go back to
/// Redis. At most [`max_keys`](Self::max_keys) keys hold leases at once.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use palisade_token_bucket::Leasing;
///
/// let leasing = Leasing::new()
///     .cover(Duration::from_millis(20))
///     .max_share(0.05)
///     .hold(Duration::from_millis(500));
/// assert_eq!(leasing.max_share_of_capacity(), 0.05);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Leasing {
    cover: Duration,
    max_share: f64,
    hold: Duration,
    max_keys: usize,
}

impl Default for Leasing {
    fn default() -> Self {
        Self::new()
    }
}

impl Leasing {
    /// Leases covering 50 ms of a key's traffic, at most a tenth of its
    /// bucket each, held at most one second, for up to 10,000 keys.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            cover: Duration::from_millis(50),
            max_share: 0.1,
            hold: Duration::from_secs(1),
            max_keys: 10_000,
        }
    }

    /// How much of a key's recent traffic one lease covers: a key asked
    /// for 1,000 tokens a second here leases 50 at a time under the
    /// default 50 ms. A key seen once leases only what it asked for, and
    /// its leases grow (doubling at most) as its traffic shows.
    #[must_use]
    pub const fn cover(mut self, traffic: Duration) -> Self {
        self.cover = traffic;
        self
    }

    /// The most of a bucket's capacity one lease may take (0.1: a tenth).
    /// Every process holding a lease on a key may admit that much more
    /// than the bucket over an interval (see [`LeasingStore`]), so keep it
    /// small where the fleet is large.
    #[must_use]
    pub const fn max_share(mut self, share: f64) -> Self {
        self.max_share = share;
        self
    }

    /// How long leased tokens may wait to be spent (at most a day): those
    /// still here then go back to Redis, by the key's next refill or by the
    /// store's sweep, so a process whose traffic stopped keeps nothing from
    /// the others.
    #[must_use]
    pub const fn hold(mut self, hold: Duration) -> Self {
        self.hold = hold;
        self
    }

    /// The most keys holding leases at once (at least 16). A new key past
    /// it is decided in Redis one request at a time until a sweep frees
    /// room.
    #[must_use]
    pub const fn max_keys(mut self, keys: usize) -> Self {
        self.max_keys = keys;
        self
    }

    /// The most of a bucket's capacity one lease may take.
    #[must_use]
    pub const fn max_share_of_capacity(&self) -> f64 {
        self.max_share
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !(self.max_share > 0.0 && self.max_share <= 1.0) {
            return Err(config_error("leasing max_share", "must be within (0, 1]"));
        }
        if self.cover.is_zero() {
            return Err(config_error("leasing cover", "must be more than zero"));
        }
        if self.hold < self.cover {
            return Err(config_error(
                "leasing hold",
                "must be at least the traffic a lease covers",
            ));
        }
        if self.hold > LONGEST_HOLD {
            return Err(config_error("leasing hold", "must be at most a day"));
        }
        Ok(())
    }

    /// The most tokens one lease of `bucket` may take, at least `cost`.
    fn largest(&self, bucket: &Bucket, cost: u32) -> u32 {
        // Within 0..=capacity, itself a `u32`.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let share = (self.max_share * f64::from(bucket.capacity())).floor() as u32;
        share.max(cost)
    }
}

/// A [`RedisStore`] that takes tokens in leases and spends them in
/// process: most decisions cost no round trip to Redis.
///
/// - **Leases:** when a key's lease is spent, the next decision asks Redis
///   for its own cost and for as many more tokens as the key's recent
///   traffic here needs over [`Leasing::cover`], never more than
///   [`Leasing::max_share`] of the bucket nor more than the bucket holds.
///   One refill per key asks at a time; requests its spare tokens could
///   serve wait for its answer (others may spend them first). The rest
///   (past those spare tokens, all of them at a key's first lease, and,
///   with no tokens held, every request where `max_share` of the bucket
///   is at most one request's cost) ask Redis for their own cost side by
///   side, as in the [`RedisStore`], rather than reach it one after
///   another; the next lease covers them.
/// - **Refusals are remembered:** when Redis refuses a request, requests
///   of that cost or more for the key are refused here until the wait
///   Redis named has passed (a heavier one told the wait for its further
///   tokens too).
/// - **Nothing is kept from the others:** tokens unspent after
///   [`Leasing::hold`] go back to Redis with the key's next refill, or with
///   the store's sweep (a task started with the first key the store
///   sees, which runs every `hold` while a clone of the store lives) when
///   the key has gone quiet. [`give_back`](Self::give_back) returns every token at once,
///   for a process about to stop.
/// - **The bound:** tokens are taken from the shared bucket before they
///   are spent, so the fleet never admits more than the bucket hands out.
///   What leasing changes is *when* a token is spent: one leased before an
///   interval may be spent in it. Over any interval the fleet admits at
///   most `capacity + rate × length` plus the tokens leased out when it
///   began: at most one lease per process and key, so at most
///   `processes × max_share × capacity` more.
/// - **Redis down:** the [`RedisStore`]'s failure policy decides each
///   request that needs Redis; tokens already leased are still spent, and
///   those given back to a Redis that was not reached stay held.
/// - **Callers that leave:** Redis is asked by a task of the store's own,
///   so a request abandoned mid-call (a timeout above the limiter, a
///   client gone) loses nothing: the lease Redis grants is kept, the
///   abandoned request's cost included (a request asking Redis for its
///   own cost alone, beside a refill or where no lease could hold more
///   than it, too), and the key's other requests get their answer. The
///   store needs a Tokio runtime.
/// - A key longer than [`MAX_KEY_BYTES`](crate::MAX_KEY_BYTES) (not counting
///   the bucket a [`RateLimitLayer`](crate::RateLimitLayer) puts before
///   it) is decided in Redis one request at a time, as is a key past
///   [`Leasing::max_keys`].
///
/// A cold key (a user seen once a minute) leases only what it asks for,
/// so it costs what it costs in the [`RedisStore`]; leasing pays where a
/// key is hot in a process.
///
/// # Example
///
/// ```no_run
/// use palisade_token_bucket::{
///     Bucket, FailurePolicy, Leasing, LeasingStore, RateLimitLayer, RedisStore, key,
/// };
/// use tower::{BoxError, ServiceBuilder, service_fn};
///
/// # async fn run() -> Result<(), BoxError> {
/// let redis = redis::Client::open("redis://127.0.0.1:6379")?
///     .get_connection_manager()
///     .await?;
/// let store = LeasingStore::new(
///     RedisStore::new(redis, FailurePolicy::FailOpen),
///     Leasing::new(),
/// )?;
/// // 10,000 requests a second for the whole fleet, in bursts of 1,000.
/// let service = ServiceBuilder::new()
///     .layer(RateLimitLayer::new(store, Bucket::new(1_000, 10_000.0)?, key::global("api")))
///     .service(service_fn(|request: u32| async move { Ok::<_, BoxError>(request) }));
/// # let _ = service;
/// # Ok(()) }
/// ```
pub struct LeasingStore<C> {
    redis: RedisStore<C>,
    leases: Arc<Leases>,
}

impl<C: Clone> Clone for LeasingStore<C> {
    fn clone(&self) -> Self {
        Self {
            redis: self.redis.clone(),
            leases: Arc::clone(&self.leases),
        }
    }
}

impl<C> std::fmt::Debug for LeasingStore<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeasingStore")
            .field("redis", &self.redis)
            .field("leasing", &self.leases.settings)
            .field("held", &self.leases.held())
            .finish()
    }
}

/// One shard's leases, by key.
type Shard = RwLock<HashMap<Arc<str>, Arc<Lease>, RandomState>>;

/// Every key's lease, in shards.
#[derive(Debug)]
struct Leases {
    settings: Leasing,
    shards: [Shard; SHARDS],
    per_shard: usize,
    hasher: RandomState,
    /// Whether the sweep has been started.
    sweeping: AtomicBool,
    #[cfg(feature = "otel")]
    instruments: std::sync::OnceLock<crate::otel::LeaseInstruments>,
}

/// One key's lease.
#[derive(Debug)]
struct Lease {
    name: Arc<str>,
    held: Mutex<Held>,
    /// Woken when a refill has its answer.
    refilled: Notify,
}

/// What a process holds of a key's bucket.
#[derive(Debug)]
struct Held {
    /// Tokens taken from Redis and not yet spent.
    tokens: u32,
    /// When the tokens go back unspent.
    expires: Instant,
    /// The bucket they were taken from, to give them back.
    bucket: Option<Bucket>,
    /// The tokens Redis had left for the others after the last refill.
    left_in_redis: u32,
    /// When Redis said the bucket would be full again.
    full_at: Instant,
    /// Requests of this cost or more were refused until then.
    refused: Option<(Instant, u32)>,
    /// Tokens asked for here since `since`: the key's recent traffic.
    demand: u64,
    since: Instant,
    /// Whether a request is asking Redis for this key.
    refilling: bool,
    /// Tokens the refill under way asks for beyond its request's cost
    /// that no request waiting for it counts on yet.
    unclaimed: u32,
}

impl Held {
    fn new(now: Instant) -> Self {
        Self {
            tokens: 0,
            expires: now,
            bucket: None,
            left_in_redis: 0,
            full_at: now,
            refused: None,
            demand: 0,
            since: now,
            refilling: false,
            unclaimed: 0,
        }
    }

    /// Decides from what this process holds, or `None` when Redis must be
    /// asked.
    fn decide_here(&mut self, bucket: &Bucket, cost: u32, now: Instant) -> Option<Decision> {
        let reset = self.full_at.saturating_duration_since(now);
        if self.tokens >= cost && now < self.expires {
            self.tokens -= cost;
            self.demand += u64::from(cost);
            let left = self.left_in_redis.saturating_add(self.tokens);
            return Some(Decision::counted(bucket, true, left, Duration::ZERO, reset));
        }
        if cost > bucket.capacity() {
            // It never fits, whatever Redis holds.
            let left = self.left_in_redis;
            return Some(Decision::counted(bucket, false, left, Duration::MAX, reset));
        }
        match self.refused {
            Some((until, refused)) if cost >= refused && now < until => {
                self.demand += u64::from(cost);
                let left = self.left_in_redis;
                // A heavier request waits for its further tokens too.
                let further = bucket.interval().saturating_mul(cost - refused);
                let wait = (until - now).saturating_add(further);
                Some(Decision::counted(bucket, false, left, wait, reset))
            }
            _ => None,
        }
    }

    /// Starts a refill for a request of `cost`: gives back what is held
    /// and asks for enough for the traffic seen since the last one.
    fn ask(&mut self, settings: &Leasing, bucket: &Bucket, cost: u32, now: Instant) -> Ask {
        self.demand += u64::from(cost);
        let want = if self.bucket.is_none() {
            // The key's first lease: nothing seen yet to go by.
            cost
        } else {
            // Traffic seen over less than half of `cover` is taken as seen
            // over half: a lease at most doubles what was asked for since
            // the last one.
            let seen = now
                .saturating_duration_since(self.since)
                .max(settings.cover / 2);
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss
            )]
            let covered =
                (self.demand as f64 * settings.cover.as_secs_f64() / seen.as_secs_f64()).ceil();
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let covered = covered.min(f64::from(u32::MAX)) as u32;
            covered.clamp(cost, settings.largest(bucket, cost))
        };
        self.demand = 0;
        self.since = now;
        self.refilling = true;
        self.unclaimed = want - cost;
        Ask {
            cost,
            want,
            give_back: std::mem::take(&mut self.tokens),
        }
    }

    /// Keeps what Redis answered to `ask`, sent at `asked_at`: the waits
    /// Redis names count from then, never from its reply.
    fn refilled(
        &mut self,
        decision: Option<Decision>,
        ran: Ran,
        ask: Ask,
        bucket: &Bucket,
        hold: Duration,
        asked_at: Instant,
    ) -> Option<u32> {
        let (decision, taken) = match (decision, ran) {
            (Some(decision), Ran::Took(taken)) => (decision, taken),
            // The tokens given back never reached Redis: still ours.
            (_, Ran::No) => {
                self.keep(ask.give_back);
                return None;
            }
            // The failure policy decided; whether Redis took the tokens
            // given back is unknown, so they are not spent twice.
            _ => return None,
        };
        self.heard(&decision, ask.cost, asked_at);
        if decision.is_allowed() {
            self.keep(taken.saturating_sub(ask.cost));
            self.expires = asked_at + hold;
            self.bucket = Some(*bucket);
        }
        Some(self.left_in_redis.saturating_add(self.tokens))
    }

    /// Keeps what Redis said of the bucket to a request of `cost` asked at
    /// `asked_at` (the waits it names count from then), its refusal
    /// included.
    fn heard(&mut self, decision: &Decision, cost: u32, asked_at: Instant) {
        self.full_at = asked_at + decision.reset();
        self.left_in_redis = decision.remaining();
        self.refused = (!decision.is_allowed()).then(|| {
            let until = asked_at
                .checked_add(decision.retry_after())
                .unwrap_or_else(|| asked_at + LONGEST_HOLD * 365);
            (until, cost)
        });
    }

    /// Adds `tokens` taken from Redis to those held.
    const fn keep(&mut self, tokens: u32) {
        self.tokens = self.tokens.saturating_add(tokens);
    }

    /// Adds `tokens` taken from `bucket` in Redis to those held, to be
    /// given back there if not spent: a lease no refill made knew no
    /// bucket, and held such tokens for good (its key never forgotten).
    fn keep_of(&mut self, bucket: Bucket, tokens: u32) {
        self.keep(tokens);
        self.bucket.get_or_insert(bucket);
    }

    /// Takes the tokens to give back: every one, or only expired ones.
    fn take_unspent(&mut self, now: Instant, all: bool) -> Option<(Bucket, u32)> {
        if self.tokens == 0 || self.refilling || !(all || now >= self.expires) {
            return None;
        }
        let bucket = self.bucket?;
        Some((bucket, std::mem::take(&mut self.tokens)))
    }

    /// Whether the lease holds nothing worth keeping its entry for.
    fn is_idle(&self, now: Instant) -> bool {
        self.tokens == 0
            && !self.refilling
            && now >= self.expires
            && self.refused.is_none_or(|(until, _)| now >= until)
    }
}

impl Lease {
    fn held(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What a request that found too few tokens held does next.
enum Turn {
    /// Asks Redis for a lease, its own cost included.
    Ask(Ask),
    /// Waits for the refill under way, which asks for its tokens too.
    Wait,
    /// Asks Redis for its own cost alone.
    Alone,
}

/// Redis's answer to the request that asked (in a refill, or alone).
struct Refilled {
    decision: Result<Decision, StoreError>,
    /// Whether Redis took the request's cost.
    spent: bool,
}

/// A request waiting for Redis's answer, asked by a task of its own (a
/// refill's, or its own alone): dropped before reading an answer whose
/// cost Redis took, it leaves that cost to the lease.
struct Awaiting<'a> {
    lease: &'a Lease,
    bucket: Bucket,
    cost: u32,
    answer: oneshot::Receiver<Refilled>,
}

impl Awaiting<'_> {
    /// The answer, or an error saying what stopped before Redis answered.
    async fn answer(&mut self, asking: &str) -> Result<Decision, StoreError> {
        match (&mut self.answer).await {
            Ok(refilled) => refilled.decision,
            Err(_) => Err(StoreError::backend(format!(
                "{asking} stopped before Redis answered"
            ))),
        }
    }
}

impl Drop for Awaiting<'_> {
    fn drop(&mut self) {
        // Closed first: an answer sent after it fails, and its task keeps
        // the cost; one sent before is read here. (Read, then dropped, an
        // answer sent in between was lost with its cost.)
        self.answer.close();
        if let Ok(Refilled { spent: true, .. }) = self.answer.try_recv() {
            self.lease.held().keep_of(self.bucket, self.cost);
        }
    }
}

/// Tells `caller` Redis's answer to a request of `cost` in `bucket`; the
/// cost Redis took for a caller that left is the lease's.
fn tell(
    lease: &Lease,
    caller: oneshot::Sender<Refilled>,
    refilled: Refilled,
    (bucket, cost): (Bucket, u32),
) {
    let spent = refilled.spent;
    if caller.send(refilled).is_err() && spent {
        lease.held().keep_of(bucket, cost);
    }
}

/// Ends a refill however its task ends (answered, dropped while Redis was
/// asked, or never run: a runtime shutting down), and wakes the requests
/// waiting for it.
struct Refilling(Arc<Lease>);

impl Drop for Refilling {
    fn drop(&mut self) {
        {
            let mut held = self.0.held();
            held.refilling = false;
            held.unclaimed = 0;
        }
        self.0.refilled.notify_waiters();
    }
}

impl Leases {
    fn shard(&self, key: &str) -> &Shard {
        // The map hashes again with the same hasher; the top bits pick the
        // shard so the two uses of the hash differ.
        let hash = self.hasher.hash_one(key);
        #[allow(clippy::cast_possible_truncation)]
        &self.shards[(hash >> 60) as usize % SHARDS]
    }

    /// `key`'s lease, made if there is room (or `pinned`: pins are over
    /// and above `max_keys`).
    fn find_or_make(&self, key: &str, pinned: bool) -> Option<Arc<Lease>> {
        // The layer's bucket before the key does not count against it.
        if key.len() > crate::MAX_KEY_BYTES + crate::bucket::MAX_TAG_BYTES {
            return None;
        }
        let mut shard = self
            .shard(key)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(lease) = shard.get(key) {
            return Some(Arc::clone(lease));
        }
        if !pinned && shard.len() >= self.per_shard {
            return None;
        }
        let name: Arc<str> = Arc::from(key);
        let lease = Arc::new(Lease {
            name: Arc::clone(&name),
            held: Mutex::new(Held::new(Instant::now())),
            refilled: Notify::new(),
        });
        shard.insert(name, Arc::clone(&lease));
        Some(lease)
    }

    /// Takes the tokens to give back (every one when `all`, else those
    /// held past their time) and forgets idle keys no pin holds.
    fn take_unspent(&self, all: bool) -> Vec<(Arc<str>, Bucket, u32)> {
        let now = Instant::now();
        let mut unspent = Vec::new();
        for shard in &self.shards {
            let mut shard = shard.write().unwrap_or_else(PoisonError::into_inner);
            shard.retain(|name, lease| {
                let mut held = lease.held();
                if let Some((bucket, tokens)) = held.take_unspent(now, all) {
                    unspent.push((Arc::clone(name), bucket, tokens));
                }
                // Only the map holds it: no pin, no refill under way.
                !(held.is_idle(now) && Arc::strong_count(lease) == 1)
            });
        }
        unspent
    }

    /// Keeps `tokens` of `name`'s bucket that Redis was not reached to
    /// take back, for the next sweep or refill to give back.
    fn keep(&self, name: &str, bucket: Bucket, tokens: u32) {
        let Some(lease) = self.find_or_make(name, true) else {
            return;
        };
        lease.held().keep_of(bucket, tokens);
    }

    /// Counts a refill that leased `leased` tokens beyond its request's
    /// cost after giving back `returned` (feature `otel`).
    fn refilled(&self, leased: u32, returned: u32) {
        #[cfg(feature = "otel")]
        if let Some(instruments) = self.instruments.get() {
            instruments.refilled(leased, returned);
        }
        #[cfg(not(feature = "otel"))]
        let _ = (leased, returned);
    }

    /// Counts `tokens` given back (feature `otel`).
    fn returned(&self, tokens: u32) {
        #[cfg(feature = "otel")]
        if let Some(instruments) = self.instruments.get() {
            instruments.returned(tokens);
        }
        #[cfg(not(feature = "otel"))]
        let _ = tokens;
    }

    /// Tokens held in every lease now.
    fn held(&self) -> u64 {
        self.shards
            .iter()
            .flat_map(|shard| {
                let shard = shard.read().unwrap_or_else(PoisonError::into_inner);
                shard
                    .values()
                    .map(|lease| u64::from(lease.held().tokens))
                    .collect::<Vec<_>>()
            })
            .sum()
    }
}

impl<C> LeasingStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// Leases tokens from `redis`'s buckets as `leasing` says; its timeout
    /// and failure policy apply to every request that asks Redis.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when `max_share` is outside `(0, 1]`, `cover` is
    /// zero, or `hold` is shorter than `cover`.
    pub fn new(redis: RedisStore<C>, leasing: Leasing) -> Result<Self, ConfigError> {
        leasing.validate()?;
        let hasher = RandomState::default();
        Ok(Self {
            redis,
            leases: Arc::new(Leases {
                settings: leasing,
                shards: std::array::from_fn(|_| RwLock::new(HashMap::with_hasher(hasher.clone()))),
                per_shard: leasing.max_keys.div_ceil(SHARDS).max(1),
                hasher,
                sweeping: AtomicBool::new(false),
                #[cfg(feature = "otel")]
                instruments: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Counts refills, leased and returned tokens, and reports the tokens
    /// held, with OpenTelemetry (feature `otel`); `name` becomes the
    /// `store` attribute. Once per store and its clones; later calls
    /// change nothing. See the [`otel`](crate::otel) module for the names.
    #[cfg(feature = "otel")]
    #[must_use]
    pub fn instrument(
        self,
        meter: &opentelemetry::metrics::Meter,
        name: impl Into<String>,
    ) -> Self {
        let leases = Arc::downgrade(&self.leases);
        let held = move || leases.upgrade().map_or(0, |leases| leases.held());
        let _ = self
            .leases
            .instruments
            .get_or_init(|| crate::otel::LeaseInstruments::new(meter, name.into(), held));
        self
    }

    /// The Redis store leases are taken from.
    #[must_use]
    pub const fn redis(&self) -> &RedisStore<C> {
        &self.redis
    }

    /// Tokens this process holds in leases now, across keys.
    #[must_use]
    pub fn held(&self) -> u64 {
        self.leases.held()
    }

    /// Gives every unspent leased token back to Redis now (for a process
    /// about to stop); returns how many Redis took back. Tokens Redis surely
    /// did not get (it was known to be down, or refused the connection)
    /// stay held for a later call or the sweep; those it may have got (a
    /// timeout, a connection lost mid-call) are dropped: a shortfall to the
    /// bucket until it refills, never an excess. Cut short (its future
    /// dropped, by a shutdown's timeout say), it keeps held the tokens it
    /// had not offered yet.
    pub async fn give_back(&self) -> u64 {
        give_back(&self.redis, &self.leases, self.leases.take_unspent(true)).await
    }

    /// Decides from `lease`, asking Redis when it must.
    fn decide_on(&self, lease: &Arc<Lease>, bucket: &Bucket, cost: u32) -> LeaseDecision {
        if let Some(decision) = lease.held().decide_here(bucket, cost, Instant::now()) {
            return LeaseDecision::ready(Ok(decision));
        }
        let store = self.clone();
        let lease = Arc::clone(lease);
        let bucket = *bucket;
        LeaseDecision::asking(async move { store.refill(&lease, &bucket, cost).await })
    }

    /// Asks Redis for `lease`'s key, one refill at a time: a request that
    /// finds a refill under way asking for its tokens too waits for its
    /// answer, then decides again. One that does not (the refill asks for
    /// fewer spare tokens than the waiting requests need, a key's first
    /// lease asks for none, or no lease of the bucket could hold more than
    /// the request) asks Redis for its own cost at once: waiting would
    /// only make the key's requests reach Redis one after another.
    async fn refill(
        &self,
        lease: &Arc<Lease>,
        bucket: &Bucket,
        cost: u32,
    ) -> Result<Decision, StoreError> {
        let settings = &self.leases.settings;
        // Here too: the key may have been made outside a runtime.
        self.sweep_from_now_on();
        loop {
            let mut answered = pin!(lease.refilled.notified());
            let next = {
                let mut held = lease.held();
                let now = Instant::now();
                if let Some(decision) = held.decide_here(bucket, cost, now) {
                    return Ok(decision);
                }
                if held.refilling && held.unclaimed >= cost {
                    held.unclaimed -= cost;
                    // Registered before the lock is let go: the refill
                    // ends under it, so its wake-up cannot come first.
                    answered.as_mut().enable();
                    Turn::Wait
                } else if held.refilling
                    || (held.tokens == 0 && settings.largest(bucket, cost) == cost)
                {
                    // Waiting would bring this request nothing but a turn
                    // at the next refill (the one under way asks for no
                    // token of its, or no lease could hold more than it):
                    // the key's requests would reach Redis one after
                    // another. Counted, so the next lease covers it.
                    held.demand += u64::from(cost);
                    Turn::Alone
                } else {
                    Turn::Ask(held.ask(settings, bucket, cost, now))
                }
            };
            let ask = match next {
                Turn::Ask(ask) => ask,
                Turn::Wait => {
                    answered.await;
                    continue;
                }
                Turn::Alone => {
                    // In a task of its own, as a refill: a caller that
                    // stops waiting leaves the cost Redis took to the
                    // lease (it was neither admitted nor held).
                    let (caller, answer) = oneshot::channel();
                    tokio::spawn(
                        self.clone()
                            .ask_alone(Arc::clone(lease), *bucket, cost, caller),
                    );
                    let mut awaiting = Awaiting {
                        lease,
                        bucket: *bucket,
                        cost,
                        answer,
                    };
                    return awaiting.answer("the request's call to Redis").await;
                }
            };
            // Redis's answer is kept by a task of its own, so a caller that
            // stops waiting (a timeout above, a client gone) or stops
            // polling loses neither the lease Redis grants nor the key's
            // other requests, which wait for it.
            let (caller, answer) = oneshot::channel();
            let refilling = Refilling(Arc::clone(lease));
            tokio::spawn(self.clone().ask_redis(refilling, *bucket, ask, caller));
            let mut awaiting = Awaiting {
                lease,
                bucket: *bucket,
                cost,
                answer,
            };
            return awaiting.answer("the lease's refill").await;
        }
    }

    /// Asks Redis for `lease`'s key for a request's `cost` alone, and
    /// tells `caller`.
    async fn ask_alone(
        self,
        lease: Arc<Lease>,
        bucket: Bucket,
        cost: u32,
        caller: oneshot::Sender<Refilled>,
    ) {
        let asked_at = Instant::now();
        let ask = Ask {
            cost,
            want: cost,
            give_back: 0,
        };
        let Answer { decision, ran } = self.redis.ask(&lease.name, &bucket, ask).await;
        // What Redis said, not the failure policy: a fallback bucket's
        // refusal kept would go on refusing the key, without asking, long
        // after Redis is back.
        if let (Ok(decision), Ran::Took(_)) = (&decision, ran) {
            lease.held().heard(decision, cost, asked_at);
        }
        let spent = matches!(ran, Ran::Took(_)) && decision.as_ref().is_ok_and(|d| d.is_allowed());
        tell(&lease, caller, Refilled { decision, spent }, (bucket, cost));
    }

    /// Asks Redis for `lease`'s key, tells `caller` and keeps the answer;
    /// the cost of a request granted after its caller left is kept too.
    async fn ask_redis(
        self,
        refilling: Refilling,
        bucket: Bucket,
        ask: Ask,
        caller: oneshot::Sender<Refilled>,
    ) {
        let lease = Arc::clone(&refilling.0);
        let asked_at = Instant::now();
        let Answer { decision, ran } = self.redis.ask(&lease.name, &bucket, ask).await;
        let decided = decision.as_ref().ok().copied();
        if let Ran::Took(taken) = ran {
            self.leases
                .refilled(taken.saturating_sub(ask.cost), ask.give_back);
        }
        let spent = matches!(ran, Ran::Took(_)) && decided.is_some_and(|d| d.is_allowed());
        let hold = self.leases.settings.hold;
        let left = lease
            .held()
            .refilled(decided, ran, ask, &bucket, hold, asked_at);
        // The tokens the lease keeps are left too, as the decisions made
        // from it say: Redis's count alone dropped by them at each refill.
        let decision = match (decision, left) {
            (Ok(decision), Some(left)) => Ok(decision.counting(left)),
            (decision, _) => decision,
        };
        // The refill ends before its caller hears: the caller's next
        // request finds the lease as Redis left it, no refill under way.
        drop(refilling);
        tell(
            &lease,
            caller,
            Refilled { decision, spent },
            (bucket, ask.cost),
        );
    }

    /// Starts the sweep with the first new key decided or pinned, or the
    /// first refill, in a Tokio runtime: besides giving back what is held
    /// past its time, it forgets idle keys, cold ones included, which would
    /// otherwise fill [`Leasing::max_keys`] for good.
    fn sweep_from_now_on(&self) {
        if self.leases.sweeping.load(Ordering::Acquire) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.leases.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let leases = Arc::downgrade(&self.leases);
        let redis = self.redis.clone();
        let every = self.leases.settings.hold;
        runtime.spawn(sweep(Sweeping(leases), redis, every));
    }
}

/// The sweep's hold on the leases: when its task ends, dropped with a
/// runtime that shut down included, the next decision starts another
/// (in the runtime it runs in). Without it the store went unswept for
/// good once the runtime it first decided in was gone.
struct Sweeping(Weak<Leases>);

impl Drop for Sweeping {
    fn drop(&mut self) {
        if let Some(leases) = self.0.upgrade() {
            leases.sweeping.store(false, Ordering::Release);
        }
    }
}

/// Every `every`, gives back the tokens held past their time and forgets
/// idle keys, until the store is gone.
async fn sweep<C>(sweeping: Sweeping, redis: RedisStore<C>, every: Duration)
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(leases) = sweeping.0.upgrade() else {
            return;
        };
        let unspent = leases.take_unspent(false);
        give_back(&redis, &leases, unspent).await;
    }
}

/// Gives `unspent` tokens back to their buckets; returns how many Redis
/// took.
async fn give_back<C>(
    redis: &RedisStore<C>,
    leases: &Leases,
    unspent: Vec<(Arc<str>, Bucket, u32)>,
) -> u64
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    let mut given = 0;
    let mut unoffered = Unoffered {
        leases,
        tokens: unspent.into_iter(),
    };
    for (name, bucket, tokens) in unoffered.tokens.by_ref() {
        let ask = Ask {
            cost: 0,
            want: 0,
            give_back: tokens,
        };
        match redis.ask(&name, &bucket, ask).await.ran {
            Ran::Took(_) => {
                given += u64::from(tokens);
                leases.returned(tokens);
            }
            Ran::No => leases.keep(&name, bucket, tokens),
            Ran::Unknown => tracing::debug!(
                target: "palisade_token_bucket",
                key = %name,
                tokens,
                "leased tokens perhaps not given back: redis did not answer"
            ),
        }
    }
    given
}

/// The tokens of a give-back not offered to Redis yet: put back in their
/// leases if the give-back is dropped midway (a shutdown's timeout cut
/// it), since Redis surely did not get them. The tokens being offered
/// when it is dropped may have reached Redis, and are dropped, as a
/// timeout's are: a shortfall, never an excess.
struct Unoffered<'a> {
    leases: &'a Leases,
    tokens: std::vec::IntoIter<(Arc<str>, Bucket, u32)>,
}

impl Drop for Unoffered<'_> {
    fn drop(&mut self) {
        for (name, bucket, tokens) in self.tokens.by_ref() {
            self.leases.keep(&name, bucket, tokens);
        }
    }
}

/// A key held by a limiter whose every request names it
/// ([`key::global`](crate::key::global)): its lease, found once.
#[derive(Debug, Clone)]
pub struct LeasedKey(Pinned);

#[derive(Debug, Clone)]
enum Pinned {
    Lease(Arc<Lease>),
    /// A key too long to lease, decided in Redis each time.
    Name(Arc<str>),
}

impl<C> Store for LeasingStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    type Future = LeaseDecision;
    type Pinned = LeasedKey;

    fn decide(&self, key: &str, bucket: &Bucket, cost: u32) -> LeaseDecision {
        {
            let shard = self
                .leases
                .shard(key)
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(lease) = shard.get(key) {
                return self.decide_on(lease, bucket, cost);
            }
        }
        self.sweep_from_now_on();
        match self.leases.find_or_make(key, false) {
            Some(lease) => self.decide_on(&lease, bucket, cost),
            None => LeaseDecision::asking(self.redis.decide(key, bucket, cost)),
        }
    }

    fn pin(&self, key: &str) -> LeasedKey {
        self.sweep_from_now_on();
        LeasedKey(match self.leases.find_or_make(key, true) {
            Some(lease) => Pinned::Lease(lease),
            None => Pinned::Name(Arc::from(key)),
        })
    }

    fn decide_pinned(&self, pinned: &LeasedKey, bucket: &Bucket, cost: u32) -> LeaseDecision {
        match &pinned.0 {
            Pinned::Lease(lease) => self.decide_on(lease, bucket, cost),
            Pinned::Name(name) => LeaseDecision::asking(self.redis.decide(name, bucket, cost)),
        }
    }
}

/// The decision of a [`LeasingStore`]: ready at once when the lease held
/// the tokens (or a refusal is remembered), else Redis's answer.
pub struct LeaseDecision(Decided);

enum Decided {
    Ready(Option<Result<Decision, StoreError>>),
    Asking(Pin<Box<dyn Future<Output = Result<Decision, StoreError>> + Send>>),
}

impl LeaseDecision {
    const fn ready(decision: Result<Decision, StoreError>) -> Self {
        Self(Decided::Ready(Some(decision)))
    }

    fn asking(future: impl Future<Output = Result<Decision, StoreError>> + Send + 'static) -> Self {
        Self(Decided::Asking(Box::pin(future)))
    }
}

impl std::fmt::Debug for LeaseDecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.0 {
            Decided::Ready(_) => "ready",
            Decided::Asking(_) => "asking redis",
        };
        f.debug_tuple("LeaseDecision").field(&state).finish()
    }
}

impl Future for LeaseDecision {
    type Output = Result<Decision, StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            Decided::Ready(decision) => Poll::Ready(
                decision
                    .take()
                    .expect("LeaseDecision polled after it was ready"),
            ),
            Decided::Asking(future) => future.as_mut().poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_cannot_work_are_refused() {
        assert!(Leasing::new().validate().is_ok());
        for (leasing, setting) in [
            (Leasing::new().max_share(0.0), "max_share"),
            (Leasing::new().max_share(1.5), "max_share"),
            (Leasing::new().max_share(f64::NAN), "max_share"),
            (Leasing::new().cover(Duration::ZERO), "cover"),
            (Leasing::new().hold(Duration::from_millis(10)), "hold"),
            (Leasing::new().hold(Duration::MAX), "hold"),
            (Leasing::new().hold(Duration::from_secs(86_401)), "hold"),
        ] {
            let error = leasing.validate().unwrap_err();
            assert!(error.to_string().contains(setting), "{error}");
        }
    }

    /// A key's lease whose refill for a request of one token, asked at
    /// `asked_at`, Redis refused with `wait`.
    fn refused_with(bucket: &Bucket, wait: Duration, asked_at: Instant) -> Held {
        let settings = Leasing::new();
        let mut held = Held::new(asked_at);
        let ask = held.ask(&settings, bucket, 1, asked_at);
        let refused = Decision::counted(bucket, false, 0, wait, bucket.refill_time());
        let took = Ran::Took(0);
        held.refilled(Some(refused), took, ask, bucket, settings.hold, asked_at);
        held.refilling = false;
        held
    }

    #[test]
    fn a_refusal_counts_its_wait_from_when_redis_was_asked() {
        let bucket = Bucket::new(10, 1.0).unwrap();
        let asked_at = Instant::now();
        let wait = Duration::from_millis(100);
        let mut held = refused_with(&bucket, wait, asked_at);
        let later = asked_at + Duration::from_millis(40);
        let remembered = held.decide_here(&bucket, 1, later).unwrap();
        assert!(!remembered.is_allowed());
        assert_eq!(remembered.retry_after(), Duration::from_millis(60));
        assert!(
            held.decide_here(&bucket, 1, asked_at + wait).is_none(),
            "Redis is asked again once the wait it named has passed"
        );
    }

    /// A request heavier than the one Redis refused waits for its further
    /// tokens too: it was told the lighter one's wait (100 ms where 50
    /// tokens at ten a second take 5 s), came back, and was refused again.
    #[test]
    fn a_heavier_request_waits_for_its_further_tokens() {
        let bucket = Bucket::new(100, 10.0).unwrap();
        let asked_at = Instant::now();
        let mut held = refused_with(&bucket, Duration::from_millis(100), asked_at);
        let heavier = held.decide_here(&bucket, 50, asked_at).unwrap();
        assert!(!heavier.is_allowed());
        assert_eq!(heavier.retry_after(), Duration::from_millis(5_000));
    }

    #[test]
    fn tokens_given_back_stay_held_unless_redis_may_have_them() {
        let settings = Leasing::new();
        let bucket = Bucket::new(10, 1.0).unwrap();
        let now = Instant::now();
        for (ran, kept) in [(Ran::No, 3), (Ran::Unknown, 0)] {
            let mut held = Held::new(now);
            held.tokens = 3;
            held.bucket = Some(bucket);
            let ask = held.ask(&settings, &bucket, 5, now);
            assert_eq!(held.tokens, 0, "given back with the refill");
            held.refilled(None, ran, ask, &bucket, settings.hold, now);
            assert_eq!(held.tokens, kept, "{ran:?}");
        }
    }

    #[test]
    fn a_lease_doubles_what_was_asked_and_stays_within_its_share() {
        let settings = Leasing::new().cover(Duration::from_secs(1)).max_share(0.25);
        let bucket = Bucket::new(100, 1.0).unwrap();
        let now = Instant::now();
        let mut held = Held::new(now);
        assert_eq!(
            held.ask(&settings, &bucket, 1, now).want,
            1,
            "a key seen once"
        );
        held.bucket = Some(bucket);
        held.demand = 3;
        assert_eq!(
            held.ask(&settings, &bucket, 1, now).want,
            8,
            "twice the 4 asked"
        );
        held.demand = 1_000;
        assert_eq!(
            held.ask(&settings, &bucket, 1, now).want,
            25,
            "a quarter of the bucket"
        );
        assert_eq!(
            held.ask(&settings, &bucket, 40, now).want,
            40,
            "at least the cost"
        );
        // 100 tokens asked over ten seconds: ten a second, one second covered.
        held.demand = 99;
        let later = now + Duration::from_secs(10);
        assert_eq!(held.ask(&settings, &bucket, 1, later).want, 10);
    }
}
