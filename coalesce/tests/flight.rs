//! Single flight in process, on a multi-thread runtime. Computations wait
//! on a gate the test opens once every caller is aboard, so the counts do
//! not depend on timing.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use palisade_coalesce::{Coalescer, FlightError};
use tokio::sync::Notify;

#[derive(Debug, PartialEq, Eq)]
struct OriginDown;

type Flights = Coalescer<&'static str, u64, OriginDown>;

/// Waits until `n` callers wait on `key`'s flight.
async fn until_aboard(coalescer: &Flights, key: &'static str, n: usize) {
    while coalescer.waiters(&key) < n {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// `n` callers of `key`, each getting what the (single) computation gives
/// once `gate` opens; counts origin calls in `calls`.
fn callers(
    coalescer: &Flights,
    key: &'static str,
    n: usize,
    gate: &Arc<Notify>,
    calls: &Arc<AtomicUsize>,
    result: Result<u64, OriginDown>,
) -> Vec<tokio::task::JoinHandle<Result<u64, FlightError<OriginDown>>>> {
    let result = Arc::new(std::sync::Mutex::new(Some(result)));
    (0..n)
        .map(|_| {
            let (coalescer, gate, calls, result) = (
                coalescer.clone(),
                gate.clone(),
                calls.clone(),
                result.clone(),
            );
            tokio::spawn(async move {
                coalescer
                    .run(key, move || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        gate.notified().await;
                        result.lock().unwrap().take().expect("computed once")
                    })
                    .await
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_callers_cause_one_computation() {
    let coalescer = Flights::new(1000);
    let (gate, calls) = (Arc::new(Notify::new()), Arc::new(AtomicUsize::new(0)));
    let waiting = callers(&coalescer, "cold", 1000, &gate, &calls, Ok(7));
    until_aboard(&coalescer, "cold", 1000).await;
    gate.notify_one();
    for caller in waiting {
        assert_eq!(caller.await.unwrap().unwrap(), 7);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        coalescer.in_flight(),
        0,
        "the entry leaves when the flight ends"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dropping_the_first_caller_neither_cancels_nor_duplicates_the_work() {
    let coalescer = Flights::new(1000);
    let (gate, calls) = (Arc::new(Notify::new()), Arc::new(AtomicUsize::new(0)));
    let mut waiting = callers(&coalescer, "k", 1, &gate, &calls, Ok(9));
    until_aboard(&coalescer, "k", 1).await;
    waiting.extend(callers(&coalescer, "k", 20, &gate, &calls, Ok(0)));
    until_aboard(&coalescer, "k", 21).await;
    let leader = waiting.remove(0);
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    gate.notify_one();
    for caller in waiting {
        assert_eq!(
            caller.await.unwrap().unwrap(),
            9,
            "the leader's computation, finished"
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_computation_stops_when_the_last_waiter_leaves() {
    struct Dropped(Arc<AtomicUsize>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let coalescer = Flights::new(1000);
    let dropped = Arc::new(AtomicUsize::new(0));
    let waiting: Vec<_> = (0..5)
        .map(|_| {
            let (coalescer, dropped) = (coalescer.clone(), dropped.clone());
            tokio::spawn(async move {
                coalescer
                    .run("k", move || async move {
                        let _guard = Dropped(dropped);
                        std::future::pending::<Result<u64, OriginDown>>().await
                    })
                    .await
            })
        })
        .collect();
    until_aboard(&coalescer, "k", 5).await;
    for caller in waiting {
        caller.abort();
        let _ = caller.await;
    }
    while dropped.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    assert_eq!(coalescer.in_flight(), 0);
    // A new caller starts afresh.
    assert_eq!(coalescer.run("k", || async { Ok(3) }).await.unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_error_reaches_every_waiter_shared() {
    let coalescer = Flights::new(1000);
    let (gate, calls) = (Arc::new(Notify::new()), Arc::new(AtomicUsize::new(0)));
    let waiting = callers(&coalescer, "k", 50, &gate, &calls, Err(OriginDown));
    until_aboard(&coalescer, "k", 50).await;
    gate.notify_one();
    let mut errors = Vec::new();
    for caller in waiting {
        let error = caller.await.unwrap().unwrap_err();
        errors.push(error.failure().expect("the origin's error").clone());
    }
    assert!(
        errors.iter().all(|e| Arc::ptr_eq(e, &errors[0])),
        "one error, shared"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_panic_becomes_an_error_for_every_waiter() {
    let coalescer = Flights::new(1000);
    let gate = Arc::new(Notify::new());
    let waiting: Vec<_> = (0..30)
        .map(|_| {
            let (coalescer, gate) = (coalescer.clone(), gate.clone());
            tokio::spawn(async move {
                coalescer
                    .run("k", move || async move {
                        gate.notified().await;
                        panic!("origin bug");
                    })
                    .await
            })
        })
        .collect();
    until_aboard(&coalescer, "k", 30).await;
    gate.notify_one();
    for caller in waiting {
        match caller.await.unwrap() {
            Err(FlightError::Panicked(message)) => assert_eq!(&*message, "origin bug"),
            other => panic!("expected a panic error, got {other:?}"),
        }
    }
    assert_eq!(
        coalescer.run("k", || async { Ok(1) }).await.unwrap(),
        1,
        "still serving"
    );
}

#[tokio::test]
async fn past_its_bound_the_map_lets_callers_compute_alone() {
    let coalescer = Flights::new(1);
    let gate = Arc::new(Notify::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let first = callers(&coalescer, "a", 1, &gate, &calls, Ok(1));
    until_aboard(&coalescer, "a", 1).await;
    // "b" finds no room: it computes on its own, at once.
    assert_eq!(coalescer.run("b", || async { Ok(2) }).await.unwrap(), 2);
    assert_eq!(coalescer.in_flight(), 1);
    gate.notify_one();
    for caller in first {
        assert_eq!(caller.await.unwrap().unwrap(), 1);
    }
}

/// A value that says when the last copy of it is dropped: the flight's
/// channel keeps it until the flight's task has ended.
#[derive(Debug)]
struct Ended(std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>);

impl Drop for Ended {
    fn drop(&mut self) {
        if let Some(ended) = self.0.lock().unwrap().take() {
            let _ = ended.send(());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_flight_leaves_a_newer_flight_of_its_key_in_place() {
    let coalescer: Coalescer<&'static str, Arc<Ended>, OriginDown> = Coalescer::new(1000);
    let (gate, (entered, entered_rx)) = (Arc::new(Notify::new()), tokio::sync::oneshot::channel());
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (ended, task_ended) = tokio::sync::oneshot::channel();
    let first = {
        let (coalescer, gate) = (coalescer.clone(), gate.clone());
        tokio::spawn(async move {
            coalescer
                .run("k", move || async move {
                    gate.notified().await;
                    // The flight's last poll, held on its worker thread while
                    // its waiter leaves and a new caller starts a new flight.
                    entered.send(()).unwrap();
                    released.recv().unwrap();
                    Ok(Arc::new(Ended(std::sync::Mutex::new(Some(ended)))))
                })
                .await
        })
    };
    while coalescer.waiters(&"k") < 1 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    gate.notify_one();
    entered_rx.await.unwrap();
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    assert_eq!(coalescer.in_flight(), 0, "the last waiter left");
    let second = {
        let coalescer = coalescer.clone();
        tokio::spawn(async move {
            coalescer
                .run("k", || {
                    std::future::pending::<Result<Arc<Ended>, OriginDown>>()
                })
                .await
        })
    };
    while coalescer.waiters(&"k") < 1 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    release.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), task_ended)
        .await
        .expect("the first flight's task ends")
        .unwrap();
    assert_eq!(
        (coalescer.in_flight(), coalescer.waiters(&"k")),
        (1, 1),
        "the second caller's flight is still in the map"
    );
    second.abort();
}

#[test]
fn a_re_entrant_call_from_the_closure_does_not_deadlock() {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let coalescer = Flights::new(1000);
        let inside = coalescer.clone();
        let result = runtime.block_on(coalescer.run("k", move || {
            // The closure looks at the coalescer before returning its future.
            let in_flight = inside.in_flight();
            async move { Ok(u64::try_from(in_flight).unwrap()) }
        }));
        done.send(result).unwrap();
    });
    let result = finished
        .recv_timeout(Duration::from_secs(30))
        .expect("the call returns rather than deadlock");
    assert_eq!(result.unwrap(), 1, "its own flight is in the map");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synchronous_panic_in_the_closure_does_not_escape() {
    let coalescer = Flights::new(1000);
    let caller = {
        let coalescer = coalescer.clone();
        tokio::spawn(async move {
            coalescer
                .run("k", || -> std::future::Ready<Result<u64, OriginDown>> {
                    panic!("bad configuration")
                })
                .await
        })
    };
    match caller.await.expect("the caller's task did not panic") {
        Err(FlightError::Panicked(message)) => assert_eq!(&*message, "bad configuration"),
        other => panic!("expected a panic error, got {other:?}"),
    }
    assert_eq!(coalescer.in_flight(), 0);
    // Past the map's bound too (computing alone).
    let full = Flights::new(0);
    let alone = full
        .run("k", || -> std::future::Ready<Result<u64, OriginDown>> {
            panic!("bad configuration")
        })
        .await;
    assert!(matches!(alone, Err(FlightError::Panicked(_))));
}

/// Asked outside a Tokio runtime (a caller polling with an executor of its
/// own), there is no task to run a flight on: the caller computes alone,
/// and the key is left free, where the flight used to stay in the map for
/// good (its spawn panicked before anything could take it out).
#[test]
fn a_caller_outside_a_runtime_computes_alone_and_leaves_the_key_free() {
    let coalescer = Flights::new(10);
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    for _ in 0..2 {
        let run = std::pin::pin!(coalescer.run("k", || async { Ok(1) }));
        assert!(matches!(
            run.poll(&mut context),
            std::task::Poll::Ready(Ok(1))
        ));
        assert_eq!(coalescer.in_flight(), 0);
    }
}

/// A computation runs in its starter's trace context, though on a task
/// of its own: the origin a handler under the coalescing layer called,
/// and every call it made in turn, began a trace of its own.
#[cfg(feature = "tracecontext")]
#[tokio::test]
async fn a_computation_runs_in_its_starters_trace_context() {
    use palisade_tracecontext::{TraceContext, TraceFlags, TraceId};
    let coalescer: Coalescer<&'static str, Option<TraceId>, OriginDown> = Coalescer::new(16);
    let starter = TraceContext::new_root(TraceFlags::SAMPLED);
    let seen = starter
        .clone()
        .scope(coalescer.run("key", || async {
            Ok(TraceContext::current().map(|context| context.trace_id()))
        }))
        .await
        .unwrap();
    assert_eq!(seen, Some(starter.trace_id()));
}
