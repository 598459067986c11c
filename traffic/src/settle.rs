//! Which calls count as a side failing, and when: at once from the
//! result, or at the end of a gRPC response's body.

use palisade_hints::{Refusal, RefusalReason};
use tokio::time::Instant;

use crate::canary::Canary;

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
/// comes only in the trailers is not seen: judge gRPC calls with
/// `GrpcStatus`, feature `grpc`); a rate limiter's [`Refusal`],
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

/// How a call's result is judged, and what the caller gets back: the step
/// between a side's answer and the caller.
///
/// A [`CanarySplit`](crate::CanarySplit) takes any of these in
/// `failures`:
///
/// - a closure `Fn(&Result<T, E>) -> bool` (true: failed),
///   [`ErrorsAsFailures`], or [`ServerErrorsAsFailures`] (feature
///   `http`): they judge from the result at once and hand it back
///   unchanged;
/// - a [`Failure`] of your own, as [`AtOnce`]`(failure)`;
/// - [`GrpcStatus`](crate::GrpcStatus) (feature `grpc`): it judges from a
///   response's head when the head says (a trailers-only status, an HTTP
///   error), and otherwise moves the call into the response body, which
///   tells the canary when the trailers arrive; the caller gets that body.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot judge a call from a `Result<{T}, {E}>`",
    note = "a `Failure` of your own goes in as `AtOnce(failure)`"
)]
pub trait Settle<T, E> {
    /// What the caller gets: the side's response, or that response with
    /// the call carried in its body.
    type Response;

    /// Tells the canary how `call` went from `result`, now or when the
    /// response's body ends.
    ///
    /// # Errors
    ///
    /// The side's error, unchanged.
    fn settle(&self, result: Result<T, E>, call: Pending) -> Result<Self::Response, E>;
}

/// A [`Failure`] of your own, as a split's judge: it judges each result
/// at once.
#[derive(Debug, Clone, Copy, Default)]
pub struct AtOnce<F>(pub F);

/// Tells the canary at once how `call` went, as `failure` judges
/// `result`, and hands `result` back.
fn settle_at_once<T, E: 'static>(
    failure: &impl Failure<T, E>,
    result: Result<T, E>,
    call: Pending,
) -> Result<T, E> {
    if failure.is_excluded(&result) {
        call.exclude();
    } else {
        call.judge(failure.is_failure(&result));
    }
    result
}

impl<T, E: 'static, F: Failure<T, E>> Settle<T, E> for AtOnce<F> {
    type Response = T;

    fn settle(&self, result: Result<T, E>, call: Pending) -> Result<T, E> {
        settle_at_once(&self.0, result, call)
    }
}

impl<T, E: 'static, F> Settle<T, E> for F
where
    F: Fn(&Result<T, E>) -> bool,
{
    type Response = T;

    fn settle(&self, result: Result<T, E>, call: Pending) -> Result<T, E> {
        settle_at_once(self, result, call)
    }
}

impl<T, E: 'static> Settle<T, E> for ErrorsAsFailures {
    type Response = T;

    fn settle(&self, result: Result<T, E>, call: Pending) -> Result<T, E> {
        settle_at_once(self, result, call)
    }
}

#[cfg(feature = "http")]
impl<B, E: 'static> Settle<http::Response<B>, E> for ServerErrorsAsFailures {
    type Response = http::Response<B>;

    fn settle(
        &self,
        result: Result<http::Response<B>, E>,
        call: Pending,
    ) -> Result<http::Response<B>, E> {
        settle_at_once(self, result, call)
    }
}

/// A call on one side, not yet judged: [`judge`](Self::judge) tells the
/// canary whether it failed and how long it took,
/// [`exclude`](Self::exclude) that it counts for neither side. A
/// [`Settle`] of your own gets one with each result.
///
/// Dropped untold before the call's answer (a client gone, a timeout
/// above), it is a failure that took as long as it ran: a canary that
/// hangs is halted. Carried into a response's body
/// ([`GrpcBody`](crate::GrpcBody)) and dropped untold before the body's
/// end, it counts for neither side (the answer began; a client may stop
/// reading a stream, or cancel it, when it likes), unless the body
/// panicked while polled: a failure.
#[derive(Debug)]
pub struct Pending {
    canary: Canary,
    on_canary: bool,
    started: Instant,
    told: bool,
    /// Whether a drop untold is a failure: until it moves into a body,
    /// and there while the body is polled (a panic unwinds).
    pub(crate) abandoned_fails: bool,
}

impl Pending {
    pub(crate) const fn new(canary: Canary, on_canary: bool, started: Instant) -> Self {
        Self {
            canary,
            on_canary,
            started,
            told: false,
            abandoned_fails: true,
        }
    }

    /// The call, carried into its response's body: dropped there untold
    /// between polls, it counts for neither side.
    #[cfg(feature = "grpc")]
    pub(crate) fn into_body(mut self) -> Self {
        self.abandoned_fails = false;
        self
    }

    /// Whether the call went to the canary.
    #[must_use]
    pub const fn on_canary(&self) -> bool {
        self.on_canary
    }

    /// Tells the canary the call ended, failed or not, and how long it
    /// took.
    pub fn judge(mut self, failed: bool) {
        self.told = true;
        self.canary
            .record(self.on_canary, failed, self.started.elapsed());
    }

    /// Counts the call for neither side (a caller over its own limit).
    pub fn exclude(mut self) {
        self.told = true;
    }

    /// Drops the call untold and uncounted: it never ran.
    pub(crate) fn forget(self) {
        self.exclude();
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.told && self.abandoned_fails {
            self.canary
                .record(self.on_canary, true, self.started.elapsed());
        }
    }
}
