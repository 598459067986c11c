//! Error types.

use std::error::Error;
use std::fmt;
use std::time::Duration;

/// The overall deadline passed while an attempt was in flight; the attempt
/// was abandoned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadlineExceeded {
    deadline: Duration,
    attempts: u32,
}

impl DeadlineExceeded {
    pub(crate) const fn new(deadline: Duration, attempts: u32) -> Self {
        Self { deadline, attempts }
    }

    /// The configured deadline.
    #[must_use]
    pub const fn deadline(&self) -> Duration {
        self.deadline
    }

    /// Attempts started before it passed, the abandoned one included.
    #[must_use]
    pub const fn attempts(&self) -> u32 {
        self.attempts
    }
}

impl fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "retry deadline of {} ms exceeded during attempt {}",
            self.deadline.as_millis(),
            self.attempts
        )
    }
}

/// With feature `tonic`, its source is a `DEADLINE_EXCEEDED` status, which
/// a tonic client finds in the chain and answers the call with: it
/// answered `UNKNOWN`, knowing nothing of this error.
impl Error for DeadlineExceeded {
    #[cfg(feature = "tonic")]
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        static STATUS: std::sync::LazyLock<tonic::Status> = std::sync::LazyLock::new(|| {
            tonic::Status::deadline_exceeded("the retry deadline passed")
        });
        Some(&*STATUS)
    }
}

pub use palisade_hints::ConfigError;

/// A `ConfigError` of this crate's builders.
pub(crate) const fn config_error(setting: &'static str, problem: &'static str) -> ConfigError {
    ConfigError::new("retry", setting, problem)
}
