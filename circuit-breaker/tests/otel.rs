//! OpenTelemetry metrics, read back through the SDK's in-memory exporter.
#![cfg(feature = "otel")]

use std::time::{Duration, Instant};

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use palisade_circuit_breaker::{CircuitBreaker, Config, Outcome, SlidingWindow};

/// Every data point of `name` as (attributes "k=v" sorted, value).
fn points(exporter: &InMemoryMetricExporter, name: &str) -> Vec<(Vec<String>, u64)> {
    let mut found = Vec::new();
    for resource in exporter.get_finished_metrics().unwrap() {
        for scope in resource.scope_metrics() {
            for metric in scope.metrics().filter(|m| m.name() == name) {
                let AggregatedMetrics::U64(data) = metric.data() else {
                    continue;
                };
                let label = |attrs: &mut dyn Iterator<Item = &opentelemetry::KeyValue>| {
                    let mut v: Vec<String> =
                        attrs.map(|kv| format!("{}={}", kv.key, kv.value)).collect();
                    v.sort();
                    v
                };
                match data {
                    MetricData::Sum(sum) => {
                        found.extend(
                            sum.data_points()
                                .map(|p| (label(&mut p.attributes()), p.value())),
                        );
                    }
                    MetricData::Gauge(gauge) => {
                        found.extend(
                            gauge
                                .data_points()
                                .map(|p| (label(&mut p.attributes()), p.value())),
                        );
                    }
                    _ => {}
                }
            }
        }
    }
    found
}

#[test]
fn calls_rejections_transitions_and_state_are_exported() {
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    let meter = provider.meter("test");
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
    provider.force_flush().unwrap();

    let calls = points(&exporter, "palisade.circuit_breaker.calls");
    assert!(
        calls.contains(&(vec!["breaker=payments".into(), "outcome=failure".into()], 2)),
        "{calls:?}"
    );
    assert!(
        calls.contains(&(vec!["breaker=payments".into(), "outcome=success".into()], 1)),
        "{calls:?}"
    );
    let rejected = points(&exporter, "palisade.circuit_breaker.rejected");
    assert_eq!(rejected, [(vec!["breaker=payments".to_owned()], 1)]);
    let transitions = points(&exporter, "palisade.circuit_breaker.transitions");
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
    let state = points(&exporter, "palisade.circuit_breaker.state");
    assert_eq!(state, [(vec!["breaker=payments".to_owned()], 1)], "open");
}
