#![cfg_attr(docsrs, feature(doc_cfg))]
//! W3C Trace Context, exact to the specification, propagated through
//! `tower`.
//!
//! A distributed trace follows one request through many services. Each
//! hop passes on a `traceparent` header (the trace id, the caller's span
//! id, and flags) and a `tracestate` header (vendors' own data). This crate
//! makes a service a correct participant:
//!
//! - [`TraceContextLayer`] on the server continues a valid incoming trace
//!   or starts a new one, and makes the [`TraceContext`] available to the
//!   handler (request extensions, [`TraceContext::current`], a `tracing`
//!   span with the ids);
//! - [`PropagateLayer`] on every HTTP or gRPC client sends the current
//!   trace on as a new child span;
//! - [`Propagator`] does the same for messages, through any [`Carrier`]
//!   (NATS headers, CloudEvents attributes).
//!
//! Parsing is exact ([`TraceParent`], [`TraceState`]): lengths are checked
//! before hex is decoded, uppercase and all-zero ids are refused, a
//! repeated `traceparent` starts a new trace, all `tracestate` lines are
//! combined and a single bad member discards the header, as the W3C test
//! suite requires. The sampled and random flags are kept exactly as
//! received; undefined flag bits are dropped.
//!
//! The text followed is W3C Trace Context Level 2
//! (<https://www.w3.org/TR/trace-context-2/>, Candidate Recommendation
//! Draft), not the 2021 Recommendation: a `tracestate` key is one rule of up
//! to 256 characters with `@` an ordinary character, and a repeated key
//! keeps its first member instead of discarding the header. The
//! w3c/trace-context harness (`main`, `SPEC_LEVEL=2 STRICT_LEVEL=2`) tests
//! that text, and `tests/conformance.rs` ports its cases.
//!
//! # Example
//!
//! A service that continues incoming traces and propagates them to the
//! services it calls:
//!
//! ```
//! use axum::{Router, routing::get};
//! use palisade_tracecontext::{PropagateLayer, TraceContext, TraceContextLayer};
//! use tower::{ServiceBuilder, service_fn};
//! use http::{Request, Response};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! // Outgoing calls: any `http` client service, here a stand-in that
//! // echoes the traceparent it was given.
//! let client = ServiceBuilder::new()
//!     .layer(PropagateLayer::new())
//!     .service(service_fn(|request: Request<String>| async move {
//!         let sent = request.headers()["traceparent"].to_str()?.to_owned();
//!         Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Response::new(sent))
//!     }));
//!
//! let app: Router = Router::new()
//!     .route("/", get(move || {
//!         let client = client.clone();
//!         async move {
//!             use tower::ServiceExt;
//!             // The handler runs with the request's context current, so
//!             // the call below is its child.
//!             let current = TraceContext::current().expect("set by TraceContextLayer");
//!             let response = client.oneshot(Request::new(String::new())).await.unwrap();
//!             assert!(response.body().contains(&current.trace_id().to_string()));
//!             "ok"
//!         }
//!     }))
//!     .layer(TraceContextLayer::new());
//! # use tower::ServiceExt;
//! # let response = app
//! #     .oneshot(Request::get("/").header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").body(axum::body::Body::empty())?)
//! #     .await?;
//! # assert_eq!(response.status(), 200);
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(example()).unwrap();
//! ```
//!
//! # Feature flags
//!
//! - `otel`: [`Propagator`] implements OpenTelemetry's `TextMapPropagator`,
//!   so it can replace the SDK's propagator; [`TraceContextLayer`] makes each
//!   request's `tracing` span (as exported by `tracing-opentelemetry`) a
//!   child of the remote parent and adopts its ids, and [`PropagateLayer`]
//!   sends the current exported span as the parent, so every id on the wire
//!   belongs to an exported span. OpenTelemetry's `TraceState` still has the
//!   Recommendation's key rule and cannot hold some Level 2 keys
//!   (`foo@@bar`, more than 14 characters after an `@`): span contexts carry
//!   the other members, and the `tracestate` received is passed on whole
//!   unless it was changed through OpenTelemetry.

mod carrier;
mod context;
pub mod error;
mod ids;
#[cfg(feature = "otel")]
mod otel;
mod propagate;
mod propagator;
mod rng;
pub mod server;
mod traceparent;
mod tracestate;

pub use carrier::{Carrier, CarrierMut, TRACEPARENT, TRACERESPONSE, TRACESTATE};
pub use context::TraceContext;
pub use error::{ExtractError, TraceParentError, TraceStateError};
pub use ids::{SpanId, TraceFlags, TraceId};
/// The OpenTelemetry API whose contexts the bridge reads and writes
/// (feature `otel`): set up the SDK from this version.
#[cfg(feature = "otel")]
pub use opentelemetry;
pub use propagate::{Propagate, PropagateLayer};
pub use propagator::Propagator;
pub use server::{TraceContextLayer, TraceContextService};
pub use traceparent::TraceParent;
pub use tracestate::{MAX_MEMBERS, MIN_PROPAGATED_LEN, TraceState};
/// The `tracing-opentelemetry` whose span data the bridge reads (feature
/// `otel`): a subscriber built with another version's layer gives it
/// nothing to read, and server spans start new traces.
#[cfg(feature = "otel")]
pub use tracing_opentelemetry;

/// The README's example, compiled and run as a doctest so it stays true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
