//! The breaker's service.

use std::task::{Context, Poll};

use tower::Service;

use crate::breaker::CircuitBreaker;
use crate::classify::Classify;
use crate::future::ResponseFuture;
use crate::rejection::Rejection;

/// The service made by [`CircuitBreakerLayer`](crate::CircuitBreakerLayer).
///
/// `poll_ready` is the inner service's; an open breaker answers from `call`
/// at once, without calling the inner service.
#[derive(Debug, Clone)]
pub struct CircuitBreakerService<S, C, R> {
    inner: S,
    breaker: CircuitBreaker,
    classifier: C,
    rejection: R,
}

impl<S, C, R> CircuitBreakerService<S, C, R> {
    pub(crate) const fn new(
        inner: S,
        breaker: CircuitBreaker,
        classifier: C,
        rejection: R,
    ) -> Self {
        Self {
            inner,
            breaker,
            classifier,
            rejection,
        }
    }

    /// The shared breaker.
    pub const fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
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

impl<S, Req, C, R> Service<Req> for CircuitBreakerService<S, C, R>
where
    S: Service<Req>,
    C: Classify<S::Response, S::Error> + Clone,
    R: Rejection<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = R::Error;
    type Future = ResponseFuture<S::Future, C, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|err| self.rejection.error(err))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let inner = &mut self.inner;
        ResponseFuture::through(
            &self.breaker,
            || inner.call(request),
            &self.classifier,
            &self.rejection,
        )
    }
}
