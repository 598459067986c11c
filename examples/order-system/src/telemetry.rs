//! The system's metrics on `/metrics`: the palisade crates' own
//! OpenTelemetry instruments (breaker, retry, rate limit, relays, catalog
//! cache) and the system's own (the consumers' counters, the books; see
//! [`metrics`](crate::metrics)), exposed in the Prometheus text format by
//! OpenTelemetry's Prometheus exporter (`opentelemetry-prometheus`).
//!
//! The exporter is a pull reader: a scrape collects every instrument at
//! that moment, running the observable instruments' callbacks, and nothing
//! runs between scrapes.

use std::sync::Arc;

use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use prometheus::{Registry, TextEncoder};

/// The content type of what [`Telemetry::render`] returns.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The meter the system instruments its layers with, and the registry the
/// exporter fills at each scrape.
#[derive(Debug, Clone)]
pub struct Telemetry {
    provider: SdkMeterProvider,
    registry: Registry,
    /// One scrape at a time reads the books it was given (see
    /// [`render_with`](Self::render_with)).
    scraping: Arc<tokio::sync::Mutex<()>>,
}

impl Default for Telemetry {
    fn default() -> Self {
        let registry = Registry::new();
        // Neither `target_info` nor the scope's labels: one process, one
        // scope, and series named as the crates' docs name them.
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .without_target_info()
            .scope_info_enabled(false)
            .build()
            .unwrap_or_else(|error| unreachable!("a fresh registry takes the exporter: {error}"));
        let provider = SdkMeterProvider::builder().with_reader(exporter).build();
        Self {
            provider,
            registry,
            scraping: Arc::default(),
        }
    }
}

impl Telemetry {
    /// The meter to instrument with.
    #[must_use]
    pub fn meter(&self) -> Meter {
        self.provider.meter("palisade-order-system")
    }

    /// Collects every instrument now, as Prometheus text.
    #[must_use]
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|error| {
                tracing::warn!(%error, "metrics not encoded");
                String::new()
            })
    }

    /// Puts `value` where the observable instruments of this scrape read
    /// it (`slot`), collects, and empties the slot again: a value read
    /// asynchronously (the books, from the databases) measured by
    /// instruments whose callbacks cannot wait.
    pub async fn render_with<T: Send>(
        &self,
        slot: &std::sync::Mutex<Option<T>>,
        value: T,
    ) -> String {
        let _turn = self.scraping.lock().await;
        *slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(value);
        let rendered = self.render();
        slot.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        rendered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gauges_and_histograms_read_as_prometheus_text() {
        let telemetry = Telemetry::default();
        let meter = telemetry.meter();
        let calls = meter
            .u64_counter("palisade.test.calls")
            .with_description("Calls")
            .build();
        calls.add(
            3,
            &[opentelemetry::KeyValue::new("breaker", "card-processor")],
        );
        let latency = meter
            .f64_histogram("palisade.test.latency")
            .with_boundaries(vec![0.1, 1.0])
            .build();
        latency.record(0.05, &[]);
        latency.record(0.5, &[]);
        latency.record(5.0, &[]);
        let text = telemetry.render();
        for line in [
            "# TYPE palisade_test_calls_total counter\n",
            "palisade_test_calls_total{breaker=\"card-processor\"} 3\n",
            "palisade_test_latency_bucket{le=\"0.1\"} 1\n",
            "palisade_test_latency_bucket{le=\"1\"} 2\n",
            "palisade_test_latency_bucket{le=\"+Inf\"} 3\n",
            "palisade_test_latency_count 3\n",
        ] {
            assert!(text.contains(line), "{line:?} not in:\n{text}");
        }
    }

    #[tokio::test]
    async fn a_value_read_for_a_scrape_is_measured_by_it_and_by_it_only() {
        let telemetry = Telemetry::default();
        let slot = Arc::new(std::sync::Mutex::new(None::<u64>));
        let reading = slot.clone();
        let _ = telemetry
            .meter()
            .u64_observable_gauge("palisade.test.read")
            .with_callback(move |observer| {
                if let Some(value) = *reading.lock().unwrap() {
                    observer.observe(value, &[]);
                }
            })
            .build();
        let text = telemetry.render_with(&slot, 42).await;
        assert!(text.contains("palisade_test_read 42\n"), "{text}");
        assert!(slot.lock().unwrap().is_none());
        assert!(!telemetry.render().contains("palisade_test_read 42"));
    }
}
