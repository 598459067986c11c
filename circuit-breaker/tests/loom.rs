//! Model checking of the breaker's atomics with loom: every interleaving of
//! a few threads racing through half-open.
//!
//! Run with `RUSTFLAGS="--cfg palisade_loom" cargo test -p palisade-circuit-breaker --test loom`
//! (`scripts/test` does).
#![cfg(palisade_loom)]

use std::time::{Duration, Instant};

use loom::thread;
use palisade_circuit_breaker::{CircuitBreaker, Config, Outcome, Permit, SlidingWindow, State};

const OPEN: Duration = Duration::from_secs(1);

/// A breaker that one failure opens, already open at `start`.
fn opened(permits: u8, successes: u8, start: Instant) -> CircuitBreaker {
    let config = Config::builder()
        .sliding_window(SlidingWindow::Count(1))
        .minimum_calls(1)
        .open_duration(OPEN)
        .jitter(0.0)
        .half_open_permits(permits)
        .half_open_successes(successes)
        .build()
        .unwrap();
    let breaker = CircuitBreaker::new_at(config, start);
    breaker
        .try_acquire(start)
        .unwrap()
        .record(Outcome::Failure, start);
    assert_eq!(breaker.state(), State::Open);
    breaker
}

/// Caller `i`'s clock reading: `at` plus `i` milliseconds, so racing
/// callers disagree about the time as real ones do.
fn reading(at: Instant, caller: u64) -> Instant {
    at + Duration::from_millis(caller)
}

/// Two callers asking for a permit at once, each with its own clock
/// reading; the permits they got, held.
fn two_callers(breaker: &CircuitBreaker, at: Instant) -> Vec<Permit> {
    let threads: Vec<_> = (0..2)
        .map(|i| {
            let breaker = breaker.clone();
            thread::spawn(move || breaker.try_acquire(reading(at, i)).ok())
        })
        .collect();
    threads
        .into_iter()
        .filter_map(|t| t.join().unwrap())
        .collect()
}

/// Two probes of a half-open breaker (2 permits, 2 successes to close),
/// ending with `first` and `second` at once.
fn two_probes_end(first: Outcome, second: Outcome) -> CircuitBreaker {
    let start = Instant::now();
    let breaker = opened(2, 2, start);
    let later = start + OPEN;
    let (a, b) = (
        breaker.try_acquire(later).unwrap(),
        breaker.try_acquire(later).unwrap(),
    );
    let a = thread::spawn(move || a.record(first, reading(later, 1)));
    let b = thread::spawn(move || b.record(second, reading(later, 2)));
    a.join().unwrap();
    b.join().unwrap();
    breaker
}

#[test]
fn racing_callers_turn_it_half_open_once() {
    loom::model(|| {
        let start = Instant::now();
        let breaker = opened(1, 1, start);
        assert_eq!(
            two_callers(&breaker, start + OPEN).len(),
            1,
            "exactly one probe"
        );
        assert_eq!(breaker.state(), State::HalfOpen);
    });
}

#[test]
fn racing_callers_share_the_last_permit() {
    loom::model(|| {
        let start = Instant::now();
        let breaker = opened(2, 2, start);
        let _first = breaker.try_acquire(start + OPEN).unwrap();
        assert_eq!(
            two_callers(&breaker, start + OPEN).len(),
            1,
            "one slot was left"
        );
    });
}

#[test]
fn a_failure_and_a_success_racing_leave_it_open() {
    loom::model(|| {
        let breaker = two_probes_end(Outcome::Failure, Outcome::Success);
        assert_eq!(breaker.state(), State::Open);
    });
}

#[test]
fn two_successes_racing_close_it_once() {
    loom::model(|| {
        let breaker = two_probes_end(Outcome::Success, Outcome::Success);
        assert_eq!(breaker.state(), State::Closed);
        assert_eq!(breaker.metrics(Instant::now() + OPEN).counts.calls, 0);
    });
}

#[test]
fn a_cancelled_probe_and_a_new_caller_never_leak_the_permit() {
    loom::model(|| {
        let start = Instant::now();
        let breaker = opened(1, 1, start);
        let later = start + OPEN;
        let probe = breaker.try_acquire(later).unwrap();
        let canceller = thread::spawn(move || drop(probe));
        let other = breaker.clone();
        let caller = thread::spawn(move || other.try_acquire(reading(later, 1)).ok());
        canceller.join().unwrap();
        let got = caller.join().unwrap();
        // Either the caller got the freed slot, or the slot is free now.
        let now = got.or_else(|| breaker.try_acquire(later).ok());
        assert!(now.is_some(), "the permit leaked");
    });
}

#[test]
fn a_reused_bucket_is_never_read_with_the_previous_laps_counts() {
    loom::model(|| {
        let start = Instant::now();
        let config = Config::builder()
            .sliding_window(SlidingWindow::Time {
                duration: Duration::from_secs(2),
                buckets: 2,
            })
            .minimum_calls(100)
            .build()
            .unwrap();
        let breaker = CircuitBreaker::new_at(config, start);
        breaker
            .try_acquire(start)
            .unwrap()
            .record(Outcome::Failure, start);
        // One lap later the first bucket is reused by a success while
        // another thread reads the window.
        let lap = start + Duration::from_secs(2);
        let writer = breaker.clone();
        let writer = thread::spawn(move || {
            writer
                .try_acquire(lap)
                .unwrap()
                .record(Outcome::Success, lap)
        });
        let reader = thread::spawn(move || breaker.metrics(reading(lap, 1)).counts);
        writer.join().unwrap();
        let counts = reader.join().unwrap();
        assert_eq!(counts.failures, 0, "the previous lap's failure was read");
        assert!(counts.calls <= 1, "{counts:?}");
    });
}

/// A probe's success closing the breaker races a caller of the closed
/// breaker whose call fails: that one failure must not find the failures
/// that opened it. The window was emptied after "closed" was published,
/// so a caller in between read the old window and opened it again (and,
/// in a fleet, told every replica).
#[test]
fn a_failure_racing_the_close_never_reads_the_window_that_opened_it() {
    loom::model(|| {
        let start = Instant::now();
        let config = Config::builder()
            .sliding_window(SlidingWindow::Count(2))
            .minimum_calls(2)
            .open_duration(OPEN)
            .jitter(0.0)
            .half_open_permits(1)
            .half_open_successes(1)
            .build()
            .unwrap();
        let breaker = CircuitBreaker::new_at(config, start);
        for _ in 0..2 {
            breaker
                .try_acquire(start)
                .unwrap()
                .record(Outcome::Failure, start);
        }
        assert_eq!(breaker.state(), State::Open);
        let later = start + OPEN;
        let probe = breaker.try_acquire(later).unwrap();
        let caller = breaker.clone();
        let closing = thread::spawn(move || probe.record(Outcome::Success, later));
        let failing = thread::spawn(move || {
            if let Ok(permit) = caller.try_acquire(later) {
                permit.record(Outcome::Failure, later);
            }
        });
        closing.join().unwrap();
        failing.join().unwrap();
        assert_eq!(breaker.state(), State::Closed, "one failure reopened it");
    });
}
