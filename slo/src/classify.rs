//! Deciding from a call's result whether it met the objective.

use palisade_hints::{Refusal, RefusalReason};

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
