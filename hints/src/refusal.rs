//! The marker of a call refused locally, before it reached the dependency.

use std::any::Any;
use std::error::Error;
use std::fmt;
use std::time::Duration;

/// Why a palisade layer refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefusalReason {
    /// A circuit breaker is open: the dependency is known to be failing.
    CircuitOpen,
    /// A rate limiter's bucket is empty: the caller is over its limit.
    RateLimited,
    /// Load shedding: a low-priority call refused while the service's
    /// error budget burns too fast.
    Shed,
    /// A store the layer shares with other processes (Redis) does not
    /// answer, and its failure policy refuses what it would need the store
    /// for (a coalescing cache that would otherwise let every process call
    /// the origin at once; a rate limiter that cannot decide).
    StoreDown,
}

/// A call a palisade layer refused without calling the dependency.
///
/// Layers attach it where the caller's own layers can see it: as the error
/// itself or in its [`source`](Error::source) chain (generic mode), or in the
/// response's extensions (HTTP and gRPC modes, where the layer answers
/// 503/429/`UNAVAILABLE` itself). A retry layer uses it to tell a local
/// refusal from a dependency's answer: an open circuit is never retried,
/// and a rate-limit refusal only when it says how long to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Refusal {
    reason: RefusalReason,
    retry_after: Option<Duration>,
}

impl Refusal {
    /// A refusal by an open circuit breaker, which lets a probe through
    /// after `retry_after` (`None` while forced open by an operator).
    #[must_use]
    pub const fn circuit_open(retry_after: Option<Duration>) -> Self {
        Self {
            reason: RefusalReason::CircuitOpen,
            retry_after,
        }
    }

    /// A refusal by a rate limiter, which will have a token after
    /// `retry_after` (`None` when the request can never fit).
    #[must_use]
    pub const fn rate_limited(retry_after: Option<Duration>) -> Self {
        Self {
            reason: RefusalReason::RateLimited,
            retry_after,
        }
    }

    /// A low-priority call shed while the service's error budget burns too
    /// fast; worth trying again after `retry_after`, when the shedding layer
    /// next looks at the budget.
    #[must_use]
    pub const fn shed(retry_after: Option<Duration>) -> Self {
        Self {
            reason: RefusalReason::Shed,
            retry_after,
        }
    }

    /// A refusal while the store a layer shares with other processes does
    /// not answer; the layer asks it again after `retry_after`.
    #[must_use]
    pub const fn store_down(retry_after: Option<Duration>) -> Self {
        Self {
            reason: RefusalReason::StoreDown,
            retry_after,
        }
    }

    /// Why the call was refused.
    #[must_use]
    pub const fn reason(&self) -> RefusalReason {
        self.reason
    }

    /// Whether an open circuit breaker refused the call.
    #[must_use]
    pub const fn is_circuit_open(&self) -> bool {
        matches!(self.reason, RefusalReason::CircuitOpen)
    }

    /// How long until a call may succeed, if the refusing layer knows.
    #[must_use]
    pub const fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The refusal a service's error carries, whatever its type: found in
    /// the source chain of a boxed error (tower's `BoxError`, which
    /// palisade's layers return, or a non-`Send` `Box<dyn Error>`), or the
    /// error itself when it is a `Refusal`. Other error types that wrap
    /// one are looked into with [`find`](Self::find).
    #[must_use]
    pub fn in_error<E: 'static>(error: &E) -> Option<&Self> {
        let error: &dyn Any = error;
        if let Some(boxed) = error.downcast_ref::<Box<dyn Error + Send + Sync>>() {
            Self::find(&**boxed)
        } else if let Some(boxed) = error.downcast_ref::<Box<dyn Error>>() {
            Self::find(&**boxed)
        } else {
            error.downcast_ref::<Self>()
        }
    }

    /// The refusal in `error` or anywhere in its source chain.
    #[must_use]
    pub fn find<'a>(error: &'a (dyn Error + 'static)) -> Option<&'a Self> {
        let mut next = Some(error);
        while let Some(error) = next {
            if let Some(refusal) = error.downcast_ref::<Self>() {
                return Some(refusal);
            }
            next = error.source();
        }
        None
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.reason {
            RefusalReason::CircuitOpen => "circuit open",
            RefusalReason::RateLimited => "rate limited",
            RefusalReason::Shed => "shed while the error budget burns",
            RefusalReason::StoreDown => "the shared store does not answer",
        })?;
        match self.retry_after {
            Some(wait) => write!(f, ", retry after {} ms", wait.as_millis()),
            None => Ok(()),
        }
    }
}

impl Error for Refusal {}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapper(Refusal);

    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("wrapped")
        }
    }

    impl Error for Wrapper {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn found_at_any_depth_of_the_source_chain() {
        let refusal = Refusal::rate_limited(Some(Duration::from_millis(250)));
        let wrapped = Wrapper(refusal);
        assert_eq!(Refusal::find(&wrapped), Some(&refusal));
        assert_eq!(Refusal::find(&refusal), Some(&refusal));
        let unrelated = std::io::Error::other("down");
        assert_eq!(Refusal::find(&unrelated), None);

        let boxed: Box<dyn Error + Send + Sync> = Box::new(Wrapper(refusal));
        assert_eq!(Refusal::in_error(&boxed), Some(&refusal));
        let local: Box<dyn Error> = Box::new(refusal);
        assert_eq!(Refusal::in_error(&local), Some(&refusal));
        assert_eq!(Refusal::in_error(&refusal), Some(&refusal));
        assert_eq!(Refusal::in_error(&unrelated), None);
    }

    #[test]
    fn displays_in_lowercase_with_the_wait() {
        let open = Refusal::circuit_open(Some(Duration::from_millis(1500)));
        assert_eq!(open.to_string(), "circuit open, retry after 1500 ms");
        assert_eq!(Refusal::circuit_open(None).to_string(), "circuit open");
        assert!(!Refusal::rate_limited(None).is_circuit_open());
    }
}
