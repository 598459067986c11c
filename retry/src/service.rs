//! The retry service.

use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::time::Instant;
use tower::{BoxError, Service};

use crate::classify::{Classify, RetryErrors};
use crate::future::{ResponseFuture, Retrying};
use crate::layer::RetryLayer;
use crate::replay::{CloneRequest, Replay};

/// Retries failed calls to `S`; made by [`RetryLayer`].
///
/// `poll_ready` delegates to the inner service and the first attempt goes
/// to the service that was polled ready. Each retry goes to a clone kept in
/// the response future, which is polled ready again before it is called.
///
/// `L` is how the service and its calls reach the layer: counted (an
/// `Arc`, from a [`RetryLayer`]) or by reference (from a
/// [`LeakedRetryLayer`](crate::LeakedRetryLayer)).
#[derive(Debug, Clone)]
pub struct Retry<S, C = RetryErrors, R = CloneRequest, L = Arc<RetryLayer<C, R>>> {
    inner: S,
    shared: L,
    layer: PhantomData<fn() -> (C, R)>,
}

impl<S, C, R, L> Retry<S, C, R, L> {
    pub(crate) const fn new(inner: S, shared: L) -> Self {
        Self {
            inner,
            shared,
            layer: PhantomData,
        }
    }

    /// The inner service.
    pub const fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub const fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, C, R, L, Req> Service<Req> for Retry<S, C, R, L>
where
    L: Deref<Target = RetryLayer<C, R>> + Clone,
    R: Replay<Req>,
    S: Service<R::Request> + Clone,
    S::Error: Into<BoxError>,
    C: Classify<S::Response>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, C, R, Req, L>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    // See `ResponseFuture::new`: inlined so the future is built in place.
    #[inline(always)]
    fn call(&mut self, request: Req) -> Self::Future {
        let shared = &*self.shared;
        if let Some(budget) = &shared.budget {
            budget.deposit();
        }
        shared.events.attempt();
        let started = shared.config.deadline.map(|_| Instant::now());
        let (first, saved) = shared.replay.prepare(request);
        let future = self.inner.call(first);
        let retrying =
            saved.map(|saved| Retrying::new(self.inner.clone(), self.shared.clone(), saved));
        ResponseFuture::new(future, retrying, shared.config.deadline, started)
    }
}
