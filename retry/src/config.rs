//! How many attempts, how far apart, within what budget and deadline.

use std::time::Duration;

use crate::backoff::Backoff;
use crate::budget::Budget;
use crate::error::{ConfigError, config_error};

/// The most attempts a request may be given.
const MAX_ATTEMPTS: u32 = 100;

/// A retry configuration, built with [`Config::builder`].
///
/// The defaults are safe for a dependency in trouble: 3 attempts in total,
/// exponential backoff with full jitter from 50 ms up to 5 s, and a budget
/// that lets retries add at most 20% to the request rate. There is no
/// overall deadline unless one is set.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use palisade_retry::{Backoff, Budget, Config};
///
/// let config = Config::builder()
///     .max_attempts(4)
///     .backoff(Backoff::decorrelated(Duration::from_millis(20), Duration::from_secs(1)))
///     .budget(Budget::new(0.1).min_per_second(5))
///     .deadline(Duration::from_secs(3))
///     .build()?;
/// assert_eq!(config.max_attempts(), 4);
/// # Ok::<(), palisade_retry::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub(crate) max_attempts: u32,
    pub(crate) backoff: Backoff,
    pub(crate) budget: Option<Budget>,
    pub(crate) deadline: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            backoff: Backoff::full_jitter(Duration::from_millis(50), Duration::from_secs(5)),
            budget: Some(Budget::default()),
            deadline: None,
        }
    }
}

impl Config {
    /// Starts from the defaults.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder {
            config: Self::default(),
        }
    }

    /// Attempts in total, the first included.
    #[must_use]
    pub const fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The backoff between attempts.
    #[must_use]
    pub const fn backoff(&self) -> Backoff {
        self.backoff
    }

    /// The overall deadline, if any.
    #[must_use]
    pub const fn deadline(&self) -> Option<Duration> {
        self.deadline
    }
}

/// Builds a [`Config`]; see there for the defaults.
#[derive(Debug, Clone)]
#[must_use]
pub struct ConfigBuilder {
    config: Config,
}

impl ConfigBuilder {
    /// Attempts in total, the first included: 1 never retries. At most 100.
    pub const fn max_attempts(mut self, attempts: u32) -> Self {
        self.config.max_attempts = attempts;
        self
    }

    /// The wait before each retry. Its cap also bounds the server hints
    /// honoured: a `Retry-After` longer than the cap ends the retries.
    pub const fn backoff(mut self, backoff: Backoff) -> Self {
        self.config.backoff = backoff;
        self
    }

    /// The retry budget shared by every service the layer makes.
    pub const fn budget(mut self, budget: Budget) -> Self {
        self.config.budget = Some(budget);
        self
    }

    /// No retry budget: only the attempt count limits retries. Use it only
    /// where the dependency can take the full multiple of its load.
    pub const fn unlimited_retries(mut self) -> Self {
        self.config.budget = None;
        self
    }

    /// A total time budget for all attempts and the waits between them:
    /// no attempt starts that is not expected to finish in time (the last
    /// attempt's duration is the estimate), a hint longer than the time
    /// left ends the retries, and an attempt still running when it passes
    /// is abandoned with [`DeadlineExceeded`](crate::error::DeadlineExceeded).
    pub const fn deadline(mut self, deadline: Duration) -> Self {
        self.config.deadline = Some(deadline);
        self
    }

    /// Checks the settings.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the first setting out of range: attempts
    /// outside 1..=100, a backoff whose base exceeds its cap, a budget
    /// ratio outside 0.0..=10.0, more than 10^9 retries banked or a floor
    /// over 10^9 a second, or a zero deadline.
    pub fn build(self) -> Result<Config, ConfigError> {
        let config = self.config;
        if !(1..=MAX_ATTEMPTS).contains(&config.max_attempts) {
            return Err(config_error("max_attempts", "must be within 1..=100"));
        }
        match config.backoff {
            Backoff::FullJitter { base, cap } | Backoff::Decorrelated { base, cap }
                if base > cap =>
            {
                return Err(config_error("backoff", "base must not exceed cap"));
            }
            _ => {}
        }
        if let Some(budget) = &config.budget {
            budget.validate()?;
        }
        if config.deadline == Some(Duration::ZERO) {
            return Err(config_error("deadline", "must be longer than zero"));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_settings_are_named() {
        let ms = Duration::from_millis;
        let cases = [
            (Config::builder().max_attempts(0), "max_attempts"),
            (Config::builder().max_attempts(101), "max_attempts"),
            (
                Config::builder().backoff(Backoff::full_jitter(ms(10), ms(5))),
                "backoff",
            ),
            (Config::builder().budget(Budget::new(-1.0)), "budget ratio"),
            (Config::builder().deadline(Duration::ZERO), "deadline"),
        ];
        for (builder, setting) in cases {
            assert_eq!(builder.build().unwrap_err().setting(), setting);
        }
        assert!(Config::builder().max_attempts(1).build().is_ok());
    }
}
