//! Error types.

use std::error::Error;
use std::fmt;
use std::time::Duration;

use palisade_hints::Refusal;

/// A call refused because the circuit is open.
///
/// It is never worth retrying before [`retry_after`](Self::retry_after). Its
/// [`source`](Error::source) is a [`Refusal`], the marker by which
/// `palisade-retry` (or any layer) knows the dependency was never called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Open {
    refusal: Refusal,
}

impl Open {
    pub(crate) const fn new(retry_after: Option<Duration>) -> Self {
        Self {
            refusal: Refusal::circuit_open(retry_after),
        }
    }

    /// How long until the breaker lets a probe through; `None` while it is
    /// forced open by an operator.
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

impl fmt::Display for Open {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.retry_after() {
            Some(wait) => write!(f, "circuit open, retry after {} ms", wait.as_millis()),
            None => f.write_str("circuit forced open"),
        }
    }
}

impl Error for Open {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.refusal)
    }
}

pub use palisade_hints::ConfigError;

/// A `ConfigError` of this crate's builders.
pub(crate) const fn config_error(setting: &'static str, problem: &'static str) -> ConfigError {
    ConfigError::new("circuit breaker", setting, problem)
}
