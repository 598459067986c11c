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

impl Error for DeadlineExceeded {}

/// A configuration setting out of range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    setting: &'static str,
    problem: &'static str,
}

impl ConfigError {
    pub(crate) const fn new(setting: &'static str, problem: &'static str) -> Self {
        Self { setting, problem }
    }

    /// The setting at fault, as named in the builder.
    #[must_use]
    pub const fn setting(&self) -> &'static str {
        self.setting
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid retry config: {} {}", self.setting, self.problem)
    }
}

impl Error for ConfigError {}
