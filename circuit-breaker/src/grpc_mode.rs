//! gRPC mode (feature `grpc`): the `grpc-status` decides, whether it comes
//! in the response headers (a trailers-only response) or in the trailers at
//! the end of the body; an open breaker answers `UNAVAILABLE` itself.
//!
//! When the status is only in the trailers, the call's permit moves into
//! the response body and is settled when the trailers arrive; a body
//! dropped before its end settles nothing (a cancelled call).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use palisade_hints::{Refusal, grpc};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::breaker::{CircuitBreaker, Outcome, Permit};
use crate::classify::is_refusal;
use crate::config::Config;
use crate::error::Open;
use crate::future::now;
use crate::layer::CircuitBreakerLayer;

/// The outcome a `grpc-status` code stands for: the codes that say the
/// dependency is unwell are failures, and every other code, OK included, a
/// success (the dependency answered).
fn outcome_of(code: u32) -> Outcome {
    if grpc::is_dependency_failure(code) {
        Outcome::Failure
    } else {
        Outcome::Success
    }
}

/// The server's `grpc-retry-pushback-ms`, its own word on when to retry.
fn pushback(fields: &HeaderMap) -> Option<Duration> {
    grpc::pushback(fields)?.wait()
}

/// A circuit breaker for gRPC clients and servers (a tonic `Channel` or
/// `Server`): `grpc-status` UNKNOWN, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED,
/// INTERNAL and UNAVAILABLE are failures, read from the headers or, when
/// only the trailers carry it, at the end of the body; transport errors are
/// failures; `grpc-retry-pushback-ms` may lengthen the open duration, never
/// shorten it. An open breaker answers a trailers-only `UNAVAILABLE` with
/// `grpc-retry-pushback-ms`, without calling the inner service.
///
/// A response whose HTTP status is not 200 and that carries no
/// `grpc-status` (a proxy or load balancer answered) gets the status gRPC
/// clients give it: 429, 502, 503 and 504 are UNAVAILABLE, 400 INTERNAL,
/// 401, 403 and 404 answers, anything else UNKNOWN. A response or error
/// carrying the [`Refusal`] marker (a palisade layer beneath refused the
/// call itself) is neither a success nor a failure.
///
/// Made by [`CircuitBreakerLayer::new_for_grpc`].
#[derive(Debug, Clone)]
pub struct GrpcCircuitBreakerLayer {
    breaker: CircuitBreaker,
}

impl GrpcCircuitBreakerLayer {
    /// The shared breaker.
    #[must_use]
    pub const fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }
}

impl CircuitBreakerLayer {
    /// A breaker for gRPC (feature `grpc`); see [`GrpcCircuitBreakerLayer`].
    ///
    /// # Example
    ///
    /// ```
    /// use palisade_circuit_breaker::{CircuitBreakerLayer, Config};
    /// use tower::ServiceBuilder;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:50051").connect_lazy();
    /// let channel = ServiceBuilder::new()
    ///     .layer(CircuitBreakerLayer::new_for_grpc(Config::default()))
    ///     .service(channel);
    /// let health = tonic_health::pb::health_client::HealthClient::new(channel);
    /// # let _ = health;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn new_for_grpc(config: Config) -> GrpcCircuitBreakerLayer {
        GrpcCircuitBreakerLayer {
            breaker: Self::new(config).breaker().clone(),
        }
    }
}

impl<S> Layer<S> for GrpcCircuitBreakerLayer {
    type Service = GrpcCircuitBreakerService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcCircuitBreakerService {
            inner,
            breaker: self.breaker.clone(),
        }
    }
}

/// The service made by [`GrpcCircuitBreakerLayer`].
#[derive(Debug, Clone)]
pub struct GrpcCircuitBreakerService<S> {
    inner: S,
    breaker: CircuitBreaker,
}

impl<S> GrpcCircuitBreakerService<S> {
    /// The shared breaker.
    pub const fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// Takes the inner service back.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for GrpcCircuitBreakerService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: 'static,
    ResBody: Default,
{
    type Response = Response<GrpcBody<ResBody>>;
    type Error = S::Error;
    type Future = GrpcResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        match self.breaker.acquire_with(now) {
            Ok(permit) => GrpcResponseFuture {
                kind: Kind::Called {
                    inner: self.inner.call(request),
                    permit: Some(permit),
                },
            },
            Err(open) => GrpcResponseFuture {
                kind: Kind::Rejected { open: Some(open) },
            },
        }
    }
}

pin_project! {
    /// Response future of [`GrpcCircuitBreakerService`].
    #[derive(Debug)]
    pub struct GrpcResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProjection]
    #[derive(Debug)]
    enum Kind<F> {
        Called {
            #[pin]
            inner: F,
            permit: Option<Permit>,
        },
        Rejected {
            open: Option<Open>,
        },
    }
}

impl<F, B, E> Future for GrpcResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: 'static,
    B: Default,
{
    type Output = Result<Response<GrpcBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProjection::Called { inner, permit } => {
                let result = ready!(inner.poll(cx));
                let permit = permit.take();
                Poll::Ready(match result {
                    Ok(response) => Ok(settle_on_headers(response, permit)),
                    Err(err) => {
                        if let Some(permit) = permit {
                            let outcome = if is_refusal(&err) {
                                Outcome::Ignored
                            } else {
                                Outcome::Failure
                            };
                            permit.settle(outcome, None, now);
                        }
                        Err(err)
                    }
                })
            }
            KindProjection::Rejected { open } => {
                let open = open
                    .take()
                    .expect("GrpcResponseFuture polled after completion");
                Poll::Ready(Ok(unavailable(open)))
            }
        }
    }
}

/// Settles the permit on a trailers-only response, an HTTP error or a
/// local refusal, or hands it to the body to settle at the trailers.
fn settle_on_headers<B>(response: Response<B>, permit: Option<Permit>) -> Response<GrpcBody<B>> {
    let Some(permit) = permit else {
        return response.map(|inner| GrpcBody {
            inner,
            permit: None,
        });
    };
    let settled = if response.extensions().get::<Refusal>().is_some() {
        permit.settle(Outcome::Ignored, None, now);
        None
    } else if let Some(code) = grpc::head_status(response.status(), response.headers()) {
        permit.settle(outcome_of(code), pushback(response.headers()), now);
        None
    } else {
        Some(permit)
    };
    response.map(|inner| GrpcBody {
        inner,
        permit: settled,
    })
}

/// A trailers-only `UNAVAILABLE`, with the wait as
/// `grpc-retry-pushback-ms`.
fn unavailable<B: Default>(open: Open) -> Response<GrpcBody<B>> {
    let mut response = grpc::refusal_response(grpc::UNAVAILABLE, "circuit%20open", open.refusal());
    response.extensions_mut().insert(open);
    response
}

pin_project! {
    /// A response body that settles its call's permit when the trailers
    /// (and their `grpc-status`) arrive. A body that ends without a
    /// `grpc-status` counts as failed; one dropped before its end counts
    /// nothing.
    #[derive(Debug)]
    pub struct GrpcBody<B> {
        #[pin]
        inner: B,
        permit: Option<Permit>,
    }
}

impl<B: Default> Default for GrpcBody<B> {
    fn default() -> Self {
        Self {
            inner: B::default(),
            permit: None,
        }
    }
}

impl<B: Body> Body for GrpcBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(permit) = this.permit.take() {
            match &frame {
                Some(Ok(frame)) => match frame.trailers_ref() {
                    Some(trailers) => {
                        let outcome = grpc::status(trailers).map_or(Outcome::Failure, outcome_of);
                        permit.settle(outcome, pushback(trailers), now);
                    }
                    None => *this.permit = Some(permit),
                },
                Some(Err(_)) | None => permit.settle(Outcome::Failure, None, now),
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
