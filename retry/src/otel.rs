//! OpenTelemetry counters (feature `otel`), registered with
//! [`RetryLayer::instrument`](crate::RetryLayer::instrument):
//!
//! | name | kind | attributes |
//! |---|---|---|
//! | `palisade.retry.attempts` | counter | `client` |
//! | `palisade.retry.retries` | counter | `client` |
//! | `palisade.retry.budget_exhausted` | counter | `client` |
//! | `palisade.retry.give_ups` | counter | `client`, `reason` (`attempts`, `hint_over_cap`, `deadline`, `budget`, `not_replayable`) |

use std::sync::Arc;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Meter};

use crate::events::GiveUp;
use crate::layer::RetryLayer;

/// The counters of one layer, with their attribute sets made once.
#[derive(Debug)]
pub(crate) struct Instruments {
    attempts: Counter<u64>,
    retries: Counter<u64>,
    budget_exhausted: Counter<u64>,
    give_ups: Counter<u64>,
    client: [KeyValue; 1],
    reasons: [[KeyValue; 2]; 5],
}

const REASONS: [GiveUp; 5] = [
    GiveUp::Attempts,
    GiveUp::HintOverCap,
    GiveUp::Deadline,
    GiveUp::Budget,
    GiveUp::NotReplayable,
];

impl Instruments {
    fn new(meter: &Meter, name: String) -> Self {
        let client = KeyValue::new("client", name);
        let reason = |reason: GiveUp| [client.clone(), KeyValue::new("reason", reason.as_str())];
        Self {
            attempts: meter
                .u64_counter("palisade.retry.attempts")
                .with_description("Attempts sent, first attempts and retries")
                .build(),
            retries: meter
                .u64_counter("palisade.retry.retries")
                .with_description("Retries decided")
                .build(),
            budget_exhausted: meter
                .u64_counter("palisade.retry.budget_exhausted")
                .with_description("Retries refused because the retry budget was spent")
                .build(),
            give_ups: meter
                .u64_counter("palisade.retry.give_ups")
                .with_description("Failed results returned without another attempt, by reason")
                .build(),
            reasons: REASONS.map(reason),
            client: [client],
        }
    }

    pub(crate) fn attempt(&self) {
        self.attempts.add(1, &self.client);
    }

    pub(crate) fn retry(&self) {
        self.retries.add(1, &self.client);
    }

    pub(crate) fn gave_up(&self, reason: GiveUp) {
        if reason == GiveUp::Budget {
            self.budget_exhausted.add(1, &self.client);
        }
        let index = REASONS.iter().position(|r| *r == reason).unwrap_or(0);
        self.give_ups.add(1, &self.reasons[index]);
    }
}

impl<C, R> RetryLayer<C, R> {
    /// Counts this layer's attempts, retries, budget exhaustions and
    /// give-ups with OpenTelemetry (feature `otel`); see the crate docs for
    /// the names. `name` becomes the `client` attribute.
    #[must_use]
    pub fn instrument(mut self, meter: &Meter, name: impl Into<String>) -> Self {
        self.events.instruments = Some(Arc::new(Instruments::new(meter, name.into())));
        self
    }
}
