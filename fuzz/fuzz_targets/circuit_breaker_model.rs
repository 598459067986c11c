//! Arbitrary sequences of calls (some with an older clock reading),
//! outcomes with hints, cancellations, time and operator actions, run on
//! the breaker (with jitter) and on the reference model side by side: they
//! must agree after every step.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use palisade_circuit_breaker::{Outcome, SlidingWindow, State};

#[path = "../../circuit-breaker/tests/support/model.rs"]
mod model;

use model::{Op, Setup};

#[derive(Debug, Arbitrary)]
struct Input {
    time_window: bool,
    size: u8,
    buckets: u8,
    minimum: u8,
    threshold: u8,
    slow: Option<(u16, bool)>,
    open_ms: u16,
    backoff: bool,
    jitter: u8,
    permits: u8,
    successes: u8,
    max_wait_ms: u16,
    ops: Vec<(u8, u16, u8)>,
}

impl Input {
    fn setup(&self) -> Setup {
        let size = u32::from(self.size % 8) + 1;
        let window = if self.time_window {
            SlidingWindow::Time {
                duration: Duration::from_secs(u64::from(self.size % 5) + 1),
                buckets: u32::from(self.buckets % 5) + 1,
            }
        } else {
            SlidingWindow::Count(size)
        };
        let minimum = u32::from(self.minimum % 8) + 1;
        let permits = self.permits % 3 + 1;
        Setup {
            window,
            minimum: if self.time_window {
                minimum
            } else {
                minimum.min(size)
            },
            threshold: [0.25, 0.5, 1.0][usize::from(self.threshold % 3)],
            slow: self
                .slow
                .map(|(ms, half)| (u64::from(ms % 800) + 1, if half { 0.5 } else { 1.0 })),
            open_ms: u64::from(self.open_ms % 2000) + 100,
            backoff: self.backoff,
            jitter: [0.0, 0.1, 0.5, 0.9][usize::from(self.jitter % 4)],
            permits,
            successes: self.successes % permits + 1,
            max_wait_ms: u64::from(self.max_wait_ms % 3000) + 100,
        }
    }

    fn ops(&self) -> Vec<Op> {
        let outcome =
            |b: u8| [Outcome::Success, Outcome::Failure, Outcome::Ignored][usize::from(b % 3)];
        self.ops
            .iter()
            .take(300)
            .map(|&(kind, value, extra)| match kind % 8 {
                0 | 1 => Op::Advance(u64::from(value % 1500)),
                2 | 3 => Op::Acquire,
                4 => Op::AcquireEarlier(u64::from(value % 50) + 1),
                5 => {
                    // The dependency's hint, 0 included.
                    let hint = u64::from(value % 16_000) * u64::from(1 + (extra & 1));
                    let hint = (extra & 0x80 != 0).then_some(hint);
                    Op::Record(usize::from(value), outcome(extra), hint)
                }
                6 => Op::Drop(usize::from(value)),
                _ => Op::Operator(
                    [
                        State::ForcedOpen,
                        State::Disabled,
                        State::MetricsOnly,
                        State::Closed,
                    ][usize::from(extra % 4)],
                ),
            })
            .collect()
    }
}

fuzz_target!(|input: Input| {
    if let Err(difference) = model::run(&input.setup(), &input.ops()) {
        panic!("{difference}");
    }
});
