//! The breaker's state machine: closed, open, half-open, and the manual
//! states, in one atomic word.
//!
//! The whole state (kind, generation, and the open deadline or the
//! half-open counters) lives in one `AtomicU64`, so every transition is a
//! single compare-and-swap: under contention exactly one caller makes it,
//! the others see the new state and act on it. The generation goes up with
//! every transition; a permit remembers the generation it was granted in,
//! so an outcome that arrives after a transition (a late call from a
//! previous cycle) is ignored instead of counted in the wrong one.
//!
//! Half-open probes each hold a slot stamped with their start, beside the
//! word, so a probe that runs longer than the max wait is found however
//! many probes came and went before it.
//!
//! Time is given as `now` by the caller, so the machine runs under paused
//! tokio time or in a property test without a runtime. Callers' readings
//! may disagree by a little (two threads read the clock a millisecond
//! apart): a reading older than the state it meets never trips anything.

use std::fmt;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::error::Open;
use crate::sync::{AtomicU32, AtomicU64, Ordering};
use crate::window::{Counts, Window};
use palisade_hints::share::{Handle, Held, Shared};
use tokio::sync::broadcast;

const KIND_SHIFT: u32 = 61;
const GEN_SHIFT: u32 = 40;
const GEN_MASK: u64 = (1 << 21) - 1;
const PAYLOAD_MASK: u64 = (1 << 40) - 1;
/// Half-open payload: probes issued (bits 8..16) and successes (0..8).
const ISSUED_SHIFT: u32 = 8;
const SUCCESS_SHIFT: u32 = 0;
/// A held probe slot: this bit, the generation (bits 40..61) and the
/// probe's start in milliseconds (0..40); 0 is a free slot.
const SLOT_HELD: u64 = 1 << 63;

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Calls pass and are counted.
    Closed,
    /// Calls are refused until the open duration has passed.
    Open,
    /// A limited number of probe calls pass; their outcome decides.
    HalfOpen,
    /// Refused by an operator until [`CircuitBreaker::reset`].
    ForcedOpen,
    /// Everything passes and nothing is counted.
    Disabled,
    /// Calls pass and are counted, but the breaker never opens.
    MetricsOnly,
}

impl State {
    const fn from_bits(bits: u64) -> Self {
        match bits {
            0 => Self::Closed,
            1 => Self::Open,
            2 => Self::HalfOpen,
            3 => Self::ForcedOpen,
            4 => Self::Disabled,
            _ => Self::MetricsOnly,
        }
    }

    const fn bits(self) -> u64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
            Self::ForcedOpen => 3,
            Self::Disabled => 4,
            Self::MetricsOnly => 5,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half-open",
            Self::ForcedOpen => "forced open",
            Self::Disabled => "disabled",
            Self::MetricsOnly => "metrics only",
        })
    }
}

/// The decoded state word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Word(u64);

impl Word {
    const fn new(state: State, generation: u64, payload: u64) -> Self {
        Self(
            (state.bits() << KIND_SHIFT)
                | ((generation & GEN_MASK) << GEN_SHIFT)
                | (payload & PAYLOAD_MASK),
        )
    }

    const fn half_open(generation: u64, issued: u64, successes: u64) -> Self {
        Self::new(
            State::HalfOpen,
            generation,
            (issued << ISSUED_SHIFT) | (successes << SUCCESS_SHIFT),
        )
    }

    const fn state(self) -> State {
        State::from_bits(self.0 >> KIND_SHIFT)
    }

    const fn generation(self) -> u64 {
        (self.0 >> GEN_SHIFT) & GEN_MASK
    }

    const fn payload(self) -> u64 {
        self.0 & PAYLOAD_MASK
    }

    const fn issued(self) -> u64 {
        (self.payload() >> ISSUED_SHIFT) & 0xff
    }

    const fn successes(self) -> u64 {
        (self.payload() >> SUCCESS_SHIFT) & 0xff
    }
}

/// The value of a probe slot held by a probe of `generation` that began at
/// `started_ms`.
const fn slot_value(generation: u64, started_ms: u64) -> u64 {
    let started_ms = if started_ms < PAYLOAD_MASK {
        started_ms
    } else {
        PAYLOAD_MASK
    };
    SLOT_HELD | ((generation & GEN_MASK) << GEN_SHIFT) | started_ms
}

/// Whether a probe slot holds a probe of `generation`.
const fn slot_held_by(value: u64, generation: u64) -> bool {
    value & SLOT_HELD != 0 && (value >> GEN_SHIFT) & GEN_MASK == generation & GEN_MASK
}

/// How a call ended, as the classifier sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// It worked.
    Success,
    /// It failed in a way that says the dependency is unwell.
    Failure,
    /// It says nothing about the dependency (a client error, a
    /// cancellation): not counted.
    Ignored,
}

/// The rates over the current window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metrics {
    /// The state.
    pub state: State,
    /// Calls, failures and slow calls in the window.
    pub counts: Counts,
}

impl Metrics {
    /// Failures over calls, 0 when there are none.
    #[must_use]
    pub fn failure_rate(&self) -> f64 {
        ratio(self.counts.failures, self.counts.calls)
    }

    /// Slow calls over calls, 0 when there are none.
    #[must_use]
    pub fn slow_call_rate(&self) -> f64 {
        ratio(self.counts.slow, self.counts.calls)
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Aligned to a cache line, so the reference counts before it in the
/// `Arc` (written by every clone and drop) share no line with what each
/// call reads.
#[derive(Debug)]
#[repr(align(64))]
pub(crate) struct Inner {
    config: Config,
    base: Instant,
    word: AtomicU64,
    /// One slot per half-open permit: the start of the probe holding it.
    probes: Box<[AtomicU64]>,
    window: Window,
    /// Consecutive re-openings from half-open, for the backoff.
    reopens: AtomicU32,
    /// Whether a closed call needs the time: for slow calls or a
    /// time-based window. Without it, the closed path never reads a clock.
    needs_clock: bool,
    /// Every transition, for subscribers.
    transitions: broadcast::Sender<Transition>,
    /// OpenTelemetry instruments, once registered.
    #[cfg(all(feature = "otel", not(palisade_loom)))]
    instruments: std::sync::OnceLock<crate::otel::Instruments>,
    /// Where this breaker's own openings and closings go once it has
    /// joined a fleet ([`crate::fleet`]).
    #[cfg(all(feature = "redis", not(palisade_loom)))]
    fleet: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<Own>>,
}

/// A transition this breaker made on its own calls' outcomes, as its
/// fleet link is told of it (not the fleet's own, nor an operator's).
#[cfg(all(feature = "redis", not(palisade_loom)))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Own {
    /// Opened (from closed, or from half-open when a probe failed) until
    /// this instant.
    Opened(Instant),
    /// Half-opened: its first probe has started.
    HalfOpened,
    /// Closed from half-open: the probes succeeded.
    Closed,
}

/// A change of state, as sent to [`CircuitBreaker::subscribe`]rs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The state left.
    pub from: State,
    /// The state entered.
    pub to: State,
}

/// How many transitions a slow subscriber may fall behind before it misses
/// some (it is told how many it missed).
const TRANSITION_BACKLOG: usize = 64;

/// Reads a clock at most once, and only if asked.
struct LazyNow<F> {
    clock: F,
    now: Option<Instant>,
}

impl<F: Fn() -> Instant> LazyNow<F> {
    const fn new(clock: F) -> Self {
        Self { clock, now: None }
    }

    fn get(&mut self) -> Instant {
        *self.now.get_or_insert_with(&self.clock)
    }
}

/// A circuit breaker: shared state behind an `Arc`, cheap to clone.
///
/// Ask it for a [`Permit`] before each call with
/// [`try_acquire`](Self::try_acquire); report how the call went with
/// [`Permit::record`]. A permit dropped without a record (a cancelled call)
/// gives back its half-open probe slot and counts nothing.
///
/// # Example
///
/// ```
/// use std::time::{Duration, Instant};
/// use palisade_circuit_breaker::{CircuitBreaker, Config, Outcome, State};
///
/// let breaker = CircuitBreaker::new(
///     Config::builder().sliding_window(palisade_circuit_breaker::SlidingWindow::Count(4))
///         .minimum_calls(4).jitter(0.0).open_duration(Duration::from_secs(1)).build()?,
/// );
/// let start = Instant::now();
/// for _ in 0..4 {
///     let permit = breaker.try_acquire(start)?;
///     permit.record(Outcome::Failure, start);
/// }
/// assert_eq!(breaker.state(), State::Open);
/// let open = breaker.try_acquire(start).unwrap_err();
/// assert_eq!(open.retry_after(), Some(Duration::from_secs(1)));
///
/// // After the open duration, one probe goes through; its success closes.
/// let later = start + Duration::from_secs(1);
/// let probe = breaker.try_acquire(later)?;
/// assert!(breaker.try_acquire(later).is_err(), "one probe at a time");
/// probe.record(Outcome::Success, later);
/// assert_eq!(breaker.state(), State::Closed);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    /// A clone is a new holder, and a service that keeps calling through
    /// one gets a count of its own for its permits: see [`Shared`].
    inner: Shared<Inner>,
}

/// What a permit lets its call do to the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Counted in the window (closed or metrics-only).
    Counted,
    /// A half-open probe, holding this probe slot (none if every slot was
    /// taken in a race, which the slots' count makes impossible).
    Probe(Option<u8>),
    /// Passed while disabled: counts nothing.
    Untracked,
}

/// The right to make one call, granted by [`CircuitBreaker::try_acquire`].
///
/// Record the call's outcome with [`record`](Self::record). Dropping the
/// permit unrecorded (the call was cancelled) counts nothing and, for a
/// half-open probe, frees the probe slot for another caller.
#[derive(Debug)]
#[must_use = "a permit records nothing unless its outcome is recorded"]
pub struct Permit {
    inner: Held<Inner>,
    /// The generation granted in and the role, in one word (see
    /// [`Ticket`]).
    ticket: Ticket,
    /// When the call began, in nanoseconds since the breaker's start;
    /// [`NOT_READ`] unless slow calls are counted or the window is
    /// time-based.
    started_ns: u64,
}

/// A permit without its handle on the breaker: what the breaker decided,
/// before the caller says how the permit holds the breaker. It gives
/// nothing back when dropped (a probe's slot stays taken), so it becomes a
/// [`Permit`] at once, before anything that can panic.
#[derive(Debug)]
#[must_use = "a grant dropped before it is a permit keeps a probe's slot"]
pub(crate) struct Grant {
    ticket: Ticket,
    started_ns: u64,
}

impl Grant {
    /// The permit, holding the breaker by `inner`.
    #[inline(always)]
    pub(crate) const fn permit(self, inner: Held<Inner>) -> Permit {
        Permit {
            inner,
            ticket: self.ticket,
            started_ns: self.started_ns,
        }
    }
}

/// `Permit::started_ns` when the clock was not read.
const NOT_READ: u64 = u64::MAX;

/// A permit's generation (bits 0..32) and role (32..64) in one word: a
/// permit is written and moved whole, never a byte at a time (a byte
/// written and then read back as part of a word stalls the load).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ticket(u64);

impl Ticket {
    const ROLE_SHIFT: u32 = 32;
    const COUNTED: u64 = 0;
    const UNTRACKED: u64 = 1;
    /// A probe: this plus its slot, or [`Self::NO_SLOT`] without one.
    const PROBE: u64 = 2;
    const NO_SLOT: u64 = 256;

    const fn new(generation: u64, role: Role) -> Self {
        let role = match role {
            Role::Counted => Self::COUNTED,
            Role::Untracked => Self::UNTRACKED,
            Role::Probe(Some(slot)) => Self::PROBE + slot as u64,
            Role::Probe(None) => Self::PROBE + Self::NO_SLOT,
        };
        Self((generation & GEN_MASK) | (role << Self::ROLE_SHIFT))
    }

    const fn generation(self) -> u64 {
        self.0 & GEN_MASK
    }

    const fn role(self) -> Role {
        match self.0 >> Self::ROLE_SHIFT {
            Self::COUNTED => Role::Counted,
            Self::UNTRACKED => Role::Untracked,
            probe => {
                let slot = probe - Self::PROBE;
                Role::Probe(if slot < Self::NO_SLOT {
                    Some(slot as u8)
                } else {
                    None
                })
            }
        }
    }

    /// The same generation with nothing left to give back.
    const fn settled(self) -> Self {
        Self::new(self.generation(), Role::Untracked)
    }
}

impl CircuitBreaker {
    /// A closed breaker.
    #[must_use]
    pub fn new(config: Config) -> Self {
        Self::new_at(config, Instant::now())
    }

    /// A closed breaker whose clock starts at `start`: the times given to
    /// it later are measured from there (in whole milliseconds). Use it
    /// with paused or simulated time.
    #[must_use]
    pub fn new_at(config: Config, start: Instant) -> Self {
        let needs_clock = config_needs_clock(&config);
        Self::from_shared(Shared::new(Inner {
            window: Window::new(config.window),
            probes: (0..config.half_open_permits)
                .map(|_| AtomicU64::new(0))
                .collect(),
            config,
            base: start,
            word: AtomicU64::new(Word::new(State::Closed, 0, 0).0),
            reopens: AtomicU32::new(0),
            needs_clock,
            transitions: broadcast::channel(TRANSITION_BACKLOG).0,
            #[cfg(all(feature = "otel", not(palisade_loom)))]
            instruments: std::sync::OnceLock::new(),
            #[cfg(all(feature = "redis", not(palisade_loom)))]
            fleet: std::sync::OnceLock::new(),
        }))
    }

    /// Gives this breaker the process's lifetime: its clones, the layers
    /// and services holding them, and the permits of their calls then
    /// reach it by a plain reference, with no reference count to raise
    /// and lower on every call (a counted breaker's services raise their
    /// own count once they keep calling, the breaker's when cloned for
    /// each call, as axum's router does).
    ///
    /// Leak a breaker built once at start-up and used until the process
    /// ends. Its memory (a few hundred bytes plus the window) is never
    /// freed, so never leak one per request, per key or per test.
    /// Clones made before the leak stay counted; both kinds are the same
    /// breaker. A breaker leaked again is unchanged.
    ///
    /// ```
    /// use palisade_circuit_breaker::{CircuitBreaker, CircuitBreakerLayer, Config};
    /// use tower::{ServiceBuilder, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let breaker = CircuitBreaker::new(Config::default()).leak();
    /// let service = ServiceBuilder::new()
    ///     .layer(CircuitBreakerLayer::from_breaker(breaker.clone()))
    ///     .service(service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) }));
    /// # drop(service);
    /// # }
    /// ```
    #[must_use]
    pub fn leak(self) -> Self {
        Self::from_shared(self.inner.leak())
    }

    const fn from_shared(inner: Shared<Inner>) -> Self {
        Self { inner }
    }

    /// Called through by a service: its second call gives this handle a
    /// count of its own (see [`Shared`]).
    #[inline(always)]
    pub(crate) fn called(&mut self) {
        self.inner.called();
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Lets a call through, or says how long the circuit stays open.
    ///
    /// An open breaker whose open duration has passed turns half-open here,
    /// and the first caller gets the first probe permit.
    ///
    /// # Errors
    ///
    /// [`Open`] while the circuit is open, forced open, or half-open with
    /// every probe slot taken.
    pub fn try_acquire(&self, now: Instant) -> Result<Permit, Open> {
        self.grant(now).map(|grant| grant.permit(self.held()))
    }

    /// [`try_acquire`](Self::try_acquire)'s answer, the permit's handle
    /// left to the caller; a refusal is counted.
    fn grant(&self, now: Instant) -> Result<Grant, Open> {
        let decision = self.decide(now);
        #[cfg(all(feature = "otel", not(palisade_loom)))]
        if decision.is_err()
            && let Some(instruments) = self.inner.instruments.get()
        {
            instruments.rejected();
        }
        decision
    }

    fn decide(&self, now: Instant) -> Result<Grant, Open> {
        let inner = &*self.inner;
        let now_ms = inner.millis(now);
        let mut word = inner.load();
        loop {
            let generation = word.generation();
            match word.state() {
                State::Closed | State::MetricsOnly => {
                    return Ok(self.grant_of(generation, Role::Counted, Some(now)));
                }
                State::Disabled => {
                    return Ok(self.grant_of(generation, Role::Untracked, Some(now)));
                }
                State::ForcedOpen => return Err(Open::new(None)),
                State::Open => {
                    let until = word.payload();
                    if now_ms < until {
                        return Err(Open::new(Some(Duration::from_millis(until - now_ms))));
                    }
                    let next = Word::half_open(generation + 1, 1, 0);
                    match inner.swap(word, next) {
                        Ok(()) => {
                            // The probe's slot before the news: a log sink
                            // or exporter that panics must not leave a
                            // probe counted with no slot, which no wait
                            // would ever end.
                            let probe = self.probe(next.generation(), now_ms, now);
                            inner.transitioned(State::Open, State::HalfOpen);
                            #[cfg(all(feature = "redis", not(palisade_loom)))]
                            inner.tell_fleet(Own::HalfOpened);
                            return Ok(probe);
                        }
                        Err(current) => word = current,
                    }
                }
                State::HalfOpen => {
                    if word.issued() < u64::from(inner.config.half_open_permits) {
                        let next = Word(word.0 + (1 << ISSUED_SHIFT));
                        match inner.swap(word, next) {
                            Ok(()) => return Ok(self.probe(generation, now_ms, now)),
                            Err(current) => word = current,
                        }
                        continue;
                    }
                    // Every slot is taken: wait for the oldest probe, or
                    // count it as failed once it has run too long. A
                    // reading older than its start has waited nothing.
                    let max_wait = inner.config.half_open_max_wait_ms();
                    let elapsed = inner
                        .oldest_probe(generation)
                        .map_or(0, |started| now_ms.saturating_sub(started));
                    if elapsed < max_wait {
                        return Err(Open::new(Some(Duration::from_millis(max_wait - elapsed))));
                    }
                    word = match inner.trip(word, now_ms, None) {
                        Ok(()) => inner.load(),
                        Err(current) => current,
                    };
                }
            }
        }
    }

    /// Lets a call through like [`try_acquire`](Self::try_acquire), reading
    /// `clock` only when the answer depends on the time: a closed breaker
    /// with a count-based window and no slow-call rule never reads it.
    // Inlined into the response future's constructor: a grant returned
    // through memory is written field by field and read back whole, and
    // that read waits for the writes (a store-forwarding stall).
    #[inline(always)]
    pub(crate) fn grant_with(&self, clock: impl Fn() -> Instant) -> Result<Grant, Open> {
        let word = self.inner.load();
        match word.state() {
            State::Closed | State::MetricsOnly if !self.inner.needs_clock => {
                Ok(self.grant_of(word.generation(), Role::Counted, None))
            }
            State::Disabled => Ok(self.grant_of(word.generation(), Role::Untracked, None)),
            _ => self.grant(clock()),
        }
    }

    /// A probe's grant of `generation`, in a probe slot stamped `now_ms`.
    fn probe(&self, generation: u64, now_ms: u64, now: Instant) -> Grant {
        let slot = self.inner.claim_probe_slot(generation, now_ms);
        self.grant_of(generation, Role::Probe(slot), Some(now))
    }

    #[inline(always)]
    fn grant_of(&self, generation: u64, role: Role, now: Option<Instant>) -> Grant {
        Grant {
            ticket: Ticket::new(generation, role),
            started_ns: now.map_or(NOT_READ, |now| self.inner.nanos(now)),
        }
    }

    /// What a permit of this breaker keeps of it: on the service's own
    /// count, if it has one.
    #[inline(always)]
    pub(crate) fn held(&self) -> Held<Inner> {
        self.inner.held()
    }

    /// What a permit keeps of this breaker, taken from it: no count raised
    /// for a breaker made for this one call (a keyed layer's).
    #[inline(always)]
    pub(crate) fn into_held(self) -> Held<Inner> {
        self.inner.into_held()
    }

    /// The current state. An open breaker whose duration has passed shows
    /// as open until a call arrives and makes it half-open.
    #[must_use]
    pub fn state(&self) -> State {
        self.inner.state()
    }

    /// Whether a probe of a half-open breaker is under way at `now`, and
    /// not yet past the half-open maximum wait (after which the next call
    /// counts it as failed).
    pub(crate) fn probing(&self, now: Instant) -> bool {
        let inner = &*self.inner;
        let word = inner.load();
        word.state() == State::HalfOpen
            && inner
                .oldest_probe(word.generation())
                .is_some_and(|started| {
                    inner.millis(now).saturating_sub(started) < inner.config.half_open_max_wait_ms()
                })
    }

    /// Until when an open breaker stays open, as it stands.
    pub(crate) fn open_until(&self) -> Option<Instant> {
        let word = self.inner.load();
        (word.state() == State::Open)
            .then(|| self.inner.base + Duration::from_millis(word.payload()))
    }

    /// The state and the window's counts at `now`.
    #[must_use]
    pub fn metrics(&self, now: Instant) -> Metrics {
        Metrics {
            state: self.state(),
            counts: self.inner.window.counts(self.inner.millis(now)),
        }
    }

    /// Every transition from now on, as it happens: to alert, to log in
    /// your own format, or to export. Each is also a `tracing` event
    /// (target `palisade_circuit_breaker`, level INFO).
    ///
    /// A subscriber that falls more than 64 transitions behind misses the
    /// oldest and is told so by `recv`.
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<Transition> {
        self.inner.transitions.subscribe()
    }

    /// Registers this breaker's OpenTelemetry metrics with `meter`, under
    /// the attribute `breaker = name` (feature `otel`): calls by outcome,
    /// rejections, transitions, and the state as a gauge. Once per breaker;
    /// later calls change nothing.
    #[cfg(all(feature = "otel", not(palisade_loom)))]
    pub fn instrument(&self, meter: &opentelemetry::metrics::Meter, name: impl Into<String>) {
        let weak = std::sync::Arc::downgrade(self.inner.as_arc());
        let _ = self
            .inner
            .instruments
            .get_or_init(|| crate::otel::Instruments::new(meter, name.into(), weak));
    }

    /// Refuses every call until [`reset`](Self::reset).
    pub fn force_open(&self) {
        self.inner.set(State::ForcedOpen);
    }

    /// Lets every call through and counts nothing, until
    /// [`reset`](Self::reset).
    pub fn disable(&self) {
        self.inner.set(State::Disabled);
    }

    /// Counts calls but never opens, until [`reset`](Self::reset).
    pub fn metrics_only(&self) {
        self.inner.set(State::MetricsOnly);
    }

    /// Closes the breaker with an empty window.
    pub fn reset(&self) {
        self.inner.set(State::Closed);
    }
}

/// What the fleet link does to the breaker ([`crate::fleet`]): never on
/// a call's path, and never told back to the link.
#[cfg(all(feature = "redis", not(palisade_loom)))]
impl CircuitBreaker {
    /// Starts telling `link` of this breaker's own transitions; `false`
    /// when it has a link already.
    pub(crate) fn join_fleet(&self, link: tokio::sync::mpsc::UnboundedSender<Own>) -> bool {
        self.inner.fleet.set(link).is_ok()
    }

    pub(crate) fn downgrade(&self) -> std::sync::Weak<Inner> {
        std::sync::Arc::downgrade(self.inner.as_arc())
    }

    pub(crate) fn upgrade(weak: &std::sync::Weak<Inner>) -> Option<Self> {
        weak.upgrade()
            .map(|inner| Self::from_shared(Shared::from_arc(inner)))
    }

    /// Opens, or stays open, until `until`, as the fleet says: from
    /// closed, open or half-open (a probe of this breaker in flight then
    /// counts for nothing). An operator's state, and metrics-only, are
    /// left as they are.
    pub(crate) fn open_for_fleet(&self, until: Instant) {
        let inner = &*self.inner;
        let until_ms = inner.millis(until).min(PAYLOAD_MASK);
        let mut word = inner.load();
        loop {
            let from = word.state();
            if !matches!(from, State::Closed | State::Open | State::HalfOpen)
                || (from == State::Open && word.payload() == until_ms)
            {
                return;
            }
            let next = Word::new(State::Open, word.generation() + 1, until_ms);
            match inner.swap(word, next) {
                Ok(()) => break,
                Err(current) => word = current,
            }
        }
        if word.state() != State::Open {
            inner.transitioned(word.state(), State::Open);
        }
    }

    /// Closes with an empty window from open or half-open: a probe
    /// elsewhere in the fleet succeeded.
    pub(crate) fn close_for_fleet(&self) {
        let inner = &*self.inner;
        let mut word = inner.load();
        loop {
            if !matches!(word.state(), State::Open | State::HalfOpen) {
                return;
            }
            // Emptied before "closed" is seen (see `Inner::close`).
            inner.window.reset();
            let next = Word::new(State::Closed, word.generation() + 1, 0);
            match inner.swap(word, next) {
                Ok(()) => break,
                Err(current) => word = current,
            }
        }
        inner.reopens.store(0, Ordering::Relaxed);
        inner.transitioned(word.state(), State::Closed);
    }
}

impl Inner {
    #[inline]
    fn load(&self) -> Word {
        Word(self.word.load(Ordering::Acquire))
    }

    /// One compare-and-swap from `current` to `next`; the state seen
    /// instead on failure.
    fn swap(&self, current: Word, next: Word) -> Result<(), Word> {
        self.word
            .compare_exchange(current.0, next.0, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| ())
            .map_err(Word)
    }

    fn millis(&self, now: Instant) -> u64 {
        duration_ms(now.saturating_duration_since(self.base))
    }

    /// `now` in nanoseconds since the breaker's start (saturating, so
    /// never [`NOT_READ`] before 584 years).
    fn nanos(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.base).as_nanos())
            .unwrap_or(NOT_READ - 1)
            .min(NOT_READ - 1)
    }

    /// Opens from `current` (closed or half-open), for the backoff's
    /// duration or longer if the dependency's `hint` asks, bounded and
    /// jittered (see [`Config::open_ms`]).
    fn trip(&self, current: Word, now_ms: u64, hint: Option<Duration>) -> Result<(), Word> {
        let from = current.state();
        let reopens = match from {
            State::HalfOpen => self.reopens.load(Ordering::Relaxed).saturating_add(1),
            _ => 0,
        };
        let open_ms = self.config.open_ms(reopens, hint, fastrand::f64());
        let until = now_ms.saturating_add(open_ms).min(PAYLOAD_MASK);
        let next = Word::new(State::Open, current.generation() + 1, until);
        self.swap(current, next)?;
        self.reopens.store(reopens, Ordering::Relaxed);
        self.transitioned(from, State::Open);
        #[cfg(all(feature = "redis", not(palisade_loom)))]
        self.tell_fleet(Own::Opened(self.base + Duration::from_millis(until)));
        tracing::debug!(
            target: "palisade_circuit_breaker",
            open_ms,
            reopens,
            "open duration"
        );
        Ok(())
    }

    pub(crate) fn state(&self) -> State {
        self.load().state()
    }

    /// Announces a transition this caller made.
    fn transitioned(&self, from: State, to: State) {
        tracing::info!(target: "palisade_circuit_breaker", %from, %to, "circuit breaker transition");
        #[cfg(all(feature = "otel", not(palisade_loom)))]
        if let Some(instruments) = self.instruments.get() {
            instruments.transition(from, to);
        }
        // No subscriber is not an error.
        let _ = self.transitions.send(Transition { from, to });
    }

    /// Closes from half-open after enough successful probes.
    ///
    /// The window is emptied before "closed" is published: a caller of the
    /// closed breaker would otherwise read the failures that opened it,
    /// and one failure of its own would open it again. Emptying it while
    /// not closed is harmless whether or not the swap wins: no decision
    /// reads the window of an open or half-open breaker (only
    /// [`metrics`](CircuitBreaker::metrics) shows it, empty after a lost
    /// close), and the next close empties it again.
    fn close(&self, current: Word) -> Result<(), Word> {
        self.window.reset();
        self.swap(
            current,
            Word::new(State::Closed, current.generation() + 1, 0),
        )?;
        self.reopens.store(0, Ordering::Relaxed);
        self.transitioned(State::HalfOpen, State::Closed);
        #[cfg(all(feature = "redis", not(palisade_loom)))]
        self.tell_fleet(Own::Closed);
        Ok(())
    }

    #[cfg(all(feature = "redis", not(palisade_loom)))]
    fn tell_fleet(&self, own: Own) {
        if let Some(link) = self.fleet.get() {
            // A link that has stopped has nothing left to tell.
            let _ = link.send(own);
        }
    }

    /// An operator's transition, from any state.
    fn set(&self, state: State) {
        let mut current = self.load();
        loop {
            // Emptied before "closed" is seen (see `close`), and again
            // after a lost swap: a closed breaker's callers may have filled
            // it, and opened it, meanwhile.
            if state == State::Closed {
                self.window.reset();
            }
            let next = Word::new(state, current.generation() + 1, 0);
            match self.swap(current, next) {
                Ok(()) => break,
                Err(seen) => current = seen,
            }
        }
        if state == State::Closed {
            self.reopens.store(0, Ordering::Relaxed);
        }
        // A reset of a closed breaker empties its window, and changes no
        // state: nothing to announce, count or broadcast.
        if current.state() != state {
            self.transitioned(current.state(), state);
        }
    }

    /// Counts a call made while closed (or metrics-only) and opens when a
    /// threshold is reached.
    fn record_counted<F: Fn() -> Instant>(
        &self,
        generation: u64,
        failed: bool,
        slow: bool,
        now: &mut LazyNow<F>,
        hint: Option<Duration>,
    ) {
        let word = self.load();
        if word.generation() != generation {
            return;
        }
        // A count-based window ignores the time: read it only for buckets.
        let window_ms = if self.needs_clock {
            self.millis(now.get())
        } else {
            0
        };
        let before = self.window.record(window_ms, failed, slow);
        if word.state() != State::Closed {
            return;
        }
        // A success lowers both rates: it opens only by bringing the
        // calls up to the minimum, so a full enough ring needs no look.
        if !failed
            && !slow
            && before.is_some_and(|calls| calls >= u64::from(self.config.minimum_calls))
        {
            return;
        }
        let counts = self.window.counts(window_ms);
        if self.should_open(counts) {
            // Losing the race means another caller already opened it.
            let _ = self.trip(word, self.millis(now.get()), hint.filter(|_| failed));
        }
    }

    fn should_open(&self, counts: Counts) -> bool {
        let config = &self.config;
        if counts.calls < u64::from(config.minimum_calls) || counts.calls == 0 {
            return false;
        }
        // Divided, not multiplied out: a rate exactly at the threshold is
        // the threshold's own f64 (7 / 100 is 0.07), where the product
        // could land past the count (0.07 × 100 is 7.000000000000001) and
        // open the breaker one failure late, or never at the exact rate.
        // A closed breaker's successes do not come here once the window
        // holds its minimum (see `record_counted`).
        let calls = counts.calls as f64;
        counts.failures as f64 / calls >= config.failure_rate_threshold
            || config
                .slow_call
                .is_some_and(|(_, rate)| counts.slow as f64 / calls >= rate)
    }

    /// Settles a probe: a failure re-opens, enough successes close.
    fn record_probe<F: Fn() -> Instant>(
        &self,
        generation: u64,
        failed: bool,
        now: &mut LazyNow<F>,
        hint: Option<Duration>,
    ) {
        let mut word = self.load();
        loop {
            if word.generation() != generation || word.state() != State::HalfOpen {
                return;
            }
            let result = if failed {
                self.trip(word, self.millis(now.get()), hint)
            } else if word.successes() + 1 >= u64::from(self.config.half_open_successes) {
                self.close(word)
            } else {
                self.swap(word, Word(word.0 + (1 << SUCCESS_SHIFT)))
            };
            match result {
                Ok(()) => return,
                Err(current) => word = current,
            }
        }
    }

    /// Takes a free probe slot (or one left by an earlier cycle) for a
    /// probe of `generation` starting at `now_ms`. The caller has counted
    /// its probe in the word, and every probe frees its slot before it
    /// uncounts itself, so fewer than `half_open_permits` slots are held
    /// by this cycle's other probes and one is always free.
    fn claim_probe_slot(&self, generation: u64, now_ms: u64) -> Option<u8> {
        let value = slot_value(generation, now_ms);
        // Racing claimers may take the slot this one saw free; a second
        // pass finds the one left.
        for _ in 0..2 {
            for (index, slot) in self.probes.iter().enumerate() {
                let seen = slot.load(Ordering::Acquire);
                if !slot_held_by(seen, generation)
                    && slot
                        .compare_exchange(seen, value, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                {
                    return u8::try_from(index).ok();
                }
            }
        }
        None
    }

    /// Frees probe slot `index` if a probe of `generation` still holds it.
    fn free_probe_slot(&self, index: Option<u8>, generation: u64) {
        let Some(slot) = index.and_then(|index| self.probes.get(usize::from(index))) else {
            return;
        };
        let seen = slot.load(Ordering::Acquire);
        if slot_held_by(seen, generation) {
            // Only this probe holds a slot of its cycle: nobody else
            // writes it meanwhile.
            let _ = slot.compare_exchange(seen, 0, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// The start of the oldest probe of `generation` still running.
    fn oldest_probe(&self, generation: u64) -> Option<u64> {
        self.probes
            .iter()
            .map(|slot| slot.load(Ordering::Acquire))
            .filter(|&value| slot_held_by(value, generation))
            .map(|value| value & PAYLOAD_MASK)
            .min()
    }

    /// Gives back a probe slot whose call ended without an outcome.
    fn release_probe(&self, generation: u64) {
        let mut word = self.load();
        while word.generation() == generation
            && word.state() == State::HalfOpen
            && word.issued() > 0
        {
            match self.swap(word, Word(word.0 - (1 << ISSUED_SHIFT))) {
                Ok(()) => return,
                Err(current) => word = current,
            }
        }
    }
}

impl Permit {
    /// Records how the call went, at `now`.
    pub fn record(self, outcome: Outcome, now: Instant) {
        self.record_with_hint(outcome, None, now);
    }

    /// Records how the call went, with the dependency's own word on how
    /// long to stay away (a `Retry-After` on a 503): when this
    /// failure opens the breaker, a hint longer than the configured open
    /// duration (with backoff) lengthens it, jittered and bounded by
    /// [`max_open_duration`](crate::ConfigBuilder::max_open_duration); a
    /// shorter one, 0 included, changes nothing.
    pub fn record_with_hint(self, outcome: Outcome, hint: Option<Duration>, now: Instant) {
        self.settle(outcome, hint, || now);
    }

    /// Tells the breaker the call was cut short at `now`, before it had
    /// an outcome (a timeout above the breaker, a caller that left): a
    /// call that ran past the [slow-call](crate::ConfigBuilder::slow_calls)
    /// threshold counts as a slow one, and a half-open probe that ran past
    /// it or past the [half-open maximum
    /// wait](crate::ConfigBuilder::half_open_max_wait) as failed; any
    /// other counts nothing, as a permit dropped unrecorded does. A call
    /// that a layer beneath would have refused, cut short while it waited
    /// there, counts the same: nothing tells it apart.
    ///
    /// The layer does this for every call whose response future, or
    /// `GrpcBody` (feature `grpc`), is dropped unfinished.
    pub fn cut_short(mut self, now: Instant) {
        let ticket = self.ticket;
        if self.inner.cut_short(ticket, self.started_ns, now) {
            self.ticket = ticket.settled();
        }
    }

    /// Records the outcome, reading `clock` only if the breaker needs the
    /// time for it.
    pub(crate) fn settle(
        mut self,
        outcome: Outcome,
        hint: Option<Duration>,
        clock: impl Fn() -> Instant,
    ) {
        self.settle_here(outcome, hint, clock);
    }

    /// [`settle`](Self::settle) for the permit in `held`, read where it
    /// is, which is left `None`.
    #[inline]
    pub(crate) fn settle_held(
        held: &mut Option<Self>,
        outcome: Outcome,
        hint: Option<Duration>,
        clock: impl Fn() -> Instant,
    ) {
        if let Some(permit) = held {
            permit.settle_here(outcome, hint, clock);
        }
        *held = None;
    }

    /// Records the outcome and leaves the permit settled: nothing for
    /// `drop` to give back.
    #[inline]
    fn settle_here(
        &mut self,
        outcome: Outcome,
        hint: Option<Duration>,
        clock: impl Fn() -> Instant,
    ) {
        let ticket = self.ticket;
        self.ticket = ticket.settled();
        self.inner
            .settle(ticket, self.started_ns, outcome, hint, clock);
    }
}

impl Inner {
    /// Settles the call of a permit of `ticket` that started at
    /// `started_ns` (or [`NOT_READ`]).
    fn settle(
        &self,
        ticket: Ticket,
        started_ns: u64,
        outcome: Outcome,
        hint: Option<Duration>,
        clock: impl Fn() -> Instant,
    ) {
        let mut now = LazyNow::new(clock);
        let slow = self.ran_slow(started_ns, &mut now);
        #[cfg(all(feature = "otel", not(palisade_loom)))]
        if ticket.role() != Role::Untracked
            && let Some(instruments) = self.instruments.get()
        {
            instruments.call(outcome);
        }
        self.count(ticket, outcome, slow, &mut now, hint);
    }

    /// Counts the call of a permit of `ticket` that started at
    /// `started_ns` and was cut short at `now`, if it ran slow, as a slow
    /// call, and a probe that ran slow or past the half-open maximum wait
    /// as failed; whether it counted.
    fn cut_short(&self, ticket: Ticket, started_ns: u64, now: Instant) -> bool {
        #[cfg(all(feature = "otel", not(palisade_loom)))]
        if ticket.role() != Role::Untracked
            && let Some(instruments) = self.instruments.get()
        {
            instruments.cut_short();
        }
        let mut now = LazyNow::new(|| now);
        let counted = match ticket.role() {
            Role::Untracked => false,
            Role::Counted => self.ran_slow(started_ns, &mut now),
            Role::Probe(slot) => {
                self.ran_slow(started_ns, &mut now)
                    || self.probe_outwaited(slot, ticket.generation(), now.get())
            }
        };
        if counted {
            self.count(ticket, Outcome::Success, true, &mut now, None);
        }
        counted
    }

    /// Whether the probe holding `slot` in `generation` has run past the
    /// half-open maximum wait by `now`.
    fn probe_outwaited(&self, slot: Option<u8>, generation: u64, now: Instant) -> bool {
        slot.and_then(|slot| self.probes.get(usize::from(slot)))
            .map(|slot| slot.load(Ordering::Acquire))
            .filter(|&value| slot_held_by(value, generation))
            .is_some_and(|value| {
                self.millis(now).saturating_sub(value & PAYLOAD_MASK)
                    >= self.config.half_open_max_wait_ms()
            })
    }

    /// Whether a call that started at `started_ns` (or [`NOT_READ`]) has
    /// run past the slow-call threshold by `now`.
    #[inline(always)]
    fn ran_slow<F: Fn() -> Instant>(&self, started_ns: u64, now: &mut LazyNow<F>) -> bool {
        match self.config.slow_call {
            Some((limit, _)) if started_ns != NOT_READ => {
                let elapsed = self.nanos(now.get()).saturating_sub(started_ns);
                elapsed >= u64::try_from(limit.as_nanos()).unwrap_or(u64::MAX)
            }
            _ => false,
        }
    }

    /// Counts a call of `ticket` that ended with `outcome`, `slow` or not.
    #[inline(always)]
    fn count<F: Fn() -> Instant>(
        &self,
        ticket: Ticket,
        outcome: Outcome,
        slow: bool,
        now: &mut LazyNow<F>,
        hint: Option<Duration>,
    ) {
        let generation = ticket.generation();
        let failed = outcome == Outcome::Failure;
        match (ticket.role(), outcome) {
            (Role::Untracked, _) | (Role::Counted, Outcome::Ignored) => {}
            (Role::Counted, _) => {
                self.record_counted(generation, failed, slow, now, hint);
            }
            (Role::Probe(slot), outcome) => {
                // No longer running, whatever it counts for.
                self.free_probe_slot(slot, generation);
                if outcome == Outcome::Ignored {
                    self.release_probe(generation);
                } else {
                    self.record_probe(generation, failed || slow, now, hint);
                }
            }
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Role::Probe(slot) = self.ticket.role() {
            let generation = self.ticket.generation();
            self.inner.free_probe_slot(slot, generation);
            self.inner.release_probe(generation);
        }
    }
}

fn config_needs_clock(config: &Config) -> bool {
    config.slow_call.is_some() || matches!(config.window, crate::config::SlidingWindow::Time { .. })
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The breaker's own reference count.
    fn shared_count(breaker: &CircuitBreaker) -> usize {
        std::sync::Arc::strong_count(breaker.inner.as_arc())
    }

    /// A failure (or slow-call) rate exactly at its threshold opens the
    /// breaker, whatever the threshold's decimals. Compared as a product,
    /// 0.07 × 100 came to 7.000000000000001, and 7 failures in 100 calls
    /// left it closed.
    #[test]
    fn a_rate_exactly_at_its_threshold_opens_the_breaker() {
        let slow = Duration::from_secs(1);
        for (threshold, calls) in [(0.07, 100), (0.55, 100), (0.14, 50), (0.28, 200), (0.5, 10)] {
            // Share of `calls` at the threshold; exact for these.
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss
            )]
            let failing = (threshold * calls as f64).round() as u32;
            for slow_calls in [false, true] {
                let config = Config::builder()
                    .sliding_window(crate::SlidingWindow::Count(calls))
                    .minimum_calls(calls);
                let config = if slow_calls {
                    config.slow_calls(slow, threshold)
                } else {
                    config.failure_rate_threshold(threshold)
                };
                let now = Instant::now();
                let breaker = CircuitBreaker::new_at(config.build().unwrap(), now);
                for n in 0..calls {
                    let permit = breaker.try_acquire(now).unwrap();
                    if n < calls - failing {
                        permit.record(Outcome::Success, now);
                    } else if slow_calls {
                        permit.record(Outcome::Success, now + slow + slow);
                    } else {
                        permit.record(Outcome::Failure, now);
                    }
                }
                assert_eq!(
                    breaker.state(),
                    State::Open,
                    "{failing} of {calls} at {threshold} (slow calls: {slow_calls})"
                );
            }
        }
    }

    #[test]
    fn a_handle_that_keeps_calling_counts_its_permits_on_its_own() {
        let now = Instant::now();
        let breaker = CircuitBreaker::new_at(Config::default(), now);
        let mut service = breaker.clone();
        service.called();
        service
            .try_acquire(now)
            .unwrap()
            .record(Outcome::Success, now);
        service.called();
        let before = shared_count(&breaker);
        let permits: Vec<_> = (0..5).map(|_| service.try_acquire(now).unwrap()).collect();
        assert_eq!(
            shared_count(&breaker),
            before,
            "its permits count on its own"
        );
        drop(service);
        assert_eq!(
            shared_count(&breaker),
            before - 1,
            "the permits keep the own count"
        );
        for permit in permits {
            permit.record(Outcome::Failure, now);
        }
        assert_eq!(shared_count(&breaker), 1, "the last permit lets it go");
        let counts = breaker.metrics(now).counts;
        assert_eq!((counts.calls, counts.failures), (6, 5), "in the one window");
    }

    #[test]
    fn a_probe_on_a_handles_own_count_dropped_unsettled_frees_its_slot() {
        let start = Instant::now();
        let config = Config::builder()
            .sliding_window(crate::SlidingWindow::Count(2))
            .minimum_calls(2)
            .open_duration(Duration::from_secs(1))
            .jitter(0.0)
            .half_open_permits(1)
            .build()
            .unwrap();
        let breaker = CircuitBreaker::new_at(config, start);
        let mut service = breaker.clone();
        service.called();
        service.called();
        let before = shared_count(&breaker);
        let own = service.try_acquire(start).unwrap();
        assert_eq!(shared_count(&breaker), before, "on the service's own count");
        drop(own);
        for _ in 0..2 {
            service
                .try_acquire(start)
                .unwrap()
                .record(Outcome::Failure, start);
        }
        assert_eq!(breaker.state(), State::Open);
        let later = start + Duration::from_secs(1);
        let probe = service.try_acquire(later).unwrap();
        assert!(breaker.try_acquire(later).is_err(), "one probe at a time");
        drop(probe);
        let probe = breaker.try_acquire(later).expect("the slot was given back");
        probe.record(Outcome::Success, later);
        assert_eq!(breaker.state(), State::Closed);
    }

    /// A thread that calls one breaker eight times, then once another
    /// whose window keeps its batches in the same slot of the thread,
    /// over and over, left 27 positions of a 60-call ring holding the
    /// successes from before an outage: 33 failures in 60 (55 %) at most,
    /// and a threshold of 0.6 never opened.
    #[test]
    fn an_outage_opens_a_breaker_whose_thread_keeps_turning_to_another() {
        let now = Instant::now();
        let config = Config::builder()
            .sliding_window(crate::SlidingWindow::Count(60))
            .minimum_calls(60)
            .failure_rate_threshold(0.6)
            .build()
            .unwrap();
        let breaker = CircuitBreaker::new_at(config.clone(), now);
        let other = std::iter::repeat_with(|| CircuitBreaker::new_at(config.clone(), now))
            .find(|other| breaker.inner.window.batches_beside(&other.inner.window))
            .unwrap_or_else(|| unreachable!("laps come round every slot"));
        let call = |breaker: &CircuitBreaker, outcome| {
            breaker
                .try_acquire(now)
                .map(|permit| permit.record(outcome, now))
        };
        for _ in 0..60 {
            call(&breaker, Outcome::Success).unwrap();
        }
        for _ in 0..100 {
            for _ in 0..8 {
                let _ = call(&breaker, Outcome::Failure);
            }
            call(&other, Outcome::Success).unwrap();
        }
        assert_eq!(breaker.state(), State::Open);
    }

    #[test]
    fn a_ticket_keeps_its_generation_and_role() {
        let roles = [
            Role::Counted,
            Role::Untracked,
            Role::Probe(None),
            Role::Probe(Some(0)),
            Role::Probe(Some(u8::MAX)),
        ];
        for generation in [0, 1, GEN_MASK - 1, GEN_MASK, GEN_MASK + 1] {
            for role in roles {
                let ticket = Ticket::new(generation, role);
                assert_eq!(ticket.generation(), generation & GEN_MASK);
                assert_eq!(ticket.role(), role);
                assert_eq!(ticket.settled().role(), Role::Untracked);
                assert_eq!(ticket.settled().generation(), generation & GEN_MASK);
            }
        }
    }
}
