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
    /// The earliest and the latest the open state may end (in ms), as the
    /// jitter allows; narrowed to the instant once the breaker tells it.
    open_until: (u64, u64),
    issued: u8,
    successes: u8,
    /// The probes of this half-open cycle still running: (id, start).
    running: Vec<(u64, u64)>,
    next_id: u64,
    reopens: u32,
    /// Whether the open duration doubles at each re-opening.
    backoff: bool,
}

/// What the breaker answered a caller: a permit, or a refusal with the
/// wait in milliseconds.
pub(crate) type Answer = Result<(), Option<u64>>;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    Counted,
    Probe,
    Untracked,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct ModelPermit {
    id: u64,
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
            open_until: (0, 0),
            issued: 0,
            successes: 0,
            running: Vec::new(),
            next_id: 0,
            reopens: 0,
            backoff: false,
        }
    }

    fn counts(&self, now: u64) -> (u64, u64, u64) {
        let in_window: Vec<_> = match self.config.sliding_window() {
            SlidingWindow::Count(n) => self.window.iter().rev().take(n as usize).collect(),
            SlidingWindow::Time { duration, buckets } => {
                let bucket = ms(duration).div_ceil(u64::from(buckets)).max(1);
                let live = ms(duration).div_ceil(bucket).clamp(1, u64::from(buckets));
                let current = now / bucket;
                let oldest = current.saturating_sub(live - 1);
                self.window
                    .iter()
                    .filter(|(t, _, _)| (oldest..=current).contains(&(t / bucket)))
                    .collect()
            }
        };
        let calls = in_window.len() as u64;
        let failures = in_window.iter().filter(|(_, f, _)| *f).count() as u64;
        let slow = in_window.iter().filter(|(_, _, s)| *s).count() as u64;
        (calls, failures, slow)
    }

    /// A caller asks at `now` and the breaker gave `answer`: the model's
    /// permit if it admits, or the difference.
    fn acquire(&mut self, now: u64, answer: Answer) -> Result<Option<ModelPermit>, String> {
        let expect_refusal = |wait: Option<u64>| match answer {
            Err(real) if real == wait => Ok(None),
            _ => Err(format!(
                "breaker answered {answer:?}, model refuses with {wait:?} ms"
            )),
        };
        loop {
            let id = self.next_id;
            let permit = |generation, role| ModelPermit {
                id,
                generation,
                role,
                started: now,
            };
            let admitted = match self.state {
                State::Closed | State::MetricsOnly => permit(self.generation, Role::Counted),
                State::Disabled => permit(self.generation, Role::Untracked),
                State::ForcedOpen => return expect_refusal(None),
                State::Open => {
                    let (earliest, latest) = self.open_until;
                    match answer {
                        // Refused with the wait: the deadline, exactly.
                        Err(Some(wait)) if now < latest => {
                            let until = now + wait;
                            if wait == 0 || !(earliest..=latest).contains(&until) {
                                return Err(format!(
                                    "refused until {until} ms, model: {earliest}..={latest} ms"
                                ));
                            }
                            self.open_until = (until, until);
                            return Ok(None);
                        }
                        Ok(()) if now >= earliest => {}
                        _ => {
                            return Err(format!(
                                "breaker answered {answer:?}, model open until {earliest}..={latest} ms"
                            ));
                        }
                    }
                    self.state = State::HalfOpen;
                    self.generation += 1;
                    self.issued = 1;
                    self.successes = 0;
                    self.running = vec![(id, now)];
                    permit(self.generation, Role::Probe)
                }
                State::HalfOpen => {
                    if self.issued < self.config.half_open_permits() {
                        self.issued += 1;
                        self.running.push((id, now));
                        permit(self.generation, Role::Probe)
                    } else {
                        // The oldest probe still running decides; a
                        // reading older than its start has waited nothing.
                        let max_wait = ms(self.config.half_open_max_wait());
                        let elapsed = self
                            .running
                            .iter()
                            .map(|&(_, start)| start)
                            .min()
                            .map_or(0, |oldest| now.saturating_sub(oldest));
                        if elapsed < max_wait {
                            return expect_refusal(Some(max_wait - elapsed));
                        }
                        self.trip(now, None);
                        continue;
                    }
                }
            };
            return match answer {
                Ok(()) => {
                    self.next_id += 1;
                    Ok(Some(admitted))
                }
                Err(wait) => Err(format!("breaker refused with {wait:?} ms, model admits")),
            };
        }
    }

    /// The open duration's bounds in milliseconds, written from the
    /// specification: the backoff's duration is the floor, jittered either
    /// way; a longer hint replaces it, jittered upwards only up to the
    /// maximum; a hint past the maximum, or a floor jittered past it, is
    /// drawn below the maximum.
    fn open_bounds(&self, reopens: u32, hint: Option<u64>) -> (u64, u64) {
        let max = ms(Duration::from_secs(10)) as f64;
        let jitter = self.config.jitter();
        let open = ms(self.config.open_duration());
        let floor = if self.backoff {
            (open * 2u64.pow(reopens.min(20))).min(max_backoff().max(open))
        } else {
            open
        } as f64;
        let (low, high) = match hint.map(|hint| hint as f64).filter(|&hint| hint > floor) {
            Some(hint) if hint < max => (hint, max.min(hint * (1.0 + jitter))),
            Some(_) => (max * (1.0 - jitter), max),
            None => (floor * (1.0 - jitter), floor * (1.0 + jitter)),
        };
        let (low, high) = if high > max {
            (low.min(max * (1.0 - jitter)), max)
        } else {
            (low, high)
        };
        ((low.floor() as u64).max(1), (high.ceil() as u64).max(1))
    }

    fn trip(&mut self, now: u64, hint: Option<u64>) {
        let reopens = if self.state == State::HalfOpen {
            self.reopens + 1
        } else {
            0
        };
        let (shortest, longest) = self.open_bounds(reopens, hint);
        self.state = State::Open;
        self.generation += 1;
        self.open_until = (now + shortest, now + longest);
        self.running.clear();
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
                    let over = |part: u64, rate: f64| part as f64 / calls as f64 >= rate;
                    if calls >= u64::from(self.config.minimum_calls())
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
                self.running.retain(|&(id, _)| id != permit.id);
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
            self.running.retain(|&(id, _)| id != permit.id);
        }
    }

    fn set(&mut self, state: State) {
        self.state = state;
        self.generation += 1;
        self.running.clear();
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
    /// A call asks to go through with a clock reading this many
    /// milliseconds older than the latest (another thread's, read a little
    /// earlier).
    AcquireEarlier(u64),
    /// The n-th outstanding call ends, with the dependency's hint in
    /// milliseconds (a `Retry-After` or a pushback; 0 included).
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
    pub(crate) jitter: f64,
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
            .jitter(self.jitter)
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
            Op::Acquire | Op::AcquireEarlier(_) => {
                let reading = match *op {
                    Op::AcquireEarlier(lag) => now.saturating_sub(lag),
                    _ => now,
                };
                let real = breaker.try_acquire(at(reading));
                let answer = match &real {
                    Ok(_) => Ok(()),
                    Err(open) => Err(open.retry_after().map(ms)),
                };
                let admitted = model
                    .acquire(reading, answer)
                    .map_err(|difference| format!("at {reading} ms: {difference}"))?;
                if let (Ok(p), Some(m)) = (real, admitted) {
                    permits.push((p, m));
                }
            }
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
