//! The breaker against a small reference model: after every step of a
//! random sequence of calls (some with an older clock reading), outcomes
//! with and without the dependency's hint, cancellations, time and
//! operator actions, both are in the same state and admit or refuse the
//! same calls with the same wait; the open time is checked against the
//! range the jitter allows.

use std::time::Duration;

use palisade_circuit_breaker::{Outcome, SlidingWindow, State};
use proptest::prelude::*;

#[path = "support/model.rs"]
mod model;

use model::{Op, Setup};

fn op() -> impl Strategy<Value = Op> {
    // The dependency's Retry-After or pushback: 0, below the open
    // duration, above it, or past the longest open time.
    let hint = prop_oneof![Just(0u64), 0u64..20_000];
    let outcome = prop_oneof![
        3 => Just(Outcome::Failure),
        3 => Just(Outcome::Success),
        1 => Just(Outcome::Ignored),
    ];
    prop_oneof![
        4 => (0u64..1_500).prop_map(Op::Advance),
        6 => Just(Op::Acquire),
        2 => (1u64..50).prop_map(Op::AcquireEarlier),
        6 => (0usize..8, outcome, proptest::option::weighted(0.3, hint))
            .prop_map(|(i, o, h)| Op::Record(i, o, h)),
        1 => (0usize..8).prop_map(Op::Drop),
        1 => prop_oneof![
            Just(State::ForcedOpen),
            Just(State::Disabled),
            Just(State::MetricsOnly),
            Just(State::Closed),
        ]
        .prop_map(Op::Operator),
    ]
}

fn setup() -> impl Strategy<Value = Setup> {
    let window = prop_oneof![
        (1u32..8).prop_map(SlidingWindow::Count),
        // Large enough that a thread's calls, once the ring is full, take
        // their positions in batches.
        (32u32..40).prop_map(SlidingWindow::Count),
        (1u64..5, 1u32..5).prop_map(|(s, b)| SlidingWindow::Time {
            duration: Duration::from_secs(s),
            buckets: b
        }),
    ];
    (
        window,
        1u32..8,
        prop_oneof![Just(0.25), Just(0.5), Just(1.0)],
        proptest::option::of((50u64..800, prop_oneof![Just(0.5), Just(1.0)])),
        100u64..2_000,
        any::<bool>(),
        1u8..4,
        1u8..4,
        100u64..3_000,
        prop_oneof![Just(0.0), Just(0.1), Just(0.5), Just(0.9)],
    )
        .prop_map(
            |(
                window,
                minimum,
                threshold,
                slow,
                open_ms,
                backoff,
                permits,
                successes,
                max_wait_ms,
                jitter,
            )| {
                let minimum = match window {
                    SlidingWindow::Count(n) => minimum.min(n),
                    SlidingWindow::Time { .. } => minimum,
                };
                Setup {
                    window,
                    minimum,
                    threshold,
                    slow,
                    open_ms,
                    backoff,
                    jitter,
                    permits,
                    successes: successes.min(permits),
                    max_wait_ms,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_breaker_follows_the_model(setup in setup(), ops in proptest::collection::vec(op(), 1..200)) {
        if let Err(difference) = model::run(&setup, &ops) {
            prop_assert!(false, "{}", difference);
        }
    }
}
