//! The trace context of the work in progress, and the task-local slot that
//! makes it current.

use std::future::Future;

use tokio::task::futures::TaskLocalFuture;

use crate::ids::{SpanId, TraceFlags, TraceId};
use crate::traceparent::TraceParent;
use crate::tracestate::TraceState;

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// Where the current work stands in a distributed trace: its trace id, its
/// own span id, the remote parent it continues (if any), the flags and the
/// vendors' `tracestate`.
///
/// The server layer puts one in each request's extensions and makes it
/// [current](Self::current) for the handler; the client layer reads it to
/// propagate a child.
///
/// # Example
///
/// ```
/// use palisade_tracecontext::{TraceContext, TraceParent, TraceState};
///
/// let incoming: TraceParent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03".parse()?;
/// let server = TraceContext::continue_from(incoming, TraceState::new());
/// assert_eq!(server.trace_id(), incoming.trace_id());
/// assert_eq!(server.parent_id(), Some(incoming.parent_id()));
/// assert_ne!(server.span_id(), incoming.parent_id());
///
/// // An outgoing call is a child span; its traceparent names it as parent.
/// let call = server.child();
/// assert_eq!(call.parent_id(), Some(server.span_id()));
/// assert_eq!(call.traceparent().parent_id(), call.span_id());
/// assert_eq!(call.flags(), incoming.flags()); // sampled and random kept
/// # Ok::<(), palisade_tracecontext::TraceParentError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: TraceId,
    span_id: SpanId,
    parent_id: Option<SpanId>,
    flags: TraceFlags,
    state: TraceState,
}

impl TraceContext {
    /// Starts a new trace with a random trace id and span id.
    #[must_use]
    pub fn new_root(flags: TraceFlags) -> Self {
        Self {
            trace_id: TraceId::random(),
            span_id: SpanId::random(),
            parent_id: None,
            flags,
            state: TraceState::new(),
        }
    }

    #[cfg(feature = "otel")]
    pub(crate) const fn from_parts(
        trace_id: TraceId,
        span_id: SpanId,
        parent_id: Option<SpanId>,
        flags: TraceFlags,
        state: TraceState,
    ) -> Self {
        Self {
            trace_id,
            span_id,
            parent_id,
            flags,
            state,
        }
    }

    /// Takes the ids another tracer gave this span.
    #[cfg(feature = "otel")]
    pub(crate) const fn adopt(&mut self, trace_id: TraceId, span_id: SpanId, flags: TraceFlags) {
        self.trace_id = trace_id;
        self.span_id = span_id;
        self.flags = flags;
    }

    /// Continues a remote trace: same trace id and flags, the remote span as
    /// parent, and a new span id of our own.
    #[must_use]
    pub fn continue_from(parent: TraceParent, state: TraceState) -> Self {
        Self {
            trace_id: parent.trace_id(),
            span_id: SpanId::random(),
            parent_id: Some(parent.parent_id()),
            flags: parent.flags(),
            state,
        }
    }

    /// A child of this span in the same trace: a new span id, this span as
    /// parent, the same flags and `tracestate`.
    #[must_use]
    pub fn child(&self) -> Self {
        Self {
            trace_id: self.trace_id,
            span_id: SpanId::random(),
            parent_id: Some(self.span_id),
            flags: self.flags,
            state: self.state.clone(),
        }
    }

    /// The trace id.
    #[must_use]
    pub const fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    /// This span's id: the `parent-id` of what it calls.
    #[must_use]
    pub const fn span_id(&self) -> SpanId {
        self.span_id
    }

    /// The parent span's id; `None` for the root of a trace.
    #[must_use]
    pub const fn parent_id(&self) -> Option<SpanId> {
        self.parent_id
    }

    /// The trace flags.
    #[must_use]
    pub const fn flags(&self) -> TraceFlags {
        self.flags
    }

    /// The vendors' `tracestate`.
    #[must_use]
    pub const fn trace_state(&self) -> &TraceState {
        &self.state
    }

    /// The `tracestate`, to add or update this vendor's member.
    pub fn trace_state_mut(&mut self) -> &mut TraceState {
        &mut self.state
    }

    /// The `traceparent` this span sends: its own id as the parent.
    #[must_use]
    pub const fn traceparent(&self) -> TraceParent {
        TraceParent::new(self.trace_id, self.span_id, self.flags)
    }

    /// The context made current by the enclosing [`scope`](Self::scope), if
    /// any: inside a handler behind [`TraceContextLayer`], the request's.
    ///
    /// A task spawned from a handler does not inherit it: pass the context
    /// along and wrap the spawned future in [`scope`](Self::scope).
    ///
    /// [`TraceContextLayer`]: crate::TraceContextLayer
    #[must_use]
    pub fn current() -> Option<Self> {
        CURRENT.try_with(Self::clone).ok()
    }

    /// Runs `future` with this context [current](Self::current).
    pub fn scope<F: Future>(self, future: F) -> TaskLocalFuture<Self, F> {
        CURRENT.scope(self, future)
    }

    /// Runs `f` with this context [current](Self::current), at once: for
    /// the synchronous part of a call, such as a service's `call`, whose
    /// future [`scope`](Self::scope) covers.
    pub fn sync_scope<R>(self, f: impl FnOnce() -> R) -> R {
        CURRENT.sync_scope(self, f)
    }
}
