//! Model checking of [`Reachability`]'s atomics with loom: every
//! interleaving of a failure and an answer racing.
//!
//! Run with `RUSTFLAGS="--cfg palisade_loom" cargo test -p palisade-hints --test loom`
//! (`scripts/test` does).
#![cfg(palisade_loom)]

use std::time::{Duration, Instant};

use loom::sync::Arc;
use loom::thread;
use palisade_hints::reachability::{Change, Reachability};

fn at(start: Instant, millis: u64) -> Instant {
    start + Duration::from_millis(millis)
}

/// A call that fails while a call asked after it gets its answer leaves
/// the store up, whichever comes first: the failure read the last answer
/// before the later call's came in, then marked the store down past it.
#[test]
fn a_failure_racing_a_later_answer_leaves_the_store_up() {
    loom::model(|| {
        let start = Instant::now();
        let store = Arc::new(Reachability::new(Duration::from_secs(1), start));
        let failing = {
            let store = Arc::clone(&store);
            thread::spawn(move || store.failed(at(start, 100)))
        };
        let answered = store.answered(at(start, 101));
        let failed = failing.join().unwrap();
        assert!(!store.is_down(), "{failed:?} then {answered:?}");
    });
}

/// Two failures racing mark the store down once: one of them says so.
#[test]
fn racing_failures_mark_it_down_once() {
    loom::model(|| {
        let start = Instant::now();
        let store = Arc::new(Reachability::new(Duration::from_secs(1), start));
        let other = {
            let store = Arc::clone(&store);
            thread::spawn(move || store.failed(at(start, 100)))
        };
        let changes = [store.failed(at(start, 100)), other.join().unwrap()];
        let went_down = changes.iter().filter(|c| **c == Change::WentDown).count();
        assert_eq!(went_down, 1, "{changes:?}");
        assert!(store.is_down());
    });
}
