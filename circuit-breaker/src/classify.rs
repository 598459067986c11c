//! Deciding from a call's result whether the dependency is unwell.

use std::any::Any;
use std::error::Error;
use std::time::Duration;

use palisade_hints::Refusal;
use tower::BoxError;

use crate::breaker::Outcome;
use crate::error::Open;

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

/// The default for generic services: every `Ok` is a success, every `Err`
/// a failure, except a local refusal.
///
/// An error that carries the [`Refusal`] marker (an [`Open`] breaker or a
/// rate limiter beneath this layer refused the call without reaching the
/// dependency) is neither: it is ignored. The marker is found in a
/// [`BoxError`]'s source chain (tower's error type, which palisade's layers
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

/// Whether `error` carries the [`Refusal`] marker: it is a [`BoxError`]
/// (or a non-`Send` boxed error) with one in its source chain, or a
/// [`Refusal`] or an [`Open`] itself.
pub(crate) fn is_refusal<E: 'static>(error: &E) -> bool {
    let error: &dyn Any = error;
    if let Some(boxed) = error.downcast_ref::<BoxError>() {
        Refusal::find(&**boxed).is_some()
    } else if let Some(boxed) = error.downcast_ref::<Box<dyn Error>>() {
        Refusal::find(&**boxed).is_some()
    } else {
        error.is::<Refusal>() || error.is::<Open>()
    }
}

impl<T, E, F> Classify<T, E> for F
where
    F: Fn(&Result<T, E>) -> Outcome,
{
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        self(result)
    }
}
