//! Future types.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use crate::breaker::{CircuitBreaker, Permit};
use crate::classify::Settle;
use crate::error::Open;
use crate::respond::Respond;

pin_project! {
    /// Response future of [`CircuitBreakerService`](crate::CircuitBreakerService).
    ///
    /// It holds the call's permit: the outcome is recorded when the inner
    /// future finishes (or, for a classifier that waits for the end of the
    /// response body, when the body ends). Dropped unfinished (a timeout
    /// above the breaker, a caller that left), the call is
    /// [cut short](Permit::cut_short): slow if it ran past the slow-call
    /// threshold (a probe failed, past that or the half-open maximum
    /// wait), and nothing otherwise. Put a timeout *beneath* the breaker
    /// for a call that hangs to count as failed.
    #[derive(Debug)]
    pub struct ResponseFuture<F, C, R> {
        #[pin]
        kind: Kind<F, C, R>,
    }
}

pin_project! {
    #[project = Projection]
    #[derive(Debug)]
    enum Kind<F, C, R> {
        Called {
            #[pin]
            inner: F,
            permit: Running,
            classifier: C,
            respond: R,
        },
        Rejected {
            open: Option<Open>,
            respond: R,
        },
    }
}

/// The layer's clock: tokio's, so tests can pause it.
pub(crate) fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// The permit of a call under way: dropped before it is settled (its
/// future or body dropped unfinished), the call is cut short as of the
/// layer's clock.
#[derive(Debug)]
pub(crate) struct Running(pub(crate) Option<Permit>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(permit) = self.0.take() {
            permit.cut_short(now());
        }
    }
}

impl<F, C, R> ResponseFuture<F, C, R> {
    /// Asks `breaker` for a permit and makes the call with `call` if it
    /// gives one; the refusal otherwise.
    ///
    /// A breaker made for this call (a keyed layer's, looked up) is taken
    /// into the permit rather than counted again.
    // Always inlined into the service's `call`: a future returned through
    // memory is written field by field and read back whole, and that read
    // waits for the writes (a store-forwarding stall; `perf annotate`).
    #[inline(always)]
    pub(crate) fn through(
        breaker: Cow<'_, CircuitBreaker>,
        call: impl FnOnce() -> F,
        classifier: &C,
        respond: &R,
    ) -> Self
    where
        C: Clone,
        R: Clone,
    {
        match breaker.grant_with(now) {
            Ok(grant) => {
                let held = match breaker {
                    Cow::Borrowed(breaker) => breaker.held(),
                    Cow::Owned(breaker) => breaker.into_held(),
                };
                // A permit before the call: a call that panics drops it,
                // which gives a probe's slot back.
                let permit = grant.permit(held);
                Self::called(call(), permit, classifier.clone(), respond.clone())
            }
            Err(open) => Self::rejected(open, respond.clone()),
        }
    }

    const fn called(inner: F, permit: Permit, classifier: C, respond: R) -> Self {
        Self {
            kind: Kind::Called {
                inner,
                permit: Running(Some(permit)),
                classifier,
                respond,
            },
        }
    }

    const fn rejected(open: Open, respond: R) -> Self {
        Self {
            kind: Kind::Rejected {
                open: Some(open),
                respond,
            },
        }
    }
}

impl<F, T, E, C, R> Future for ResponseFuture<F, C, R>
where
    F: Future<Output = Result<T, E>>,
    C: Settle<T, E>,
    R: Respond<C::Response, E>,
{
    type Output = Result<C::Response, R::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            Projection::Called {
                inner,
                permit,
                classifier,
                respond,
            } => {
                let result = ready!(inner.poll(cx));
                let permit = &mut permit.0;
                assert!(permit.is_some(), "ResponseFuture polled after completion");
                let settled = classifier.settle_held(result, permit);
                debug_assert!(permit.is_none(), "settle_held leaves no permit");
                Poll::Ready(settled.map_err(|err| respond.error(err)))
            }
            Projection::Rejected { open, respond } => {
                let open = open.take().expect("ResponseFuture polled after completion");
                Poll::Ready(respond.refused(open))
            }
        }
    }
}
