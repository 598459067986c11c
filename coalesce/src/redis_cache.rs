//! Coalescing across processes through Redis (feature `redis`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use palisade_hints::Refusal;
use palisade_hints::reachability::{Change, Reachability, unreachable};
use redis::Script;
use redis::aio::ConnectionLike;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::cache::{Lookup, Served};
use crate::codec;
use crate::error::FlightError;
use crate::events::Events;
use crate::flight::Coalescer;
use crate::freshness::{Entry, Freshness, State};

/// An entry and how long Redis keeps it still (its `PTTL`), read at
/// once: the entry's age is Redis's count, not a client clock's. A key of
/// another type (not ours) reads as absent, and the next store replaces
/// it.
static READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local stored = redis.pcall('GET', KEYS[1])
if not stored or type(stored) == 'table' then return false end
return {redis.call('PTTL', KEYS[1]), stored}",
    )
});

/// Takes the lock for `ARGV[1]` if no one holds it, with a lease of
/// `ARGV[2]` ms; returns its holder either way (`ARGV[1]` when won), or an
/// empty string for a key of another type. One step: a waiter knows whose
/// failure to look for even when the leader fails before its first look.
static LOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return ARGV[1] end
local holder = redis.pcall('GET', KEYS[1])
if type(holder) ~= 'string' then return '' end
return holder",
    )
});

/// Who holds the lock (its token; an empty string for a value not a
/// token, or a key of another type; `false` when free), and, if `KEYS[2]`
/// is given, the failure the lead of token `ARGV[1]` left there, read at
/// once.
static LOOK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local holder = redis.pcall('GET', KEYS[1])
if type(holder) ~= 'string' then holder = redis.call('EXISTS', KEYS[1]) == 1 and '' end
local failed = false
if KEYS[2] then
  local left = redis.pcall('GET', KEYS[2])
  if type(left) == 'string' and string.sub(left, 1, 32) == ARGV[1] then
    failed = string.sub(left, 33)
  end
end
return {holder, failed}",
    )
});

/// Releases the lock if it is still ours, and wakes the waiters (on
/// channel `ARGV[2]`, for key `ARGV[3]`) to take it: without a wake-up
/// they found it gone at their next poll only.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1",
    )
});

/// Extends the lock's lease if it is still ours.
static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0",
    )
});

/// If the lock is still ours: stores the value, wakes the waiters and
/// releases the lock, in one round trip. A leader whose lease ran out
/// writes nothing (the process that took over may have stored a newer
/// value).
static FILL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[2]) ~= ARGV[5] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
redis.call('DEL', KEYS[2])
return 1",
    )
});

/// If the lock is still ours: drops the stored value (the origin said the
/// new one may not be kept, so the old one may not be served either),
/// releases the lock and wakes the waiters to take it.
static FORGET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1",
    )
});

/// Drops a key's value, lock and failure; wakes the waiters of a lock it
/// dropped (on channel `ARGV[1]`, for key `ARGV[2]`).
static INVALIDATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local locked = redis.call('EXISTS', KEYS[2])
local dropped = redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
if locked == 1 then redis.call('PUBLISH', ARGV[1], ARGV[2]) end
return dropped",
    )
});

/// If the lock is still ours: leaves the computation's failure for the
/// waiters of this lead (after the lock's token, in the key's one failure
/// entry, kept `ARGV[2]` ms), wakes them and releases the lock, in one
/// round trip.
static FAIL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) ~= ARGV[3] then return 0 end
redis.call('SET', KEYS[2], ARGV[3] .. ARGV[1], 'PX', ARGV[2])
redis.call('PUBLISH', ARGV[4], ARGV[5])
redis.call('DEL', KEYS[1])
return 1",
    )
});

/// How a [`RedisCache`] behaves.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use palisade_coalesce::{Freshness, RedisSettings};
///
/// let settings = RedisSettings::new(Freshness::new(Duration::from_secs(30)))
///     .prefix("catalog")
///     .lock_ttl(Duration::from_secs(5))
///     .wait_timeout(Duration::from_secs(10));
/// # let _ = settings;
/// ```
#[derive(Debug, Clone)]
pub struct RedisSettings {
    freshness: Freshness,
    prefix: String,
    lock_ttl: Duration,
    wait_timeout: Duration,
    poll_interval: Duration,
    timeout: Duration,
    wake_ups: bool,
    on_failure: FailurePolicy,
    probe_interval: Duration,
}

impl RedisSettings {
    /// Entries with `freshness`; keys under `palisade:coalesce`; a 10 s
    /// lock lease, waits of at most 30 s polled every 250 ms besides the
    /// wake-up, 250 ms per Redis call, and while Redis does not answer,
    /// values computed here ([`FailurePolicy::ComputeHere`]) and Redis
    /// asked again every 500 ms.
    #[must_use]
    pub fn new(freshness: Freshness) -> Self {
        Self {
            freshness,
            prefix: "palisade:coalesce".to_owned(),
            lock_ttl: Duration::from_secs(10),
            wait_timeout: Duration::from_secs(30),
            poll_interval: Duration::from_millis(250),
            timeout: Duration::from_millis(250),
            wake_ups: true,
            on_failure: FailurePolicy::ComputeHere,
            probe_interval: Duration::from_millis(500),
        }
    }

    /// What lookups do while Redis does not answer; see [`FailurePolicy`].
    #[must_use]
    pub const fn on_failure(mut self, policy: FailurePolicy) -> Self {
        self.on_failure = policy;
        self
    }

    /// While Redis does not answer, how often one lookup asks it again;
    /// the others apply the [failure policy](Self::on_failure) at once,
    /// without waiting out a [timeout](Self::timeout).
    #[must_use]
    pub const fn probe_interval(mut self, interval: Duration) -> Self {
        self.probe_interval = interval;
        self
    }

    /// The prefix of every key: `{prefix:key}:value`, `{prefix:key}:lock`
    /// and, where failures are shared
    /// ([`share_failures`](RedisCache::share_failures), the HTTP layer),
    /// `{prefix:key}:failed`. A key holding a `}` (which would end the
    /// Redis Cluster hash tag early: every key a client sent as `}…`, or
    /// every path under one holding a `}`, in one slot) or spelling a
    /// hashed name is named by its hash, `{prefix:#<SHA-256 in hex>}` (see
    /// [`palisade_hints::hash_tag`]). The prefix must hold no `}`.
    ///
    /// Caches under one prefix in one Redis database are one cache: a
    /// key's value and its computation are theirs together. Give each
    /// cache whose keys mean something else (`prices` and `stock` keyed
    /// by SKU), and each deployment sharing the database (staging beside
    /// production), a prefix of its own.
    #[must_use]
    pub fn prefix(mut self, prefix: &str) -> Self {
        prefix.clone_into(&mut self.prefix);
        self
    }

    /// The leader's lease on the lock, extended every half of it while it
    /// computes; a leader that dies is replaced after at most this long.
    /// From a millisecond to a day, a `ttl` outside taken as the nearer
    /// bound (Redis refused a lease too long for `PX`, so that every lock
    /// failed and Redis counted as down).
    #[must_use]
    pub const fn lock_ttl(mut self, ttl: Duration) -> Self {
        self.lock_ttl = palisade_hints::bounded(ttl, Duration::from_millis(1), palisade_hints::DAY);
        self
    }

    /// The longest a caller waits for another process's computation before
    /// computing itself.
    #[must_use]
    pub const fn wait_timeout(mut self, timeout: Duration) -> Self {
        self.wait_timeout = timeout;
        self
    }

    /// How often a waiter looks for the value besides being woken (in case
    /// a wake-up is lost with the pub/sub connection): from a millisecond
    /// to a day, an `interval` outside taken as the nearer bound (at zero,
    /// every waiter read Redis back to back for as long as it waited).
    #[must_use]
    pub const fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval =
            palisade_hints::bounded(interval, Duration::from_millis(1), palisade_hints::DAY);
        self
    }

    /// Whether waiters are woken through pub/sub (the default) or only
    /// poll, for deployments where `SUBSCRIBE` is not allowed; then set a
    /// short [`poll_interval`](Self::poll_interval).
    #[must_use]
    pub const fn wake_ups(mut self, enabled: bool) -> Self {
        self.wake_ups = enabled;
        self
    }

    /// How long one Redis call may take before Redis counts as
    /// unreachable: from a millisecond to a minute, a `timeout` outside
    /// taken as the nearer bound
    /// ([`call_timeout`](palisade_hints::reachability::call_timeout)).
    ///
    /// The connection's own response timeout still cuts a call short:
    /// redis-rs gives the connections of `get_multiplexed_async_connection`
    /// and `get_connection_manager` one of 500 ms, so a `timeout` past it
    /// needs a connection made with a longer one, or none.
    #[must_use]
    pub const fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = palisade_hints::reachability::call_timeout(timeout);
        self
    }
}

/// What a [`RedisCache`] does while Redis does not answer (a call failed,
/// or took longer than [`RedisSettings::timeout`]).
///
/// Each choice is a trade. Computing here keeps every lookup answered, but
/// the origin then sees one call per key from each process instead of one
/// from the fleet; refusing keeps the origin's load where it was and fails
/// the lookups; a limit does some of each. Whichever applies, one lookup
/// per [probe interval](RedisSettings::probe_interval) asks Redis again and
/// the others do not wait for it; the change of state is logged once each
/// way, and the lookups the policy answered are counted (feature `otel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Compute in this process, still coalesced among its callers (the
    /// default): an outage of Redis costs coalescing across processes,
    /// not availability.
    ComputeHere,
    /// Compute in this process, for at most this many keys at once; a
    /// lookup that would compute another fails with
    /// [`FlightError::Refused`].
    ComputeHereUpTo(usize),
    /// Compute nothing: a lookup fails with [`FlightError::Refused`], whose
    /// `retry_after` is the probe interval, unless a stale value Redis gave
    /// it may stand in ([`Served::StaleIfError`]).
    Refuse,
}

impl FailurePolicy {
    const fn name(self) -> &'static str {
        match self {
            Self::ComputeHere => "compute here",
            Self::ComputeHereUpTo(_) => "compute here up to a limit",
            Self::Refuse => "refuse",
        }
    }
}

/// A cache shared by every process through Redis, computing each value once
/// across all of them.
///
/// Values are bytes (serialise yours). On a miss one process wins a lock
/// (`SET NX PX` with a random token), looks once more for a value stored
/// meanwhile, computes, and, in one script fenced by its token, stores the
/// value with its [`Freshness`], publishes a wake-up and releases the
/// lock; a leader computing for longer than half its lease extends it,
/// and one whose lease ran out anyway (a long pause) stores nothing, so
/// the value of the process that took over stands. The others wait for the wake-up (one pub/sub connection per
/// cache, fanned out by key), look again every poll interval, and after the
/// wait timeout compute on their own. If the leader dies, its lease
/// expires and exactly one waiter wins the lock and takes over. A
/// leader whose computation fails gives the lock back, and its waiters
/// take it in turn, unless its failures are shared
/// ([`share_failures`](Self::share_failures)): each then gets the
/// failure, as the leader's callers in its own process do. Inside a
/// process, callers of one key are coalesced first, so a process sends one
/// request per key however many callers it has.
///
/// Stale values are served while one process refreshes them
/// (stale-while-revalidate), cover a failing origin within their window
/// (stale-if-error), and hot keys are refreshed early (XFetch).
/// An entry is stored with its windows as offsets and expires with the
/// last of them; its age is what Redis has counted off that expiry, so
/// every process agrees on where it stands whatever its own clock says.
///
/// When Redis does not answer, its [`FailurePolicy`] decides: by default
/// the value is computed in this process (still coalesced), never waited
/// for, so a Redis outage costs coalescing across processes, not
/// availability.
pub struct RedisCache<C, E> {
    shared: Arc<Shared<C>>,
    /// Flights in this process, landing on a lookup or on the failure
    /// policy's refusal.
    local: Coalescer<String, Result<Lookup<Bytes>, Refusal>, E>,
    /// How failures reach other processes' waiters, if they do.
    failures: Option<Arc<FailureSharing<E>>>,
}

impl<C, E> Clone for RedisCache<C, E> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            local: self.local.clone(),
            failures: self.failures.clone(),
        }
    }
}

/// How a computation's failure travels to the callers waiting for it in
/// other processes; see [`RedisCache::share_failures`].
pub(crate) struct FailureSharing<E> {
    encode: Box<Encode<E>>,
    decode: Box<Decode<E>>,
}

/// The bytes a failure travels as, if it is shared.
type Encode<E> = dyn Fn(&E) -> Option<Bytes> + Send + Sync;

/// The failure its bytes stand for, if they can be read.
type Decode<E> = dyn Fn(Bytes) -> Option<E> + Send + Sync;

impl<E> FailureSharing<E> {
    pub(crate) fn new(
        encode: impl Fn(&E) -> Option<Bytes> + Send + Sync + 'static,
        decode: impl Fn(Bytes) -> Option<E> + Send + Sync + 'static,
    ) -> Self {
        Self {
            encode: Box::new(encode),
            decode: Box::new(decode),
        }
    }
}

impl<C, E> std::fmt::Debug for RedisCache<C, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCache")
            .field("settings", &self.shared.settings)
            .finish_non_exhaustive()
    }
}

struct Shared<C> {
    connection: C,
    settings: RedisSettings,
    channel: String,
    wakeups: Arc<Wakeups>,
    /// The task keeping the wake-up subscription, ended with the cache:
    /// it waits on its subscription, and would otherwise hold it open for
    /// as long as no message came.
    dispatching: Option<tokio::task::AbortHandle>,
    redis: Reachability,
    /// Computations running without Redis, for
    /// [`FailurePolicy::ComputeHereUpTo`].
    alone: AtomicUsize,
    events: Arc<Events>,
}

impl<C> Drop for Shared<C> {
    fn drop(&mut self) {
        if let Some(dispatching) = &self.dispatching {
            dispatching.abort();
        }
    }
}

/// Waiters by key, woken by the pub/sub dispatcher.
#[derive(Default)]
struct Wakeups {
    by_key: Mutex<ByKey>,
}

/// The wake-ups of the keys waited for, and how many were left at the
/// last sweep of those no one waits for any more.
#[derive(Default)]
struct ByKey {
    wakeups: HashMap<String, Weak<Notify>>,
    swept: usize,
}

/// Wake-ups kept before the first sweep.
const UNSWEPT: usize = 64;

impl Wakeups {
    fn register(&self, key: &str) -> Arc<Notify> {
        let mut by_key = self.by_key.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(notify) = by_key.wakeups.get(key).and_then(Weak::upgrade) {
            return notify;
        }
        // Swept once their number doubled since the last sweep: swept at
        // every new key, thousands of keys waited for at once (a fleet's
        // cold misses after a flush) cost a pass over all of them each,
        // under the lock the dispatcher's every wake-up takes.
        if by_key.wakeups.len() >= (2 * by_key.swept).max(UNSWEPT) {
            by_key.wakeups.retain(|_, notify| notify.strong_count() > 0);
            by_key.swept = by_key.wakeups.len();
        }
        let notify = Arc::new(Notify::new());
        by_key
            .wakeups
            .insert(key.to_owned(), Arc::downgrade(&notify));
        notify
    }

    fn wake(&self, key: &str) {
        let notify = self
            .by_key
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .wakeups
            .get(key)
            .and_then(Weak::upgrade);
        if let Some(notify) = notify {
            notify.notify_waiters();
        }
    }
}

/// An entry as read from Redis, with the write that stored it.
struct Stored {
    entry: Entry<Bytes>,
    write: Token,
}

/// One key's lookup across processes, run by this process's flight.
struct Flight<C, E> {
    shared: Arc<Shared<C>>,
    key: String,
    failures: Option<Arc<FailureSharing<E>>>,
}

impl<C, E> Clone for Flight<C, E> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            key: self.key.clone(),
            failures: self.failures.clone(),
        }
    }
}

impl<C: ConnectionLike + Clone + Send + Sync + 'static, E> Flight<C, E> {
    /// Ends the lead of `token`, whose computation failed with `error`:
    /// leaves the failure for its waiters in other processes if it is to
    /// be shared, and gives the lock back.
    fn failed<'a>(&'a self, error: &E, token: Token) -> impl Future<Output = ()> + use<'a, C, E> {
        let shared_failure = self
            .failures
            .as_ref()
            .and_then(|failures| (failures.encode)(error));
        async move {
            let shared = &self.shared;
            let lock_key = shared.lock_key(&self.key);
            let Some(failure) = shared_failure else {
                return release(shared, &self.key, &lock_key, &token.to_string()).await;
            };
            let mut connection = shared.connection.clone();
            let mut fail = FAIL.key(&lock_key);
            let token = token.to_string();
            fail.key(shared.failed_key(&self.key))
                .arg(failure.as_ref())
                .arg(ms(shared.failure_kept()))
                .arg(&token)
                .arg(&shared.channel)
                .arg(&self.key);
            if shared
                .call(fail.invoke_async::<i64>(&mut connection))
                .await
                .is_none()
            {
                // Not left (Redis refused the write: memory full, say): the
                // lock goes all the same, so its waiters take over rather
                // than wait out its lease.
                release(shared, &self.key, &lock_key, &token).await;
            }
        }
    }
}

/// What a waiter found.
enum Waited<E> {
    Value(Bytes),
    /// The leader's computation failed, with this error to share.
    Failed(E),
    LockGone,
    GaveUp,
    RedisDown,
}

/// Why a lookup got no value of its own.
enum Unanswered<E> {
    /// The origin failed.
    Origin(E),
    /// Redis did not answer, and the failure policy let nothing be
    /// computed.
    Refused(Refusal),
}

/// A computation running without Redis, counted for
/// [`FailurePolicy::ComputeHereUpTo`] until it ends.
struct Alone<'a>(&'a AtomicUsize);

impl Drop for Alone<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<C, E> RedisCache<C, E>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
{
    /// A cache on `connection`, subscribing for wake-ups through `client`
    /// (one pub/sub connection, kept up by a background task) unless
    /// [`RedisSettings::wake_ups`] is off.
    ///
    /// When the subscription cannot be made now (Redis down, `SUBSCRIBE`
    /// refused), the cache still works: it is retried in the background
    /// while waiters poll, as when it is lost later.
    ///
    /// `connection` carries every command, and the cache does not replace
    /// it: give one that reconnects by itself (a `ConnectionManager` or a
    /// cluster connection). A `MultiplexedConnection` does not:
    /// once Redis restarts, every command on it fails until the process
    /// makes a new one, so every lookup is answered by the
    /// [`FailurePolicy`] and no longer coalesced across processes, long
    /// after Redis is back.
    ///
    /// # Errors
    ///
    /// None today: the `Result` leaves room for settings checked against
    /// the server.
    pub async fn connect(
        client: &redis::Client,
        connection: C,
        settings: RedisSettings,
    ) -> redis::RedisResult<Self> {
        let channel = format!("{}:filled", settings.prefix);
        let wakeups = Arc::new(Wakeups::default());
        let mut dispatching = None;
        if settings.wake_ups {
            let pubsub = subscribe(client, &channel, settings.timeout).await;
            if let Err(error) = &pubsub {
                tracing::warn!(target: "palisade_coalesce", %error, "no wake-up subscription; waiters poll until it is made");
            }
            let task = tokio::spawn(dispatch(
                client.clone(),
                channel.clone(),
                pubsub.ok(),
                Arc::downgrade(&wakeups),
            ));
            dispatching = Some(task.abort_handle());
        }
        let local = Coalescer::relaying(100_000);
        Ok(Self {
            shared: Arc::new(Shared {
                connection,
                redis: Reachability::new(settings.probe_interval, Instant::now().into_std()),
                settings,
                channel,
                wakeups,
                dispatching,
                alone: AtomicUsize::new(0),
                events: local.events().clone(),
            }),
            local,
            failures: None,
        })
    }

    /// Shares a computation's failure with the callers waiting for it in
    /// other processes, as its callers in this process share it: the
    /// leader leaves `encode`'s bytes for them, marked with its lock's
    /// token, in the key's one failure entry (`{prefix:key}:failed`, kept
    /// for the longer of the lock's lease and two polls, and taken by the
    /// next failure), and wakes them, and each gets `decode`'s error of them (or serves a stale
    /// value within its `stale-if-error` window). A caller that comes
    /// after the failure asks the origin anew.
    ///
    /// `encode` says `None` of a failure that is this process's own
    /// rather than the origin's (its breaker open, a limit of its own):
    /// the waiters elsewhere then take the lock in turn and ask the origin
    /// through their own stack, as they do for every failure without
    /// this, and as they do when `decode` says `None`. The HTTP layer
    /// shares the origin's `5xx` and `429` answers this way, whatever is
    /// set here.
    ///
    /// ```
    /// # async fn example(client: redis::Client) -> redis::RedisResult<()> {
    /// use std::time::Duration;
    /// use bytes::Bytes;
    /// use palisade_coalesce::{Freshness, RedisCache, RedisSettings};
    ///
    /// #[derive(Debug)]
    /// enum PriceError {
    ///     /// The pricing service answered with this error.
    ///     Origin(String),
    ///     /// This process could not reach it.
    ///     Unreachable,
    /// }
    ///
    /// // A connection that reconnects by itself (see `connect`).
    /// let connection = client.get_connection_manager().await?;
    /// let settings = RedisSettings::new(Freshness::new(Duration::from_secs(30)));
    /// let prices: RedisCache<_, PriceError> = RedisCache::connect(&client, connection, settings)
    ///     .await?
    ///     .share_failures(
    ///         |error| match error {
    ///             PriceError::Origin(message) => Some(Bytes::from(message.clone())),
    ///             PriceError::Unreachable => None,
    ///         },
    ///         |bytes| String::from_utf8(bytes.into()).ok().map(PriceError::Origin),
    ///     );
    /// # let _ = prices;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn share_failures(
        mut self,
        encode: impl Fn(&E) -> Option<Bytes> + Send + Sync + 'static,
        decode: impl Fn(Bytes) -> Option<E> + Send + Sync + 'static,
    ) -> Self {
        self.failures = Some(Arc::new(FailureSharing::new(encode, decode)));
        self
    }

    /// Counts lookups by how they were served, computations, coalesced
    /// callers, early refreshes and lock takeovers with OpenTelemetry
    /// (feature `otel`), under the attribute `cache = name`; see the crate
    /// docs for the names. Only the first call registers.
    #[cfg(feature = "otel")]
    pub fn instrument(&self, meter: &opentelemetry::metrics::Meter, name: impl Into<String>) {
        self.local.instrument(meter, name);
    }

    /// The value for `key`: from Redis, or computed once across every
    /// process by `compute`.
    ///
    /// # Errors
    ///
    /// The origin's error (see [`FlightError`]) when no stale value may
    /// stand in for it.
    pub async fn get_with<F, Fut>(
        &self,
        key: &str,
        compute: F,
    ) -> Result<Lookup<Bytes>, FlightError<E>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Bytes, E>> + Send + 'static,
    {
        let freshness = self.shared.settings.freshness;
        let compute = move || {
            let computing = compute();
            async move { computing.await.map(|value| (value, Some(freshness))) }
        };
        self.get_with_freshness(key, compute).await
    }

    /// Drops the value stored for `key` in Redis, if any: the next lookup
    /// in any process computes it. A leader already computing (which may
    /// have read the origin before the write that calls for this) loses
    /// its lock with the value, so what it finds is not stored: its
    /// waiters get it, and the next lookup computes anew. In this process
    /// the next lookup does not join that leader's flight either; in
    /// another, a caller that joins the flight there before it ends gets
    /// its value. When Redis is unreachable, nothing is dropped (and the
    /// failure is logged).
    pub async fn invalidate(&self, key: &str) {
        self.local.detach(&key.to_owned());
        let mut connection = self.shared.connection.clone();
        // One script: the keys share a hash tag, so one Cluster slot.
        let mut invalidate = INVALIDATE.key(self.shared.value_key(key));
        invalidate
            .key(self.shared.lock_key(key))
            .key(self.shared.failed_key(key))
            .arg(&self.shared.channel)
            .arg(key);
        let dropped = self
            .shared
            .call(invalidate.invoke_async::<i64>(&mut connection))
            .await;
        if dropped.is_none() {
            tracing::warn!(target: "palisade_coalesce", key, "redis failed; the invalidation was not applied");
        }
    }

    /// The freshness values get when the computation does not say.
    #[must_use]
    pub fn freshness(&self) -> Freshness {
        self.shared.settings.freshness
    }

    /// Like [`get_with`](Self::get_with), for computations that say how
    /// fresh each value is: `None` is not stored, and the value stored
    /// before is dropped (the waiters of this process's flight get it;
    /// waiters in other processes find the lock released and compute in
    /// turn).
    ///
    /// # Errors
    ///
    /// As [`get_with`](Self::get_with).
    pub async fn get_with_freshness<F, Fut>(
        &self,
        key: &str,
        compute: F,
    ) -> Result<Lookup<Bytes>, FlightError<E>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(Bytes, Option<Freshness>), E>> + Send + 'static,
    {
        self.get_sharing(key, compute, self.failures.clone()).await
    }

    /// A lookup whose failures reach other processes' waiters through
    /// `failures`, if any.
    pub(crate) async fn get_sharing<F, Fut>(
        &self,
        key: &str,
        compute: F,
        failures: Option<Arc<FailureSharing<E>>>,
    ) -> Result<Lookup<Bytes>, FlightError<E>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(Bytes, Option<Freshness>), E>> + Send + 'static,
    {
        let flight = Flight {
            shared: self.shared.clone(),
            key: key.to_owned(),
            failures,
        };
        // Counted when the origin is called, not when a flight starts:
        // most flights find the value in Redis.
        let events = self.shared.events.clone();
        let compute = move || {
            events.started();
            compute()
        };
        let looked_up = self
            .local
            .run(key.to_owned(), move || resolve(flight, compute))
            .await
            .and_then(|answered| answered.map_err(FlightError::Refused));
        self.shared.events.looked_up(&looked_up);
        looked_up
    }
}

/// A pub/sub connection subscribed to `channel`, within `timeout`.
async fn subscribe(
    client: &redis::Client,
    channel: &str,
    timeout: Duration,
) -> redis::RedisResult<redis::aio::PubSub> {
    let subscribing = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        Ok(pubsub)
    };
    tokio::time::timeout(timeout, subscribing)
        .await
        .unwrap_or_else(|_| Err((redis::ErrorKind::Io, "subscribing timed out").into()))
}

/// Keeps the wake-up subscription: fans messages out by key, and
/// (re)connects with backoff while there is none.
async fn dispatch(
    client: redis::Client,
    channel: String,
    mut pubsub: Option<redis::aio::PubSub>,
    wakeups: Weak<Wakeups>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        if let Some(connected) = pubsub.take() {
            backoff = Duration::from_millis(50);
            let mut messages = connected.into_on_message();
            while let Some(message) = messages.next().await {
                let Some(wakeups) = wakeups.upgrade() else {
                    return;
                };
                if let Ok(key) = message.get_payload::<String>() {
                    wakeups.wake(&key);
                }
            }
            tracing::warn!(target: "palisade_coalesce", "wake-up subscription lost; waiters poll until it is back");
        }
        if wakeups.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
        pubsub = subscribe(&client, &channel, Duration::from_secs(5))
            .await
            .ok();
    }
}

impl<C: ConnectionLike + Clone + Send + Sync + 'static> Shared<C> {
    /// `key`'s hash tag, which all its entries share: one Cluster slot.
    fn tagged(&self, key: &str) -> String {
        palisade_hints::hash_tag::tagged(&self.settings.prefix, key, usize::MAX)
    }

    fn value_key(&self, key: &str) -> String {
        self.tagged(key) + ":value"
    }

    fn lock_key(&self, key: &str) -> String {
        self.tagged(key) + ":lock"
    }

    /// Where a lead leaves its failure for its waiters, after its token:
    /// one entry a key, the last failure's.
    fn failed_key(&self, key: &str) -> String {
        self.tagged(key) + ":failed"
    }

    /// How long a failure is left for the waiters of its lead: each looks
    /// again within a poll interval and a call's timeout, or at once when
    /// woken.
    fn failure_kept(&self) -> Duration {
        let settings = &self.settings;
        settings
            .poll_interval
            .saturating_add(settings.timeout)
            .saturating_mul(2)
            .max(settings.lock_ttl)
    }

    /// Whether a lookup should ask Redis: while it is down, one lookup
    /// per probe interval does; the others apply the failure policy at
    /// once. Only a lookup's first call is gated: the calls after it, and
    /// the writes that keep entries and locks right (storing, releasing,
    /// extending, invalidating), are always made.
    fn may_ask(&self) -> bool {
        self.redis.should_try(Instant::now().into_std())
    }

    /// Redis answered a call asked at `asked`.
    fn answered(&self, asked: Instant) {
        if self.redis.answered(asked.into_std()) == Change::CameBack {
            tracing::info!(target: "palisade_coalesce", "redis answers again; coalescing across processes");
        }
    }

    /// One Redis call within the timeout; `None` when Redis failed.
    async fn call<T>(&self, call: impl Future<Output = redis::RedisResult<T>>) -> Option<T> {
        self.attempt(call).await.ok()
    }

    /// One Redis call within the timeout, and when it failed, whether
    /// Redis answered it (with an error of the call's own).
    async fn attempt<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Failed> {
        let asked = Instant::now();
        let error = match tokio::time::timeout(self.settings.timeout, call).await {
            Ok(Ok(value)) => {
                self.answered(asked);
                return Ok(value);
            }
            Ok(Err(error)) if !unreachable(&error) => {
                // Redis answered, with an error of this call's own (a key
                // of another type, memory full, a permission): the call
                // failed, Redis is up. Counted; a warning once a probe
                // interval, as it may be every call's.
                self.events.redis_failed();
                if self.redis.warning_due(asked.into_std()) {
                    tracing::warn!(target: "palisade_coalesce", %error, "a redis call failed (redis answers; more such failures are logged at debug for a probe interval)");
                } else {
                    tracing::debug!(target: "palisade_coalesce", %error, "a redis call failed");
                }
                self.answered(asked);
                return Err(Failed::Answered);
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {:?}", self.settings.timeout),
        };
        self.events.redis_failed();
        if self.redis.failed(asked.into_std()) == Change::WentDown {
            tracing::warn!(
                target: "palisade_coalesce",
                %error,
                policy = self.settings.on_failure.name(),
                "redis failed; applying the failure policy until it answers again"
            );
        }
        Err(Failed::Unanswered)
    }

    /// The value computed without Redis, if the failure policy lets this
    /// process compute it.
    async fn compute_alone<F, Fut, E>(&self, compute: F) -> Result<Bytes, Unanswered<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(Bytes, Option<Freshness>), E>>,
    {
        let _alone = match self.settings.on_failure {
            FailurePolicy::ComputeHere => None,
            FailurePolicy::ComputeHereUpTo(limit) => {
                let taken = self
                    .alone
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |alone| {
                        (alone < limit).then_some(alone + 1)
                    });
                if taken.is_err() {
                    return Err(self.refuse());
                }
                Some(Alone(&self.alone))
            }
            FailurePolicy::Refuse => return Err(self.refuse()),
        };
        self.events.without_redis(false);
        compute()
            .await
            .map(|(value, _)| value)
            .map_err(Unanswered::Origin)
    }

    fn refuse<E>(&self) -> Unanswered<E> {
        self.events.without_redis(true);
        Unanswered::Refused(Refusal::store_down(Some(self.settings.probe_interval)))
    }

    /// The entry stored for `key`, if any; `None` when Redis failed.
    ///
    /// Its age is what Redis has counted off its expiry, which was its
    /// whole lifetime when stored; an entry without an expiry is not one
    /// of ours, and a miss.
    async fn read(&self, key: &str) -> Option<Option<Stored>> {
        let mut connection = self.connection.clone();
        let read = READ.key(self.value_key(key));
        let stored: Option<(i64, Vec<u8>)> = self.call(read.invoke_async(&mut connection)).await?;
        let now = Instant::now();
        Some(stored.and_then(|(left_ms, stored)| {
            let left_ms = u64::try_from(left_ms).ok()?;
            let decoded = codec::decode(Bytes::from(stored))?;
            let age = decoded.lifetime.keep_ms().saturating_sub(left_ms);
            Some(Stored {
                entry: Entry::with_lifetime(
                    decoded.value,
                    decoded.lifetime,
                    self.settings.freshness.beta(),
                    Duration::from_millis(age),
                    now,
                ),
                write: Token(decoded.write),
            })
        }))
    }

    /// Tries the lock; `None` when Redis failed.
    ///
    /// The lock is [`Held`] from before it is asked for: an attempt cut
    /// short (by the call's timeout, or its caller's future dropped) may
    /// still take it once the command reaches Redis, and nobody else knows
    /// its token to give it back before its lease ends. Its release is
    /// fenced by the token, so giving back a lock never taken changes
    /// nothing.
    async fn try_lock(&self, key: &str) -> Option<Locked<C>> {
        let token = Token(fastrand::u128(..));
        let held = Held {
            connection: self.connection.clone(),
            lock_key: self.lock_key(key),
            token,
            token_arg: token.to_string(),
            channel: self.channel.clone(),
            key: key.to_owned(),
            timeout: self.settings.timeout,
            ended: false,
        };
        let mut connection = self.connection.clone();
        let mut lock = LOCK.key(&held.lock_key);
        lock.arg(&held.token_arg).arg(ms(self.settings.lock_ttl));
        let holder: String = match self.attempt(lock.invoke_async(&mut connection)).await {
            Ok(holder) => holder,
            // Redis refused the command itself: it took no lock.
            Err(Failed::Answered) => {
                held.end();
                return None;
            }
            // It may have taken it: `held` gives it back.
            Err(Failed::Unanswered) => return None,
        };
        Some(match Token::parse(&holder) {
            Some(holder) if holder == token => Locked::Won(held),
            holder => {
                held.end();
                Locked::HeldBy(holder)
            }
        })
    }

    /// Whether `holder` still holds `key`'s lock, or who took it after
    /// it, or the failure it left if `sharing`; `None` when Redis failed.
    async fn look(&self, key: &str, holder: Option<Token>, sharing: bool) -> Option<Look> {
        let mut connection = self.connection.clone();
        let mut look = LOOK.key(self.lock_key(key));
        if let Some(holder) = holder.filter(|_| sharing) {
            look.key(self.failed_key(key)).arg(holder.to_string());
        }
        let (lock, failed): (Option<String>, Option<Vec<u8>>) =
            self.call(look.invoke_async(&mut connection)).await?;
        Some(match (failed, lock) {
            (Some(failed), _) => Look::Failed(Bytes::from(failed)),
            (None, Some(lock)) => Look::Held(Token::parse(&lock)),
            (None, None) => Look::Gone,
        })
    }
}

/// How a Redis call failed.
enum Failed {
    /// Redis answered, with an error of the call's own.
    Answered,
    /// No answer: Redis unreachable, the connection lost, or the timeout.
    Unanswered,
}

/// What a lock attempt found.
enum Locked<C: ConnectionLike + Clone + Send + 'static> {
    /// This process leads, holding the lock.
    Won(Held<C>),
    /// Another holds the lock (`None`: a holder not of ours).
    HeldBy(Option<Token>),
}

/// What a waiter's look at the lock found.
enum Look {
    /// The lock is held, by this holder.
    Held(Option<Token>),
    /// The holder waited for failed, leaving this.
    Failed(Bytes),
    /// The lock is free.
    Gone,
}

/// A lock's token: random, so only its holder releases it, and also the
/// mark of the write it makes, which tells one write from another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Token(u128);

impl Token {
    /// The token written as `Display` writes it.
    fn parse(written: &str) -> Option<Self> {
        (written.len() == 32)
            .then(|| u128::from_str_radix(written, 16).ok())
            .flatten()
            .map(Self)
    }
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// One process's answer for `key` (run inside its in-process flight).
async fn resolve<C, F, Fut, E>(
    flight: Flight<C, E>,
    compute: F,
) -> Result<Result<Lookup<Bytes>, Refusal>, E>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(Bytes, Option<Freshness>), E>> + Send + 'static,
    E: Send + 'static,
{
    let Flight { shared, key, .. } = &flight;
    let read = if shared.may_ask() {
        shared.read(key).await
    } else {
        None
    };
    let Some(stored) = read else {
        return answer(shared.compute_alone(compute).await.map(miss));
    };
    let seen = stored.as_ref().map(|stored| stored.write);
    if let Some(Stored { entry, .. }) = &stored {
        let now = Instant::now();
        let served = match entry.state(now, 1.0 - fastrand::f64()) {
            State::Fresh => Some(Served::Fresh),
            state @ (State::RefreshEarly | State::Stale) => {
                let how = if state == State::Stale {
                    Served::Stale
                } else {
                    shared.events.early_refresh();
                    Served::Fresh
                };
                let alone_until = entry.refresh_alone_until(now);
                tokio::spawn(crate::context::in_starters_context(refresh(
                    flight.clone(),
                    seen,
                    alone_until,
                    compute,
                )));
                return Ok(Ok(served(entry, how)));
            }
            State::Expired | State::Dead => None,
        };
        if let Some(how) = served {
            return Ok(Ok(self::served(entry, how)));
        }
    }
    match fill(&flight, seen, compute).await {
        Ok(value) => Ok(Ok(miss(value))),
        Err(unanswered) => match stored {
            Some(Stored { entry, .. }) if entry.usable_on_error(Instant::now()) => {
                palisade_hints::throttled!(warn, by: &flight.shared.events.warnings, target: "palisade_coalesce", "no value of its own (the origin failed, or redis did and the policy refused); serving a stale value");
                Ok(Ok(served(&entry, Served::StaleIfError)))
            }
            _ => answer(Err(unanswered)),
        },
    }
}

/// A lookup as the in-process flight lands it: its value or the failure
/// policy's refusal, or the origin's error.
fn answer<E>(
    lookup: Result<Lookup<Bytes>, Unanswered<E>>,
) -> Result<Result<Lookup<Bytes>, Refusal>, E> {
    match lookup {
        Ok(lookup) => Ok(Ok(lookup)),
        Err(Unanswered::Refused(refusal)) => Ok(Err(refusal)),
        Err(Unanswered::Origin(error)) => Err(error),
    }
}

fn miss(value: Bytes) -> Lookup<Bytes> {
    Lookup {
        value,
        served: Served::Miss,
        age: Duration::ZERO,
    }
}

fn served(entry: &Entry<Bytes>, served: Served) -> Lookup<Bytes> {
    Lookup {
        value: entry.value().clone(),
        served,
        age: entry.age(Instant::now()),
    }
}

/// A background refresh of the entry `seen`: leads if it wins the lock,
/// else leaves it to the process that did. It is given up at
/// `alone_until` (see [`Entry::refresh_alone_until`]), giving its lock
/// back: an origin that never answers would otherwise hold the key's lock,
/// its lease extended for ever, and every process's callers would wait
/// on it.
async fn refresh<C, F, Fut, E>(
    flight: Flight<C, E>,
    seen: Option<Token>,
    alone_until: Instant,
    compute: F,
) where
    C: ConnectionLike + Clone + Send + Sync + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(Bytes, Option<Freshness>), E>> + Send + 'static,
{
    let refreshing = async {
        if let Some(Locked::Won(held)) = flight.shared.try_lock(&flight.key).await
            && lead(&flight, held, seen, compute).await.is_err()
        {
            palisade_hints::throttled!(warn, by: &flight.shared.events.warnings, target: "palisade_coalesce", "background refresh failed; keeping the stale value");
        }
    };
    if tokio::time::timeout_at(alone_until, refreshing)
        .await
        .is_err()
    {
        palisade_hints::throttled!(warn, by: &flight.shared.events.warnings, target: "palisade_coalesce", "background refresh given up: the origin took too long");
    }
}

/// A deadline no wait reaches: thirty years.
const FOR_EVER: Duration = Duration::from_secs(30 * 365 * 86_400);

/// Computes `key` once across processes: leads, or waits for the leader
/// and takes over if it dies. `seen` is the entry the caller found, if any.
async fn fill<C, F, Fut, E>(
    flight: &Flight<C, E>,
    seen: Option<Token>,
    compute: F,
) -> Result<Bytes, Unanswered<E>>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<(Bytes, Option<Freshness>), E>>,
{
    let Flight { shared, key, .. } = flight;
    // A wait too long to make a deadline of is a wait with none.
    let now = Instant::now();
    let deadline = now
        .checked_add(shared.settings.wait_timeout)
        .unwrap_or_else(|| now + FOR_EVER);
    let mut leader_gone = false;
    loop {
        let Some(won) = shared.try_lock(key).await else {
            return shared.compute_alone(compute).await;
        };
        let holder = match won {
            Locked::Won(held) => {
                if leader_gone {
                    shared.events.took_over();
                }
                return lead(flight, held, seen, compute)
                    .await
                    .map_err(Unanswered::Origin);
            }
            Locked::HeldBy(holder) => holder,
        };
        match wait(flight, holder, deadline).await {
            Waited::Value(value) => return Ok(value),
            Waited::Failed(error) => return Err(Unanswered::Origin(error)),
            // Past the wait timeout, a lock that came and went (leads
            // ending one after another) is waited for no longer.
            Waited::LockGone if Instant::now() < deadline => {
                tracing::debug!(target: "palisade_coalesce", "the leader's lock is gone; trying to take over");
                leader_gone = true;
            }
            Waited::GaveUp | Waited::LockGone => {
                tracing::warn!(target: "palisade_coalesce", "no value before the wait timeout; computing here");
                return compute()
                    .await
                    .map(|(value, _)| value)
                    .map_err(Unanswered::Origin);
            }
            Waited::RedisDown => return shared.compute_alone(compute).await,
        }
    }
}

/// Waits for another process's value: woken by its publish, looking again
/// every poll interval, until the lock is gone, its holder left a failure
/// to share, or the deadline passes. `holder` is the lock's holder when
/// it was tried; a holder that takes the lock after it is waited for in
/// its turn.
async fn wait<C, E>(
    flight: &Flight<C, E>,
    mut holder: Option<Token>,
    deadline: Instant,
) -> Waited<E>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    let Flight {
        shared,
        key,
        failures,
    } = flight;
    let wakeup = shared.wakeups.register(key);
    loop {
        let woken = wakeup.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        match shared.read(key).await {
            None => return Waited::RedisDown,
            Some(Some(Stored { entry, .. })) if is_fresh(&entry) => {
                return Waited::Value(entry.into_value());
            }
            Some(_) => {}
        }
        match shared.look(key, holder, failures.is_some()).await {
            None => return Waited::RedisDown,
            Some(Look::Held(now)) => holder = now,
            Some(Look::Failed(failed)) => {
                // A failure that cannot be read is not shared: this
                // waiter takes over, as without sharing.
                return match failures
                    .as_ref()
                    .and_then(|failures| (failures.decode)(failed))
                {
                    Some(error) => {
                        tracing::debug!(target: "palisade_coalesce", "the leader's computation failed; sharing its failure");
                        Waited::Failed(error)
                    }
                    None => Waited::LockGone,
                };
            }
            Some(Look::Gone) => return Waited::LockGone,
        }
        let now = Instant::now();
        if now >= deadline {
            return Waited::GaveUp;
        }
        let nap = shared.settings.poll_interval.min(deadline - now);
        tokio::select! {
            () = &mut woken => {}
            () = tokio::time::sleep(nap) => {}
        }
    }
}

/// Whether an entry may be served as is.
fn is_fresh(entry: &Entry<Bytes>) -> bool {
    matches!(
        entry.state(Instant::now(), 1.0),
        State::Fresh | State::RefreshEarly
    )
}

/// The leader's work: compute while extending the lease, then store the
/// value, wake the waiters and release the lock in one script, fenced by
/// the lock's token.
///
/// A fresh value stored since the caller saw `seen` (by a leader that
/// released the lock between the caller's look and its lock attempt) is
/// taken rather than computed again. A lead cut short gives the lock
/// back ([`Held`]).
async fn lead<C, F, Fut, E>(
    flight: &Flight<C, E>,
    held: Held<C>,
    seen: Option<Token>,
    compute: F,
) -> Result<Bytes, E>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<(Bytes, Option<Freshness>), E>>,
{
    let Flight { shared, key, .. } = flight;
    let token = held.token;
    // Each end of the lead gives the lock back itself (a release, or
    // the store or the forgetting that also releases).
    let led = async {
        let (lock_key, token_arg) = (&held.lock_key, &held.token_arg);
        if let Some(Some(stored)) = shared.read(key).await
            && Some(stored.write) != seen
            && is_fresh(&stored.entry)
        {
            tracing::debug!(target: "palisade_coalesce", "a value was stored before the lock was won; not computing");
            release(shared, key, lock_key, token_arg).await;
            return Ok(stored.entry.into_value());
        }
        let started = Instant::now();
        let lease = shared.settings.lock_ttl;
        let extend = async {
            loop {
                tokio::time::sleep(lease / 2).await;
                let mut connection = shared.connection.clone();
                let mut extension = EXTEND.key(lock_key);
                extension.arg(token_arg).arg(ms(lease));
                let _ = shared
                    .call(extension.invoke_async::<i64>(&mut connection))
                    .await;
            }
        };
        let computed = tokio::select! {
            computed = compute() => computed,
            () = extend => unreachable!("the lease loop never ends"),
        };
        let mut connection = shared.connection.clone();
        let (value, freshness) = match computed {
            Ok((value, Some(freshness))) => (value, freshness),
            Ok((value, None)) => {
                // Not to be kept, nor the old value served in its place: drop
                // it and free the lock so the next caller computes.
                let mut forget = FORGET.key(shared.value_key(key));
                forget
                    .key(lock_key)
                    .arg(token_arg)
                    .arg(&shared.channel)
                    .arg(key);
                let _ = shared
                    .call(forget.invoke_async::<i64>(&mut connection))
                    .await;
                return Ok(value);
            }
            Err(error) => {
                flight.failed(&error, token).await;
                return Err(error);
            }
        };
        let now = Instant::now();
        let lifetime = freshness.entry((), now, now - started).lifetime();
        let mut fill = FILL.key(shared.value_key(key));
        fill.key(lock_key)
            .arg(codec::encode(token.0, &lifetime, &value).as_ref())
            .arg(lifetime.keep_ms())
            .arg(&shared.channel)
            .arg(key)
            .arg(token_arg);
        if shared.call(fill.invoke_async::<i64>(&mut connection)).await == Some(0) {
            tracing::warn!(target: "palisade_coalesce", "the lock was lost (its lease ran out, or the key was invalidated) before the value was stored; it is not stored");
        }
        Ok(value)
    }
    .await;
    held.end();
    led
}

/// A lock a leader holds (or may hold: its attempt is under way), given
/// back if the lead is cut short: its future dropped (every caller left,
/// so the flight was cancelled; a refresh given up) or unwound by a panic
/// in the computation, or the attempt's answer lost. Without it the lock
/// would stand until its lease ran out, and every caller of the key, in
/// every process, would wait for a leader that is gone.
struct Held<C: ConnectionLike + Clone + Send + 'static> {
    connection: C,
    lock_key: String,
    token: Token,
    /// `token` as the scripts take it.
    token_arg: String,
    /// Where, and as what key, its release wakes the waiters.
    channel: String,
    key: String,
    timeout: Duration,
    /// The lead ended by itself: it released, stored or forgot already.
    ended: bool,
}

impl<C: ConnectionLike + Clone + Send + 'static> Held<C> {
    fn end(mut self) {
        self.ended = true;
    }
}

impl<C: ConnectionLike + Clone + Send + 'static> Drop for Held<C> {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        // Outside a runtime, or in one shutting down (the release is then
        // dropped unrun), the lease runs out.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (mut connection, timeout) = (self.connection.clone(), self.timeout);
        let mut release = RELEASE.key(std::mem::take(&mut self.lock_key));
        release
            .arg(std::mem::take(&mut self.token_arg))
            .arg(std::mem::take(&mut self.channel))
            .arg(std::mem::take(&mut self.key));
        runtime.spawn(async move {
            let released = tokio::time::timeout(
                timeout,
                release.invoke_async::<i64>(&mut connection),
            )
            .await;
            if !matches!(released, Ok(Ok(_))) {
                tracing::debug!(target: "palisade_coalesce", "a lead cut short could not give its lock back; its lease runs out");
            }
        });
    }
}

/// Releases `key`'s lock if it is still ours, waking its waiters.
async fn release<C>(shared: &Shared<C>, key: &str, lock_key: &str, token: &str)
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    let mut connection = shared.connection.clone();
    let mut release = RELEASE.key(lock_key);
    release.arg(token).arg(&shared.channel).arg(key);
    let _ = shared
        .call(release.invoke_async::<i64>(&mut connection))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wake-ups of keys no one waits for any more are swept once the
    /// keys' number doubled since the last sweep: a sweep at every new key
    /// cost a pass over every key waited for, so thousands waited for at
    /// once cost millions of steps under the dispatcher's lock.
    #[test]
    fn wakeups_are_swept_as_their_number_doubles() {
        let wakeups = Wakeups::default();
        let swept = || wakeups.by_key.lock().unwrap().swept;
        let held: Vec<Arc<Notify>> = (0..1_000)
            .map(|key| wakeups.register(&format!("a{key}")))
            .collect();
        assert!(
            Arc::ptr_eq(&held[7], &wakeups.register("a7")),
            "one per key"
        );
        // Swept at 64, 128, 256 and 512 keys: each pass found every key
        // still waited for.
        assert_eq!(swept(), 512);
        drop(held);
        let held: Vec<Arc<Notify>> = (0..1_000)
            .map(|key| wakeups.register(&format!("b{key}")))
            .collect();
        let kept = wakeups.by_key.lock().unwrap().wakeups.len();
        assert!(kept <= 2 * held.len() + UNSWEPT, "{kept} kept");
        let live = wakeups
            .by_key
            .lock()
            .unwrap()
            .wakeups
            .values()
            .filter(|notify| notify.strong_count() > 0)
            .count();
        assert_eq!(live, 1_000);
    }
}
