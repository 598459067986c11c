//! Keyed breakers: one per key, independent, bounded, idle ones retired,
//! open ones kept.

use std::time::Duration;

use palisade_circuit_breaker::{Config, KeyedCircuitBreakerLayer, Open, SlidingWindow, State};
use tower::{BoxError, Layer, ServiceExt, service_fn};

fn config() -> Config {
    Config::builder()
        .sliding_window(SlidingWindow::Count(2))
        .minimum_calls(2)
        .open_duration(Duration::from_secs(30))
        .jitter(0.0)
        .build()
        .unwrap()
}

/// Requests are (host, fail?).
async fn upstream((_, fail): (&'static str, bool)) -> Result<(), BoxError> {
    if fail { Err("down".into()) } else { Ok(()) }
}

#[tokio::test(start_paused = true)]
async fn a_failing_key_does_not_open_the_others() {
    let layer = KeyedCircuitBreakerLayer::new(config(), |request: &(&'static str, bool)| request.0);
    let service = layer.layer(service_fn(upstream));
    for _ in 0..2 {
        let _ = service.clone().oneshot(("sick", true)).await;
    }
    let refused = service.clone().oneshot(("sick", false)).await.unwrap_err();
    assert!(refused.is::<Open>());
    service.clone().oneshot(("healthy", false)).await.unwrap();
    let registry = layer.registry();
    assert_eq!(registry.breaker(&"sick").unwrap().state(), State::Open);
    assert_eq!(registry.breaker(&"healthy").unwrap().state(), State::Closed);
    assert_eq!(registry.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn idle_closed_breakers_make_room_and_open_ones_stay() {
    let layer = KeyedCircuitBreakerLayer::new(config(), |request: &(&'static str, bool)| request.0)
        .capacity(2, Duration::from_secs(60));
    let service = layer.layer(service_fn(upstream));
    let registry = || layer.registry();
    for _ in 0..2 {
        let _ = service.clone().oneshot(("sick", true)).await;
    }
    service.clone().oneshot(("quiet", false)).await.unwrap();
    assert_eq!(registry().len(), 2);

    // Full, nothing idle yet: a new key shares the overflow breaker.
    service.clone().oneshot(("new", false)).await.unwrap();
    assert!(registry().breaker(&"new").is_none());
    assert_eq!(registry().len(), 2);

    // After the idle time the quiet closed breaker is retired, before the
    // open one (done being open by now, it would go next).
    tokio::time::advance(Duration::from_secs(61)).await;
    service.clone().oneshot(("new", false)).await.unwrap();
    assert!(registry().breaker(&"quiet").is_none());
    assert!(registry().breaker(&"new").is_some());
    assert_eq!(registry().breaker(&"sick").unwrap().state(), State::Open);
}

/// Breakers done being open make room once unused for the idle time: a
/// registry full of keys that tripped and went away (pods replaced) gave
/// every new key the one overflow breaker for good, since only a call
/// moves an open breaker on.
#[tokio::test(start_paused = true)]
async fn idle_breakers_done_being_open_make_room() {
    let layer = KeyedCircuitBreakerLayer::new(config(), |request: &(&'static str, bool)| request.0)
        .capacity(2, Duration::from_secs(60));
    let service = layer.layer(service_fn(upstream));
    for key in ["gone-1", "gone-2"] {
        for _ in 0..2 {
            let _ = service.clone().oneshot((key, true)).await;
        }
        assert_eq!(layer.registry().breaker(&key).unwrap().state(), State::Open);
    }
    // Not unused for the idle time yet: kept.
    tokio::time::advance(Duration::from_secs(20)).await;
    service.clone().oneshot(("new", false)).await.unwrap();
    assert!(
        layer.registry().breaker(&"new").is_none(),
        "shares the overflow"
    );
    // Done being open (30 s) and unused for the idle time (60 s).
    tokio::time::advance(Duration::from_secs(41)).await;
    service.clone().oneshot(("new", false)).await.unwrap();
    assert!(
        layer.registry().breaker(&"new").is_some(),
        "a breaker of its own"
    );
    assert_eq!(layer.registry().len(), 2);
}

/// A half-open breaker whose probe is under way is kept however long ago
/// its key's last call began: the probe's outcome decides, and a new
/// breaker would let `minimum_calls` calls through to a dependency that
/// may be hanging.
#[tokio::test(start_paused = true)]
async fn a_breaker_whose_probe_is_under_way_is_kept() {
    let config = Config::builder()
        .sliding_window(SlidingWindow::Count(2))
        .minimum_calls(2)
        .open_duration(Duration::from_secs(30))
        .half_open_max_wait(Duration::from_secs(300))
        .jitter(0.0)
        .build()
        .unwrap();
    let layer = KeyedCircuitBreakerLayer::new(config, |request: &(&'static str, bool)| request.0)
        .capacity(1, Duration::from_secs(60));
    // Every call fails, or hangs when asked to.
    let service = layer.layer(service_fn(|(_, hang): (&'static str, bool)| async move {
        if hang {
            std::future::pending::<()>().await;
        }
        Err::<(), BoxError>("down".into())
    }));
    for _ in 0..2 {
        let _ = service.clone().oneshot(("hanging", false)).await;
    }
    tokio::time::advance(Duration::from_secs(31)).await;
    let probe = tokio::spawn(service.clone().oneshot(("hanging", true)));
    while layer.registry().breaker(&"hanging").unwrap().state() != State::HalfOpen {
        tokio::task::yield_now().await;
    }
    tokio::time::advance(Duration::from_secs(61)).await;
    let _ = service.clone().oneshot(("new", false)).await;
    assert!(
        layer.registry().breaker(&"new").is_none(),
        "shares the overflow"
    );
    assert!(layer.registry().breaker(&"hanging").is_some());
    probe.abort();
}

#[tokio::test(start_paused = true)]
async fn clones_share_the_registry() {
    let layer = KeyedCircuitBreakerLayer::new(config(), |request: &(&'static str, bool)| request.0);
    let first = layer.clone().layer(service_fn(upstream));
    let second = layer.layer(service_fn(upstream));
    let _ = first.clone().oneshot(("sick", true)).await;
    let _ = second.clone().oneshot(("sick", true)).await;
    assert!(
        first
            .oneshot(("sick", false))
            .await
            .unwrap_err()
            .is::<Open>()
    );
    assert_eq!(second.breakers().registry().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_key_flood_examines_a_bounded_number_of_breakers_per_new_key() {
    const CAPACITY: usize = 256;
    let layer =
        KeyedCircuitBreakerLayer::new(config(), |request: &(String, bool)| request.0.clone())
            .capacity(CAPACITY, Duration::from_secs(60));
    let service = layer.layer(service_fn(|(_, fail): (String, bool)| async move {
        if fail {
            Err::<(), BoxError>("down".into())
        } else {
            Ok(())
        }
    }));
    let call = |key: String| service.clone().oneshot((key, false));
    for i in 0..CAPACITY {
        call(format!("busy-{i}")).await.unwrap();
    }
    // Every key but the last stays busy; the last one goes idle.
    tokio::time::advance(Duration::from_secs(61)).await;
    for i in 0..CAPACITY - 1 {
        call(format!("busy-{i}")).await.unwrap();
    }
    let registry = layer.registry();
    // A new key looks at a bounded number of breakers, not the whole
    // registry: the first newcomers share the overflow breaker...
    call("new-0".to_owned()).await.unwrap();
    assert!(
        registry.breaker(&"new-0".to_owned()).is_none(),
        "the whole registry was scanned for one new key"
    );
    // ...and, round after round, the scan reaches the idle breaker and
    // retires it.
    let mut admitted = None;
    for i in 1..CAPACITY {
        let key = format!("new-{i}");
        call(key.clone()).await.unwrap();
        if registry.breaker(&key).is_some() {
            admitted = Some(i);
            break;
        }
    }
    assert!(admitted.is_some(), "the idle breaker was never retired");
    assert!(
        registry
            .breaker(&format!("busy-{}", CAPACITY - 1))
            .is_none()
    );
    assert_eq!(registry.len(), CAPACITY);
}
