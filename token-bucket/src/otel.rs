//! OpenTelemetry metrics (feature `otel`).
//!
//! [`RateLimitLayer::instrument`](crate::RateLimitLayer::instrument):
//!
//! | name | kind | attributes |
//! |---|---|---|
//! | `palisade.token_bucket.decisions` | counter | `limiter`, `result` (`allowed`, `denied`) |
//! | `palisade.token_bucket.store_failures` | counter | `limiter`: calls answered without a decision |
//!
//! [`RedisStore::instrument`](crate::RedisStore::instrument) (with feature
//! `redis`):
//!
//! | name | kind | attributes |
//! |---|---|---|
//! | `palisade.token_bucket.store_errors` | counter | `store`, `kind` (`timeout`, `backend`) |
//! | `palisade.token_bucket.fallback_decisions` | counter | `store`: decisions made by the failure policy |
//! | `palisade.token_bucket.degraded` | gauge | `store`: 1 while the failure policy applies |
//!
//! [`LeasingStore::instrument`](crate::LeasingStore::instrument) (with
//! feature `redis`), beside its Redis store's own:
//!
//! | name | kind | attributes |
//! |---|---|---|
//! | `palisade.token_bucket.refills` | counter | `store`: round trips made for a key whose lease was spent |
//! | `palisade.token_bucket.leased_tokens` | counter | `store`: tokens taken beyond the cost of the request that asked |
//! | `palisade.token_bucket.returned_tokens` | counter | `store`: unspent tokens given back to Redis |
//! | `palisade.token_bucket.held_tokens` | gauge | `store`: tokens held in leases now |

use std::sync::Arc;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Meter};

use crate::events::Events;
use crate::layer::RateLimitLayer;
use crate::store::Store;

/// A layer's counters, with their attribute sets made once.
#[derive(Debug)]
pub(crate) struct LayerInstruments {
    decisions: Counter<u64>,
    store_failures: Counter<u64>,
    allowed: [KeyValue; 2],
    denied: [KeyValue; 2],
    limiter: [KeyValue; 1],
}

impl LayerInstruments {
    pub(crate) fn decided(&self, allowed: bool) {
        let attributes = if allowed { &self.allowed } else { &self.denied };
        self.decisions.add(1, attributes);
    }

    pub(crate) fn store_failed(&self) {
        self.store_failures.add(1, &self.limiter);
    }
}

impl<St: Store, K, W, R> RateLimitLayer<St, K, W, R> {
    /// Counts this layer's decisions by result, and the calls its store
    /// could not decide, with OpenTelemetry (feature `otel`); `name` becomes
    /// the `limiter` attribute. See the [`otel`](crate::otel) module for
    /// the names.
    #[must_use]
    pub fn instrument(mut self, meter: &Meter, name: impl Into<String>) -> Self {
        let limiter = KeyValue::new("limiter", name.into());
        let result = |value: &'static str| [limiter.clone(), KeyValue::new("result", value)];
        self.events = Events {
            instruments: Some(Arc::new(LayerInstruments {
                decisions: meter
                    .u64_counter("palisade.token_bucket.decisions")
                    .with_description("Rate limit decisions, by result")
                    .build(),
                store_failures: meter
                    .u64_counter("palisade.token_bucket.store_failures")
                    .with_description("Requests answered without a decision: the store failed")
                    .build(),
                allowed: result("allowed"),
                denied: result("denied"),
                limiter: [limiter],
            })),
        };
        self
    }
}

/// A Redis store's instruments.
#[cfg(feature = "redis")]
#[derive(Debug)]
pub(crate) struct StoreInstruments {
    errors: Counter<u64>,
    fallback_decisions: Counter<u64>,
    _degraded: opentelemetry::metrics::ObservableGauge<u64>,
    timeout: [KeyValue; 2],
    backend: [KeyValue; 2],
    store: [KeyValue; 1],
}

#[cfg(feature = "redis")]
impl StoreInstruments {
    pub(crate) fn new(
        meter: &Meter,
        name: String,
        degraded: impl Fn() -> bool + Send + Sync + 'static,
    ) -> Self {
        let store = KeyValue::new("store", name);
        let kind = |value: &'static str| [store.clone(), KeyValue::new("kind", value)];
        let gauge_store = [store.clone()];
        Self {
            errors: meter
                .u64_counter("palisade.token_bucket.store_errors")
                .with_description("Redis calls that failed or timed out, by kind")
                .build(),
            fallback_decisions: meter
                .u64_counter("palisade.token_bucket.fallback_decisions")
                .with_description("Decisions made by the failure policy instead of Redis")
                .build(),
            _degraded: meter
                .u64_observable_gauge("palisade.token_bucket.degraded")
                .with_description("1 while the store applies its failure policy")
                .with_callback(move |observer| {
                    observer.observe(u64::from(degraded()), &gauge_store);
                })
                .build(),
            timeout: kind("timeout"),
            backend: kind("backend"),
            store: [store],
        }
    }

    pub(crate) fn failed(&self, timeout: bool) {
        self.errors.add(
            1,
            if timeout {
                &self.timeout
            } else {
                &self.backend
            },
        );
    }

    pub(crate) fn fell_back(&self) {
        self.fallback_decisions.add(1, &self.store);
    }
}

/// A leasing store's instruments.
#[cfg(feature = "redis")]
#[derive(Debug)]
pub(crate) struct LeaseInstruments {
    refills: Counter<u64>,
    leased: Counter<u64>,
    returned: Counter<u64>,
    _held: opentelemetry::metrics::ObservableGauge<u64>,
    store: [KeyValue; 1],
}

#[cfg(feature = "redis")]
impl LeaseInstruments {
    pub(crate) fn new(
        meter: &Meter,
        name: String,
        held: impl Fn() -> u64 + Send + Sync + 'static,
    ) -> Self {
        let store = [KeyValue::new("store", name)];
        let gauge_store = store.clone();
        Self {
            refills: meter
                .u64_counter("palisade.token_bucket.refills")
                .with_description("Round trips to Redis for a key whose lease was spent")
                .build(),
            leased: meter
                .u64_counter("palisade.token_bucket.leased_tokens")
                .with_description("Tokens leased beyond the cost of the request that asked")
                .build(),
            returned: meter
                .u64_counter("palisade.token_bucket.returned_tokens")
                .with_description("Unspent leased tokens given back to Redis")
                .build(),
            _held: meter
                .u64_observable_gauge("palisade.token_bucket.held_tokens")
                .with_description("Tokens held in leases now")
                .with_callback(move |observer| observer.observe(held(), &gauge_store))
                .build(),
            store,
        }
    }

    /// A refill took `leased` tokens beyond its request's cost, after
    /// giving back `returned`.
    pub(crate) fn refilled(&self, leased: u32, returned: u32) {
        self.refills.add(1, &self.store);
        self.leased.add(u64::from(leased), &self.store);
        self.returned(returned);
    }

    pub(crate) fn returned(&self, tokens: u32) {
        if tokens > 0 {
            self.returned.add(u64::from(tokens), &self.store);
        }
    }
}
