//! The error every palisade builder returns for a setting out of range.

use std::error::Error;
use std::fmt;

/// A configuration setting out of range, named as in the builder.
///
/// Each palisade crate re-exports it as its own `ConfigError`, so
/// `err.is::<palisade_retry::ConfigError>()` works as expected.
///
/// # Example
///
/// ```
/// use palisade_hints::ConfigError;
///
/// let error = ConfigError::new("retry", "max_attempts", "must be within 1..=100");
/// assert_eq!(error.setting(), "max_attempts");
/// assert_eq!(error.to_string(), "invalid retry config: max_attempts must be within 1..=100");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    component: &'static str,
    setting: &'static str,
    problem: &'static str,
}

impl ConfigError {
    /// `setting` of `component` (say `retry`) is wrong: `problem` says how.
    #[must_use]
    pub const fn new(
        component: &'static str,
        setting: &'static str,
        problem: &'static str,
    ) -> Self {
        Self {
            component,
            setting,
            problem,
        }
    }

    /// The setting at fault, as named in the builder.
    #[must_use]
    pub const fn setting(&self) -> &'static str {
        self.setting
    }

    /// The component whose configuration it is.
    #[must_use]
    pub const fn component(&self) -> &'static str {
        self.component
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {} config: {} {}",
            self.component, self.setting, self.problem
        )
    }
}

impl Error for ConfigError {}
