//! The Redis store against a real Redis (`REDIS_URL`, default
//! `redis://127.0.0.1:6379`). Every test uses its own key prefix.
#![cfg(feature = "redis")]

use std::time::Duration;

use palisade_testkit::proxy::Proxy;
use palisade_testkit::servers::{redis_proxy, redis_url};
use palisade_token_bucket::{
    Bucket, FailurePolicy, LocalStore, RateLimitLayer, RedisStore, Store, key,
};
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use tower::{BoxError, Layer, ServiceExt, service_fn};

#[path = "support/redis.rs"]
mod support;
use support::{connect, prefix};

async fn store(policy: FailurePolicy) -> RedisStore<ConnectionManager> {
    RedisStore::new(connect(&redis_url()).await, policy)
        .prefix(&prefix())
        .timeout(Duration::from_secs(5))
}

#[tokio::test]
async fn a_burst_passes_then_it_refuses_with_the_wait() {
    let store = store(FailurePolicy::Propagate).await;
    // A token each two seconds: the six calls are far apart from any
    // refill, however slow the machine.
    let bucket = Bucket::new(5, 0.5).unwrap();
    for left in (0..5).rev() {
        let decision = store.decide("k", &bucket, 1).await.unwrap();
        assert!(decision.is_allowed());
        assert_eq!(decision.remaining(), left);
    }
    let denied = store.decide("k", &bucket, 1).await.unwrap();
    assert!(!denied.is_allowed());
    assert_eq!(denied.remaining(), 0);
    // Exact to the millisecond: one interval (2 s) less the time since
    // the burst, which is never negative.
    assert!(denied.retry_after() > Duration::ZERO);
    assert!(denied.retry_after() <= Duration::from_secs(2));
    assert!(denied.reset() <= Duration::from_secs(10));
    assert!(denied.reset() > Duration::from_secs(8));
}

#[tokio::test]
async fn tokens_come_back_at_the_rate() {
    let store = store(FailurePolicy::Propagate).await;
    // A second between tokens: the refusal needs no race with the refill.
    let bucket = Bucket::new(1, 1.0).unwrap();
    assert!(store.decide("k", &bucket, 1).await.unwrap().is_allowed());
    let denied = store.decide("k", &bucket, 1).await.unwrap();
    assert!(!denied.is_allowed());
    tokio::time::sleep(denied.retry_after() + Duration::from_millis(2)).await;
    assert!(store.decide("k", &bucket, 1).await.unwrap().is_allowed());
}

#[tokio::test]
async fn a_cost_takes_several_tokens() {
    let store = store(FailurePolicy::Propagate).await;
    let bucket = Bucket::new(10, 1.0).unwrap();
    let decision = store.decide("k", &bucket, 7).await.unwrap();
    assert_eq!(decision.remaining(), 3);
    let denied = store.decide("k", &bucket, 4).await.unwrap();
    assert!(!denied.is_allowed());
    assert!(
        denied.retry_after() > Duration::ZERO && denied.retry_after() <= Duration::from_secs(1)
    );
    let never = store.decide("k", &bucket, 11).await.unwrap();
    assert!(!never.is_allowed());
    assert_eq!(
        never.retry_after(),
        Duration::MAX,
        "costs more than the bucket holds"
    );
    assert_eq!(store.decide("k", &bucket, 3).await.unwrap().remaining(), 0);
}

#[tokio::test]
async fn a_key_expires_when_its_bucket_is_full_again() {
    let store = store(FailurePolicy::Propagate).await;
    // Full again a second after the one token taken.
    let bucket = Bucket::new(2, 1.0).unwrap();
    store.decide("idle", &bucket, 1).await.unwrap();
    let mut redis = connect(&redis_url()).await;
    let ttl: i64 = redis.pttl(store.key("idle")).await.unwrap();
    assert!(
        (1..=1_000).contains(&ttl),
        "expires when full again: {ttl} ms"
    );
    // Gone once that second is past (Redis expires a key it is asked for).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let exists: bool = redis.exists(store.key("idle")).await.unwrap();
        if !exists {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "an idle key costs nothing"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn two_instances_share_one_bucket() {
    let prefix = prefix();
    let first =
        RedisStore::new(connect(&redis_url()).await, FailurePolicy::Propagate).prefix(&prefix);
    let second =
        RedisStore::new(connect(&redis_url()).await, FailurePolicy::Propagate).prefix(&prefix);
    let bucket = Bucket::new(10, 0.001).unwrap();
    let mut admitted = 0;
    for i in 0..30 {
        let store = if i % 2 == 0 { &first } else { &second };
        if store
            .decide("shared", &bucket, 1)
            .await
            .unwrap()
            .is_allowed()
        {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 10);
}

#[tokio::test]
async fn global_layers_on_two_instances_share_the_key_s_bucket() {
    let prefix = prefix();
    let bucket = Bucket::new(10, 0.001).unwrap();
    let instance = |connection| {
        let store = RedisStore::new(connection, FailurePolicy::Propagate).prefix(&prefix);
        let layer = RateLimitLayer::new(store.clone(), bucket, key::global("shared"));
        (
            store,
            layer.layer(service_fn(|n: u32| async move { Ok::<_, BoxError>(n) })),
        )
    };
    let (_, first_service) = instance(connect(&redis_url()).await);
    let (_, second_service) = instance(connect(&redis_url()).await);
    let mut admitted = 0;
    for n in 0..30 {
        let service = if n % 2 == 0 {
            &first_service
        } else {
            &second_service
        };
        if service.clone().oneshot(n).await.is_ok() {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 10);
}

#[tokio::test]
async fn long_keys_take_bounded_bytes_in_redis_and_one_bucket_across_stores() {
    let prefix = prefix();
    let store = async || {
        RedisStore::new(connect(&redis_url()).await, FailurePolicy::Propagate)
            .prefix(&prefix)
            .timeout(Duration::from_secs(5))
    };
    let (one, two) = (store().await, store().await);
    // An 8 KiB header value as the key, and another one differing only at
    // its end.
    let long = "k".repeat(8 * 1024);
    let other = format!("{}x", &long[1..]);
    let redis_key = one.key(&long);
    // `{`, the prefix, `:#`, 64 hex digits, `}`.
    assert_eq!(redis_key.len(), prefix.len() + 68, "{redis_key}");
    assert_ne!(redis_key, one.key(&other));
    let short = "s".repeat(palisade_token_bucket::MAX_KEY_BYTES);
    assert_eq!(one.key(&short), format!("{{{prefix}:{short}}}"));
    // Two processes (two stores) spend one bucket for the same long key.
    let bucket = Bucket::new(2, 0.001).unwrap();
    assert!(one.decide(&long, &bucket, 1).await.unwrap().is_allowed());
    assert!(two.decide(&long, &bucket, 1).await.unwrap().is_allowed());
    assert!(!one.decide(&long, &bucket, 1).await.unwrap().is_allowed());
    assert!(two.decide(&other, &bucket, 1).await.unwrap().is_allowed());
    let mut redis = connect(&redis_url()).await;
    let stored: bool = redis.exists(&redis_key).await.unwrap();
    assert!(stored, "the bucket lives under the hashed key");
}

/// Two limits on one user, a burst a second and a day's worth, each on a
/// store with the default prefix (two `RedisStore`s over one Redis): each
/// keeps its own state. They shared the key, and the day's first request
/// pushed it 86 s ahead, so the per-second limit refused the user.
#[tokio::test]
async fn two_buckets_under_one_prefix_keep_their_own_state() {
    let prefix = prefix();
    let per_second = Bucket::new(10, 10.0).unwrap();
    let per_day = Bucket::per(1000, Duration::from_secs(86_400)).unwrap();
    let store = async || {
        RedisStore::new(connect(&redis_url()).await, FailurePolicy::Propagate)
            .prefix(&prefix)
            .timeout(Duration::from_secs(5))
    };
    let user = |user: &String| Some(user.clone());
    let service = tower::ServiceBuilder::new()
        .layer(RateLimitLayer::new(store().await, per_day, user))
        .layer(RateLimitLayer::new(store().await, per_second, user))
        .service(service_fn(
            |user: String| async move { Ok::<_, BoxError>(user) },
        ));
    // Tokens only come back as time passes: the burst is admitted however
    // slow the calls.
    for n in 0..10 {
        let admitted = service.clone().oneshot("alice".to_owned()).await;
        assert!(admitted.is_ok(), "call {n}: {admitted:?}");
    }
}

#[tokio::test]
async fn keys_are_hash_tagged_and_the_script_survives_a_flush() {
    let store =
        RedisStore::new(connect(&redis_url()).await, FailurePolicy::Propagate).prefix("api");
    // Everything between the braces picks the slot: one slot per decision.
    assert_eq!(store.key("user:7"), "{api:user:7}");
    // A key holding `}` ended the tag early: every key a client sent as
    // `}…` shared one slot. It is named by its hash, the tag the whole name.
    for odd in ["}user:7", "}user:8", "user}:7"] {
        let name = store.key(odd);
        assert!(name.starts_with("{api:#"), "{name}");
        assert_eq!(name.find('}'), Some(name.len() - 1), "{name}");
    }
    assert_ne!(store.key("}user:7"), store.key("}user:8"));
    let store = store.prefix(&prefix());
    let bucket = Bucket::new(3, 1.0).unwrap();
    store.decide("k", &bucket, 1).await.unwrap();
    // A restart or failover forgets loaded scripts: EVALSHA answers
    // NOSCRIPT and the script is loaded again.
    let mut redis = connect(&redis_url()).await;
    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .exec_async(&mut redis)
        .await
        .unwrap();
    let decision = store.decide("k", &bucket, 1).await.unwrap();
    assert_eq!(decision.remaining(), 1);
}

/// A store reaching Redis through a proxy the test can cut.
async fn behind_proxy(policy: FailurePolicy) -> (RedisStore<ConnectionManager>, Proxy) {
    let (proxy, through) = redis_proxy().await;
    let store = RedisStore::new(connect(&through).await, policy)
        .prefix(&prefix())
        .timeout(Duration::from_secs(1));
    (store, proxy)
}

/// Decides within a hang detector: a store must never wait on a dead Redis.
async fn decide(
    store: &RedisStore<ConnectionManager>,
    bucket: &Bucket,
) -> palisade_token_bucket::Decision {
    tokio::time::timeout(Duration::from_secs(5), store.decide("k", bucket, 1))
        .await
        .expect("no decision may hang")
        .expect("the policy decides")
}

/// Cuts the proxy and waits (bounded) for the store to notice.
async fn take_redis_away(store: &RedisStore<ConnectionManager>, proxy: &Proxy, bucket: &Bucket) {
    proxy.cut().await;
    for _ in 0..100 {
        decide(store, bucket).await;
        if store.is_degraded() {
            return;
        }
    }
    panic!("the store never noticed Redis was gone");
}

/// Brings the proxy back and waits (bounded) for the store to recover.
async fn bring_redis_back(store: &RedisStore<ConnectionManager>, proxy: &Proxy, bucket: &Bucket) {
    proxy.resume().await;
    for _ in 0..200 {
        decide(store, bucket).await;
        if !store.is_degraded() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the store never recovered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_open_admits_while_redis_is_away_and_recovers() {
    let (store, proxy) = behind_proxy(FailurePolicy::FailOpen).await;
    let bucket = Bucket::new(1, 0.001).unwrap();
    assert!(decide(&store, &bucket).await.is_allowed());
    assert!(
        !decide(&store, &bucket).await.is_allowed(),
        "Redis holds the spent bucket"
    );
    take_redis_away(&store, &proxy, &bucket).await;
    for _ in 0..20 {
        assert!(decide(&store, &bucket).await.is_allowed(), "fail open");
    }
    bring_redis_back(&store, &proxy, &bucket).await;
    assert!(
        !decide(&store, &bucket).await.is_allowed(),
        "Redis decides again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_closed_refuses_while_redis_is_away_and_recovers() {
    let (store, proxy) = behind_proxy(FailurePolicy::FailClosed).await;
    let bucket = Bucket::new(100, 100.0).unwrap();
    assert!(decide(&store, &bucket).await.is_allowed());
    take_redis_away(&store, &proxy, &bucket).await;
    for _ in 0..20 {
        let denied = decide(&store, &bucket).await;
        assert!(!denied.is_allowed(), "fail closed");
        assert!(denied.retry_after() > Duration::ZERO);
    }
    bring_redis_back(&store, &proxy, &bucket).await;
    assert!(decide(&store, &bucket).await.is_allowed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_fallback_applies_its_own_limit_and_errors_can_propagate() {
    let fallback = Bucket::new(2, 0.001).unwrap();
    let (store, proxy) = behind_proxy(FailurePolicy::Fallback {
        store: LocalStore::new(100),
        bucket: fallback,
    })
    .await;
    let shared = Bucket::new(1000, 1000.0).unwrap();
    take_redis_away(&store, &proxy, &shared).await;
    // The probe that noticed may have spent fallback tokens: at most 2 in all.
    let mut admitted = 0;
    for _ in 0..10 {
        admitted += usize::from(decide(&store, &shared).await.is_allowed());
    }
    assert!(admitted <= 2, "{admitted} admitted by a 2-token fallback");
    // Heavier than the fallback, not than the shared bucket: it waits for
    // Redis, where it was told it never fits (no Retry-After, no retry).
    let heavy = store.decide("k", &shared, 5).await.unwrap();
    assert!(!heavy.is_allowed());
    assert_eq!(heavy.retry_after(), Duration::from_millis(500));

    let (store, proxy) = behind_proxy(FailurePolicy::Propagate).await;
    proxy.cut().await;
    let result = tokio::time::timeout(Duration::from_secs(5), store.decide("k", &shared, 1))
        .await
        .expect("no decision may hang");
    let error = result.expect_err("the error reaches the caller");
    assert_eq!(
        error.retry_after(),
        Some(Duration::from_millis(500)),
        "Redis unreachable: worth asking again at the next probe ({error})"
    );
}

#[tokio::test]
async fn nanosecond_intervals_and_huge_buckets_stay_exact() {
    // Lua numbers are doubles: an arrival time kept in absolute
    // microseconds would swallow a 1 ns interval.
    let store = store(FailurePolicy::Propagate).await;
    let fast = Bucket::new(1_000_000_000, 1e9).unwrap();
    for spent in 1..=3 {
        let decision = store.decide("fast", &fast, 1).await.unwrap();
        assert!(decision.is_allowed());
        assert!(decision.remaining() >= 1_000_000_000 - spent);
    }
    // Nearly the slowest a bucket fills: one token in a million seconds,
    // nine thousand of them (285 years).
    let slow = Bucket::new(9_000, 1e-6).unwrap();
    let decision = store.decide("slow", &slow, 8_999).await.unwrap();
    assert_eq!(decision.remaining(), 1);
    let denied = store.decide("slow", &slow, 2).await.unwrap();
    assert!(!denied.is_allowed());
    assert!(
        denied.retry_after() > Duration::from_secs(999_000),
        "{:?}",
        denied.retry_after()
    );
}

#[cfg(feature = "http")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_closed_or_open_advertises_no_ratelimit_it_does_not_know() {
    use http::{Request, Response, StatusCode};

    let bucket = Bucket::new(100, 100.0).unwrap();
    for policy in [FailurePolicy::FailClosed, FailurePolicy::FailOpen] {
        let closed = matches!(policy, FailurePolicy::FailClosed);
        let (store, proxy) = behind_proxy(policy).await;
        take_redis_away(&store, &proxy, &bucket).await;
        let service = RateLimitLayer::new_for_http(store, bucket, key::global("all"))
            .legacy_headers()
            .layer(service_fn(|_: Request<()>| async {
                Ok::<_, BoxError>(Response::new(()))
            }));
        let response = service.oneshot(Request::new(())).await.unwrap();
        let expected = if closed {
            StatusCode::TOO_MANY_REQUESTS
        } else {
            StatusCode::OK
        };
        assert_eq!(response.status(), expected);
        let headers = response.headers();
        // No bucket was consulted: a full quota would be a lie.
        for field in [
            "ratelimit",
            "ratelimit-policy",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
            "x-ratelimit-limit",
        ] {
            assert!(
                !headers.contains_key(field),
                "{field}: {:?}",
                headers[field]
            );
        }
        assert_eq!(headers.contains_key("retry-after"), closed);
        // The refusal is the limiter's outage, not the caller over its
        // limit: an SLO above counts it, as it does a store error's 503.
        let refusal = response.extensions().get::<palisade_hints::Refusal>();
        assert_eq!(
            refusal.map(palisade_hints::Refusal::reason),
            closed.then_some(palisade_hints::RefusalReason::StoreDown)
        );
        if closed {
            let limited = response
                .extensions()
                .get::<palisade_token_bucket::RateLimited>()
                .expect("the refusal's error in the extensions");
            assert!(limited.is_store_down(), "{limited}");
        }
    }
}

#[test]
fn the_script_replicates_effects_before_it_writes_after_time() {
    // Redis before 5 refuses a write after a non-deterministic command
    // (TIME) unless the script asks for effects replication first.
    let script = RedisStore::<ConnectionManager>::script_source();
    let replicate = script
        .find("redis.replicate_commands()")
        .expect("effects replication asked for");
    assert!(replicate < script.find("'TIME'").unwrap());
}

/// A connection whose every command fails at once, counting them; or,
/// [`silent`](Self::silent), never answers.
#[derive(Clone, Default)]
struct Refusing {
    commands: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    silent: bool,
}

impl Refusing {
    fn silent() -> Self {
        Self {
            silent: true,
            ..Self::default()
        }
    }

    /// The answer to a command, counted.
    fn answer<'a, T: Send + 'a>(&self) -> redis::RedisFuture<'a, T> {
        self.commands
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if self.silent {
            Box::pin(std::future::pending())
        } else {
            Box::pin(async { Err((redis::ErrorKind::Io, "refused").into()) })
        }
    }
}

impl redis::aio::ConnectionLike for Refusing {
    fn req_packed_command<'a>(
        &'a mut self,
        _: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        self.answer()
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        _: &'a redis::Pipeline,
        _: usize,
        _: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        self.answer()
    }

    fn get_db(&self) -> i64 {
        0
    }
}

/// A timeout too long to make a deadline of (`Duration::MAX`) still ends
/// the wait for a silent Redis, after a minute: it overflowed the
/// deadline, and the decision waited for ever.
#[tokio::test(start_paused = true)]
async fn an_unbounded_timeout_still_ends_the_wait() {
    let store =
        RedisStore::new(Refusing::silent(), FailurePolicy::Propagate).timeout(Duration::MAX);
    let bucket = Bucket::new(5, 10.0).unwrap();
    let decided = tokio::time::timeout(Duration::from_secs(3_600), store.decide("k", &bucket, 1))
        .await
        .expect("the store's own timeout ends the wait");
    let error = decided.unwrap_err();
    assert!(error.is_timeout(), "{error}");
}

/// While Redis is down the store asks it once per probe interval (500
/// ms) on tokio's clock, paused time included: a test that advances the
/// clock by an interval sees the next probe.
#[tokio::test(start_paused = true)]
async fn a_down_redis_is_probed_once_per_interval_on_tokios_clock() {
    let connection = Refusing::default();
    let store = RedisStore::new(connection.clone(), FailurePolicy::FailOpen);
    let bucket = Bucket::new(5, 10.0).unwrap();
    let commands = || {
        connection
            .commands
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    assert!(store.decide("k", &bucket, 1).await.unwrap().is_allowed());
    let asked = commands();
    assert!(asked >= 1);
    assert!(store.is_degraded());
    for _ in 0..10 {
        assert!(store.decide("k", &bucket, 1).await.unwrap().is_allowed());
    }
    assert_eq!(commands(), asked, "not asked until the next probe");
    tokio::time::advance(Duration::from_millis(500)).await;
    assert!(store.decide("k", &bucket, 1).await.unwrap().is_allowed());
    assert!(commands() > asked, "probed after an interval");
}

/// A key of another type under the store's prefix (another program's)
/// fails the decisions on it, as the policy says, and only them: Redis
/// still decides every other key. (Its WRONGTYPE error counted as Redis
/// down, so every key was refused until the next probe.)
#[tokio::test]
async fn a_key_of_another_type_fails_its_own_decisions_only() {
    let store = store(FailurePolicy::FailClosed).await;
    let mut redis = connect(&redis_url()).await;
    let _: i64 = redis
        .hset(store.key("bad"), "field", "value")
        .await
        .unwrap();
    let bucket = Bucket::new(5, 10.0).unwrap();
    assert!(!store.decide("bad", &bucket, 1).await.unwrap().is_allowed());
    assert!(!store.is_degraded(), "Redis answers");
    let decided = store.decide("good", &bucket, 1).await.unwrap();
    assert!(decided.is_allowed());
    assert_eq!(decided.remaining(), 4, "decided in Redis");
}

/// A bucket stored further ahead of Redis's clock than a whole refill
/// (written before the clock stepped back, as after a failover to a
/// replica whose clock is behind) is an empty bucket, not one that
/// refuses for as long as the clock stepped: every decision on it was
/// refused for the hour the clock went back.
#[tokio::test]
async fn a_clock_stepped_back_costs_at_most_one_refill() {
    let store = store(FailurePolicy::Propagate).await;
    let mut redis = connect(&redis_url()).await;
    let (now, _): (u64, u64) = redis::cmd("TIME").query_async(&mut redis).await.unwrap();
    let _: () = redis
        .pset_ex(store.key("k"), format!("{}:0", now + 3600), 3_600_000)
        .await
        .unwrap();
    let bucket = Bucket::new(5, 10.0).unwrap();
    let refused = store.decide("k", &bucket, 1).await.unwrap();
    assert!(!refused.is_allowed(), "an empty bucket");
    assert!(
        refused.retry_after() <= Duration::from_millis(100),
        "one token's wait, not the hour: {:?}",
        refused.retry_after()
    );
    assert!(refused.reset() <= Duration::from_millis(500));
    // And the bucket refills from now on: after that wait, a token.
    tokio::time::sleep(refused.retry_after() + Duration::from_millis(5)).await;
    assert!(store.decide("k", &bucket, 1).await.unwrap().is_allowed());
}

/// A hashed key (an API key) reaches Redis as its hash only: its bucket's
/// key name holds no part of the secret.
#[cfg(feature = "http")]
#[tokio::test]
async fn a_hashed_key_reaches_redis_as_its_hash_only() {
    let prefix = prefix();
    let store =
        RedisStore::new(connect(&redis_url()).await, FailurePolicy::Propagate).prefix(&prefix);
    let by_api_key = key::hashed(key::header(http::HeaderName::from_static("x-api-key")));
    let limited = RateLimitLayer::new(store, Bucket::new(5, 1.0).unwrap(), by_api_key).layer(
        service_fn(|_: http::Request<()>| async { Ok::<_, BoxError>(()) }),
    );
    for _ in 0..2 {
        let request = http::Request::get("/")
            .header("x-api-key", "sk_live_secret")
            .body(())
            .unwrap();
        limited.clone().oneshot(request).await.unwrap();
    }
    let mut redis = connect(&redis_url()).await;
    let keys: Vec<String> = redis.keys(format!("{{{prefix}:*")).await.unwrap();
    assert_eq!(keys.len(), 1, "one bucket for one key: {keys:?}");
    assert!(!keys[0].contains("sk_live"), "{keys:?}");
}
