//! Decisions per second of palisade's `RedisStore` and `LeasingStore`, 64
//! tasks sharing one multiplexed connection, against `redis-benchmark`
//! running `EVALSHA` of the same script with 64 clients, one command at a
//! time and pipelined 16 deep (the Redis ceiling), in the same run.
//!
//! ```sh
//! cargo run --release -p palisade-bench --example redis_throughput -- [seconds]
//! ```
//!
//! Uses `REDIS_URL` (default `redis://127.0.0.1:6379`) and keys under
//! `palisade-bench:`. Prints decisions per second and the p50 / p99
//! latency of each, and the ratios.

use std::time::{Duration, Instant};

use palisade_token_bucket::{Bucket, FailurePolicy, Leasing, LeasingStore, RedisStore, Store};
use redis::aio::MultiplexedConnection;

const TASKS: usize = 64;

/// Decisions per second, p50 and p99 in milliseconds.
type Figures = (f64, f64, f64);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds: u64 = std::env::args().nth(1).map_or(Ok(5), |s| s.parse())?;
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let client = redis::Client::open(url.as_str())?;
    let connection = client.get_multiplexed_async_connection().await?;
    let store = RedisStore::new(connection.clone(), FailurePolicy::Propagate)
        .prefix("palisade-bench")
        .timeout(Duration::from_secs(1));
    let bucket = Bucket::new(1_000_000_000, 1e9)?;

    let plain = measure(&store, "hot", &bucket, seconds).await?;
    print_figures("palisade RedisStore", plain);
    let leasing = LeasingStore::new(store, Leasing::new())?;
    let leased = measure(&leasing, "leased", &bucket, seconds).await?;
    leasing.give_back().await;
    print_figures("palisade LeasingStore", leased);

    let requests = ((plain.0 * seconds as f64) as u64).max(100_000);
    let one_at_a_time = redis_benchmark(&url, connection.clone(), &bucket, requests, 1).await?;
    print_figures("redis-benchmark EVALSHA", one_at_a_time);
    let pipelined = redis_benchmark(&url, connection, &bucket, requests * 4, 16).await?;
    print_figures("redis-benchmark EVALSHA -P 16", pipelined);

    println!(
        "RedisStore / redis-benchmark = {:.0}%; RedisStore / -P 16 = {:.0}%; LeasingStore / -P 16 = {:.1}x",
        plain.0 / one_at_a_time.0 * 100.0,
        plain.0 / pipelined.0 * 100.0,
        leased.0 / pipelined.0
    );
    Ok(())
}

fn print_figures(name: &str, (rate, p50, p99): Figures) {
    println!("{name:<30} {rate:>11.0} decisions/s  p50 {p50:.4} ms  p99 {p99:.4} ms");
}

/// `TASKS` tasks deciding `key` through `store` on one connection for
/// `seconds`, after a warm-up that loads the script.
async fn measure<St: Store>(
    store: &St,
    key: &'static str,
    bucket: &Bucket,
    seconds: u64,
) -> Result<Figures, Box<dyn std::error::Error>> {
    for _ in 0..1000 {
        store.decide(key, bucket, 1).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let store = store.clone();
        let bucket = *bucket;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let start = Instant::now();
                store.decide(key, &bucket, 1).await.expect("a decision");
                latencies.push(start.elapsed());
            }
            latencies
        }));
    }
    let started = Instant::now();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let percentile = |p: f64| {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let index = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies[index].as_secs_f64() * 1000.0
    };
    #[allow(clippy::cast_precision_loss)]
    let rate = latencies.len() as f64 / elapsed;
    Ok((rate, percentile(0.5), percentile(0.99)))
}

/// `redis-benchmark` running the decision script `requests` times with 64
/// clients, `pipeline` commands deep.
async fn redis_benchmark(
    url: &str,
    mut redis: MultiplexedConnection,
    bucket: &Bucket,
    requests: u64,
    pipeline: u32,
) -> Result<Figures, Box<dyn std::error::Error>> {
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(RedisStore::<MultiplexedConnection>::script_source())
        .query_async(&mut redis)
        .await?;
    let address = url.trim_start_matches("redis://").trim_end_matches('/');
    let (host, port) = address.rsplit_once(':').unwrap_or((address, "6379"));
    let output = tokio::process::Command::new("redis-benchmark")
        .args(["-h", host, "-p", port, "-c", "64", "--csv"])
        .args(["-n", &requests.to_string(), "-P", &pipeline.to_string()])
        .args(["EVALSHA", &sha, "1", "{palisade-bench:hot}"])
        .arg(bucket.interval().as_nanos().to_string())
        .args([bucket.capacity().to_string(), "1".to_owned()])
        .output()
        .await?;
    let csv = String::from_utf8(output.stdout)?;
    let row = csv.lines().last().ok_or("no output from redis-benchmark")?;
    let fields: Vec<f64> = row
        .split(',')
        .skip(1)
        .map(|field| field.trim_matches('"').parse().unwrap_or(f64::NAN))
        .collect();
    Ok((fields[0], fields[3], fields[5]))
}
