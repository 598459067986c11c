//! A fleet of processes hammering one bucket in Redis, and the count of what
//! it admitted. Shared by the `accuracy` example (the figure) and
//! `tests/accuracy.rs` (the check with generous bounds).
//!
//! The parent starts each process with the run's settings in an environment
//! variable; each process runs its tasks from an agreed start time and
//! prints one line: admitted, decisions, and the wall-clock microseconds of
//! its first request and last answer. Redis's `TIME` and the processes read
//! the same machine clock, so every decision falls between the earliest
//! first request and the latest last answer: over that span the bucket may
//! admit at most `capacity + rate × span`.
//!
//! With `leasing`, each process decides through a `LeasingStore` in front
//! of its `RedisStore`. Every token is still taken from Redis before it is
//! spent, and no lease is older than the run, so the bound is the same.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use palisade_token_bucket::{Bucket, FailurePolicy, Leasing, LeasingStore, RedisStore, Store};

const CHILD: &str = "PALISADE_ACCURACY_CHILD";
const LINE: &str = "accuracy-child";

/// One run's settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Run {
    pub(crate) processes: u32,
    pub(crate) tasks: u32,
    pub(crate) duration: Duration,
    pub(crate) capacity: u32,
    pub(crate) rate: f64,
    /// Whether each process leases its tokens.
    pub(crate) leasing: bool,
}

/// What the fleet did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outcome {
    pub(crate) admitted: u64,
    pub(crate) decisions: u64,
    /// From the first request sent to the last answer received.
    pub(crate) span: Duration,
}

impl Outcome {
    /// The most a token bucket may admit over the span.
    pub(crate) fn bound(&self, run: &Run) -> f64 {
        f64::from(run.capacity) + run.rate * self.span.as_secs_f64()
    }
}

fn micros(time: SystemTime) -> u64 {
    u64::try_from(
        time.duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_micros(),
    )
    .expect("in range")
}

/// Runs the fleet: `processes` copies of `exe args`, each a child.
pub(crate) fn run_fleet(exe: &Path, args: &[&str], run: &Run) -> Outcome {
    let prefix = format!("palisade-accuracy:{}", fastrand::u64(..));
    // Every process starts together, after they all had time to connect.
    let start = micros(SystemTime::now()) + 1_500_000;
    let settings = format!(
        "{prefix} {start} {} {} {} {} {}",
        run.duration.as_micros(),
        run.tasks,
        run.capacity,
        run.rate,
        run.leasing
    );
    let children: Vec<_> = (0..run.processes)
        .map(|_| {
            Command::new(exe)
                .args(args)
                .env(CHILD, &settings)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("a child process")
        })
        .collect();
    let (mut admitted, mut decisions, mut first, mut last) = (0, 0, u64::MAX, 0);
    for child in children {
        let output = child.wait_with_output().expect("the child's output");
        assert!(output.status.success(), "a child failed: {output:?}");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout
            .lines()
            .find_map(|line| line.split_once(LINE).map(|(_, count)| count))
            .expect("the child's count");
        let numbers: Vec<u64> = line
            .split_whitespace()
            .map(|n| n.parse().expect("a number"))
            .collect();
        admitted += numbers[0];
        decisions += numbers[1];
        first = first.min(numbers[2]);
        last = last.max(numbers[3]);
    }
    Outcome {
        admitted,
        decisions,
        span: Duration::from_micros(last.saturating_sub(first)),
    }
}

/// In a child process (the environment says so): hammers the bucket and
/// prints the count; returns whether this process was a child.
pub(crate) async fn child_if_asked() -> bool {
    let Ok(settings) = std::env::var(CHILD) else {
        return false;
    };
    let fields: Vec<&str> = settings.split_whitespace().collect();
    let prefix = fields[0].to_owned();
    let start: u64 = fields[1].parse().expect("start");
    let end = start + fields[2].parse::<u64>().expect("duration");
    let tasks: u32 = fields[3].parse().expect("tasks");
    let bucket = Bucket::new(
        fields[4].parse().expect("capacity"),
        fields[5].parse().expect("rate"),
    )
    .expect("a valid bucket");
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let connection = redis::Client::open(url.as_str())
        .expect("a Redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("a reachable Redis");
    let store = RedisStore::new(connection, FailurePolicy::Propagate)
        .prefix(&prefix)
        .timeout(Duration::from_secs(2));
    let wait = start.saturating_sub(micros(SystemTime::now()));
    tokio::time::sleep(Duration::from_micros(wait)).await;
    let counts = if fields[6].parse().expect("leasing") {
        let leasing = LeasingStore::new(store, Leasing::new()).expect("valid settings");
        let counts = hammer(&leasing, &bucket, tasks, end).await;
        leasing.give_back().await;
        counts
    } else {
        hammer(&store, &bucket, tasks, end).await
    };
    let (admitted, decisions, first, last) = counts;
    println!("{LINE} {admitted} {decisions} {first} {last}");
    true
}

/// `tasks` tasks deciding one key until `end`: admitted, decisions, and
/// the first request and last answer.
async fn hammer<St: Store>(
    store: &St,
    bucket: &Bucket,
    tasks: u32,
    end: u64,
) -> (u64, u64, u64, u64) {
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let store = store.clone();
            let bucket = *bucket;
            tokio::spawn(async move {
                let (mut admitted, mut decisions, mut first, mut last) =
                    (0u64, 0u64, u64::MAX, 0u64);
                loop {
                    let sent = micros(SystemTime::now());
                    if sent >= end {
                        break;
                    }
                    let decision = store
                        .decide("one-key", &bucket, 1)
                        .await
                        .expect("a decision");
                    first = first.min(sent);
                    last = last.max(micros(SystemTime::now()));
                    admitted += u64::from(decision.is_allowed());
                    decisions += 1;
                }
                (admitted, decisions, first, last)
            })
        })
        .collect();
    let (mut admitted, mut decisions, mut first, mut last) = (0, 0, u64::MAX, 0);
    for handle in handles {
        let (a, d, f, l) = handle.await.expect("a task");
        admitted += a;
        decisions += d;
        first = first.min(f);
        last = last.max(l);
    }
    (admitted, decisions, first, last)
}
