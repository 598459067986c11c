//! The server side: continue the caller's trace (or start one) for every
//! request.
//!
//! [`TraceContextLayer`] reads `traceparent` and `tracestate`, makes a span
//! id for this server's part, puts the [`TraceContext`] in the request's
//! extensions, makes it [current](crate::TraceContext::current) while the request
//! is handled, runs the handler inside a `tracing` span carrying the ids,
//! and can answer with a `traceresponse` header.
//!
//! [`TraceContext`]: crate::TraceContext

pub mod future;
mod layer;
mod service;

pub use layer::TraceContextLayer;
pub use service::TraceContextService;
