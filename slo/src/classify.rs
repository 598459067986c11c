//! Deciding from a call's result whether it met the objective.

use palisade_hints::{Refusal, RefusalReason};

use crate::future::Pending;

/// How a call counts against an objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// It met the objective (unless it was slower than the objective's
    /// latency threshold, which makes it bad).
    Good,
    /// It did not.
    Bad,
    /// It says nothing of the service: not counted at all (a caller over
    /// its own rate limit, a request the caller got wrong).
    Excluded,
}

/// Decides how a call's result counts: the service level indicator.
///
/// Implemented for closures `Fn(&Result<T, E>) -> Event`:
///
/// ```
/// use palisade_slo::{Classify, Event};
///
/// // A timeout is bad; a request the caller got wrong says nothing.
/// let classify = |result: &Result<u32, std::io::Error>| match result {
///     Ok(_) => Event::Good,
///     Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Event::Bad,
///     Err(_) => Event::Excluded,
/// };
/// assert_eq!(classify.classify(&Ok(1)), Event::Good);
/// ```
pub trait Classify<T, E> {
    /// How the result counts.
    fn classify(&self, result: &Result<T, E>) -> Event;
}

impl<T, E, F> Classify<T, E> for F
where
    F: Fn(&Result<T, E>) -> Event,
{
    fn classify(&self, result: &Result<T, E>) -> Event {
        self(result)
    }
}

/// How a call's result is counted, and what the caller gets back: the
/// step between the inner service's answer and the caller.
///
/// An [`SloLayer`](crate::SloLayer) takes any of these in `classify`:
///
/// - a closure `Fn(&Result<T, E>) -> Event`, [`ErrorsAreBad`], or
///   [`ServerErrorsAreBad`](crate::ServerErrorsAreBad) (feature `http`):
///   they decide from the result at once and hand it back unchanged;
/// - a [`Classify`] of your own, as [`AtOnce`]`(classifier)`;
/// - [`GrpcStatus`](crate::GrpcStatus) (feature `grpc`): it decides from
///   a response's head when the head says (a trailers-only status, an
///   HTTP error), and otherwise moves the call into the response body,
///   which counts it when the trailers arrive; the caller gets that body.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot count a call from a `Result<{T}, {E}>`",
    note = "a `Classify` of your own goes in as `AtOnce(classifier)`"
)]
pub trait Settle<T, E> {
    /// What the caller gets: the inner service's response, or that
    /// response with the call carried in its body.
    type Response;

    /// Counts `call` from `result`, now or when the response's body ends.
    ///
    /// # Errors
    ///
    /// The inner service's error, unchanged.
    fn settle(&self, result: Result<T, E>, call: Pending) -> Result<Self::Response, E>;
}

/// A [`Classify`] of your own, as a layer's classifier: it decides from
/// each result at once.
///
/// ```
/// use palisade_slo::{AtOnce, Classify, ErrorBudget, Event, Objective, SloLayer};
///
/// /// Only a timeout is bad; other errors are the caller's.
/// #[derive(Clone)]
/// struct Timeouts;
///
/// impl Classify<u32, std::io::Error> for Timeouts {
///     fn classify(&self, result: &Result<u32, std::io::Error>) -> Event {
///         match result {
///             Ok(_) => Event::Good,
///             Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Event::Bad,
///             Err(_) => Event::Excluded,
///         }
///     }
/// }
///
/// # fn main() -> Result<(), palisade_slo::ConfigError> {
/// let layer = SloLayer::new(ErrorBudget::new(Objective::new(0.999))?).classify(AtOnce(Timeouts));
/// # let _ = layer;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct AtOnce<C>(pub C);

impl<T, E, C: Classify<T, E>> Settle<T, E> for AtOnce<C> {
    type Response = T;

    fn settle(&self, result: Result<T, E>, call: Pending) -> Result<T, E> {
        settle_at_once(&self.0, result, call)
    }
}

impl<T, E, F> Settle<T, E> for F
where
    F: Fn(&Result<T, E>) -> Event,
{
    type Response = T;

    fn settle(&self, result: Result<T, E>, call: Pending) -> Result<T, E> {
        settle_at_once(self, result, call)
    }
}

/// Counts `call` at once as `classifier` says, and hands `result` back.
pub(crate) fn settle_at_once<T, E, C: Classify<T, E>>(
    classifier: &C,
    result: Result<T, E>,
    call: Pending,
) -> Result<T, E> {
    call.count(classifier.classify(&result));
    result
}

/// The default for generic services: every `Ok` is good and every `Err`
/// bad, except a rate limiter's refusal of a caller over its own limit,
/// which is excluded.
///
/// An open breaker's refusal is bad: the caller got no answer. The marker
/// is found in a [`BoxError`](tower::BoxError)'s source chain, or when the error is a
/// [`Refusal`] itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorsAreBad;

impl<T, E: 'static> Classify<T, E> for ErrorsAreBad {
    fn classify(&self, result: &Result<T, E>) -> Event {
        match result {
            Ok(_) => Event::Good,
            Err(error)
                if Refusal::in_error(error)
                    .is_some_and(|r| r.reason() == RefusalReason::RateLimited) =>
            {
                Event::Excluded
            }
            Err(_) => Event::Bad,
        }
    }
}

impl<T, E: 'static> Settle<T, E> for ErrorsAreBad {
    type Response = T;

    fn settle(&self, result: Result<T, E>, call: Pending) -> Result<T, E> {
        settle_at_once(self, result, call)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn errors_are_bad_but_a_caller_over_its_limit_is_excluded() {
        let event = |result: Result<(), tower::BoxError>| ErrorsAreBad.classify(&result);
        assert_eq!(event(Ok(())), Event::Good);
        assert_eq!(event(Err("boom".into())), Event::Bad);
        let limited = Refusal::rate_limited(Some(Duration::from_secs(1)));
        assert_eq!(event(Err(Box::new(limited))), Event::Excluded);
        let open = Refusal::circuit_open(Some(Duration::from_secs(1)));
        assert_eq!(event(Err(Box::new(open))), Event::Bad);
    }
}
