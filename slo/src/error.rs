//! Error types.

use std::error::Error;
use std::fmt;
use std::time::Duration;

use palisade_hints::Refusal;

use crate::objective::Severity;

/// A low-priority call shed while the error budget burns: the layer
/// refused it without calling the service.
///
/// Its [`source`](Error::source) is a [`Refusal`], the marker by which
/// other palisade layers know the service was never called: a breaker
/// does not count it, and a retry waits [`retry_after`](Self::retry_after)
/// before trying again when that wait is within its backoff cap (and
/// returns the refusal at once when it is not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shed {
    refusal: Refusal,
    severity: Severity,
}

impl Shed {
    pub(crate) const fn new(severity: Severity, retry_after: Duration) -> Self {
        Self {
            refusal: Refusal::shed(Some(retry_after)),
            severity,
        }
    }

    /// How long until the layer looks at the budget again.
    #[must_use]
    pub fn retry_after(&self) -> Duration {
        self.refusal.retry_after().unwrap_or_default()
    }

    /// The severity of the burn-rate alert that was firing.
    #[must_use]
    pub const fn severity(&self) -> Severity {
        self.severity
    }

    /// The refusal marker shared by palisade's layers.
    #[must_use]
    pub const fn refusal(&self) -> Refusal {
        self.refusal
    }
}

impl fmt::Display for Shed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "low-priority call shed: the error budget burns at {} rate, retry after {} ms",
            self.severity.as_str(),
            self.retry_after().as_millis()
        )
    }
}

impl Error for Shed {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.refusal)
    }
}

pub use palisade_hints::ConfigError;

/// A `ConfigError` of this crate's builders.
pub(crate) const fn config_error(setting: &'static str, problem: &'static str) -> ConfigError {
    ConfigError::new("slo", setting, problem)
}
