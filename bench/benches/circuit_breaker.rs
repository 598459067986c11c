//! palisade-circuit-breaker against `failsafe` and
//! `tower-resilience-circuitbreaker`, in front of the same no-op service,
//! closed, on one thread and on two threads sharing one breaker.
//!
//! Each breaker is built once, outside the timed loop. A call is `call`
//! plus polling the returned future to completion with a no-op waker (the
//! inner future is ready at once, so no runtime is involved). `bare` is the
//! no-op service alone: a breaker's cost is its time minus `bare`'s.
//! `palisade_keyed` is a keyed layer with eight keys (one breaker per
//! host, say): each call also finds its key's breaker in the registry.
//!
//! `closed_ready_call` drives the tower services as users do:
//! `ServiceExt::ready(&mut service).await`, then `service.call(request)
//! .await`, in a loop inside one `block_on` of a current-thread runtime, so
//! `poll_ready` is counted too. `failsafe` is not a tower service and has
//! no such case.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use palisade_bench::{complete, noop, on_two_threads, ready_then_call};
use tower::{Layer, Service, service_fn};

/// One way of making a call through a breaker, cloneable per thread.
trait Caller: Clone + Send + 'static {
    fn call(&mut self, request: u64) -> bool;
}

#[derive(Clone)]
struct Tower<S>(S);

impl<S> Caller for Tower<S>
where
    S: Service<u64> + Clone + Send + 'static,
{
    fn call(&mut self, request: u64) -> bool {
        complete(self.0.call(request)).is_ok()
    }
}

#[derive(Clone)]
struct Failsafe<B>(B);

impl<B> Caller for Failsafe<B>
where
    B: failsafe::futures::CircuitBreaker + Clone + Send + 'static,
{
    fn call(&mut self, request: u64) -> bool {
        complete(self.0.call(noop(request))).is_ok()
    }
}

/// One thread's way to call.
type Call = Box<dyn FnMut(u64) -> bool + Send>;
/// Makes a `Call` per thread, all through one shared breaker.
type MakeCall = Box<dyn Fn() -> Call + Sync>;

fn callers() -> Vec<(&'static str, MakeCall)> {
    fn boxed<C: Caller + Sync>(caller: C) -> MakeCall {
        Box::new(move || {
            let mut caller = caller.clone();
            Box::new(move |request| caller.call(request))
        })
    }
    let failsafe = failsafe::Config::new().build();
    vec![
        ("bare", boxed(Tower(service_fn(noop)))),
        ("palisade", boxed(Tower(palisade()))),
        ("palisade_leaked", boxed(Tower(palisade_leaked()))),
        ("palisade_keyed", boxed(Tower(palisade_keyed()))),
        ("failsafe", boxed(Failsafe(failsafe))),
        ("tower_resilience", boxed(Tower(tower_resilience()))),
    ]
}

/// The window the figures use: the last 100 calls.
fn config() -> palisade_circuit_breaker::Config {
    palisade_circuit_breaker::Config::builder()
        .sliding_window(palisade_circuit_breaker::SlidingWindow::Count(100))
        .build()
        .expect("valid config")
}

fn palisade() -> impl Service<u64, Response = u64, Future: Send> + Clone + Send + Sync + 'static {
    palisade_circuit_breaker::CircuitBreakerLayer::new(config()).layer(service_fn(noop))
}

/// The same breaker, leaked (`CircuitBreakerLayer::leak`): its calls
/// count no references.
fn palisade_leaked()
-> impl Service<u64, Response = u64, Future: Send> + Clone + Send + Sync + 'static {
    palisade_circuit_breaker::CircuitBreakerLayer::new(config())
        .leak()
        .layer(service_fn(noop))
}

/// One breaker per key, as for a client of several hosts: eight keys, the
/// request's number modulo 8, each with the same window.
fn palisade_keyed()
-> impl Service<u64, Response = u64, Future: Send> + Clone + Send + Sync + 'static {
    palisade_circuit_breaker::KeyedCircuitBreakerLayer::new(config(), |request: &u64| request % 8)
        .layer(service_fn(noop))
}

fn tower_resilience()
-> impl Service<u64, Response = u64, Future: Send> + Clone + Send + Sync + 'static {
    tower_resilience_circuitbreaker::CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_size(100)
        .build()
        .expect("valid config")
        .layer(service_fn(noop))
}

fn compare(c: &mut Criterion) {
    let mut group = c.benchmark_group("peers-circuit_breaker");
    for (name, make) in callers() {
        group.bench_function(BenchmarkId::new(name, "closed_1_thread"), |b| {
            let mut call = make();
            let mut request = 0;
            b.iter(|| {
                request += 1;
                black_box(call(black_box(request)))
            });
        });
        on_two_threads(
            &mut group,
            BenchmarkId::new(name, "closed_2_threads"),
            || {
                let mut call = make();
                move |request| {
                    black_box(call(request));
                }
            },
        );
    }
    let case = |name| BenchmarkId::new(name, "closed_ready_call");
    ready_then_call(&mut group, case("bare"), service_fn(noop));
    ready_then_call(&mut group, case("palisade"), palisade());
    ready_then_call(&mut group, case("palisade_leaked"), palisade_leaked());
    ready_then_call(&mut group, case("tower_resilience"), tower_resilience());
    group.finish();
}

criterion_group!(circuit_breaker, compare);
criterion_main!(circuit_breaker);
