//! The retry layer's own failures as responses, for a server's router.

use std::convert::Infallible;
use std::error::Error;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Response, StatusCode};
use palisade_hints::http::refusal_response;
use palisade_hints::{Refusal, RefusalReason};
use tower::util::Oneshot;
use tower::{BoxError, Layer, Service, ServiceExt};

use crate::error::DeadlineExceeded;
use crate::layer::RetryLayer;

/// A retry layer whose failures are answers: made by
/// [`RetryLayer::answer_failures`].
#[derive(Clone)]
pub struct AnswerFailuresLayer<C, R> {
    retry: RetryLayer<C, R>,
}

impl<C, R> fmt::Debug for AnswerFailuresLayer<C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnswerFailuresLayer")
            .field("retry", &self.retry)
            .finish()
    }
}

impl<C, R> RetryLayer<C, R> {
    /// Answers what the retries end in, when it is not a response, instead
    /// of failing: `504 Gateway Timeout` for the [`DeadlineExceeded`],
    /// `502 Bad Gateway` for the last attempt's error, each with an empty
    /// body and the error in the extensions as a [`RetryFailure`]. A call
    /// a palisade layer below refused (an open breaker, a rate limiter: a
    /// [`Refusal`] in the error) is answered as palisade layers answer
    /// their refusals: `429` for a rate limit, else `503`, with
    /// `Retry-After` when it says when, and the `Refusal` in the
    /// extensions, so a breaker above does not count it as a failure. The
    /// service's error type is `Infallible`, so it stacks on an axum
    /// `Router` (or a route) as it is, with no `HandleErrorLayer`.
    ///
    /// Each call goes to a clone of the service made ready for it (as
    /// `HandleErrorLayer` does), so a readiness error is answered too.
    ///
    /// ```
    /// use std::time::Duration;
    /// use axum::{Router, routing::get};
    /// use palisade_retry::{Config, RetryLayer};
    ///
    /// # fn main() -> Result<(), palisade_retry::ConfigError> {
    /// let within_a_second = Config::builder().deadline(Duration::from_secs(1)).build()?;
    /// let app: Router = Router::new()
    ///     .route("/quote", get(|| async { "42" }))
    ///     .layer(
    ///         RetryLayer::new_for_http(within_a_second)
    ///             .buffer_bodies_into(64 * 1024, axum::body::Body::new)
    ///             .answer_failures(),
    ///     );
    /// # let _ = app;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn answer_failures(self) -> AnswerFailuresLayer<C, R> {
        AnswerFailuresLayer { retry: self }
    }
}

impl<S, C, R> Layer<S> for AnswerFailuresLayer<C, R>
where
    RetryLayer<C, R>: Layer<S>,
{
    type Service = AnswerFailures<<RetryLayer<C, R> as Layer<S>>::Service>;

    fn layer(&self, inner: S) -> Self::Service {
        AnswerFailures {
            retry: self.retry.layer(inner),
        }
    }
}

/// The service made by [`AnswerFailuresLayer`].
#[derive(Debug, Clone)]
pub struct AnswerFailures<S> {
    retry: S,
}

impl<S, Req, B> Service<Req> for AnswerFailures<S>
where
    S: Service<Req, Response = Response<B>, Error = BoxError> + Clone,
    B: Default,
{
    type Response = Response<B>;
    type Error = Infallible;
    type Future = AnsweredFuture<S, Req>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        AnsweredFuture {
            inner: self.retry.clone().oneshot(request),
        }
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`AnswerFailures`].
    pub struct AnsweredFuture<S: Service<Req>, Req> {
        #[pin]
        inner: Oneshot<S, Req>,
    }
}

impl<S, Req> fmt::Debug for AnsweredFuture<S, Req>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnsweredFuture").finish_non_exhaustive()
    }
}

impl<S, Req, B> Future for AnsweredFuture<S, Req>
where
    S: Service<Req, Response = Response<B>, Error = BoxError>,
    B: Default,
{
    type Output = Result<Response<B>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(Ok(match ready!(self.project().inner.poll(cx)) {
            Ok(response) => response,
            Err(error) => {
                if let Some(&refusal) = Refusal::find(&*error) {
                    let status = if refusal.reason() == RefusalReason::RateLimited {
                        StatusCode::TOO_MANY_REQUESTS
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    let mut response = refusal_response(status, refusal);
                    response
                        .extensions_mut()
                        .insert(RetryFailure(Arc::from(error)));
                    return Poll::Ready(Ok(response));
                }
                let status = if error.is::<DeadlineExceeded>() {
                    StatusCode::GATEWAY_TIMEOUT
                } else {
                    StatusCode::BAD_GATEWAY
                };
                // Every call's while the dependency is down.
                palisade_hints::throttled!(warn, target: "palisade_retry", %error, %status, "retries failed; answering");
                let mut response = Response::new(B::default());
                *response.status_mut() = status;
                response
                    .extensions_mut()
                    .insert(RetryFailure(Arc::from(error)));
                response
            }
        }))
    }
}

/// What a call's retries ended in, in the extensions of the response
/// [`AnswerFailures`] made of it.
#[derive(Debug, Clone)]
pub struct RetryFailure(pub Arc<dyn Error + Send + Sync>);

impl fmt::Display for RetryFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl Error for RetryFailure {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.0)
    }
}
