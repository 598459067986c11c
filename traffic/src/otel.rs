//! OpenTelemetry metrics (feature `otel`).
//!
//! [`Canary::instrument`](crate::Canary::instrument):
//!
//! | name | kind | attributes |
//! |---|---|---|
//! | `palisade.traffic.canary_calls` | counter | `canary`, `side` (`stable`, `canary`), `result` (`ok`, `failure`) |
//! | `palisade.traffic.canary_decisions` | counter | `canary`, `decision` (`promoted`, `halted`), `reason` (`errors`, `latency`, `operator`; halts only) |
//! | `palisade.traffic.canary_share` | gauge (f64) | `canary`: the share of traffic the canary takes |
//!
//! [`Cells::instrument`](crate::Cells::instrument):
//!
//! | name | kind | attributes |
//! |---|---|---|
//! | `palisade.traffic.cell_in_flight` | gauge | `router`, `cell`: requests under way on the cell |

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Meter, ObservableGauge};

use crate::canary::{CanaryEvent, HaltReason};

/// A canary's instruments, with their attribute sets made once.
#[derive(Debug)]
pub(crate) struct CanaryInstruments {
    calls: Counter<u64>,
    decisions: Counter<u64>,
    /// By side (stable, canary), then result (ok, failure).
    call: [[[KeyValue; 3]; 2]; 2],
    promoted: [KeyValue; 2],
    canary: KeyValue,
    _share: ObservableGauge<f64>,
}

impl CanaryInstruments {
    pub(crate) fn new(
        meter: &Meter,
        name: String,
        share: impl Fn() -> Option<f64> + Send + Sync + 'static,
    ) -> Self {
        let canary = KeyValue::new("canary", name);
        let call = |side: &'static str, result: &'static str| {
            [
                canary.clone(),
                KeyValue::new("side", side),
                KeyValue::new("result", result),
            ]
        };
        let gauge = [canary.clone()];
        Self {
            calls: meter
                .u64_counter("palisade.traffic.canary_calls")
                .with_description("Calls through the canary split, by side and result")
                .build(),
            decisions: meter
                .u64_counter("palisade.traffic.canary_decisions")
                .with_description("Promotions and halts of the canary")
                .build(),
            call: [
                [call("stable", "ok"), call("stable", "failure")],
                [call("canary", "ok"), call("canary", "failure")],
            ],
            promoted: [canary.clone(), KeyValue::new("decision", "promoted")],
            canary,
            _share: meter
                .f64_observable_gauge("palisade.traffic.canary_share")
                .with_description("The share of traffic the canary takes")
                .with_callback(move |observer| {
                    if let Some(share) = share() {
                        observer.observe(share, &gauge);
                    }
                })
                .build(),
        }
    }

    pub(crate) fn called(&self, on_canary: bool, failed: bool) {
        self.calls
            .add(1, &self.call[usize::from(on_canary)][usize::from(failed)]);
    }

    pub(crate) fn decided(&self, event: &CanaryEvent) {
        match event {
            CanaryEvent::Promoted { .. } => self.decisions.add(1, &self.promoted),
            CanaryEvent::Halted { reason } => {
                let reason = match reason {
                    HaltReason::Errors { .. } => "errors",
                    HaltReason::Latency { .. } => "latency",
                    HaltReason::Operator => "operator",
                };
                self.decisions.add(
                    1,
                    &[
                        self.canary.clone(),
                        KeyValue::new("decision", "halted"),
                        KeyValue::new("reason", reason),
                    ],
                );
            }
        }
    }
}

/// A router's gauge of each cell's requests under way.
pub(crate) fn in_flight_gauge(
    meter: &Meter,
    name: String,
    cells: impl Fn() -> Option<Vec<(std::sync::Arc<str>, usize)>> + Send + Sync + 'static,
) -> ObservableGauge<u64> {
    let router = KeyValue::new("router", name);
    meter
        .u64_observable_gauge("palisade.traffic.cell_in_flight")
        .with_description("Requests under way on each cell")
        .with_callback(move |observer| {
            for (cell, count) in cells().unwrap_or_default() {
                observer.observe(
                    u64::try_from(count).unwrap_or(u64::MAX),
                    &[router.clone(), KeyValue::new("cell", cell.to_string())],
                );
            }
        })
        .build()
}
