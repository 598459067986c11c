//! Error types.

use std::error::Error;
use std::fmt;

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

    /// The setting at fault.
    #[must_use]
    pub const fn setting(&self) -> &'static str {
        self.setting
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid outbox config: {} {}",
            self.setting, self.problem
        )
    }
}

impl Error for ConfigError {}

/// A publisher could not hand an event to the broker.
#[derive(Debug)]
pub struct PublishError(Box<dyn Error + Send + Sync>);

impl PublishError {
    /// Wraps the broker's error.
    pub fn new(error: impl Into<Box<dyn Error + Send + Sync>>) -> Self {
        Self(error.into())
    }
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "publish failed: {}", self.0)
    }
}

impl Error for PublishError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.0)
    }
}
