//! Warnings that can come with every call, let through once an interval.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Lets one warning through per interval, for a warning that can come
/// with every call.
///
/// A layer that warns when something it depends on fails (an origin down,
/// a budget spent, a registry full) would otherwise write a line per
/// request for as long as the failure lasts: a log storm when the logs
/// matter most. Ask [`admits`](Self::admits) before warning, and log the
/// rest at debug level (the layer's metrics count them all). A `static`
/// one per warning is the usual shape; every throttle reads one origin
/// of time for the process.
///
/// ```
/// use std::time::{Duration, Instant};
/// use palisade_hints::Throttle;
///
/// static ORIGIN_DOWN: Throttle = Throttle::new(Duration::from_secs(60));
///
/// let now = Instant::now();
/// let warned = |at| (0..100).filter(|_| ORIGIN_DOWN.admits(at)).count();
/// assert_eq!(warned(now), 1);
/// assert_eq!(warned(now + Duration::from_secs(59)), 0);
/// assert_eq!(warned(now + Duration::from_secs(60)), 1);
/// ```
#[derive(Debug)]
pub struct Throttle {
    interval_ms: u64,
    /// When the next warning is let through, in milliseconds since the
    /// process's origin (see [`since_origin`]).
    next_ms: AtomicU64,
}

impl Throttle {
    /// The interval palisade's own warnings are throttled to.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

    /// A throttle letting one warning through per `interval` (at least a
    /// millisecond).
    #[must_use]
    pub const fn new(interval: Duration) -> Self {
        let ms = interval.as_millis();
        Self {
            interval_ms: if ms == 0 {
                1
            } else if ms > u64::MAX as u128 {
                u64::MAX
            } else {
                ms as u64
            },
            next_ms: AtomicU64::new(0),
        }
    }

    /// Whether a warning at `now` is let through: the first one, then the
    /// first at or after each interval since the last let through. One
    /// caller at a time is, whatever the threads.
    #[must_use]
    pub fn admits(&self, now: Instant) -> bool {
        let now_ms = since_origin(now);
        let due = self.next_ms.load(Ordering::Relaxed);
        now_ms >= due
            && self
                .next_ms
                .compare_exchange(
                    due,
                    now_ms.saturating_add(self.interval_ms),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }
}

/// Logs a `tracing` event that can come with every call at its level
/// (`warn`, `error`…) once an interval, and at debug level the rest.
///
/// `throttled!(warn, by: &throttle, …)` lets through what the
/// [`Throttle`] `throttle` admits: one a layer or a dependency keeps, so
/// that one failing at a high rate does not take the only warning of
/// another. Without `by:`, the place the macro is written has a throttle
/// of its own ([`Throttle::DEFAULT_INTERVAL`]), shared by every instance
/// that logs from there. The rest is what `tracing::warn!` takes; the
/// crate using it depends on `tracing`.
///
/// ```
/// use palisade_hints::{Throttle, throttled};
///
/// # fn call_origin() -> Result<(), std::io::Error> { Ok(()) }
/// struct Layer {
///     warnings: Throttle,
/// }
///
/// let layer = Layer { warnings: Throttle::new(Throttle::DEFAULT_INTERVAL) };
/// if let Err(error) = call_origin() {
///     throttled!(warn, by: &layer.warnings, target: "my_layer", %error, "origin failed; serving a stale value");
///     throttled!(error, target: "my_layer", %error, "origin failed");
/// }
/// ```
#[macro_export]
macro_rules! throttled {
    ($level:ident, by: $throttle:expr, $($field:tt)+) => {{
        if $crate::Throttle::admits($throttle, ::std::time::Instant::now()) {
            ::tracing::$level!($($field)+);
        } else {
            ::tracing::debug!($($field)+);
        }
    }};
    ($level:ident, $($field:tt)+) => {{
        static THROTTLE: $crate::Throttle =
            $crate::Throttle::new($crate::Throttle::DEFAULT_INTERVAL);
        $crate::throttled!($level, by: &THROTTLE, $($field)+)
    }};
}

impl Default for Throttle {
    /// A throttle of [`DEFAULT_INTERVAL`](Self::DEFAULT_INTERVAL).
    fn default() -> Self {
        Self::new(Self::DEFAULT_INTERVAL)
    }
}

/// `now` in milliseconds since the first instant any throttle was asked
/// about (an earlier one is 0), so a `static` throttle needs no clock of
/// its own.
fn since_origin(now: Instant) -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(|| now);
    u64::try_from(now.saturating_duration_since(origin).as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An instant no earlier than the throttles' origin (which another
    /// test may set at any moment otherwise).
    fn now() -> Instant {
        let _ = since_origin(Instant::now());
        Instant::now()
    }

    #[test]
    fn threads_at_once_let_one_warning_through() {
        let throttle = Throttle::new(Duration::from_secs(1));
        let now = now();
        let admitted: usize = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| (0..1000).filter(|_| throttle.admits(now)).count()))
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).sum()
        });
        assert_eq!(admitted, 1);
    }

    #[test]
    fn an_interval_of_zero_is_a_millisecond_and_a_huge_one_never_overflows() {
        let now = now();
        let zero = Throttle::new(Duration::ZERO);
        assert!(zero.admits(now));
        assert!(!zero.admits(now));
        assert!(zero.admits(now + Duration::from_millis(1)));
        let huge = Throttle::new(Duration::MAX);
        assert!(huge.admits(now));
        assert!(!huge.admits(now + Duration::from_secs(86_400 * 365)));
    }
}
