//! palisade-coalesce's `RedisCache` on a real Redis, two figures:
//!
//! 1. Wake-up latency: how long after the leader's value is computed the
//!    waiters in another process have it, woken by pub/sub, against the
//!    same waiters polling every 20 ms.
//! 2. Fresh-hit throughput: 64 tasks reading a fresh key through the cache,
//!    against 64 tasks sending raw `GET`s of the stored value on the same
//!    kind of connection.
//!
//! ```sh
//! cargo run --release -p palisade-bench --example coalesce_redis
//! ```
//!
//! Uses `REDIS_URL` (default `redis://127.0.0.1:6379`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use palisade_coalesce::{Freshness, RedisCache, RedisSettings};
use redis::AsyncCommands;

type Cache = RedisCache<redis::aio::MultiplexedConnection, std::convert::Infallible>;

const ROUNDS: usize = 200;
const WAITERS: usize = 10;
const TASKS: usize = 64;

async fn cache(
    client: &redis::Client,
    settings: RedisSettings,
) -> Result<Cache, redis::RedisError> {
    let connection = client.get_multiplexed_async_connection().await?;
    RedisCache::connect(client, connection, settings).await
}

/// Wake-up latencies over many rounds: a leader in one process computes for
/// 20 ms; waiters in another note how long after the computation ended they
/// got the value.
async fn wake_up_latencies(
    client: &redis::Client,
    settings: &RedisSettings,
) -> Result<Vec<Duration>, redis::RedisError> {
    let leader = cache(client, settings.clone()).await?;
    let waiters = cache(client, settings.clone()).await?;
    let mut latencies = Vec::new();
    for round in 0..ROUNDS {
        let key = format!("wake-{round}");
        let computed: Arc<Mutex<Option<Instant>>> = Arc::default();
        let stamp = computed.clone();
        let leading = {
            let (leader, key) = (leader.clone(), key.clone());
            tokio::spawn(async move {
                leader
                    .get_with(&key, move || async move {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        *stamp.lock().unwrap() = Some(Instant::now());
                        Ok(Bytes::from_static(b"value"))
                    })
                    .await
            })
        };
        // Let the leader take the lock first.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let waiting: Vec<_> = (0..WAITERS)
            .map(|_| {
                let (waiters, key) = (waiters.clone(), key.clone());
                tokio::spawn(async move {
                    waiters
                        .get_with(&key, || async { Ok(Bytes::from_static(b"not the leader")) })
                        .await
                        .map(|_| Instant::now())
                })
            })
            .collect();
        leading.await.expect("leader").expect("value");
        let computed = computed.lock().unwrap().expect("computed");
        for waiter in waiting {
            let got = waiter.await.expect("waiter").expect("value");
            latencies.push(got.saturating_duration_since(computed));
        }
    }
    latencies.sort_unstable();
    Ok(latencies)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let client = redis::Client::open(url.as_str())?;
    let run = fastrand::u64(..);
    let freshness = Freshness::new(Duration::from_secs(60)).early_refresh(0.0);

    let pubsub = RedisSettings::new(freshness).prefix(&format!("palisade-bench:{run}:pubsub"));
    let woken = wake_up_latencies(&client, &pubsub).await?;
    let polling = RedisSettings::new(freshness)
        .prefix(&format!("palisade-bench:{run}:poll"))
        .wake_ups(false)
        .poll_interval(Duration::from_millis(20));
    let polled = wake_up_latencies(&client, &polling).await?;
    println!(
        "wake-up after the value is computed ({} waiters):",
        woken.len()
    );
    println!(
        "  pub/sub          p50 {:.3} ms  p99 {:.3} ms",
        palisade_bench::percentile_ms(&woken, 0.5),
        palisade_bench::percentile_ms(&woken, 0.99)
    );
    println!(
        "  20 ms polling    p50 {:.3} ms  p99 {:.3} ms",
        palisade_bench::percentile_ms(&polled, 0.5),
        palisade_bench::percentile_ms(&polled, 0.99)
    );

    // Fresh hits: the value is stored once, then read for 3 s.
    let hits = cache(&client, pubsub.clone()).await?;
    hits.get_with("hot", || async {
        Ok(Bytes::from_static(b"the trending list"))
    })
    .await?;
    let deadline = Instant::now() + Duration::from_secs(3);
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let hits = hits.clone();
            tokio::spawn(async move {
                let mut reads = 0u64;
                while Instant::now() < deadline {
                    hits.get_with("hot", || async { Ok(Bytes::new()) })
                        .await
                        .expect("a hit");
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let mut cached = 0;
    for task in tasks {
        cached += task.await?;
    }
    let raw_connection = client.get_multiplexed_async_connection().await?;
    let value_key = format!("{{palisade-bench:{run}:pubsub:hot}}:value");
    let deadline = Instant::now() + Duration::from_secs(3);
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (mut connection, key) = (raw_connection.clone(), value_key.clone());
            tokio::spawn(async move {
                let mut reads = 0u64;
                while Instant::now() < deadline {
                    let _: Vec<u8> = connection.get(&key).await.expect("a GET");
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let mut raw = 0;
    for task in tasks {
        raw += task.await?;
    }
    #[allow(clippy::cast_precision_loss)]
    let (cached, raw) = (cached as f64 / 3.0, raw as f64 / 3.0);
    println!(
        "fresh hits ({TASKS} tasks): cache {cached:.0}/s, raw GET {raw:.0}/s, cache / GET = {:.0}%",
        cached / raw * 100.0
    );
    Ok(())
}
