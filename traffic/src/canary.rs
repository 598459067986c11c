//! The canary: a weighted split of traffic between a stable and a canary
//! service, judged as it runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::broadcast;

use crate::key::KeyHash;

/// Parts of the traffic a weight is counted in: 10,000 (basis points).
const PARTS: u32 = 10_000;
/// Latency buckets to an octave: each is 2^(1/8), about 9%, wider than
/// the one before, so latencies are compared to within that.
const BUCKETS_PER_OCTAVE: f64 = 8.0;
/// Latency buckets: bucket 0 holds calls under 64 µs, bucket `i` those
/// under `64 µs × 2^(i/8)`; 24 octaves reach about 18 minutes, and the
/// last bucket holds every call slower.
const LATENCY_BUCKETS: usize = 1 + 8 * 24;

/// How a [`Canary`] judges the canary against the stable service, and the
/// steps it promotes through.
///
/// The canary is halted (every call back to the stable service) when,
/// over the calls since its current step began, its error rate is above
/// the stable's by more than [`error_margin`](Self::error_margin) with
/// the confidence asked (a one-sided two-proportion z-test), or its 95th
/// percentile latency is above the stable's by more than
/// [`latency_margin`](Self::latency_margin); either only once each side
/// has made [`min_calls`](Self::min_calls).
///
/// # Example
///
/// ```
/// use palisade_traffic::CanaryPlan;
///
/// let plan = CanaryPlan::new()
///     .steps([0.01, 0.05, 0.25, 1.0])
///     .error_margin(0.005)
///     .latency_margin(0.2)
///     .min_calls(500);
/// # let _ = plan;
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct CanaryPlan {
    steps: Vec<f64>,
    error_margin: f64,
    latency_margin: f64,
    min_calls: u64,
    confidence: f64,
}

impl Default for CanaryPlan {
    fn default() -> Self {
        Self::new()
    }
}

impl CanaryPlan {
    /// Steps of 1%, 10%, 50% and 100%; halted when the error rate is one
    /// point worse with 99% confidence, or the p95 latency 25% worse,
    /// once each side has made 200 calls.
    #[must_use]
    pub fn new() -> Self {
        Self {
            steps: vec![0.01, 0.1, 0.5, 1.0],
            error_margin: 0.01,
            latency_margin: 0.25,
            min_calls: 200,
            confidence: 0.99,
        }
    }

    /// The shares of traffic the canary takes, step by step (each in
    /// `(0, 1]`, rising).
    #[must_use]
    pub fn steps(mut self, steps: impl IntoIterator<Item = f64>) -> Self {
        self.steps = steps.into_iter().collect();
        self
    }

    /// How much higher the canary's error rate may be (0.01: one point).
    #[must_use]
    pub const fn error_margin(mut self, margin: f64) -> Self {
        self.error_margin = margin;
        self
    }

    /// How much slower the canary's p95 may be (0.25: a quarter).
    /// Latencies are compared to within about 9% (the width of the
    /// buckets they are counted in), so a margin below that halts a
    /// canary a bucket slower than the stable.
    #[must_use]
    pub const fn latency_margin(mut self, margin: f64) -> Self {
        self.latency_margin = margin;
        self
    }

    /// Calls each side makes in a step before the canary is judged.
    #[must_use]
    pub const fn min_calls(mut self, calls: u64) -> Self {
        self.min_calls = calls;
        self
    }

    /// How sure the error-rate test must be before it halts: 0.95, 0.99
    /// (the default) or 0.999.
    #[must_use]
    pub const fn confidence(mut self, confidence: f64) -> Self {
        self.confidence = confidence;
        self
    }

    fn validate(&self) -> Result<(), CanaryError> {
        let rising = self.steps.windows(2).all(|pair| pair[0] < pair[1]);
        if self.steps.is_empty()
            || !rising
            || self.steps.iter().any(|&step| !(step > 0.0 && step <= 1.0))
        {
            return Err(CanaryError::Plan(
                "steps must be rising shares within (0, 1]",
            ));
        }
        // Shares are taken in parts of 10,000: a smaller one, or two that
        // round alike, would be a step that changes nothing.
        let in_parts: Vec<u32> = self.steps.iter().map(|&step| parts(step)).collect();
        if in_parts[0] == 0 || in_parts.windows(2).any(|pair| pair[0] == pair[1]) {
            return Err(CanaryError::Plan(
                "steps must be at least 0.0001 (one part in 10,000) apart",
            ));
        }
        if !(self.error_margin >= 0.0 && self.error_margin < 1.0) {
            return Err(CanaryError::Plan("error_margin must be within [0, 1)"));
        }
        if !(self.latency_margin >= 0.0 && self.latency_margin.is_finite()) {
            return Err(CanaryError::Plan("latency_margin must be zero or more"));
        }
        if z_score(self.confidence).is_none() {
            return Err(CanaryError::Plan("confidence must be 0.95, 0.99 or 0.999"));
        }
        Ok(())
    }
}

/// The one-sided critical value for `confidence`.
fn z_score(confidence: f64) -> Option<f64> {
    [(0.95, 1.645), (0.99, 2.326), (0.999, 3.090)]
        .into_iter()
        .find(|&(level, _)| (level - confidence).abs() < 1e-9)
        .map(|(_, z)| z)
}

/// Why a canary was halted, or a plan refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CanaryError {
    /// The plan cannot work: what is wrong with it.
    Plan(&'static str),
    /// The canary is halted; promote it no further.
    Halted,
    /// The canary takes every call already.
    Complete,
}

impl std::fmt::Display for CanaryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Plan(problem) => write!(f, "invalid canary plan: {problem}"),
            Self::Halted => f.write_str("the canary is halted"),
            Self::Complete => f.write_str("the canary takes every call already"),
        }
    }
}

impl std::error::Error for CanaryError {}

/// What a canary did: each is sent to [`Canary::subscribe`]rs.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum CanaryEvent {
    /// It takes this share of the traffic now.
    Promoted {
        /// The share.
        share: f64,
    },
    /// It was halted: every call goes to the stable service.
    Halted {
        /// Why.
        reason: HaltReason,
    },
}

/// Why a canary was halted.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum HaltReason {
    /// Its error rate was worse than the margin allows.
    Errors {
        /// The canary's error rate over the step.
        canary: f64,
        /// The stable service's, over the same calls' time.
        stable: f64,
    },
    /// Its p95 latency was worse than the margin allows.
    Latency {
        /// The canary's p95.
        canary: Duration,
        /// The stable service's.
        stable: Duration,
    },
    /// An operator halted it.
    Operator,
}

/// One side's calls since the step began.
#[derive(Debug)]
struct Side {
    calls: AtomicU64,
    errors: AtomicU64,
    latency: [AtomicU64; LATENCY_BUCKETS],
}

impl Side {
    fn new() -> Self {
        Self {
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn record(&self, error: bool, latency: Duration) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.latency[bucket(latency)].fetch_add(1, Ordering::Relaxed);
    }

    /// Zeroes the counts, errors first: a call recorded between the two
    /// stores may leave an error of its own behind, never the old errors
    /// over the new calls.
    fn reset(&self) {
        self.errors.store(0, Ordering::Relaxed);
        self.calls.store(0, Ordering::Relaxed);
        for bucket in &self.latency {
            bucket.store(0, Ordering::Relaxed);
        }
    }

    /// Calls and errors, the errors never more than the calls (read
    /// apart from them while calls are recorded).
    fn counts(&self) -> (u64, u64) {
        let errors = self.errors.load(Ordering::Relaxed);
        let calls = self.calls.load(Ordering::Relaxed);
        (calls, errors.min(calls))
    }

    /// The upper bound of the bucket holding the 95th percentile; `None`
    /// for no call, or for counters reset while they were read.
    fn p95(&self) -> Option<Duration> {
        // Two passes over the counters, with no copy of them: calls
        // counted between the passes move the rank by a hair at most.
        let count = |bucket: &AtomicU64| bucket.load(Ordering::Relaxed);
        let total: u64 = self.latency.iter().map(count).sum();
        let rank = (total - total / 20).max(1);
        let mut seen = 0;
        for (index, bucket) in self.latency.iter().enumerate() {
            seen += count(bucket);
            if seen >= rank {
                return Some(upper(index));
            }
        }
        None
    }
}

/// The bucket of `latency`: bucket 0 holds calls under 64 µs, bucket
/// `i` those under `64 µs × 2^(i/8)` and not under the bucket before's
/// bound.
fn bucket(latency: Duration) -> usize {
    let ratio = latency.as_secs_f64() / 64e-6;
    if ratio < 1.0 {
        return 0;
    }
    // At least 0, and capped below.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let index = (BUCKETS_PER_OCTAVE * ratio.log2()).floor() as usize + 1;
    index.min(LATENCY_BUCKETS - 1)
}

/// The upper bound of bucket `index`.
fn upper(index: usize) -> Duration {
    let octaves = f64::from(u32::try_from(index).unwrap_or(u32::MAX)) / BUCKETS_PER_OCTAVE;
    Duration::from_secs_f64(64e-6 * octaves.exp2())
}

/// A canary's state, shared by every clone of its handle and its split.
#[derive(Debug)]
struct State {
    plan: CanaryPlan,
    z: f64,
    /// Where the rollout stands, in one word so a promotion and a halt
    /// cannot interleave: see [`Rollout`].
    rollout: AtomicU64,
    stable: Side,
    canary: Side,
    events: broadcast::Sender<CanaryEvent>,
    /// Its OpenTelemetry instruments, once registered.
    #[cfg(feature = "otel")]
    instruments: std::sync::OnceLock<crate::otel::CanaryInstruments>,
}

impl State {
    fn rollout(&self) -> Rollout {
        Rollout::of(self.rollout.load(Ordering::Acquire))
    }

    fn share(&self) -> f64 {
        f64::from(self.rollout().weight) / f64::from(PARTS)
    }
}

/// A canary rollout: the share of traffic the canary takes, how it is
/// doing against the stable service, and the controls (promote, halt).
/// Cheap to clone; every clone the same canary.
///
/// A [`CanarySplit`](crate::CanarySplit) routes by it. A key goes to the
/// canary when its hash falls within the canary's share, so a key stays
/// on its side as the share grows (a user on the canary at 1% is on it at
/// 10%), and never moves back unless the canary is halted.
///
/// # Example
///
/// ```
/// use palisade_traffic::{Canary, CanaryPlan};
///
/// # fn main() -> Result<(), palisade_traffic::CanaryError> {
/// let canary = Canary::new(CanaryPlan::new())?;
/// assert_eq!(canary.share(), 0.01);
/// canary.promote()?;
/// assert_eq!(canary.share(), 0.1);
/// canary.halt();
/// assert_eq!(canary.share(), 0.0);
/// assert!(canary.promote().is_err());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Canary {
    state: Arc<State>,
}

/// A rollout's step and the canary's share at it (in parts of 10,000), as
/// one word: the step in the high half, the share in the low. A halted
/// canary is at step [`Rollout::HALTED`] with no share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rollout {
    step: u32,
    weight: u32,
}

impl Rollout {
    const HALTED: u32 = u32::MAX;

    const fn word(self) -> u64 {
        ((self.step as u64) << 32) | self.weight as u64
    }

    #[allow(clippy::cast_possible_truncation)]
    const fn of(word: u64) -> Self {
        Self {
            step: (word >> 32) as u32,
            weight: word as u32,
        }
    }

    const fn is_halted(self) -> bool {
        self.step == Self::HALTED
    }
}

/// A share as parts of 10,000.
fn parts(share: f64) -> u32 {
    // Within 0..=10,000.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let parts = (share * f64::from(PARTS)).round() as u32;
    parts.min(PARTS)
}

impl Canary {
    /// A canary at `plan`'s first step.
    ///
    /// # Errors
    ///
    /// [`CanaryError::Plan`] when the plan cannot work.
    pub fn new(plan: CanaryPlan) -> Result<Self, CanaryError> {
        plan.validate()?;
        let z = z_score(plan.confidence).unwrap_or(2.326);
        let first = parts(plan.steps[0]);
        Ok(Self {
            state: Arc::new(State {
                plan,
                z,
                rollout: AtomicU64::new(
                    Rollout {
                        step: 0,
                        weight: first,
                    }
                    .word(),
                ),
                stable: Side::new(),
                canary: Side::new(),
                events: broadcast::channel(64).0,
                #[cfg(feature = "otel")]
                instruments: std::sync::OnceLock::new(),
            }),
        })
    }

    /// The share of traffic the canary takes now.
    #[must_use]
    pub fn share(&self) -> f64 {
        self.state.share()
    }

    /// Whether it was halted.
    #[must_use]
    pub fn is_halted(&self) -> bool {
        self.state.rollout().is_halted()
    }

    /// Events as they happen: promotions and the halt.
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<CanaryEvent> {
        self.state.events.subscribe()
    }

    /// Moves to the plan's next step; the judging starts again over the
    /// calls from now on. Returns the new share.
    ///
    /// # Errors
    ///
    /// [`CanaryError::Halted`] once halted, [`CanaryError::Complete`] at
    /// the last step.
    pub fn promote(&self) -> Result<f64, CanaryError> {
        let state = &*self.state;
        let now = state.rollout();
        if now.is_halted() {
            return Err(CanaryError::Halted);
        }
        let step = now.step + 1;
        let Some(&share) = usize::try_from(step)
            .ok()
            .and_then(|step| state.plan.steps.get(step))
        else {
            return Err(CanaryError::Complete);
        };
        let next = Rollout {
            step,
            weight: parts(share),
        };
        // The step and the share move together, and only from where this
        // promotion found them: a halt or another promotion in between
        // makes it fail, and their answer stands.
        if let Err(found) = state.rollout.compare_exchange(
            now.word(),
            next.word(),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            let found = Rollout::of(found);
            return if found.is_halted() {
                Err(CanaryError::Halted)
            } else {
                Ok(f64::from(found.weight) / f64::from(PARTS))
            };
        }
        // At a step that takes every call the stable side gets none: the
        // canary is judged against the stable's calls of the step before.
        if next.weight < PARTS {
            state.stable.reset();
        }
        state.canary.reset();
        self.happened(CanaryEvent::Promoted { share });
        Ok(share)
    }

    /// Whether the step has been judged: each side made the plan's
    /// [`min_calls`](CanaryPlan::min_calls), and at least one.
    fn judged(&self) -> bool {
        let state = &*self.state;
        let enough = state.plan.min_calls.max(1);
        state.canary.counts().0 >= enough && state.stable.counts().0 >= enough
    }

    /// Promotes the canary a step every `every` from now (the schedule),
    /// on a task that stops when it is halted, at its last step, or once
    /// every handle and split of it is gone. Each step is judged afresh,
    /// so a canary worse than the stable service is halted within a step;
    /// a step not judged yet (a side short of
    /// [`min_calls`](CanaryPlan::min_calls)) is not promoted from until it
    /// is, so a quiet hour never promotes a canary nobody has used. A
    /// step longer than a year is a year (a longer one overflowed the
    /// clock, and the schedule's task died at once).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, or when `every` is zero.
    pub fn promote_every(&self, every: Duration) {
        assert!(!every.is_zero(), "a schedule's steps must be apart");
        let every = every.min(Duration::from_secs(365 * 86_400));
        let state = Arc::downgrade(&self.state);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                ticks.tick().await;
                let Some(state) = state.upgrade() else { return };
                let canary = Self { state };
                if canary.is_halted() {
                    return;
                }
                if !canary.judged() {
                    continue;
                }
                // The step's last judging, latency included, before the
                // next: a canary found worse is halted, not promoted.
                if let Some(reason) = canary.verdict(true) {
                    canary.halt_for(reason);
                    return;
                }
                if canary.promote().is_err() {
                    return;
                }
            }
        });
    }

    /// Sends every call to the stable service from now on.
    pub fn halt(&self) {
        self.halt_for(HaltReason::Operator);
    }

    fn halt_for(&self, reason: HaltReason) {
        let halted = Rollout {
            step: Rollout::HALTED,
            weight: 0,
        };
        let before = Rollout::of(self.state.rollout.swap(halted.word(), Ordering::AcqRel));
        if before.is_halted() {
            return;
        }
        self.happened(CanaryEvent::Halted { reason });
    }

    /// Tells subscribers (and the metrics) of `event`.
    fn happened(&self, event: CanaryEvent) {
        #[cfg(feature = "otel")]
        if let Some(instruments) = self.state.instruments.get() {
            instruments.decided(&event);
        }
        // No subscriber is not an error.
        let _ = self.state.events.send(event);
    }

    /// Counts the split's calls by side and result, its promotions and
    /// halts, and reports its share, with OpenTelemetry (feature `otel`);
    /// `name` becomes the `canary` attribute. Once per canary and its
    /// clones; later calls change nothing. See the [`otel`](crate::otel)
    /// module for the names.
    #[cfg(feature = "otel")]
    pub fn instrument(&self, meter: &opentelemetry::metrics::Meter, name: impl Into<String>) {
        let state = Arc::downgrade(&self.state);
        let share = move || Some(state.upgrade()?.share());
        let _ = self
            .state
            .instruments
            .get_or_init(|| crate::otel::CanaryInstruments::new(meter, name.into(), share));
    }

    /// Whether a request with `key` goes to the canary.
    pub(crate) fn takes(&self, key: Option<KeyHash>) -> bool {
        let weight = self.state.rollout().weight;
        if weight == 0 {
            return false;
        }
        let point = match key {
            // The hash's low bits, spread over 10,000 parts.
            #[allow(clippy::cast_possible_truncation)]
            Some(key) => (((key.get() & 0xffff_ffff) * u64::from(PARTS)) >> 32) as u32,
            None => fastrand::u32(..PARTS),
        };
        point < weight
    }

    /// Counts a call's outcome on its side; judges the canary with each
    /// of its calls.
    pub(crate) fn record(&self, on_canary: bool, error: bool, latency: Duration) {
        let state = &*self.state;
        #[cfg(feature = "otel")]
        if let Some(instruments) = state.instruments.get() {
            instruments.called(on_canary, error);
        }
        if on_canary {
            state.canary.record(error, latency);
            if let Some(reason) = self.verdict(false) {
                self.halt_for(reason);
            }
        } else {
            state.stable.record(error, latency);
        }
    }

    /// Why the canary should be halted, if it should.
    /// `every_latency`: compare the latencies now, not only at every
    /// 64th canary call.
    fn verdict(&self, every_latency: bool) -> Option<HaltReason> {
        let state = &*self.state;
        let plan = &state.plan;
        let (canary_calls, canary_errors) = state.canary.counts();
        let (stable_calls, stable_errors) = state.stable.counts();
        // Nothing to judge against without a call on each side.
        let enough = plan.min_calls.max(1);
        if canary_calls < enough || stable_calls < enough {
            return None;
        }
        #[allow(clippy::cast_precision_loss)]
        let (n1, n2) = (canary_calls as f64, stable_calls as f64);
        #[allow(clippy::cast_precision_loss)]
        let (p1, p2) = (canary_errors as f64 / n1, stable_errors as f64 / n2);
        let spread = (p1 * (1.0 - p1) / n1 + p2 * (1.0 - p2) / n2).sqrt();
        let excess = p1 - p2 - plan.error_margin;
        if excess > 0.0 && (spread == 0.0 || excess / spread > state.z) {
            return Some(HaltReason::Errors {
                canary: p1,
                stable: p2,
            });
        }
        // The quantiles cost a pass over the buckets: every 64th call.
        // A side reset between the passes of its p95 reads none.
        if (every_latency || canary_calls % 64 == 0)
            && let (Some(canary), Some(stable)) = (state.canary.p95(), state.stable.p95())
            && canary.as_secs_f64() > stable.as_secs_f64() * (1.0 + plan.latency_margin)
        {
            return Some(HaltReason::Latency { canary, stable });
        }
        None
    }

    /// The calls each side made in this step, and their errors:
    /// `((stable calls, errors), (canary calls, errors))`.
    #[must_use]
    pub fn counts(&self) -> ((u64, u64), (u64, u64)) {
        (self.state.stable.counts(), self.state.canary.counts())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_that_cannot_work_are_refused() {
        assert!(CanaryPlan::new().validate().is_ok());
        for plan in [
            CanaryPlan::new().steps([]),
            CanaryPlan::new().steps([0.5, 0.1]),
            CanaryPlan::new().steps([0.0, 1.0]),
            CanaryPlan::new().steps([0.5, 1.5]),
            CanaryPlan::new().steps([0.000_01, 1.0]),
            CanaryPlan::new().steps([0.5, 0.500_01]),
            CanaryPlan::new().error_margin(-0.1),
            CanaryPlan::new().latency_margin(f64::INFINITY),
            CanaryPlan::new().confidence(0.5),
        ] {
            assert!(matches!(Canary::new(plan), Err(CanaryError::Plan(_))));
        }
    }

    #[test]
    fn latency_buckets_are_eighth_octaves() {
        assert_eq!(bucket(Duration::ZERO), 0);
        assert_eq!(bucket(Duration::from_micros(63)), 0);
        for index in 1..LATENCY_BUCKETS - 1 {
            let bound = upper(index);
            assert!(bucket(bound.mul_f64(0.99)) <= index, "{index}");
            assert!(bucket(bound.mul_f64(1.01)) > index, "{index}");
        }
    }

    #[test]
    fn a_key_stays_on_the_canary_as_its_share_grows() {
        let canary = Canary::new(CanaryPlan::new().steps([0.1, 0.5, 1.0])).unwrap();
        let keys: Vec<KeyHash> = (0_u32..2_000)
            .map(|key| KeyHash::of(&key.to_le_bytes()))
            .collect();
        let mut on: Vec<bool> = keys.iter().map(|&key| canary.takes(Some(key))).collect();
        let share = |on: &[bool]| on.iter().filter(|&&on| on).count();
        assert!(
            (150..250).contains(&share(&on)),
            "about a tenth: {}",
            share(&on)
        );
        while canary.promote().is_ok() {
            let now: Vec<bool> = keys.iter().map(|&key| canary.takes(Some(key))).collect();
            assert!(on.iter().zip(&now).all(|(&before, &now)| !before || now));
            on = now;
        }
        assert_eq!(share(&on), 2_000);
    }
}
