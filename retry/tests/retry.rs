//! The generic layer under paused time: backoff, hints, refusals, the
//! deadline, the budget and readiness.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_hints::Refusal;
use palisade_retry::{Backoff, Budget, Config, DeadlineExceeded, RetryLayer};
use proptest::prelude::*;
use tokio::time::Instant;
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};
use tower_test::{assert_request_eq, mock};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A service that fails with `error()` every time and records when it was
/// called.
fn always_failing(
    error: fn() -> BoxError,
) -> (
    impl Service<u32, Response = u32, Error = BoxError, Future: Send> + Clone,
    Arc<Mutex<Vec<Instant>>>,
) {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let record = calls.clone();
    let service = service_fn(move |_: u32| {
        record.lock().unwrap().push(Instant::now());
        async move { Err::<u32, _>(error()) }
    });
    (service, calls)
}

fn gaps(calls: &Mutex<Vec<Instant>>) -> Vec<Duration> {
    let calls = calls.lock().unwrap();
    calls.windows(2).map(|pair| pair[1] - pair[0]).collect()
}

#[tokio::test(start_paused = true)]
async fn waits_follow_the_full_jitter_ceilings() {
    let config = Config::builder()
        .max_attempts(5)
        .backoff(Backoff::full_jitter(ms(100), ms(300)))
        .unlimited_retries()
        .build()
        .unwrap();
    for _ in 0..50 {
        let (service, calls) = always_failing(|| "reset".into());
        let err = RetryLayer::new(config.clone())
            .layer(service)
            .oneshot(1)
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "reset", "the last error comes back");
        let gaps = gaps(&calls);
        assert_eq!(gaps.len(), 4);
        for (gap, ceiling) in gaps.iter().zip([100, 200, 300, 300]) {
            assert!(*gap <= ms(ceiling), "{gaps:?}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn constant_backoff_is_exact() {
    let config = Config::builder()
        .max_attempts(3)
        .backoff(Backoff::constant(ms(70)))
        .build()
        .unwrap();
    let (service, calls) = always_failing(|| "reset".into());
    RetryLayer::new(config)
        .layer(service)
        .oneshot(1)
        .await
        .unwrap_err();
    assert_eq!(gaps(&calls), [ms(70), ms(70)]);
}

#[tokio::test(start_paused = true)]
async fn a_rate_limit_refusal_waits_as_told_and_an_open_circuit_is_not_retried() {
    let config = Config::builder()
        .max_attempts(3)
        .backoff(Backoff::full_jitter(ms(10), ms(1000)))
        .build()
        .unwrap();
    let (service, calls) = always_failing(|| Box::new(Refusal::rate_limited(Some(ms(450)))));
    RetryLayer::new(config.clone())
        .layer(service)
        .oneshot(1)
        .await
        .unwrap_err();
    assert_eq!(gaps(&calls), [ms(450), ms(450)]);

    let (service, calls) = always_failing(|| Box::new(Refusal::rate_limited(None)));
    RetryLayer::new(config.clone())
        .layer(service)
        .oneshot(1)
        .await
        .unwrap_err();
    assert_eq!(calls.lock().unwrap().len(), 1, "no wait named, no retry");

    let layer = RetryLayer::new(config);
    let budget = layer.budget().unwrap().clone();
    let (service, calls) = always_failing(|| Box::new(Refusal::circuit_open(Some(ms(5)))));
    let err = layer.layer(service).oneshot(1).await.unwrap_err();
    assert!(err.is::<Refusal>());
    assert_eq!(calls.lock().unwrap().len(), 1);
    assert!(
        budget.withdraw(Instant::now()),
        "the refusal spent no budget"
    );
}

/// A leaked layer retries as the layer it was, and every service made
/// from it (or from a copy) draws on the one budget.
#[tokio::test(start_paused = true)]
async fn a_leaked_layer_retries_alike_on_one_budget() {
    let builder = || {
        Config::builder()
            .max_attempts(3)
            .backoff(Backoff::constant(ms(70)))
    };
    let leaked = RetryLayer::new(builder().unlimited_retries().build().unwrap()).leak();
    let (service, calls) = always_failing(|| "reset".into());
    leaked.layer(service).oneshot(1).await.unwrap_err();
    assert_eq!(gaps(&calls), [ms(70), ms(70)], "as a layer kept as it is");

    let empty = Budget::new(0.0).min_per_second(0).max_banked(0);
    let leaked = RetryLayer::new(builder().budget(empty).build().unwrap()).leak();
    let budget = leaked.budget().expect("a budget").clone();
    let copy = leaked;
    let (first, first_calls) = always_failing(|| "reset".into());
    let (second, second_calls) = always_failing(|| "reset".into());
    leaked.layer(first).oneshot(1).await.unwrap_err();
    copy.layer(second).oneshot(1).await.unwrap_err();
    assert_eq!(first_calls.lock().unwrap().len(), 1, "an empty budget");
    assert_eq!(second_calls.lock().unwrap().len(), 1, "the same budget");
    assert!(!budget.withdraw(Instant::now()));
}

/// Services that keep calling, each a clone of one on its own task of a
/// multi-thread runtime (their calls held on counts of their own), all
/// deposit into and withdraw from the layer's one budget: every request
/// fails once, each retry takes a retry some call deposited before it,
/// and the account ends empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn services_that_keep_calling_on_many_threads_share_one_budget() {
    const TASKS: u32 = 16;
    const CALLS: u32 = 50;
    // A whole retry deposited per call, nothing for free, room for all.
    let config = Config::builder()
        .max_attempts(2)
        .backoff(Backoff::constant(ms(1)))
        .budget(Budget::new(1.0).min_per_second(0).max_banked(10_000))
        .build()
        .unwrap();
    let layer = RetryLayer::new(config);
    let budget = layer.budget().expect("a budget").clone();
    let failed = Arc::new(Mutex::new(std::collections::HashSet::new()));
    let service = layer.layer(service_fn(move |request: u32| {
        let first = failed.lock().unwrap().insert(request);
        async move {
            if first {
                Err::<u32, BoxError>("once".into())
            } else {
                Ok(request)
            }
        }
    }));
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let mut service = service.clone();
            tokio::spawn(async move {
                for call in 0..CALLS {
                    let request = task * CALLS + call;
                    let answer = service.ready().await.unwrap().call(request).await;
                    assert_eq!(answer.unwrap(), request, "retried once");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert!(
        !budget.withdraw(Instant::now()),
        "one deposit and one withdrawal a call"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hint_over_the_cap_ends_the_retries() {
    let config = Config::builder()
        .backoff(Backoff::full_jitter(ms(10), ms(400)))
        .build()
        .unwrap();
    let (service, calls) = always_failing(|| Box::new(Refusal::rate_limited(Some(ms(401)))));
    RetryLayer::new(config)
        .layer(service)
        .oneshot(1)
        .await
        .unwrap_err();
    assert_eq!(calls.lock().unwrap().len(), 1);
}

/// Attempts that each take 400 ms and fail, 100 ms apart, under
/// `deadline`: how many started, and when the caller had its answer.
async fn slow_attempts_under(deadline: Duration) -> (usize, Duration) {
    let config = Config::builder()
        .max_attempts(10)
        .backoff(Backoff::constant(ms(100)))
        .unlimited_retries()
        .deadline(deadline)
        .build()
        .unwrap();
    let calls = Arc::new(Mutex::new(0));
    let count = calls.clone();
    let slow = service_fn(move |_: u32| {
        *count.lock().unwrap() += 1;
        async {
            tokio::time::sleep(ms(400)).await;
            Err::<u32, BoxError>("timeout".into())
        }
    });
    let start = Instant::now();
    let err = RetryLayer::new(config)
        .layer(slow)
        .oneshot(1)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "timeout", "given up before the deadline");
    let calls = *calls.lock().unwrap();
    (calls, start.elapsed())
}

#[tokio::test(start_paused = true)]
async fn no_attempt_starts_that_cannot_finish_before_the_deadline() {
    // 0–400 first attempt, 500–900 second; a third would end at 1400.
    assert_eq!(slow_attempts_under(ms(1000)).await, (2, ms(900)));
}

#[tokio::test(start_paused = true)]
async fn each_retry_estimates_the_next_attempt_from_the_one_just_finished() {
    // Attempts start at 0, 500, 1000 and 1500 ms; after the fourth (ending
    // at 1900 ms) the next would end at 2400 ms, past the deadline.
    // Measured from the first attempt's start instead, the third would
    // already give up.
    assert_eq!(slow_attempts_under(ms(2000)).await, (4, ms(1900)));
}

/// `quick_failures` attempts that fail at once, then one that never ends,
/// under `deadline`: the deadline error's total and attempts, the calls
/// made, and when the caller had its answer.
async fn abandoned_after(
    quick_failures: usize,
    deadline: Duration,
) -> (Duration, u32, usize, Duration) {
    let config = Config::builder()
        .max_attempts(5)
        .backoff(Backoff::constant(ms(10)))
        .unlimited_retries()
        .deadline(deadline)
        .build()
        .unwrap();
    let calls = Arc::new(Mutex::new(0));
    let counted = calls.clone();
    let service = service_fn(move |_: u32| {
        let call = {
            let mut calls = counted.lock().unwrap();
            *calls += 1;
            *calls
        };
        async move {
            if call > quick_failures {
                std::future::pending::<()>().await;
            }
            Err::<u32, BoxError>("reset".into())
        }
    });
    let start = Instant::now();
    let err = RetryLayer::new(config)
        .layer(service)
        .oneshot(1)
        .await
        .unwrap_err();
    let exceeded = err
        .downcast_ref::<DeadlineExceeded>()
        .expect("deadline error");
    let calls = *calls.lock().unwrap();
    (
        exceeded.deadline(),
        exceeded.attempts(),
        calls,
        start.elapsed(),
    )
}

#[tokio::test(start_paused = true)]
async fn an_attempt_running_at_the_deadline_is_abandoned() {
    assert_eq!(abandoned_after(0, ms(250)).await, (ms(250), 1, 1, ms(250)));
}

#[tokio::test(start_paused = true)]
async fn an_attempt_abandoned_at_the_deadline_after_retries_counts_them_all() {
    assert_eq!(abandoned_after(2, ms(200)).await, (ms(200), 3, 3, ms(200)));
}

#[tokio::test(start_paused = true)]
async fn decorrelated_waits_grow_from_the_wait_before() {
    let base = ms(10);
    let config = Config::builder()
        .max_attempts(8)
        .backoff(Backoff::decorrelated(base, Duration::from_secs(100)))
        .unlimited_retries()
        .build()
        .unwrap();
    let mut longest = Duration::ZERO;
    for _ in 0..50 {
        let (service, calls) = always_failing(|| "reset".into());
        RetryLayer::new(config.clone())
            .layer(service)
            .oneshot(1)
            .await
            .unwrap_err();
        let gaps = gaps(&calls);
        assert_eq!(gaps.len(), 7);
        let mut previous = Duration::ZERO;
        for &gap in &gaps {
            // The timer rounds a wait up to its next millisecond.
            assert!(gap >= base, "{gaps:?}");
            assert!(gap <= previous.max(base) * 3 + ms(1), "{gaps:?}");
            previous = gap;
            longest = longest.max(gap);
        }
    }
    // Waits built on the wait before grow past the first's ceiling (and
    // its rounding); waits that forgot it never would.
    assert!(longest > base * 3 + ms(1), "{longest:?}");
}

#[tokio::test(start_paused = true)]
async fn a_deadline_of_duration_max_does_not_panic() {
    let config = Config::builder()
        .max_attempts(3)
        .backoff(Backoff::constant(ms(10)))
        .deadline(Duration::MAX)
        .build()
        .unwrap();
    let (service, calls) = always_failing(|| "reset".into());
    let err = RetryLayer::new(config)
        .layer(service)
        .oneshot(1)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "reset");
    assert_eq!(calls.lock().unwrap().len(), 3, "no deadline to speak of");
}

#[tokio::test(start_paused = true)]
async fn a_huge_hint_under_a_duration_max_cap_and_a_deadline_does_not_panic() {
    let config = Config::builder()
        .backoff(Backoff::full_jitter(ms(10), Duration::MAX))
        .deadline(Duration::from_secs(5))
        .build()
        .unwrap();
    let (service, calls) =
        always_failing(|| Box::new(Refusal::rate_limited(Some(Duration::from_secs(u64::MAX)))));
    let start = Instant::now();
    let err = RetryLayer::new(config)
        .layer(service)
        .oneshot(1)
        .await
        .unwrap_err();
    assert!(err.is::<Refusal>());
    assert_eq!(calls.lock().unwrap().len(), 1, "longer than the time left");
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn the_budget_caps_retries_of_a_dead_dependency_at_its_ratio() {
    let config = Config::builder()
        .max_attempts(3)
        .backoff(Backoff::constant(ms(1)))
        .budget(Budget::new(0.2).min_per_second(10).max_banked(50))
        .build()
        .unwrap();
    let layer = RetryLayer::new(config);
    let (service, calls) = always_failing(|| "503".into());
    let service = layer.layer(service);
    let start = Instant::now();
    let requests = 5000u32;
    for i in 0..requests {
        // Every clone (axum makes one per connection) shares the budget.
        service.clone().oneshot(i).await.unwrap_err();
        tokio::time::advance(ms(10)).await;
    }
    let seconds = start.elapsed().as_secs_f64();
    let sent = calls.lock().unwrap().len() as f64;
    let bound = f64::from(requests) * 1.2 + 50.0 + 10.0 * (seconds + 1.0);
    assert!(
        sent <= bound,
        "{sent} calls for {requests} requests, bound {bound}"
    );
    assert!(
        sent >= f64::from(requests) * 1.2,
        "retries did happen within the budget: {sent}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_inner_service_is_polled_ready_before_each_retry() {
    let config = Config::builder()
        .backoff(Backoff::constant(ms(5)))
        .build()
        .unwrap();
    let (response, mut handle) = called(config).await;
    assert_request_eq!(handle, 7).send_error("reset");
    // No capacity: the retry waits for readiness instead of calling.
    tokio::time::sleep(ms(50)).await;
    assert!(!response.is_finished());
    handle.allow(1);
    assert_request_eq!(handle, 7).send_response(70);
    assert_eq!(response.await.unwrap().unwrap(), 70);
}

/// A retry whose service is ready too late for the attempt to finish by
/// the deadline is not made: the caller has the last attempt's result
/// (the attempt was sent, and abandoned at the deadline: a write the
/// dependency may have applied, reported as failed).
#[tokio::test(start_paused = true)]
async fn a_retry_ready_too_late_for_the_deadline_is_not_made() {
    // The first attempt takes 100 ms: the estimate of the next.
    let (response, mut handle) = first_attempt_fails_after(ms(100)).await;
    // Ready again at 950 ms: an attempt would end at 1050 ms.
    tokio::time::sleep(ms(850)).await;
    handle.allow(1);
    let err = response.await.unwrap().unwrap_err();
    assert_eq!(err.to_string(), "reset");
    assert!(handle.next_request().await.is_none(), "no second attempt");
}

/// A call of 7 through a retry layer set up by `config`, to a service
/// with room for one call, under way: its answer to come, and the
/// service's handle.
async fn called(
    config: Config,
) -> (
    tokio::task::JoinHandle<Result<u32, BoxError>>,
    mock::Handle<u32, u32>,
) {
    let (inner, mut handle) = mock::pair::<u32, u32>();
    let mut service = RetryLayer::new(config).layer(inner);
    handle.allow(1);
    service.ready().await.unwrap();
    (tokio::spawn(service.call(7)), handle)
}

/// A call of 7 under a 1 s deadline, retried after 50 ms, to a service
/// with room for one call, which fails after `took`: the caller's answer
/// to come, and the service's handle (no room left).
async fn first_attempt_fails_after(
    took: Duration,
) -> (
    tokio::task::JoinHandle<Result<u32, BoxError>>,
    mock::Handle<u32, u32>,
) {
    let config = Config::builder()
        .backoff(Backoff::constant(ms(50)))
        .deadline(ms(1000))
        .build()
        .unwrap();
    let (response, mut handle) = called(config).await;
    let (request, answer) = handle.next_request().await.unwrap();
    assert_eq!(request, 7);
    tokio::time::sleep(took).await;
    answer.send_error("reset");
    (response, handle)
}

/// A retry whose service is not ready by the deadline answers with the
/// last attempt's result: no attempt was under way to be abandoned (it
/// answered `DeadlineExceeded`, where a service ready a moment sooner
/// answered with the result).
#[tokio::test(start_paused = true)]
async fn a_retry_never_ready_answers_with_the_last_result() {
    let (response, _handle) = first_attempt_fails_after(Duration::ZERO).await;
    let err = response.await.unwrap().unwrap_err();
    assert_eq!(err.to_string(), "reset");
}

/// A hint a server may send: none, a wait of a few hundred milliseconds, or
/// one as long as a `Duration` holds.
fn any_hint() -> impl Strategy<Value = Option<Duration>> {
    prop_oneof![
        Just(None),
        (0u64..600).prop_map(|n| Some(ms(n))),
        any::<u64>().prop_map(|s| Some(Duration::from_secs(s))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// However long attempts take, whatever the jittered backoff (its cap up
    /// to `Duration::MAX`) and whatever waits the dependency asks for, the
    /// caller has an answer by the deadline, and nothing panics.
    #[test]
    fn total_time_never_exceeds_the_deadline(
        attempts in proptest::collection::vec((0u64..500, any_hint()), 1..10),
        base in 0u64..200,
        cap in prop_oneof![(200u64..1000).prop_map(ms), Just(Duration::MAX)],
        deadline in prop_oneof![(1u64..3000).prop_map(ms), Just(Duration::MAX)],
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let elapsed = runtime.block_on(async {
            let config = Config::builder()
                .max_attempts(10)
                .backoff(Backoff::full_jitter(ms(base), cap))
                .deadline(deadline)
                .build()
                .unwrap();
            let attempts = Arc::new(Mutex::new(attempts.into_iter().cycle()));
            let service = service_fn(move |_: u32| {
                let (took, hint) = attempts.lock().unwrap().next().unwrap();
                async move {
                    tokio::time::sleep(ms(took)).await;
                    let error: BoxError = match hint {
                        Some(wait) => Box::new(Refusal::rate_limited(Some(wait))),
                        None => "down".into(),
                    };
                    Err::<u32, BoxError>(error)
                }
            });
            let start = Instant::now();
            let _ = RetryLayer::new(config).layer(service).oneshot(1).await;
            start.elapsed()
        });
        prop_assert!(elapsed <= deadline, "{elapsed:?} > {deadline:?}");
    }
}

/// A rate limiter's refusal below the layer is retried after its wait
/// without spending the retry budget: the dependency saw no load. The
/// budget's one retry is left for the dependency's own failure. (The
/// refusal spent it, and the dependency's failure was not retried.)
#[tokio::test(start_paused = true)]
async fn a_rate_limit_refusal_spends_no_retry_budget() {
    let config = Config::builder()
        .max_attempts(3)
        .backoff(Backoff::constant(ms(20)))
        .budget(Budget::new(0.0).min_per_second(1).max_banked(1))
        .build()
        .unwrap();
    let answers = Arc::new(Mutex::new(0u32));
    let service = service_fn(move |_: u32| {
        let answer = {
            let mut answers = answers.lock().unwrap();
            *answers += 1;
            *answers
        };
        async move {
            match answer {
                1 => Err::<u32, BoxError>(Box::new(Refusal::rate_limited(Some(ms(10))))),
                2 => Err("connection reset".into()),
                _ => Ok(answer),
            }
        }
    });
    let answered = RetryLayer::new(config).layer(service).oneshot(1).await;
    assert_eq!(answered.unwrap(), 3);
}

/// A wait of zero (a `Retry-After: 0`, a limiter's refusal with no time
/// left) is no reason to skip the backoff: every client would come back
/// at once. (The hint was the whole wait.)
#[tokio::test(start_paused = true)]
async fn a_zero_hint_still_waits_out_the_backoff() {
    let config = Config::builder()
        .max_attempts(3)
        .backoff(Backoff::constant(ms(100)))
        .build()
        .unwrap();
    let (service, calls) = always_failing(|| Box::new(Refusal::rate_limited(Some(Duration::ZERO))));
    RetryLayer::new(config)
        .layer(service)
        .oneshot(1)
        .await
        .unwrap_err();
    assert_eq!(gaps(&calls), [ms(100), ms(100)]);
}

/// A retry the budget paid for whose attempt a layer below refused (a
/// breaker that opened meanwhile, a limiter) goes back to the budget:
/// that attempt never reached the dependency (it was spent, and a bank
/// emptied by refusals had none for the dependency once it was back).
#[tokio::test(start_paused = true)]
async fn a_retry_refused_below_gives_its_budget_back() {
    let refusals: [fn() -> BoxError; 2] = [
        || Box::new(Refusal::circuit_open(Some(Duration::from_secs(5)))),
        || Box::new(Refusal::rate_limited(Some(Duration::from_millis(10)))),
    ];
    for refusal in refusals {
        for budget in [
            Budget::new(1.0).min_per_second(0).max_banked(1),
            Budget::new(0.0).min_per_second(1).max_banked(0),
        ] {
            let config = Config::builder()
                .max_attempts(3)
                .backoff(Backoff::constant(ms(100)))
                .budget(budget)
                .build()
                .unwrap();
            let layer = RetryLayer::new(config);
            let account = layer.budget().unwrap().clone();
            // A failure, then the refusal of its retry, then an answer.
            let calls = Arc::new(Mutex::new(0_u32));
            let count = calls.clone();
            let service = service_fn(move |_: u32| {
                let call = {
                    let mut calls = count.lock().unwrap();
                    *calls += 1;
                    *calls
                };
                async move {
                    match call {
                        1 => Err::<u32, BoxError>("reset".into()),
                        2 => Err(refusal()),
                        _ => Ok(call),
                    }
                }
            });
            let _ = layer.layer(service).oneshot(1).await;
            assert!(
                account.withdraw(Instant::now()),
                "the refused retry is back: {budget:?}"
            );
        }
    }
}

/// A call dropped while it waits for its retry (its caller gone, a
/// timeout above) gives back the retry the budget gave it, whether from
/// the balance or from the floor: that retry never reached the
/// dependency.
#[tokio::test(start_paused = true)]
async fn a_retry_dropped_in_its_wait_gives_its_budget_back() {
    for budget in [
        // One request deposits one retry; no floor.
        Budget::new(1.0).min_per_second(0).max_banked(1),
        // Nothing banked; a floor of one a second.
        Budget::new(0.0).min_per_second(1).max_banked(0),
    ] {
        let config = Config::builder()
            .max_attempts(3)
            .backoff(Backoff::constant(ms(1_000)))
            .budget(budget)
            .build()
            .unwrap();
        let layer = RetryLayer::new(config);
        let account = layer.budget().unwrap().clone();
        let (service, calls) = always_failing(|| "reset".into());
        let cut = tokio::time::timeout(ms(500), layer.layer(service).oneshot(1)).await;
        assert!(cut.is_err(), "dropped in its wait");
        assert_eq!(calls.lock().unwrap().len(), 1);
        assert!(
            account.withdraw(Instant::now()),
            "the retry not made is back: {budget:?}"
        );
    }
}
