//! The canary split as a tower service.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::Service;
use tower::util::{Oneshot, ServiceExt};

use crate::canary::Canary;
use crate::key::Key;
use crate::settle::{ErrorsAsFailures, Pending, Settle};

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
/// now and then, is halted; one never polled does not count. With a judge
/// that reads a gRPC response's trailers ([`GrpcStatus`](crate::GrpcStatus)),
/// a call whose head has come and whose body is dropped before its end
/// counts for neither side: a client's cancel of a stream and a stream
/// that hangs after its head look alike, and only the first is common.
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
#[derive(Clone)]
pub struct CanarySplit<St, Ca, K, F = ErrorsAsFailures> {
    stable: St,
    canary_service: Ca,
    canary: Canary,
    key: K,
    failure: F,
}

/// Its canary; not its services, key or judge, which may be closures.
impl<St, Ca, K, F> std::fmt::Debug for CanarySplit<St, Ca, K, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CanarySplit")
            .field("canary", &self.canary)
            .finish_non_exhaustive()
    }
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
    /// Decides with `failure` which results are failures: a closure
    /// `Fn(&Result<T, E>) -> bool`, a preset, or a
    /// [`Failure`](crate::Failure) of your own as
    /// [`AtOnce`](crate::AtOnce)`(failure)` (see [`Settle`]).
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
    F: Settle<St::Response, St::Error> + Clone,
{
    type Response = F::Response;
    type Error = St::Error;
    type Future = SplitFuture<St, Ca, Req, F>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let on_canary = self.canary.takes(self.key.key(&request));
        let call = if on_canary {
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
            pending: Some(Pending::new(self.canary.clone(), on_canary, Instant::now())),
            failure: self.failure.clone(),
            polled: false,
            polling: false,
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
    /// outcome and latency the canary is told when it ends (or, for a
    /// judge that reads a gRPC response's trailers, when its body ends),
    /// or a failure and its latency when it is dropped first.
    pub struct SplitFuture<St: Service<Req>, Ca: Service<Req>, Req, F> {
        #[pin]
        call: Side<St, Ca, Req>,
        pending: Option<Pending>,
        failure: F,
        polled: bool,
        polling: bool,
    }

    impl<St: Service<Req>, Ca: Service<Req>, Req, F> PinnedDrop for SplitFuture<St, Ca, Req, F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // Abandoned or panicked, the pending call's drop counts a
            // failure: its caller had no answer. (Counted a success, a
            // canary that hung on one call in 25 stayed under its latency
            // margin and was promoted.) Never polled, it never ran.
            if !*this.polled
                && !*this.polling
                && let Some(pending) = this.pending.take()
            {
                pending.forget();
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
    F: Settle<St::Response, St::Error>,
{
    type Output = Result<F::Response, St::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // Set while the call is polled: a poll that unwinds leaves it
        // set, for the drop to count a panic.
        *this.polling = true;
        let polled = match this.call.project() {
            SideProjection::Stable { call } => call.poll(cx),
            SideProjection::Canary { call } => call.poll(cx),
        };
        *this.polling = false;
        *this.polled = true;
        let result = ready!(polled);
        let pending = this
            .pending
            .take()
            .expect("SplitFuture polled after it was ready");
        Poll::Ready(this.failure.settle(result, pending))
    }
}
