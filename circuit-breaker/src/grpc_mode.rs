//! gRPC mode (feature `grpc`): the `grpc-status` decides, whether it comes
//! in the response headers (a trailers-only response) or in the trailers at
//! the end of the body; an open breaker answers `UNAVAILABLE` itself.
//!
//! When the status is only in the trailers, the call's permit moves into
//! the response body and is settled when the trailers arrive; a body
//! dropped before its end is a call [cut short](crate::Permit::cut_short).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, Response};
use http_body::{Body, Frame, SizeHint};
use palisade_hints::grpc;
use palisade_hints::grpc::{AtEnd, Head, StatusBody};
use pin_project_lite::pin_project;

use crate::breaker::{Outcome, Permit};
use crate::classify::{Settle, is_refusal};
use crate::config::Config;
use crate::error::Open;
use crate::future::{Running, now};
use crate::layer::CircuitBreakerLayer;
use crate::respond::Respond;

/// The outcome a `grpc-status` code stands for, with the `fields` it came
/// in: the codes that say the dependency is unwell are failures (but a
/// RESOURCE_EXHAUSTED naming a wait: neither), and every other code, OK
/// included, a success (the dependency answered).
fn outcome_of(code: u32, fields: &HeaderMap) -> Outcome {
    if grpc::is_paced(code, fields) {
        // The server paces this caller (a quota) and says when to come
        // back: an answer, not the dependency failing.
        Outcome::Ignored
    } else if grpc::is_dependency_failure(code) {
        Outcome::Failure
    } else {
        Outcome::Success
    }
}

/// The server's `grpc-retry-pushback-ms`, its own word on when to retry.
fn pushback(fields: &HeaderMap) -> Option<Duration> {
    grpc::pushback(fields)?.wait()
}

/// Classifies gRPC calls, for clients and servers (a tonic `Channel` or
/// `Server`): `grpc-status` UNKNOWN, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED
/// (naming no wait, below), INTERNAL and UNAVAILABLE are failures, read
/// from the headers or, when
/// only the trailers carry it, at the end of the body ([`GrpcBody`] carries
/// the permit there); transport errors are failures;
/// `grpc-retry-pushback-ms` may lengthen the open duration, never shorten
/// it.
///
/// A response whose HTTP status is not 200 and that carries no
/// `grpc-status` (a proxy or load balancer answered) gets the status gRPC
/// clients give it: 429, 502, 503 and 504 are UNAVAILABLE, 400 INTERNAL,
/// 401, 403 and 404 answers, anything else UNKNOWN. A response or error
/// carrying the [`Refusal`](crate::Refusal) marker (a palisade layer beneath refused the
/// call itself) is neither a success nor a failure, and nor is a
/// RESOURCE_EXHAUSTED with a `grpc-retry-pushback-ms` wait: the server
/// paces this caller (a quota, as a palisade rate limiter on the server
/// answers) and says when to come back, which a retry above waits out; a
/// client over its quota would otherwise open the breaker for every
/// caller. A RESOURCE_EXHAUSTED naming no wait is a failure.
///
/// [`CircuitBreakerLayer::new_for_grpc`] pairs it with [`Unavailable`]; a
/// [`KeyedCircuitBreakerLayer`](crate::KeyedCircuitBreakerLayer) takes the
/// same pair with `.classify(GrpcStatus).respond_with(Unavailable)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcStatus;

impl<B, E: 'static> Settle<Response<B>, E> for GrpcStatus {
    type Response = Response<GrpcBody<B>>;

    fn settle(
        &self,
        result: Result<Response<B>, E>,
        permit: Permit,
    ) -> Result<Response<GrpcBody<B>>, E> {
        match result {
            Ok(response) => Ok(settle_on_headers(response, permit)),
            Err(error) => {
                let outcome = if is_refusal(&error) {
                    Outcome::Ignored
                } else {
                    Outcome::Failure
                };
                permit.settle(outcome, None, now);
                Err(error)
            }
        }
    }
}

/// Answers a call refused by an open breaker with a trailers-only
/// `UNAVAILABLE` and the wait as `grpc-retry-pushback-ms`, without calling
/// the inner service; keeps the inner service's error type. The response's
/// extensions hold the [`Open`] error and its [`Refusal`](crate::Refusal), so a retry layer
/// further out does not retry it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unavailable;

impl<B: Default, E> Respond<Response<GrpcBody<B>>, E> for Unavailable {
    type Error = E;

    fn refused(&self, open: Open) -> Result<Response<GrpcBody<B>>, E> {
        let mut response =
            grpc::refusal_response(grpc::UNAVAILABLE, "circuit%20open", open.refusal());
        response.extensions_mut().insert(open);
        Ok(response)
    }

    fn error(&self, error: E) -> E {
        error
    }
}

impl CircuitBreakerLayer {
    /// A breaker for gRPC clients and servers (feature `grpc`): calls
    /// classified by [`GrpcStatus`], refusals answered by [`Unavailable`].
    /// The service keeps the inner service's error type; its responses'
    /// bodies are [`GrpcBody`], which a tonic client or server takes as it
    /// is.
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
    pub fn new_for_grpc(config: Config) -> CircuitBreakerLayer<GrpcStatus, Unavailable> {
        Self::new(config)
            .classify(GrpcStatus)
            .respond_with(Unavailable)
    }
}

/// Settles the permit on a trailers-only response, an HTTP error or a
/// local refusal, or hands it to the body to settle at the trailers.
fn settle_on_headers<B>(response: Response<B>, permit: Permit) -> Response<GrpcBody<B>> {
    let waiting = match Head::of(&response) {
        Head::Refused(_) => {
            permit.settle(Outcome::Ignored, None, now);
            None
        }
        Head::Status(code, fields) => {
            permit.settle(outcome_of(code, fields), pushback(fields), now);
            None
        }
        Head::InTrailers => Some(Running(Some(permit))),
    };
    response.map(|inner| GrpcBody {
        inner: StatusBody::new(inner, waiting),
    })
}

/// At the body's end: the trailers' `grpc-status` settles the call, and a
/// body that ends without one failed.
impl AtEnd for Running {
    fn ended(mut self, trailers: Option<&HeaderMap>) {
        if let Some(permit) = self.0.take() {
            let outcome = trailers
                .and_then(|trailers| Some((grpc::status(trailers)?, trailers)))
                .map_or(Outcome::Failure, |(code, trailers)| {
                    outcome_of(code, trailers)
                });
            permit.settle(outcome, trailers.and_then(pushback), now);
        }
    }
}

pin_project! {
    /// A response body that settles its call's permit when the trailers
    /// (and their `grpc-status`) arrive. A body that ends without a
    /// `grpc-status` counts as failed; one dropped before its end is
    /// [cut short](crate::Permit::cut_short). It tells no end of stream
    /// while the call is unsettled (a reader may stop at an ended body
    /// without polling it again, as hyper's server does, and the poll that
    /// finds no `grpc-status` at the end is what counts the failure).
    #[derive(Debug, Default)]
    pub struct GrpcBody<B> {
        #[pin]
        inner: StatusBody<B, Running>,
    }
}

impl<B: Body> Body for GrpcBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
