//! Reading OpenTelemetry metrics back in tests.

use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};

/// A histogram's buckets: each one's upper bound and count.
pub type Buckets = Vec<(f64, u64)>;

/// A meter whose `u64` data points can be read back.
#[derive(Debug)]
pub struct MetricsProbe {
    exporter: InMemoryMetricExporter,
    provider: SdkMeterProvider,
}

impl Default for MetricsProbe {
    fn default() -> Self {
        let exporter = InMemoryMetricExporter::default();
        let provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(exporter.clone()).build())
            .build();
        Self { exporter, provider }
    }
}

impl MetricsProbe {
    /// A meter to instrument the code under test with.
    #[must_use]
    pub fn meter(&self) -> Meter {
        self.provider.meter("test")
    }

    /// Every data point of the `u64` counter or gauge `name` so far, as
    /// (its attributes as sorted `key=value` strings, its value).
    ///
    /// # Panics
    ///
    /// When the SDK cannot flush or export.
    #[must_use]
    pub fn points(&self, name: &str) -> Vec<(Vec<String>, u64)> {
        self.collect(name, |data, found| match data {
            AggregatedMetrics::U64(MetricData::Sum(sum)) => {
                found.extend(
                    sum.data_points()
                        .map(|p| (label(p.attributes()), p.value())),
                );
            }
            AggregatedMetrics::U64(MetricData::Gauge(gauge)) => {
                found.extend(
                    gauge
                        .data_points()
                        .map(|p| (label(p.attributes()), p.value())),
                );
            }
            _ => {}
        })
    }

    /// The values of the `f64` gauge `name`, and the sample counts of the
    /// `f64` histogram `name`, by attributes (as [`points`](Self::points)).
    ///
    /// # Panics
    ///
    /// When the SDK cannot flush or export.
    #[must_use]
    pub fn points_f64(&self, name: &str) -> Vec<(Vec<String>, f64)> {
        self.collect(name, |data, found| match data {
            AggregatedMetrics::F64(MetricData::Gauge(gauge)) => {
                found.extend(
                    gauge
                        .data_points()
                        .map(|p| (label(p.attributes()), p.value())),
                );
            }
            #[allow(clippy::cast_precision_loss)]
            AggregatedMetrics::F64(MetricData::Histogram(histogram)) => {
                found.extend(
                    histogram
                        .data_points()
                        .map(|p| (label(p.attributes()), p.count() as f64)),
                );
            }
            _ => {}
        })
    }

    /// The buckets of the `f64` histogram `name`, by attributes (as
    /// [`points`](Self::points)): each bucket's upper bound and count, the
    /// last (unbounded) bucket's bound `f64::INFINITY`.
    ///
    /// # Panics
    ///
    /// When the SDK cannot flush or export.
    #[must_use]
    pub fn buckets(&self, name: &str) -> Vec<(Vec<String>, Buckets)> {
        self.collect(name, |data, found| {
            if let AggregatedMetrics::F64(MetricData::Histogram(histogram)) = data {
                found.extend(histogram.data_points().map(|p| {
                    let bounds = p.bounds().chain(std::iter::once(f64::INFINITY));
                    (
                        label(p.attributes()),
                        bounds.zip(p.bucket_counts()).collect(),
                    )
                }));
            }
        })
    }

    /// Flushes, then lets `pick` take the points of every metric `name` in
    /// the last export (each export holds the cumulative values).
    fn collect<T>(
        &self,
        name: &str,
        pick: impl Fn(&AggregatedMetrics, &mut Vec<(Vec<String>, T)>),
    ) -> Vec<(Vec<String>, T)> {
        self.provider.force_flush().expect("flush metrics");
        let exported = self
            .exporter
            .get_finished_metrics()
            .expect("exported metrics");
        let mut found = Vec::new();
        if let Some(resource) = exported.last() {
            for scope in resource.scope_metrics() {
                for metric in scope.metrics().filter(|m| m.name() == name) {
                    pick(metric.data(), &mut found);
                }
            }
        }
        found
    }
}

/// A data point's attributes as sorted `key=value` strings.
fn label<'a>(attributes: impl Iterator<Item = &'a opentelemetry::KeyValue>) -> Vec<String> {
    let mut labels: Vec<String> = attributes
        .map(|kv| format!("{}={}", kv.key, kv.value))
        .collect();
    labels.sort();
    labels
}
