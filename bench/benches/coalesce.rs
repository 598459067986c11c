//! palisade-coalesce's single flight against `async_singleflight` and
//! moka's `get_with`: 100 concurrent callers of one cold key, the
//! computation yielding once (so callers can join it) before answering.
//!
//! One iteration is a fresh key, 100 spawned callers on a 2-worker runtime,
//! and waiting for all of them; the time is per 100 callers. Each peer is
//! used as its documentation shows; moka's cache is the coalescer there.
//!
//! And a miss on a full cache of 10,000 entries, the cost of storing a
//! value and making room for it, against moka's bounded cache.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use palisade_coalesce::Coalescer;

const CALLERS: usize = 100;

async fn compute(key: u64) -> Result<u64, Infallible> {
    tokio::task::yield_now().await;
    Ok(key)
}

fn compare(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let mut group = c.benchmark_group("peers-coalesce");

    let ours: Coalescer<u64, u64, Infallible> = Coalescer::new(100_000);
    let theirs = Arc::new(async_singleflight::Group::<String, u64, Infallible>::new());
    let moka: moka::future::Cache<u64, u64> = moka::future::Cache::new(1_000_000);
    let mut key = 0u64;

    group.bench_function(BenchmarkId::new("palisade", "100_callers"), |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    key += 1;
                    let callers: Vec<_> = (0..CALLERS)
                        .map(|_| {
                            let ours = ours.clone();
                            tokio::spawn(async move { ours.run(key, move || compute(key)).await })
                        })
                        .collect();
                    for caller in callers {
                        caller.await.expect("joined").expect("a value");
                    }
                }
                start.elapsed().max(Duration::from_nanos(1))
            })
        });
    });
    group.bench_function(BenchmarkId::new("async_singleflight", "100_callers"), |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    key += 1;
                    let name = key.to_string();
                    let callers: Vec<_> = (0..CALLERS)
                        .map(|_| {
                            let (theirs, name) = (theirs.clone(), name.clone());
                            tokio::spawn(async move { theirs.work(&name, compute(key)).await })
                        })
                        .collect();
                    for caller in callers {
                        let _ = caller.await.expect("joined");
                    }
                }
                start.elapsed().max(Duration::from_nanos(1))
            })
        });
    });
    group.bench_function(BenchmarkId::new("moka", "100_callers"), |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    key += 1;
                    let callers: Vec<_> = (0..CALLERS)
                        .map(|_| {
                            let moka = moka.clone();
                            tokio::spawn(async move {
                                moka.get_with(key, async move { compute(key).await.unwrap_or(0) })
                                    .await
                            })
                        })
                        .collect();
                    for caller in callers {
                        caller.await.expect("joined");
                    }
                }
                start.elapsed().max(Duration::from_nanos(1))
            })
        });
    });
    group.finish();
}

/// A miss on a full cache of 10,000 fresh entries (each iteration a new
/// key, so each stores a value and makes room for it), against moka's
/// bounded cache used alike.
fn miss_at_capacity(c: &mut Criterion) {
    const CAPACITY: u64 = 10_000;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let mut group = c.benchmark_group("peers-cache");
    let ours: palisade_coalesce::Cache<u64, u64, Infallible> = palisade_coalesce::Cache::new(
        usize::try_from(CAPACITY).expect("small"),
        palisade_coalesce::Freshness::new(Duration::from_secs(3600)),
    );
    let moka: moka::future::Cache<u64, u64> = moka::future::Cache::new(CAPACITY);
    runtime.block_on(async {
        for key in 0..CAPACITY {
            ours.get_with(key, move || compute(key))
                .await
                .expect("a value");
            moka.get_with(key, async move { key }).await;
        }
    });
    let mut key = CAPACITY;
    group.bench_function(BenchmarkId::new("palisade", "miss_at_capacity_10k"), |b| {
        b.iter(|| {
            key += 1;
            runtime.block_on(ours.get_with(key, move || compute(key)))
        });
    });
    group.bench_function(BenchmarkId::new("moka", "miss_at_capacity_10k"), |b| {
        b.iter(|| {
            key += 1;
            runtime.block_on(moka.get_with(key, async move { key }))
        });
    });
    group.finish();
}

criterion_group!(coalesce, compare, miss_at_capacity);
criterion_main!(coalesce);
