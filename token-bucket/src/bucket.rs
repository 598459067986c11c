//! The bucket, its decisions, and the arithmetic both stores share.
//!
//! A token bucket of `capacity` tokens refilled at `rate` tokens a second is
//! kept as one number, its *theoretical arrival time* (GCRA): the instant at
//! which the bucket would be full again. Taking `cost` tokens moves it
//! `cost` intervals later (an interval being the time one token takes to
//! refill); a request fits while that instant is at most `capacity`
//! intervals ahead of now. This is exactly a token bucket with continuous
//! refill, in one word of state, so one compare-and-swap (in process) or one
//! short Lua script (in Redis) decides.

use std::fmt;
use std::time::Duration;

use crate::error::{ConfigError, config_error};

/// The most tokens a bucket may hold.
pub const MAX_CAPACITY: u32 = 1_000_000_000;

/// A bucket's size and refill rate.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use palisade_token_bucket::Bucket;
///
/// // Bursts of up to 20 requests, 5 a second sustained.
/// let bucket = Bucket::new(20, 5.0)?;
/// assert_eq!(bucket.interval(), Duration::from_millis(200));
/// assert_eq!(bucket.refill_time(), Duration::from_secs(4));
/// # Ok::<(), palisade_token_bucket::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    capacity: u32,
    rate: f64,
    /// Nanoseconds one token takes to refill.
    interval_ns: u64,
}

/// The longest [`Bucket::tag`]: a `u32` capacity and a `u64` interval, in
/// digits, and their two separators.
pub(crate) const MAX_TAG_BYTES: usize = 10 + 1 + 20 + 1;

impl Bucket {
    /// A bucket of `capacity` tokens refilled at `per_second` tokens a
    /// second.
    ///
    /// A token's refill [`interval`](Self::interval) is a whole number of
    /// nanoseconds, rounded up, so a bucket never admits more than its
    /// rate; past ten million a second that rounding shows (7e8 a second
    /// refills one token every 2 ns: 5e8 a second).
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when the capacity is 0 or over [`MAX_CAPACITY`], the
    /// rate is not a finite number in `0.000001..=1e9` per second, or the
    /// bucket would take 292 years or more to fill (`capacity / rate`).
    pub fn new(capacity: u32, per_second: f64) -> Result<Self, ConfigError> {
        if capacity == 0 || capacity > MAX_CAPACITY {
            return Err(config_error("capacity", "must be within 1..=1e9"));
        }
        if !(1e-6..=1e9).contains(&per_second) {
            return Err(config_error("rate", "must be within 1e-6..=1e9 per second"));
        }
        // Rounded up, so rounding never admits more than the rate.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let interval_ns = (1e9 / per_second).ceil() as u64;
        // The time the bucket takes to fill, in nanoseconds, is what every
        // decision compares with, added to a store's clock: past half a
        // u64 (292 years) the sum could saturate, and admit everything.
        if interval_ns
            .checked_mul(u64::from(capacity))
            .is_none_or(|fill| fill > u64::MAX / 2)
        {
            return Err(config_error(
                "rate",
                "is too slow for the capacity: the bucket must fill in under 292 years",
            ));
        }
        Ok(Self {
            capacity,
            rate: per_second,
            interval_ns,
        })
    }

    /// `capacity` tokens refilled evenly over `period` (e.g. 100 per minute).
    ///
    /// # Errors
    ///
    /// As [`Bucket::new`], and when `period` is zero.
    pub fn per(capacity: u32, period: Duration) -> Result<Self, ConfigError> {
        if period.is_zero() {
            return Err(config_error("period", "must be longer than zero"));
        }
        Self::new(capacity, f64::from(capacity) / period.as_secs_f64())
    }

    /// What a layer puts before its keys: `<capacity>/<interval in ns>:`,
    /// the same for buckets that refill alike (capacity and interval) and
    /// apart for any two others (the first `:` ends it); at most
    /// [`MAX_TAG_BYTES`] long.
    pub(crate) fn tag(&self) -> String {
        use std::fmt::Write as _;
        let mut tag = String::with_capacity(MAX_TAG_BYTES);
        let _ = write!(tag, "{}/{}:", self.capacity, self.interval_ns);
        tag
    }

    /// The most tokens the bucket holds: the largest burst.
    #[must_use]
    pub const fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Tokens added per second.
    #[must_use]
    pub const fn rate(&self) -> f64 {
        self.rate
    }

    /// The time one token takes to refill.
    #[must_use]
    pub const fn interval(&self) -> Duration {
        Duration::from_nanos(self.interval_ns)
    }

    /// The time an empty bucket takes to fill.
    #[must_use]
    pub const fn refill_time(&self) -> Duration {
        Duration::from_nanos(self.tolerance_ns())
    }

    #[cfg(feature = "redis")]
    pub(crate) const fn interval_ns(&self) -> u64 {
        self.interval_ns
    }

    /// How far ahead of now the arrival time may be: `capacity` intervals.
    pub(crate) const fn tolerance_ns(&self) -> u64 {
        self.interval_ns.saturating_mul(self.capacity as u64)
    }

    /// Decides a request of `cost` tokens at `now` against the arrival time
    /// `tat` (both in nanoseconds from one origin). Returns the new arrival
    /// time when the request is admitted.
    #[inline]
    pub(crate) fn decide(&self, tat: u64, now: u64, cost: u32) -> (Option<u64>, Decision) {
        let tolerance = self.tolerance_ns();
        let start = tat.max(now);
        let new_tat = start.saturating_add(self.interval_ns.saturating_mul(u64::from(cost)));
        if new_tat - now <= tolerance {
            (Some(new_tat), self.decision(true, new_tat - now, 0))
        } else {
            let retry_after = if cost <= self.capacity {
                new_tat - now - tolerance
            } else {
                NEVER
            };
            (None, self.decision(false, start - now, retry_after))
        }
    }

    /// The decision when the arrival time is `ahead` nanoseconds ahead of
    /// now afterwards, and the request fits again after `retry_after_ns`
    /// ([`NEVER`]: it never does).
    pub(crate) const fn decision(
        &self,
        allowed: bool,
        ahead_ns: u64,
        retry_after_ns: u64,
    ) -> Decision {
        Decision {
            allowed,
            from_bucket: true,
            capacity: self.capacity,
            counted: COMPUTED,
            interval_ns: self.interval_ns,
            ahead_ns,
            retry_after_ns,
        }
    }
}

/// `Decision::retry_after_ns` of a request that never fits.
pub(crate) const NEVER: u64 = u64::MAX;

/// `Decision::counted` when the tokens left are computed from the arrival
/// time (no store counts as many: [`MAX_CAPACITY`] is less).
const COMPUTED: u32 = u32::MAX;

/// The answer to one request: admitted or not, and what the caller should
/// know to come back at the right time.
///
/// Small (40 bytes) and computed lazily: what is only read when asked for,
/// the tokens left, is worked out then, so a layer that only reads
/// [`is_allowed`](Self::is_allowed) pays for no division.
///
/// Two decisions are equal when every accessor says the same of them,
/// whether a store counted the tokens left (Redis) or they are worked out
/// when read (the local store).
#[derive(Debug, Clone, Copy)]
pub struct Decision {
    capacity: u32,
    /// Whole tokens left as a store counted them itself (Redis), or
    /// [`COMPUTED`].
    counted: u32,
    /// Nanoseconds one token takes to refill.
    interval_ns: u64,
    /// How far ahead of now the arrival time is afterwards: the time until
    /// the bucket is full again.
    ahead_ns: u64,
    /// For a denied request, the wait until it fits ([`NEVER`]: it never
    /// does); zero when admitted.
    retry_after_ns: u64,
    allowed: bool,
    /// Whether a bucket was consulted (false: a failure policy decided).
    from_bucket: bool,
}

impl Decision {
    /// A decision made without a bucket to consult, by a store that
    /// failed open or closed (as the Redis store's failure policy has it
    /// do): `remaining` and `reset` describe nothing (see
    /// [`Decision::is_from_bucket`]), and a denied request is told to come
    /// back after `retry_after` (an allowed one's wait is zero, whatever
    /// is passed).
    ///
    /// For a [`Store`](crate::Store) of your own, and for testing code
    /// that reads decisions.
    #[must_use]
    pub fn without_store(bucket: &Bucket, allowed: bool, retry_after: Duration) -> Self {
        Self {
            from_bucket: false,
            counted: bucket.capacity,
            ..bucket.decision(allowed, 0, wait(allowed, retry_after))
        }
    }

    /// A decision as a store counted it itself (as the Redis store does):
    /// whether the request is `allowed`, the whole tokens `remaining`
    /// after it (at most `bucket`'s capacity), for a denied request the
    /// wait until it would fit (`Duration::MAX`: it never will; taken as
    /// zero when allowed), and the time until the bucket is full again (at
    /// most its refill time).
    ///
    /// For a [`Store`](crate::Store) of your own, and for testing code
    /// that reads decisions.
    ///
    /// ```
    /// use std::time::Duration;
    /// use palisade_token_bucket::{Bucket, Decision};
    ///
    /// let bucket = Bucket::new(10, 5.0)?;
    /// let wait = Duration::from_millis(200);
    /// let denied = Decision::counted(&bucket, false, 0, wait, Duration::from_secs(2));
    /// assert!(!denied.is_allowed() && denied.is_from_bucket());
    /// assert_eq!((denied.retry_after(), denied.remaining()), (wait, 0));
    /// assert_eq!(denied.reset(), Duration::from_secs(2));
    ///
    /// // An allowed request waits for nothing; the bucket is full again
    /// // within its refill time.
    /// let allowed = Decision::counted(&bucket, true, 9, wait, Duration::from_secs(9));
    /// assert_eq!(allowed.retry_after(), Duration::ZERO);
    /// assert_eq!(allowed.reset(), bucket.refill_time());
    /// # Ok::<(), palisade_token_bucket::ConfigError>(())
    /// ```
    #[must_use]
    pub fn counted(
        bucket: &Bucket,
        allowed: bool,
        remaining: u32,
        retry_after: Duration,
        reset: Duration,
    ) -> Self {
        Self {
            counted: remaining.min(bucket.capacity),
            ..bucket.decision(
                allowed,
                nanos(reset.min(bucket.refill_time())),
                wait(allowed, retry_after),
            )
        }
    }

    /// The same decision with `remaining` tokens left (a lease's spare
    /// tokens counted besides what Redis holds).
    #[cfg(feature = "redis")]
    pub(crate) const fn counting(self, remaining: u32) -> Self {
        Self {
            counted: if remaining < self.capacity {
                remaining
            } else {
                self.capacity
            },
            ..self
        }
    }

    /// Whether the request is admitted.
    #[must_use]
    pub const fn is_allowed(&self) -> bool {
        self.allowed
    }

    /// Whether a bucket decided: `false` when a store's failure policy
    /// answered without one (Redis away under
    /// [`FailOpen`](crate::FailurePolicy::FailOpen) or
    /// [`FailClosed`](crate::FailurePolicy::FailClosed)); then
    /// [`remaining`](Self::remaining) and [`reset`](Self::reset) describe
    /// no bucket, and HTTP mode sends no RateLimit fields.
    #[must_use]
    pub const fn is_from_bucket(&self) -> bool {
        self.from_bucket
    }

    /// Whole tokens left after this decision.
    #[must_use]
    pub const fn remaining(&self) -> u32 {
        if self.counted != COMPUTED {
            return self.counted;
        }
        let tolerance = self.interval_ns.saturating_mul(self.capacity as u64);
        let free = tolerance.saturating_sub(self.ahead_ns) / self.interval_ns;
        // At most the capacity, itself a `u32`.
        #[allow(clippy::cast_possible_truncation)]
        let free = free as u32;
        free
    }

    /// For a denied request, how long until the same request would be
    /// admitted (`Duration::MAX` when its cost exceeds the capacity and it
    /// never will); zero when admitted.
    #[must_use]
    pub const fn retry_after(&self) -> Duration {
        if self.retry_after_ns == NEVER {
            Duration::MAX
        } else {
            Duration::from_nanos(self.retry_after_ns)
        }
    }

    /// How long until the bucket is full again.
    #[must_use]
    pub const fn reset(&self) -> Duration {
        Duration::from_nanos(self.ahead_ns)
    }

    /// The bucket's capacity.
    #[must_use]
    pub const fn capacity(&self) -> u32 {
        self.capacity
    }

    /// The time the bucket takes to fill from empty: the policy's window.
    #[must_use]
    pub const fn window(&self) -> Duration {
        Duration::from_nanos(self.interval_ns.saturating_mul(self.capacity as u64))
    }
}

impl PartialEq for Decision {
    fn eq(&self, other: &Self) -> bool {
        self.allowed == other.allowed
            && self.from_bucket == other.from_bucket
            && self.capacity == other.capacity
            && self.interval_ns == other.interval_ns
            && self.ahead_ns == other.ahead_ns
            && self.retry_after_ns == other.retry_after_ns
            && self.remaining() == other.remaining()
    }
}

impl Eq for Decision {}

/// `duration` in nanoseconds, saturating (585 years, which is never).
/// A decision's wait in nanoseconds: none for an allowed request.
fn wait(allowed: bool, retry_after: Duration) -> u64 {
    if allowed { 0 } else { nanos(retry_after) }
}

pub(crate) fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.allowed {
            write!(f, "allowed, {} left", self.remaining())
        } else {
            write!(
                f,
                "rate limited, retry after {} ms",
                self.retry_after().as_millis()
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_too_slow_to_fill_within_a_u64_of_nanoseconds_is_refused() {
        let error = Bucket::new(1_000_000, 1e-6).unwrap_err();
        assert_eq!(error.setting(), "rate");
        // One token every million seconds: 9,223 fill in under 292 years,
        // 9,224 do not.
        assert!(Bucket::new(9_224, 1e-6).is_err());
        let slow = Bucket::new(9_223, 1e-6).unwrap();
        // Decided late in a store's life (a century in): a full bucket's
        // worth, then none.
        let late = 100 * 365 * 86_400 * 1_000_000_000_u64;
        let (tat, first) = slow.decide(0, late, 9_223);
        assert!(first.is_allowed());
        let (_, second) = slow.decide(tat.unwrap(), late, 1);
        assert!(!second.is_allowed(), "a full bucket's worth, then none");
    }

    const SEC: u64 = 1_000_000_000;

    /// Equal decisions say the same through every accessor, whichever
    /// store worked them out.
    #[cfg(feature = "redis")]
    #[test]
    fn a_decision_a_store_counted_equals_the_same_decision_worked_out() {
        let bucket = Bucket::new(3, 2.0).unwrap();
        let (_, local) = bucket.decide(0, 0, 1);
        let counted = Decision::counted(&bucket, true, 2, Duration::ZERO, local.reset());
        assert_eq!(counted.remaining(), local.remaining());
        assert_eq!(counted, local);
        let fewer = Decision::counted(&bucket, true, 1, Duration::ZERO, local.reset());
        assert_ne!(fewer, local);
    }

    #[test]
    fn a_burst_of_capacity_then_one_per_interval() {
        let bucket = Bucket::new(3, 2.0).unwrap();
        let mut tat = 0;
        for left in [2, 1, 0] {
            let (next, decision) = bucket.decide(tat, 0, 1);
            assert!(decision.is_allowed());
            assert_eq!(decision.remaining(), left);
            tat = next.unwrap();
        }
        let (next, denied) = bucket.decide(tat, 0, 1);
        assert_eq!(next, None);
        assert_eq!(denied.retry_after(), Duration::from_millis(500));
        assert_eq!(denied.reset(), Duration::from_millis(1500));
        let (next, decision) = bucket.decide(tat, SEC / 2, 1);
        assert!(decision.is_allowed());
        assert_eq!(decision.remaining(), 0);
        assert_eq!(next, Some(tat + SEC / 2));
    }

    #[test]
    fn costs_take_several_tokens_and_can_never_exceed_the_capacity() {
        let bucket = Bucket::new(10, 10.0).unwrap();
        let (tat, decision) = bucket.decide(0, 0, 7);
        assert_eq!(decision.remaining(), 3);
        let (_, denied) = bucket.decide(tat.unwrap(), 0, 4);
        assert_eq!(denied.retry_after(), Duration::from_millis(100));
        let (_, never) = bucket.decide(0, 0, 11);
        assert!(!never.is_allowed());
        assert_eq!(never.retry_after(), Duration::MAX);
    }

    #[test]
    fn a_decision_is_small_and_counts_its_tokens_when_asked() {
        assert_eq!(size_of::<Decision>(), 40);
        let bucket = Bucket::new(1_000_000_000, 1e9).unwrap();
        let (_, decision) = bucket.decide(0, 0, 1);
        assert_eq!(decision.remaining(), 999_999_999);
        assert_eq!(decision.window(), Duration::from_secs(1));
    }

    #[test]
    fn bad_settings_are_named() {
        assert_eq!(Bucket::new(0, 1.0).unwrap_err().setting(), "capacity");
        assert_eq!(Bucket::new(1, 0.0).unwrap_err().setting(), "rate");
        assert_eq!(Bucket::new(1, f64::NAN).unwrap_err().setting(), "rate");
        assert_eq!(
            Bucket::per(1, Duration::ZERO).unwrap_err().setting(),
            "period"
        );
        assert_eq!(
            Bucket::per(100, Duration::from_secs(60))
                .unwrap()
                .interval(),
            Duration::from_millis(600)
        );
    }
}
