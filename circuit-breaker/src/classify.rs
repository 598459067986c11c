//! Deciding from a call's result whether the dependency is unwell.

use std::any::Any;
use std::time::Duration;

use palisade_hints::Refusal;

use crate::breaker::{Outcome, Permit};
use crate::error::Open;
use crate::future::now;

/// Decides how a call's result counts: success, failure or ignored, and
/// whether the dependency said how long to stay away.
///
/// Implemented for closures `Fn(&Result<T, E>) -> Outcome`, so a custom
/// rule is one line:
///
/// ```
/// use palisade_circuit_breaker::{Classify, Outcome};
///
/// // Timeouts are failures; any other error is the caller's own fault.
/// let classify = |result: &Result<u32, std::io::Error>| match result {
///     Ok(_) => Outcome::Success,
///     Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Outcome::Failure,
///     Err(_) => Outcome::Ignored,
/// };
/// assert_eq!(classify.classify(&Ok(1)), Outcome::Success);
/// ```
pub trait Classify<T, E> {
    /// How the result counts.
    fn classify(&self, result: &Result<T, E>) -> Outcome;

    /// How long the dependency asked callers to stay away (a `Retry-After`),
    /// if it did; when this result opens the breaker, it may lengthen the
    /// open duration, never shorten it (see
    /// [`Permit::record_with_hint`](crate::Permit::record_with_hint)). None
    /// by default.
    fn retry_after(&self, result: &Result<T, E>) -> Option<Duration> {
        let _ = result;
        None
    }
}

/// How a call's result settles its permit, and what the caller gets back:
/// the step between the inner service's answer and the caller.
///
/// A [`CircuitBreakerLayer`](crate::CircuitBreakerLayer) or
/// [`KeyedCircuitBreakerLayer`](crate::KeyedCircuitBreakerLayer) takes
/// any of these in `classify`:
///
/// - a closure `Fn(&Result<T, E>) -> Outcome`, [`ErrorsAsFailures`], or
///   [`ServerErrorsAsFailures`](crate::ServerErrorsAsFailures) (feature
///   `http`): they decide from the result at once and hand it back
///   unchanged;
/// - a [`Classify`] of your own (one that also reads a `Retry-After`, say),
///   as [`AtOnce`]`(classifier)`;
/// - [`GrpcStatus`](crate::GrpcStatus) (feature `grpc`): it decides from a
///   response's head when the head says (a trailers-only status, an HTTP
///   error), and otherwise moves the permit into the response body, which
///   settles it when the trailers arrive; the caller gets that body.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot settle a breaker's permit from a `Result<{T}, {E}>`",
    note = "a `Classify` of your own goes in as `AtOnce(classifier)`"
)]
pub trait Settle<T, E> {
    /// What the caller gets: the inner service's response, or that
    /// response with the permit carried in its body.
    type Response;

    /// Settles `permit` from `result`, now or when the response's body
    /// ends.
    ///
    /// # Errors
    ///
    /// The inner service's error, unchanged.
    fn settle(&self, result: Result<T, E>, permit: Permit) -> Result<Self::Response, E>;

    /// Settles the permit in `held` like [`settle`](Self::settle), leaving
    /// `None`. The default takes the permit out and calls `settle`; keep it
    /// in a classifier of your own. This crate's classifiers that settle at
    /// once read the permit where the response future keeps it instead,
    /// without moving it first (a permit just written and then copied
    /// whole waits for its writes to land).
    ///
    /// # Errors
    ///
    /// The inner service's error, unchanged.
    ///
    /// # Panics
    ///
    /// When `held` is `None`.
    fn settle_held(
        &self,
        result: Result<T, E>,
        held: &mut Option<Permit>,
    ) -> Result<Self::Response, E> {
        let permit = held.take().expect("a permit to settle");
        self.settle(result, permit)
    }
}

/// Settles `permit` at once by `classifier`'s verdict and hint.
pub(crate) fn settle_at_once<T, E, C: Classify<T, E>>(
    classifier: &C,
    result: Result<T, E>,
    permit: Permit,
) -> Result<T, E> {
    settle_held_at_once(classifier, result, &mut Some(permit))
}

/// [`settle_at_once`] for the permit in `held`, where it is.
#[inline]
pub(crate) fn settle_held_at_once<T, E, C: Classify<T, E>>(
    classifier: &C,
    result: Result<T, E>,
    held: &mut Option<Permit>,
) -> Result<T, E> {
    Permit::settle_held(
        held,
        classifier.classify(&result),
        classifier.retry_after(&result),
        now,
    );
    result
}

/// A [`Classify`] of your own, as a layer's classifier: it decides from
/// each result at once.
///
/// ```
/// use std::time::Duration;
/// use palisade_circuit_breaker::{AtOnce, CircuitBreakerLayer, Classify, Config, Outcome};
///
/// /// Every error is a failure, and asks for a minute away.
/// #[derive(Clone)]
/// struct Patient;
///
/// impl Classify<u32, std::io::Error> for Patient {
///     fn classify(&self, result: &Result<u32, std::io::Error>) -> Outcome {
///         if result.is_ok() { Outcome::Success } else { Outcome::Failure }
///     }
///
///     fn retry_after(&self, result: &Result<u32, std::io::Error>) -> Option<Duration> {
///         result.is_err().then_some(Duration::from_secs(60))
///     }
/// }
///
/// let layer = CircuitBreakerLayer::new(Config::default()).classify(AtOnce(Patient));
/// # let _ = layer;
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct AtOnce<C>(pub C);

impl<T, E, C: Classify<T, E>> Settle<T, E> for AtOnce<C> {
    type Response = T;

    fn settle(&self, result: Result<T, E>, permit: Permit) -> Result<T, E> {
        settle_at_once(&self.0, result, permit)
    }

    fn settle_held(&self, result: Result<T, E>, held: &mut Option<Permit>) -> Result<T, E> {
        settle_held_at_once(&self.0, result, held)
    }
}

impl<T, E, F> Settle<T, E> for F
where
    F: Fn(&Result<T, E>) -> Outcome,
{
    type Response = T;

    fn settle(&self, result: Result<T, E>, permit: Permit) -> Result<T, E> {
        settle_at_once(self, result, permit)
    }

    fn settle_held(&self, result: Result<T, E>, held: &mut Option<Permit>) -> Result<T, E> {
        settle_held_at_once(self, result, held)
    }
}

/// The default for generic services: every `Ok` is a success, every `Err`
/// a failure, except a local refusal.
///
/// An error that carries the [`Refusal`] marker (an [`Open`] breaker or a
/// rate limiter beneath this layer refused the call without reaching the
/// dependency) is neither: it is ignored. The marker is found in a
/// [`BoxError`](tower::BoxError)'s source chain (tower's error type, which palisade's layers
/// return) or when the error is a [`Refusal`] or an [`Open`] itself; for
/// other error types that wrap one, write a classifier that looks with
/// [`Refusal::find`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorsAsFailures;

impl<T, E: 'static> Classify<T, E> for ErrorsAsFailures {
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(error) if is_refusal(error) => Outcome::Ignored,
            Err(_) => Outcome::Failure,
        }
    }
}

impl<T, E: 'static> Settle<T, E> for ErrorsAsFailures {
    type Response = T;

    fn settle(&self, result: Result<T, E>, permit: Permit) -> Result<T, E> {
        settle_at_once(self, result, permit)
    }

    fn settle_held(&self, result: Result<T, E>, held: &mut Option<Permit>) -> Result<T, E> {
        settle_held_at_once(self, result, held)
    }
}

/// Whether `error` carries the [`Refusal`] marker: it is a [`BoxError`](tower::BoxError)
/// (or a non-`Send` boxed error) with one in its source chain, or a
/// [`Refusal`] or an [`Open`] itself.
pub(crate) fn is_refusal<E: 'static>(error: &E) -> bool {
    Refusal::in_error(error).is_some() || (error as &dyn Any).is::<Open>()
}

impl<T, E, F> Classify<T, E> for F
where
    F: Fn(&Result<T, E>) -> Outcome,
{
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        self(result)
    }
}
