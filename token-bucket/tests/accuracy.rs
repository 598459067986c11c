//! Processes sharing one bucket through a real Redis admit at most
//! `capacity + rate × elapsed`, and at least half of it on a loaded
//! machine. A short run with generous bounds; the `accuracy` example gives
//! the full-length figure (nearly all of it).
#![cfg(feature = "redis")]

#[path = "../examples/accuracy/fleet.rs"]
mod fleet;

use std::time::Duration;

/// The entry point of the child processes (this test binary run again with
/// the fleet's settings in its environment), not a test of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by a_fleet_sharing_one_bucket_admits_the_bound in child processes"]
async fn accuracy_child() {
    assert!(
        fleet::child_if_asked().await,
        "only run as a child of the fleet"
    );
}

#[test]
fn a_fleet_sharing_one_bucket_admits_the_bound() {
    admits_the_bound(false);
}

#[test]
fn a_fleet_leasing_from_one_bucket_admits_the_bound() {
    admits_the_bound(true);
}

fn admits_the_bound(leasing: bool) {
    let run = fleet::Run {
        processes: 2,
        tasks: 8,
        duration: Duration::from_secs(2),
        capacity: 50,
        rate: 200.0,
        leasing,
    };
    let exe = std::env::current_exe().unwrap();
    let args = [
        "--exact",
        "accuracy_child",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ];
    let outcome = fleet::run_fleet(&exe, &args, &run);
    let bound = outcome.bound(&run);
    #[allow(clippy::cast_precision_loss)]
    let admitted = outcome.admitted as f64;
    assert!(
        outcome.decisions > outcome.admitted * 2,
        "the fleet hammered the bucket: {outcome:?}"
    );
    assert!(
        admitted <= bound,
        "{admitted} admitted over a bound of {bound}"
    );
    // Nearly all, with room for a loaded machine: while the processes
    // stand still, the bucket fills to its capacity and what flows past it
    // is lost to them but not to the bound. The `accuracy` example gives
    // the figure on a quiet machine.
    assert!(
        admitted >= 0.5 * bound,
        "{admitted} admitted of a bound of {bound}"
    );
}
