//! The turn to half-open announced to a log sink that panics: alone in
//! its test binary, because `tracing` caches whether a place logs at all
//! the first time any thread passes it, and a test passing the same place
//! with no subscriber at that moment would leave this one's sink unasked.

use std::time::Instant;

use palisade_circuit_breaker::{Outcome, State};

#[path = "support/opened.rs"]
mod opened;

use opened::{MAX_WAIT, OPEN, opened};

/// A log sink (or exporter) that fails on every event.
struct PanicsOnEvents;

impl tracing::Subscriber for PanicsOnEvents {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, _: &tracing::Event<'_>) {
        panic!("the log sink fails");
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

/// The turn to half-open is announced (a `tracing` event) after the
/// first probe's slot is taken: when announcing panics, that probe still
/// ends by the longest wait, and the cycle goes on.
#[test]
fn a_turn_to_half_open_whose_announcement_panics_still_ends_its_probe() {
    let start = Instant::now();
    let breaker = opened(1, start);
    let half_open = start + OPEN;
    let announced = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        tracing::subscriber::with_default(PanicsOnEvents, || {
            breaker.try_acquire(half_open).map(drop)
        })
    }));
    assert!(announced.is_err(), "the sink panicked");
    assert_eq!(breaker.state(), State::HalfOpen);

    let reopened = breaker.try_acquire(half_open + MAX_WAIT).unwrap_err();
    assert_eq!(breaker.state(), State::Open, "its probe counted as failed");
    let wait = reopened.retry_after().expect("a wait");
    let next = half_open + MAX_WAIT + wait;
    breaker
        .try_acquire(next)
        .expect("the next probe")
        .record(Outcome::Success, next);
    assert_eq!(breaker.state(), State::Closed);
}
