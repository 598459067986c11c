//! What the limiter reports: `tracing` events for refusals and store
//! trouble, and (feature `otel`) OpenTelemetry counters.

use crate::bucket::Decision;

/// Where a layer's events go; cheap to clone (nothing, or one `Arc`).
#[derive(Debug, Clone)]
pub(crate) struct Events {
    #[cfg(feature = "otel")]
    pub(crate) instruments: Option<std::sync::Arc<crate::otel::LayerInstruments>>,
}

impl Events {
    /// No metrics: `tracing` only.
    pub(crate) const fn tracing_only() -> Self {
        Self {
            #[cfg(feature = "otel")]
            instruments: None,
        }
    }

    /// A decision the layer acts on.
    #[inline]
    pub(crate) fn decided(&self, decision: &Decision) {
        if !decision.is_allowed() {
            tracing::debug!(
                target: "palisade_token_bucket",
                retry_after_ms = u64::try_from(decision.retry_after().as_millis()).unwrap_or(u64::MAX),
                "rate limited"
            );
        }
        #[cfg(feature = "otel")]
        if let Some(instruments) = &self.instruments {
            instruments.decided(decision.is_allowed());
        }
    }

    /// The store could not decide and its policy is to say so.
    pub(crate) fn store_failed(&self) {
        #[cfg(feature = "otel")]
        if let Some(instruments) = &self.instruments {
            instruments.store_failed();
        }
    }
}
