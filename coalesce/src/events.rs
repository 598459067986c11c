//! What the coalescer and the caches report: `tracing` events and, with
//! feature `otel`, the OpenTelemetry counters listed in the crate docs.

use crate::cache::Served;

/// Where events go: nowhere but `tracing` until instrumented.
#[derive(Debug, Default)]
pub(crate) struct Events {
    #[cfg(feature = "otel")]
    instruments: std::sync::OnceLock<otel::Instruments>,
    /// The cache's warnings that may come with every lookup while its
    /// origin fails: one every few seconds, the rest at debug.
    pub(crate) warnings: palisade_hints::Throttle,
}

impl Events {
    /// Registers the counters once; later calls keep the first.
    #[cfg(feature = "otel")]
    pub(crate) fn instrument(&self, meter: &opentelemetry::metrics::Meter, name: &str) {
        let _ = self.instruments.set(otel::Instruments::new(meter, name));
    }

    pub(crate) fn started(&self) {
        tracing::trace!(target: "palisade_coalesce", "computation started");
        #[cfg(feature = "otel")]
        if let Some(instruments) = self.instruments.get() {
            instruments.origin_calls.add(1, &instruments.cache);
        }
    }

    pub(crate) fn joined(&self) {
        #[cfg(feature = "otel")]
        if let Some(instruments) = self.instruments.get() {
            instruments.coalesced.add(1, &instruments.cache);
        }
    }

    pub(crate) fn served(&self, served: Served) {
        #[cfg(feature = "otel")]
        if let Some(instruments) = self.instruments.get() {
            instruments
                .lookups
                .add(1, &instruments.served[served as usize]);
        }
        let _ = served;
    }

    /// A lookup ended without a value: the origin failed (or its failure
    /// was shared), or the flight was refused.
    pub(crate) fn failed(&self) {
        #[cfg(feature = "otel")]
        if let Some(instruments) = self.instruments.get() {
            instruments.lookups.add(1, &instruments.failed);
        }
    }

    /// Counts the lookup `result` ended as.
    pub(crate) fn looked_up<V, E>(&self, result: &Result<crate::Lookup<V>, E>) {
        match result {
            Ok(lookup) => self.served(lookup.served),
            Err(_) => self.failed(),
        }
    }

    pub(crate) fn early_refresh(&self) {
        tracing::debug!(target: "palisade_coalesce", "early refresh");
        #[cfg(feature = "otel")]
        if let Some(instruments) = self.instruments.get() {
            instruments.early_refreshes.add(1, &instruments.cache);
        }
    }

    /// A Redis call failed or went unanswered.
    #[cfg(feature = "redis")]
    pub(crate) fn redis_failed(&self) {
        #[cfg(feature = "otel")]
        if let Some(instruments) = self.instruments.get() {
            instruments.redis_errors.add(1, &instruments.cache);
        }
    }

    /// A lookup that needed Redis was answered by the failure policy:
    /// computed here, or `refused`.
    #[cfg(feature = "redis")]
    pub(crate) fn without_redis(&self, refused: bool) {
        #[cfg(feature = "otel")]
        if let Some(instruments) = self.instruments.get() {
            instruments
                .without_redis
                .add(1, &instruments.policy[usize::from(refused)]);
        }
        let _ = refused;
    }

    #[cfg(feature = "redis")]
    pub(crate) fn took_over(&self) {
        tracing::info!(target: "palisade_coalesce", "the leader's lock went; this process took over");
        #[cfg(feature = "otel")]
        if let Some(instruments) = self.instruments.get() {
            instruments.lock_takeovers.add(1, &instruments.cache);
        }
    }
}

#[cfg(feature = "otel")]
mod otel {
    use opentelemetry::KeyValue;
    use opentelemetry::metrics::{Counter, Meter};

    /// The counters of one cache, with their attribute sets made once.
    #[derive(Debug)]
    pub(super) struct Instruments {
        pub(super) lookups: Counter<u64>,
        pub(super) origin_calls: Counter<u64>,
        pub(super) coalesced: Counter<u64>,
        pub(super) early_refreshes: Counter<u64>,
        #[cfg(feature = "redis")]
        pub(super) lock_takeovers: Counter<u64>,
        #[cfg(feature = "redis")]
        pub(super) redis_errors: Counter<u64>,
        #[cfg(feature = "redis")]
        pub(super) without_redis: Counter<u64>,
        /// `outcome` computed, refused.
        #[cfg(feature = "redis")]
        pub(super) policy: [[KeyValue; 2]; 2],
        pub(super) cache: [KeyValue; 1],
        /// By `Served as usize`.
        pub(super) served: [[KeyValue; 2]; 4],
        /// `served` failed: no value.
        pub(super) failed: [KeyValue; 2],
    }

    impl Instruments {
        pub(super) fn new(meter: &Meter, name: &str) -> Self {
            let cache = KeyValue::new("cache", name.to_owned());
            let served = |how: &'static str| [cache.clone(), KeyValue::new("served", how)];
            let counter = |name: &'static str, description: &'static str| {
                meter
                    .u64_counter(name)
                    .with_description(description)
                    .build()
            };
            Self {
                lookups: counter(
                    "palisade.coalesce.lookups",
                    "Cache lookups, by how they were served",
                ),
                origin_calls: counter("palisade.coalesce.origin_calls", "Computations started"),
                coalesced: counter(
                    "palisade.coalesce.coalesced",
                    "Callers that joined a computation already running",
                ),
                early_refreshes: counter(
                    "palisade.coalesce.early_refreshes",
                    "Early refreshes started",
                ),
                #[cfg(feature = "redis")]
                lock_takeovers: counter(
                    "palisade.coalesce.lock_takeovers",
                    "Redis locks won by a waiter after the leader's lock went",
                ),
                #[cfg(feature = "redis")]
                redis_errors: counter(
                    "palisade.coalesce.redis_errors",
                    "Redis calls that failed or were not answered in time",
                ),
                #[cfg(feature = "redis")]
                without_redis: counter(
                    "palisade.coalesce.without_redis",
                    "Lookups the failure policy answered while Redis was down, by outcome",
                ),
                #[cfg(feature = "redis")]
                policy: [
                    [cache.clone(), KeyValue::new("outcome", "computed")],
                    [cache.clone(), KeyValue::new("outcome", "refused")],
                ],
                served: [
                    served("fresh"),
                    served("stale"),
                    served("miss"),
                    served("stale_if_error"),
                ],
                failed: served("failed"),
                cache: [cache],
            }
        }
    }
}
