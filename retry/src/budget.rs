//! The retry budget: retries may add only a fraction to the traffic a
//! dependency sees, however badly it fails.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use tokio::time::Instant;

use crate::error::{ConfigError, config_error};

/// One retry, in the budget's fixed-point unit (millionths of a retry:
/// thousandths earned nothing below a ratio of 0.0005, and rounded 0.0015 up
/// by a third).
const RETRY: i64 = 1_000_000;

/// The settings of a retry budget; [`RetryBudget`] is the live account.
///
/// Every request deposits `ratio` of a retry; every retry withdraws a whole
/// one (when it is decided, before its wait; given back if it is never
/// made: its call dropped or cut by its deadline before the attempt, its
/// request not made again, its service failing to get ready; or if a
/// palisade layer below refused the attempt, which never reached the
/// dependency). While the dependency fails every call, retries therefore add at
/// most `ratio` to its traffic (0.2 by default: 1.2× the normal load), plus
/// the floor of `min_per_second` retries each second that keeps a quiet
/// service able to retry at all, plus at most `max_banked` retries saved up
/// in healthy times.
///
/// # Example
///
/// ```
/// use palisade_retry::Budget;
///
/// let budget = Budget::new(0.1).min_per_second(5).max_banked(50);
/// assert_eq!(budget.ratio_of_traffic(), 0.1);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    ratio: f64,
    min_per_second: u32,
    max_banked: u32,
}

impl Default for Budget {
    /// 20% of the request rate, a floor of 10 retries a second, and at most
    /// 100 retries banked.
    fn default() -> Self {
        Self::new(0.2)
    }
}

impl Budget {
    /// Retries may add `ratio` to the request rate (0.2 = 20%); with a
    /// floor of 10 a second and 100 banked until changed.
    #[must_use]
    pub const fn new(ratio: f64) -> Self {
        Self {
            ratio,
            min_per_second: 10,
            max_banked: 100,
        }
    }

    /// Retries allowed each second whatever the traffic (a burst of up to
    /// this many at once).
    #[must_use]
    pub const fn min_per_second(mut self, retries: u32) -> Self {
        self.min_per_second = retries;
        self
    }

    /// The most retries the deposits of healthy traffic can save up; at
    /// least one, the retry the ratio is earning (at zero, the ratio
    /// granted none: only the floor retried).
    #[must_use]
    pub const fn max_banked(mut self, retries: u32) -> Self {
        self.max_banked = retries;
        self
    }

    /// The fraction retries may add to the request rate.
    #[must_use]
    pub const fn ratio_of_traffic(&self) -> f64 {
        self.ratio
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=10.0).contains(&self.ratio) {
            return Err(config_error("budget ratio", "must be within 0.0..=10.0"));
        }
        if self.max_banked > 1_000_000_000 {
            return Err(config_error("budget max_banked", "must be at most 10^9"));
        }
        // The floor is kept as nanoseconds between its retries: a faster
        // one would be a gap of zero, which means no floor at all.
        if self.min_per_second > 1_000_000_000 {
            return Err(config_error(
                "budget min_per_second",
                "must be at most 10^9",
            ));
        }
        Ok(())
    }
}

/// Where a retry taken from a [`RetryBudget`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Withdrawal {
    /// The balance that requests deposit into.
    Banked,
    /// The floor of retries each second: the floor's arrival time the
    /// withdrawal moved it to (ns since the account's origin).
    Floor { until: u64 },
}

/// A live retry budget, shared by every clone of the layer that made it
/// (cloning shares the account).
///
/// Lock-free: a deposit is one compare-and-swap on the balance and reads no
/// clock; a withdrawal tries the balance, then the per-second floor.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    account: Arc<Account>,
}

#[derive(Debug)]
struct Account {
    /// Banked retries, in millionths.
    balance: AtomicI64,
    /// What one request deposits, in millionths of a retry.
    deposit: i64,
    /// The most the balance may hold, in millionths.
    ceiling: i64,
    /// The floor as a GCRA: the theoretical arrival time of the next floor
    /// retry, in nanoseconds since `origin`.
    floor_tat: AtomicU64,
    /// Nanoseconds between floor retries; 0 when there is no floor.
    floor_interval: u64,
    /// How far ahead of now the floor's arrival time may run (its burst).
    floor_burst: u64,
    origin: Instant,
}

impl RetryBudget {
    /// A fresh account with nothing banked.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when the ratio is outside `0.0..=10.0`, more than
    /// 10^9 retries could be banked, or the floor is over 10^9 a second.
    pub fn new(budget: Budget) -> Result<Self, ConfigError> {
        budget.validate()?;
        Ok(Self::from_valid(budget))
    }

    /// An account for settings already validated.
    pub(crate) fn from_valid(budget: Budget) -> Self {
        // Rounded to millionths of a retry; the ratio is validated finite.
        #[allow(clippy::cast_possible_truncation)]
        let deposit = (budget.ratio * RETRY as f64).round() as i64;
        let floor_interval = match budget.min_per_second {
            0 => 0,
            n => 1_000_000_000 / u64::from(n),
        };
        Self {
            account: Arc::new(Account {
                balance: AtomicI64::new(0),
                deposit,
                ceiling: i64::from(budget.max_banked.max(1)) * RETRY,
                floor_tat: AtomicU64::new(0),
                floor_interval,
                floor_burst: floor_interval * u64::from(budget.min_per_second.saturating_sub(1)),
                origin: Instant::now(),
            }),
        }
    }

    /// Records one request: it earns `ratio` of a retry.
    // Inlined into the layer's call, compiled in the user's crate: a full
    // account (the steady state) costs one load there.
    #[inline]
    pub fn deposit(&self) {
        let account = &*self.account;
        let mut balance = account.balance.load(Ordering::Relaxed);
        while balance < account.ceiling {
            let next = (balance + account.deposit).min(account.ceiling);
            match account.balance.compare_exchange_weak(
                balance,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(actual) => balance = actual,
            }
        }
    }

    /// Takes one retry from the account; `false` when the budget is spent.
    #[must_use]
    pub fn withdraw(&self, now: Instant) -> bool {
        self.take(now).is_some()
    }

    /// Takes one retry from the account, saying from where; `None` when
    /// the budget is spent.
    pub(crate) fn take(&self, now: Instant) -> Option<Withdrawal> {
        if self.withdraw_banked() {
            Some(Withdrawal::Banked)
        } else {
            self.withdraw_floor(now)
                .map(|until| Withdrawal::Floor { until })
        }
    }

    /// Gives back, at `now`, a retry taken and never made (its call was
    /// dropped in the wait, or its request could not be made again), or
    /// made and refused below before it reached the dependency: a
    /// banked one to the balance, up to its ceiling; one of the floor by
    /// moving the floor's next arrival back by its interval, unless the
    /// time it had reserved has passed (the floor has refilled it since:
    /// giving it back too would let more than the floor's burst through at
    /// once).
    pub(crate) fn give_back(&self, withdrawal: Withdrawal, now: Instant) {
        let account = &*self.account;
        match withdrawal {
            Withdrawal::Banked => {
                let _ =
                    account
                        .balance
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |balance| {
                            Some((balance + RETRY).min(account.ceiling))
                        });
            }
            Withdrawal::Floor { until } => {
                if self.nanos(now) >= until {
                    return;
                }
                let _ =
                    account
                        .floor_tat
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                            Some(tat.saturating_sub(account.floor_interval))
                        });
            }
        }
    }

    fn withdraw_banked(&self) -> bool {
        self.account
            .balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |balance| {
                (balance >= RETRY).then_some(balance - RETRY)
            })
            .is_ok()
    }

    /// Takes a retry from the floor: the floor's arrival time it moved
    /// to, or `None` when the floor is spent.
    fn withdraw_floor(&self, now: Instant) -> Option<u64> {
        let account = &*self.account;
        if account.floor_interval == 0 {
            return None;
        }
        let now = self.nanos(now);
        account
            .floor_tat
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                let tat = tat.max(now);
                (tat - now <= account.floor_burst).then(|| tat + account.floor_interval)
            })
            .ok()
            .map(|tat| tat.max(now) + account.floor_interval)
    }

    /// `now` in nanoseconds since the account's origin.
    fn nanos(&self, now: Instant) -> u64 {
        u64::try_from(
            now.saturating_duration_since(self.account.origin)
                .as_nanos(),
        )
        .unwrap_or(u64::MAX)
    }

    /// Whole retries banked now (the floor not included).
    #[must_use]
    pub fn banked(&self) -> u32 {
        let balance = self.account.balance.load(Ordering::Relaxed) / RETRY;
        u32::try_from(balance).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    #[test]
    fn retries_are_a_fraction_of_requests() {
        let budget = RetryBudget::new(Budget::new(0.2).min_per_second(0)).unwrap();
        let now = Instant::now();
        let mut retries = 0;
        for _ in 0..10_000 {
            budget.deposit();
            if budget.withdraw(now) {
                retries += 1;
            }
        }
        assert_eq!(retries, 2000);
    }

    /// A small ratio earns its share of retries, and an odd one its own
    /// share. Counted in thousandths, 0.0004 earned nothing (rounded to
    /// 0) and 0.0015 earned 0.002.
    #[test]
    fn small_ratios_earn_their_own_share() {
        for (ratio, earned) in [(0.0004, 4), (0.0015, 15), (0.000_001, 0)] {
            let budget = RetryBudget::new(Budget::new(ratio).min_per_second(0)).unwrap();
            let now = Instant::now();
            let mut retries = 0;
            for _ in 0..10_000 {
                budget.deposit();
                if budget.withdraw(now) {
                    retries += 1;
                }
            }
            assert_eq!(retries, earned, "{ratio}");
        }
    }

    /// Nothing to save up is not nothing to earn: a budget banking no
    /// retry still grants the ratio's (it granted none, and with no floor
    /// never retried).
    #[test]
    fn a_budget_banking_nothing_still_grants_the_ratio() {
        let budget = RetryBudget::new(Budget::new(0.5).min_per_second(0).max_banked(0)).unwrap();
        let now = Instant::now();
        let mut retries = 0;
        for _ in 0..10 {
            budget.deposit();
            if budget.withdraw(now) {
                retries += 1;
            }
        }
        assert_eq!(retries, 5);
    }

    #[test]
    fn the_balance_is_capped() {
        let budget = RetryBudget::new(Budget::new(0.5).min_per_second(0).max_banked(3)).unwrap();
        for _ in 0..1000 {
            budget.deposit();
        }
        assert_eq!(budget.banked(), 3);
        let now = Instant::now();
        assert!((0..3).all(|_| budget.withdraw(now)));
        assert!(!budget.withdraw(now));
    }

    #[test]
    fn the_floor_refills_each_second() {
        let budget = RetryBudget::new(Budget::new(0.0).min_per_second(4)).unwrap();
        let start = Instant::now();
        let granted = (0..10).filter(|_| budget.withdraw(start)).count();
        assert_eq!(granted, 4, "a burst of one second's floor");
        let later = start + Duration::from_millis(250);
        assert!(budget.withdraw(later));
        assert!(!budget.withdraw(later));
        let much_later = start + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| budget.withdraw(much_later)).count(), 4);
    }

    #[test]
    fn bad_ratios_are_refused() {
        for ratio in [-0.1, 10.5, f64::NAN, f64::INFINITY] {
            let err = RetryBudget::new(Budget::new(ratio)).unwrap_err();
            assert_eq!(err.setting(), "budget ratio");
        }
    }

    #[test]
    fn a_floor_retry_given_back_after_its_time_gives_nothing_more() {
        let budget = RetryBudget::new(Budget::new(0.0).min_per_second(1).max_banked(0)).unwrap();
        let start = Instant::now();
        // Given back within its second: the next is granted at once.
        let early = budget.take(start).expect("the floor's first");
        let half = start + Duration::from_millis(500);
        budget.give_back(early, half);
        let kept = budget.take(half).expect("given back in time");
        // At 1.5 s the floor grants its next; `kept`, given back only then,
        // was refilled by that grant already.
        let later = start + Duration::from_millis(1_500);
        assert!(budget.take(later).is_some(), "the floor's next");
        budget.give_back(kept, later);
        assert!(
            budget.take(later).is_none(),
            "one a second, given back or not"
        );
    }

    #[test]
    fn a_floor_too_fast_to_keep_is_refused() {
        let err = RetryBudget::new(Budget::new(0.2).min_per_second(1_000_000_001)).unwrap_err();
        assert_eq!(err.setting(), "budget min_per_second");
        let fastest = RetryBudget::new(Budget::new(0.0).min_per_second(1_000_000_000)).unwrap();
        assert!(
            fastest.withdraw(Instant::now()),
            "the fastest floor kept is a floor"
        );
    }

    proptest! {
        /// Over any run, retries made (granted and not given back) never
        /// exceed ratio × requests plus the banked ceiling plus the floor
        /// over the elapsed time; and at any one instant, no more are
        /// granted than the balance, the floor's burst and what was given
        /// back then allow. Some grants are given back a step later (their
        /// calls dropped in the wait), whether their time has passed or not.
        #[test]
        fn grants_stay_within_the_bound(
            ratio in 0.0f64..2.0,
            floor in 0u32..20,
            banked in 0u32..50,
            steps in proptest::collection::vec((0u8..4, 0u64..1_500, 0usize..4), 1..400),
        ) {
            let budget = RetryBudget::new(
                Budget::new(ratio).min_per_second(floor).max_banked(banked),
            ).unwrap();
            let start = Instant::now();
            let (mut now, mut requests, mut made) = (start, 0u64, 0u64);
            let mut last_grants: Vec<Withdrawal> = Vec::new();
            for (requests_then, advance_ms, given_back) in steps {
                now += Duration::from_millis(advance_ms);
                for _ in 0..requests_then {
                    budget.deposit();
                    requests += 1;
                }
                let balance = budget.banked();
                let mut grants = Vec::new();
                while let Some(withdrawal) = budget.take(now) {
                    grants.push(withdrawal);
                }
                // Then some of the last step's grants come back (after this
                // instant's grants: their time may have passed since), and
                // what they bring back is granted too. A floor retry given
                // back before its time comes back; one whose time passed
                // was refilled already.
                let given_back = given_back.min(last_grants.len());
                let (mut banked_back, mut floor_back) = (0_u32, 0_u32);
                for withdrawal in last_grants.drain(..given_back) {
                    match withdrawal {
                        Withdrawal::Banked => banked_back += 1,
                        Withdrawal::Floor { until } => {
                            floor_back += u32::from(budget.nanos(now) < until);
                        }
                    }
                    budget.give_back(withdrawal, now);
                    made -= 1;
                }
                while let Some(withdrawal) = budget.take(now) {
                    grants.push(withdrawal);
                }
                let at_once = balance + banked_back + floor + floor_back;
                let granted_now = u32::try_from(grants.len()).unwrap();
                prop_assert!(granted_now <= at_once, "{granted_now} at once > {at_once}");
                made += u64::from(granted_now);
                last_grants = grants;
            }
            let seconds = (now - start).as_secs_f64();
            #[allow(clippy::cast_precision_loss)]
            let bound = (ratio * 1.001).mul_add(requests as f64, f64::from(banked))
                + f64::from(floor) * (seconds + 1.0);
            #[allow(clippy::cast_precision_loss)]
            let made_f = made as f64;
            prop_assert!(made_f <= bound + 1.0, "{made} > {bound}");
        }
    }
}
