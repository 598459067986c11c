//! Half-open under callers whose clocks disagree by a little, and probes
//! that are cancelled and replaced: the cycle is decided by its probes'
//! outcomes, not by who read the clock first.

use std::time::{Duration, Instant};

use palisade_circuit_breaker::{Outcome, State};

#[path = "support/opened.rs"]
mod opened;

use opened::{MAX_WAIT, OPEN, opened};

#[test]
fn half_open_survives_an_older_clock_reading() {
    let start = Instant::now();
    let breaker = opened(1, start);
    // Caller A read the clock at 1000 ms, caller B at 1001 ms; B won the
    // race to half-open.
    let a = start + OPEN;
    let b = a + Duration::from_millis(1);
    let probe = breaker.try_acquire(b).unwrap();
    let refused = breaker.try_acquire(a).unwrap_err();
    assert_eq!(
        breaker.state(),
        State::HalfOpen,
        "A's older reading tripped it"
    );
    assert_eq!(refused.retry_after(), Some(MAX_WAIT));
    probe.record(Outcome::Success, b);
    assert_eq!(breaker.state(), State::Closed);
}

#[test]
fn half_open_max_wait_counts_from_the_oldest_outstanding_probe() {
    let start = Instant::now();
    let breaker = opened(1, start);
    let half_open = start + OPEN;
    // The first probe is cancelled after 4 s; a second takes its slot.
    let first = breaker.try_acquire(half_open).unwrap();
    let replaced = half_open + Duration::from_secs(4);
    drop(first);
    let second = breaker.try_acquire(replaced).unwrap();
    // 6 s into the cycle the second probe has run 2 s: not too long.
    let later = half_open + Duration::from_secs(6);
    let refused = breaker.try_acquire(later).unwrap_err();
    assert_eq!(breaker.state(), State::HalfOpen);
    assert_eq!(refused.retry_after(), Some(Duration::from_secs(3)));
    // 5 s after the second probe began, it counts as failed.
    let expired = replaced + MAX_WAIT;
    assert!(breaker.try_acquire(expired).is_err());
    assert_eq!(breaker.state(), State::Open);
    second.record(Outcome::Success, expired);
    assert_eq!(breaker.state(), State::Open, "its cycle is over");
}

#[test]
fn max_wait_follows_the_oldest_of_several_probes() {
    let start = Instant::now();
    let breaker = opened(3, start);
    let half_open = start + OPEN;
    let at = |ms| half_open + Duration::from_millis(ms);
    let oldest = breaker.try_acquire(at(0)).unwrap();
    let middle = breaker.try_acquire(at(1_000)).unwrap();
    let newest = breaker.try_acquire(at(2_000)).unwrap();
    assert_eq!(
        breaker.try_acquire(at(3_000)).unwrap_err().retry_after(),
        Some(Duration::from_secs(2)),
        "the oldest probe has 2 s left"
    );
    // The oldest succeeds: the middle one is now the oldest outstanding.
    oldest.record(Outcome::Success, at(3_000));
    assert_eq!(
        breaker.try_acquire(at(4_000)).unwrap_err().retry_after(),
        Some(Duration::from_secs(2)),
    );
    drop(middle);
    // The freed slot goes to a new probe; the newest is now the oldest.
    let replacement = breaker.try_acquire(at(5_000)).unwrap();
    assert_eq!(
        breaker.try_acquire(at(5_500)).unwrap_err().retry_after(),
        Some(Duration::from_millis(1_500)),
    );
    assert_eq!(breaker.state(), State::HalfOpen);
    newest.record(Outcome::Success, at(6_000));
    replacement.record(Outcome::Success, at(6_000));
    assert_eq!(breaker.state(), State::Closed);
}

#[test]
fn half_open_admits_its_permits_at_a_time_not_per_cycle() {
    let start = Instant::now();
    let breaker = opened(2, start);
    let half_open = start + OPEN;
    let first = breaker.try_acquire(half_open).unwrap();
    let second = breaker.try_acquire(half_open).unwrap();
    assert!(breaker.try_acquire(half_open).is_err(), "two at a time");
    // A cancelled probe frees its slot for another caller in the same
    // cycle: more than two probes may run in one cycle, never more than
    // two at once.
    drop(first);
    let third = breaker.try_acquire(half_open).unwrap();
    assert!(breaker.try_acquire(half_open).is_err());
    second.record(Outcome::Success, half_open);
    third.record(Outcome::Success, half_open);
    assert_eq!(breaker.state(), State::Closed);
}
