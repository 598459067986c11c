//! What makes a breaker open, how long it stays open, and how it probes.

use std::fmt;
use std::time::Duration;

use crate::error::{ConfigError, config_error};

/// The largest count-based window: counts are packed 21 bits each.
pub(crate) const MAX_WINDOW_CALLS: u32 = (1 << 21) - 1;
/// The most buckets a time-based window may have.
pub(crate) const MAX_BUCKETS: u32 = 600;

/// The sliding window the failure and slow-call rates are computed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlidingWindow {
    /// The last `n` calls, in a ring buffer.
    ///
    /// Exact while the ring fills, and for one thread (one turning among
    /// many breakers too, unless six or more of their windows share one
    /// of the thread's 16 batch slots). Once it is full, a thread that
    /// keeps calling the breaker reserves its next positions in the ring
    /// in batches (up to a quarter of a ring of 32 calls or more, at most
    /// 64), so threads sharing it write no common cache line per call; a
    /// position reserved and not yet used still holds an older call (a
    /// lap before, or more for a thread that paused or turned to other
    /// breakers meanwhile).
    Count(u32),
    /// The calls of the last `duration`, in `buckets` buckets of equal
    /// length that expire whole: the window reaches back between
    /// `duration` less a bucket and `duration`. A bucket lasts a whole
    /// number of milliseconds, rounded up; when that makes fewer buckets
    /// enough, only those count.
    Time {
        /// How far back the window reaches.
        duration: Duration,
        /// How many buckets it is cut into.
        buckets: u32,
    },
}

/// A breaker's configuration, built with [`Config::builder`].
///
/// The defaults are the classic ones: open when at least half of the last
/// 20 calls failed, stay open 30 seconds (with 10% jitter), then let one
/// probe through.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use palisade_circuit_breaker::{Config, SlidingWindow};
///
/// let config = Config::builder()
///     .sliding_window(SlidingWindow::Time { duration: Duration::from_secs(10), buckets: 10 })
///     .minimum_calls(50)
///     .failure_rate_threshold(0.25)
///     .slow_calls(Duration::from_secs(2), 0.5)
///     .open_duration(Duration::from_secs(5))
///     .open_backoff(2.0, Duration::from_secs(120))
///     .half_open_permits(3)
///     .build()?;
/// assert_eq!(config.half_open_permits(), 3);
/// # Ok::<(), palisade_circuit_breaker::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub(crate) window: SlidingWindow,
    pub(crate) minimum_calls: u32,
    pub(crate) failure_rate_threshold: f64,
    pub(crate) slow_call: Option<(Duration, f64)>,
    pub(crate) open_duration: Duration,
    pub(crate) backoff: Option<(f64, Duration)>,
    pub(crate) max_open_duration: Duration,
    pub(crate) jitter: f64,
    pub(crate) half_open_permits: u8,
    pub(crate) half_open_successes: u8,
    pub(crate) half_open_max_wait: Duration,
}

impl Config {
    /// Starts from the defaults.
    #[must_use]
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder {
            config: Self::default_unchecked(),
            successes_set: false,
        }
    }

    const fn default_unchecked() -> Self {
        Self {
            window: SlidingWindow::Count(20),
            minimum_calls: 20,
            failure_rate_threshold: 0.5,
            slow_call: None,
            open_duration: Duration::from_secs(30),
            backoff: None,
            max_open_duration: Duration::from_secs(300),
            jitter: 0.1,
            half_open_permits: 1,
            half_open_successes: 1,
            half_open_max_wait: Duration::from_secs(60),
        }
    }

    /// The sliding window.
    #[must_use]
    pub const fn sliding_window(&self) -> SlidingWindow {
        self.window
    }

    /// Calls needed in the window before a rate can open the breaker.
    #[must_use]
    pub const fn minimum_calls(&self) -> u32 {
        self.minimum_calls
    }

    /// The failure rate (0 to 1) at or above which the breaker opens.
    #[must_use]
    pub const fn failure_rate_threshold(&self) -> f64 {
        self.failure_rate_threshold
    }

    /// The slow-call duration and rate, when slow calls count.
    #[must_use]
    pub const fn slow_calls(&self) -> Option<(Duration, f64)> {
        self.slow_call
    }

    /// How long the breaker stays open the first time.
    #[must_use]
    pub const fn open_duration(&self) -> Duration {
        self.open_duration
    }

    /// The longest the breaker stays open, whatever a hint or the backoff
    /// asks.
    #[must_use]
    pub const fn max_open_duration(&self) -> Duration {
        self.max_open_duration
    }

    /// The fraction by which the open duration varies.
    #[must_use]
    pub const fn jitter(&self) -> f64 {
        self.jitter
    }

    /// Probe calls admitted at a time while half-open.
    #[must_use]
    pub const fn half_open_permits(&self) -> u8 {
        self.half_open_permits
    }

    /// Successful probes needed to close.
    #[must_use]
    pub const fn half_open_successes(&self) -> u8 {
        self.half_open_successes
    }

    /// How long a probe may run before it counts as failed.
    #[must_use]
    pub const fn half_open_max_wait(&self) -> Duration {
        self.half_open_max_wait
    }

    /// [`half_open_max_wait`](Self::half_open_max_wait) as the breaker
    /// counts it: whole milliseconds, rounded up.
    pub(crate) fn half_open_max_wait_ms(&self) -> u64 {
        let wait = self.half_open_max_wait;
        u64::try_from(wait.as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(u64::from(!wait.subsec_nanos().is_multiple_of(1_000_000)))
    }

    /// The open duration after `reopens` consecutive re-openings, before
    /// jitter, in milliseconds: grows by the backoff factor, capped.
    fn base_open_ms(&self, reopens: u32) -> f64 {
        let open = millis(self.open_duration);
        let Some((factor, cap)) = self.backoff else {
            return open;
        };
        let exponent = i32::try_from(reopens.min(64)).unwrap_or(64);
        // An overflow to infinity is capped like any large value.
        (open * factor.powi(exponent)).min(millis(cap))
    }

    /// How long to stay open, in whole milliseconds, after `reopens`
    /// consecutive re-openings, given the dependency's `hint` and `unit`,
    /// a uniform random number in [0, 1).
    ///
    /// The backoff's duration is the floor, varied by up to the jitter
    /// either way. A hint longer than the floor replaces it and is varied
    /// upwards only (it is the dependency's minimum), up to
    /// `max_open_duration`; a shorter one (a `Retry-After: 0`, a date in
    /// the past) changes nothing. A time at or past `max_open_duration`
    /// is drawn below it instead, so instances capped by a hint as long
    /// as the cap or longer are jittered too. (A hint just under the cap
    /// has only the room up to the cap: the dependency's minimum comes
    /// first.) No setting or hint overflows: the arithmetic
    /// is in `f64` and saturates.
    pub(crate) fn open_ms(&self, reopens: u32, hint: Option<Duration>, unit: f64) -> u64 {
        let floor = self.base_open_ms(reopens);
        let max = millis(self.max_open_duration);
        let jitter = self.jitter;
        let ms = match hint.map(millis).filter(|&hint| hint > floor) {
            // Between the hint and its jittered length or the cap,
            // whichever is shorter: never under the dependency's minimum.
            Some(hint) if hint < max => hint + (max.min(hint * (1.0 + jitter)) - hint) * unit,
            Some(_) => max * (1.0 - jitter * unit),
            None => {
                let jittered = floor * (1.0 + jitter * (2.0 * unit - 1.0));
                if jittered <= max {
                    jittered
                } else {
                    max * (1.0 - jitter * unit)
                }
            }
        };
        // Rounded up: a breaker never half-opens before its time, and
        // stays open at least 1 ms. `as` saturates.
        (ms.ceil() as u64).max(1)
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::default_unchecked()
    }
}

/// Builds a [`Config`]; [`build`](Self::build) checks it.
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    config: Config,
    successes_set: bool,
}

impl ConfigBuilder {
    /// The sliding window (default: the last 20 calls).
    #[must_use]
    pub const fn sliding_window(mut self, window: SlidingWindow) -> Self {
        self.config.window = window;
        self
    }

    /// Calls the window must hold before a rate may open the breaker
    /// (default 20).
    #[must_use]
    pub const fn minimum_calls(mut self, calls: u32) -> Self {
        self.config.minimum_calls = calls;
        self
    }

    /// The failure rate, from 0 (exclusive) to 1, at or above which the
    /// breaker opens (default 0.5).
    #[must_use]
    pub const fn failure_rate_threshold(mut self, rate: f64) -> Self {
        self.config.failure_rate_threshold = rate;
        self
    }

    /// Counts calls slower than `duration` (positive) as slow, whatever
    /// their result, and opens when their rate reaches `rate` (off by
    /// default). A slow probe counts as failed.
    #[must_use]
    pub const fn slow_calls(mut self, duration: Duration, rate: f64) -> Self {
        self.config.slow_call = Some((duration, rate));
        self
    }

    /// How long the breaker stays open (default 30 s).
    #[must_use]
    pub const fn open_duration(mut self, duration: Duration) -> Self {
        self.config.open_duration = duration;
        self
    }

    /// Multiplies the open duration by `factor` at each consecutive
    /// re-opening from half-open, up to `cap` (off by default).
    #[must_use]
    pub const fn open_backoff(mut self, factor: f64, cap: Duration) -> Self {
        self.config.backoff = Some((factor, cap));
        self
    }

    /// The longest the breaker stays open, whatever a `Retry-After` hint or
    /// the backoff asks (default 5 minutes).
    #[must_use]
    pub const fn max_open_duration(mut self, duration: Duration) -> Self {
        self.config.max_open_duration = duration;
        self
    }

    /// The open duration varies by up to this fraction either way (default
    /// 0.1), so a fleet of instances does not half-open in lockstep. 0
    /// makes it exact, for tests.
    #[must_use]
    pub const fn jitter(mut self, fraction: f64) -> Self {
        self.config.jitter = fraction;
        self
    }

    /// Probe calls admitted at a time while half-open (default 1). A probe
    /// cancelled without an outcome frees its slot for another caller, so a
    /// cycle may see more probes than this, never more at once.
    #[must_use]
    pub const fn half_open_permits(mut self, permits: u8) -> Self {
        self.config.half_open_permits = permits;
        self
    }

    /// Successful probes needed to close (default: as many as permits).
    #[must_use]
    pub const fn half_open_successes(mut self, successes: u8) -> Self {
        self.config.half_open_successes = successes;
        self.successes_set = true;
        self
    }

    /// How long a probe may run before it counts as failed (default 60 s;
    /// counted in whole milliseconds, rounded up):
    /// once the oldest probe still running has run this long, the next
    /// caller that finds every probe slot taken re-opens the breaker, as
    /// does a probe cut short (dropped by a timeout above the breaker)
    /// after this long.
    #[must_use]
    pub const fn half_open_max_wait(mut self, wait: Duration) -> Self {
        self.config.half_open_max_wait = wait;
        self
    }

    /// Checks the configuration.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the first setting out of range.
    pub fn build(self) -> Result<Config, ConfigError> {
        let mut config = self.config;
        if !self.successes_set {
            config.half_open_successes = config.half_open_permits;
        }
        let rate_ok = |rate: f64| rate > 0.0 && rate <= 1.0;
        match config.window {
            SlidingWindow::Count(n) if n == 0 || n > MAX_WINDOW_CALLS => {
                return Err(config_error("sliding_window", "count must be 1 to 2097151"));
            }
            SlidingWindow::Time { duration, buckets } => {
                if buckets == 0 || buckets > MAX_BUCKETS {
                    return Err(config_error("sliding_window", "buckets must be 1 to 600"));
                }
                if duration.as_millis() < u128::from(buckets) {
                    return Err(config_error(
                        "sliding_window",
                        "each bucket must last at least 1 ms",
                    ));
                }
            }
            SlidingWindow::Count(_) => {}
        }
        if config.minimum_calls == 0 {
            return Err(config_error("minimum_calls", "must be at least 1"));
        }
        if let SlidingWindow::Count(n) = config.window
            && config.minimum_calls > n
        {
            return Err(config_error(
                "minimum_calls",
                "cannot exceed the count-based window's size",
            ));
        }
        if !rate_ok(config.failure_rate_threshold) {
            return Err(config_error("failure_rate_threshold", "must be in (0, 1]"));
        }
        if let Some((duration, rate)) = config.slow_call {
            if !rate_ok(rate) {
                return Err(config_error("slow_calls", "rate must be in (0, 1]"));
            }
            // Every call would be slow: the breaker would open at its
            // minimum calls and every probe fail, for good.
            if duration.is_zero() {
                return Err(config_error("slow_calls", "duration must be positive"));
            }
        }
        if config.open_duration.is_zero() {
            return Err(config_error("open_duration", "must be positive"));
        }
        if config.max_open_duration < config.open_duration {
            return Err(config_error(
                "max_open_duration",
                "must be at least open_duration",
            ));
        }
        if let Some((factor, cap)) = config.backoff {
            if !(factor.is_finite() && factor >= 1.0) {
                return Err(config_error("open_backoff", "factor must be at least 1"));
            }
            if cap < config.open_duration {
                return Err(config_error(
                    "open_backoff",
                    "cap must be at least open_duration",
                ));
            }
        }
        if !(0.0..1.0).contains(&config.jitter) {
            return Err(config_error("jitter", "must be in [0, 1)"));
        }
        if config.half_open_permits == 0 {
            return Err(config_error("half_open_permits", "must be at least 1"));
        }
        if config.half_open_successes == 0 || config.half_open_successes > config.half_open_permits
        {
            return Err(config_error(
                "half_open_successes",
                "must be 1 to half_open_permits",
            ));
        }
        if config.half_open_max_wait.is_zero() {
            return Err(config_error("half_open_max_wait", "must be positive"));
        }
        Ok(config)
    }
}

/// `duration` in milliseconds, exactly for whole milliseconds.
fn millis(duration: Duration) -> f64 {
    duration.as_nanos() as f64 / 1e6
}

impl fmt::Display for SlidingWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Count(n) => write!(f, "last {n} calls"),
            Self::Time { duration, buckets } => {
                write!(f, "last {duration:?} in {buckets} buckets")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_ms_keeps_the_floor_and_the_jitter() {
        let config = Config::builder()
            .open_duration(Duration::from_secs(10))
            .max_open_duration(Duration::from_secs(20))
            .jitter(0.5)
            .build()
            .unwrap();
        let hint = |secs| Some(Duration::from_secs(secs));
        // The floor, jittered either way.
        assert_eq!(config.open_ms(0, None, 0.0), 5_000);
        assert_eq!(config.open_ms(0, None, 0.5), 10_000);
        assert_eq!(config.open_ms(0, hint(0), 0.5), 10_000);
        // A longer hint, jittered upwards, capped with jitter below the cap.
        assert_eq!(config.open_ms(0, hint(12), 0.0), 12_000);
        assert_eq!(config.open_ms(0, hint(12), 0.5), 15_000);
        assert_eq!(config.open_ms(0, hint(12), 0.9), 17_400);
        assert_eq!(config.open_ms(0, hint(100), 0.0), 20_000);
        assert_eq!(config.open_ms(0, hint(100), 0.5), 15_000);
        // A hint under the cap whose jitter would pass it stays between
        // the two: it was drawn below the cap, under the hint (14 s).
        assert_eq!(config.open_ms(0, hint(18), 0.0), 18_000);
        assert_eq!(config.open_ms(0, hint(18), 0.5), 19_000);
        assert_eq!(config.open_ms(0, hint(18), 0.6), 19_200);
        // A hint as long as the cap is jittered below it, as a longer one.
        assert_eq!(config.open_ms(0, hint(20), 0.5), 15_000);
        // Whatever the numbers, no overflow and at least 1 ms.
        let extreme = Config::builder()
            .open_duration(Duration::from_nanos(1))
            .max_open_duration(Duration::MAX)
            .open_backoff(f64::MAX, Duration::MAX)
            .build()
            .unwrap();
        assert_eq!(extreme.open_ms(0, None, 0.5), 1);
        let longest = extreme.open_ms(64, Some(Duration::MAX), 0.99);
        assert!(longest >= 1);
        assert!(u128::from(longest) <= Duration::MAX.as_millis());
    }

    /// A half-open wait is counted in whole milliseconds, rounded up. Cut
    /// down, one under a millisecond was none (the next caller failed the
    /// probe under way, and the breaker opened again), and 1.9 ms was 1.
    #[test]
    fn a_half_open_wait_counts_in_whole_milliseconds_rounded_up() {
        for (wait, counted) in [
            (1, 1),
            (999, 1),
            (1_000, 1),
            (1_900, 2),
            (60_000_000, 60_000),
        ] {
            let config = Config::builder()
                .half_open_max_wait(Duration::from_micros(wait))
                .build()
                .unwrap();
            assert_eq!(config.half_open_max_wait_ms(), counted, "{wait} µs");
        }
    }

    /// A zero slow-call duration made every call slow: the breaker opened
    /// at its minimum calls and every probe failed, for good.
    #[test]
    fn a_zero_slow_call_duration_is_refused() {
        let refused = Config::builder()
            .slow_calls(Duration::ZERO, 0.5)
            .build()
            .unwrap_err();
        assert!(refused.to_string().contains("slow_calls"), "{refused}");
        assert!(
            Config::builder()
                .slow_calls(Duration::from_nanos(1), 0.5)
                .build()
                .is_ok()
        );
    }
}
