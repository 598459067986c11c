#![cfg_attr(docsrs, feature(doc_cfg))]
//! A circuit breaker: fail fast while a dependency is unwell, then probe it
//! carefully before trusting it again.
//!
//! A service that keeps calling a sick dependency piles up timeouts and
//! makes the sickness worse. A breaker watches the outcomes of recent calls
//! in a sliding window; when too many fail (or are too slow) it *opens* and
//! refuses calls at once, with the time to wait. After the open duration it
//! turns *half-open* and lets a few probe calls through at a time: if
//! they succeed it *closes*, if any fails it opens again, for longer when
//! backoff is configured, and always with jitter so a fleet of instances
//! does not probe in lockstep.
//!
//! This crate's core is the [`CircuitBreaker`] state machine. It takes no
//! lock: the state lives in one atomic word and every transition is one
//! compare-and-swap, so exactly one caller makes each transition however
//! many race for it; the windows are atomic counters. Probe permits are
//! values: a permit dropped without an outcome gives its slot back, and an
//! outcome from an earlier cycle is never counted in the current one.
//!
//! In a tower stack it is a [`CircuitBreakerLayer`]: the breaker is created
//! with the layer and shared by every service and clone it makes, an open
//! breaker answers from `call` at once, and each call's permit lives in its
//! response future.
//!
//! ```
//! use palisade_circuit_breaker::{CircuitBreakerLayer, Config};
//! use tower::{ServiceBuilder, service_fn};
//!
//! # fn main() -> Result<(), palisade_circuit_breaker::ConfigError> {
//! let service = ServiceBuilder::new()
//!     .layer(CircuitBreakerLayer::new(Config::builder().failure_rate_threshold(0.5).build()?))
//!     .service(service_fn(|request: String| async move {
//!         Ok::<_, std::io::Error>(request.len())
//!     }));
//! # let _ = service;
//! # Ok(()) }
//! ```
//!
//! A timeout goes *beneath* the breaker (`.layer(breaker).timeout(d)`):
//! a call it cuts reaches the breaker as an error, a failure. One above
//! the breaker (or a retry's deadline, or a caller that leaves) drops the
//! call before it has an outcome: the breaker counts it as a slow call
//! when it ran past [`slow_calls`](ConfigBuilder::slow_calls)' threshold
//! (a half-open probe as failed, past that or
//! [`half_open_max_wait`](ConfigBuilder::half_open_max_wait)), and
//! otherwise not at all: without slow calls counted, a dependency that
//! hangs would never open it.
//!
//! # Feature flags
//!
//! - `http`: [`CircuitBreakerLayer::new_for_http`]: 5xx and a 429 naming
//!   no wait count as failures (a 429 with `Retry-After` paces its caller:
//!   neither), `Retry-After` may lengthen the open duration, and an open
//!   breaker answers 503 itself, so the layer goes straight on an axum
//!   `Router`.
//! - `grpc`: [`CircuitBreakerLayer::new_for_grpc`]: `grpc-status` decides,
//!   from the headers or from the trailers at the end of the body (or
//!   gRPC's mapping of the HTTP status when a proxy answered), and an
//!   open breaker answers `UNAVAILABLE` with `grpc-retry-pushback-ms`. It
//!   is the same layer with another classifier ([`GrpcStatus`]) and
//!   answer ([`Unavailable`]), so keyed breakers serve gRPC too.
//!
//! In every mode, a call a palisade layer beneath refused itself (the
//! [`Refusal`] marker on the error or the
//! response) is neither a success nor a failure.
//! - `otel`: [`CircuitBreaker::instrument`] registers OpenTelemetry metrics:
//!   `palisade.circuit_breaker.calls` (by `outcome`), `.rejected`,
//!   `.transitions` (by `from` and `to`) and the `.state` gauge, each with
//!   the attribute `breaker`.
//! - `redis`: [`fleet::Fleet`] shares a breaker's transitions across the
//!   replicas of a service: one replica's trip opens them all, and each
//!   half-open cycle sends one probe for the whole fleet. Calls never
//!   wait on Redis; without it each replica goes on alone.
//!
//! The state machine works without tower too, from a message consumer or a
//! batch job:
//!
//! ```
//! use std::time::Instant;
//! use palisade_circuit_breaker::{CircuitBreaker, Config, Outcome};
//!
//! let breaker = CircuitBreaker::new(Config::default()); // 50% of the last 20 calls
//! match breaker.try_acquire(Instant::now()) {
//!     Ok(permit) => {
//!         let worked = true; // ... make the call ...
//!         let outcome = if worked { Outcome::Success } else { Outcome::Failure };
//!         permit.record(outcome, Instant::now());
//!     }
//!     Err(open) => println!("not calling: {open}"),
//! }
//! ```

mod breaker;
mod classify;
mod config;
pub mod error;
#[cfg(all(feature = "redis", not(palisade_loom)))]
pub mod fleet;
pub mod future;
#[cfg(feature = "grpc")]
mod grpc_mode;
#[cfg(feature = "http")]
mod http_mode;
mod keyed;
mod layer;
#[cfg(all(feature = "otel", not(palisade_loom)))]
mod otel;
mod positions;
mod respond;
mod service;
mod sync;
mod window;

pub use breaker::{CircuitBreaker, Metrics, Outcome, Permit, State, Transition};
pub use classify::{AtOnce, Classify, ErrorsAsFailures, Settle};
pub use config::{Config, ConfigBuilder, SlidingWindow};
pub use error::{ConfigError, Open};
#[cfg(feature = "grpc")]
pub use grpc_mode::{GrpcBody, GrpcStatus, Unavailable};
#[cfg(feature = "http")]
pub use http_mode::{ServerErrorsAsFailures, ServiceUnavailable};
pub use keyed::{
    BreakerRegistry, KeyedBreakers, KeyedCircuitBreakerLayer, KeyedCircuitBreakerService,
};
pub use layer::CircuitBreakerLayer;
/// The OpenTelemetry API this crate records to (feature `otel`): take
/// the `Meter` you hand it from this version.
#[cfg(feature = "otel")]
pub use opentelemetry;
pub use palisade_hints::{Refusal, RefusalReason};
pub use respond::{BoxErrors, Respond};
pub use service::{CircuitBreakerService, SelectBreaker};
pub use window::Counts;

/// The README's example, compiled and run as a doctest so it stays true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
