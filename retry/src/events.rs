//! What the retry layer reports: a `tracing` event for every retry and
//! give-up, and (feature `otel`) OpenTelemetry counters.

use std::time::Duration;

/// Why a request that failed was not tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GiveUp {
    /// `max_attempts` reached.
    Attempts,
    /// The dependency asked for a wait longer than the backoff's cap.
    HintOverCap,
    /// The next attempt could not finish before the deadline, or the
    /// deadline passed during an attempt (which is abandoned); or the
    /// request's own time (a gRPC caller's `grpc-timeout`) would be up
    /// before the next attempt starts.
    Deadline,
    /// The retry budget is spent.
    Budget,
    /// The request cannot be sent again: its body outgrew the buffer, or an
    /// earlier attempt's transport still held it when the wait was over.
    NotReplayable,
}

impl GiveUp {
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::Attempts => "attempts",
            Self::HintOverCap => "hint_over_cap",
            Self::Deadline => "deadline",
            Self::Budget => "budget",
            Self::NotReplayable => "not_replayable",
        }
    }
}

/// Where the layer's events go.
#[derive(Debug, Clone, Default)]
pub(crate) struct Events {
    #[cfg(feature = "otel")]
    pub(crate) instruments: Option<std::sync::Arc<crate::otel::Instruments>>,
    /// The layer's "budget exhausted" warnings: one every few seconds.
    warnings: std::sync::Arc<palisade_hints::Throttle>,
}

impl Events {
    /// An attempt starts (the first or a retry).
    #[inline]
    pub(crate) fn attempt(&self) {
        #[cfg(feature = "otel")]
        if let Some(instruments) = &self.instruments {
            instruments.attempt();
        }
    }

    /// A retry was decided: attempt `next` starts after `delay`.
    pub(crate) fn retrying(&self, next: u32, delay: Duration) {
        tracing::debug!(
            target: "palisade_retry",
            attempt = next,
            delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            "retrying"
        );
        #[cfg(feature = "otel")]
        if let Some(instruments) = &self.instruments {
            instruments.retry();
        }
    }

    /// A failed attempt is returned to the caller for `reason`.
    pub(crate) fn gave_up(&self, reason: GiveUp, attempts: u32) {
        if reason == GiveUp::Budget {
            // Every failing call's while the budget is spent.
            palisade_hints::throttled!(warn, by: &self.warnings,
                target: "palisade_retry",
                attempts,
                "retry budget exhausted; returning the last result"
            );
        } else {
            tracing::debug!(target: "palisade_retry", attempts, reason = reason.as_str(), "giving up");
        }
        #[cfg(feature = "otel")]
        if let Some(instruments) = &self.instruments {
            instruments.gave_up(reason);
        }
    }
}
