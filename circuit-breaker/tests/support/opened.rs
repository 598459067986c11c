//! A breaker opened by one failure at a given instant, for the half-open
//! tests. Shared by the files that need it through `#[path]`.

use std::time::{Duration, Instant};

use palisade_circuit_breaker::{CircuitBreaker, Config, Outcome, SlidingWindow, State};

pub(crate) const OPEN: Duration = Duration::from_secs(1);
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(5);

/// A breaker with `permits` probe slots that one failure opens, open at
/// `start`.
pub(crate) fn opened(permits: u8, start: Instant) -> CircuitBreaker {
    let config = Config::builder()
        .sliding_window(SlidingWindow::Count(1))
        .minimum_calls(1)
        .open_duration(OPEN)
        .jitter(0.0)
        .half_open_permits(permits)
        .half_open_max_wait(MAX_WAIT)
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
