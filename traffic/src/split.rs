//! The canary split as a tower service.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use palisade_hints::{Refusal, RefusalReason};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::Service;
use tower::util::{Oneshot, ServiceExt};

use crate::canary::Canary;
use crate::key::Key;

/// Which results count as the canary (or the stable service) failing.
///
/// Implemented for closures `Fn(&Result<T, E>) -> bool` (true: failed).
///
/// A call a rate limiter inside a side's stack refused (a [`Refusal`] of
/// reason [`RateLimited`](RefusalReason::RateLimited)) counts for neither
/// side: it says the client is over its own limit, nothing of the
/// version, and one such client must not halt a canary. Other refusals
/// (an open breaker, a shed call) are the side's failures: the version's
/// own failures caused them, and its users got no answer.
pub trait Failure<T, E> {
    /// Whether `result` is a failure.
    fn is_failure(&self, result: &Result<T, E>) -> bool;

    /// Whether the call counts for neither side. By default, when the
    /// error carries a rate limiter's [`Refusal`] ([`Refusal::in_error`]).
    fn is_excluded(&self, result: &Result<T, E>) -> bool
    where
        E: 'static,
    {
        result
            .as_ref()
            .is_err_and(|error| rate_limited(Refusal::in_error(error)))
    }
}

fn rate_limited(refusal: Option<&Refusal>) -> bool {
    refusal.is_some_and(|refusal| refusal.reason() == RefusalReason::RateLimited)
}

impl<T, E, F> Failure<T, E> for F
where
    F: Fn(&Result<T, E>) -> bool,
{
    fn is_failure(&self, result: &Result<T, E>) -> bool {
        self(result)
    }
}

/// Every `Err` is a failure (the default), but a rate limiter's
/// [`Refusal`], which is excluded.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorsAsFailures;

impl<T, E> Failure<T, E> for ErrorsAsFailures {
    fn is_failure(&self, result: &Result<T, E>) -> bool {
        result.is_err()
    }
}

/// 5xx responses and transport errors are failures (feature `http`), and
/// so is a gRPC call that failed in its head (a trailers-only answer whose
/// `grpc-status` says the service is unwell, see
/// [`head_failed`](palisade_hints::grpc::head_failed); a status that
/// comes only in the trailers is not seen); a rate limiter's [`Refusal`],
/// on the error or in the response's extensions (its 429), is excluded.
/// A response a palisade layer refused for another reason is a failure
/// whatever its status (a rate limiter failing closed while its store is
/// away answers 429 with a `StoreDown` refusal), as the error is.
#[cfg(feature = "http")]
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerErrorsAsFailures;

#[cfg(feature = "http")]
impl<B, E> Failure<http::Response<B>, E> for ServerErrorsAsFailures {
    fn is_failure(&self, result: &Result<http::Response<B>, E>) -> bool {
        result.as_ref().map_or(true, |response| {
            response.extensions().get::<Refusal>().is_some()
                || palisade_hints::grpc::head_failed(response.status(), response.headers())
        })
    }

    fn is_excluded(&self, result: &Result<http::Response<B>, E>) -> bool
    where
        E: 'static,
    {
        rate_limited(match result {
            Ok(response) => response.extensions().get::<Refusal>(),
            Err(error) => Refusal::in_error(error),
        })
    }
}

/// Sends each request to the stable or the canary service, as its
/// [`Canary`] says, and tells the canary how each call went.
///
/// Sticky by key: a key goes to the canary while its hash falls within
/// the canary's share, so a user sees one version, and stays on the
/// canary as the share grows. A request that names no key picks a side at
/// random, in proportion. Each call waits only for its own side's
/// readiness (on a clone of that service), so a canary that is slow to be
/// ready holds up only the calls sent to it.
///
/// Every call is timed and classified; the canary is judged against the
/// stable service with each of its calls, and halted (every call to the
/// stable service from then on) as its [`CanaryPlan`](crate::CanaryPlan)
/// says. A call dropped before it ends (the caller's timeout, a client
/// gone) or by its own panic (a `CatchPanicLayer` above) is a failure, on
/// either side, that took as long as it ran, so a canary that hangs, even
/// now and then, is halted; one never polled does not count.
///
/// # Example
///
/// ```
/// use palisade_traffic::{Canary, CanaryPlan, CanarySplit};
/// use tower::{BoxError, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), BoxError> {
/// let stable = service_fn(|user: u64| async move { Ok::<_, BoxError>(("v1", user)) });
/// let canary_service = service_fn(|user: u64| async move { Ok::<_, BoxError>(("v2", user)) });
/// let canary = Canary::new(CanaryPlan::new())?;
/// let split = CanarySplit::new(stable, canary_service, canary.clone(), |user: &u64| Some(*user));
/// let (version, _) = split.oneshot(42).await?;
/// assert!(version == "v1" || version == "v2");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct CanarySplit<St, Ca, K, F = ErrorsAsFailures> {
    stable: St,
    canary_service: Ca,
    canary: Canary,
    key: K,
    failure: F,
}

impl<St, Ca, K> CanarySplit<St, Ca, K> {
    /// Splits between `stable` and `canary_service` as `canary` says, by
    /// `key`; every `Err` is a failure.
    pub const fn new(stable: St, canary_service: Ca, canary: Canary, key: K) -> Self {
        Self {
            stable,
            canary_service,
            canary,
            key,
            failure: ErrorsAsFailures,
        }
    }
}

impl<St, Ca, K, F> CanarySplit<St, Ca, K, F> {
    /// Decides with `failure` which results are failures.
    pub fn failures<F2>(self, failure: F2) -> CanarySplit<St, Ca, K, F2> {
        CanarySplit {
            stable: self.stable,
            canary_service: self.canary_service,
            canary: self.canary,
            key: self.key,
            failure,
        }
    }

    /// The canary this split routes by.
    pub const fn canary(&self) -> &Canary {
        &self.canary
    }
}

impl<St, Ca, K, F, Req> Service<Req> for CanarySplit<St, Ca, K, F>
where
    St: Service<Req> + Clone,
    St::Error: 'static,
    Ca: Service<Req, Response = St::Response, Error = St::Error> + Clone,
    K: Key<Req>,
    F: Failure<St::Response, St::Error> + Clone,
{
    type Response = St::Response;
    type Error = St::Error;
    type Future = SplitFuture<St, Ca, Req, F>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let call = if self.canary.takes(self.key.key(&request)) {
            Side::Canary {
                call: self.canary_service.clone().oneshot(request),
            }
        } else {
            Side::Stable {
                call: self.stable.clone().oneshot(request),
            }
        };
        SplitFuture {
            call,
            canary: self.canary.clone(),
            failure: self.failure.clone(),
            started: Instant::now(),
            polled: false,
            polling: false,
            ended: false,
        }
    }
}

pin_project! {
    #[project = SideProjection]
    enum Side<St: Service<Req>, Ca: Service<Req>, Req> {
        Stable { #[pin] call: Oneshot<St, Req> },
        Canary { #[pin] call: Oneshot<Ca, Req> },
    }
}

pin_project! {
    /// Response future of [`CanarySplit`]: the call on its side, whose
    /// outcome and latency the canary is told when it ends, or a failure
    /// and its latency when it is dropped first.
    pub struct SplitFuture<St: Service<Req>, Ca: Service<Req>, Req, F> {
        #[pin]
        call: Side<St, Ca, Req>,
        canary: Canary,
        failure: F,
        started: Instant,
        polled: bool,
        polling: bool,
        ended: bool,
    }

    impl<St: Service<Req>, Ca: Service<Req>, Req, F> PinnedDrop for SplitFuture<St, Ca, Req, F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // Abandoned or panicked: its caller had no answer. (Counted a
            // success, a canary that hung on one call in 25 stayed under
            // its latency margin and was promoted.)
            if (*this.polled || *this.polling) && !*this.ended {
                let on_canary = matches!(this.call.project(), SideProjection::Canary { .. });
                this.canary.record(on_canary, true, this.started.elapsed());
            }
        }
    }
}

impl<St, Ca, Req, F> std::fmt::Debug for SplitFuture<St, Ca, Req, F>
where
    St: Service<Req>,
    Ca: Service<Req>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SplitFuture").finish_non_exhaustive()
    }
}

impl<St, Ca, Req, F> Future for SplitFuture<St, Ca, Req, F>
where
    St: Service<Req>,
    St::Error: 'static,
    Ca: Service<Req, Response = St::Response, Error = St::Error>,
    F: Failure<St::Response, St::Error>,
{
    type Output = Result<St::Response, St::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // Set while the call is polled: a poll that unwinds leaves it
        // set, for the drop to count a panic.
        *this.polling = true;
        let polled = match this.call.project() {
            SideProjection::Stable { call } => call.poll(cx).map(|result| (result, false)),
            SideProjection::Canary { call } => call.poll(cx).map(|result| (result, true)),
        };
        *this.polling = false;
        *this.polled = true;
        let (result, on_canary) = ready!(polled);
        *this.ended = true;
        if !this.failure.is_excluded(&result) {
            this.canary.record(
                on_canary,
                this.failure.is_failure(&result),
                this.started.elapsed(),
            );
        }
        Poll::Ready(result)
    }
}
