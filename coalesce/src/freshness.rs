//! How long a cached value is fresh, usable while it refreshes, and usable
//! when the origin fails; and when to refresh it early.

use std::time::Duration;

use tokio::time::Instant;

/// How far ahead a window of `Duration::MAX` ("for ever") reaches: an
/// `Instant` plus `Duration::MAX` overflows, and Redis takes no expiry
/// that far out.
pub(crate) const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// `at` plus `by`, or plus [`FOREVER`] when that is nearer.
fn later(at: Instant, by: Duration) -> Instant {
    at.checked_add(by.min(FOREVER)).unwrap_or(at)
}

/// The lifetime of a cached value.
///
/// - **Fresh** for `ttl`: served as is.
/// - Then **stale** for `stale_while_revalidate`: served at once while one
///   background refresh runs.
/// - While the origin fails, usable for `stale_if_error` after it went
///   stale, so an outage of the origin is not an outage of the cache.
/// - **Early refresh** (XFetch): while fresh, a caller starts a background
///   refresh with a probability that grows as expiry nears, scaled by how
///   long the value took to compute and by `beta` (1.0 by default; 0 turns
///   it off), so a hot key is rarely found expired.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use palisade_coalesce::Freshness;
///
/// let freshness = Freshness::new(Duration::from_secs(30))
///     .stale_while_revalidate(Duration::from_secs(60))
///     .stale_if_error(Duration::from_secs(600))
///     .early_refresh(1.0);
/// assert_eq!(freshness.ttl(), Duration::from_secs(30));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Freshness {
    ttl: Duration,
    stale_while_revalidate: Duration,
    stale_if_error: Duration,
    beta: f64,
}

impl Freshness {
    /// Fresh for `ttl`; no stale serving until set; early refresh with
    /// `beta` 1.0.
    #[must_use]
    pub const fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            beta: 1.0,
        }
    }

    /// The same windows with another `ttl`.
    #[must_use]
    pub const fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Serve the stale value for this long after `ttl` while refreshing.
    #[must_use]
    pub const fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.stale_while_revalidate = window;
        self
    }

    /// Serve the stale value for this long after `ttl` when the origin
    /// fails.
    #[must_use]
    pub const fn stale_if_error(mut self, window: Duration) -> Self {
        self.stale_if_error = window;
        self
    }

    /// XFetch's `beta`: above 1 refreshes earlier, below later; 0 never
    /// early. Negative or non-finite values count as 0.
    #[must_use]
    pub const fn early_refresh(mut self, beta: f64) -> Self {
        self.beta = beta;
        self
    }

    /// XFetch's `beta` as applied (0 when off).
    #[must_use]
    pub fn beta(&self) -> f64 {
        if self.beta.is_finite() && self.beta > 0.0 {
            self.beta
        } else {
            0.0
        }
    }

    /// How long a value is fresh.
    #[must_use]
    pub const fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The entry for `value`, computed in `compute_time`, stored at `now`.
    #[must_use]
    pub fn entry<V>(&self, value: V, now: Instant, compute_time: Duration) -> Entry<V> {
        let fresh_until = later(now, self.ttl);
        Entry {
            value,
            stored_at: now,
            fresh_until,
            stale_until: later(fresh_until, self.stale_while_revalidate),
            usable_on_error_until: later(fresh_until, self.stale_if_error),
            compute_time,
            beta: if self.beta.is_finite() && self.beta > 0.0 {
                self.beta
            } else {
                0.0
            },
        }
    }
}

/// A cached value with its lifetime.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry<V> {
    value: V,
    stored_at: Instant,
    fresh_until: Instant,
    stale_until: Instant,
    usable_on_error_until: Instant,
    compute_time: Duration,
    beta: f64,
}

/// Where an entry stands at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Serve it.
    Fresh,
    /// Serve it and refresh it early (XFetch drew this caller).
    RefreshEarly,
    /// Serve it and refresh it in the background.
    Stale,
    /// Only usable if the origin fails.
    Expired,
    /// Past every window: as good as absent.
    Dead,
}

/// An entry's windows as milliseconds after it was stored, for stores
/// outside this process (Redis). They hold no instant: how old an entry is
/// comes from the store's own clock, so processes whose clocks disagree
/// agree on where an entry stands.
#[cfg(feature = "redis")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lifetime {
    pub(crate) fresh_ms: u64,
    pub(crate) stale_ms: u64,
    pub(crate) usable_on_error_ms: u64,
    pub(crate) compute_ms: u64,
}

#[cfg(feature = "redis")]
impl Lifetime {
    /// Whether the windows are in order (a fresh value is also usable
    /// while stale and on error).
    pub(crate) const fn is_ordered(&self) -> bool {
        self.fresh_ms <= self.stale_ms && self.fresh_ms <= self.usable_on_error_ms
    }

    /// How long after it was stored the entry is worth keeping (at least
    /// 1 ms: a store takes no expiry of zero).
    pub(crate) fn keep_ms(&self) -> u64 {
        self.stale_ms.max(self.usable_on_error_ms).max(1)
    }
}

#[cfg(feature = "redis")]
impl<V> Entry<V> {
    /// The entry's windows after its storing.
    pub(crate) fn lifetime(&self) -> Lifetime {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let after = |at: Instant| ms(at.saturating_duration_since(self.stored_at));
        Lifetime {
            fresh_ms: after(self.fresh_until),
            stale_ms: after(self.stale_until),
            usable_on_error_ms: after(self.usable_on_error_until),
            compute_ms: ms(self.compute_time),
        }
    }

    /// The entry stored with `lifetime`, read at `now` when it is `age`
    /// old.
    pub(crate) fn with_lifetime(
        value: V,
        lifetime: Lifetime,
        beta: f64,
        age: Duration,
        now: Instant,
    ) -> Self {
        // Each instant from `now`: an instant before this process's clock
        // began (an entry older than the machine's uptime) is `now`, past
        // all the same.
        let at = |ms: u64| {
            let after = Duration::from_millis(ms);
            if after >= age {
                later(now, after - age)
            } else {
                now.checked_sub(age - after).unwrap_or(now)
            }
        };
        Self {
            value,
            stored_at: at(0),
            fresh_until: at(lifetime.fresh_ms),
            stale_until: at(lifetime.stale_ms),
            usable_on_error_until: at(lifetime.usable_on_error_ms),
            compute_time: Duration::from_millis(lifetime.compute_ms),
            beta,
        }
    }
}

impl<V> Entry<V> {
    /// The value.
    pub const fn value(&self) -> &V {
        &self.value
    }

    /// The value, owned.
    pub fn into_value(self) -> V {
        self.value
    }

    /// How old the value is at `now`.
    #[must_use]
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.stored_at)
    }

    /// How long the value took to compute.
    #[must_use]
    pub const fn compute_time(&self) -> Duration {
        self.compute_time
    }

    /// Until when a background refresh of the entry started at `now`
    /// runs on its own: through the stale window, and for as long as a
    /// fresh value lasts at least (one that takes longer has missed its
    /// purpose, and callers then wait on it only as on a miss).
    pub(crate) fn refresh_alone_until(&self, now: Instant) -> Instant {
        self.stale_until
            .max(later(now, self.fresh_until - self.stored_at))
    }

    /// Until when the entry is worth keeping at all.
    #[must_use]
    pub fn keep_until(&self) -> Instant {
        self.stale_until.max(self.usable_on_error_until)
    }

    /// Where the entry stands at `now`; `draw` is a uniform random number
    /// in (0, 1] for the early-refresh decision.
    #[must_use]
    pub fn state(&self, now: Instant, draw: f64) -> State {
        if now < self.fresh_until {
            // XFetch: refresh when now - compute_time * beta * ln(draw)
            // reaches the expiry; ln(draw) <= 0, so the lead is positive.
            let lead = self.compute_time.as_secs_f64() * self.beta * -draw.ln();
            let lead = Duration::try_from_secs_f64(lead).unwrap_or(Duration::MAX);
            if now
                .checked_add(lead)
                .is_none_or(|at| at >= self.fresh_until)
            {
                State::RefreshEarly
            } else {
                State::Fresh
            }
        } else if now < self.stale_until {
            State::Stale
        } else if now < self.usable_on_error_until {
            State::Expired
        } else {
            State::Dead
        }
    }

    /// Whether the value may stand in for a failed origin at `now`.
    #[must_use]
    pub fn usable_on_error(&self, now: Instant) -> bool {
        now < self.usable_on_error_until
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_goes_fresh_stale_expired_dead() {
        let now = Instant::now();
        let s = Duration::from_secs;
        let entry = Freshness::new(s(10))
            .stale_while_revalidate(s(5))
            .stale_if_error(s(60))
            .early_refresh(0.0)
            .entry("v", now, Duration::from_millis(200));
        assert_eq!(entry.state(now, 0.5), State::Fresh);
        assert_eq!(entry.state(now + s(10), 0.5), State::Stale);
        assert_eq!(entry.state(now + s(15), 0.5), State::Expired);
        assert!(entry.usable_on_error(now + s(69)));
        assert_eq!(entry.state(now + s(70), 0.5), State::Dead);
        assert_eq!(entry.keep_until(), now + s(70));
    }

    #[test]
    fn early_refresh_grows_likelier_towards_expiry() {
        let now = Instant::now();
        let entry = Freshness::new(Duration::from_secs(10)).entry((), now, Duration::from_secs(1));
        let share = |at: Duration| {
            let mut rng = fastrand::Rng::with_seed(9);
            let early = (0..10_000)
                .filter(|_| entry.state(now + at, 1.0 - rng.f64()) == State::RefreshEarly)
                .count();
            f64::from(u32::try_from(early).unwrap()) / 10_000.0
        };
        // P(early) = exp(-(time left) / (compute_time * beta)).
        assert!(share(Duration::from_secs(1)) < 0.001, "9 s left");
        let at_8 = share(Duration::from_secs(8));
        assert!((0.10..0.17).contains(&at_8), "2 s left: {at_8}");
        let at_9_9 = share(Duration::from_millis(9900));
        assert!(at_9_9 > 0.85, "0.1 s left: {at_9_9}");
    }
}
