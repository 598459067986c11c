//! Request coalescing: a thousand concurrent requests for one cold key
//! cause one computation, not a thousand.
//!
//! - [`Coalescer`]: single flight in process. Callers of one key share one
//!   computation; errors and panics reach every waiter; the computation
//!   survives any one caller leaving and stops when all have left.
//! - [`Cache`]: values with a [`Freshness`]: coalesced misses,
//!   stale-while-revalidate, stale-if-error, and early refresh (XFetch)
//!   so hot keys are rarely found cold.

mod cache;
pub mod error;
mod flight;
mod freshness;

pub use cache::{Cache, Lookup, Served};
pub use error::FlightError;
pub use flight::Coalescer;
pub use freshness::{Entry, Freshness, State};

/// The README's example, compiled and run as a doctest so it stays true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
