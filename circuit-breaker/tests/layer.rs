//! The tower layer: rejection from `call`, readiness delegated, permits in
//! the response future, state shared by every clone, and a leaked layer
//! alike.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use palisade_circuit_breaker::{
    AtOnce, CircuitBreaker, CircuitBreakerLayer, Classify, Config, Open, Outcome, Permit, Settle,
    SlidingWindow, State,
};
use tokio::sync::oneshot;
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};
use tower_test::{assert_request_eq, mock};

fn config(calls: u32) -> Config {
    Config::builder()
        .sliding_window(SlidingWindow::Count(calls))
        .minimum_calls(calls)
        .open_duration(Duration::from_secs(10))
        .jitter(0.0)
        .build()
        .unwrap()
}

async fn failing(_: ()) -> Result<(), BoxError> {
    Err("down".into())
}

#[tokio::test(start_paused = true)]
async fn opens_rejects_with_the_wait_then_probes_and_closes() {
    let layer = CircuitBreakerLayer::new(config(3));
    let breaker = layer.breaker().clone();
    let healthy = Arc::new(AtomicBool::new(false));
    let flag = healthy.clone();
    let service = layer.layer(service_fn(move |(): ()| {
        let healthy = flag.load(Ordering::SeqCst);
        async move {
            if healthy {
                Ok(())
            } else {
                Err::<(), BoxError>("down".into())
            }
        }
    }));
    for _ in 0..3 {
        let err = service.clone().oneshot(()).await.unwrap_err();
        assert!(
            !err.is::<Open>(),
            "the dependency's own error passes through"
        );
    }
    assert_eq!(breaker.state(), State::Open);
    let err = service.clone().oneshot(()).await.unwrap_err();
    let open = err.downcast_ref::<Open>().expect("an Open error");
    assert_eq!(open.retry_after(), Some(Duration::from_secs(10)));
    let refusal = palisade_hints::Refusal::find(&*err).expect("the shared refusal marker");
    assert!(refusal.is_circuit_open());
    assert_eq!(refusal.retry_after(), Some(Duration::from_secs(10)));

    tokio::time::advance(Duration::from_secs(4)).await;
    let open = service.clone().oneshot(()).await.unwrap_err();
    assert_eq!(
        open.downcast_ref::<Open>().unwrap().retry_after(),
        Some(Duration::from_secs(6))
    );

    tokio::time::advance(Duration::from_secs(6)).await;
    healthy.store(true, Ordering::SeqCst);
    service.clone().oneshot(()).await.unwrap();
    assert_eq!(breaker.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_probe_future_frees_its_permit_without_recording() {
    let layer = CircuitBreakerLayer::new(config(1));
    let breaker = layer.breaker().clone();
    let mut service = layer.layer(service_fn(|gate: oneshot::Receiver<bool>| async move {
        match gate.await {
            Ok(true) => Ok(()),
            _ => Err::<(), BoxError>("down".into()),
        }
    }));
    let (fail, gate) = oneshot::channel();
    fail.send(false).unwrap();
    service.ready().await.unwrap().call(gate).await.unwrap_err();
    assert_eq!(breaker.state(), State::Open);
    tokio::time::advance(Duration::from_secs(10)).await;

    // The probe is admitted when called, before it is polled.
    let (_keep, gate) = oneshot::channel::<bool>();
    let probe = service.ready().await.unwrap().call(gate);
    let (_, gate) = oneshot::channel::<bool>();
    let refused = service.ready().await.unwrap().call(gate).await.unwrap_err();
    assert!(refused.is::<Open>(), "one probe at a time");

    drop(probe);
    assert_eq!(breaker.state(), State::HalfOpen, "nothing recorded");
    let (pass, gate) = oneshot::channel();
    pass.send(true).unwrap();
    service.ready().await.unwrap().call(gate).await.unwrap();
    assert_eq!(breaker.state(), State::Closed);
}

/// A probe whose inner `call` panics, the panic caught further out (as
/// tower-http's `CatchPanic` does), gives its slot back: the next caller
/// probes instead of waiting out the probe's longest wait.
#[tokio::test(start_paused = true)]
async fn a_probe_whose_call_panics_gives_its_slot_back() {
    let layer = CircuitBreakerLayer::new(config(1));
    let breaker = layer.breaker().clone();
    let mut service = layer.layer(service_fn(|panics: bool| {
        assert!(!panics, "the inner service panics in call");
        async { Err::<(), BoxError>("down".into()) }
    }));
    service.clone().oneshot(false).await.unwrap_err();
    assert_eq!(breaker.state(), State::Open);
    tokio::time::advance(Duration::from_secs(10)).await;

    let ready = service.ready().await.unwrap();
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ready.call(true)));
    assert!(panicked.is_err());
    assert_eq!(breaker.state(), State::HalfOpen);
    let probe = service.oneshot(false).await.unwrap_err();
    assert!(!probe.is::<Open>(), "let through as the probe: {probe}");
    assert_eq!(breaker.state(), State::Open, "its failure reopens");
}

/// A settle of one's own that hands the permit to the caller, to record
/// when the caller knows how the call went.
#[derive(Clone)]
struct Later;

impl Settle<(), BoxError> for Later {
    type Response = Permit;

    fn settle(&self, result: Result<(), BoxError>, permit: Permit) -> Result<Permit, BoxError> {
        result.map(|()| permit)
    }
}

#[tokio::test]
async fn a_settle_of_ones_own_is_handed_the_permit_out_of_the_future() {
    let layer = CircuitBreakerLayer::new(config(2)).classify(Later);
    let breaker = layer.breaker().clone();
    let mut service = layer.layer(service_fn(|(): ()| async { Ok::<_, BoxError>(()) }));
    let now = std::time::Instant::now;
    for calls in 0..2 {
        let permit = service.ready().await.unwrap().call(()).await.unwrap();
        assert_eq!(
            breaker.metrics(now()).counts.calls,
            calls,
            "not yet recorded"
        );
        permit.record(Outcome::Failure, now());
    }
    assert_eq!(breaker.state(), State::Open, "both failures counted");
}

#[tokio::test]
async fn readiness_is_the_inner_services() {
    let (inner, mut handle) = mock::pair::<(), ()>();
    let mut service = CircuitBreakerLayer::new(config(2)).layer(inner);
    handle.allow(0);
    assert!(futures_poll_ready(&mut service).is_pending());
    handle.allow(1);
    assert!(futures_poll_ready(&mut service).is_ready());
    let response = service.call(());
    assert_request_eq!(handle, ()).send_response(());
    response.await.unwrap();
}

fn futures_poll_ready<S: Service<()>>(service: &mut S) -> std::task::Poll<Result<(), S::Error>> {
    let waker = std::task::Waker::noop();
    service.poll_ready(&mut std::task::Context::from_waker(waker))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_clone_and_every_layered_service_share_one_breaker() {
    let layer = CircuitBreakerLayer::new(config(20));
    let calls = Arc::new(AtomicUsize::new(0));
    let make = |calls: Arc<AtomicUsize>| {
        layer.layer(service_fn(move |(): ()| {
            calls.fetch_add(1, Ordering::SeqCst);
            failing(())
        }))
    };
    // Two services from one layer, as axum's Router::layer makes them, and
    // many clones of each on many tasks.
    let services = [make(calls.clone()), make(calls.clone())];
    let mut tasks = Vec::new();
    for task in 0..64 {
        let service = services[task % 2].clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                let _ = service.clone().oneshot(()).await;
                tokio::task::yield_now().await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(layer.breaker().state(), State::Open);
    let made = calls.load(Ordering::SeqCst);
    // 20 failures open it; calls already admitted when it opened may still
    // run, at most one per task.
    assert!(
        (20..=20 + 64).contains(&made),
        "{made} calls reached the dependency"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn services_that_keep_calling_on_many_threads_count_in_one_window() {
    let layer = CircuitBreakerLayer::new(config(1_000));
    let breaker = layer.breaker().clone();
    let healthy = Arc::new(AtomicBool::new(true));
    let flag = healthy.clone();
    let service = layer.layer(service_fn(move |(): ()| {
        answer(flag.load(Ordering::SeqCst))
    }));
    // Each task keeps its clone and calls it again and again, as a client
    // or a connection's service does (a clone that keeps calling counts
    // its permits on a count of its own; the window stays the breaker's).
    let run = |calls: usize| {
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let mut service = service.clone();
                tokio::spawn(async move {
                    for _ in 0..calls {
                        let _ = service.ready().await.unwrap().call(()).await;
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        async move {
            for task in tasks {
                task.await.unwrap();
            }
        }
    };
    run(20).await;
    let counts = breaker.metrics(std::time::Instant::now()).counts;
    assert_eq!(
        (counts.calls, counts.failures),
        (640, 0),
        "a filling ring counts each call"
    );
    healthy.store(false, Ordering::SeqCst);
    run(20).await;
    assert_eq!(breaker.state(), State::Open, "their failures opened it");
}

#[tokio::test]
async fn a_call_on_a_services_own_count_outliving_the_service_is_counted() {
    let layer = CircuitBreakerLayer::new(config(10));
    let breaker = layer.breaker().clone();
    let (finish, finished) = oneshot::channel::<()>();
    let finished = Arc::new(std::sync::Mutex::new(Some(finished)));
    let calls = Arc::new(AtomicUsize::new(0));
    let mut service = layer.layer(service_fn(move |(): ()| {
        // The third call waits until told to finish.
        let wait = (calls.fetch_add(1, Ordering::SeqCst) == 2)
            .then(|| finished.lock().unwrap().take())
            .flatten();
        async move {
            if let Some(wait) = wait {
                wait.await?;
            }
            Ok::<_, BoxError>(())
        }
    }));
    for _ in 0..2 {
        service.ready().await.unwrap().call(()).await.unwrap();
    }
    // By now the service counts its permits on a count of its own.
    let late = service.ready().await.unwrap().call(());
    drop((service, layer));
    finish.send(()).unwrap();
    late.await.unwrap();
    let counts = breaker.metrics(std::time::Instant::now()).counts;
    assert_eq!(
        counts.calls, 3,
        "the late call counted after its service was dropped"
    );
}

/// Results that carry the dependency's own wait.
#[derive(Clone)]
struct Hinted;

impl Classify<(), Wait> for Hinted {
    fn classify(&self, result: &Result<(), Wait>) -> Outcome {
        if result.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failure
        }
    }

    fn retry_after(&self, result: &Result<(), Wait>) -> Option<Duration> {
        result.as_ref().err().map(|wait| wait.0)
    }
}

#[derive(Debug)]
struct Wait(Duration);

impl std::fmt::Display for Wait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "retry after {:?}", self.0)
    }
}

impl std::error::Error for Wait {}

#[tokio::test(start_paused = true)]
async fn the_dependencys_retry_after_sets_the_open_duration() {
    let layer = CircuitBreakerLayer::new(config(1)).classify(AtOnce(Hinted));
    let breaker = layer.breaker().clone();
    let service = layer.layer(service_fn(|(): ()| async {
        Err::<(), _>(Wait(Duration::from_secs(42)))
    }));
    let _ = service.clone().oneshot(()).await;
    assert_eq!(breaker.state(), State::Open);
    let open = service.clone().oneshot(()).await.unwrap_err();
    assert_eq!(
        open.downcast_ref::<Open>().unwrap().retry_after(),
        Some(Duration::from_secs(42))
    );
}

#[tokio::test]
async fn ignored_outcomes_do_not_count() {
    let layer =
        CircuitBreakerLayer::new(config(2)).classify(|_: &Result<(), BoxError>| Outcome::Ignored);
    let breaker = layer.breaker().clone();
    let service = layer.layer(service_fn(failing));
    for _ in 0..10 {
        let _ = service.clone().oneshot(()).await;
    }
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(breaker.metrics(std::time::Instant::now()).counts.calls, 0);
}

#[tokio::test(start_paused = true)]
async fn subscribers_see_every_transition_in_order() {
    use palisade_circuit_breaker::Transition;
    let layer = CircuitBreakerLayer::new(config(1));
    let breaker = layer.breaker().clone();
    let mut transitions = breaker.subscribe();
    let service = layer.layer(service_fn(failing));
    let _ = service.clone().oneshot(()).await;
    tokio::time::advance(Duration::from_secs(10)).await;
    let _ = service.clone().oneshot(()).await;
    breaker.force_open();
    breaker.reset();
    // An operator's call that leaves the state as it was is no transition.
    breaker.reset();
    breaker.force_open();
    breaker.force_open();
    breaker.reset();
    let mut seen = Vec::new();
    while let Ok(Transition { from, to }) = transitions.try_recv() {
        seen.push((from, to));
    }
    assert_eq!(
        seen,
        [
            (State::Closed, State::Open),
            (State::Open, State::HalfOpen),
            (State::HalfOpen, State::Open),
            (State::Open, State::ForcedOpen),
            (State::ForcedOpen, State::Closed),
            (State::Closed, State::ForcedOpen),
            (State::ForcedOpen, State::Closed),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn slow_successes_open_a_time_window_breaker() {
    let config = Config::builder()
        .sliding_window(SlidingWindow::Time {
            duration: Duration::from_secs(10),
            buckets: 10,
        })
        .minimum_calls(3)
        .slow_calls(Duration::from_secs(1), 0.5)
        .open_duration(Duration::from_secs(5))
        .jitter(0.0)
        .build()
        .unwrap();
    let layer = CircuitBreakerLayer::new(config);
    let breaker = layer.breaker().clone();
    let service = layer.layer(service_fn(|delay: Duration| async move {
        tokio::time::sleep(delay).await;
        Ok::<_, BoxError>(())
    }));
    // Fast calls, then calls that succeed but take 2 s each.
    service.clone().oneshot(Duration::ZERO).await.unwrap();
    for _ in 0..2 {
        service
            .clone()
            .oneshot(Duration::from_secs(2))
            .await
            .unwrap();
    }
    assert_eq!(breaker.state(), State::Open, "2 of 3 calls were slow");
    let counts = breaker
        .metrics(tokio::time::Instant::now().into_std())
        .counts;
    assert_eq!((counts.calls, counts.failures, counts.slow), (3, 0, 2));

    // After the open duration a fast probe closes it; the window is then empty.
    tokio::time::advance(Duration::from_secs(5)).await;
    service.clone().oneshot(Duration::ZERO).await.unwrap();
    assert_eq!(breaker.state(), State::Closed);

    // Calls older than the window no longer count.
    service.clone().oneshot(Duration::ZERO).await.unwrap();
    tokio::time::advance(Duration::from_secs(11)).await;
    let counts = breaker
        .metrics(tokio::time::Instant::now().into_std())
        .counts;
    assert_eq!(counts.calls, 0);
}

// A leaked breaker (`CircuitBreaker::leak`, `CircuitBreakerLayer::leak`) is
// the same breaker as its counted clones: the same window, the same
// transitions, the same probe slots, and slow calls timed alike.

async fn answer(healthy: bool) -> Result<(), BoxError> {
    if healthy { Ok(()) } else { Err("down".into()) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leaked_layer_trips_the_breaker_its_counted_clones_see() {
    let layer = CircuitBreakerLayer::new(config(64));
    let counted = layer.breaker().clone();
    let layer = layer.leak();
    let healthy = Arc::new(AtomicBool::new(true));
    let flag = healthy.clone();
    let service = layer.layer(service_fn(move |(): ()| {
        answer(flag.load(Ordering::SeqCst))
    }));
    // 16 tasks fill the window with successes, then with failures.
    for ok in [true, false] {
        healthy.store(ok, Ordering::SeqCst);
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let service = service.clone();
                tokio::spawn(async move {
                    for _ in 0..8 {
                        let _ = service.clone().oneshot(()).await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        if ok {
            let counts = counted.metrics(std::time::Instant::now()).counts;
            assert_eq!((counts.calls, counts.failures), (64, 0));
            assert_eq!(counted.state(), State::Closed);
        }
    }
    assert_eq!(counted.state(), State::Open, "the counted clone saw it");
    let refused = service.clone().oneshot(()).await.unwrap_err();
    assert!(refused.is::<Open>());
    counted.reset();
    assert_eq!(layer.breaker().state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_leaked_breakers_probe_is_given_back_when_dropped_and_slow_calls_count() {
    let breaker = CircuitBreaker::new_at(
        Config::builder()
            .sliding_window(SlidingWindow::Count(2))
            .minimum_calls(2)
            .slow_calls(Duration::from_millis(100), 1.0)
            .open_duration(Duration::from_secs(1))
            .jitter(0.0)
            .build()
            .unwrap(),
        tokio::time::Instant::now().into_std(),
    )
    .leak();
    // Leaked again, it is still the same breaker.
    let again = breaker.clone().leak();
    again.force_open();
    assert_eq!(
        breaker.state(),
        State::ForcedOpen,
        "leaked twice, one breaker"
    );
    again.reset();
    let service = CircuitBreakerLayer::from_breaker(breaker.clone()).layer(service_fn(
        |wait: Duration| async move {
            tokio::time::sleep(wait).await;
            Ok::<_, BoxError>(())
        },
    ));
    // A call just under the limit is not slow; two at it open.
    for (wait_ms, then) in [
        (99, State::Closed),
        (100, State::Closed),
        (100, State::Open),
    ] {
        service
            .clone()
            .oneshot(Duration::from_millis(wait_ms))
            .await
            .unwrap();
        assert_eq!(breaker.state(), then, "after a call of {wait_ms} ms");
    }

    tokio::time::advance(Duration::from_secs(1)).await;
    let now = tokio::time::Instant::now().into_std();
    let probe = breaker.try_acquire(now).unwrap();
    assert_eq!(breaker.state(), State::HalfOpen);
    assert!(breaker.try_acquire(now).is_err(), "one probe at a time");
    drop(probe);
    let probe = breaker.try_acquire(now).expect("the dropped probe's slot");
    probe.record(Outcome::Success, now);
    assert_eq!(breaker.state(), State::Closed);
}

/// A breaker of four calls, half of which may be slow (past 50 ms).
fn slow_config() -> Config {
    Config::builder()
        .sliding_window(SlidingWindow::Count(4))
        .minimum_calls(4)
        .slow_calls(Duration::from_millis(50), 0.5)
        .open_duration(Duration::from_secs(10))
        .jitter(0.0)
        .half_open_permits(1)
        .half_open_successes(1)
        .build()
        .unwrap()
}

/// Calls to a dependency that hangs, each cut short by a timeout above the
/// breaker after `after`.
async fn cut_short_calls(breaker: &CircuitBreaker, calls: usize, after: Duration) {
    let mut service =
        CircuitBreakerLayer::from_breaker(breaker.clone()).layer(service_fn(|(): ()| {
            std::future::pending::<Result<(), BoxError>>()
        }));
    for _ in 0..calls {
        let call = service.ready().await.unwrap().call(());
        assert!(tokio::time::timeout(after, call).await.is_err());
    }
}

/// A call a timeout above the breaker cut short (its future dropped before
/// an outcome) counts as slow once it ran past the slow-call threshold, a
/// probe as failed: a dependency that hung behind such a timeout never
/// opened the breaker, and its probes never reopened it. One cut before
/// the threshold counts nothing.
#[tokio::test(start_paused = true)]
async fn calls_cut_short_above_the_breaker_count_as_slow_past_the_threshold() {
    let breaker = CircuitBreaker::new_at(slow_config(), tokio::time::Instant::now().into_std());
    cut_short_calls(&breaker, 8, Duration::from_millis(10)).await;
    assert_eq!(breaker.state(), State::Closed, "cut before the threshold");

    cut_short_calls(&breaker, 4, Duration::from_millis(100)).await;
    assert_eq!(breaker.state(), State::Open);

    tokio::time::advance(Duration::from_secs(10)).await;
    cut_short_calls(&breaker, 1, Duration::from_millis(100)).await;
    assert_eq!(breaker.state(), State::Open, "the probe hung");
}

/// A probe cut short above the breaker once it ran past the half-open
/// maximum wait counts as failed, slow calls counted or not: each such
/// probe gave its slot back to the next, and the breaker stayed half-open
/// for as long as probes hung.
#[tokio::test(start_paused = true)]
async fn a_probe_cut_short_past_the_half_open_wait_reopens_the_breaker() {
    let config = Config::builder()
        .sliding_window(SlidingWindow::Count(2))
        .minimum_calls(2)
        .open_duration(Duration::from_secs(10))
        .jitter(0.0)
        .half_open_permits(1)
        .half_open_max_wait(Duration::from_millis(50))
        .build()
        .unwrap();
    let breaker = CircuitBreaker::new_at(config, tokio::time::Instant::now().into_std());
    let mut failing = CircuitBreakerLayer::from_breaker(breaker.clone()).layer(service_fn(failing));
    for _ in 0..2 {
        let _ = failing.ready().await.unwrap().call(()).await;
    }
    assert_eq!(breaker.state(), State::Open);
    tokio::time::advance(Duration::from_secs(10)).await;
    cut_short_calls(&breaker, 1, Duration::from_millis(20)).await;
    assert_eq!(
        breaker.state(),
        State::HalfOpen,
        "cut before the wait: nothing"
    );
    cut_short_calls(&breaker, 1, Duration::from_millis(100)).await;
    assert_eq!(breaker.state(), State::Open, "the probe outwaited its wait");
}
