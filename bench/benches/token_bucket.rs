//! palisade-token-bucket's local store against governor's keyed limiter:
//! one decision for a hot key, and for keys rotating over 1,000. The hot
//! key is also measured against governor's direct (unkeyed) limiter, the
//! floor a one-bucket limiter (`key::global`) is held to.
//!
//! Both limiters are built once, with a quota so large that every request
//! is admitted (the common case), and both take the key by reference. Both
//! read the processor's counter through `quanta`.
//!
//! `global_ready_call` is the layer with `key::global` in front of a no-op
//! service, driven as users drive a tower service (`ready().await`, then
//! `call().await`, in one `block_on` of a current-thread runtime); `bare`
//! is the no-op service alone, and governor's direct limiter, which has no
//! tower layer, is the floor the layer's cost is held to.

use std::hint::black_box;
use std::num::NonZeroU32;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use governor::{Quota, RateLimiter};
use palisade_bench::{noop, ready_then_call};
use palisade_token_bucket::{Bucket, LocalStore, RateLimitLayer, key};
use tower::{Layer, service_fn};

const RATE: u32 = 1_000_000_000;

fn compare(c: &mut Criterion) {
    let keys: Vec<String> = (0..1000).map(|i| format!("user-{i}")).collect();
    let mut group = c.benchmark_group("peers-token_bucket");

    let store = LocalStore::new(10_000);
    let bucket = Bucket::new(RATE, f64::from(RATE)).expect("valid bucket");
    group.bench_function(BenchmarkId::new("palisade", "one_key"), |b| {
        b.iter(|| {
            black_box(
                store
                    .decide_now(black_box(&keys[0]), &bucket, 1)
                    .is_allowed(),
            )
        });
    });
    let mut next = 0;
    group.bench_function(BenchmarkId::new("palisade", "1000_keys"), |b| {
        b.iter(|| {
            next = (next + 1) % keys.len();
            black_box(
                store
                    .decide_now(black_box(&keys[next]), &bucket, 1)
                    .is_allowed(),
            )
        });
    });

    let pinned = store.pin("everyone");
    group.bench_function(BenchmarkId::new("palisade_pinned", "one_key"), |b| {
        b.iter(|| black_box(pinned.decide_now(&bucket, 1).is_allowed()));
    });
    let case = |name| BenchmarkId::new(name, "global_ready_call");
    ready_then_call(&mut group, case("bare"), service_fn(noop));
    let layer = RateLimitLayer::new(store.clone(), bucket, key::global("all"));
    ready_then_call(&mut group, case("palisade"), layer.layer(service_fn(noop)));

    let quota = Quota::per_second(NonZeroU32::new(RATE).expect("non-zero"));
    let governor = RateLimiter::keyed(quota);
    group.bench_function(BenchmarkId::new("governor", "one_key"), |b| {
        b.iter(|| black_box(governor.check_key(black_box(&keys[0])).is_ok()));
    });
    let direct = RateLimiter::direct(quota);
    group.bench_function(BenchmarkId::new("governor_direct", "one_key"), |b| {
        b.iter(|| black_box(direct.check().is_ok()));
    });
    let mut next = 0;
    group.bench_function(BenchmarkId::new("governor", "1000_keys"), |b| {
        b.iter(|| {
            next = (next + 1) % keys.len();
            black_box(governor.check_key(black_box(&keys[next])).is_ok())
        });
    });
    group.finish();
}

criterion_group!(token_bucket, compare);
criterion_main!(token_bucket);
