//! The Redis store (feature `redis`).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use palisade_hints::reachability::{Change, Reachability, unreachable};
use redis::Script;
use redis::aio::ConnectionLike;
use tokio::time::Instant;

use crate::bucket::{Bucket, Decision};
use crate::error::StoreError;
use crate::local::LocalStore;
use crate::store::Store;

/// One decision, atomically, on Redis's clock; also a lease's refill.
///
/// The bucket is its arrival time (GCRA), stored as `seconds:nanoseconds`
/// and expiring when the bucket would be full again. Lua numbers are
/// doubles, so the script never adds nanoseconds to an absolute time:
/// it works with the distance between the arrival time and now, which is
/// exact.
///
/// `ARGV` are the refill interval in nanoseconds, the capacity and the
/// cost; a lease ([`LeasingStore`](crate::LeasingStore)) adds how many
/// tokens it would like (at least the cost, up to what the bucket holds)
/// and how many unspent ones it gives back first. Returns `{allowed,
/// remaining, retry_after_us (-1: never), reset_us, taken}`.
///
/// It reads `TIME` before it writes: Redis 3.2 to 4.x refuse a write after a
/// non-deterministic command unless the script first asks for its effects
/// to be replicated (`redis.replicate_commands()`, the default from Redis 5
/// on and a no-op since 7).
const DECIDE: &str = r"
redis.replicate_commands()
local t = redis.call('TIME')
local now_s = tonumber(t[1])
local now_ns = tonumber(t[2]) * 1000
local interval = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local want = tonumber(ARGV[4] or ARGV[3])
local give_back = tonumber(ARGV[5] or 0)
local tolerance = interval * capacity
local ahead = 0
local stored = redis.call('GET', KEYS[1])
if stored then
  local s, ns = string.match(stored, '^(%d+):(%d+)$')
  if s then
    ahead = math.max(0, (tonumber(s) - now_s) * 1e9 + (tonumber(ns) - now_ns))
  end
end
-- No bucket is more than a whole refill ahead: one stored further ahead
-- was written before the clock stepped back (a failover to a replica
-- whose clock is behind). It is taken, and stored again, as empty, not
-- as refusing for as long as the clock stepped.
local stepped = ahead > tolerance
if stepped then ahead = tolerance end
local function store(ahead)
  if ahead > 0 then
    local total = now_ns + ahead
    local carry = math.floor(total / 1e9)
    local tat = string.format('%d:%d', now_s + carry, total - carry * 1e9)
    redis.call('SET', KEYS[1], tat, 'PX', math.max(1, math.ceil(ahead / 1e6)))
  else
    redis.call('DEL', KEYS[1])
  end
end
if give_back > 0 then
  ahead = math.max(0, ahead - interval * give_back)
end
local take = math.max(cost, math.min(want, math.floor((tolerance - ahead) / interval)))
if take > cost and ahead + interval * take > tolerance then take = cost end
local after = ahead + interval * take
if after <= tolerance then
  store(after)
  return {1, math.floor((tolerance - after) / interval + 1e-9), 0, math.ceil(after / 1000), take}
end
if give_back > 0 or stepped then store(ahead) end
local retry = -1
if cost <= capacity then retry = math.ceil((ahead + interval * cost - tolerance) / 1000) end
return {0, math.floor((tolerance - ahead) / interval + 1e-9), retry, math.ceil(ahead / 1000), 0}
";

/// The script, hashed once; `redis::Script` runs it with `EVALSHA` and
/// loads it again when a server answers `NOSCRIPT` (after a restart or a
/// failover to a node that never saw it).
static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(DECIDE));

/// What a [`RedisStore`] decides when Redis does not answer in time.
///
/// Chosen explicitly, because each choice is a trade: failing open lets
/// every request through while Redis is away, failing closed refuses them
/// all, and a local fallback limits each instance on its own, so the fleet
/// admits up to (instances × its limit): give it a smaller bucket.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Admit every request.
    FailOpen,
    /// Refuse every request, with the time until Redis is tried again.
    ///
    /// The refusal is answered as a rate limiter's (`429`,
    /// `RESOURCE_EXHAUSTED`, [`RateLimited`](crate::RateLimited)), where
    /// [`Propagate`](Self::Propagate)'s is a store's (`503`,
    /// `UNAVAILABLE`). Both carry a `StoreDown` refusal: the limiter's
    /// outage, not the caller over its limit, so an SLO or a canary
    /// judge above counts it against the service.
    FailClosed,
    /// Decide in process against `bucket` (usually smaller than the
    /// shared one). A request heavier than `bucket` but not than the
    /// shared one is refused until Redis is tried again, as under
    /// [`FailClosed`](Self::FailClosed), not as one that never fits.
    Fallback {
        /// The in-process buckets.
        store: LocalStore,
        /// The limit each instance applies alone.
        bucket: Bucket,
    },
    /// Return the [`StoreError`] to the caller.
    Propagate,
}

impl FailurePolicy {
    const fn name(&self) -> &'static str {
        match self {
            Self::FailOpen => "fail open",
            Self::FailClosed => "fail closed",
            Self::Fallback { .. } => "local fallback",
            Self::Propagate => "propagate errors",
        }
    }
}

/// Buckets in Redis, shared by every instance of a service.
///
/// - **Atomic and clock-free:** each decision is one Lua script
///   ([`EVALSHA`](https://redis.io/commands/evalsha), reloaded on
///   `NOSCRIPT`) that reads Redis's own `TIME`, so client clocks never
///   matter and N instances sharing a key admit at most
///   `capacity + rate × elapsed` over any interval.
/// - **Cluster-ready:** a key is stored as `{prefix:key}`, one hash slot
///   (a [`RateLimitLayer`](crate::RateLimitLayer)'s key with its bucket
///   before it: `{prefix:<capacity>/<interval in ns>:key}`), or by its hash
///   where it could not be (see [`key`](Self::key)).
/// - **Self-cleaning:** a key expires when its bucket would be full again.
/// - **Bounded waits:** each call has a timeout (10 ms by default); when
///   Redis fails or is slow the [`FailurePolicy`] decides, and while Redis
///   stays down only one call per probe interval (500 ms) tries it again,
///   the others applying the policy at once. The change of state is logged
///   once each way.
/// - **A timeout is not a refund:** a call that timed out may still have
///   reached Redis, which then ran the script and took the tokens; the
///   request is decided by the policy all the same. Under a timeout too
///   short for the round trip a key is charged for requests the policy
///   decided, so set it above Redis's usual latency (it bounds the wait, it
///   is not a deadline for Redis).
/// - **Redis 3.2 or later** (the script asks for effects replication, which
///   3.2 introduced, before writing after `TIME`); no module needed.
///
/// Generic over any `redis::aio::ConnectionLike + Clone`: a
/// `ConnectionManager` or a cluster connection, which reconnect by
/// themselves (a pool's connection is not `Clone`).
///
/// # Example
///
/// ```no_run
/// use std::time::Duration;
/// use palisade_token_bucket::{FailurePolicy, RedisStore};
///
/// # async fn run() -> redis::RedisResult<()> {
/// let redis = redis::Client::open("redis://127.0.0.1:6379")?
///     .get_connection_manager()
///     .await?;
/// let store = RedisStore::new(redis, FailurePolicy::FailOpen)
///     .prefix("api")
///     .timeout(Duration::from_millis(5));
/// # let _ = store;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore<C> {
    connection: C,
    prefix: Arc<str>,
    timeout: Duration,
    policy: Arc<FailurePolicy>,
    health: Arc<Reachability>,
    #[cfg(feature = "otel")]
    instruments: Option<Arc<crate::otel::StoreInstruments>>,
}

impl<C> std::fmt::Debug for RedisStore<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("policy", &self.policy.name())
            .field("redis_down", &self.health.is_down())
            .finish_non_exhaustive()
    }
}

impl<C> RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// A store on `connection`, applying `policy` when Redis fails. Keys
    /// are prefixed `palisade:rl` until [`prefix`](Self::prefix) says
    /// otherwise.
    #[must_use]
    pub fn new(connection: C, policy: FailurePolicy) -> Self {
        Self {
            connection,
            prefix: Arc::from("palisade:rl"),
            timeout: Duration::from_millis(10),
            policy: Arc::new(policy),
            health: Arc::new(Reachability::new(
                Duration::from_millis(500),
                Instant::now().into_std(),
            )),
            #[cfg(feature = "otel")]
            instruments: None,
        }
    }

    /// Counts Redis errors by kind and the decisions its failure policy
    /// made, and reports whether the policy applies, with OpenTelemetry
    /// (feature `otel`); `name` becomes the `store` attribute. See the
    /// [`otel`](crate::otel) module for the names.
    #[cfg(feature = "otel")]
    #[must_use]
    pub fn instrument(
        mut self,
        meter: &opentelemetry::metrics::Meter,
        name: impl Into<String>,
    ) -> Self {
        let health = Arc::downgrade(&self.health);
        let degraded = move || health.upgrade().is_some_and(|h| h.is_down());
        self.instruments = Some(Arc::new(crate::otel::StoreInstruments::new(
            meter,
            name.into(),
            degraded,
        )));
        self
    }

    /// The prefix of every key: `{prefix:key}`.
    ///
    /// Stores under one prefix in one Redis database share their buckets:
    /// two services limiting one key with one rate spend one bucket
    /// between them. Give each service or deployment whose limits are its
    /// own (staging beside production) a prefix of its own.
    #[must_use]
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefix = Arc::from(prefix);
        self
    }

    /// How long one decision may take before the policy applies: from a
    /// millisecond to a minute, a `timeout` outside taken as the nearer
    /// bound ([`call_timeout`](palisade_hints::reachability::call_timeout)).
    ///
    /// A call that times out is abandoned, not undone: Redis may still run
    /// the script and take the tokens of a request the policy decided.
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

    /// The Lua source of the decision script, for operators who want to
    /// read it, preload it (`SCRIPT LOAD`) or benchmark it.
    ///
    /// `KEYS[1]` is the bucket's key; `ARGV` are the refill interval in
    /// nanoseconds, the capacity and the cost, then (leases only) the
    /// tokens wanted in all and the unspent ones given back first. It
    /// returns `{allowed, remaining, retry_after_us (-1: never), reset_us,
    /// taken}`.
    #[must_use]
    pub const fn script_source() -> &'static str {
        DECIDE
    }

    /// The Redis key of `key`'s bucket: `{prefix:key}`, or, for a key
    /// longer than [`MAX_KEY_BYTES`](crate::MAX_KEY_BYTES) (an 8 KiB header
    /// value, say), `{prefix:#<SHA-256 of the key, in hex>}`, so Redis
    /// memory is bounded in bytes as well as by the keys' expiry. A key
    /// holding a `}` (which would end the Cluster hash tag early, so that
    /// a client picking such keys put all their buckets in one slot) or
    /// spelling a hashed name is named by its hash too. The hash is the
    /// same in every process, so a fleet shares the bucket (see
    /// [`palisade_hints::hash_tag`]).
    #[must_use]
    pub fn key(&self, key: &str) -> String {
        palisade_hints::hash_tag::tagged(&self.prefix, key, crate::MAX_KEY_BYTES)
    }

    /// Whether the store is applying its failure policy now.
    #[must_use]
    pub fn is_degraded(&self) -> bool {
        self.health.is_down()
    }

    fn fall_back(
        &self,
        key: &str,
        bucket: &Bucket,
        cost: u32,
        error: StoreError,
    ) -> Result<Decision, StoreError> {
        let decided = match &*self.policy {
            FailurePolicy::FailOpen => Ok(Decision::without_store(bucket, true, Duration::ZERO)),
            FailurePolicy::FailClosed => Ok(Decision::without_store(
                bucket,
                false,
                self.health.probe_interval(),
            )),
            // Heavier than the fallback bucket but not than the shared
            // one: it fits once Redis is back, not never.
            FailurePolicy::Fallback { bucket: alone, .. }
                if cost > alone.capacity() && cost <= bucket.capacity() =>
            {
                Ok(Decision::without_store(
                    bucket,
                    false,
                    self.health.probe_interval(),
                ))
            }
            FailurePolicy::Fallback { store, bucket } => Ok(store.decide_now(key, bucket, cost)),
            FailurePolicy::Propagate => Err(error),
        };
        #[cfg(feature = "otel")]
        if let (Ok(_), Some(instruments)) = (&decided, &self.instruments) {
            instruments.fell_back();
        }
        decided
    }
}

/// What one run of the script asks of a bucket: the request's `cost`, up
/// to `want` tokens in all (a lease), after `give_back` unspent ones.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ask {
    pub(crate) cost: u32,
    pub(crate) want: u32,
    pub(crate) give_back: u32,
}

/// The answer to an [`Ask`]: the decision on the request (the failure
/// policy's, when Redis failed), and what the script did.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) decision: Result<Decision, StoreError>,
    pub(crate) ran: Ran,
}

/// Whether the script ran, for a caller that gave tokens back with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ran {
    /// It ran, and took these tokens (the request's cost included).
    Took(u32),
    /// It surely did not: Redis was not asked, or refused the connection.
    No,
    /// Perhaps: the call failed or timed out after it was sent.
    Unknown,
}

/// The script's reply as an answer.
fn answer(bucket: &Bucket, reply: (i64, i64, i64, i64, i64)) -> Answer {
    let (allowed, remaining, retry_us, reset_us, taken) = reply;
    let micros = |us: i64| Duration::from_micros(u64::try_from(us).unwrap_or(0));
    let retry_after = if retry_us < 0 {
        Duration::MAX
    } else {
        micros(retry_us)
    };
    let remaining = u32::try_from(remaining).unwrap_or(0);
    Answer {
        decision: Ok(Decision::counted(
            bucket,
            allowed == 1,
            remaining,
            retry_after,
            micros(reset_us),
        )),
        ran: Ran::Took(u32::try_from(taken).unwrap_or(0)),
    }
}

impl<C> RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// Redis answered a decision asked at `asked`.
    fn answered(&self, asked: Instant) {
        if self.health.answered(asked.into_std()) == Change::CameBack {
            tracing::info!(target: "palisade_token_bucket", "redis answers again; deciding in redis");
        }
    }

    /// Runs the script for `key` within the timeout; when Redis fails, is
    /// slow or is known to be down, the failure policy decides.
    pub(crate) async fn ask(&self, key: &str, bucket: &Bucket, ask: Ask) -> Answer {
        let now = Instant::now();
        let policy = |error, ran| Answer {
            decision: self.fall_back(key, bucket, ask.cost, error),
            ran,
        };
        if !self.health.should_try(now.into_std()) {
            return policy(
                StoreError::backend("redis is down; not tried until the next probe")
                    .with_retry_after(self.health.probe_interval()),
                Ran::No,
            );
        }
        let mut connection = self.connection.clone();
        let mut invocation = SCRIPT.key(self.key(key));
        invocation
            .arg(bucket.interval_ns())
            .arg(bucket.capacity())
            .arg(ask.cost)
            .arg(ask.want)
            .arg(ask.give_back);
        let (error, ran, down) = match tokio::time::timeout(
            self.timeout,
            invocation.invoke_async::<(i64, i64, i64, i64, i64)>(&mut connection),
        )
        .await
        {
            Ok(Ok(reply)) => {
                self.answered(now);
                return answer(bucket, reply);
            }
            Ok(Err(error)) => {
                let ran = if error.is_connection_refusal() {
                    Ran::No
                } else {
                    Ran::Unknown
                };
                // An error of this call's own (memory full, a key of
                // another type under the prefix) fails this decision;
                // Redis still answers the others.
                let down = unreachable(&error);
                // Down: worth asking again at the next probe at the
                // soonest; an error of the call's own names no such time.
                let failed = StoreError::backend(error);
                let failed = if down {
                    failed.with_retry_after(self.health.probe_interval())
                } else {
                    failed
                };
                (failed, ran, down)
            }
            Err(_) => (
                StoreError::timeout(self.timeout).with_retry_after(self.health.probe_interval()),
                Ran::Unknown,
                true,
            ),
        };
        #[cfg(feature = "otel")]
        if let Some(instruments) = &self.instruments {
            instruments.failed(error.is_timeout());
        }
        if !down {
            // Redis answered: it is up. A warning once a probe interval,
            // as it may be every decision's.
            if self.health.warning_due(now.into_std()) {
                tracing::warn!(target: "palisade_token_bucket", %error, policy = self.policy.name(), "a decision failed in redis; applying the failure policy to it (more such failures are logged at debug for a probe interval)");
            } else {
                tracing::debug!(target: "palisade_token_bucket", %error, policy = self.policy.name(), "a decision failed in redis; applying the failure policy to it");
            }
            self.answered(now);
        } else if self.health.failed(now.into_std()) == Change::WentDown {
            tracing::warn!(
                target: "palisade_token_bucket",
                %error,
                policy = self.policy.name(),
                "redis failed; applying the failure policy until it answers again"
            );
        }
        policy(error, ran)
    }
}

impl<C> Store for RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    type Future = Pin<Box<dyn Future<Output = Result<Decision, StoreError>> + Send>>;
    /// The key's name: each decision is a round trip to Redis whatever the
    /// key, so holding it saves only the limiter's copy of the name.
    type Pinned = Arc<str>;

    fn pin(&self, key: &str) -> Arc<str> {
        Arc::from(key)
    }

    fn decide_pinned(&self, pinned: &Arc<str>, bucket: &Bucket, cost: u32) -> Self::Future {
        self.decide(pinned, bucket, cost)
    }

    fn decide(&self, key: &str, bucket: &Bucket, cost: u32) -> Self::Future {
        let store = self.clone();
        let key = key.to_owned();
        let bucket = *bucket;
        let ask = Ask {
            cost,
            want: cost,
            give_back: 0,
        };
        Box::pin(async move { store.ask(&key, &bucket, ask).await.decision })
    }
}
