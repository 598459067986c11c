#![cfg_attr(docsrs, feature(doc_cfg))]
//! Retries that cannot melt a dependency: bounded attempts, backoff with
//! jitter, a retry budget shared by every clone, the dependency's own
//! `Retry-After`, an idempotency gate and an overall deadline.
//!
//! Retrying is how a client rides out a blip, and how a fleet of clients
//! turns a dependency's bad minute into an outage: every failure becomes
//! three calls exactly when the dependency can least take them. This crate
//! makes the safe policy the default one:
//!
//! - **Attempts** are bounded (3 in total by default).
//! - **Backoff** is exponential with full jitter (or decorrelated jitter),
//!   so retries of one failure spread out; see [`Backoff`].
//! - **A retry budget** shared by every service and clone the layer makes:
//!   retries may add at most 20% to the request rate (with a small floor
//!   per second), so a dependency failing every call sees at most about
//!   1.2× its normal traffic. When it is spent the last result is returned;
//!   see [`Budget`].
//! - **Server hints**: a `Retry-After` (seconds or HTTP date) or
//!   `grpc-retry-pushback-ms` sets the least wait (the backoff's draw when
//!   that is longer, so a hint of zero does not send every client back at
//!   once); a hint longer than the backoff's cap or than the time left ends
//!   the retries.
//! - **A deadline** across all attempts, if set: no attempt starts that is
//!   not expected to finish in time, and one still running when it passes is
//!   abandoned.
//! - **Local refusals spend no budget**: an open circuit breaker's
//!   rejection (from `palisade-circuit-breaker`) returns at once; a rate
//!   limiter's is retried only after the wait it names
//!   ([`Verdict::RetryRefused`]), and counts as an attempt but not against
//!   the dependency's budget; a retry the budget paid for that a layer
//!   below refused goes back to it ([`Verdict::Refused`]). They are
//!   recognised by the
//!   [`palisade_hints::Refusal`] marker, with no dependency on those
//!   crates.
//! - The inner service is **polled ready again before every retry**.
//!
//! The policy is plain data ([`Config`]); [`Backoff`] and [`RetryBudget`]
//! work without tower. In a tower stack it is a [`RetryLayer`]:
//!
//! ```
//! use std::time::Duration;
//! use palisade_retry::{Config, RetryLayer};
//! use tower::{BoxError, Service, ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let mut failures_left = 1;
//! let flaky = service_fn(move |order: u64| {
//!     let fail = failures_left > 0;
//!     failures_left -= 1;
//!     async move {
//!         if fail { Err::<u64, BoxError>("connection reset".into()) } else { Ok(order) }
//!     }
//! });
//! let mut service = ServiceBuilder::new()
//!     .layer(RetryLayer::new(Config::builder().deadline(Duration::from_secs(2)).build()?))
//!     .service(flaky);
//! assert_eq!(service.ready().await?.call(42).await?, 42);
//! # Ok(()) }
//! ```
//!
//! A layer built once at start-up can be [leaked](RetryLayer::leak): its
//! calls then reach its configuration and budget by a plain reference
//! instead of a counted one, which is most of what the layer adds to a
//! call that succeeds. A layer kept as it is counts each retryable call,
//! on a count of the calling service's own once it keeps calling, so
//! threads calling their own clones do not take turns on one count.
//!
//! # Feature flags
//!
//! - `http`: [`RetryLayer::new_for_http`]: retries 502, 503, 504, 429 with
//!   a hint, and connect and timeout errors, of idempotent requests only
//!   (`GET`, `HEAD`, `OPTIONS`, `PUT`, `DELETE`, `TRACE`, or any request
//!   with an `Idempotency-Key`); bodies that are not `Clone` are replayed
//!   from a bounded buffer ([`http::ReplayBody`]).
//! - `grpc`: [`RetryLayer::new_for_grpc`]: retries `UNAVAILABLE` (and a
//!   proxy's 429, 502 or 503 without a `grpc-status`, which gRPC reads as
//!   `UNAVAILABLE`), `RESOURCE_EXHAUSTED` when the server sends a pushback,
//!   honouring `grpc-retry-pushback-ms`, and transport errors only of
//!   calls that never left (not a reset, a timeout or a proxy's 504, after
//!   which the server may have run the call).
//! - `tonic` (implies `grpc`): `RetryLayer::new_for_tonic`, the same taking
//!   and passing on `tonic::body::Body`, straight in front of a tonic
//!   `Channel`; and [`DeadlineExceeded`] has a `DEADLINE_EXCEEDED` status
//!   as its source, so that a tonic client answers a call cut by the
//!   deadline with it (it answered `UNKNOWN`).
//! - `otel`: [`RetryLayer::instrument`] registers OpenTelemetry counters:
//!   `palisade.retry.attempts`, `.retries`, `.budget_exhausted` and
//!   `.give_ups` (by `reason`), each with the attribute `client`.
//!
//! Every retry is a `tracing` event (target `palisade_retry`) with the
//! attempt number and the delay; an exhausted budget is a warning.

mod backoff;
mod budget;
mod classify;
mod config;
pub mod error;
mod events;
pub mod future;
#[cfg(feature = "grpc")]
pub mod grpc;
#[cfg(feature = "http")]
pub mod http;
mod layer;
#[cfg(feature = "otel")]
mod otel;
mod replay;
mod service;

pub use backoff::Backoff;
pub use budget::{Budget, RetryBudget};
pub use classify::{Classify, RetryErrors, Verdict};
pub use config::{Config, ConfigBuilder};
pub use error::{ConfigError, DeadlineExceeded};
pub use layer::{LeakedRetryLayer, RetryLayer};
/// The OpenTelemetry API this crate records to (feature `otel`): take
/// the `Meter` you hand it from this version.
#[cfg(feature = "otel")]
pub use opentelemetry;
pub use palisade_hints::{Refusal, RefusalReason};
pub use replay::{CloneRequest, Replay};
pub use service::Retry;
/// The tonic whose bodies and statuses the `tonic` presets take and give
/// (feature `tonic`).
#[cfg(feature = "tonic")]
pub use tonic;

/// The README's example, compiled and run as a doctest so it stays true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
