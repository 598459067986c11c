#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc = include_str!("../README.md")]

mod canary;
mod cells;
#[cfg(feature = "grpc")]
mod grpc_mode;
#[cfg(feature = "http")]
mod http_body;
pub mod key;
#[cfg(feature = "otel")]
pub mod otel;
mod router;
mod settle;
mod split;

pub use canary::{Canary, CanaryError, CanaryEvent, CanaryPlan, HaltReason};
pub use cells::{CellError, Cells, SLOTS, slot_of};
#[cfg(feature = "grpc")]
pub use grpc_mode::{GrpcBody, GrpcStatus};
#[cfg(feature = "http")]
pub use http_body::{CellBody, UntilBodyEnds};
pub use key::{AsKey, Key, KeyHash};
/// The OpenTelemetry API this crate records to (feature `otel`): take
/// the `Meter` you hand it from this version.
#[cfg(feature = "otel")]
pub use opentelemetry;
pub use palisade_hints::{Refusal, RefusalReason};
pub use router::{CellFuture, CellRouter, UntilResponse};
#[cfg(feature = "http")]
pub use settle::ServerErrorsAsFailures;
pub use settle::{AtOnce, ErrorsAsFailures, Failure, Pending, Settle};
pub use split::{CanarySplit, SplitFuture};
