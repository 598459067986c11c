//! Coalescing across processes against a real Redis (`REDIS_URL`, default
//! `redis://127.0.0.1:6379`). Each "process" is a `RedisCache` with its own
//! connections and its own in-process coalescer; each test has its own
//! key prefix.
#![cfg(feature = "redis")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use palisade_coalesce::{FlightError, Freshness, RedisCache, RedisSettings, Served};
use palisade_testkit::servers::{redis_proxy, redis_url};
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use tokio::sync::Notify;

#[derive(Debug)]
struct OriginDown;

type Shared<C = MultiplexedConnection> = RedisCache<C, OriginDown>;

fn prefix() -> String {
    format!("palisade-test:{}", fastrand::u64(..))
}

/// One "process" on `url`.
async fn process(url: &str, settings: RedisSettings) -> Shared {
    let client = redis::Client::open(url).unwrap();
    let connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("a reachable Redis");
    RedisCache::connect(&client, connection, settings)
        .await
        .unwrap()
}

/// A process on the test's Redis whose connection waits on a reply as
/// long as `settings` allow (redis-rs's own default cuts it at 500 ms).
async fn patient_process(settings: RedisSettings) -> Shared {
    let client = redis::Client::open(redis_url()).unwrap();
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    let connection = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("a reachable Redis");
    RedisCache::connect(&client, connection, settings)
        .await
        .unwrap()
}

/// An origin counting its calls; it answers "v<n>" after `took`.
fn origin(
    calls: &Arc<AtomicUsize>,
    took: Duration,
) -> impl FnOnce() -> std::pin::Pin<Box<dyn Future<Output = Result<Bytes, OriginDown>> + Send>>
+ Send
+ 'static {
    let calls = calls.clone();
    move || {
        Box::pin(async move {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(took).await;
            Ok(Bytes::from(format!("v{n}")))
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_callers_in_four_processes_cause_one_origin_call() {
    let settings = RedisSettings::new(Freshness::new(Duration::from_secs(60))).prefix(&prefix());
    let calls = Arc::new(AtomicUsize::new(0));
    let mut callers = Vec::new();
    for _ in 0..4 {
        let process = process(&redis_url(), settings.clone()).await;
        for _ in 0..250 {
            let (process, compute) = (process.clone(), origin(&calls, Duration::from_millis(300)));
            callers.push(tokio::spawn(async move {
                process.get_with("trending", compute).await
            }));
        }
    }
    for caller in callers {
        assert_eq!(caller.await.unwrap().unwrap().value, "v1");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one origin call for the whole fleet"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_the_leader_dies_exactly_one_waiter_takes_over() {
    let prefix = prefix();
    let settings = RedisSettings::new(Freshness::new(Duration::from_secs(60)))
        .prefix(&prefix)
        .lock_ttl(Duration::from_millis(400))
        .poll_interval(Duration::from_millis(20));
    let leader = process(&redis_url(), settings.clone()).await;
    let stuck = tokio::spawn(async move {
        leader
            .get_with("k", || async {
                std::future::pending::<Result<Bytes, OriginDown>>().await
            })
            .await
    });
    // The leader holds the lock.
    let mut redis = redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let lock = format!("{{{prefix}:k}}:lock");
    while !redis.exists::<_, bool>(&lock).await.unwrap() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let takeovers = Arc::new(AtomicUsize::new(0));
    let mut waiters = Vec::new();
    for _ in 0..3 {
        let process = process(&redis_url(), settings.clone()).await;
        for _ in 0..10 {
            let (process, compute) = (
                process.clone(),
                origin(&takeovers, Duration::from_millis(50)),
            );
            waiters.push(tokio::spawn(
                async move { process.get_with("k", compute).await },
            ));
        }
    }
    // Kill the leader mid-compute: its lease is no longer extended.
    stuck.abort();
    assert!(stuck.await.unwrap_err().is_cancelled());
    for waiter in waiters {
        assert_eq!(waiter.await.unwrap().unwrap().value, "v1");
    }
    assert_eq!(takeovers.load(Ordering::SeqCst), 1, "exactly one takeover");
}

/// A wait for another process's computation too long to make a deadline
/// of (`Duration::MAX`) is a wait with none: every miss panicked.
#[tokio::test]
async fn an_unbounded_wait_for_the_leader_is_taken() {
    let settings = RedisSettings::new(Freshness::new(Duration::from_secs(60)))
        .prefix(&prefix())
        .wait_timeout(Duration::MAX);
    let cache = process(&redis_url(), settings).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let value = cache
        .get_with("k", origin(&calls, Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(value.value, Bytes::from("v1"));
}

/// A lock lease longer than Redis takes for `PX` (`Duration::MAX`) is a
/// day: Redis refused the lock's `SET`, so every lookup took Redis for
/// down and computed the value here, storing nothing for the fleet.
#[tokio::test]
async fn an_unbounded_lock_lease_is_taken() {
    let settings = RedisSettings::new(Freshness::new(Duration::from_secs(60)))
        .prefix(&prefix())
        .lock_ttl(Duration::MAX);
    let (first, second) = (
        process(&redis_url(), settings.clone()).await,
        process(&redis_url(), settings).await,
    );
    let calls = Arc::new(AtomicUsize::new(0));
    for process in [&first, &second] {
        let value = process
            .get_with("k", origin(&calls, Duration::ZERO))
            .await
            .unwrap();
        assert_eq!(value.value, Bytes::from("v1"));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "stored for the fleet");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_values_are_served_while_one_process_refreshes() {
    // Fresh for two seconds: the refreshed value is read well within them.
    let freshness = Freshness::new(Duration::from_secs(2))
        .stale_while_revalidate(Duration::from_secs(30))
        .early_refresh(0.0);
    // Patient with Redis: a read that gave up on it would compute the
    // value itself, and wait on the held refresh's gate.
    let settings = RedisSettings::new(freshness)
        .prefix(&prefix())
        .timeout(Duration::from_secs(30));
    let (first, second) = (
        patient_process(settings.clone()).await,
        patient_process(settings).await,
    );
    let calls = Arc::new(AtomicUsize::new(0));
    first
        .get_with("k", origin(&calls, Duration::ZERO))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    // The refresh answers only once every stale read is done.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let held = |calls: &Arc<AtomicUsize>| {
        let (calls, gate) = (calls.clone(), gate.clone());
        move || async move {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            let _open = gate.acquire().await;
            Ok::<_, OriginDown>(Bytes::from(format!("v{n}")))
        }
    };
    for process in [&first, &second, &first, &second] {
        let stale =
            tokio::time::timeout(Duration::from_secs(60), process.get_with("k", held(&calls)))
                .await
                .expect("a stale read waits on no refresh")
                .unwrap();
        assert_eq!(
            (stale.value, stale.served),
            (Bytes::from("v1"), Served::Stale)
        );
    }
    gate.add_permits(tokio::sync::Semaphore::MAX_PERMITS);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let fresh = loop {
        let read = second
            .get_with("k", origin(&calls, Duration::ZERO))
            .await
            .unwrap();
        if read.value != "v1" {
            break read;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the refresh never stored its value"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        (fresh.value, fresh.served),
        (Bytes::from("v2"), Served::Fresh)
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one refresh for the fleet");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_origin_is_covered_by_the_stale_value() {
    let freshness = Freshness::new(Duration::from_millis(100))
        .stale_if_error(Duration::from_secs(30))
        .early_refresh(0.0);
    let cache = process(
        &redis_url(),
        RedisSettings::new(freshness).prefix(&prefix()),
    )
    .await;
    let calls = Arc::new(AtomicUsize::new(0));
    cache
        .get_with("k", origin(&calls, Duration::ZERO))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let covered = cache
        .get_with("k", || async { Err::<Bytes, _>(OriginDown) })
        .await
        .unwrap();
    assert_eq!(
        (covered.value, covered.served),
        (Bytes::from("v1"), Served::StaleIfError)
    );
}

/// An entry is as old as Redis counts it, whatever the clocks of the
/// processes that store and read it say: ten minutes counted off its
/// expiry make it ten minutes old to every process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_is_as_old_as_redis_counts_it() {
    let prefix = prefix();
    let freshness = Freshness::new(Duration::from_secs(60))
        .stale_while_revalidate(Duration::from_secs(600))
        .early_refresh(0.0);
    let settings = RedisSettings::new(freshness).prefix(&prefix);
    let (writer, reader) = (
        process(&redis_url(), settings.clone()).await,
        process(&redis_url(), settings).await,
    );
    let calls = Arc::new(AtomicUsize::new(0));
    writer
        .get_with("k", origin(&calls, Duration::ZERO))
        .await
        .unwrap();
    let mut redis = direct().await;
    let kept: i64 = redis.pttl(value_key(&prefix, "k")).await.unwrap();
    assert!(
        kept > 655_000,
        "kept for its fresh and stale windows: {kept} ms"
    );
    // Ten minutes pass, on Redis's clock only.
    let _: bool = redis
        .pexpire(value_key(&prefix, "k"), kept - 600_000)
        .await
        .unwrap();
    let read = reader
        .get_with("k", origin(&calls, Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(
        (read.value, read.served),
        (Bytes::from("v1"), Served::Stale)
    );
    assert!(
        (Duration::from_secs(599)..Duration::from_secs(601)).contains(&read.age),
        "{:?}",
        read.age
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_values_are_computed_here_and_nothing_hangs() {
    let (proxy, through) = redis_proxy().await;
    let settings = RedisSettings::new(Freshness::new(Duration::from_secs(60)))
        .prefix(&prefix())
        .timeout(Duration::from_millis(100));
    let cache = process(&through, settings).await;
    proxy.cut().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..20)
        .map(|_| {
            let (cache, compute) = (cache.clone(), origin(&calls, Duration::from_millis(50)));
            tokio::spawn(async move { cache.get_with("k", compute).await })
        })
        .collect();
    for caller in callers {
        let lookup = tokio::time::timeout(Duration::from_secs(10), caller)
            .await
            .expect("no caller may hang")
            .unwrap()
            .unwrap();
        assert_eq!(lookup.served, Served::Miss);
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "still coalesced in process"
    );
}

fn value_key(prefix: &str, key: &str) -> String {
    format!("{{{prefix}:{key}}}:value")
}

/// A key holding a `}` is stored under its hash, the Cluster hash tag the
/// whole of it: named as it was, `{prefix:}a}:value`'s tag was `prefix:`,
/// and every key a client sent as `}…` went to one slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_would_end_its_hash_tag_early_is_stored_under_its_hash() {
    let prefix = prefix();
    let settings = RedisSettings::new(Freshness::new(Duration::from_secs(60))).prefix(&prefix);
    let cache = process(&redis_url(), settings).await;
    let calls = Arc::new(AtomicUsize::new(0));
    for key in ["}a", "}b"] {
        cache
            .get_with(key, origin(&calls, Duration::ZERO))
            .await
            .unwrap();
    }
    let mut redis = direct().await;
    let (a, b) = (
        palisade_hints::hash_tag::tagged(&prefix, "}a", usize::MAX) + ":value",
        palisade_hints::hash_tag::tagged(&prefix, "}b", usize::MAX) + ":value",
    );
    assert!(a.starts_with(&format!("{{{prefix}:#")), "{a}");
    assert_ne!(a, b);
    for name in [&a, &b] {
        let exists: bool = redis.exists(name).await.unwrap();
        assert!(exists, "{name}");
    }
    let plain: bool = redis.exists(value_key(&prefix, "}a")).await.unwrap();
    assert!(!plain, "not under the name whose tag ends early");
}

async fn direct() -> MultiplexedConnection {
    redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_paused_past_its_lease_does_not_overwrite_the_newer_value() {
    let prefix = prefix();
    let settings = RedisSettings::new(Freshness::new(Duration::from_secs(60)).early_refresh(0.0))
        .prefix(&prefix);
    let (paused, successor, reader) = (
        process(&redis_url(), settings.clone()).await,
        process(&redis_url(), settings.clone()).await,
        process(&redis_url(), settings).await,
    );
    let gate = Arc::new(Notify::new());
    let slow = {
        let gate = gate.clone();
        tokio::spawn(async move {
            paused
                .get_with("k", move || async move {
                    gate.notified().await;
                    Ok(Bytes::from("old"))
                })
                .await
        })
    };
    let mut redis = direct().await;
    let lock = format!("{{{prefix}:k}}:lock");
    while !redis.exists::<_, bool>(&lock).await.unwrap() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Its lease runs out while it is paused: no extension reached Redis.
    let _: () = redis.del(&lock).await.unwrap();
    let newer = successor
        .get_with("k", || async { Ok(Bytes::from("new")) })
        .await
        .unwrap();
    assert_eq!(newer.value, "new");
    gate.notify_one();
    assert_eq!(
        slow.await.unwrap().unwrap().value,
        "old",
        "its own callers get what it computed"
    );
    let read = reader
        .get_with("k", || async { Ok(Bytes::from("recomputed")) })
        .await
        .unwrap();
    assert_eq!(
        (read.value, read.served),
        (Bytes::from("new"), Served::Fresh),
        "the newer value stays"
    );
}

/// What a [`Watched`] connection runs before a command reaches Redis.
type Hook = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// Sees each command a [`Watched`] connection sends, and may hold it back
/// with a hook.
type Watcher = Arc<dyn Fn(&redis::Cmd) -> Option<Hook> + Send + Sync>;

/// A connection that shows each command to its watcher first.
#[derive(Clone)]
struct Watched {
    inner: MultiplexedConnection,
    watcher: Watcher,
}

impl Watched {
    /// A connection to Redis, and the cache of a "process" on it.
    async fn cache<E: Send + Sync + 'static>(
        watcher: Watcher,
        settings: RedisSettings,
    ) -> RedisCache<Self, E> {
        Self::cache_on(&redis_url(), watcher, settings).await
    }

    /// As [`cache`](Self::cache), through `url`.
    async fn cache_on<E: Send + Sync + 'static>(
        url: &str,
        watcher: Watcher,
        settings: RedisSettings,
    ) -> RedisCache<Self, E> {
        let client = redis::Client::open(url).unwrap();
        let watched = Self {
            inner: client.get_multiplexed_async_connection().await.unwrap(),
            watcher,
        };
        RedisCache::connect(&client, watched, settings)
            .await
            .unwrap()
    }
}

/// Whether `cmd` names a key ending in `suffix`.
fn names(cmd: &redis::Cmd, suffix: &[u8]) -> bool {
    cmd.args_iter()
        .any(|arg| matches!(arg, redis::Arg::Simple(arg) if arg.ends_with(suffix)))
}

/// A watcher that runs `hook` just before the first lock attempt reaches
/// Redis (the first command on the lock).
fn before_lock(hook: Hook) -> Watcher {
    let hook = std::sync::Mutex::new(Some(hook));
    Arc::new(move |cmd: &redis::Cmd| {
        if names(cmd, b":lock") {
            hook.lock().unwrap().take()
        } else {
            None
        }
    })
}

/// A watcher that runs `hook` just before a waiter's first look for the
/// value once its lock attempt found the lock held: the first read of the
/// value after a command on the lock.
fn after_lock_attempt(hook: Hook) -> Watcher {
    let hook = std::sync::Mutex::new(Some(hook));
    let tried = std::sync::atomic::AtomicBool::new(false);
    Arc::new(move |cmd: &redis::Cmd| {
        if names(cmd, b":lock") {
            tried.store(true, Ordering::SeqCst);
            None
        } else if tried.load(Ordering::SeqCst) && names(cmd, b":value") {
            hook.lock().unwrap().take()
        } else {
            None
        }
    })
}

impl redis::aio::ConnectionLike for Watched {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        let hook = (self.watcher)(cmd);
        Box::pin(async move {
            if let Some(hook) = hook {
                hook.await;
            }
            self.inner.req_packed_command(cmd).await
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        self.inner.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_that_wins_the_lock_after_the_value_was_written_reads_it() {
    let settings = RedisSettings::new(Freshness::new(Duration::from_secs(60)).early_refresh(0.0))
        .prefix(&prefix())
        .timeout(Duration::from_secs(10));
    let calls = Arc::new(AtomicUsize::new(0));
    let leader = process(&redis_url(), settings.clone()).await;
    // Between this process's first look (nothing stored) and its lock
    // attempt, another process computes, stores and releases the lock.
    let meanwhile = {
        let compute = origin(&calls, Duration::ZERO);
        Box::pin(async move {
            leader.get_with("k", compute).await.unwrap();
        })
    };
    let late = Watched::cache(before_lock(meanwhile), settings).await;
    let lookup = late
        .get_with("k", origin(&calls, Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(lookup.value, "v1", "the value already stored");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "no second origin call");
}

/// Under `FailurePolicy::Refuse`, an expired value that Redis gave a
/// lookup before it went away stands in for the refusal (stale-if-error),
/// and the origin is not called.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_lookup_is_covered_by_the_stale_value_it_read() {
    use palisade_coalesce::FailurePolicy;

    let prefix = prefix();
    let freshness = Freshness::new(Duration::from_secs(60))
        .stale_if_error(Duration::from_secs(600))
        .early_refresh(0.0);
    let settings = RedisSettings::new(freshness)
        .prefix(&prefix)
        .on_failure(FailurePolicy::Refuse)
        .probe_interval(Duration::from_secs(3600))
        .wake_ups(false);
    let calls = Arc::new(AtomicUsize::new(0));
    let writer = process(&redis_url(), settings.clone()).await;
    writer
        .get_with("k", origin(&calls, Duration::ZERO))
        .await
        .unwrap();
    // Two minutes old on Redis's clock: expired, usable on error.
    let mut redis = direct().await;
    let kept: i64 = redis.pttl(value_key(&prefix, "k")).await.unwrap();
    let _: bool = redis
        .pexpire(value_key(&prefix, "k"), kept - 120_000)
        .await
        .unwrap();
    // The reader reads the entry, then Redis goes away before its lock
    // attempt.
    let (proxy, through) = redis_proxy().await;
    let cut = Box::pin(async move { proxy.cut().await });
    let reader = Watched::cache_on(&through, before_lock(cut), settings).await;
    let covered = reader
        .get_with("k", origin(&calls, Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(
        (covered.value, covered.served),
        (Bytes::from("v1"), Served::StaleIfError)
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1, "only the writer's call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_succeeds_when_pub_sub_cannot_connect() {
    // Nothing listens on port 1: the wake-up subscription cannot connect.
    let nowhere = redis::Client::open("redis://127.0.0.1:1").unwrap();
    let settings = RedisSettings::new(Freshness::new(Duration::from_secs(60)))
        .prefix(&prefix())
        .poll_interval(Duration::from_millis(20));
    let cache: Shared = RedisCache::connect(&nowhere, direct().await, settings)
        .await
        .expect("an outage of pub/sub costs wake-ups, not the cache");
    let calls = Arc::new(AtomicUsize::new(0));
    let lookup = cache
        .get_with("k", origin(&calls, Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(
        (lookup.value, lookup.served),
        (Bytes::from("v1"), Served::Miss)
    );
    let again = cache
        .get_with("k", origin(&calls, Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(
        (again.value, again.served),
        (Bytes::from("v1"), Served::Fresh)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_that_may_not_be_stored_drops_the_shared_entry() {
    let prefix = prefix();
    let freshness = Freshness::new(Duration::from_millis(200))
        .stale_while_revalidate(Duration::from_secs(30))
        .stale_if_error(Duration::from_secs(30))
        .early_refresh(0.0);
    let settings = RedisSettings::new(freshness).prefix(&prefix);
    let (first, second) = (
        process(&redis_url(), settings.clone()).await,
        process(&redis_url(), settings).await,
    );
    let calls = Arc::new(AtomicUsize::new(0));
    first
        .get_with("k", origin(&calls, Duration::ZERO))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The origin now says the value may not be kept (`no-store`, say).
    let stale = first
        .get_with_freshness("k", || async { Ok((Bytes::from("private"), None)) })
        .await
        .unwrap();
    assert_eq!(
        (stale.value, stale.served),
        (Bytes::from("v1"), Served::Stale)
    );
    let mut redis = direct().await;
    let value = value_key(&prefix, "k");
    tokio::time::timeout(Duration::from_secs(10), async {
        while redis.exists::<_, bool>(&value).await.unwrap() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the old entry is dropped, not kept stale");
    let next = second
        .get_with("k", origin(&calls, Duration::ZERO))
        .await
        .unwrap();
    assert_eq!((next.value, next.served), (Bytes::from("v2"), Served::Miss));
}

/// A write lands while a leader computes the key (it read the old
/// version), and the writer invalidates: the next lookup, here and in
/// another process, computes anew, and the leader's value is not stored
/// over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_is_not_undone_by_a_leader_already_computing() {
    let prefix = prefix();
    let settings = RedisSettings::new(Freshness::new(Duration::from_secs(60)).early_refresh(0.0))
        .prefix(&prefix);
    let (leader, other) = (
        process(&redis_url(), settings.clone()).await,
        process(&redis_url(), settings).await,
    );
    let gate = Arc::new(Notify::new());
    let before = {
        let (leader, gate) = (leader.clone(), gate.clone());
        tokio::spawn(async move {
            leader
                .get_with("k", move || async move {
                    gate.notified().await;
                    Ok(Bytes::from("version 1"))
                })
                .await
        })
    };
    let mut redis = direct().await;
    let lock = format!("{{{prefix}:k}}:lock");
    assert!(locked(&mut redis, &lock).await, "it leads");
    leader.invalidate("k").await;
    // Bounded: a lookup that joined the leader's flight would wait for
    // the gate, opened only after it.
    let here = tokio::time::timeout(
        Duration::from_secs(10),
        leader.get_with("k", || async { Ok(Bytes::from("version 2")) }),
    )
    .await
    .expect("a new computation, not the running one")
    .unwrap();
    assert_eq!(
        (here.value, here.served),
        (Bytes::from("version 2"), Served::Miss)
    );
    gate.notify_one();
    assert_eq!(
        before.await.unwrap().unwrap().value,
        "version 1",
        "asked before the write"
    );
    let there = other
        .get_with("k", || async { Ok(Bytes::from("version 3")) })
        .await
        .unwrap();
    assert_eq!(
        (there.value, there.served),
        (Bytes::from("version 2"), Served::Fresh),
        "the leader that read version 1 stored nothing"
    );
}

/// Waits, a while at most, for `lock` to be taken in Redis; whether it
/// was.
async fn locked(redis: &mut MultiplexedConnection, lock: &str) -> bool {
    for _ in 0..500 {
        if redis.exists::<_, bool>(lock).await.unwrap() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// Waits, a while at most, for `lock` to be gone from Redis; whether it
/// went.
async fn released(redis: &mut MultiplexedConnection, lock: &str) -> bool {
    for _ in 0..500 {
        if !redis.exists::<_, bool>(lock).await.unwrap() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// Every caller of a leader leaves (their own timeouts): its computation
/// is cancelled, and its lock goes with it, so the next caller anywhere
/// need not wait out the lease (a minute here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_callers_all_left_gives_its_lock_back() {
    let prefix = prefix();
    let settings = RedisSettings::new(Freshness::new(Duration::from_secs(60)))
        .prefix(&prefix)
        .lock_ttl(Duration::from_secs(60));
    let leader = process(&redis_url(), settings).await;
    let mut redis = direct().await;
    let lock = format!("{{{prefix}:k}}:lock");
    let calls = Arc::new(AtomicUsize::new(0));
    let caller = tokio::spawn({
        let origin = origin(&calls, Duration::from_secs(3600));
        async move { leader.get_with("k", origin).await }
    });
    assert!(locked(&mut redis, &lock).await, "it leads");
    // Its only caller leaves (its own timeout, say).
    caller.abort();
    assert!(caller.await.is_err());
    assert!(released(&mut redis, &lock).await, "the lock went with it");
}

/// A connection that loses the answer to the first lock command Redis
/// carries out: the command runs, its caller never hears back.
#[derive(Clone)]
struct LosesLockAnswer {
    inner: MultiplexedConnection,
    lost: Arc<std::sync::atomic::AtomicBool>,
}

impl redis::aio::ConnectionLike for LosesLockAnswer {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        Box::pin(async move {
            let answer = self.inner.req_packed_command(cmd).await;
            // An error (the script not loaded yet) took no lock.
            if answer.is_ok() && names(cmd, b":lock") && !self.lost.swap(true, Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            answer
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        self.inner.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

/// A lock attempt cut by the call's timeout (Redis slow, failing over)
/// that took the lock all the same gives it back: no one else knows its
/// token, and every process's callers of the key waited out its lease (a
/// minute here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_attempt_whose_answer_is_lost_gives_the_lock_back() {
    let prefix = prefix();
    let settings = RedisSettings::new(Freshness::new(Duration::from_secs(60)))
        .prefix(&prefix)
        .lock_ttl(Duration::from_secs(60));
    let client = redis::Client::open(redis_url()).unwrap();
    let connection = LosesLockAnswer {
        inner: client.get_multiplexed_async_connection().await.unwrap(),
        lost: Arc::default(),
    };
    let cache: Shared<LosesLockAnswer> = RedisCache::connect(&client, connection.clone(), settings)
        .await
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let computed = cache.get_with("k", origin(&calls, Duration::ZERO)).await;
    assert!(computed.is_ok(), "computed here once the attempt timed out");
    assert!(
        connection.lost.load(Ordering::SeqCst),
        "the lock's answer was lost"
    );
    let mut redis = direct().await;
    let lock = format!("{{{prefix}:k}}:lock");
    assert!(
        released(&mut redis, &lock).await,
        "the lock it took went back"
    );
}

/// The same when the computation panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_computation_panics_gives_its_lock_back() {
    let prefix = prefix();
    let settings = RedisSettings::new(Freshness::new(Duration::from_secs(60)))
        .prefix(&prefix)
        .lock_ttl(Duration::from_secs(60));
    let leader = process(&redis_url(), settings).await;
    let mut redis = direct().await;
    let lock = format!("{{{prefix}:k}}:lock");
    let gate = Arc::new(Notify::new());
    let caller = tokio::spawn({
        let gate = gate.clone();
        async move {
            leader
                .get_with("k", move || async move {
                    gate.notified().await;
                    panic!("the origin's client panicked")
                })
                .await
        }
    });
    assert!(locked(&mut redis, &lock).await, "it leads");
    gate.notify_one();
    assert!(caller.await.unwrap().is_err(), "a panic, as an error");
    assert!(released(&mut redis, &lock).await, "the lock went with it");
}

/// A background refresh whose origin never answers is given up once its
/// value's stale window (and a fresh lifetime) has passed, and gives its
/// lock back: it used to extend its lease for ever, and every process's
/// callers of the key waited on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_that_never_ends_gives_its_lock_back() {
    let prefix = prefix();
    let settings = RedisSettings::new(
        Freshness::new(Duration::from_secs(1))
            .stale_while_revalidate(Duration::from_secs(1))
            .early_refresh(0.0),
    )
    .prefix(&prefix)
    .lock_ttl(Duration::from_secs(60));
    let cache = process(&redis_url(), settings).await;
    let mut redis = direct().await;
    let lock = format!("{{{prefix}:k}}:lock");
    cache
        .get_with("k", || async { Ok(Bytes::from("v1")) })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    // Bounded: past the stale window this lookup would wait on the hung
    // origin itself.
    let stale = tokio::time::timeout(
        Duration::from_secs(5),
        cache.get_with("k", std::future::pending::<Result<Bytes, OriginDown>>),
    )
    .await
    .expect("served stale at once")
    .unwrap();
    assert_eq!(stale.served, Served::Stale);
    assert!(locked(&mut redis, &lock).await, "the refresh leads");
    // Past the stale window (2 s after the store) and a fresh lifetime
    // after the refresh began (2.2 s), far before the lease's minute.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert!(released(&mut redis, &lock).await, "the lock went with it");
}

/// Redis stops answering (connected, silent): the first lookup waits out
/// the timeout and marks it down; until the next probe the others compute
/// at once, without asking it. Counted: one Redis error for ten lookups.
#[cfg(feature = "otel")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_redis_costs_one_lookup_per_probe_interval_its_timeout() {
    let probe = palisade_testkit::MetricsProbe::default();
    let (proxy, through) = redis_proxy().await;
    let settings = RedisSettings::new(Freshness::new(Duration::from_secs(60)))
        .prefix(&prefix())
        .timeout(Duration::from_millis(200))
        .probe_interval(Duration::from_secs(3600))
        .wake_ups(false);
    let cache = process(&through, settings).await;
    cache.instrument(&probe.meter(), "silent");
    proxy.stall();
    let calls = Arc::new(AtomicUsize::new(0));
    for key in 0..10 {
        let lookup = cache
            .get_with(&format!("k{key}"), origin(&calls, Duration::ZERO))
            .await
            .unwrap();
        assert_eq!(lookup.served, Served::Miss);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 10, "each computed here");
    let label = || vec!["cache=silent".to_owned()];
    assert_eq!(
        probe.points("palisade.coalesce.redis_errors"),
        vec![(label(), 1)],
        "Redis asked once, not once a lookup"
    );
    assert_eq!(
        probe.points("palisade.coalesce.without_redis"),
        vec![(
            vec!["cache=silent".to_owned(), "outcome=computed".to_owned()],
            10
        )]
    );
}

/// After an outage, the next probe finds Redis and the cache coalesces
/// across processes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_redis_answers_again_processes_share_values_again() {
    let (proxy, through) = redis_proxy().await;
    let settings = RedisSettings::new(Freshness::new(Duration::from_secs(60)).early_refresh(0.0))
        .prefix(&prefix())
        .timeout(Duration::from_millis(200))
        .probe_interval(Duration::from_millis(50))
        .wake_ups(false);
    let cache = process(&through, settings.clone()).await;
    proxy.stall();
    let calls = Arc::new(AtomicUsize::new(0));
    let alone = cache
        .get_with("k", origin(&calls, Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(alone.value, "v1");
    proxy.resume().await;
    // Each lookup computes here until one probes Redis and finds it; the
    // first lookup through Redis stores its value.
    let mut stored = false;
    for _ in 0..200 {
        let lookup = cache
            .get_with("k", origin(&calls, Duration::ZERO))
            .await
            .unwrap();
        if lookup.served == Served::Fresh {
            stored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(stored, "a value stored in Redis once it answered");
    let before = calls.load(Ordering::SeqCst);
    let other = process(&redis_url(), settings).await;
    let shared = other
        .get_with("k", origin(&calls, Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(shared.served, Served::Fresh);
    assert_eq!(calls.load(Ordering::SeqCst), before, "no origin call");
}

/// Under `FailurePolicy::Refuse` a Redis outage reaches no origin: every
/// lookup fails with the store-down refusal, which says when Redis is
/// asked again and is found through the error's sources.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusing_while_redis_is_down_reaches_no_origin() {
    use palisade_coalesce::{FailurePolicy, FlightError};
    use palisade_hints::{Refusal, RefusalReason};

    let (proxy, through) = redis_proxy().await;
    let settings = RedisSettings::new(Freshness::new(Duration::from_secs(60)))
        .prefix(&prefix())
        .timeout(Duration::from_millis(200))
        .on_failure(FailurePolicy::Refuse)
        .probe_interval(Duration::from_secs(3600));
    let cache = process(&through, settings).await;
    proxy.cut().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let lookups: Vec<_> = (0..20)
        .map(|i| {
            let (cache, compute) = (cache.clone(), origin(&calls, Duration::ZERO));
            tokio::spawn(async move { cache.get_with(&format!("k{}", i % 4), compute).await })
        })
        .collect();
    for lookup in lookups {
        let error = lookup.await.unwrap().unwrap_err();
        let FlightError::Refused(refusal) = error else {
            panic!("refused, not {error:?}");
        };
        assert_eq!(refusal.reason(), RefusalReason::StoreDown);
        assert_eq!(refusal.retry_after(), Some(Duration::from_secs(3600)));
        let boxed: Box<dyn std::error::Error> =
            Box::new(FlightError::<std::io::Error>::Refused(refusal));
        assert_eq!(Refusal::find(&*boxed), Some(&refusal));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0, "no origin call");
}

/// Under `FailurePolicy::ComputeHereUpTo(1)` one key computes while Redis
/// is down; a lookup of another key meanwhile is refused, and computes
/// once the first is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn computing_here_up_to_a_limit_refuses_past_it() {
    use palisade_coalesce::{FailurePolicy, FlightError};

    let (proxy, through) = redis_proxy().await;
    let settings = RedisSettings::new(Freshness::new(Duration::from_secs(60)))
        .prefix(&prefix())
        .on_failure(FailurePolicy::ComputeHereUpTo(1));
    let cache = process(&through, settings).await;
    proxy.cut().await;
    let (started, mut computing) = tokio::sync::mpsc::channel::<()>(1);
    let (finish, finished) = tokio::sync::oneshot::channel::<()>();
    let first = tokio::spawn({
        let cache = cache.clone();
        async move {
            cache
                .get_with("a", move || async move {
                    started.send(()).await.unwrap();
                    finished.await.unwrap();
                    Ok::<_, OriginDown>(Bytes::from("a"))
                })
                .await
        }
    });
    computing.recv().await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let refused = cache.get_with("b", origin(&calls, Duration::ZERO)).await;
    assert!(
        matches!(refused, Err(FlightError::Refused(_))),
        "{refused:?}"
    );
    finish.send(()).unwrap();
    assert_eq!(first.await.unwrap().unwrap().value, "a");
    let computed = cache
        .get_with("b", origin(&calls, Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(computed.value, "v1");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// One call that Redis left unanswered marks it down until the next
/// probe, but the writes that keep entries right are still made: an
/// invalidation right after Redis is back is applied. (Every Redis call
/// was gated by the probe, so the invalidation was dropped unlogged, and
/// the other process went on serving the old value.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_is_applied_while_redis_waits_for_its_next_probe() {
    let (proxy, through) = redis_proxy().await;
    let settings = RedisSettings::new(Freshness::new(Duration::from_secs(60)).early_refresh(0.0))
        .prefix(&prefix())
        .timeout(Duration::from_millis(200))
        .probe_interval(Duration::from_secs(3600))
        .wake_ups(false);
    let writer = process(&through, settings.clone()).await;
    let reader = process(&redis_url(), settings).await;
    let calls = Arc::new(AtomicUsize::new(0));
    reader
        .get_with("k", origin(&calls, Duration::ZERO))
        .await
        .unwrap();
    proxy.stall();
    writer
        .get_with("other", origin(&calls, Duration::ZERO))
        .await
        .unwrap();
    proxy.resume().await;
    writer.invalidate("k").await;
    let after = reader
        .get_with("k", origin(&calls, Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(after.served, Served::Miss, "the invalidation was applied");
}

/// A value key another program left of another type reads as a miss, is
/// replaced by the next store, and leaves Redis counted as up: the other
/// keys go on being shared. (Its WRONGTYPE error counted as Redis down:
/// the key was never stored again, and every key was computed alone
/// until the next probe.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_another_type_is_replaced_and_redis_stays_up() {
    let prefix = prefix();
    let settings = RedisSettings::new(Freshness::new(Duration::from_secs(60)).early_refresh(0.0))
        .prefix(&prefix)
        .probe_interval(Duration::from_secs(3600));
    let cache = process(&redis_url(), settings).await;
    let mut redis = direct().await;
    let _: i64 = redis
        .hset(value_key(&prefix, "k"), "field", "value")
        .await
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    for (key, served) in [
        ("k", Served::Miss),
        ("k", Served::Fresh),
        ("other", Served::Miss),
        ("other", Served::Fresh),
    ] {
        let lookup = cache
            .get_with(key, origin(&calls, Duration::ZERO))
            .await
            .unwrap();
        assert_eq!(lookup.served, served, "{key}");
    }
}

/// The wake-up subscription ends with the cache: once every clone is
/// dropped, Redis counts no subscriber on its channel. (The task keeping
/// it waited on the subscription, so it held the connection open for as
/// long as no message came.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_cache_leaves_no_subscription_behind() {
    let prefix = prefix();
    let cache = process(
        &redis_url(),
        RedisSettings::new(Freshness::new(Duration::from_secs(60))).prefix(&prefix),
    )
    .await;
    let mut redis = direct().await;
    let channel = format!("{prefix}:filled");
    let subscribers = async |redis: &mut MultiplexedConnection| {
        let counts: Vec<(String, i64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(&channel)
            .query_async(redis)
            .await
            .unwrap();
        counts[0].1
    };
    assert_eq!(subscribers(&mut redis).await, 1);
    let clone = cache.clone();
    drop(cache);
    assert_eq!(subscribers(&mut redis).await, 1, "a clone keeps it");
    drop(clone);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while subscribers(&mut redis).await != 0 {
        assert!(std::time::Instant::now() < deadline, "still subscribed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A process that finds the value in Redis counts no origin call: the
/// counter counts calls to the origin, not lookups. (Every in-process
/// flight counted as one, whether it read Redis or called the origin.)
#[cfg(feature = "otel")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_calls_to_the_origin_count_as_origin_calls() {
    let settings = RedisSettings::new(Freshness::new(Duration::from_secs(60)).early_refresh(0.0))
        .prefix(&prefix());
    let (computing, reading) = (
        palisade_testkit::MetricsProbe::default(),
        palisade_testkit::MetricsProbe::default(),
    );
    let first = process(&redis_url(), settings.clone()).await;
    first.instrument(&computing.meter(), "catalog");
    let second = process(&redis_url(), settings).await;
    second.instrument(&reading.meter(), "catalog");
    let calls = Arc::new(AtomicUsize::new(0));
    first
        .get_with("k", origin(&calls, Duration::ZERO))
        .await
        .unwrap();
    for _ in 0..3 {
        let read = second
            .get_with("k", origin(&calls, Duration::ZERO))
            .await
            .unwrap();
        assert_eq!(read.served, Served::Fresh);
    }
    let label = || vec!["cache=catalog".to_owned()];
    assert_eq!(
        computing.points("palisade.coalesce.origin_calls"),
        vec![(label(), 1)]
    );
    let counted: u64 = reading
        .points("palisade.coalesce.origin_calls")
        .iter()
        .map(|(_, count)| count)
        .sum();
    assert_eq!(counted, 0, "the reading process called no origin");
}

/// A lead held in another process: `lead` runs a lookup whose computation
/// says when it starts (the first `Notify`; its process holds the lock
/// then) and ends once the second is notified. Returns, once it computes,
/// a hook that lets it end and waits for it, and its outcome.
async fn held_lead<T, Fut>(
    lead: impl FnOnce(Arc<Notify>, Arc<Notify>) -> Fut,
) -> (Hook, tokio::sync::oneshot::Receiver<T>)
where
    T: Send + 'static,
    Fut: Future<Output = T> + Send + 'static,
{
    let (computing, go) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let leader = tokio::spawn(lead(computing.clone(), go.clone()));
    computing.notified().await;
    let (tell, outcome) = tokio::sync::oneshot::channel();
    let hook = Box::pin(async move {
        go.notify_one();
        let _ = tell.send(leader.await.unwrap());
    });
    (hook, outcome)
}

/// A lead of "k" held in `leader`'s process (see [`held_lead`]) whose
/// computation, once let go, fails with `OriginDown`.
async fn failing_lead<C>(
    leader: RedisCache<C, OriginDown>,
) -> (
    Hook,
    tokio::sync::oneshot::Receiver<Option<FlightError<OriginDown>>>,
)
where
    C: redis::aio::ConnectionLike + Clone + Send + Sync + 'static,
{
    held_lead(|computing, go| async move {
        let compute = move || async move {
            computing.notify_one();
            go.notified().await;
            Err(OriginDown)
        };
        leader.get_with("k", compute).await.err()
    })
    .await
}

/// The cache, sharing `OriginDown` with other processes' waiters as
/// "down"; `own` makes it a failure the leading process keeps.
fn sharing_failures<C>(cache: RedisCache<C, OriginDown>, own: bool) -> RedisCache<C, OriginDown>
where
    C: redis::aio::ConnectionLike + Clone + Send + Sync + 'static,
{
    cache.share_failures(
        move |_| (!own).then(|| Bytes::from_static(b"down")),
        |failure| (failure == "down").then_some(OriginDown),
    )
}

/// A leader in one process fails just as a caller in another finds its
/// lock held, before that caller's first look (as a fast failure does):
/// the caller gets the failure, as the leader's callers in its own
/// process do, and does not call the origin again. It took the lock and
/// called the origin on the code before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaders_failure_reaches_its_waiters_in_every_process() {
    let prefix = prefix();
    let settings = RedisSettings::new(Freshness::new(Duration::from_secs(60)))
        .prefix(&prefix)
        .timeout(Duration::from_secs(10));
    let leader = sharing_failures(process(&redis_url(), settings.clone()).await, false);
    let (failing, led) = failing_lead(leader).await;
    let waiter = sharing_failures(
        Watched::cache(after_lock_attempt(failing), settings).await,
        false,
    );
    let calls = Arc::new(AtomicUsize::new(0));
    let waited = waiter.get_with("k", origin(&calls, Duration::ZERO)).await;
    let led = led.await.unwrap();
    assert!(matches!(led, Some(FlightError::Failed(_))), "{led:?}");
    assert!(
        matches!(waited, Err(FlightError::Failed(_))),
        "the leader's failure: {waited:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0, "no second origin call");
    // Each failure takes the place of the last: one entry a key, however
    // many leads fail.
    for _ in 0..3 {
        let failing = waiter.get_with("k", || async { Err(OriginDown) }).await;
        assert!(failing.is_err());
    }
    let left: Vec<String> = direct()
        .await
        .keys(format!("{{{prefix}:k}}:failed*"))
        .await
        .unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
}

/// A failure the leading process keeps as its own (or one not shared at
/// all, as without `share_failures`) leaves the waiters elsewhere to take
/// the lock and ask the origin themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_the_leader_keeps_leaves_its_waiters_to_take_over() {
    for shared in [false, true] {
        let settings = RedisSettings::new(Freshness::new(Duration::from_secs(60)))
            .prefix(&prefix())
            .timeout(Duration::from_secs(10));
        let leader = process(&redis_url(), settings.clone()).await;
        let leader = if shared {
            sharing_failures(leader, true)
        } else {
            leader
        };
        let (failing, led) = failing_lead(leader).await;
        let waiter = Watched::cache(after_lock_attempt(failing), settings).await;
        let waiter = if shared {
            sharing_failures(waiter, false)
        } else {
            waiter
        };
        let calls = Arc::new(AtomicUsize::new(0));
        let waited = waiter
            .get_with("k", origin(&calls, Duration::ZERO))
            .await
            .unwrap();
        assert!(led.await.unwrap().is_some(), "the leader failed");
        assert_eq!(waited.value, "v1", "its own value");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}

/// The HTTP layer of one process whose origin answers `503` with a
/// `Retry-After` (or a layer below it refuses) just as a request in
/// another finds its lock held. The origin's answer is the other
/// process's answer too, without a second origin call; a refusal is the
/// leading process's own, and the other asks the origin through its own
/// stack. The other took the lock and called the origin on the code
/// before, for both.
#[cfg(feature = "http")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_origins_failure_answers_the_http_layers_waiters_in_every_process() {
    use http::{Request, Response, StatusCode};
    use palisade_coalesce::http::CoalesceLayer;
    use palisade_hints::Refusal;
    use palisade_hints::http::refusal_response;
    use tower::{BoxError, Layer, ServiceExt};

    /// What a request got: status, `Retry-After`, refusal and body.
    type Got = (StatusCode, Option<String>, Option<Refusal>, String);

    /// `GET /item` through the layer on `cache` over `origin`.
    fn get<S>(
        cache: RedisCache<Watched, BoxError>,
        origin: S,
    ) -> std::pin::Pin<Box<dyn Future<Output = Got> + Send>>
    where
        S: tower::Service<Request<String>, Response = Response<String>, Error = BoxError>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send,
    {
        use http_body_util::BodyExt;
        let request = Request::get("http://catalog.example/item")
            .body(String::new())
            .unwrap();
        // Boxed here, where its types are named: the future's `Send`
        // check cannot see through the layer's otherwise.
        let service =
            tower::util::BoxCloneSyncService::new(CoalesceLayer::new(cache).layer(origin));
        Box::pin(async move {
            let (parts, body) = service.oneshot(request).await.unwrap().into_parts();
            let retry_after = parts.headers.get("retry-after");
            (
                parts.status,
                retry_after.map(|wait| wait.to_str().unwrap().to_owned()),
                parts.extensions.get::<Refusal>().copied(),
                String::from_utf8(body.collect().await.unwrap().to_bytes().into()).unwrap(),
            )
        })
    }

    let unavailable = || {
        Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .header("retry-after", "7")
            .body("busy".to_owned())
            .unwrap()
    };
    let refused = || {
        let refusal = Refusal::circuit_open(Some(Duration::from_secs(2)));
        refusal_response::<String>(StatusCode::SERVICE_UNAVAILABLE, refusal)
    };
    // Not to be written to Redis: every waiter asks its own origin.
    let unstorable = || {
        Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .header("cache-control", "no-store")
            .body("busy".to_owned())
            .unwrap()
    };
    for (failure, shared) in [
        (unavailable as fn() -> Response<String>, true),
        (refused, false),
        (unstorable, false),
    ] {
        let prefix = prefix();
        let settings = RedisSettings::new(Freshness::new(Duration::from_secs(60)))
            .prefix(&prefix)
            .timeout(Duration::from_secs(10));
        let leader: RedisCache<_, BoxError> =
            Watched::cache(Arc::new(|_: &redis::Cmd| None), settings.clone()).await;
        let (failing, led) = held_lead(|computing, go| {
            let origin = tower::service_fn(move |_: Request<String>| {
                let (computing, go) = (computing.clone(), go.clone());
                async move {
                    computing.notify_one();
                    go.notified().await;
                    Ok::<_, BoxError>(failure())
                }
            });
            get(leader, origin)
        })
        .await;
        let waiter = Watched::cache(after_lock_attempt(failing), settings).await;
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let origin = tower::service_fn(move |_: Request<String>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async {
                Ok::<_, BoxError>(
                    Response::builder()
                        .header("cache-control", "max-age=60")
                        .body("fresh".to_owned())
                        .unwrap(),
                )
            }
        });
        let waited = get(waiter, origin).await;
        let led = led.await.unwrap();
        assert_eq!(led.0, StatusCode::SERVICE_UNAVAILABLE);
        if shared {
            assert_eq!(
                waited,
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Some("7".to_owned()),
                    None,
                    "busy".to_owned()
                ),
                "the origin's answer"
            );
            assert_eq!(calls.load(Ordering::SeqCst), 0, "no second origin call");
        } else {
            assert_eq!(
                (waited.0, waited.3.as_str()),
                (StatusCode::OK, "fresh"),
                "its own origin's answer"
            );
            assert_eq!(calls.load(Ordering::SeqCst), 1);
            let left: Vec<String> = direct()
                .await
                .keys(format!("{{{prefix}:*}}:failed*"))
                .await
                .unwrap();
            assert!(left.is_empty(), "nothing left in Redis: {left:?}");
        }
    }
}

/// A poll interval of zero is taken as a millisecond: every waiter read
/// Redis back to back, for as long as it waited, on the code before.
#[test]
fn a_poll_interval_of_zero_is_taken_as_a_millisecond() {
    let settings =
        RedisSettings::new(Freshness::new(Duration::from_secs(60))).poll_interval(Duration::ZERO);
    assert!(
        format!("{settings:?}").contains("poll_interval: 1ms"),
        "{settings:?}"
    );
}

/// How a lead in another process ends without a value for its waiters.
#[derive(Debug, Clone, Copy)]
enum LeadEnd {
    /// Its computation fails, and the failure stays its own.
    KeepsItsFailure,
    /// Its computation says the value may not be kept (`None` freshness).
    NotToBeKept,
    /// Its caller leaves mid-computation.
    CutShort,
}

/// A lead that ends in any of these ways frees the lock and wakes the
/// waiters in other processes, which take over at once. Only a stored
/// value or a shared failure woke them: the others left them to find the
/// lock gone at their next poll (here a day away, so they waited until
/// their wait timeout, also a day).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lead_ending_without_a_value_wakes_its_waiters() {
    for end in [
        LeadEnd::KeepsItsFailure,
        LeadEnd::NotToBeKept,
        LeadEnd::CutShort,
    ] {
        let settings = RedisSettings::new(Freshness::new(Duration::from_secs(60)))
            .prefix(&prefix())
            .timeout(Duration::from_secs(10))
            .poll_interval(Duration::from_secs(86_400))
            .wait_timeout(Duration::from_secs(86_400));
        let leader: Shared = process(&redis_url(), settings.clone()).await;
        let (computing, go) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let lead = tokio::spawn({
            let (computing, go) = (computing.clone(), go.clone());
            async move {
                let compute = move || async move {
                    computing.notify_one();
                    go.notified().await;
                    match end {
                        LeadEnd::KeepsItsFailure => Err(OriginDown),
                        LeadEnd::NotToBeKept => Ok((Bytes::from("not kept"), None)),
                        LeadEnd::CutShort => std::future::pending().await,
                    }
                };
                let _ = leader.get_with_freshness("k", compute).await;
            }
        });
        computing.notified().await;
        // Once the waiter has found the lock held (its second command on
        // the lock: the attempt, then the look), the lead ends.
        let ending: Hook = Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            go.notify_one();
        });
        let lead_abort = lead.abort_handle();
        let ending: Hook = match end {
            LeadEnd::CutShort => Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                lead_abort.abort();
            }),
            _ => ending,
        };
        let ending = std::sync::Mutex::new(Some(ending));
        let on_lock = AtomicUsize::new(0);
        let watcher: Watcher = Arc::new(move |cmd: &redis::Cmd| {
            if names(cmd, b":lock") && on_lock.fetch_add(1, Ordering::SeqCst) == 1 {
                tokio::spawn(ending.lock().unwrap().take()?);
            }
            None
        });
        let waiter = Watched::cache(watcher, settings).await;
        let calls = Arc::new(AtomicUsize::new(0));
        let waited = tokio::time::timeout(
            Duration::from_secs(60),
            waiter.get_with("k", origin(&calls, Duration::ZERO)),
        )
        .await
        .unwrap_or_else(|_| panic!("{end:?}: the waiter was never woken"))
        .unwrap();
        assert_eq!(waited.value, "v1", "{end:?}: took over");
        let _ = lead.await;
    }
}
