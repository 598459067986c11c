//! OpenTelemetry metrics of a relay (feature `otel`), registered with
//! [`Relay::instrument`](crate::Relay::instrument):
//!
//! | name | kind | what |
//! |---|---|---|
//! | `palisade.outbox.published` | counter | events the broker acknowledged (duplicates included) |
//! | `palisade.outbox.duplicates` | counter | of those, acknowledged as duplicates |
//! | `palisade.outbox.failed` | counter | attempts the broker rejected, to be retried |
//! | `palisade.outbox.unavailable` | counter | publishes that found the broker unavailable (attempts untouched) |
//! | `palisade.outbox.dead` | counter | events that failed their last attempt |
//! | `palisade.outbox.superseded` | counter | settles left undone: the claim had passed to another relay |
//! | `palisade.outbox.publish_latency` | histogram (s) | from the event's commit to the broker's acknowledgement |
//! | `palisade.outbox.pending` | gauge | events not yet published |
//! | `palisade.outbox.dead_events` | gauge | dead events waiting for an operator |
//! | `palisade.outbox.held` | gauge | pending events held behind a dead event of their aggregate |
//! | `palisade.outbox.oldest_pending_age` | gauge (s) | how long the oldest pending event has waited |
//! | `palisade.outbox.broker_available` | gauge | 1 while the broker takes the relay's batches, 0 during an outage |
//!
//! Each carries the attribute `relay`. The backlog gauges are refreshed
//! from the table every few seconds while the relay runs;
//! `broker_available` after every batch.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter, ObservableGauge};

use crate::availability::Availability;
use crate::relay::BatchReport;
use crate::store::Backlog;

/// The last backlog seen, read by the gauges' callbacks.
#[derive(Debug, Default)]
struct Seen {
    pending: AtomicU64,
    dead: AtomicU64,
    held: AtomicU64,
    oldest_ms: AtomicU64,
}

/// A relay's instruments.
#[derive(Debug)]
pub(crate) struct Instruments {
    published: Counter<u64>,
    duplicates: Counter<u64>,
    failed: Counter<u64>,
    unavailable: Counter<u64>,
    dead: Counter<u64>,
    superseded: Counter<u64>,
    latency: Histogram<f64>,
    seen: Arc<Seen>,
    _gauges: [ObservableGauge<f64>; 4],
    _available: ObservableGauge<u64>,
    relay: [KeyValue; 1],
}

impl Instruments {
    pub(crate) fn new(meter: &Meter, name: String, availability: Arc<Availability>) -> Self {
        let relay = [KeyValue::new("relay", name)];
        let seen = Arc::new(Seen::default());
        let gauge = |name: &'static str, description: &'static str, read: fn(&Seen) -> f64| {
            let (seen, relay) = (seen.clone(), relay.clone());
            meter
                .f64_observable_gauge(name)
                .with_description(description)
                .with_callback(move |observer| observer.observe(read(&seen), &relay))
                .build()
        };
        #[allow(clippy::cast_precision_loss)]
        let gauges = [
            gauge(
                "palisade.outbox.pending",
                "Events not yet published",
                |seen| seen.pending.load(Ordering::Relaxed) as f64,
            ),
            gauge(
                "palisade.outbox.dead_events",
                "Dead events waiting for an operator",
                |seen| seen.dead.load(Ordering::Relaxed) as f64,
            ),
            gauge(
                "palisade.outbox.held",
                "Pending events held behind a dead event of their aggregate",
                |seen| seen.held.load(Ordering::Relaxed) as f64,
            ),
            gauge(
                "palisade.outbox.oldest_pending_age",
                "Seconds the oldest pending event has waited",
                |seen| seen.oldest_ms.load(Ordering::Relaxed) as f64 / 1000.0,
            ),
        ];
        let available = {
            let relay = relay.clone();
            meter
                .u64_observable_gauge("palisade.outbox.broker_available")
                .with_description(
                    "1 while the broker takes the relay's batches, 0 during an outage",
                )
                .with_callback(move |observer| {
                    observer.observe(u64::from(availability.is_available()), &relay);
                })
                .build()
        };
        let counter = |name: &'static str, description: &'static str| {
            meter
                .u64_counter(name)
                .with_description(description)
                .build()
        };
        Self {
            published: counter(
                "palisade.outbox.published",
                "Events the broker acknowledged",
            ),
            duplicates: counter(
                "palisade.outbox.duplicates",
                "Events acknowledged as duplicates",
            ),
            failed: counter(
                "palisade.outbox.failed",
                "Attempts the broker rejected, to be retried",
            ),
            unavailable: counter(
                "palisade.outbox.unavailable",
                "Publishes that found the broker unavailable; attempts untouched",
            ),
            dead: counter(
                "palisade.outbox.dead",
                "Events that failed their last attempt",
            ),
            superseded: counter(
                "palisade.outbox.superseded",
                "Settles left undone: the claim had passed to another relay",
            ),
            latency: meter
                .f64_histogram("palisade.outbox.publish_latency")
                .with_unit("s")
                .with_description("From the event's commit to the broker's acknowledgement")
                .build(),
            seen,
            _gauges: gauges,
            _available: available,
            relay,
        }
    }

    pub(crate) fn settled(&self, report: &BatchReport, latencies_ms: &[i64]) {
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        self.published.add(count(report.published), &self.relay);
        self.duplicates.add(count(report.duplicates), &self.relay);
        self.failed.add(count(report.failed), &self.relay);
        self.unavailable.add(count(report.unavailable), &self.relay);
        self.dead.add(count(report.dead), &self.relay);
        self.superseded.add(count(report.superseded), &self.relay);
        for &ms in latencies_ms {
            #[allow(clippy::cast_precision_loss)]
            self.latency.record(ms.max(0) as f64 / 1000.0, &self.relay);
        }
    }

    pub(crate) fn saw(&self, backlog: &Backlog) {
        self.seen.pending.store(backlog.pending, Ordering::Relaxed);
        self.seen.dead.store(backlog.dead, Ordering::Relaxed);
        self.seen.held.store(backlog.held, Ordering::Relaxed);
        let oldest = backlog
            .oldest_pending
            .map_or(0, |age| u64::try_from(age.as_millis()).unwrap_or(u64::MAX));
        self.seen.oldest_ms.store(oldest, Ordering::Relaxed);
    }
}
