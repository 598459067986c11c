//! How long to wait before each retry.

use std::time::Duration;

/// The wait before a retry, growing with the attempt and jittered so that
/// many clients retrying one failure spread out instead of arriving
/// together.
///
/// Every strategy is bounded: no delay is ever longer than its cap.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use palisade_retry::Backoff;
///
/// let backoff = Backoff::full_jitter(Duration::from_millis(50), Duration::from_secs(2));
/// let mut rng = fastrand::Rng::with_seed(7);
/// let first = backoff.delay(1, Duration::ZERO, &mut rng);
/// assert!(first <= Duration::from_millis(50));
/// let fifth = backoff.delay(5, first, &mut rng);
/// assert!(fifth <= Duration::from_millis(800));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backoff {
    /// Exponential with full jitter: retry `n` waits a uniformly random
    /// time in `[0, min(cap, base × 2^(n-1))]`.
    FullJitter {
        /// The ceiling of the first retry's wait.
        base: Duration,
        /// No wait is longer.
        cap: Duration,
    },
    /// Decorrelated jitter: each wait is uniformly random in
    /// `[base, 3 × previous wait]`, capped; it grows like the exponential
    /// one but each wait depends on the last rather than on the count.
    Decorrelated {
        /// The shortest wait, and the first retry's "previous" wait.
        base: Duration,
        /// No wait is longer.
        cap: Duration,
    },
    /// The same wait every time: predictable, for tests and demos. The wait
    /// is also its cap, so a server hint longer than it ends the retries.
    Constant(Duration),
}

impl Backoff {
    /// [`Backoff::FullJitter`].
    #[must_use]
    pub const fn full_jitter(base: Duration, cap: Duration) -> Self {
        Self::FullJitter { base, cap }
    }

    /// [`Backoff::Decorrelated`].
    #[must_use]
    pub const fn decorrelated(base: Duration, cap: Duration) -> Self {
        Self::Decorrelated { base, cap }
    }

    /// [`Backoff::Constant`].
    #[must_use]
    pub const fn constant(wait: Duration) -> Self {
        Self::Constant(wait)
    }

    /// The longest wait this backoff ever asks for.
    #[must_use]
    pub const fn cap(&self) -> Duration {
        match *self {
            Self::FullJitter { cap, .. } | Self::Decorrelated { cap, .. } => cap,
            Self::Constant(wait) => wait,
        }
    }

    /// The wait before retry number `retry` (1 for the first retry), given
    /// the wait before the previous one (`Duration::ZERO` for the first).
    #[must_use]
    pub fn delay(&self, retry: u32, previous: Duration, rng: &mut fastrand::Rng) -> Duration {
        match *self {
            Self::FullJitter { base, cap } => {
                let doublings = retry.saturating_sub(1).min(63);
                let ceiling = nanos(base).saturating_mul(1 << doublings).min(nanos(cap));
                Duration::from_nanos(rng.u64(0..=ceiling))
            }
            Self::Decorrelated { base, cap } => {
                let low = nanos(base).min(nanos(cap));
                let high = nanos(previous.max(base)).saturating_mul(3).max(low);
                Duration::from_nanos(rng.u64(low..=high).min(nanos(cap)))
            }
            Self::Constant(wait) => wait,
        }
    }
}

/// A duration in nanoseconds, saturating at about 584 years.
fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn full_jitter_ceilings_double_up_to_the_cap() {
        let backoff = Backoff::full_jitter(ms(100), ms(1000));
        let mut rng = fastrand::Rng::with_seed(1);
        for (retry, ceiling) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (60, 1000),
        ] {
            let mut longest = Duration::ZERO;
            for _ in 0..2000 {
                longest = longest.max(backoff.delay(retry, Duration::ZERO, &mut rng));
            }
            assert!(longest <= ms(ceiling), "retry {retry}: {longest:?}");
            // Uniform over [0, ceiling]: 2000 draws come within 2% of it.
            assert!(
                longest >= ms(ceiling * 98 / 100),
                "retry {retry}: {longest:?}"
            );
        }
    }

    #[test]
    fn decorrelated_stays_between_base_and_three_times_the_last() {
        let backoff = Backoff::decorrelated(ms(10), ms(5000));
        let mut rng = fastrand::Rng::with_seed(2);
        let mut previous = Duration::ZERO;
        for retry in 1..50 {
            let wait = backoff.delay(retry, previous, &mut rng);
            assert!(wait >= ms(10));
            assert!(wait <= (previous.max(ms(10)) * 3).min(ms(5000)));
            previous = wait;
        }
    }

    #[test]
    fn constant_is_constant() {
        let mut rng = fastrand::Rng::with_seed(3);
        let backoff = Backoff::constant(ms(25));
        assert_eq!(backoff.delay(1, Duration::ZERO, &mut rng), ms(25));
        assert_eq!(backoff.delay(9, ms(25), &mut rng), ms(25));
        assert_eq!(backoff.cap(), ms(25));
    }

    fn any_backoff() -> impl Strategy<Value = Backoff> {
        let d = (0u64..10_000_000_000).prop_map(Duration::from_nanos);
        prop_oneof![
            (d.clone(), d.clone()).prop_map(|(base, cap)| Backoff::full_jitter(base, cap)),
            (d.clone(), d.clone()).prop_map(|(base, cap)| Backoff::decorrelated(base, cap)),
            d.prop_map(Backoff::constant),
        ]
    }

    proptest! {
        #[test]
        fn never_exceeds_the_cap(
            backoff in any_backoff(),
            seed in any::<u64>(),
            retries in 1u32..200,
        ) {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut previous = Duration::ZERO;
            for retry in 1..=retries {
                let wait = backoff.delay(retry, previous, &mut rng);
                prop_assert!(wait <= backoff.cap(), "{wait:?} over {:?}", backoff.cap());
                previous = wait;
            }
        }
    }
}
