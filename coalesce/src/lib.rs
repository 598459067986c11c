//! Request coalescing: a thousand concurrent requests for one cold key
//! cause one computation, not a thousand.
//!
//! - [`Coalescer`]: single flight in process. Callers of one key share one
//!   computation; errors and panics reach every waiter; the computation
//!   survives any one caller leaving and stops when all have left.

pub mod error;
mod flight;

pub use error::FlightError;
pub use flight::Coalescer;

/// The README's example, compiled and run as a doctest so it stays true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
