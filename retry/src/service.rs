//! The retry service.

use std::marker::PhantomData;
use std::task::{Context, Poll};

use palisade_hints::share::{Handle, Shared};
use tower::{BoxError, Service};

use crate::classify::{Classify, RetryErrors};
use crate::future::{Deadline, ResponseFuture, Retrying};
use crate::layer::RetryLayer;
use crate::replay::{CloneRequest, Replay};

/// Retries failed calls to `S`; made by [`RetryLayer`].
///
/// `poll_ready` delegates to the inner service and the first attempt goes
/// to the service that was polled ready. Each retry goes to a clone kept in
/// the response future, which is polled ready again before it is called.
///
/// `L` is how the service and its calls reach the layer: counted (a
/// [`Shared`] handle, from a [`RetryLayer`]) or by reference (from a
/// [`LeakedRetryLayer`](crate::LeakedRetryLayer)). A counted service holds
/// its retryable calls on a count of its own from the second on, so
/// threads calling their own clones at once do not take turns on one.
#[derive(Clone)]
pub struct Retry<S, C = RetryErrors, R = CloneRequest, L = Shared<RetryLayer<C, R>>> {
    inner: S,
    shared: L,
    layer: PhantomData<fn() -> (C, R)>,
}

/// Its inner service and layer; not its classifier or replay, which may
/// be closures.
impl<S: std::fmt::Debug, C, R, L: std::fmt::Debug> std::fmt::Debug for Retry<S, C, R, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .field("layer", &self.shared)
            .finish()
    }
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
    L: Handle<Target = RetryLayer<C, R>>,
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
        // The deadline first: the retry state, made last, is then written
        // where the future is kept, not kept on the stack across a call and
        // copied there whole (which stalls on the writes it reads back).
        let deadline = shared
            .config
            .deadline
            .map(|total| Deadline::after(total, &shared.events));
        let (first, saved) = shared.replay.prepare(request);
        let future = self.inner.call(first);
        let retrying = saved.map(|saved| {
            self.shared.called();
            Retrying::new(self.inner.clone(), self.shared.held(), saved)
        });
        ResponseFuture::new(future, deadline, retrying)
    }
}

#[cfg(test)]
mod tests {
    use tower::{Layer, service_fn};

    use super::*;
    use crate::Config;

    #[test]
    fn a_service_that_keeps_calling_holds_its_calls_on_a_count_of_its_own() {
        let layer = RetryLayer::new(Config::default());
        let mut service = layer.layer(service_fn(|n: u32| async move { Ok::<_, BoxError>(n) }));
        let holders = |service: &Retry<_>| std::sync::Arc::strong_count(service.shared.as_arc());
        let first = service.call(1);
        assert_eq!(
            holders(&service),
            2,
            "the first call holds the layer's count"
        );
        drop(first);
        assert_eq!(holders(&service), 1, "no count of its own for one call");
        let second = service.call(2);
        let before = holders(&service);
        let later: Vec<_> = (0..5).map(|n| service.call(n)).collect();
        assert_eq!(
            holders(&service),
            before,
            "the later calls hold the service's own count"
        );
        drop((second, later));
        assert_eq!(holders(&service), before, "which the service keeps");
    }
}
