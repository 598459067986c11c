use tower_layer::Layer;

use super::service::TraceContextService;
use crate::propagator::Propagator;

/// Makes a service a W3C Trace Context participant for the requests it
/// receives.
///
/// Put it outermost so every other layer and the handler see the context.
/// It holds only configuration, so clones made by axum or tonic behave the
/// same.
///
/// # Example
///
/// ```
/// use axum::{Extension, Router, routing::get};
/// use palisade_tracecontext::{TraceContext, TraceContextLayer};
///
/// async fn handler(Extension(context): Extension<TraceContext>) -> String {
///     context.trace_id().to_string()
/// }
///
/// let app: Router = Router::new()
///     .route("/", get(handler))
///     .layer(TraceContextLayer::new().traceresponse(true));
/// ```
///
/// On a tonic server, the same layer goes on the builder:
///
/// ```no_run
/// use palisade_tracecontext::TraceContextLayer;
///
/// # async fn serve() -> Result<(), Box<dyn std::error::Error>> {
/// let (_reporter, health) = tonic_health::server::health_reporter();
/// tonic::transport::Server::builder()
///     .layer(TraceContextLayer::new())
///     .add_service(health)
///     .serve("127.0.0.1:50051".parse()?)
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceContextLayer {
    propagator: Propagator,
    traceresponse: bool,
}

impl TraceContextLayer {
    /// Continues valid incoming traces, starts new ones (sampled, random
    /// flag set) otherwise, and sends no `traceresponse`.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            propagator: Propagator::new(),
            traceresponse: false,
        }
    }

    /// Uses `propagator`'s rules for extraction and new traces.
    #[must_use]
    pub const fn propagator(mut self, propagator: Propagator) -> Self {
        self.propagator = propagator;
        self
    }

    /// Whether responses carry a `traceresponse` header naming this
    /// server's span (Trace Context Level 2). Off by default: it tells the
    /// caller the trace id, which a public service may not want to.
    #[must_use]
    pub const fn traceresponse(mut self, enabled: bool) -> Self {
        self.traceresponse = enabled;
        self
    }
}

impl<S> Layer<S> for TraceContextLayer {
    type Service = TraceContextService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceContextService::new(inner, self.propagator, self.traceresponse)
    }
}
