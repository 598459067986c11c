//! Decisions per second of palisade's `RedisStore`, 64 tasks sharing one
//! multiplexed connection, against `redis-benchmark` running `EVALSHA` of
//! the same script with 64 clients, in the same run.
//!
//! ```sh
//! cargo run --release -p palisade-bench --example redis_throughput -- [seconds]
//! ```
//!
//! Uses `REDIS_URL` (default `redis://127.0.0.1:6379`) and a key under
//! `palisade-bench:`. Prints decisions per second and the p50 / p99
//! latency of both, and their ratio.

use std::time::{Duration, Instant};

use palisade_token_bucket::{Bucket, FailurePolicy, RedisStore, Store};

const TASKS: usize = 64;

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

    // Warm up: loads the script, fills the connection.
    for _ in 0..1000 {
        store.decide("hot", &bucket, 1).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let start = Instant::now();
                store.decide("hot", &bucket, 1).await.expect("a decision");
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
    let ours = latencies.len() as f64 / elapsed;
    println!(
        "palisade RedisStore   {ours:>10.0} decisions/s  p50 {:.3} ms  p99 {:.3} ms  ({TASKS} tasks, one multiplexed connection)",
        percentile(0.5),
        percentile(0.99)
    );

    let mut redis = connection;
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(RedisStore::<redis::aio::MultiplexedConnection>::script_source())
        .query_async(&mut redis)
        .await?;
    let address = url.trim_start_matches("redis://").trim_end_matches('/');
    let (host, port) = address.rsplit_once(':').unwrap_or((address, "6379"));
    let requests = ((ours * seconds as f64) as u64).max(100_000).to_string();
    let output = tokio::process::Command::new("redis-benchmark")
        .args(["-h", host, "-p", port, "-c", "64", "-n", &requests, "--csv"])
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
    let (theirs, p50, p99) = (fields[0], fields[3], fields[5]);
    println!(
        "redis-benchmark EVALSHA {theirs:>8.0} requests/s   p50 {p50:.3} ms  p99 {p99:.3} ms  (64 clients)"
    );
    println!("palisade / redis-benchmark = {:.0}%", ours / theirs * 100.0);
    Ok(())
}
