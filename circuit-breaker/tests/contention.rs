//! Many threads racing through the breaker's transitions: every transition
//! happens once, half-open never admits more than its permits, and it never
//! gets stuck.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use palisade_circuit_breaker::{
    CircuitBreaker, Config, Outcome, Permit, SlidingWindow, State, Transition,
};

const THREADS: usize = 8;
const PERMITS: u8 = 3;
const OPEN: Duration = Duration::from_secs(1);

fn breaker(start: Instant) -> CircuitBreaker {
    let config = Config::builder()
        .sliding_window(SlidingWindow::Count(16))
        .minimum_calls(16)
        .open_duration(OPEN)
        .jitter(0.0)
        .half_open_permits(PERMITS)
        .build()
        .unwrap();
    CircuitBreaker::new_at(config, start)
}

/// Runs `work` on every thread at once.
fn race<T: Send>(work: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let barrier = Barrier::new(THREADS);
    thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|i| {
                let (barrier, work) = (&barrier, &work);
                scope.spawn(move || {
                    barrier.wait();
                    work(i)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Thread `i`'s clock reading: `now` plus `i` milliseconds, so the
/// threads disagree as real callers do.
fn reading(now: Instant, thread: usize) -> Instant {
    now + Duration::from_millis(thread as u64)
}

#[test]
fn half_open_admits_exactly_its_permits_cycle_after_cycle() {
    let start = Instant::now();
    let breaker = breaker(start);
    let mut transitions = breaker.subscribe();
    let mut now = start;
    for cycle in 0..200 {
        // Closed: failures from every thread open it once.
        race(|i| {
            let now = reading(now, i);
            for _ in 0..4 {
                if let Ok(permit) = breaker.try_acquire(now) {
                    permit.record(Outcome::Failure, now);
                }
            }
        });
        assert_eq!(breaker.state(), State::Open, "cycle {cycle}");

        // Half-open: every thread grabs what it can and holds it, each
        // with its own clock reading, some earlier than the one that
        // turned it half-open.
        now += OPEN + Duration::from_millis(THREADS as u64);
        let held: Mutex<Vec<Permit>> = Mutex::new(Vec::new());
        race(|i| {
            let now = reading(now, i);
            for _ in 0..50 {
                if let Ok(permit) = breaker.try_acquire(now) {
                    held.lock().unwrap().push(permit);
                }
            }
        });
        let mut held = held.into_inner().unwrap();
        assert_eq!(held.len(), usize::from(PERMITS), "cycle {cycle}");
        assert_eq!(breaker.state(), State::HalfOpen, "cycle {cycle}");

        // Cancelled probes give their slots back: not stuck.
        held.truncate(1);
        let refilled = AtomicUsize::new(0);
        let more: Mutex<Vec<Permit>> = Mutex::new(Vec::new());
        race(|i| {
            let now = reading(now, THREADS - 1 - i);
            for _ in 0..20 {
                if let Ok(permit) = breaker.try_acquire(now) {
                    refilled.fetch_add(1, Ordering::Relaxed);
                    more.lock().unwrap().push(permit);
                }
            }
        });
        assert_eq!(refilled.load(Ordering::Relaxed), usize::from(PERMITS) - 1);
        held.extend(more.into_inner().unwrap());

        // Every probe succeeds at once: it closes exactly once, and the
        // successes that arrive after the close are ignored.
        let probes = Mutex::new(held);
        race(|i| {
            let permit = probes.lock().unwrap().pop();
            if let Some(permit) = permit {
                permit.record(Outcome::Success, reading(now, i));
            }
        });
        assert_eq!(breaker.state(), State::Closed, "cycle {cycle}");
        assert_eq!(
            breaker.metrics(now).counts.calls,
            0,
            "a closed cycle starts empty"
        );
        // Each transition happened exactly once, in order.
        let mut seen = Vec::new();
        while let Ok(Transition { from, to }) = transitions.try_recv() {
            seen.push((from, to));
        }
        assert_eq!(
            seen,
            [
                (State::Closed, State::Open),
                (State::Open, State::HalfOpen),
                (State::HalfOpen, State::Closed),
            ],
            "cycle {cycle}"
        );
        now += Duration::from_millis(THREADS as u64);
    }
}

#[test]
fn a_late_outcome_from_an_old_cycle_is_not_counted() {
    let start = Instant::now();
    let breaker = breaker(start);
    // A slow call admitted while closed...
    let straggler = breaker.try_acquire(start).unwrap();
    for _ in 0..16 {
        breaker
            .try_acquire(start)
            .unwrap()
            .record(Outcome::Failure, start);
    }
    assert_eq!(breaker.state(), State::Open);
    let later = start + OPEN;
    let probe = breaker.try_acquire(later).unwrap();
    // ...finishes during the half-open cycle: it neither fails the probe
    // cycle nor counts as a probe success.
    straggler.record(Outcome::Failure, later);
    assert_eq!(breaker.state(), State::HalfOpen);
    probe.record(Outcome::Success, later);
    // PERMITS successes are needed; one so far.
    assert_eq!(breaker.state(), State::HalfOpen);
}

#[test]
fn a_probe_that_never_ends_counts_as_failed_after_the_max_wait() {
    let start = Instant::now();
    let config = Config::builder()
        .sliding_window(SlidingWindow::Count(2))
        .minimum_calls(2)
        .open_duration(OPEN)
        .jitter(0.0)
        .half_open_max_wait(Duration::from_secs(5))
        .build()
        .unwrap();
    let breaker = CircuitBreaker::new_at(config, start);
    for _ in 0..2 {
        breaker
            .try_acquire(start)
            .unwrap()
            .record(Outcome::Failure, start);
    }
    let half_open = start + OPEN;
    let stuck = breaker.try_acquire(half_open).unwrap();
    let wait = breaker.try_acquire(half_open).unwrap_err();
    assert_eq!(wait.retry_after(), Some(Duration::from_secs(5)));
    // After the max wait, the next caller re-opens the breaker.
    let after = half_open + Duration::from_secs(5);
    let open = breaker.try_acquire(after).unwrap_err();
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(open.retry_after(), Some(OPEN));
    // The stuck probe's eventual success belongs to a finished cycle.
    stuck.record(Outcome::Success, after);
    assert_eq!(breaker.state(), State::Open);
}

/// A ring large enough that each thread takes its positions in batches
/// once it is full: the counts stay those of a full ring, failures
/// pushed in by every thread open it, and a reset starts an exact count.
#[test]
fn threads_taking_positions_in_batches_keep_a_full_rings_counts() {
    const LEN: u32 = 256;
    let start = Instant::now();
    let breaker = CircuitBreaker::new_at(
        Config::builder()
            .sliding_window(SlidingWindow::Count(LEN))
            .minimum_calls(LEN)
            .failure_rate_threshold(0.5)
            .open_duration(OPEN)
            .build()
            .unwrap(),
        start,
    );
    // Every thread makes `calls` calls that end as `outcome`.
    let each_thread = |calls: usize, outcome: Outcome| {
        race(|_| {
            for _ in 0..calls {
                breaker.try_acquire(start).unwrap().record(outcome, start);
            }
        });
    };
    each_thread(10_000, Outcome::Success);
    let counts = breaker.metrics(start).counts;
    assert_eq!((counts.calls, counts.failures), (u64::from(LEN), 0));
    assert_eq!(breaker.state(), State::Closed);

    // Failures from every thread until it opens: about half the ring,
    // give or take the batches the threads hold.
    let failures = AtomicUsize::new(0);
    race(|_| {
        while let Ok(permit) = breaker.try_acquire(start) {
            failures.fetch_add(1, Ordering::Relaxed);
            permit.record(Outcome::Failure, start);
        }
    });
    assert_eq!(breaker.state(), State::Open);
    let failed = failures.load(Ordering::Relaxed);
    let batches = THREADS * 64;
    assert!(
        (128..=128 + batches + THREADS).contains(&failed),
        "{failed} failures to open a ring of {LEN} at a rate of 0.5"
    );

    breaker.reset();
    each_thread(10, Outcome::Failure);
    let counts = breaker.metrics(start).counts;
    assert_eq!(
        (counts.calls, counts.failures),
        (THREADS as u64 * 10, THREADS as u64 * 10),
        "a ring filling after a reset counts each call"
    );
}
