//! The reference model of the breaker and the driver that runs the real
//! breaker beside it. Shared by the property test and the fuzz target.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use palisade_circuit_breaker::{CircuitBreaker, Config, Outcome, Permit, SlidingWindow, State};

/// The specification, written plainly: a list for the window, fields for
/// the state.
#[derive(Debug)]
pub(crate) struct Model {
    config: Config,
    state: State,
    generation: u64,
    /// (time in ms, failed, slow), oldest first.
    window: VecDeque<(u64, bool, bool)>,
    open_until: u64,
    issued: u8,
    successes: u8,
    half_open_since: u64,
    reopens: u32,
    /// Whether the open duration doubles at each re-opening.
    backoff: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    Counted,
    Probe,
    Untracked,
}

#[derive(Debug, Clone, Copy)]
struct ModelPermit {
    generation: u64,
    role: Role,
    started: u64,
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

impl Model {
    fn new(config: Config) -> Self {
        Self {
            config,
            state: State::Closed,
            generation: 0,
            window: VecDeque::new(),
            open_until: 0,
            issued: 0,
            successes: 0,
            half_open_since: 0,
            reopens: 0,
            backoff: false,
        }
    }

    fn counts(&self, now: u64) -> (u32, u32, u32) {
        let in_window: Vec<_> = match self.config.sliding_window() {
            SlidingWindow::Count(n) => self.window.iter().rev().take(n as usize).collect(),
            SlidingWindow::Time { duration, buckets } => {
                let bucket = (ms(duration) / u64::from(buckets)).max(1);
                let current = now / bucket;
                let oldest = current.saturating_sub(u64::from(buckets) - 1);
                self.window
                    .iter()
                    .filter(|(t, _, _)| (oldest..=current).contains(&(t / bucket)))
                    .collect()
            }
        };
        let calls = in_window.len() as u32;
        let failures = in_window.iter().filter(|(_, f, _)| *f).count() as u32;
        let slow = in_window.iter().filter(|(_, _, s)| *s).count() as u32;
        (calls, failures, slow)
    }

    fn acquire(&mut self, now: u64) -> Result<ModelPermit, Option<u64>> {
        loop {
            let permit = |role| ModelPermit {
                generation: self.generation,
                role,
                started: now,
            };
            match self.state {
                State::Closed | State::MetricsOnly => return Ok(permit(Role::Counted)),
                State::Disabled => return Ok(permit(Role::Untracked)),
                State::ForcedOpen => return Err(None),
                State::Open if now < self.open_until => return Err(Some(self.open_until - now)),
                State::Open => {
                    self.state = State::HalfOpen;
                    self.generation += 1;
                    self.issued = 1;
                    self.successes = 0;
                    self.half_open_since = now;
                    return Ok(ModelPermit {
                        generation: self.generation,
                        role: Role::Probe,
                        started: now,
                    });
                }
                State::HalfOpen => {
                    let max_wait = ms(self.config.half_open_max_wait());
                    let elapsed = now - self.half_open_since;
                    if self.issued < self.config.half_open_permits() {
                        self.issued += 1;
                        return Ok(permit(Role::Probe));
                    } else if elapsed >= max_wait {
                        self.trip(now, None);
                    } else {
                        return Err(Some(max_wait - elapsed));
                    }
                }
            }
        }
    }

    fn trip(&mut self, now: u64, hint: Option<u64>) {
        let reopens = if self.state == State::HalfOpen {
            self.reopens + 1
        } else {
            0
        };
        let max = ms(Duration::from_secs(10));
        let duration = match hint {
            Some(hint) => hint.min(max),
            None => {
                let base = ms(self.config.open_duration());
                if self.backoff {
                    (base * 2u64.pow(reopens.min(20)))
                        .min(max_backoff())
                        .min(max)
                } else {
                    base
                }
            }
        };
        self.state = State::Open;
        self.generation += 1;
        self.open_until = now + duration;
        self.reopens = reopens;
    }

    fn record(&mut self, permit: ModelPermit, outcome: Outcome, hint: Option<u64>, now: u64) {
        let slow = self
            .config
            .slow_calls()
            .is_some_and(|(limit, _)| now - permit.started >= ms(limit));
        let failed = outcome == Outcome::Failure;
        match (permit.role, outcome) {
            (Role::Untracked, _) | (Role::Counted, Outcome::Ignored) => {}
            (Role::Probe, Outcome::Ignored) => self.release(permit),
            (Role::Counted, _) => {
                if permit.generation != self.generation {
                    return;
                }
                self.window.push_back((now, failed, slow));
                if self.state == State::Closed {
                    let (calls, failures, slow_calls) = self.counts(now);
                    let over = |part: u32, rate: f64| f64::from(part) / f64::from(calls) >= rate;
                    if calls >= self.config.minimum_calls()
                        && (over(failures, self.config.failure_rate_threshold())
                            || self
                                .config
                                .slow_calls()
                                .is_some_and(|(_, r)| over(slow_calls, r)))
                    {
                        self.trip(now, hint.filter(|_| failed));
                    }
                }
            }
            (Role::Probe, _) => {
                if permit.generation != self.generation || self.state != State::HalfOpen {
                    return;
                }
                if failed || slow {
                    self.trip(now, hint);
                } else if self.successes + 1 >= self.config.half_open_successes() {
                    self.set(State::Closed);
                } else {
                    self.successes += 1;
                }
            }
        }
    }

    fn release(&mut self, permit: ModelPermit) {
        if permit.role == Role::Probe
            && permit.generation == self.generation
            && self.state == State::HalfOpen
            && self.issued > 0
        {
            self.issued -= 1;
        }
    }

    fn set(&mut self, state: State) {
        self.state = state;
        self.generation += 1;
        if state == State::Closed {
            self.window.clear();
            self.reopens = 0;
        }
    }
}

pub(crate) fn max_backoff() -> u64 {
    5_000
}

#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// Time passes, in milliseconds.
    Advance(u64),
    /// A call asks to go through.
    Acquire,
    /// The n-th outstanding call ends, with a hint in milliseconds.
    Record(usize, Outcome, Option<u64>),
    /// The n-th outstanding call is cancelled.
    Drop(usize),
    /// An operator forces a state.
    Operator(State),
}

#[derive(Debug, Clone)]
pub(crate) struct Setup {
    pub(crate) window: SlidingWindow,
    pub(crate) minimum: u32,
    pub(crate) threshold: f64,
    pub(crate) slow: Option<(u64, f64)>,
    pub(crate) open_ms: u64,
    pub(crate) backoff: bool,
    pub(crate) permits: u8,
    pub(crate) successes: u8,
    pub(crate) max_wait_ms: u64,
}

impl Setup {
    pub(crate) fn config(&self) -> Config {
        let mut builder = Config::builder()
            .sliding_window(self.window)
            .minimum_calls(self.minimum)
            .failure_rate_threshold(self.threshold)
            .open_duration(Duration::from_millis(self.open_ms))
            .max_open_duration(Duration::from_secs(10))
            .jitter(0.0)
            .half_open_permits(self.permits)
            .half_open_successes(self.successes)
            .half_open_max_wait(Duration::from_millis(self.max_wait_ms));
        if let Some((limit, rate)) = self.slow {
            builder = builder.slow_calls(Duration::from_millis(limit), rate);
        }
        if self.backoff {
            builder =
                builder.open_backoff(2.0, Duration::from_millis(max_backoff().max(self.open_ms)));
        }
        builder.build().unwrap()
    }
}

/// Runs `ops` on a real breaker and on the model side by side; the first
/// difference, described, is the error.
pub(crate) fn run(setup: &Setup, ops: &[Op]) -> Result<(), String> {
    let config = setup.config();
    let start = Instant::now();
    let breaker = CircuitBreaker::new_at(config.clone(), start);
    let mut model = Model::new(config);
    model.backoff = setup.backoff;
    let mut now = 0u64;
    let mut permits: Vec<(Permit, ModelPermit)> = Vec::new();
    let at = |t: u64| start + Duration::from_millis(t);

    for op in ops {
        match *op {
            Op::Advance(ms) => now += ms,
            Op::Acquire => match (breaker.try_acquire(at(now)), model.acquire(now)) {
                (Ok(p), Ok(m)) => permits.push((p, m)),
                (Err(open), Err(wait)) => {
                    if open.retry_after() != wait.map(Duration::from_millis) {
                        return Err(format!(
                            "at {now} ms: refused with {:?}, model says {wait:?} ms",
                            open.retry_after()
                        ));
                    }
                }
                (real, expected) => {
                    return Err(format!(
                        "at {now} ms: breaker admits {}, model admits {}",
                        real.is_ok(),
                        expected.is_ok()
                    ));
                }
            },
            Op::Record(i, outcome, hint) if !permits.is_empty() => {
                let (p, m) = permits.remove(i % permits.len());
                p.record_with_hint(outcome, hint.map(Duration::from_millis), at(now));
                model.record(m, outcome, hint, now);
            }
            Op::Drop(i) if !permits.is_empty() => {
                let (p, m) = permits.remove(i % permits.len());
                drop(p);
                model.release(m);
            }
            Op::Record(..) | Op::Drop(_) => {}
            Op::Operator(state) => {
                match state {
                    State::ForcedOpen => breaker.force_open(),
                    State::Disabled => breaker.disable(),
                    State::MetricsOnly => breaker.metrics_only(),
                    _ => breaker.reset(),
                }
                model.set(state);
            }
        }
        if breaker.state() != model.state {
            return Err(format!(
                "at {now} ms: state {:?}, model {:?}",
                breaker.state(),
                model.state
            ));
        }
        let counts = breaker.metrics(at(now)).counts;
        let real = (counts.calls, counts.failures, counts.slow);
        if real != model.counts(now) {
            return Err(format!(
                "at {now} ms: window {real:?}, model {:?}",
                model.counts(now)
            ));
        }
    }
    Ok(())
}
