//! The palisade crates' own OpenTelemetry metrics (breaker, retry, rate
//! limit, relays, catalog cache), exposed on `/metrics` in the Prometheus
//! text format next to the books.
//!
//! A [`PeriodicReader`] whose exporter renders each export as Prometheus
//! text; `/metrics` forces an export and serves the text. The reader's own
//! interval is an hour: scrapes drive it.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};

use crate::metrics::Family;

/// The meter the system instruments its layers with, and the text of its
/// last export.
#[derive(Debug, Clone)]
pub struct Telemetry {
    provider: SdkMeterProvider,
    text: Arc<Mutex<String>>,
}

impl Default for Telemetry {
    fn default() -> Self {
        let text = Arc::new(Mutex::new(String::new()));
        let exporter = PrometheusText { text: text.clone() };
        let provider = SdkMeterProvider::builder()
            .with_reader(
                PeriodicReader::builder(exporter)
                    .with_interval(Duration::from_secs(3600))
                    .build(),
            )
            .build();
        Self { provider, text }
    }
}

impl Telemetry {
    /// The meter to instrument with.
    #[must_use]
    pub fn meter(&self) -> Meter {
        self.provider.meter("palisade-order-system")
    }

    /// Exports now (blocking: the reader's thread does it) and returns the
    /// Prometheus text.
    #[must_use]
    pub fn render(&self) -> String {
        if let Err(error) = self.provider.force_flush() {
            tracing::warn!(%error, "metrics export failed");
        }
        self.text
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Renders each export as Prometheus text.
#[derive(Debug)]
struct PrometheusText {
    text: Arc<Mutex<String>>,
}

impl PushMetricExporter for PrometheusText {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let rendered = render(metrics);
        *self.text.lock().unwrap_or_else(PoisonError::into_inner) = rendered;
        Ok(())
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
        Ok(())
    }

    fn temporality(&self) -> Temporality {
        Temporality::Cumulative
    }
}

/// `palisade.outbox.published` → `palisade_outbox_published`.
fn prometheus_name(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn labels<'a>(
    attributes: impl Iterator<Item = &'a opentelemetry::KeyValue>,
) -> Vec<(String, String)> {
    attributes
        .map(|kv| (prometheus_name(kv.key.as_str()), kv.value.to_string()))
        .collect()
}

fn render(metrics: &ResourceMetrics) -> String {
    let mut out = String::new();
    for scope in metrics.scope_metrics() {
        for metric in scope.metrics() {
            let name = prometheus_name(metric.name());
            match metric.data() {
                AggregatedMetrics::U64(data) => {
                    render_data(&mut out, &name, metric.description(), data);
                }
                AggregatedMetrics::I64(data) => {
                    render_data(&mut out, &name, metric.description(), data);
                }
                AggregatedMetrics::F64(data) => {
                    render_data(&mut out, &name, metric.description(), data);
                }
            }
        }
    }
    out
}

fn as_str(labels: &[(String, String)]) -> Vec<(&str, &str)> {
    labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

fn render_data<T: Copy + std::fmt::Display>(
    out: &mut String,
    name: &str,
    help: &str,
    data: &MetricData<T>,
) {
    match data {
        MetricData::Sum(sum) => {
            let (kind, name) = if sum.is_monotonic() {
                ("counter", format!("{name}_total"))
            } else {
                ("gauge", name.to_owned())
            };
            let mut family = Family::new(out, &name, kind, help);
            for point in sum.data_points() {
                let labels = labels(point.attributes());
                family.sample(&name, &as_str(&labels), point.value());
            }
        }
        MetricData::Gauge(gauge) => {
            let mut family = Family::new(out, name, "gauge", help);
            for point in gauge.data_points() {
                let labels = labels(point.attributes());
                family.sample(name, &as_str(&labels), point.value());
            }
        }
        MetricData::Histogram(histogram) => {
            let mut family = Family::new(out, name, "histogram", help);
            for point in histogram.data_points() {
                let labels = labels(point.attributes());
                let mut cumulative = 0;
                let bounds: Vec<String> = point
                    .bounds()
                    .map(|bound| bound.to_string())
                    .chain(std::iter::once("+Inf".to_owned()))
                    .collect();
                for (bound, count) in bounds.iter().zip(point.bucket_counts()) {
                    cumulative += count;
                    let mut with_le = as_str(&labels);
                    with_le.push(("le", bound));
                    family.sample(&format!("{name}_bucket"), &with_le, cumulative);
                }
                family.sample(&format!("{name}_sum"), &as_str(&labels), point.sum());
                family.sample(&format!("{name}_count"), &as_str(&labels), point.count());
            }
        }
        MetricData::ExponentialHistogram(_) => {
            let _ = writeln!(out, "# {name}: exponential histograms are not exported");
        }
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
        assert!(
            text.contains("# TYPE palisade_test_calls_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("palisade_test_calls_total{breaker=\"card-processor\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("palisade_test_latency_bucket{le=\"0.1\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("palisade_test_latency_bucket{le=\"1\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("palisade_test_latency_bucket{le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("palisade_test_latency_count 3\n"), "{text}");
    }
}
