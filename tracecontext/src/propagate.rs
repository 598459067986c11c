//! The client side: every outgoing request carries the current trace as a
//! new child span.

use std::task::{Context, Poll};

use http::Request;
use tower_layer::Layer;
use tower_service::Service;

use crate::context::TraceContext;
use crate::propagator::Propagator;

/// Adds `traceparent` and `tracestate` to every outgoing `http::Request`,
/// as a new child span of the current trace.
///
/// The parent is, in order: a [`TraceContext`] in the request's extensions,
/// the [current](TraceContext::current) one (set by
/// [`TraceContextLayer`](crate::TraceContextLayer) for the handler), or a
/// new trace. Any `traceparent` or `tracestate` already on the request is
/// replaced. Works on any `http` client service: hyper, a tonic `Channel`,
/// or a `reqwest`-style middleware stack.
///
/// The current trace is the calling task's: put this layer *above* any
/// layer that calls the service beneath it from a task of its own
/// (tower's `Buffer`, a balancer's worker), or the requests it sends from
/// there start new traces (with feature `otel`, the current span is read
/// instead, which `Buffer` enters in its worker). Below such a layer,
/// give each request its parent in its extensions.
///
/// # Example
///
/// ```
/// use palisade_tracecontext::PropagateLayer;
/// use tower::ServiceBuilder;
///
/// # async fn client() -> Result<(), Box<dyn std::error::Error>> {
/// // A tonic channel: every gRPC call made through it is propagated.
/// let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:50051").connect_lazy();
/// let channel = ServiceBuilder::new().layer(PropagateLayer::new()).service(channel);
/// let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
/// # let _ = &mut health;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct PropagateLayer {
    propagator: Propagator,
}

impl PropagateLayer {
    /// Propagates with the default [`Propagator`].
    #[must_use]
    pub const fn new() -> Self {
        Self {
            propagator: Propagator::new(),
        }
    }

    /// Uses `propagator`'s rules (flags of traces started here, the
    /// `tracestate` limit).
    #[must_use]
    pub const fn propagator(mut self, propagator: Propagator) -> Self {
        self.propagator = propagator;
        self
    }
}

impl<S> Layer<S> for PropagateLayer {
    type Service = Propagate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Propagate {
            inner,
            propagator: self.propagator,
        }
    }
}

/// What an outgoing call continues when its request names no parent.
#[cfg(not(feature = "otel"))]
fn current_call() -> Option<TraceContext> {
    TraceContext::current().map(|parent| parent.child())
}

/// With OpenTelemetry, the current span is exported: the call carries its
/// id, so the next hop's parent is a span the backend knows.
#[cfg(feature = "otel")]
fn current_call() -> Option<TraceContext> {
    crate::otel::current_span_context()
        .or_else(|| TraceContext::current().map(|parent| parent.child()))
}

/// The service made by [`PropagateLayer`].
#[derive(Debug, Clone)]
pub struct Propagate<S> {
    inner: S,
    propagator: Propagator,
}

impl<S> Propagate<S> {
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

impl<S, B> Service<Request<B>> for Propagate<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let call = match request.extensions().get::<TraceContext>() {
            Some(parent) => parent.child(),
            None => current_call().unwrap_or_else(|| self.propagator.start()),
        };
        self.propagator.inject(&call, request.headers_mut());
        self.inner.call(request)
    }
}
