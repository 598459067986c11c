//! A call a palisade layer beneath refused itself (the `Refusal` marker on
//! the error or the response) is neither a success nor a failure: one
//! client over its own quota must not open the breaker for everyone.

use std::time::{Duration, Instant};

use palisade_circuit_breaker::{CircuitBreakerLayer, Config, Open, SlidingWindow, State};
use palisade_hints::Refusal;
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

#[tokio::test]
async fn a_rate_limit_refusal_beneath_is_not_a_failure() {
    let layer = CircuitBreakerLayer::new(config());
    let breaker = layer.breaker().clone();
    let service = layer.layer(service_fn(|(): ()| async {
        Err::<(), BoxError>(Box::new(Refusal::rate_limited(Some(Duration::from_secs(
            1,
        )))))
    }));
    for _ in 0..10 {
        let err = service.clone().oneshot(()).await.unwrap_err();
        assert!(Refusal::find(&*err).is_some(), "the refusal passes through");
    }
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(breaker.metrics(Instant::now()).counts.calls, 0);
}

#[tokio::test]
async fn an_open_breaker_beneath_is_not_a_failure() {
    let inner = CircuitBreakerLayer::new(config());
    inner.breaker().force_open();
    let outer = CircuitBreakerLayer::new(config());
    let breaker = outer.breaker().clone();
    let service = outer.layer(inner.layer(service_fn(|(): ()| async { Ok::<(), BoxError>(()) })));
    for _ in 0..10 {
        let err = service.clone().oneshot(()).await.unwrap_err();
        assert!(err.is::<Open>());
    }
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(breaker.metrics(Instant::now()).counts.calls, 0);
}

#[tokio::test(start_paused = true)]
async fn a_refused_probe_frees_its_slot() {
    let layer = CircuitBreakerLayer::new(
        Config::builder()
            .sliding_window(SlidingWindow::Count(1))
            .minimum_calls(1)
            .open_duration(Duration::from_millis(1))
            .jitter(0.0)
            .build()
            .unwrap(),
    );
    let breaker = layer.breaker().clone();
    let service = layer.layer(service_fn(|refuse: bool| async move {
        if refuse {
            Err::<(), BoxError>(Box::new(Refusal::rate_limited(None)))
        } else {
            Err("down".into())
        }
    }));
    let _ = service.clone().oneshot(false).await;
    assert_eq!(breaker.state(), State::Open);
    tokio::time::advance(Duration::from_millis(1)).await;
    // The probe is refused beneath: the cycle goes on, the slot is free.
    let _ = service.clone().oneshot(true).await;
    assert_eq!(breaker.state(), State::HalfOpen);
    let _ = service.clone().oneshot(false).await;
    assert_eq!(breaker.state(), State::Open);
}

#[cfg(feature = "http")]
mod http_mode {
    use super::*;
    use ::http::{Response, StatusCode};

    #[tokio::test]
    async fn a_429_carrying_the_refusal_marker_is_not_a_failure() {
        let layer = CircuitBreakerLayer::new_for_http(config());
        let breaker = layer.breaker().clone();
        let service = layer.layer(service_fn(|(): ()| async {
            let mut response = Response::new(String::new());
            *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            response
                .extensions_mut()
                .insert(Refusal::rate_limited(Some(Duration::from_secs(1))));
            Ok::<_, std::convert::Infallible>(response)
        }));
        for _ in 0..10 {
            let response = service.clone().oneshot(()).await.unwrap();
            assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        }
        assert_eq!(breaker.state(), State::Closed);
        assert_eq!(breaker.metrics(Instant::now()).counts.calls, 0);
    }

    /// A dependency's 429 that says when to come back paces this caller,
    /// as a remote rate limiter does: no failure, or one client over its
    /// quota opens the breaker for every caller.
    #[tokio::test]
    async fn a_429_naming_its_wait_is_not_a_failure() {
        let layer = CircuitBreakerLayer::new_for_http(config());
        let breaker = layer.breaker().clone();
        let service = layer.layer(service_fn(|(): ()| async {
            let mut response = Response::new(String::new());
            *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            response
                .headers_mut()
                .insert(::http::header::RETRY_AFTER, "1".parse().unwrap());
            Ok::<_, std::convert::Infallible>(response)
        }));
        for _ in 0..10 {
            service.clone().oneshot(()).await.unwrap();
        }
        assert_eq!(breaker.state(), State::Closed);
        assert_eq!(breaker.metrics(Instant::now()).counts.calls, 0);
    }

    #[tokio::test]
    async fn a_503_from_an_open_breaker_beneath_is_not_a_failure() {
        let inner = CircuitBreakerLayer::new_for_http(config());
        inner.breaker().force_open();
        let outer = CircuitBreakerLayer::new_for_http(config());
        let breaker = outer.breaker().clone();
        let service = outer.layer(inner.layer(service_fn(|(): ()| async {
            Ok::<_, std::convert::Infallible>(Response::new(String::new()))
        })));
        for _ in 0..10 {
            let response = service.clone().oneshot(()).await.unwrap();
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        }
        assert_eq!(breaker.state(), State::Closed);
        // A dependency's own 429, without the marker, still fails.
        let service = CircuitBreakerLayer::new_for_http(config());
        let breaker = service.breaker().clone();
        let service = service.layer(service_fn(|(): ()| async {
            let mut response = Response::new(String::new());
            *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            Ok::<_, std::convert::Infallible>(response)
        }));
        for _ in 0..2 {
            service.clone().oneshot(()).await.unwrap();
        }
        assert_eq!(breaker.state(), State::Open);
    }
}
