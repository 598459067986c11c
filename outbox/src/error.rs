//! Error types.

use std::error::Error;
use std::fmt;

pub use palisade_hints::ConfigError;

/// A `ConfigError` of this crate's builders.
pub(crate) const fn config_error(setting: &'static str, problem: &'static str) -> ConfigError {
    ConfigError::new("outbox", setting, problem)
}

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
