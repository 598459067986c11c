#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc = include_str!("../README.md")]
//!
//! # The parts
//!
//! - [`Objective`] and [`BurnAlert`]: what the service promises, and when
//!   its burn should page.
//! - [`ErrorBudget`]: the rolling windows, fed by [`record`](ErrorBudget::record)
//!   and read as a [`Report`] or a [`BudgetSignal`]. It knows nothing of
//!   tower: a message consumer can feed it as well.
//! - [`SloLayer`]: the tower adapter, with a classifier that decides how
//!   a call counts ([`Settle`]: a closure, a [`Classify`] of your own as
//!   [`AtOnce`], or a preset, at once or at the end of a gRPC response's
//!   body) and a [`Shedding`] that says what to shed.
//! - [`KeyedBudgets`]: a budget per key (tenant, customer) of one
//!   objective, bounded, for [`SloLayer::keyed`].

mod budget;
mod classify;
mod error;
#[cfg(feature = "redis")]
mod fleet;
pub mod future;
#[cfg(feature = "grpc")]
mod grpc_mode;
#[cfg(feature = "http")]
mod http_mode;
mod keyed;
mod layer;
mod objective;
#[cfg(feature = "otel")]
pub mod otel;
mod respond;
mod service;
mod shed;
mod window;

pub use budget::{BudgetSignal, Burn, ErrorBudget, Report};
pub use classify::{AtOnce, Classify, ErrorsAreBad, Event, Settle};
pub use error::{ConfigError, Shed};
pub use future::Pending;
#[cfg(feature = "grpc")]
pub use grpc_mode::{GrpcBody, GrpcStatus, Unavailable};
#[cfg(feature = "http")]
pub use http_mode::{HeaderKey, LowPriority, Marked, ServerErrorsAreBad, ServiceUnavailable};
pub use keyed::{BudgetKey, ByKey, KeyedBudgets, SelectBudget};
pub use layer::SloLayer;
pub use objective::{BurnAlert, Objective, Severity};
/// The OpenTelemetry API this crate records to (feature `otel`): take
/// the `Meter` you hand it from this version.
#[cfg(feature = "otel")]
pub use opentelemetry;
pub use palisade_hints::{Refusal, RefusalReason};
pub use respond::{BoxErrors, Respond};
pub use service::Slo;
pub use shed::{Prioritize, ShedNothing, Shedding};
pub use window::Counts;
