//! The error budget: every call counted into rolling windows, and what
//! they say of the objective.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::error::{ConfigError, config_error};
use crate::objective::{BurnAlert, Objective, Severity};
use crate::window::{Counts, Ring};

/// Buckets of the ring that serves the short windows.
const FINE_BUCKETS: u64 = 1_024;
/// Buckets of the ring that serves the longer windows, for the objective's
/// window; more when a longer alert window needs them, up to
/// [`COARSE_BUCKETS_MAX`].
const COARSE_BUCKETS: u64 = 720;
const COARSE_BUCKETS_MAX: u64 = 20_000;
/// Every window spans at least this many buckets (a tenth of it, at most,
/// is edge).
const BUCKETS_PER_WINDOW: u64 = 10;
/// How often the signal other layers read is worked out again, at most.
const SIGNAL_EVERY_MS: u64 = 1_000;
/// A signal not worked out yet.
const NEVER: u64 = u64::MAX;

/// An objective's error budget, fed by every call: cheap to clone, every
/// clone counting into the same windows.
///
/// Calls are counted into time buckets on two rings (one for the alerts'
/// short windows, one for the objective's window and the long ones), so
/// memory is fixed by the objective, never by the traffic: under 40 KiB
/// for the workbook's alerts. Counting a call is two atomic adds; no lock
/// is taken. Windows are exact to one bucket: a 5-minute window is read
/// as the last 4½ to 5 minutes.
///
/// The windows live in this process and start empty: a 30-day budget
/// reads what this process saw since it started ([`Report::since`] says
/// when that was), unless it is [shared](Self::share) through Redis
/// (feature `redis`), which keeps the fleet's window across restarts.
///
/// # Example
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use palisade_slo::{ErrorBudget, Objective, Severity};
///
/// # fn main() -> Result<(), palisade_slo::ConfigError> {
/// let budget = ErrorBudget::new(Objective::new(0.999))?;
/// let now = SystemTime::now();
/// for call in 0..1_000 {
///     budget.record(call % 50 != 0, now); // 2% bad: 20× the 0.1% allowed
/// }
/// let report = budget.report(now);
/// assert_eq!(report.counts().bad, 20);
/// assert_eq!(report.firing(), Some(Severity::Page));
/// assert!(report.budget_remaining() < 0.0, "more than the budget is spent");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ErrorBudget {
    inner: Arc<Inner>,
}

/// Its objective; not its windows' thousands of buckets.
impl std::fmt::Debug for ErrorBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ErrorBudget")
            .field("objective", &self.inner.objective)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub(crate) struct Inner {
    objective: Objective,
    fine: Ring,
    coarse: Option<Ring>,
    /// Where each window is read: the objective's, then each alert's long
    /// and short windows.
    slo: Span,
    alerts: Vec<(BurnAlert, Span, Span)>,
    clock: Clock,
    signal: Cached,
    /// Its OpenTelemetry gauges, once registered.
    #[cfg(feature = "otel")]
    instruments: std::sync::OnceLock<crate::otel::Instruments>,
    /// The fleet's counts over the objective's window, once shared.
    #[cfg(feature = "redis")]
    pub(crate) fleet: std::sync::Mutex<Option<crate::fleet::View>>,
    /// Whether the budget is shared already (once per budget).
    #[cfg(feature = "redis")]
    pub(crate) shared: std::sync::atomic::AtomicBool,
    /// The budget's name among the fleet's replicas, one for its life: a
    /// budget shared again (its sharing ended with its runtime) writes
    /// over its own counts rather than beside them.
    #[cfg(feature = "redis")]
    pub(crate) replica: u64,
}

/// The budget's clock: the wall time when the budget was made, moved on by
/// tokio's monotonic clock (which tests can pause), so calls land in the
/// buckets of the time they ended at and a wall clock stepped back never
/// takes a count back.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    wall_ms: u64,
    start: Instant,
}

impl Clock {
    /// `at` in milliseconds since the epoch.
    pub(crate) fn millis(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.start).as_millis();
        self.wall_ms
            .saturating_add(u64::try_from(since).unwrap_or(u64::MAX))
    }
}

/// Where a window is read: which ring, how many buckets.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span {
    coarse: bool,
    buckets: usize,
}

/// The last signal worked out, for readers on the hot path.
#[derive(Debug)]
struct Cached {
    /// When it was worked out, on the budget's clock, in milliseconds
    /// since the epoch ([`NEVER`] before the first time).
    at_ms: AtomicU64,
    /// `0` none, `1 + Severity as u8` otherwise.
    firing: AtomicU8,
    /// The budget remaining, as `f64` bits.
    remaining: AtomicU64,
}

pub(crate) fn millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    })
}

fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl ErrorBudget {
    /// The budget of `objective`, its windows empty and its clock started.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when the target is outside `(0, 1)`, the window
    /// outside a minute to 400 days, the latency threshold zero, or an
    /// alert's windows out of order, past the objective's window, or too
    /// far apart to count in bounded memory.
    pub fn new(objective: Objective) -> Result<Self, ConfigError> {
        Self::starting(objective, SystemTime::now())
    }

    fn starting(objective: Objective, at: SystemTime) -> Result<Self, ConfigError> {
        objective.validate()?;
        let window = ms(objective.window());
        let shortest = objective
            .burn_alerts()
            .iter()
            .map(|alert| ms(alert.short_window()))
            .min()
            .unwrap_or(window)
            .min(window);
        let fine_ms = (shortest / BUCKETS_PER_WINDOW).max(1_000);
        let fine_span = fine_ms * FINE_BUCKETS;
        let windows = std::iter::once(window).chain(
            objective
                .burn_alerts()
                .iter()
                .flat_map(|alert| [ms(alert.long_window()), ms(alert.short_window())]),
        );
        let (longest, shortest_coarse) = windows
            .filter(|&w| w > fine_span)
            .fold((0, u64::MAX), |(longest, shortest), w| {
                (longest.max(w), shortest.min(w))
            });
        let coarse = (longest > 0)
            .then(|| {
                let resolution =
                    (longest / COARSE_BUCKETS).min(shortest_coarse / BUCKETS_PER_WINDOW);
                let buckets = longest.div_ceil(resolution);
                (buckets <= COARSE_BUCKETS_MAX)
                    .then(|| Ring::new(resolution, to_len(buckets)))
                    .ok_or_else(|| {
                        config_error("alerts", "windows too far apart to count in bounded memory")
                    })
            })
            .transpose()?;
        let fine = Ring::new(fine_ms, to_len(FINE_BUCKETS));
        let span = |window: Duration| {
            let window = ms(window);
            let (coarse, resolution) = match &coarse {
                Some(ring) if window > fine_span => (true, ring.resolution_ms()),
                _ => (false, fine_ms),
            };
            Span {
                coarse,
                buckets: to_len(window.div_ceil(resolution)),
            }
        };
        let slo = span(objective.window());
        let alerts = objective
            .burn_alerts()
            .iter()
            .map(|alert| {
                (
                    *alert,
                    span(alert.long_window()),
                    span(alert.short_window()),
                )
            })
            .collect();
        Ok(Self {
            inner: Arc::new(Inner {
                objective,
                fine,
                coarse,
                slo,
                alerts,
                clock: Clock {
                    wall_ms: millis(at),
                    start: Instant::now(),
                },
                signal: Cached {
                    at_ms: AtomicU64::new(NEVER),
                    firing: AtomicU8::new(0),
                    remaining: AtomicU64::new(1.0_f64.to_bits()),
                },
                #[cfg(feature = "otel")]
                instruments: std::sync::OnceLock::new(),
                #[cfg(feature = "redis")]
                fleet: std::sync::Mutex::default(),
                #[cfg(feature = "redis")]
                shared: std::sync::atomic::AtomicBool::new(false),
                #[cfg(feature = "redis")]
                replica: fastrand::u64(..),
            }),
        })
    }

    #[cfg(feature = "otel")]
    pub(crate) const fn from_inner(inner: Arc<Inner>) -> Self {
        Self { inner }
    }

    /// Reports the budget's windows at each collection with OpenTelemetry
    /// (feature `otel`): calls, budget remaining, burn rates and the
    /// alerts firing; `name` becomes the `objective` attribute. Once per
    /// budget and its clones; later calls change nothing. See the
    /// [`otel`](crate::otel) module for the names.
    #[cfg(feature = "otel")]
    pub fn instrument(&self, meter: &opentelemetry::metrics::Meter, name: impl Into<String>) {
        self.instrument_with(
            meter,
            &[opentelemetry::KeyValue::new("objective", name.into())],
        );
    }

    /// [`instrument`](Self::instrument) with `attributes` on every point.
    #[cfg(feature = "otel")]
    pub(crate) fn instrument_with(
        &self,
        meter: &opentelemetry::metrics::Meter,
        attributes: &[opentelemetry::KeyValue],
    ) {
        let budget = Arc::downgrade(&self.inner);
        let _ = self
            .inner
            .instruments
            .get_or_init(|| crate::otel::Instruments::new(meter, attributes, &budget));
    }

    /// The objective this budget is for.
    #[must_use]
    pub fn objective(&self) -> &Objective {
        &self.inner.objective
    }

    /// The budget's clock: the wall time it was made at, moved on by
    /// tokio's monotonic clock (paused in tests, it stands still). The
    /// layer counts calls at this time; read reports at it too.
    #[must_use]
    pub fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.at(Instant::now()))
    }

    /// `at` on the budget's clock, in milliseconds since the epoch.
    pub(crate) fn at(&self, at: Instant) -> u64 {
        self.inner.clock.millis(at)
    }

    /// Counts a call that ended at `at`: good, or bad.
    pub fn record(&self, good: bool, at: SystemTime) {
        self.record_ms(good, millis(at));
    }

    pub(crate) fn record_ms(&self, good: bool, at_ms: u64) {
        self.inner.fine.record(at_ms, good);
        if let Some(coarse) = &self.inner.coarse {
            coarse.record(at_ms, good);
        }
    }

    fn counts(&self, span: Span, at_ms: u64) -> Counts {
        self.ring(span).counts(at_ms, span.buckets)
    }

    /// The ring `span` is read on.
    fn ring(&self, span: Span) -> &Ring {
        match (&self.inner.coarse, span.coarse) {
            (Some(coarse), true) => coarse,
            _ => &self.inner.fine,
        }
    }

    /// The ring the objective's window is read on, and how many of its
    /// buckets the window spans.
    #[cfg(feature = "redis")]
    pub(crate) fn objective_ring(&self) -> (&Ring, usize) {
        (self.ring(self.inner.slo), self.inner.slo.buckets)
    }

    #[cfg(feature = "redis")]
    pub(crate) const fn from_shared(inner: Arc<Inner>) -> Self {
        Self { inner }
    }

    #[cfg(feature = "redis")]
    pub(crate) fn downgrade(&self) -> std::sync::Weak<Inner> {
        Arc::downgrade(&self.inner)
    }

    #[cfg(feature = "redis")]
    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    /// What the windows say at `at`: the objective's counts and budget, and
    /// each alert's burn rates.
    #[must_use]
    pub fn report(&self, at: SystemTime) -> Report {
        self.report_ms(millis(at))
    }

    fn report_ms(&self, at_ms: u64) -> Report {
        let inner = &*self.inner;
        let allowed = inner.objective.allowed_bad();
        let local = self.counts(inner.slo, at_ms);
        #[cfg(feature = "redis")]
        let (counts, fleet_as_of) = crate::fleet::counts(self, local, at_ms);
        #[cfg(not(feature = "redis"))]
        let (counts, fleet_as_of) = (local, None);
        let burn = |span| self.counts(span, at_ms).bad_ratio() / allowed;
        let burns: Vec<Burn> = inner
            .alerts
            .iter()
            .map(|&(alert, long, short)| {
                let (long, short) = (burn(long), burn(short));
                Burn {
                    alert,
                    long,
                    short,
                    firing: reaches(long, alert.factor()) && reaches(short, alert.factor()),
                }
            })
            .collect();
        let firing = burns
            .iter()
            .filter(|burn| burn.firing)
            .map(|burn| burn.alert.severity())
            .max();
        Report {
            counts,
            budget_remaining: 1.0 - counts.bad_ratio() / allowed,
            burns,
            firing,
            since: UNIX_EPOCH + Duration::from_millis(inner.clock.wall_ms),
            fleet_as_of: fleet_as_of.map(|ms| UNIX_EPOCH + Duration::from_millis(ms)),
        }
    }

    /// The budget's state for other layers as of `at`. At the budget's
    /// own time ([`now`](Self::now), within a second) it is worked out
    /// again at most once a second, so it is cheap enough to read on
    /// every call; at another time (a reader whose clock is off the
    /// budget's), it is worked out as of that time, each read, and leaves
    /// the signal the layer sheds by as it was.
    #[must_use]
    pub fn signal(&self, at: SystemTime) -> BudgetSignal {
        let (at, now) = (millis(at), self.at(Instant::now()));
        if at.abs_diff(now) < SIGNAL_EVERY_MS {
            return self.signal_ms(now);
        }
        let report = self.report_ms(at);
        BudgetSignal {
            firing: report.firing,
            budget_remaining: report.budget_remaining,
        }
    }

    /// The signal at `now_ms` on the budget's own clock (which never goes
    /// back), worked out again once a second has passed since the last
    /// time.
    pub(crate) fn signal_ms(&self, now_ms: u64) -> BudgetSignal {
        let cached = &self.inner.signal;
        let worked_out = cached.at_ms.load(Ordering::Acquire);
        if (worked_out == NEVER || now_ms >= worked_out.saturating_add(SIGNAL_EVERY_MS))
            && cached
                .at_ms
                .compare_exchange(worked_out, now_ms, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            let report = self.report_ms(now_ms);
            let firing = report.firing.map_or(0, |severity| 1 + severity as u8);
            cached
                .remaining
                .store(report.budget_remaining.to_bits(), Ordering::Release);
            cached.firing.store(firing, Ordering::Release);
        }
        BudgetSignal {
            firing: match cached.firing.load(Ordering::Acquire) {
                0 => None,
                1 => Some(Severity::Ticket),
                _ => Some(Severity::Page),
            },
            budget_remaining: f64::from_bits(cached.remaining.load(Ordering::Acquire)),
        }
    }
}

/// Whether `burn` reaches `factor`, but for the last bits of rounding: a
/// burn is a ratio of ratios (bad over calls, over the allowed share), each
/// rounded, so one exactly at the factor may come out a hair under it
/// (9 bad calls in 625 against 0.999 burn at 14.399999999999999).
fn reaches(burn: f64, factor: f64) -> bool {
    burn >= factor * (1.0 - 1e-12)
}

fn to_len(buckets: u64) -> usize {
    usize::try_from(buckets).unwrap_or(usize::MAX).max(1)
}

/// What an objective's windows say at one time.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    counts: Counts,
    budget_remaining: f64,
    burns: Vec<Burn>,
    firing: Option<Severity>,
    since: SystemTime,
    fleet_as_of: Option<SystemTime>,
}

impl Report {
    /// Good and bad calls over the objective's window.
    #[must_use]
    pub const fn counts(&self) -> Counts {
        self.counts
    }

    /// The share of the error budget left over the objective's window: 1
    /// untouched, 0 spent, below 0 overspent.
    #[must_use]
    pub const fn budget_remaining(&self) -> f64 {
        self.budget_remaining
    }

    /// Each alert's burn rates, in the objective's order.
    #[must_use]
    pub fn burns(&self) -> &[Burn] {
        &self.burns
    }

    /// The most urgent alert firing, if any is.
    #[must_use]
    pub const fn firing(&self) -> Option<Severity> {
        self.firing
    }

    /// When the windows started counting: a window reaching further back
    /// holds only what was counted since, unless the fleet's counts are
    /// in ([`fleet_as_of`](Self::fleet_as_of)).
    #[must_use]
    pub const fn since(&self) -> SystemTime {
        self.since
    }

    /// When the fleet's counts of the objective's window were last read
    /// from Redis, when the budget is shared (feature `redis`) and they
    /// are fresh: [`counts`](Self::counts) and the budget remaining are
    /// then the fleet's, this process's calls since included. `None`: they
    /// are this process's own.
    #[must_use]
    pub const fn fleet_as_of(&self) -> Option<SystemTime> {
        self.fleet_as_of
    }
}

/// One alert's burn rates: the rate the budget goes at over its long and
/// short windows, as a multiple of the rate that spends it exactly over
/// the objective's window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Burn {
    alert: BurnAlert,
    long: f64,
    short: f64,
    firing: bool,
}

impl Burn {
    /// The alert.
    #[must_use]
    pub const fn alert(&self) -> BurnAlert {
        self.alert
    }

    /// The burn rate over its long window.
    #[must_use]
    pub const fn long(&self) -> f64 {
        self.long
    }

    /// The burn rate over its short window.
    #[must_use]
    pub const fn short(&self) -> f64 {
        self.short
    }

    /// Whether both are at the alert's factor or above.
    #[must_use]
    pub const fn is_firing(&self) -> bool {
        self.firing
    }
}

/// An error budget's state as other layers read it: the most urgent alert
/// firing and the budget left, at most a second old.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetSignal {
    firing: Option<Severity>,
    budget_remaining: f64,
}

impl BudgetSignal {
    /// The most urgent alert firing, if any is.
    #[must_use]
    pub const fn firing(&self) -> Option<Severity> {
        self.firing
    }

    /// Whether an alert of `severity` or more urgent is firing.
    #[must_use]
    pub fn is_firing(&self, severity: Severity) -> bool {
        self.firing.is_some_and(|firing| firing >= severity)
    }

    /// The share of the error budget left (see
    /// [`Report::budget_remaining`]).
    #[must_use]
    pub const fn budget_remaining(&self) -> f64 {
        self.budget_remaining
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: u64 = 60_000;

    fn budget(objective: Objective) -> ErrorBudget {
        ErrorBudget::starting(objective, UNIX_EPOCH).unwrap()
    }

    #[test]
    fn the_workbook_windows_fit_two_small_rings() {
        let budget = budget(Objective::new(0.999));
        let inner = &budget.inner;
        assert_eq!(inner.fine.resolution_ms(), 30_000, "a tenth of 5 minutes");
        let coarse = inner.coarse.as_ref().expect("3 and 30 days");
        assert_eq!(coarse.resolution_ms(), 3_600_000, "an hour");
        assert_eq!(coarse.len(), 1_024, "720 hours, in a power of two");
        assert!(inner.slo.coarse);
        assert_eq!(inner.slo.buckets, 720);
        let memory = (inner.fine.len() + coarse.len()) * 16;
        assert!(memory < 40 * 1024, "{memory} bytes");
    }

    #[test]
    fn an_alert_fires_while_both_windows_burn_and_stops_with_the_short_one() {
        let budget = budget(Objective::new(0.99));
        let t0 = 100 * 24 * 60 * MINUTE;
        // An hour at 20% bad: 20× a 1% budget.
        for minute in 0..60 {
            for call in 0..10 {
                budget.record_ms(call >= 2, t0 + minute * MINUTE);
            }
        }
        let report = budget.report_ms(t0 + 59 * MINUTE);
        assert_eq!(report.firing(), Some(Severity::Page));
        let fast = report.burns()[0];
        assert!((fast.long() - 20.0).abs() < 1e-9, "{fast:?}");
        assert!(fast.is_firing());
        // Ten good minutes: the short window clears the fast page, the
        // long one still burns.
        for minute in 60..70 {
            for _ in 0..10 {
                budget.record_ms(true, t0 + minute * MINUTE);
            }
        }
        let report = budget.report_ms(t0 + 69 * MINUTE);
        let fast = report.burns()[0];
        assert!(fast.long() > 14.4 && fast.short() == 0.0, "{fast:?}");
        assert!(!fast.is_firing());
        assert_eq!(
            report.counts(),
            Counts {
                good: 580,
                bad: 120
            }
        );
    }

    /// A burn exactly at an alert's factor fires it, and a budget spent
    /// exactly has none left. With `1 - 0.99` as it comes in `f64`, one
    /// bad call in ten burned at 9.999999999999991, under the page's 10.
    #[test]
    fn a_burn_exactly_at_the_factor_fires() {
        let objective = Objective::new(0.99).alerts([BurnAlert::new(
            Severity::Page,
            10.0,
            Duration::from_secs(3_600),
            Duration::from_secs(300),
        )]);
        let burning = budget(objective);
        let t0 = 1_000 * MINUTE;
        for call in 0..1_000 {
            burning.record_ms(call % 10 != 0, t0);
        }
        let report = burning.report_ms(t0 + 1_000);
        assert_eq!(
            report.firing(),
            Some(Severity::Page),
            "{:?}",
            report.burns()
        );
        // And where the ratio of ratios itself rounds under the factor:
        // the workbook's 14.4 against 0.999 (9 bad calls in 625), 6
        // against 0.9999 (6 in 10,000), 6 against 0.9 (3 in 5).
        for (target, factor, bad, calls) in [
            (0.999, 14.4, 9, 625),
            (0.9999, 6.0, 6, 10_000),
            (0.9, 6.0, 3, 5),
        ] {
            let budget = budget(Objective::new(target).alerts([BurnAlert::new(
                Severity::Page,
                factor,
                Duration::from_secs(3_600),
                Duration::from_secs(300),
            )]));
            for call in 0..calls {
                budget.record_ms(call >= bad, t0);
            }
            let report = budget.report_ms(t0 + 1_000);
            assert_eq!(
                report.firing(),
                Some(Severity::Page),
                "{target} at {factor}: {:?}",
                report.burns()
            );
        }
        let spent = budget(Objective::new(0.99));
        for call in 0..1_000 {
            spent.record_ms(call % 100 != 0, t0);
        }
        assert_eq!(spent.report_ms(t0 + 1_000).budget_remaining(), 0.0);
    }

    #[test]
    fn the_signal_is_worked_out_again_at_most_once_a_second() {
        let budget = budget(Objective::new(0.9));
        let t0 = 1_000 * MINUTE;
        let signal = |at: u64| budget.signal_ms(at);
        assert_eq!(signal(t0).firing(), None);
        for _ in 0..10 {
            budget.record_ms(false, t0);
        }
        assert_eq!(signal(t0 + 999).firing(), None, "as of a second ago");
        let signal = signal(t0 + 1_000);
        assert!(signal.is_firing(Severity::Page));
        assert!(signal.is_firing(Severity::Ticket));
        assert!(signal.budget_remaining() < 0.0);
    }

    #[test]
    fn alert_windows_too_far_apart_are_refused() {
        // Buckets of a second for the first alert's 10 s window; the
        // second's hour would need 6-minute buckets over 400 days.
        let objective = Objective::new(0.9)
            .over(Duration::from_secs(400 * 86_400))
            .alerts([
                BurnAlert::new(
                    Severity::Page,
                    2.0,
                    Duration::from_secs(60),
                    Duration::from_secs(10),
                ),
                BurnAlert::new(
                    Severity::Ticket,
                    2.0,
                    Duration::from_secs(400 * 86_400),
                    Duration::from_secs(3_600),
                ),
            ]);
        let error = ErrorBudget::new(objective).unwrap_err();
        assert_eq!(error.setting(), "alerts");
    }
}
