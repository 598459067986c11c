//! The layer in a tower stack: what it counts, what it sheds, and its
//! budget shared by every clone. Tests pause tokio's clock, which the
//! budget's clock follows.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use palisade_hints::{Refusal, RefusalReason};
use palisade_slo::{BurnAlert, Counts, ErrorBudget, Objective, Severity, Shed, Shedding, SloLayer};
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};

const MINUTE: Duration = Duration::from_secs(60);

/// 90% good over an hour; pages at 5× over 10 minutes, confirmed over one.
fn objective() -> Objective {
    Objective::new(0.9)
        .over(60 * MINUTE)
        .alerts([BurnAlert::new(Severity::Page, 5.0, 10 * MINUTE, MINUTE)])
}

fn counts(budget: &ErrorBudget) -> Counts {
    budget.report(budget.now()).counts()
}

/// What a test asks of the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    Ok,
    Fail,
    /// Answers after two seconds.
    Slow,
    /// A low-priority call.
    Report,
}

/// A service that does as asked.
fn service()
-> impl Service<Ask, Response = Ask, Error = BoxError, Future: Send> + Clone + Send + 'static {
    service_fn(|ask: Ask| async move {
        match ask {
            Ask::Slow => tokio::time::sleep(Duration::from_secs(2)).await,
            Ask::Fail => return Err::<_, BoxError>("failed".into()),
            Ask::Ok | Ask::Report => {}
        }
        Ok(ask)
    })
}

#[tokio::test(start_paused = true)]
async fn every_clone_counts_into_one_budget() {
    let budget = ErrorBudget::new(objective()).unwrap();
    let layer = SloLayer::new(budget.clone());
    let mut first = layer.layer(service());
    let mut second = first.clone();
    let mut third = layer.layer(service());
    first.ready().await.unwrap().call(Ask::Ok).await.unwrap();
    second.ready().await.unwrap().call(Ask::Ok).await.unwrap();
    third
        .ready()
        .await
        .unwrap()
        .call(Ask::Fail)
        .await
        .unwrap_err();
    assert_eq!(counts(&budget), Counts { good: 2, bad: 1 });
    assert_eq!(counts(layer.budget()), Counts { good: 2, bad: 1 });
}

#[tokio::test(start_paused = true)]
async fn a_call_slower_than_the_threshold_is_bad_however_it_ends() {
    let budget = ErrorBudget::new(objective().latency(Duration::from_secs(1))).unwrap();
    let service = SloLayer::new(budget.clone()).layer(service());
    assert_eq!(service.clone().oneshot(Ask::Slow).await.unwrap(), Ask::Slow);
    assert_eq!(counts(&budget), Counts { good: 0, bad: 1 });

    // Dropped before it ended: bad once past the threshold ...
    let late = tokio::time::timeout(
        Duration::from_millis(1_500),
        service.clone().oneshot(Ask::Slow),
    );
    assert!(late.await.is_err(), "timed out");
    assert_eq!(counts(&budget), Counts { good: 0, bad: 2 });
    // ... and not counted before it.
    let early = tokio::time::timeout(
        Duration::from_millis(500),
        service.clone().oneshot(Ask::Slow),
    );
    assert!(early.await.is_err(), "timed out");
    assert_eq!(counts(&budget), Counts { good: 0, bad: 2 });
}

/// A call whose service panics is bad: its caller sees a failure (a
/// catch-panic layer's 500), where the budget counted nothing.
#[tokio::test(start_paused = true)]
async fn a_call_that_panics_is_bad() {
    let budget = ErrorBudget::new(objective()).unwrap();
    let service = SloLayer::new(budget.clone()).layer(service_fn(|ask: Ask| async move {
        assert!(ask != Ask::Fail, "the handler panics");
        Ok::<_, BoxError>(ask)
    }));
    let panicked = tokio::spawn(service.clone().oneshot(Ask::Fail)).await;
    assert!(panicked.unwrap_err().is_panic());
    service.oneshot(Ask::Ok).await.unwrap();
    assert_eq!(counts(&budget), Counts { good: 1, bad: 1 });
}

#[tokio::test(start_paused = true)]
async fn low_priority_calls_are_shed_while_the_budget_pages_and_not_counted() {
    let budget = ErrorBudget::new(objective()).unwrap();
    let called = Arc::new(AtomicBool::new(false));
    let inner = {
        let called = Arc::clone(&called);
        let service = service();
        service_fn(move |ask: Ask| {
            called.store(true, Ordering::Relaxed);
            service.clone().oneshot(ask)
        })
    };
    let shedding = Shedding::low_priority(|ask: &Ask| *ask == Ask::Report)
        .retry_after(Duration::from_secs(45));
    let mut service = SloLayer::new(budget.clone()).shed(shedding).layer(inner);
    let mut call = async |request| service.ready().await.unwrap().call(request).await;

    assert_eq!(
        call(Ask::Report).await.unwrap(),
        Ask::Report,
        "nothing burns yet"
    );
    for _ in 0..10 {
        call(Ask::Fail).await.unwrap_err();
    }
    // The signal is worked out again once a second at most.
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(
        budget.signal(budget.now()).firing(),
        Some(Severity::Page),
        "10 of 11 bad: 9× the budget"
    );
    called.store(false, Ordering::Relaxed);
    let error = call(Ask::Report).await.unwrap_err();
    assert!(
        !called.load(Ordering::Relaxed),
        "the service was not called"
    );
    let shed = error.downcast_ref::<Shed>().expect("a Shed error");
    assert_eq!(shed.retry_after(), Duration::from_secs(45));
    assert_eq!(shed.severity(), Severity::Page);
    let refusal = Refusal::find(&*error).expect("the marker");
    assert_eq!(refusal.reason(), RefusalReason::Shed);
    assert_eq!(call(Ask::Ok).await.unwrap(), Ask::Ok, "others pass");
    assert_eq!(
        counts(&budget),
        Counts { good: 2, bad: 10 },
        "shed calls are not counted"
    );

    // Two good minutes: the short window no longer burns, nothing is shed.
    tokio::time::advance(2 * MINUTE).await;
    for _ in 0..100 {
        call(Ask::Ok).await.unwrap();
    }
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(budget.signal(budget.now()).firing(), None);
    assert_eq!(call(Ask::Report).await.unwrap(), Ask::Report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_from_many_tasks_are_each_counted_once() {
    let budget = ErrorBudget::new(objective()).unwrap();
    let service = SloLayer::new(budget.clone()).layer(service());
    let tasks: Vec<_> = (0..16)
        .map(|task| {
            let service = service.clone();
            tokio::spawn(async move {
                for call in 0..1_000 {
                    let ask = if (task + call) % 10 == 0 {
                        Ask::Fail
                    } else {
                        Ask::Ok
                    };
                    let _ = service.clone().oneshot(ask).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        counts(&budget),
        Counts {
            good: 14_400,
            bad: 1_600
        }
    );
}

/// A reader whose clock runs ahead (a wall clock read after an NTP step)
/// does not freeze the signal for the layer, which reads the budget's own
/// clock: shedding starts within a second of the burn all the same. (The
/// reader's time set the next refresh an hour ahead, and nothing was shed
/// for that hour.)
#[tokio::test(start_paused = true)]
async fn a_signal_read_ahead_of_the_budgets_clock_does_not_freeze_shedding() {
    let budget = ErrorBudget::new(objective()).unwrap();
    let shedding = Shedding::low_priority(|ask: &Ask| *ask == Ask::Report);
    let mut service = SloLayer::new(budget.clone())
        .shed(shedding)
        .layer(service());
    let mut call = async |request| service.ready().await.unwrap().call(request).await;
    // A reader an hour ahead reads it at each call, as other layers do.
    let ahead = || budget.signal(budget.now() + 60 * MINUTE);
    assert_eq!(ahead().firing(), None);
    for _ in 0..10 {
        call(Ask::Fail).await.unwrap_err();
        assert_eq!(ahead().firing(), None, "nothing in its windows");
    }
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(ahead().firing(), None);
    let shed = call(Ask::Report).await;
    assert!(
        shed.as_ref().is_err_and(|error| error.is::<Shed>()),
        "shed: {shed:?}"
    );
    // A reader at the far end of time panics nowhere.
    let _ = budget.signal(std::time::UNIX_EPOCH + Duration::from_secs(u64::MAX / 2));
}
