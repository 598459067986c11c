#![doc = include_str!("../README.md")]

mod canary;
mod cells;
pub mod key;
#[cfg(feature = "otel")]
pub mod otel;
mod router;
mod split;

pub use canary::{Canary, CanaryError, CanaryEvent, CanaryPlan, HaltReason};
pub use cells::{CellError, Cells, SLOTS, slot_of};
pub use key::{AsKey, Key, KeyHash};
pub use router::{CellFuture, CellRouter};
#[cfg(feature = "http")]
pub use split::ServerErrorsAsFailures;
pub use split::{CanarySplit, ErrorsAsFailures, Failure, SplitFuture};
