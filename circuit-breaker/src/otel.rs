//! OpenTelemetry metrics (feature `otel`), registered with
//! [`CircuitBreaker::instrument`](crate::CircuitBreaker::instrument):
//!
//! | name | kind | attributes |
//! |---|---|---|
//! | `palisade.circuit_breaker.calls` | counter | `breaker`, `outcome` (`success`, `failure`, `ignored`, `cut_short`: dropped before its outcome) |
//! | `palisade.circuit_breaker.rejected` | counter | `breaker` |
//! | `palisade.circuit_breaker.transitions` | counter | `breaker`, `from`, `to` |
//! | `palisade.circuit_breaker.state` | gauge | `breaker`; 0 closed, 1 open, 2 half-open, 3 forced open, 4 disabled, 5 metrics only |

use std::sync::Weak;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Meter, ObservableGauge};

use crate::breaker::{Inner, Outcome, State};

/// The instruments of one breaker, with their attribute sets made once.
#[derive(Debug)]
pub(crate) struct Instruments {
    calls: Counter<u64>,
    rejected: Counter<u64>,
    transitions: Counter<u64>,
    _state: ObservableGauge<u64>,
    breaker: [KeyValue; 1],
    outcomes: [[KeyValue; 2]; 4],
}

impl Instruments {
    pub(crate) fn new(meter: &Meter, name: String, inner: Weak<Inner>) -> Self {
        let breaker = KeyValue::new("breaker", name);
        let outcome = |value: &'static str| [breaker.clone(), KeyValue::new("outcome", value)];
        let gauge_breaker = [breaker.clone()];
        Self {
            calls: meter
                .u64_counter("palisade.circuit_breaker.calls")
                .with_description("Calls through the breaker, by outcome")
                .build(),
            rejected: meter
                .u64_counter("palisade.circuit_breaker.rejected")
                .with_description("Calls refused while the breaker was open")
                .build(),
            transitions: meter
                .u64_counter("palisade.circuit_breaker.transitions")
                .with_description("State changes of the breaker")
                .build(),
            _state: meter
                .u64_observable_gauge("palisade.circuit_breaker.state")
                .with_description(
                    "0 closed, 1 open, 2 half-open, 3 forced open, 4 disabled, 5 metrics only",
                )
                .with_callback(move |observer| {
                    if let Some(inner) = inner.upgrade() {
                        observer.observe(state_code(inner.state()), &gauge_breaker);
                    }
                })
                .build(),
            outcomes: [
                outcome("success"),
                outcome("failure"),
                outcome("ignored"),
                outcome("cut_short"),
            ],
            breaker: [breaker],
        }
    }

    pub(crate) fn call(&self, outcome: Outcome) {
        let index = match outcome {
            Outcome::Success => 0,
            Outcome::Failure => 1,
            Outcome::Ignored => 2,
        };
        self.calls.add(1, &self.outcomes[index]);
    }

    /// A call cut short before its outcome ([`Permit::cut_short`](crate::Permit::cut_short)).
    pub(crate) fn cut_short(&self) {
        self.calls.add(1, &self.outcomes[3]);
    }

    pub(crate) fn rejected(&self) {
        self.rejected.add(1, &self.breaker);
    }

    pub(crate) fn transition(&self, from: State, to: State) {
        let attributes = [
            self.breaker[0].clone(),
            KeyValue::new("from", from.to_string()),
            KeyValue::new("to", to.to_string()),
        ];
        self.transitions.add(1, &attributes);
    }
}

const fn state_code(state: State) -> u64 {
    match state {
        State::Closed => 0,
        State::Open => 1,
        State::HalfOpen => 2,
        State::ForcedOpen => 3,
        State::Disabled => 4,
        State::MetricsOnly => 5,
    }
}
