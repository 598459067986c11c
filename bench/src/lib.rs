//! What every benchmark in `benches/` shares: the no-op service the layers
//! wrap, a way to run a call's future to completion without a runtime, a
//! way to drive a service as its users do, and two threads calling at
//! once.

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::thread;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId};
use tower::{Service, ServiceExt};

/// The wrapped service: answers its request at once.
///
/// # Errors
///
/// Never.
pub fn noop(request: u64) -> Ready<Result<u64, Infallible>> {
    ready(Ok(request))
}

/// Polls a future to completion on this thread with a no-op waker; the
/// benchmarked futures are ready at once, so no runtime is involved.
pub fn complete<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        std::hint::spin_loop();
    }
}

/// Benchmarks two threads calling at once, each with its own `make()`
/// (a clone of one service, say, sharing its layer's state): the time per
/// call each thread saw, as both made `iters` calls side by side.
pub fn on_two_threads<C: FnMut(u64) + Send>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    id: BenchmarkId,
    make: impl Fn() -> C + Sync,
) {
    group.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            thread::scope(|scope| {
                for _ in 0..2 {
                    let mut call = make();
                    scope.spawn(move || {
                        for request in 0..iters {
                            call(black_box(request));
                        }
                    });
                }
            });
            start.elapsed().max(Duration::from_nanos(1))
        });
    });
}

/// Benchmarks `service` driven as users drive a tower service:
/// `ServiceExt::ready(&mut service).await`, then `call(request).await`, in
/// a loop inside one `block_on` of a current-thread runtime, so
/// `poll_ready` is counted as well as the call.
///
/// # Panics
///
/// When no runtime can be built.
pub fn ready_then_call<S: Service<u64>>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    id: BenchmarkId,
    mut service: S,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
    group.bench_function(id, |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let start = Instant::now();
                for request in 0..iters {
                    let called = match service.ready().await {
                        Ok(ready) => ready.call(black_box(request)).await.is_ok(),
                        Err(_) => false,
                    };
                    black_box(called);
                }
                start.elapsed()
            })
        });
    });
}

/// The `p` quantile (0 to 1, nearest rank) of `sorted` durations, in
/// milliseconds, as the run-by-script examples report them.
///
/// # Panics
///
/// When `sorted` is empty.
#[must_use]
pub fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}
