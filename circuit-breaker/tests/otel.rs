//! OpenTelemetry metrics, read back through the SDK's in-memory exporter.
#![cfg(feature = "otel")]

use std::time::{Duration, Instant};

use palisade_circuit_breaker::{CircuitBreaker, Config, Outcome, SlidingWindow};
use palisade_testkit::MetricsProbe;

#[test]
fn calls_rejections_transitions_and_state_are_exported() {
    let probe = MetricsProbe::default();
    let meter = probe.meter();
    let config = Config::builder()
        .sliding_window(SlidingWindow::Count(2))
        .minimum_calls(2)
        .failure_rate_threshold(1.0)
        .jitter(0.0)
        .open_duration(Duration::from_secs(30))
        .build()
        .unwrap();
    let start = Instant::now();
    let breaker = CircuitBreaker::new_at(config, start);
    breaker.instrument(&meter, "payments");

    breaker
        .try_acquire(start)
        .unwrap()
        .record(Outcome::Success, start);
    for _ in 0..2 {
        breaker
            .try_acquire(start)
            .unwrap()
            .record(Outcome::Failure, start);
    }
    assert!(breaker.try_acquire(start).is_err());

    let calls = probe.points("palisade.circuit_breaker.calls");
    assert!(
        calls.contains(&(vec!["breaker=payments".into(), "outcome=failure".into()], 2)),
        "{calls:?}"
    );
    assert!(
        calls.contains(&(vec!["breaker=payments".into(), "outcome=success".into()], 1)),
        "{calls:?}"
    );
    let rejected = probe.points("palisade.circuit_breaker.rejected");
    assert_eq!(rejected, [(vec!["breaker=payments".to_owned()], 1)]);
    let transitions = probe.points("palisade.circuit_breaker.transitions");
    assert_eq!(
        transitions,
        [(
            vec![
                "breaker=payments".to_owned(),
                "from=closed".into(),
                "to=open".into()
            ],
            1
        )]
    );
    let state = probe.points("palisade.circuit_breaker.state");
    assert_eq!(state, [(vec!["breaker=payments".to_owned()], 1)], "open");
}

#[tokio::test]
async fn a_layer_is_instrumented_in_the_builder_shape() {
    use tower::{Layer, ServiceExt};

    let probe = MetricsProbe::default();
    let layer = palisade_circuit_breaker::CircuitBreakerLayer::new(Config::default())
        .instrument(&probe.meter(), "search");
    let service = layer.layer(tower::service_fn(|(): ()| async {
        Ok::<_, tower::BoxError>(())
    }));
    service.oneshot(()).await.unwrap();
    let calls = probe.points("palisade.circuit_breaker.calls");
    assert!(
        calls.contains(&(vec!["breaker=search".into(), "outcome=success".into()], 1)),
        "{calls:?}"
    );
}
