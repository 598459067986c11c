//! The canary split judging a canary by its calls: halted when worse,
//! left alone when not, every step and the halt an event.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use palisade_traffic::{Canary, CanaryEvent, CanaryPlan, CanarySplit, HaltReason};
use tower::{BoxError, Service, ServiceExt, service_fn};

/// A service that fails every `every`-th call it gets, after `delay`.
fn version(
    every: u64,
    delay: Duration,
) -> impl Service<u64, Response = u64, Error = BoxError, Future: Send> + Clone + Send + Sync + 'static
{
    let calls = Arc::new(AtomicU64::new(0));
    service_fn(move |user: u64| {
        let call = calls.fetch_add(1, Ordering::Relaxed) + 1;
        async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if call.is_multiple_of(every) {
                Err::<u64, BoxError>("failed".into())
            } else {
                Ok(user)
            }
        }
    })
}

/// A user's id, the key a split goes by.
type ByUser = fn(&u64) -> Option<u64>;

/// A split of users between `stable` and `canary_service`, as `canary`
/// says.
fn by_user<St, Ca>(stable: St, canary_service: Ca, canary: &Canary) -> CanarySplit<St, Ca, ByUser> {
    CanarySplit::new(stable, canary_service, canary.clone(), |user| Some(*user))
}

/// The error rates of the canary and the stable service the halt `events`
/// tell of; it must be a halt for the canary's errors.
async fn halted_for_errors(
    events: &mut tokio::sync::broadcast::Receiver<CanaryEvent>,
) -> (f64, f64) {
    let Ok(CanaryEvent::Halted {
        reason: HaltReason::Errors { canary, stable },
    }) = events.recv().await
    else {
        panic!("halted for its errors");
    };
    (canary, stable)
}

/// Half the users on the canary at once, judged after 200 calls a side.
fn plan() -> CanaryPlan {
    CanaryPlan::new().steps([0.5, 1.0]).min_calls(200)
}

#[tokio::test]
async fn a_canary_failing_more_is_halted_and_every_call_goes_back_to_stable() {
    let canary = Canary::new(plan()).unwrap();
    let mut events = canary.subscribe();
    // The stable fails 1 call in 100, the canary 1 in 10.
    let split = by_user(
        version(100, Duration::ZERO),
        version(10, Duration::ZERO),
        &canary,
    );
    let mut user = 0;
    while !canary.is_halted() {
        let _ = split.clone().oneshot(user).await;
        user += 1;
        assert!(user < 10_000, "never halted");
    }
    let (bad, stable) = halted_for_errors(&mut events).await;
    assert!(bad > 0.05 && stable < 0.02, "{bad} against {stable}");
    assert_eq!(canary.share(), 0.0);
    let (_, (on_canary, _)) = canary.counts();
    for more in 0..1_000 {
        let _ = split.clone().oneshot(user + more).await;
    }
    assert_eq!(
        canary.counts().1.0,
        on_canary,
        "no call went to the canary since"
    );
    assert!(canary.promote().is_err());
}

#[tokio::test]
async fn a_canary_as_good_as_stable_is_left_to_run() {
    let canary = Canary::new(plan()).unwrap();
    let split = by_user(
        version(100, Duration::ZERO),
        version(100, Duration::ZERO),
        &canary,
    );
    for user in 0..10_000 {
        let _ = split.clone().oneshot(user).await;
    }
    assert!(!canary.is_halted());
    let ((stable, _), (on_canary, _)) = canary.counts();
    assert_eq!(stable + on_canary, 10_000);
    assert!(
        (4_000..6_000).contains(&on_canary),
        "about half: {on_canary}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_slower_canary_is_halted_for_its_latency() {
    let canary = Canary::new(plan()).unwrap();
    let mut events = canary.subscribe();
    let split = by_user(
        version(u64::MAX, Duration::from_millis(10)),
        version(u64::MAX, Duration::from_millis(20)),
        &canary,
    );
    let mut user = 0;
    while !canary.is_halted() {
        split.clone().oneshot(user).await.unwrap();
        user += 1;
        assert!(user < 10_000, "never halted");
    }
    let Ok(CanaryEvent::Halted {
        reason: HaltReason::Latency {
            canary: slow,
            stable,
        },
    }) = events.recv().await
    else {
        panic!("halted for its latency");
    };
    assert!(slow >= Duration::from_millis(20) && stable < Duration::from_millis(20));
}

/// A canary that never answers is halted though no call of it ends: the
/// callers' own timeout drops each call, which counts for as long as it
/// ran. (Dropped calls used to count for nothing, so the canary was never
/// judged and kept its share of users for good.)
#[tokio::test(start_paused = true)]
async fn a_canary_that_hangs_is_halted_through_its_callers_timeouts() {
    let canary = Canary::new(plan()).unwrap();
    let split = by_user(
        version(u64::MAX, Duration::from_millis(10)),
        service_fn(|_: u64| std::future::pending::<Result<u64, BoxError>>()),
        &canary,
    );
    let mut user = 0;
    while !canary.is_halted() {
        let _ = tokio::time::timeout(Duration::from_secs(1), split.clone().oneshot(user)).await;
        user += 1;
        assert!(user < 10_000, "never halted: {:?}", canary.counts());
    }
    assert_eq!(canary.share(), 0.0);
}

/// A canary that hangs on one call in 25 is halted for it: a call its
/// caller abandons is a failure. (It counted as a success, and the hung
/// calls, under 5%, stayed above the 95th percentile: the canary ran on.)
#[tokio::test(start_paused = true)]
async fn a_canary_that_hangs_now_and_then_is_halted_for_its_abandoned_calls() {
    let canary = Canary::new(plan()).unwrap();
    let mut events = canary.subscribe();
    let calls = Arc::new(AtomicU64::new(0));
    let hangs_now_and_then = service_fn(move |user: u64| {
        let call = calls.fetch_add(1, Ordering::Relaxed) + 1;
        async move {
            if call.is_multiple_of(25) {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok::<_, BoxError>(user)
        }
    });
    let split = by_user(
        version(u64::MAX, Duration::from_millis(10)),
        hangs_now_and_then,
        &canary,
    );
    let mut user = 0;
    while !canary.is_halted() {
        let _ = tokio::time::timeout(Duration::from_secs(1), split.clone().oneshot(user)).await;
        user += 1;
        assert!(user < 20_000, "never halted: {:?}", canary.counts());
    }
    let (bad, stable) = halted_for_errors(&mut events).await;
    assert!(bad > 0.02 && stable == 0.0, "{bad} against {stable}");
}

/// The latency margin is kept to within a tenth: a canary 3% slower is
/// left to run, one 39% slower is halted (margin 25%). (Latencies were
/// compared by buckets 41% wide: the first was halted, the second not.)
#[tokio::test(start_paused = true)]
async fn the_latency_margin_holds_to_within_a_tenth() {
    for (stable, canary, halted) in [(90, 93, false), (66, 92, true)] {
        let judged = Canary::new(plan()).unwrap();
        let split = by_user(
            version(u64::MAX, Duration::from_millis(stable)),
            version(u64::MAX, Duration::from_millis(canary)),
            &judged,
        );
        for user in 0..2_000 {
            split.clone().oneshot(user).await.unwrap();
        }
        assert_eq!(
            judged.is_halted(),
            halted,
            "stable {stable} ms, canary {canary} ms"
        );
    }
}

#[tokio::test]
async fn each_step_is_an_event_and_starts_the_judging_again() {
    let canary = Canary::new(CanaryPlan::new()).unwrap();
    let mut events = canary.subscribe();
    let split = by_user(
        version(u64::MAX, Duration::ZERO),
        version(u64::MAX, Duration::ZERO),
        &canary,
    );
    for user in 0..100 {
        split.clone().oneshot(user).await.unwrap();
    }
    assert_eq!(canary.promote().unwrap(), 0.1);
    assert_eq!(
        events.recv().await.unwrap(),
        CanaryEvent::Promoted { share: 0.1 }
    );
    assert_eq!(
        canary.counts(),
        ((0, 0), (0, 0)),
        "a new step, judged afresh"
    );
    canary.promote().unwrap();
    canary.promote().unwrap();
    assert_eq!(canary.share(), 1.0);
    assert!(canary.promote().is_err(), "the last step");
    canary.halt();
    assert_eq!(
        events.recv().await.unwrap(),
        CanaryEvent::Promoted { share: 0.5 }
    );
    assert_eq!(
        events.recv().await.unwrap(),
        CanaryEvent::Promoted { share: 1.0 }
    );
    assert_eq!(
        events.recv().await.unwrap(),
        CanaryEvent::Halted {
            reason: HaltReason::Operator
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_from_many_tasks_are_each_counted_on_one_side() {
    let canary = Canary::new(plan().min_calls(u64::MAX)).unwrap();
    let split = by_user(
        version(7, Duration::ZERO),
        version(7, Duration::ZERO),
        &canary,
    );
    let tasks: Vec<_> = (0..8_u64)
        .map(|task| {
            let split = split.clone();
            tokio::spawn(async move {
                for call in 0..1_000 {
                    let _ = split.clone().oneshot(task * 1_000 + call).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let ((stable, stable_errors), (on_canary, canary_errors)) = canary.counts();
    assert_eq!(stable + on_canary, 8_000);
    // Each side fails every seventh call it gets.
    assert_eq!((stable_errors, canary_errors), (stable / 7, on_canary / 7));
}

/// A canary promoted every `every` through `shares`, each step judged
/// (enough calls on each side) and promoted within `within`.
async fn promoted_by_a_schedule(every: Duration, shares: &[f64], within: Duration) {
    let canary = Canary::new(CanaryPlan::new().min_calls(20)).unwrap();
    let mut events = canary.subscribe();
    let split = by_user(
        version(u64::MAX, Duration::ZERO),
        version(u64::MAX, Duration::ZERO),
        &canary,
    );
    canary.promote_every(every);
    let mut user = 0;
    for &share in shares {
        while !matches!(canary.counts(), ((stable, _), (on, _)) if stable >= 20 && on >= 20) {
            split.clone().oneshot(user).await.unwrap();
            user += 1;
        }
        let promoted = tokio::time::timeout(within, events.recv()).await;
        assert_eq!(
            promoted.expect("promoted in time").unwrap(),
            CanaryEvent::Promoted { share }
        );
        assert_eq!(canary.share(), share);
    }
}

#[tokio::test(start_paused = true)]
async fn a_schedule_promotes_step_by_step_until_the_last() {
    promoted_by_a_schedule(
        Duration::from_secs(600),
        &[0.1, 0.5, 1.0],
        Duration::from_secs(86_400),
    )
    .await;
}

/// A step as long as `Duration::MAX` is a year: the schedule's task
/// panicked at once on the overflow, and the canary was never promoted.
#[tokio::test(start_paused = true)]
async fn a_schedule_of_endless_steps_promotes_after_a_year() {
    promoted_by_a_schedule(Duration::MAX, &[0.1], Duration::from_secs(400 * 86_400)).await;
}

/// A schedule never promotes from a step nobody used: with no calls, an
/// hour of ten-minute steps leaves the canary at its first. (It promoted
/// step after step, unjudged.)
#[tokio::test(start_paused = true)]
async fn a_schedule_waits_for_a_step_to_be_judged() {
    let canary = Canary::new(CanaryPlan::new()).unwrap();
    canary.promote_every(Duration::from_secs(600));
    tokio::time::sleep(Duration::from_secs(3_600)).await;
    assert_eq!(canary.share(), 0.01);
}

/// A schedule judges a step's latency before promoting from it, however
/// few calls past `min_calls` it made: a canary twice as slow, with 220
/// calls (the latency was compared at every 64th call from the 200th, so
/// not yet), is halted, not promoted.
#[tokio::test(start_paused = true)]
async fn a_schedule_compares_latencies_before_it_promotes() {
    let canary = Canary::new(CanaryPlan::new().steps([0.5, 1.0]).min_calls(200)).unwrap();
    let split = by_user(
        version(u64::MAX, Duration::from_millis(10)),
        version(u64::MAX, Duration::from_millis(20)),
        &canary,
    );
    let mut user = 0;
    while canary.counts().1.0 < 220 || canary.counts().0.0 < 200 {
        if canary.counts().1.0 >= 250 {
            break;
        }
        split.clone().oneshot(user).await.unwrap();
        user += 1;
    }
    assert!(!canary.is_halted(), "not judged for latency yet");
    canary.promote_every(Duration::from_secs(600));
    tokio::time::sleep(Duration::from_secs(601)).await;
    assert!(canary.is_halted(), "halted at the schedule's judging");
    assert_eq!(canary.share(), 0.0);
}

/// At a step that takes every call, the canary is judged against the
/// stable's calls of the step before: one failing more is halted there
/// too. (The stable side, reset and given no call, left it unjudged.)
#[tokio::test]
async fn a_canary_taking_every_call_is_still_judged() {
    let canary = Canary::new(plan()).unwrap();
    // The canary goes bad once it takes every call.
    let bad = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let canary_service = {
        let (bad, failing) = (Arc::clone(&bad), version(5, Duration::ZERO));
        service_fn(move |user: u64| {
            let (bad, call) = (bad.load(Ordering::SeqCst), failing.clone().oneshot(user));
            async move { if bad { call.await } else { Ok(user) } }
        })
    };
    let split = by_user(version(100, Duration::ZERO), canary_service, &canary);
    let mut user = 0;
    while canary.counts().0.0 < 200 {
        let _ = split.clone().oneshot(user).await;
        user += 1;
    }
    assert!(!canary.is_halted());
    assert_eq!(canary.promote().unwrap(), 1.0);
    bad.store(true, Ordering::SeqCst);
    while !canary.is_halted() {
        let _ = split.clone().oneshot(user).await;
        user += 1;
        assert!(user < 10_000, "never halted: {:?}", canary.counts());
    }
}

#[tokio::test(start_paused = true)]
async fn a_schedule_stops_with_the_halt() {
    let canary = Canary::new(CanaryPlan::new().min_calls(20)).unwrap();
    let mut events = canary.subscribe();
    let split = by_user(
        version(u64::MAX, Duration::ZERO),
        version(u64::MAX, Duration::ZERO),
        &canary,
    );
    canary.promote_every(Duration::from_secs(600));
    let mut user = 0;
    while canary.counts().1.0 < 20 {
        split.clone().oneshot(user).await.unwrap();
        user += 1;
    }
    assert_eq!(
        events.recv().await.unwrap(),
        CanaryEvent::Promoted { share: 0.1 }
    );
    canary.halt();
    tokio::time::sleep(Duration::from_secs(3_600)).await;
    assert_eq!(
        events.recv().await.unwrap(),
        CanaryEvent::Halted {
            reason: HaltReason::Operator
        }
    );
    assert!(events.try_recv().is_err(), "no step after the halt");
    assert_eq!(canary.share(), 0.0);
}

/// A halt racing a promotion wins: a halted canary takes no traffic,
/// whichever of the two lands first. (The promotion used to store its
/// share after the halt had stored zero.) Also: two promotions racing
/// never move the share back.
#[test]
fn a_halt_racing_a_promotion_leaves_the_canary_without_traffic() {
    let plan = CanaryPlan::new().steps([0.1, 0.5, 1.0]);
    let barrier = std::sync::Barrier::new(3);
    let canaries: Vec<Canary> = (0..5_000)
        .map(|_| Canary::new(plan.clone()).unwrap())
        .collect();
    std::thread::scope(|scope| {
        let racers = [0, 1].map(|racer| {
            let (barrier, canaries) = (&barrier, &canaries);
            scope.spawn(move || {
                barrier.wait();
                for canary in canaries {
                    if racer == 0 {
                        let _ = canary.promote();
                    } else {
                        canary.halt();
                    }
                }
            })
        });
        barrier.wait();
        for racer in racers {
            racer.join().unwrap();
        }
    });
    for canary in &canaries {
        assert!(canary.is_halted());
        assert_eq!(canary.share(), 0.0, "a halted canary takes no traffic");
    }
}

#[test]
fn promotions_racing_never_move_the_share_back() {
    let plan = CanaryPlan::new().steps([0.01, 0.1, 0.5, 1.0]);
    let canaries: Vec<Canary> = (0..5_000)
        .map(|_| Canary::new(plan.clone()).unwrap())
        .collect();
    let barrier = std::sync::Barrier::new(3);
    let seen = std::thread::scope(|scope| {
        let racers = [0, 1].map(|_| {
            let (barrier, canaries) = (&barrier, &canaries);
            scope.spawn(move || {
                barrier.wait();
                for canary in canaries {
                    let _ = canary.promote();
                }
            })
        });
        barrier.wait();
        // Watch each canary's share while the racers promote it.
        let mut backwards = 0;
        for canary in &canaries {
            let mut last = 0.0;
            for _ in 0..4 {
                let now = canary.share();
                if now < last {
                    backwards += 1;
                }
                last = now;
            }
        }
        for racer in racers {
            racer.join().unwrap();
        }
        backwards
    });
    assert_eq!(seen, 0, "a share moved back");
    for canary in &canaries {
        assert!(canary.share() >= 0.1, "each promoted at least once");
    }
}

/// Calls a rate limiter inside the canary's stack refused (for every
/// user, here) count for neither side: they say the clients are over
/// their limits, nothing of the canary, so they cannot halt it. (They
/// counted as its failures.)
#[tokio::test]
async fn rate_limited_calls_count_for_neither_side() {
    let canary = Canary::new(plan()).unwrap();
    let split = by_user(
        version(u64::MAX, Duration::ZERO),
        service_fn(|_: u64| async {
            Err::<u64, BoxError>(Box::new(palisade_hints::Refusal::rate_limited(None)))
        }),
        &canary,
    );
    for user in 0..2_000 {
        let _ = split.clone().oneshot(user).await;
    }
    assert!(!canary.is_halted());
    let ((stable, _), (on_canary, _)) = canary.counts();
    assert!(stable > 800, "{stable}");
    assert_eq!(on_canary, 0, "no refused call counted");
}

/// A canary whose own breaker opens on it is halted: the breaker's
/// refusals are its failures (its users got no answer because of them).
#[tokio::test]
async fn a_canary_behind_its_own_open_breaker_is_halted() {
    let canary = Canary::new(plan()).unwrap();
    let split = by_user(
        version(u64::MAX, Duration::ZERO),
        service_fn(|_: u64| async {
            Err::<u64, BoxError>(Box::new(palisade_hints::Refusal::circuit_open(Some(
                Duration::from_secs(5),
            ))))
        }),
        &canary,
    );
    let mut user = 0;
    while !canary.is_halted() {
        let _ = split.clone().oneshot(user).await;
        user += 1;
        assert!(user < 10_000, "never halted: {:?}", canary.counts());
    }
}

/// A canary call that panics, caught above the split, counts as a failure.
#[tokio::test]
async fn a_canary_call_that_panics_is_a_failure() {
    use futures_util::FutureExt;

    let canary = Canary::new(CanaryPlan::new().steps([1.0])).unwrap();
    let split = by_user(
        version(u64::MAX, Duration::ZERO),
        service_fn(|user: u64| async move {
            assert!(user == u64::MAX, "the canary's bug");
            Ok::<u64, BoxError>(user)
        }),
        &canary,
    );
    for user in 0..10 {
        let call = std::panic::AssertUnwindSafe(split.clone().oneshot(user));
        assert!(call.catch_unwind().await.is_err());
    }
    assert_eq!(canary.counts().1, (10, 10), "each a failure");
}

/// With `min_calls(0)` a canary is still judged only against some stable
/// calls: one taking every call from the start is never halted for a
/// stable that made none. (Its p95 was compared with an empty stable's,
/// zero, and it was halted at its 64th call.)
#[tokio::test(start_paused = true)]
async fn a_canary_is_judged_only_against_stable_calls() {
    let canary = Canary::new(CanaryPlan::new().steps([1.0]).min_calls(0)).unwrap();
    let split = by_user(
        version(u64::MAX, Duration::from_millis(10)),
        version(u64::MAX, Duration::from_millis(10)),
        &canary,
    );
    for user in 0..200 {
        split.clone().oneshot(user).await.unwrap();
    }
    assert!(!canary.is_halted());
}

/// A canary whose gRPC calls fail in their heads (a tonic handler's
/// `Err(Status::internal(..))`, answered trailers-only with HTTP 200) is
/// halted: every such call was a success on the code before, and the
/// canary ran for ever.
#[cfg(feature = "http")]
#[tokio::test]
async fn a_canary_failing_its_grpc_calls_is_halted() {
    use http::Response;
    use palisade_hints::grpc::trailers_only;
    use palisade_traffic::ServerErrorsAsFailures;

    let canary = Canary::new(plan()).unwrap();
    let answered = |code: u32| {
        service_fn(move |_: u64| async move {
            Ok::<Response<String>, BoxError>(trailers_only(code, "as asked"))
        })
    };
    let split = by_user(answered(5), answered(13), &canary).failures(ServerErrorsAsFailures);
    let mut user = 0;
    while !canary.is_halted() {
        let _ = split.clone().oneshot(user).await;
        user += 1;
        assert!(user < 10_000, "never halted: {:?}", canary.counts());
    }
}

/// A canary whose own rate limiter fails closed (its store away: a 429
/// with a `StoreDown` refusal) is halted: its users got no answer, and
/// on the code before the 429s were its successes.
#[cfg(feature = "http")]
#[tokio::test]
async fn a_canary_whose_limiter_fails_closed_is_halted() {
    use http::{Response, StatusCode};
    use palisade_hints::Refusal;
    use palisade_hints::http::refusal_response;
    use palisade_traffic::ServerErrorsAsFailures;

    let canary = Canary::new(plan()).unwrap();
    let stable =
        service_fn(|_: u64| async { Ok::<Response<String>, BoxError>(Response::default()) });
    let refused = service_fn(|_: u64| async {
        Ok::<Response<String>, BoxError>(refusal_response(
            StatusCode::TOO_MANY_REQUESTS,
            Refusal::store_down(Some(Duration::from_millis(500))),
        ))
    });
    let split = by_user(stable, refused, &canary).failures(ServerErrorsAsFailures);
    let mut user = 0;
    while !canary.is_halted() {
        let _ = split.clone().oneshot(user).await;
        user += 1;
        assert!(user < 10_000, "never halted: {:?}", canary.counts());
    }
}
