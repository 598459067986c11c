//! How long the breaker stays open: the configured duration (with backoff)
//! is the floor, a dependency's hint may only lengthen it, the result is
//! always jittered, and no setting or hint can make it panic.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use palisade_circuit_breaker::{
    CircuitBreaker, Config, ConfigBuilder, Outcome, SlidingWindow, State,
};

const OPEN: Duration = Duration::from_secs(10);

fn builder() -> ConfigBuilder {
    Config::builder()
        .sliding_window(SlidingWindow::Count(1))
        .minimum_calls(1)
        .open_duration(OPEN)
}

/// Opens a breaker made from `config` with one failure carrying `hint`;
/// the wait it then announces.
fn wait_after(config: Config, hint: Option<Duration>) -> Duration {
    let start = Instant::now();
    let breaker = CircuitBreaker::new_at(config, start);
    breaker
        .try_acquire(start)
        .unwrap()
        .record_with_hint(Outcome::Failure, hint, start);
    assert_eq!(breaker.state(), State::Open);
    breaker
        .try_acquire(start)
        .expect_err("open")
        .retry_after()
        .expect("a wait")
}

#[test]
fn retry_after_zero_keeps_the_configured_open_duration() {
    let config = builder().jitter(0.0).build().unwrap();
    assert_eq!(wait_after(config.clone(), Some(Duration::ZERO)), OPEN);
    // A hint shorter than the floor changes nothing either; a longer one
    // lengthens it.
    assert_eq!(
        wait_after(config.clone(), Some(Duration::from_secs(3))),
        OPEN
    );
    assert_eq!(
        wait_after(config, Some(Duration::from_secs(15))),
        Duration::from_secs(15)
    );
}

#[test]
fn a_short_hint_does_not_skip_the_backoff() {
    let config = builder()
        .jitter(0.0)
        .open_backoff(2.0, Duration::from_secs(300))
        .build()
        .unwrap();
    let start = Instant::now();
    let breaker = CircuitBreaker::new_at(config, start);
    breaker
        .try_acquire(start)
        .unwrap()
        .record(Outcome::Failure, start);
    // The probe fails with `Retry-After: 1`: the second opening lasts the
    // backed-off 20 s, not 1 s.
    let probe_at = start + OPEN;
    breaker.try_acquire(probe_at).unwrap().record_with_hint(
        Outcome::Failure,
        Some(Duration::from_secs(1)),
        probe_at,
    );
    let open = breaker.try_acquire(probe_at).unwrap_err();
    assert_eq!(open.retry_after(), Some(2 * OPEN));
}

#[test]
fn a_hint_beyond_max_open_duration_is_still_jittered() {
    let max = Duration::from_secs(20);
    let config = builder()
        .jitter(0.5)
        .max_open_duration(max)
        .build()
        .unwrap();
    let waits: BTreeSet<Duration> = (0..100)
        .map(|_| wait_after(config.clone(), Some(Duration::from_secs(3_600))))
        .collect();
    assert!(waits.len() > 1, "every opening lasted {waits:?}");
    assert!(
        waits.iter().all(|wait| (max / 2..=max).contains(wait)),
        "{waits:?}"
    );
}

#[test]
fn extreme_settings_never_panic() {
    let configs = [
        builder()
            .open_duration(Duration::MAX)
            .max_open_duration(Duration::MAX)
            .jitter(0.9),
        builder()
            .open_duration(Duration::from_secs(1))
            .max_open_duration(Duration::MAX)
            .open_backoff(1e300, Duration::MAX)
            .jitter(0.9),
        builder()
            .open_duration(Duration::from_nanos(1))
            .max_open_duration(Duration::MAX)
            .open_backoff(f64::MAX, Duration::MAX)
            .jitter(0.5)
            .half_open_max_wait(Duration::MAX),
    ];
    let hints = [
        None,
        Some(Duration::ZERO),
        Some(Duration::from_secs(u64::MAX)),
        Some(Duration::MAX),
    ];
    for builder in configs {
        let Ok(config) = builder.build() else {
            continue; // refused in build() is fine too
        };
        for hint in hints {
            for _ in 0..20 {
                let start = Instant::now();
                let breaker = CircuitBreaker::new_at(config.clone(), start);
                let mut now = start;
                // Open, then fail every probe a few times over.
                for _ in 0..4 {
                    match breaker.try_acquire(now) {
                        Ok(permit) => permit.record_with_hint(Outcome::Failure, hint, now),
                        Err(open) => {
                            let wait = open.retry_after().expect("a wait");
                            assert!(!wait.is_zero());
                            now = now.checked_add(wait).unwrap_or(now);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(feature = "http")]
#[tokio::test(start_paused = true)]
async fn a_retry_after_of_zero_or_in_the_past_keeps_the_configured_open_duration() {
    use ::http::{Response, StatusCode, header::RETRY_AFTER};
    use palisade_circuit_breaker::CircuitBreakerLayer;
    use tower::{Layer, ServiceExt, service_fn};

    for retry_after in ["0", "Sun, 06 Nov 1994 08:49:57 GMT"] {
        let layer = CircuitBreakerLayer::new_for_http(builder().jitter(0.0).build().unwrap());
        let breaker = layer.breaker().clone();
        let service = layer.layer(service_fn(move |(): ()| async move {
            let mut response = Response::new(String::new());
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            response
                .headers_mut()
                .insert(RETRY_AFTER, retry_after.parse().unwrap());
            Ok::<_, std::convert::Infallible>(response)
        }));
        service.clone().oneshot(()).await.unwrap();
        assert_eq!(breaker.state(), State::Open, "{retry_after}");
        let refused = service.clone().oneshot(()).await.unwrap();
        assert_eq!(refused.headers()[RETRY_AFTER], "10", "{retry_after}");
    }
}
