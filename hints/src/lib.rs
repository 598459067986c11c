#![cfg_attr(docsrs, feature(doc_cfg))]
//! What a dependency, or a palisade layer standing in front of it, says
//! about when to call again.
//!
//! Several palisade crates read the same signals: a circuit breaker opens
//! for as long as a `Retry-After` asks, a retry layer waits for it, and
//! neither takes a call that a local breaker or rate limiter refused for
//! the dependency's failure (a retry never retries an open circuit's
//! refusal, and a rate limiter's only after the wait it names). This
//! crate is the one place those
//! signals are defined, so every crate reads them the same way:
//!
//! - [`Refusal`]: the marker a palisade layer attaches to a call it refused
//!   locally (an open circuit, an empty token bucket), found in an error's
//!   source chain or in a response's extensions.
//! - [`http`] (feature `http`): `Retry-After` as seconds or an HTTP date.
//! - [`grpc`] (feature `http`): `grpc-status` and `grpc-retry-pushback-ms`,
//!   and the response body that settles a call at its trailers.
//! - [`ConfigError`]: the error of every palisade builder, re-exported by
//!   each crate.
//! - [`reachability`]: whether a store that calls share (Redis) answers,
//!   and when to ask it again, so an outage costs one call per probe
//!   interval its timeout, not every call.
//! - [`share`]: how a layer's services and their calls reach the state they
//!   share, without threads calling at once taking turns on one reference
//!   count.
//! - [`panic_message`]: what a caught panic says, for the layers that turn
//!   a panic in a user's code into an error.
//! - [`SECONDS_BOUNDARIES`]: the buckets of the latency histograms palisade
//!   records in seconds.
//! - [`Throttle`]: one warning an interval, for warnings that can come with
//!   every call.
//! - [`clock`]: a server's clock (Redis's, a database's), which processes
//!   sharing the server agree on where their own wall clocks may not.
//!
//! It has no runtime and no tower types; users rarely need it directly.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use palisade_hints::Refusal;
//!
//! // A layer refuses a call and says why; a retry layer further out finds
//! // the marker through whatever error wraps it.
//! let refused: Box<dyn std::error::Error + Send + Sync> =
//!     Box::new(Refusal::circuit_open(Some(Duration::from_secs(5))));
//! let found = Refusal::find(&*refused).expect("a refusal");
//! assert!(found.is_circuit_open());
//! assert_eq!(found.retry_after(), Some(Duration::from_secs(5)));
//! ```

mod bounds;
mod buckets;
pub mod clock;
mod config_error;
#[cfg(feature = "http")]
pub mod grpc;
#[cfg(feature = "redis")]
pub mod hash_tag;
#[cfg(feature = "http")]
pub mod http;
mod panic;
pub mod reachability;
mod refusal;
pub mod share;
mod throttle;

pub use bounds::{DAY, bounded};
pub use buckets::SECONDS_BOUNDARIES;
pub use config_error::ConfigError;
pub use panic::panic_message;
pub use refusal::{Refusal, RefusalReason};
pub use throttle::Throttle;

/// The README's example, compiled and run as a doctest so it stays true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
