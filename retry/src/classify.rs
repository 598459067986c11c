//! Which results are worth another attempt.

use std::time::Duration;

use palisade_hints::Refusal;
use tower::BoxError;

/// What a result says about trying again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// Return this result to the caller.
    Return,
    /// Worth another attempt after the configured backoff.
    Retry,
    /// Worth another attempt, but no sooner than the dependency asked.
    RetryAfter(Duration),
    /// A palisade layer below refused the call without reaching the
    /// dependency (a rate limiter, a load shedder: a
    /// [`Refusal`] with a wait), and says when to try again: another
    /// attempt after that wait, which spends no retry budget, since the
    /// dependency saw no load (DESIGN's "a refusal is not a failure").
    /// It still counts towards the attempts, so a limiter that keeps
    /// refusing ends the retries.
    RetryRefused(Duration),
    /// A palisade layer below refused the call without reaching the
    /// dependency and names no wait worth retrying after (an open
    /// breaker): return this result, as [`Return`](Self::Return) does;
    /// a retry the budget paid for that led to it goes back to the
    /// budget, since the dependency saw no load.
    Refused,
}

/// Decides whether a result is worth another attempt.
///
/// The inner service's error is already a [`BoxError`] here, so a
/// classifier can look through its source chain. Implemented for closures
/// `Fn(&Result<Res, BoxError>) -> Verdict`.
pub trait Classify<Res> {
    /// The verdict on one attempt's result.
    fn classify(&self, result: &Result<Res, BoxError>) -> Verdict;
}

impl<Res, F> Classify<Res> for F
where
    F: Fn(&Result<Res, BoxError>) -> Verdict,
{
    fn classify(&self, result: &Result<Res, BoxError>) -> Verdict {
        self(result)
    }
}

/// The generic default: every error is worth a retry except a local
/// refusal: never an open circuit breaker's, and a rate limiter's only when
/// it says how long to wait. Every response is returned.
#[derive(Debug, Clone, Copy, Default)]
pub struct RetryErrors;

impl<Res> Classify<Res> for RetryErrors {
    fn classify(&self, result: &Result<Res, BoxError>) -> Verdict {
        match result {
            Ok(_) => Verdict::Return,
            Err(error) => match Refusal::find(&**error) {
                Some(refusal) => refused(refusal),
                None => Verdict::Retry,
            },
        }
    }
}

/// The verdict on a call a palisade layer refused without reaching the
/// dependency: an open circuit is never retried (retrying it only spends
/// the budget), a rate-limit refusal only after the wait it names.
pub(crate) fn refused(refusal: &Refusal) -> Verdict {
    match refusal.retry_after() {
        Some(wait) if !refusal.is_circuit_open() => Verdict::RetryRefused(wait),
        _ => Verdict::Refused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_not_retried_unless_a_limiter_names_the_wait() {
        let verdict = |error: BoxError| RetryErrors.classify(&Err::<(), _>(error));
        assert_eq!(verdict("boom".into()), Verdict::Retry);
        let wait = Duration::from_millis(300);
        assert_eq!(
            verdict(Box::new(Refusal::circuit_open(Some(wait)))),
            Verdict::Refused
        );
        assert_eq!(
            verdict(Box::new(Refusal::rate_limited(Some(wait)))),
            Verdict::RetryRefused(wait)
        );
        assert_eq!(
            verdict(Box::new(Refusal::rate_limited(None))),
            Verdict::Refused
        );
        assert_eq!(
            RetryErrors.classify(&Ok::<_, BoxError>(())),
            Verdict::Return
        );
    }
}
