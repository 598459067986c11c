//! Whether a store that several calls share (Redis, a broker) answers, and
//! when to ask it again after it failed.
//!
//! A call on a store that is down costs the caller the call's timeout. A
//! [`Reachability`] spares all but one caller that cost: while the store
//! answers every call asks it; once a call failed, one call per probe
//! interval asks it again, and the others apply their failure policy at
//! once. The first answer marks it up again; a failure of a call asked
//! before the last answer (a slow call outlived by a probe) does not
//! mark it down.
//!
//! Every instant given to one `Reachability` is read from one clock (with
//! tokio, `tokio::time::Instant::now().into_std()`, so paused time in
//! tests moves it too).
//!
//! ```
//! use std::time::{Duration, Instant};
//! use palisade_hints::reachability::{Change, Reachability};
//!
//! let now = Instant::now();
//! let redis = Reachability::new(Duration::from_millis(500), now);
//! assert!(redis.should_try(now));
//! assert_eq!(redis.failed(now), Change::WentDown);
//! // Until the next probe, calls do without it.
//! assert!(!redis.should_try(now + Duration::from_millis(100)));
//! // Then one call, and only one, probes it.
//! let later = now + Duration::from_millis(500);
//! assert!(redis.should_try(later));
//! assert!(!redis.should_try(later));
//! assert_eq!(redis.answered(later), Change::CameBack);
//! assert!(redis.should_try(later));
//! ```

#[cfg(palisade_loom)]
use loom::sync::atomic::AtomicU64;
#[cfg(not(palisade_loom))]
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The bit of [`Reachability::state`] that says the store is down.
const DOWN: u64 = 1 << 63;

/// The bits of [`Reachability::state`] that say when the latest call that
/// got an answer was asked.
const ANSWERED: u64 = DOWN - 1;

/// A call's timeout as a store takes it: at least a millisecond and at
/// most a minute. Zero is no bound to keep (a timer rounds it up to its
/// next millisecond, so calls would fail at random), and a bound longer
/// than a minute is none in practice (`Duration::MAX` overflows the
/// deadline, and a call to a silent store would then wait for ever).
///
/// ```
/// use std::time::Duration;
/// use palisade_hints::reachability::call_timeout;
///
/// assert_eq!(call_timeout(Duration::ZERO), Duration::from_millis(1));
/// assert_eq!(call_timeout(Duration::from_millis(50)), Duration::from_millis(50));
/// assert_eq!(call_timeout(Duration::MAX), Duration::from_secs(60));
/// ```
#[must_use]
pub const fn call_timeout(timeout: Duration) -> Duration {
    crate::bounded(timeout, Duration::from_millis(1), Duration::from_secs(60))
}

/// Whether a shared store answers; see the [module docs](self).
#[derive(Debug)]
pub struct Reachability {
    /// Whether the store is down ([`DOWN`]), and when the latest call that
    /// got an answer was asked ([`ANSWERED`], in milliseconds since
    /// `origin`): one word, so a failure cannot mark the store down past
    /// an answer to a later call that came in meanwhile.
    state: AtomicU64,
    /// While down: the next probe, in milliseconds since `origin`.
    next_probe: AtomicU64,
    /// When an error of a call's own may next be logged, in milliseconds
    /// since `origin`.
    next_warning: AtomicU64,
    probe_interval: Duration,
    origin: Instant,
}

/// What a call's outcome changed, for the caller to log once each way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The store was up and still is, or was down and still is.
    None,
    /// The store answered after being down.
    CameBack,
    /// The store failed after answering.
    WentDown,
}

impl Reachability {
    /// A store taken to answer, asked again once per `probe_interval`
    /// while it does not; `now` on the clock every later instant is read
    /// from.
    #[must_use]
    pub fn new(probe_interval: Duration, now: Instant) -> Self {
        Self {
            state: AtomicU64::new(0),
            next_probe: AtomicU64::new(0),
            next_warning: AtomicU64::new(0),
            probe_interval,
            origin: now,
        }
    }

    /// How long calls do without the store after a failure before one asks
    /// it again.
    #[must_use]
    pub const fn probe_interval(&self) -> Duration {
        self.probe_interval
    }

    /// Whether the store failed and has not answered since.
    #[must_use]
    pub fn is_down(&self) -> bool {
        self.state.load(Ordering::Acquire) & DOWN != 0
    }

    /// Whether a call at `now` should ask the store: always while it
    /// answers; while it is down, the first call at or after each probe
    /// time, and no other.
    #[must_use]
    pub fn should_try(&self, now: Instant) -> bool {
        !self.is_down() || self.turn(&self.next_probe, now)
    }

    /// The store answered a call asked at `asked`.
    #[must_use = "a change is for the caller to log"]
    pub fn answered(&self, asked: Instant) -> Change {
        let asked = self.millis(asked).min(ANSWERED);
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            let next = (state & ANSWERED).max(asked);
            if next == state {
                return Change::None;
            }
            match self
                .state
                .compare_exchange_weak(state, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) if state & DOWN != 0 => return Change::CameBack,
                Ok(_) => return Change::None,
                Err(now) => state = now,
            }
        }
    }

    /// A call asked at `asked` failed (an error, or no answer in time):
    /// the next probe is a probe interval after it. A call asked before
    /// one that got an answer changes nothing: the store answered since.
    #[must_use = "a change is for the caller to log"]
    pub fn failed(&self, asked: Instant) -> Change {
        let asked = self.millis(asked).min(ANSWERED);
        let mut state = self.state.load(Ordering::Acquire);
        if asked < state & ANSWERED {
            return Change::None;
        }
        // Before the store shows down, so no call probes at once.
        self.next_probe
            .fetch_max(asked.saturating_add(self.interval_ms()), Ordering::AcqRel);
        loop {
            if asked < state & ANSWERED || state & DOWN != 0 {
                return Change::None;
            }
            match self.state.compare_exchange_weak(
                state,
                state | DOWN,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Change::WentDown,
                Err(now) => state = now,
            }
        }
    }

    /// Whether an error a call got at `now` that is its own (the store
    /// answered: a key of another type, memory full, a permission) is to
    /// be logged as a warning: once per probe interval, since it may be
    /// every call's, and otherwise only counted.
    #[must_use]
    pub fn warning_due(&self, now: Instant) -> bool {
        self.turn(&self.next_warning, now)
    }

    /// Whether `now` is the first call at or after the time in `next`,
    /// which then moves a probe interval on: one caller a turn.
    fn turn(&self, next: &AtomicU64, now: Instant) -> bool {
        let now = self.millis(now);
        let due = next.load(Ordering::Acquire);
        now >= due
            && next
                .compare_exchange(
                    due,
                    now.saturating_add(self.interval_ms()),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
    }

    fn millis(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.origin).as_millis()).unwrap_or(u64::MAX)
    }

    fn interval_ms(&self) -> u64 {
        u64::try_from(self.probe_interval.as_millis()).unwrap_or(u64::MAX)
    }
}

/// Whether a Redis `error` says Redis cannot serve anyone now (it cannot
/// be reached, the connection dropped, it is loading, or its cluster or
/// master is down), rather than that one call was wrong (a key of another
/// type, memory full, a script error): only the first should count as the
/// store failing.
#[cfg(feature = "redis")]
#[must_use]
pub fn unreachable(error: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    error.is_io_error()
        || error.is_connection_dropped()
        || matches!(
            error.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::ClusterDown
                        | ServerErrorKind::MasterDown
                )
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_call_per_probe_interval_asks_a_store_that_is_down() {
        let start = Instant::now();
        let store = Reachability::new(Duration::from_secs(1), start);
        assert_eq!(store.failed(start), Change::WentDown);
        assert_eq!(store.failed(start), Change::None, "logged once");
        for second in 1..5 {
            let at = start + Duration::from_secs(second);
            let asked = (0..100).filter(|_| store.should_try(at)).count();
            assert_eq!(asked, 1, "second {second}");
            assert_eq!(store.failed(at), Change::None);
        }
        let back = start + Duration::from_secs(5);
        assert_eq!(store.answered(back), Change::CameBack);
        assert_eq!(store.answered(back), Change::None, "logged once");
        assert!(!store.is_down());
    }

    /// A slow call asked before a probe that got an answer fails after
    /// it: the store answered since, and stays up.
    #[test]
    fn a_failure_older_than_the_last_answer_changes_nothing() {
        let start = Instant::now();
        let interval = Duration::from_secs(1);
        let store = Reachability::new(interval, start);
        assert_eq!(store.failed(start), Change::WentDown);
        let probe = start + interval;
        assert!(store.should_try(probe));
        assert_eq!(store.answered(probe), Change::CameBack);
        let slow = probe - Duration::from_millis(10);
        assert_eq!(store.failed(slow), Change::None);
        assert!(!store.is_down());
    }

    /// An error of a call's own is worth a warning once per interval.
    #[test]
    fn a_calls_own_error_is_a_warning_once_an_interval() {
        let start = Instant::now();
        let store = Reachability::new(Duration::from_secs(1), start);
        let warned = |at| (0..100).filter(|_| store.warning_due(at)).count();
        assert_eq!(warned(start), 1);
        assert_eq!(warned(start + Duration::from_millis(999)), 0);
        assert_eq!(warned(start + Duration::from_secs(1)), 1);
    }

    /// Failures reported out of order never bring the next probe nearer.
    #[test]
    fn the_next_probe_never_moves_back() {
        let start = Instant::now();
        let interval = Duration::from_secs(1);
        let store = Reachability::new(interval, start);
        assert_eq!(
            store.failed(start + Duration::from_secs(3)),
            Change::WentDown
        );
        assert_eq!(store.failed(start), Change::None);
        assert!(!store.should_try(start + Duration::from_secs(2)));
        assert!(store.should_try(start + Duration::from_secs(4)));
    }

    #[test]
    fn threads_share_out_one_probe() {
        let start = Instant::now();
        let store = std::sync::Arc::new(Reachability::new(Duration::from_secs(60), start));
        assert_eq!(store.failed(start), Change::WentDown);
        let at = start + Duration::from_secs(60);
        let asked: usize = std::thread::scope(|scope| {
            let askers: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| (0..1000).filter(|_| store.should_try(at)).count()))
                .collect();
            askers.into_iter().map(|asker| asker.join().unwrap()).sum()
        });
        assert_eq!(asked, 1);
    }
}
