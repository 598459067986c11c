#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc = include_str!("../README.md")]

mod canary;
mod cells;
#[cfg(feature = "http")]
mod http_body;
pub mod key;
#[cfg(feature = "otel")]
pub mod otel;
mod router;
mod split;

pub use canary::{Canary, CanaryError, CanaryEvent, CanaryPlan, HaltReason};
pub use cells::{CellError, Cells, SLOTS, slot_of};
#[cfg(feature = "http")]
pub use http_body::{CellBody, UntilBodyEnds};
pub use key::{AsKey, Key, KeyHash};
pub use router::{CellFuture, CellRouter, UntilResponse};
#[cfg(feature = "http")]
pub use split::ServerErrorsAsFailures;
pub use split::{CanarySplit, ErrorsAsFailures, Failure, SplitFuture};
