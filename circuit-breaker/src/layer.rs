//! The layer that puts a breaker in front of a service.

use tower::Layer;

use crate::breaker::CircuitBreaker;
use crate::classify::ErrorsAsFailures;
use crate::config::Config;
use crate::respond::BoxErrors;
use crate::service::CircuitBreakerService;

/// Puts a circuit breaker in front of a service.
///
/// The breaker is created with the layer and shared by every service the
/// layer makes and every clone of them, so axum's and tonic's cloning (and
/// repeated [`Layer::layer`] calls) all see one breaker.
///
/// # Example
///
/// ```
/// use palisade_circuit_breaker::{CircuitBreakerLayer, Config, Open};
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let layer = CircuitBreakerLayer::new(Config::builder().minimum_calls(5).build()?);
/// let breaker = layer.breaker().clone(); // the operator's handle
/// let service = ServiceBuilder::new()
///     .layer(layer)
///     .service(service_fn(|_: ()| async { Err::<(), _>("dependency down") }));
///
/// for _ in 0..5 {
///     assert!(service.clone().oneshot(()).await.is_err());
/// }
/// let err = service.clone().oneshot(()).await.unwrap_err();
/// assert!(err.is::<Open>(), "refused at once while open");
/// assert_eq!(breaker.state(), palisade_circuit_breaker::State::Open);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct CircuitBreakerLayer<C = ErrorsAsFailures, R = BoxErrors> {
    breaker: CircuitBreaker,
    classifier: C,
    respond: R,
}

/// Its breaker; not its classifier or answers, which may be closures.
impl<C, R> std::fmt::Debug for CircuitBreakerLayer<C, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl CircuitBreakerLayer {
    /// A layer with a new breaker; `Err` counts as failure, and an open
    /// breaker fails calls with [`Open`](crate::Open).
    #[must_use]
    pub fn new(config: Config) -> Self {
        Self::from_breaker(CircuitBreaker::new_at(
            config,
            tokio::time::Instant::now().into_std(),
        ))
    }

    /// A layer around an existing breaker, shared with whatever else uses it.
    ///
    /// The layer reads the time from tokio's clock; a breaker made with
    /// [`CircuitBreaker::new`] in a test with paused time should be made
    /// with [`CircuitBreaker::new_at`] and tokio's `Instant::now()`
    /// instead.
    #[must_use]
    pub const fn from_breaker(breaker: CircuitBreaker) -> Self {
        Self {
            breaker,
            classifier: ErrorsAsFailures,
            respond: BoxErrors,
        }
    }
}

impl<C, R> CircuitBreakerLayer<C, R> {
    /// Classifies results with `classifier` instead.
    #[must_use]
    pub fn classify<C2>(self, classifier: C2) -> CircuitBreakerLayer<C2, R> {
        CircuitBreakerLayer {
            breaker: self.breaker,
            classifier,
            respond: self.respond,
        }
    }

    /// Answers refused calls with `respond` instead.
    #[must_use]
    pub fn respond_with<R2>(self, respond: R2) -> CircuitBreakerLayer<C, R2> {
        CircuitBreakerLayer {
            breaker: self.breaker,
            classifier: self.classifier,
            respond,
        }
    }

    /// [Leaks](CircuitBreaker::leak) the layer's breaker: the services
    /// the layer makes and their calls reach it without counting
    /// references. For a layer built once at start-up.
    #[must_use]
    pub fn leak(self) -> Self {
        Self {
            breaker: self.breaker.leak(),
            ..self
        }
    }

    /// The shared breaker: read its state and metrics, force it open,
    /// disable it, reset it.
    #[must_use]
    pub const fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// Registers the breaker's OpenTelemetry metrics with `meter` as
    /// `name` (feature `otel`), in the builder shape every palisade layer's
    /// `instrument` has; see [`CircuitBreaker::instrument`].
    #[cfg(all(feature = "otel", not(palisade_loom)))]
    #[must_use]
    pub fn instrument(
        self,
        meter: &opentelemetry::metrics::Meter,
        name: impl Into<String>,
    ) -> Self {
        self.breaker.instrument(meter, name);
        self
    }
}

impl<S, C: Clone, R: Clone> Layer<S> for CircuitBreakerLayer<C, R> {
    type Service = CircuitBreakerService<S, CircuitBreaker, C, R>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreakerService::new(
            inner,
            self.breaker.clone(),
            self.classifier.clone(),
            self.respond.clone(),
        )
    }
}
