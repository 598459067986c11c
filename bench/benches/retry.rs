//! palisade-retry against `tower-resilience-retry`, in front of the same
//! no-op service, on the path that matters most: the call succeeds the
//! first time.
//!
//! Each layer is built once, outside the timed loop, with 3 attempts and
//! exponential backoff; ours also has its default retry budget, which every
//! call pays into. A call is `call` plus polling the returned future to
//! completion with a no-op waker. `bare` is the no-op service alone: a
//! layer's cost is its time minus `bare`'s.
//!
//! `palisade_leaked` is the same layer [leaked](palisade_retry::RetryLayer::leak)
//! (built once for the process): its calls reach the layer's state by a
//! plain reference instead of a counted one.
//!
//! `success_ready_call` drives the same services as users drive a tower
//! service: `ready().await`, then `call().await`, in one `block_on` of a
//! current-thread runtime, so `poll_ready` is counted too.
//!
//! `success_2_threads`: two threads, each calling its own clone of one
//! service at once, as `success` does (palisade's only: tower-resilience's
//! future needs a runtime on the calling thread).

use std::convert::Infallible;
use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use palisade_bench::{complete, noop, on_two_threads, ready_then_call};
use tower::{Layer, Service, service_fn};

fn bench_one<S>(
    c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    mut service: S,
) where
    S: Service<u64>,
{
    c.bench_function(BenchmarkId::new(name, "success"), |b| {
        let mut request = 0;
        b.iter(|| {
            request += 1;
            black_box(complete(service.call(black_box(request))).is_ok())
        });
    });
}

/// Clones of `service` called on two threads at once, as `success` calls.
fn two_threads<S>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    service: &S,
) where
    S: Service<u64> + Clone + Send + Sync,
{
    on_two_threads(group, BenchmarkId::new(name, "success_2_threads"), || {
        let mut service = service.clone();
        move |request| {
            black_box(complete(service.call(request)).is_ok());
        }
    });
}

fn compare(c: &mut Criterion) {
    // tower-resilience's layer may touch tokio from its future.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let _entered = runtime.enter();

    let layer = palisade_retry::RetryLayer::new(
        palisade_retry::Config::builder()
            .max_attempts(3)
            .build()
            .expect("valid config"),
    );
    let palisade = layer.layer(service_fn(noop));
    let leaked = layer.leak().layer(service_fn(noop));
    let resilience = tower_resilience_retry::RetryLayer::<u64, u64, Infallible>::builder()
        .max_attempts(3)
        .exponential_backoff(Duration::from_millis(50))
        .build()
        .layer(service_fn(noop));

    let mut group = c.benchmark_group("peers-retry");
    bench_one(&mut group, "bare", service_fn(noop));
    bench_one(&mut group, "palisade", palisade.clone());
    bench_one(&mut group, "palisade_leaked", leaked.clone());
    bench_one(&mut group, "tower_resilience", resilience.clone());
    two_threads(&mut group, "bare", &service_fn(noop));
    two_threads(&mut group, "palisade", &palisade);
    two_threads(&mut group, "palisade_leaked", &leaked);
    let case = |name| BenchmarkId::new(name, "success_ready_call");
    ready_then_call(&mut group, case("bare"), service_fn(noop));
    ready_then_call(&mut group, case("palisade"), palisade);
    ready_then_call(&mut group, case("palisade_leaked"), leaked);
    ready_then_call(&mut group, case("tower_resilience"), resilience);
    group.finish();
}

criterion_group!(retry, compare);
criterion_main!(retry);
