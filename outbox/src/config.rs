//! Where the outbox lives and how the relay works it.

use std::ops::Range;
use std::time::Duration;

use palisade_hints::DAY;

use crate::error::{ConfigError, config_error};

/// The largest batch a relay claims, or a consumer applies in one
/// transaction.
pub(crate) const MAX_BATCH: u32 = 100_000;

/// A consumer's batch within `1 ..= MAX_BATCH` (the batch's buffer is
/// made at once: `usize::MAX` overflowed it).
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) fn consumer_batch(messages: usize) -> usize {
    messages.clamp(1, MAX_BATCH as usize)
}

/// The outbox's table and the relay's pace.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use palisade_outbox::OutboxConfig;
///
/// let config = OutboxConfig::new("orders.outbox")?
///     .batch_size(200)
///     .max_attempts(10)
///     .lease(Duration::from_secs(30));
/// assert_eq!(config.table(), "orders.outbox");
/// # Ok::<(), palisade_outbox::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxConfig {
    pub(crate) table: String,
    pub(crate) batch_size: u32,
    pub(crate) lease: Duration,
    pub(crate) max_attempts: u32,
    pub(crate) backoff_base: Duration,
    pub(crate) backoff_cap: Duration,
    pub(crate) poll_interval: Duration,
    pub(crate) ordered: bool,
    pub(crate) retention: Duration,
    pub(crate) cleanup_batch: u32,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self::new("palisade_outbox").expect("a valid table name")
    }
}

impl OutboxConfig {
    /// The outbox in `table` (`name` or `schema.name`, lowercase letters,
    /// digits and `_`). Defaults: batches of 100, a 30 s lease, 10
    /// attempts with backoff from 100 ms to 5 min, a 1 s polling fallback,
    /// per-aggregate order, sent rows kept 1 h and deleted 1,000 at a time.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when `table` is not such an identifier.
    pub fn new(table: &str) -> Result<Self, ConfigError> {
        let valid = |part: &str| {
            !part.is_empty()
                && part.len() <= 63
                && part.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        let parts: Vec<&str> = table.split('.').collect();
        if parts.len() > 2 || !parts.iter().all(|part| valid(part)) {
            return Err(config_error(
                "table",
                "must be `name` or `schema.name` of [a-z0-9_], starting with a letter or `_`",
            ));
        }
        Ok(Self {
            table: table.to_owned(),
            batch_size: 100,
            lease: Duration::from_secs(30),
            max_attempts: 10,
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(300),
            poll_interval: Duration::from_secs(1),
            ordered: true,
            retention: Duration::from_secs(3600),
            cleanup_batch: 1000,
        })
    }

    /// Events claimed per batch, from 1 (none would never publish) to
    /// 100,000 (a relay makes room for a whole batch at once: `u32::MAX`
    /// asked for hundreds of gigabytes and aborted the process), a number
    /// outside taken as the nearer bound.
    #[must_use]
    pub const fn batch_size(mut self, events: u32) -> Self {
        self.batch_size = if events == 0 {
            1
        } else if events > MAX_BATCH {
            MAX_BATCH
        } else {
            events
        };
        self
    }

    /// How long a claim lasts: a relay that dies loses its claims after
    /// this long and another relay picks the events up. From a
    /// millisecond to a day, a `lease` outside taken as the nearer bound
    /// (`Duration::MAX` made no deadline: every batch panicked).
    #[must_use]
    pub const fn lease(mut self, lease: Duration) -> Self {
        self.lease = palisade_hints::bounded(lease, Duration::from_millis(1), DAY);
        self
    }

    /// Failed attempts after which an event is dead.
    #[must_use]
    pub const fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// The wait after the first failure, doubling up to `cap` (each a
    /// day at most: `Duration::MAX` overflowed the retry horizon and made
    /// an interval PostgreSQL refuses).
    #[must_use]
    pub const fn backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.backoff_base = palisade_hints::bounded(base, Duration::ZERO, DAY);
        self.backoff_cap = palisade_hints::bounded(cap, Duration::ZERO, DAY);
        self
    }

    /// How often the relay looks for work when nothing wakes it: from a
    /// millisecond to a day, an `interval` outside taken as the nearer
    /// bound (at zero, an idle relay claimed, and swept, back to back).
    #[must_use]
    pub const fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = palisade_hints::bounded(interval, Duration::from_millis(1), DAY);
        self
    }

    /// Whether events of one aggregate are published strictly in order
    /// (the default). When on, a dead event holds the later events of its
    /// aggregate until an operator requeues or deletes it.
    #[must_use]
    pub const fn ordered(mut self, ordered: bool) -> Self {
        self.ordered = ordered;
        self
    }

    /// How long sent rows are kept, and how many are deleted per
    /// statement when they go (at least 1): a relay deletes a batch when it
    /// starts and then every [`clean_up_every`](crate::Relay::clean_up_every)
    /// (a minute by default), and again at each of its turns while the
    /// batches it deletes are full. An age past a hundred years is taken
    /// as a hundred years (`Duration::MAX` keeps rows for good).
    #[must_use]
    pub const fn retention(mut self, age: Duration, batch: u32) -> Self {
        self.retention = age;
        self.cleanup_batch = if batch == 0 { 1 } else { batch };
        self
    }

    /// The table.
    #[must_use]
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The `NOTIFY` channel of the table's relays in PostgreSQL: its name
    /// with `_` for `.` (an identifier, so safe within a statement), made
    /// to fit PostgreSQL's 63 bytes.
    #[cfg(feature = "postgres")]
    pub(crate) fn notify_channel(&self) -> String {
        crate::sql::identifier(&format!("palisade_outbox_{}", self.table.replace('.', "_")))
    }

    /// The longest an event may wait between its first and last attempt:
    /// a broker's duplicate window must cover it.
    #[must_use]
    pub fn retry_horizon(&self) -> Duration {
        total_delay(0..u64::from(self.max_attempts), |attempt| {
            self.backoff_after(u32::try_from(attempt).unwrap_or(u32::MAX))
        })
        .saturating_add(self.lease)
    }

    /// The wait after failed attempt number `attempt` (0 for the first).
    #[must_use]
    pub fn backoff_after(&self, attempt: u32) -> Duration {
        self.backoff_base
            .saturating_mul(1 << attempt.min(30))
            .min(self.backoff_cap)
    }
}

/// The sum of `delay(attempt)` over `attempts`, where `delay` doubles at
/// most 30 times and so changes no more past the range's 32nd attempt: the
/// first 32 are added up and the rest multiplied, so a limit of
/// `u64::MAX` attempts (never give up) costs no more than 32. Added one by
/// one, such a limit never returned.
pub(crate) fn total_delay(attempts: Range<u64>, delay: impl Fn(u64) -> Duration) -> Duration {
    let stepped = attempts.start..attempts.end.min(attempts.start.saturating_add(32));
    let mut total = stepped
        .clone()
        .map(&delay)
        .fold(Duration::ZERO, Duration::saturating_add);
    let rest = attempts.end - stepped.end;
    if rest > 0 {
        let nanos = delay(stepped.end)
            .as_nanos()
            .saturating_mul(u128::from(rest));
        let whole = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX);
        // Below a second, so it fits.
        #[allow(clippy::cast_possible_truncation)]
        let part = (nanos % 1_000_000_000) as u32;
        total = total.saturating_add(Duration::new(whole, part));
    }
    total
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::OutboxConfig;

    /// A `Duration::MAX` backoff overflowed the horizon's sum (the
    /// publisher's `ensure_stream` asks for it, and panicked).
    #[test]
    fn an_unbounded_backoff_is_a_day_at_most() {
        let config = OutboxConfig::default()
            .max_attempts(3)
            .lease(Duration::from_secs(30))
            .backoff(Duration::MAX, Duration::MAX);
        assert_eq!(config.backoff_after(0), Duration::from_secs(86_400));
        assert_eq!(config.retry_horizon(), Duration::from_secs(3 * 86_400 + 30));
    }

    /// The horizon of any number of attempts is worked out at once, and
    /// is the sum of every backoff. `max_attempts(u32::MAX)` added four
    /// billion backoffs one by one (`ensure_stream` asks for it at start).
    #[test]
    fn the_horizon_of_any_number_of_attempts_is_their_backoffs_summed() {
        let config = |attempts| {
            OutboxConfig::default()
                .max_attempts(attempts)
                .lease(Duration::from_secs(30))
                .backoff(Duration::from_nanos(1), Duration::from_secs(1))
        };
        for attempts in [0, 1, 2, 31, 32, 33, 40, 1_000] {
            let config = config(attempts);
            let one_by_one = (0..attempts)
                .map(|attempt| config.backoff_after(attempt))
                .fold(Duration::from_secs(30), Duration::saturating_add);
            assert_eq!(config.retry_horizon(), one_by_one, "{attempts} attempts");
        }
        // 30 doublings of a nanosecond pass a second: past the first 31
        // attempts, each waits the cap.
        let most = config(u32::MAX).retry_horizon();
        assert!(
            most > Duration::from_secs(u64::from(u32::MAX) - 32),
            "{most:?}"
        );
        assert!(
            most < Duration::from_secs(u64::from(u32::MAX) + 31),
            "{most:?}"
        );
    }
}
