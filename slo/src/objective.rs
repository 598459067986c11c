//! What a service promises: the objective, and when its burn pages.

use std::time::Duration;

use crate::error::{ConfigError, config_error};

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3_600);
const DAY: Duration = Duration::from_secs(86_400);

/// A service level objective: the share of calls that must be good over a
/// rolling window, and optionally how fast a good call must be.
///
/// Its error budget is what the target leaves: 99.9% over 30 days allows
/// one bad call in a thousand over any 30 days. Burn-rate alerts say when
/// the budget goes faster than it may ([`BurnAlert`]); by default those of
/// the SRE workbook for a 30-day objective ([`BurnAlert::WORKBOOK`]).
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use palisade_slo::Objective;
///
/// // 99.5% of calls answered well, and within 500 ms, over 30 days.
/// let objective = Objective::new(0.995).latency(Duration::from_millis(500));
/// assert_eq!(objective.target(), 0.995);
/// assert_eq!(objective.window(), Duration::from_secs(30 * 86_400));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Objective {
    target: f64,
    window: Duration,
    latency: Option<Duration>,
    alerts: Vec<BurnAlert>,
}

impl Objective {
    /// `target` (say 0.999) of calls good over 30 days, with the
    /// workbook's burn-rate alerts.
    #[must_use]
    pub fn new(target: f64) -> Self {
        Self {
            target,
            window: 30 * DAY,
            latency: None,
            alerts: BurnAlert::WORKBOOK.to_vec(),
        }
    }

    /// The rolling window the target holds over (30 days by default).
    #[must_use]
    pub const fn over(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// A good call must also answer within `threshold`: a slower one is
    /// bad, however it ended.
    #[must_use]
    pub const fn latency(mut self, threshold: Duration) -> Self {
        self.latency = Some(threshold);
        self
    }

    /// The burn-rate alerts, in place of the workbook's.
    #[must_use]
    pub fn alerts(mut self, alerts: impl IntoIterator<Item = BurnAlert>) -> Self {
        self.alerts = alerts.into_iter().collect();
        self
    }

    /// The share of calls that must be good.
    #[must_use]
    pub const fn target(&self) -> f64 {
        self.target
    }

    /// The rolling window the target holds over.
    #[must_use]
    pub const fn window(&self) -> Duration {
        self.window
    }

    /// How fast a good call must answer, if the objective says.
    #[must_use]
    pub const fn latency_threshold(&self) -> Option<Duration> {
        self.latency
    }

    /// The burn-rate alerts.
    #[must_use]
    pub fn burn_alerts(&self) -> &[BurnAlert] {
        &self.alerts
    }

    /// The share of calls that may be bad: the budget, as a rate.
    ///
    /// `1 - target` to fifteen decimal places, where the target is `1`
    /// less that: the target's own `f64` error (up to 1.1e-16) comes
    /// through the subtraction whole (1 - 0.99 is
    /// 0.010000000000000009), which took a burn exactly at an alert's
    /// factor for one under it (9.999999999999991 against 10), and a
    /// budget spent exactly for one with a sliver left. A target within
    /// 1e-15 of 1 is left as it is.
    pub(crate) fn allowed_bad(&self) -> f64 {
        let exact = 1.0 - self.target;
        let decimal = (exact * 1e15).round() / 1e15;
        // The decimal share, where it is the one the target was written
        // from (0.99999999 is 1e-8 off by 5e-9 of itself).
        #[allow(clippy::float_cmp)]
        if 1.0 - decimal == self.target {
            decimal
        } else {
            exact
        }
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if !(self.target > 0.0 && self.target < 1.0) {
            return Err(config_error("target", "must be within (0, 1)"));
        }
        if self.window < MINUTE || self.window > 400 * DAY {
            return Err(config_error(
                "window",
                "must be between a minute and 400 days",
            ));
        }
        if self.latency.is_some_and(|threshold| threshold.is_zero()) {
            return Err(config_error("latency", "must be more than zero"));
        }
        for alert in &self.alerts {
            if !(alert.factor.is_finite() && alert.factor > 0.0) {
                return Err(config_error("alerts", "a factor must be more than zero"));
            }
            if alert.short < Duration::from_secs(10) || alert.short >= alert.long {
                return Err(config_error(
                    "alerts",
                    "a short window must be at least 10 s and shorter than its long one",
                ));
            }
            if alert.long > self.window {
                return Err(config_error(
                    "alerts",
                    "a long window must be within the objective's window",
                ));
            }
        }
        Ok(())
    }
}

/// How urgent a firing alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Someone should look within the day.
    Ticket,
    /// Someone should look now.
    Page,
}

impl Severity {
    /// Its name in logs and metrics: `ticket` or `page`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ticket => "ticket",
            Self::Page => "page",
        }
    }
}

/// A multiwindow burn-rate alert: it fires while the budget burns at
/// `factor` times the sustainable rate or faster over the long window, and
/// still does over the short one (so it stops soon after the burn does).
///
/// A burn rate of 1 spends the budget exactly over the objective's window;
/// 14.4 over an hour spends 2% of a 30-day budget in that hour.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use palisade_slo::{BurnAlert, Objective, Severity};
///
/// let minutes = |m: u64| Duration::from_secs(60 * m);
/// let objective = Objective::new(0.99).alerts([
///     BurnAlert::new(Severity::Page, 10.0, minutes(60), minutes(5)),
///     BurnAlert::new(Severity::Ticket, 2.0, minutes(24 * 60), minutes(120)),
/// ]);
/// assert_eq!(objective.burn_alerts().len(), 2);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BurnAlert {
    severity: Severity,
    factor: f64,
    long: Duration,
    short: Duration,
}

impl BurnAlert {
    /// The SRE workbook's alerts for a 30-day objective: page at 14.4×
    /// over an hour (confirmed over 5 minutes) and at 6× over 6 hours
    /// (confirmed over 30 minutes); a ticket at 1× over 3 days (confirmed
    /// over 6 hours).
    pub const WORKBOOK: [Self; 3] = [
        Self::new(Severity::Page, 14.4, HOUR, Duration::from_secs(5 * 60)),
        Self::new(
            Severity::Page,
            6.0,
            Duration::from_secs(6 * 3_600),
            Duration::from_secs(30 * 60),
        ),
        Self::new(
            Severity::Ticket,
            1.0,
            Duration::from_secs(3 * 86_400),
            Duration::from_secs(6 * 3_600),
        ),
    ];

    /// Fires at `severity` while the burn rate is at least `factor` over
    /// both `long` and `short`.
    #[must_use]
    pub const fn new(severity: Severity, factor: f64, long: Duration, short: Duration) -> Self {
        Self {
            severity,
            factor,
            long,
            short,
        }
    }

    /// How urgent it is.
    #[must_use]
    pub const fn severity(&self) -> Severity {
        self.severity
    }

    /// The burn rate it fires at.
    #[must_use]
    pub const fn factor(&self) -> f64 {
        self.factor
    }

    /// The window the burn is measured over.
    #[must_use]
    pub const fn long_window(&self) -> Duration {
        self.long
    }

    /// The window that confirms the burn goes on.
    #[must_use]
    pub const fn short_window(&self) -> Duration {
        self.short
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The allowed share is the decimal one the target was written from,
    /// however many nines (0.99999999's `1 - target` is 1e-8 off by 5e-9
    /// of itself), and what the subtraction gives where no decimal is.
    #[test]
    fn the_allowed_share_is_the_decimal_the_target_was_written_from() {
        for (target, allowed) in [
            (0.99, 0.01),
            (0.999, 0.001),
            (0.9999, 0.0001),
            (0.999_999_99, 1e-8),
            (0.999_999_999, 1e-9),
            (0.9, 0.1),
        ] {
            #[allow(clippy::float_cmp)]
            let exact = Objective::new(target).allowed_bad() == allowed;
            assert!(exact, "{target}: {}", Objective::new(target).allowed_bad());
        }
        let nearly_one = 1.0 - 5e-16;
        #[allow(clippy::float_cmp)]
        let kept = Objective::new(nearly_one).allowed_bad() == 1.0 - nearly_one;
        assert!(kept);
    }

    #[test]
    fn objectives_that_cannot_hold_are_refused() {
        assert!(Objective::new(0.999).validate().is_ok());
        let minutes = |m: u64| Duration::from_secs(60 * m);
        for (objective, setting) in [
            (Objective::new(1.0), "target"),
            (Objective::new(0.0), "target"),
            (Objective::new(f64::NAN), "target"),
            (Objective::new(0.9).over(Duration::from_secs(1)), "window"),
            (Objective::new(0.9).over(Duration::MAX), "window"),
            (Objective::new(0.9).latency(Duration::ZERO), "latency"),
            (
                Objective::new(0.9).alerts([BurnAlert::new(
                    Severity::Page,
                    0.0,
                    minutes(60),
                    minutes(5),
                )]),
                "alerts",
            ),
            (
                Objective::new(0.9).alerts([BurnAlert::new(
                    Severity::Page,
                    2.0,
                    minutes(5),
                    minutes(60),
                )]),
                "alerts",
            ),
            (
                Objective::new(0.9)
                    .over(minutes(60))
                    .alerts([BurnAlert::new(
                        Severity::Page,
                        2.0,
                        minutes(120),
                        minutes(5),
                    )]),
                "alerts",
            ),
        ] {
            let error = objective.validate().unwrap_err();
            assert_eq!(error.setting(), setting, "{error}");
        }
    }
}
