//! Model checking of the breaker's atomics with loom: every interleaving of
//! a few threads racing through half-open.
//!
//! Run with `RUSTFLAGS="--cfg palisade_loom" cargo test -p palisade-circuit-breaker --test loom`
//! (`scripts/test` does).
#![cfg(palisade_loom)]

use std::time::{Duration, Instant};

use loom::thread;
use palisade_circuit_breaker::{CircuitBreaker, Config, Outcome, SlidingWindow, State};

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

#[test]
fn racing_callers_turn_it_half_open_once() {
    loom::model(|| {
        let start = Instant::now();
        let breaker = opened(1, 1, start);
        let later = start + OPEN;
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let breaker = breaker.clone();
                thread::spawn(move || breaker.try_acquire(later).ok())
            })
            .collect();
        let held: Vec<_> = threads
            .into_iter()
            .filter_map(|t| t.join().unwrap())
            .collect();
        assert_eq!(held.len(), 1, "exactly one probe");
        assert_eq!(breaker.state(), State::HalfOpen);
    });
}

#[test]
fn racing_callers_share_the_last_permit() {
    loom::model(|| {
        let start = Instant::now();
        let breaker = opened(2, 2, start);
        let later = start + OPEN;
        let _first = breaker.try_acquire(later).unwrap();
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let breaker = breaker.clone();
                thread::spawn(move || breaker.try_acquire(later).ok())
            })
            .collect();
        let held: Vec<_> = threads
            .into_iter()
            .filter_map(|t| t.join().unwrap())
            .collect();
        assert_eq!(held.len(), 1, "one slot was left");
    });
}

#[test]
fn a_failure_and_a_success_racing_leave_it_open() {
    loom::model(|| {
        let start = Instant::now();
        let breaker = opened(2, 2, start);
        let later = start + OPEN;
        let first = breaker.try_acquire(later).unwrap();
        let second = breaker.try_acquire(later).unwrap();
        let a = thread::spawn(move || first.record(Outcome::Failure, later));
        let b = thread::spawn(move || second.record(Outcome::Success, later));
        a.join().unwrap();
        b.join().unwrap();
        assert_eq!(breaker.state(), State::Open);
    });
}

#[test]
fn two_successes_racing_close_it_once() {
    loom::model(|| {
        let start = Instant::now();
        let breaker = opened(2, 2, start);
        let later = start + OPEN;
        let first = breaker.try_acquire(later).unwrap();
        let second = breaker.try_acquire(later).unwrap();
        let a = thread::spawn(move || first.record(Outcome::Success, later));
        let b = thread::spawn(move || second.record(Outcome::Success, later));
        a.join().unwrap();
        b.join().unwrap();
        assert_eq!(breaker.state(), State::Closed);
        assert_eq!(breaker.metrics(later).counts.calls, 0);
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
        let caller = thread::spawn(move || other.try_acquire(later).ok());
        canceller.join().unwrap();
        let got = caller.join().unwrap();
        // Either the caller got the freed slot, or the slot is free now.
        let now = got.or_else(|| breaker.try_acquire(later).ok());
        assert!(now.is_some(), "the permit leaked");
    });
}
