//! A leaked breaker (`CircuitBreaker::leak`, `CircuitBreakerLayer::leak`)
//! is the same breaker as its counted clones: the same window, the same
//! transitions, the same probe slots, and slow calls timed alike.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use palisade_circuit_breaker::{
    CircuitBreaker, CircuitBreakerLayer, Config, Open, Outcome, SlidingWindow, State,
};
use tower::{BoxError, Layer, ServiceExt, service_fn};

fn config(calls: u32) -> Config {
    Config::builder()
        .sliding_window(SlidingWindow::Count(calls))
        .minimum_calls(calls)
        .open_duration(Duration::from_secs(10))
        .jitter(0.0)
        .build()
        .unwrap()
}

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
    assert_eq!(
        breaker.clone().leak().state(),
        State::Closed,
        "leaked twice, one breaker"
    );
    let service = CircuitBreakerLayer::from_breaker(breaker.clone()).layer(service_fn(
        |wait: Duration| async move {
            tokio::time::sleep(wait).await;
            Ok::<_, BoxError>(())
        },
    ));
    // A call just under the limit is not slow; two at it open.
    service
        .clone()
        .oneshot(Duration::from_millis(99))
        .await
        .unwrap();
    service
        .clone()
        .oneshot(Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(breaker.state(), State::Closed);
    service
        .clone()
        .oneshot(Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(breaker.state(), State::Open);

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
