//! Coalescing across processes against a real Redis (`REDIS_URL`, default
//! `redis://127.0.0.1:6379`). Each "process" is a `RedisCache` with its own
//! connections and its own in-process coalescer; each test has its own
//! key prefix.
#![cfg(feature = "redis")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use palisade_coalesce::{Freshness, RedisCache, RedisSettings, Served};
use palisade_testkit::servers::{redis_proxy, redis_url};
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;

#[derive(Debug)]
struct OriginDown;

type Shared = RedisCache<MultiplexedConnection, OriginDown>;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_values_are_served_while_one_process_refreshes() {
    let freshness = Freshness::new(Duration::from_millis(200))
        .stale_while_revalidate(Duration::from_secs(30))
        .early_refresh(0.0);
    let settings = RedisSettings::new(freshness).prefix(&prefix());
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
    for process in [&first, &second, &first, &second] {
        let stale = process
            .get_with("k", origin(&calls, Duration::from_millis(100)))
            .await
            .unwrap();
        assert_eq!(
            (stale.value, stale.served),
            (Bytes::from("v1"), Served::Stale)
        );
    }
    while calls.load(Ordering::SeqCst) < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one refresh for the fleet");
    let fresh = second
        .get_with("k", origin(&calls, Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(
        (fresh.value, fresh.served),
        (Bytes::from("v2"), Served::Fresh)
    );
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
