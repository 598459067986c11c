use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response};
use tower_service::Service;
use tracing::Instrument as _;

use super::future::ResponseFuture;
use crate::propagator::Propagator;

/// The service made by [`TraceContextLayer`](super::TraceContextLayer).
#[derive(Debug, Clone)]
pub struct TraceContextService<S> {
    inner: S,
    propagator: Propagator,
    traceresponse: bool,
}

impl<S> TraceContextService<S> {
    pub(super) const fn new(inner: S, propagator: Propagator, traceresponse: bool) -> Self {
        Self {
            inner,
            propagator,
            traceresponse,
        }
    }

    /// The inner service.
    pub const fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Takes the inner service back.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for TraceContextService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        #[cfg_attr(not(feature = "otel"), allow(unused_mut))]
        let mut context = self.propagator.continue_or_start(request.headers());
        let span = tracing::info_span!(
            target: "palisade_tracecontext",
            "request",
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
            parent_id = context.parent_id().map(tracing::field::display),
        );
        #[cfg(feature = "otel")]
        crate::otel::bridge_server_span(&span, &mut context);
        span.record("trace_id", tracing::field::display(context.trace_id()));
        span.record("span_id", tracing::field::display(context.span_id()));
        let traceresponse = self
            .traceresponse
            .then(|| HeaderValue::from_bytes(&context.traceparent().encode()).ok())
            .flatten();
        request.extensions_mut().insert(context.clone());
        // The layers below do work in `call` too (tower-http's trace layer
        // makes its span there): in the request's span and context, as
        // their futures' work is.
        let called = {
            let _entered = span.enter();
            context.clone().sync_scope(|| self.inner.call(request))
        };
        let inner = context.scope(called).instrument(span);
        ResponseFuture::new(inner, traceresponse)
    }
}
