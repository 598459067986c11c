//! Error types.

use std::error::Error;
use std::fmt;
use std::time::Duration;

use palisade_hints::{Refusal, RefusalReason};

use crate::Decision;

/// A request refused because its bucket is empty, or because a store that
/// could not reach its bucket refused it by its
/// [failure policy](crate::FailurePolicy) (failing closed, or a request
/// heavier than the fallback bucket).
///
/// Its [`source`](Error::source) is a [`Refusal`], the marker by which
/// `palisade-retry` knows the dependency was never called, and that it may
/// retry after [`retry_after`](Self::retry_after). The marker says which:
/// `RateLimited` for a bucket's answer, the caller over its own limit;
/// `StoreDown` for a failure policy's, which the limiter's outage caused
/// (so an SLO above counts it against the service, as it does a 503 from
/// [`StoreError`]). [`is_store_down`](Self::is_store_down) tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimited {
    refusal: Refusal,
}

impl RateLimited {
    /// The refusal of `decision`, a request not admitted.
    pub(crate) const fn new(decision: &Decision) -> Self {
        let retry_after = decision.retry_after();
        let wait = if retry_after.as_secs() == u64::MAX {
            None
        } else {
            Some(retry_after)
        };
        Self {
            refusal: if decision.is_from_bucket() {
                Refusal::rate_limited(wait)
            } else {
                Refusal::store_down(wait)
            },
        }
    }

    /// Whether the request was refused by a failure policy while the
    /// store could not reach its bucket, rather than by the bucket.
    #[must_use]
    pub const fn is_store_down(&self) -> bool {
        matches!(self.refusal.reason(), RefusalReason::StoreDown)
    }

    /// How long until the same request would be admitted; `None` when its
    /// cost exceeds the bucket's capacity, so it never will.
    #[must_use]
    pub const fn retry_after(&self) -> Option<Duration> {
        self.refusal.retry_after()
    }

    /// The refusal marker shared by palisade's layers.
    #[must_use]
    pub const fn refusal(&self) -> Refusal {
        self.refusal
    }
}

impl fmt::Display for RateLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.is_store_down(), self.retry_after()) {
            (true, Some(wait)) => write!(
                f,
                "rate limited while the rate limit store is unreachable, retry after {} ms",
                wait.as_millis()
            ),
            (true, None) => f.write_str("rate limited while the rate limit store is unreachable"),
            (false, Some(wait)) => write!(f, "rate limited, retry after {} ms", wait.as_millis()),
            (false, None) => {
                f.write_str("rate limited: the request costs more than the bucket holds")
            }
        }
    }
}

impl Error for RateLimited {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.refusal)
    }
}

/// A store could not decide: Redis unreachable, too slow, or answering
/// something unexpected.
///
/// Its [`source`](Error::source) is a [`Refusal`] (`StoreDown`), as a
/// [`RateLimited`]'s is: the limiter refused the request itself, so the
/// layers above do not count it against the service (a breaker does not
/// record it; retry waits out its [`retry_after`](Self::retry_after)
/// without spending its budget, and returns it when there is none). The
/// backend's own error is [`backend_error`](Self::backend_error), and in
/// the message.
#[derive(Debug)]
pub struct StoreError {
    kind: StoreErrorKind,
    refusal: Refusal,
}

#[derive(Debug)]
enum StoreErrorKind {
    Timeout(Duration),
    Backend(Box<dyn Error + Send + Sync>),
}

impl StoreError {
    /// The store did not answer within `after` (for [`Store`](crate::Store)
    /// implementations).
    #[must_use]
    pub const fn timeout(after: Duration) -> Self {
        Self {
            kind: StoreErrorKind::Timeout(after),
            refusal: Refusal::store_down(None),
        }
    }

    /// The store's backend failed with `error` (for
    /// [`Store`](crate::Store) implementations).
    pub fn backend(error: impl Into<Box<dyn Error + Send + Sync>>) -> Self {
        Self {
            kind: StoreErrorKind::Backend(error.into()),
            refusal: Refusal::store_down(None),
        }
    }

    /// The same failure, with a wait before the store is worth asking
    /// again (the refusal's, and the answer's `Retry-After`). Without one,
    /// `palisade-retry` returns the failure rather than retry it.
    #[must_use]
    pub const fn with_retry_after(mut self, wait: Duration) -> Self {
        self.refusal = Refusal::store_down(Some(wait));
        self
    }

    /// How long until the store is worth asking again, if known.
    #[must_use]
    pub const fn retry_after(&self) -> Option<Duration> {
        self.refusal.retry_after()
    }

    /// The refusal marker shared by palisade's layers (`StoreDown`).
    #[must_use]
    pub const fn refusal(&self) -> Refusal {
        self.refusal
    }

    /// The backend's error, when the store failed rather than timed out.
    #[must_use]
    pub fn backend_error(&self) -> Option<&(dyn Error + Send + Sync + 'static)> {
        match &self.kind {
            StoreErrorKind::Timeout(_) => None,
            StoreErrorKind::Backend(error) => Some(&**error),
        }
    }

    /// Whether the store did not answer within its timeout.
    #[must_use]
    pub const fn is_timeout(&self) -> bool {
        matches!(self.kind, StoreErrorKind::Timeout(_))
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            StoreErrorKind::Timeout(after) => {
                write!(
                    f,
                    "rate limit store did not answer within {} ms",
                    after.as_millis()
                )
            }
            StoreErrorKind::Backend(error) => write!(f, "rate limit store failed: {error}"),
        }
    }
}

impl Error for StoreError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.refusal)
    }
}

pub use palisade_hints::ConfigError;

/// A `ConfigError` of this crate's builders.
pub(crate) const fn config_error(setting: &'static str, problem: &'static str) -> ConfigError {
    ConfigError::new("rate limit", setting, problem)
}
