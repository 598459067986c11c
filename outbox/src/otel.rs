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
//! | `palisade.outbox.publish_latency` | histogram (s) | from the event's write (its transaction's start, on PostgreSQL) to the broker's acknowledgement, by the database's clock then the relay's |
//! | `palisade.outbox.pending` | gauge | events not yet published |
//! | `palisade.outbox.dead_events` | gauge | dead events waiting for an operator |
//! | `palisade.outbox.held` | gauge | pending events held behind a dead event of their aggregate |
//! | `palisade.outbox.oldest_pending_age` | gauge (s) | how long the oldest pending event has waited |
//! | `palisade.outbox.broker_available` | gauge | 1 while the broker takes the relay's batches, 0 during an outage |
//!
//! Each carries the attribute `relay`. The backlog gauges are refreshed
//! from the table every few seconds while the relay runs;
//! `broker_available` after every batch. Between refreshes (and while the
//! table cannot be read) `oldest_pending_age` keeps growing from the last
//! reading. Once the relay is dropped (its task ended or panicked), the
//! gauges report nothing rather than its last values.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter, ObservableGauge};

use crate::availability::Availability;
use crate::relay::BatchReport;
use crate::store::Backlog;

/// The last backlog seen, read by the gauges' callbacks.
#[derive(Debug)]
struct Seen {
    pending: AtomicU64,
    dead: AtomicU64,
    held: AtomicU64,
    /// When the oldest pending event was written, in milliseconds after
    /// `start` as this process's clock puts it (negative before it;
    /// [`NONE_PENDING`] for no pending event), so its age grows between
    /// readings.
    oldest_written_ms: AtomicI64,
    start: Instant,
}

/// `Seen::oldest_written_ms` with nothing pending.
const NONE_PENDING: i64 = i64::MIN;

impl Seen {
    fn new() -> Self {
        Self {
            pending: AtomicU64::new(0),
            dead: AtomicU64::new(0),
            held: AtomicU64::new(0),
            oldest_written_ms: AtomicI64::new(NONE_PENDING),
            start: Instant::now(),
        }
    }

    fn elapsed_ms(&self) -> i64 {
        i64::try_from(self.start.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    /// The oldest pending event's age now, in seconds.
    fn oldest_age_s(&self) -> f64 {
        match self.oldest_written_ms.load(Ordering::Relaxed) {
            NONE_PENDING => 0.0,
            #[allow(clippy::cast_precision_loss)]
            written => self.elapsed_ms().saturating_sub(written) as f64 / 1000.0,
        }
    }
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
    pub(crate) fn new(meter: &Meter, name: String, availability: &Arc<Availability>) -> Self {
        let relay = [KeyValue::new("relay", name)];
        let seen = Arc::new(Seen::new());
        // Callbacks stay registered as long as the meter provider lives: by
        // a weak handle, they observe nothing once the relay is gone.
        // `unit` is empty for a count of events.
        let gauge = |name: &'static str,
                     unit: &'static str,
                     description: &'static str,
                     read: fn(&Seen) -> f64| {
            let (seen, relay) = (Arc::downgrade(&seen), relay.clone());
            meter
                .f64_observable_gauge(name)
                .with_unit(unit)
                .with_description(description)
                .with_callback(move |observer| {
                    if let Some(seen) = seen.upgrade() {
                        observer.observe(read(&seen), &relay);
                    }
                })
                .build()
        };
        #[allow(clippy::cast_precision_loss)]
        let gauges = [
            gauge(
                "palisade.outbox.pending",
                "",
                "Events not yet published",
                |seen| seen.pending.load(Ordering::Relaxed) as f64,
            ),
            gauge(
                "palisade.outbox.dead_events",
                "",
                "Dead events waiting for an operator",
                |seen| seen.dead.load(Ordering::Relaxed) as f64,
            ),
            gauge(
                "palisade.outbox.held",
                "",
                "Pending events held behind a dead event of their aggregate",
                |seen| seen.held.load(Ordering::Relaxed) as f64,
            ),
            gauge(
                "palisade.outbox.oldest_pending_age",
                "s",
                "Seconds the oldest pending event has waited",
                Seen::oldest_age_s,
            ),
        ];
        let available = {
            let (relay, availability) = (relay.clone(), Arc::downgrade(availability));
            meter
                .u64_observable_gauge("palisade.outbox.broker_available")
                .with_description(
                    "1 while the broker takes the relay's batches, 0 during an outage",
                )
                .with_callback(move |observer| {
                    if let Some(availability) = availability.upgrade() {
                        observer.observe(u64::from(availability.is_available()), &relay);
                    }
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
                .with_boundaries(palisade_hints::SECONDS_BOUNDARIES.to_vec())
                .with_description("From the event's write to the broker's acknowledgement")
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
        let written = backlog.oldest_pending.map_or(NONE_PENDING, |age| {
            let age_ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
            // Never NONE_PENDING: an age that large is not a reading.
            self.seen
                .elapsed_ms()
                .saturating_sub(age_ms)
                .max(NONE_PENDING + 1)
        });
        self.seen
            .oldest_written_ms
            .store(written, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use palisade_testkit::MetricsProbe;

    use super::*;

    #[test]
    fn the_oldest_age_grows_between_readings_and_the_gauges_end_with_their_relay() {
        let probe = MetricsProbe::default();
        let availability = Arc::new(Availability::default());
        let instruments = Instruments::new(&probe.meter(), "orders".into(), &availability);
        let relay = || vec!["relay=orders".to_owned()];
        instruments.saw(&Backlog {
            pending: 3,
            dead: 1,
            held: 0,
            oldest_pending: Some(Duration::from_secs(10)),
        });
        // Read on the exporter's thread, by the clock the gauge was set by.
        std::thread::sleep(Duration::from_millis(20));
        let [(labels, age)] = &probe.points_f64("palisade.outbox.oldest_pending_age")[..] else {
            panic!("one series")
        };
        assert_eq!(labels, &relay());
        assert!(
            *age >= 10.02,
            "ten seconds old when read, and older since: {age}"
        );
        assert_eq!(
            probe.points_f64("palisade.outbox.pending"),
            [(relay(), 3.0)]
        );
        instruments.saw(&Backlog::default());
        assert_eq!(
            probe.points_f64("palisade.outbox.oldest_pending_age"),
            [(relay(), 0.0)],
            "nothing pending"
        );

        drop(instruments);
        drop(availability);
        // Something else to export: an export with nothing in it is not
        // made, and the last one would be read again.
        probe.meter().u64_counter("test.tick").build().add(1, &[]);
        for gauge in [
            "palisade.outbox.pending",
            "palisade.outbox.dead_events",
            "palisade.outbox.held",
            "palisade.outbox.oldest_pending_age",
        ] {
            assert_eq!(probe.points_f64(gauge), [], "{gauge} after its relay");
        }
        assert_eq!(probe.points("palisade.outbox.broker_available"), []);
    }
}
