//! Deciding from a call's result whether the dependency is unwell.

use std::time::Duration;

use crate::breaker::Outcome;

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
    /// if it did; used as the open duration when this result opens the
    /// breaker. None by default.
    fn retry_after(&self, result: &Result<T, E>) -> Option<Duration> {
        let _ = result;
        None
    }
}

/// The default for generic services: every `Ok` is a success, every `Err`
/// a failure.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorsAsFailures;

impl<T, E> Classify<T, E> for ErrorsAsFailures {
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
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
