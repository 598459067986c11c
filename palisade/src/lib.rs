#![cfg_attr(docsrs, feature(doc_cfg))]
//! Resilience patterns as tower layers, behind one crate's features.
//!
//! Each pattern is a crate of its own, usable alone; this crate re-exports
//! the ones you choose by feature and adds [`ServiceBuilderExt`], so a
//! stack reads as what it does:
//!
//! | feature | crate | as |
//! |---|---|---|
//! | `breaker` | `palisade-circuit-breaker` | [`circuit_breaker`] |
//! | `retry` | `palisade-retry` | [`retry`] |
//! | `rate-limit` | `palisade-token-bucket` | [`rate_limit`] |
//! | `coalesce` | `palisade-coalesce` | [`coalesce`] |
//! | `outbox` | `palisade-outbox` | [`outbox`] |
//! | `tracecontext` | `palisade-tracecontext` | [`tracecontext`] |
//! | `pkce` | `palisade-pkce` | [`pkce`] |
//! | `slo` | `palisade-slo` | [`slo`] |
//! | `traffic` | `palisade-traffic` | [`traffic`] |
//!
//! and, for whichever of those are chosen: `http` (the presets that answer
//! their own refusals with 503 or 429 and stack on an axum `Router` as
//! they are), `grpc` (grpc-status from the head or the trailers,
//! pushback, trailers-only refusals; the SLO layer's and the canary
//! split's gRPC modes),
//! `tonic` (the stack takes and gives `tonic::body::Body`, so a `Channel`
//! and a generated client take it as it is), `redis` (shared and leased
//! buckets, shared caches, the breaker and the error budget a fleet
//! shares), `postgres`,
//! `sqlite` and `nats` (the outbox's stores, inboxes, publisher and
//! consumer) and `otel` (OpenTelemetry metrics). Features that meet are
//! joined: `outbox` with `tracecontext` carries the trace across the
//! broker, with `breaker` puts the relay's publisher behind a breaker;
//! `coalesce` with `tracecontext` runs each computation in its starter's
//! trace.
//! [`hints`] is always there:
//! the signals every layer reads the same way.
//!
//! # Example
//!
//! A tonic client with trace context, retries, a circuit breaker and a
//! rate limit (features `breaker`, `retry`, `rate-limit`,
//! `tracecontext`, `tonic`):
//!
//! ```
//! # #[cfg(all(feature = "breaker", feature = "retry", feature = "rate-limit",
//! #           feature = "tracecontext", feature = "tonic"))]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use palisade::prelude::*;
//! use tower::ServiceBuilder;
//!
//! # let _rt = tokio::runtime::Runtime::new()?; let _guard = _rt.enter();
//! let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:50051").connect_lazy();
//! let stack = ServiceBuilder::new()
//!     .propagate_trace()
//!     .retry_for_tonic(RetryConfig::default())
//!     .circuit_breaker_for_grpc(BreakerConfig::default())
//!     .rate_limit_for_grpc(LocalStore::default(), Bucket::new(100, 50.0)?, key::global("processor"))
//!     .service(channel);
//! let health = tonic_health::pb::health_client::HealthClient::new(stack);
//! # drop(health);
//! # Ok(()) }
//! # #[cfg(not(all(feature = "breaker", feature = "retry", feature = "rate-limit",
//! #               feature = "tracecontext", feature = "tonic")))]
//! # fn main() {}
//! ```

mod builder;

pub use builder::ServiceBuilderExt;
pub use palisade_hints as hints;

/// Circuit breaker: closed, open and half-open over a sliding window
/// (`palisade-circuit-breaker`, feature `breaker`).
#[cfg(feature = "breaker")]
pub use palisade_circuit_breaker as circuit_breaker;

/// Request coalescing: single flight, in process or across processes, and
/// stale-while-revalidate (`palisade-coalesce`, feature `coalesce`).
#[cfg(feature = "coalesce")]
pub use palisade_coalesce as coalesce;

/// Transactional outbox, its relay and inbox (`palisade-outbox`, feature
/// `outbox`; its stores and inboxes with `postgres` or `sqlite`, its
/// JetStream publisher and consumer with `nats`).
#[cfg(feature = "outbox")]
pub use palisade_outbox as outbox;

/// PKCE (RFC 7636) verifiers, challenges and the server's check
/// (`palisade-pkce`, feature `pkce`).
#[cfg(feature = "pkce")]
pub use palisade_pkce as pkce;

/// Token-bucket rate limiting, in process or shared through Redis
/// (`palisade-token-bucket`, feature `rate-limit`).
#[cfg(feature = "rate-limit")]
pub use palisade_token_bucket as rate_limit;

/// Retry with backoff, budgets, deadlines and replayable bodies
/// (`palisade-retry`, feature `retry`).
#[cfg(feature = "retry")]
pub use palisade_retry as retry;

/// Service level objectives: error budgets, burn-rate alerts and load
/// shedding (`palisade-slo`, feature `slo`).
#[cfg(feature = "slo")]
pub use palisade_slo as slo;

/// Cells and canaries: routing by key through an explicit table, and a
/// canary split that halts itself (`palisade-traffic`, feature
/// `traffic`).
#[cfg(feature = "traffic")]
pub use palisade_traffic as traffic;

/// W3C Trace Context: parsing, the server layer and propagation
/// (`palisade-tracecontext`, feature `tracecontext`).
#[cfg(feature = "tracecontext")]
pub use palisade_tracecontext as tracecontext;

/// What a stack needs in scope: [`ServiceBuilderExt`] and the types its
/// methods take, for the features chosen.
pub mod prelude {
    pub use crate::ServiceBuilderExt;
    #[cfg(feature = "breaker")]
    pub use palisade_circuit_breaker::{
        CircuitBreakerLayer, Config as BreakerConfig, Open, State as BreakerState,
    };
    #[cfg(feature = "retry")]
    pub use palisade_retry::{Backoff, Budget, Config as RetryConfig, RetryLayer};
    #[cfg(feature = "rate-limit")]
    pub use palisade_token_bucket::{Bucket, LocalStore, RateLimitLayer, RateLimited, key};
    #[cfg(feature = "tracecontext")]
    pub use palisade_tracecontext::{PropagateLayer, TraceContext, TraceContextLayer};
}

/// The README's example, compiled and run as a doctest so it stays true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
