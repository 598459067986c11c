//! The cell router against a model of its table, with breakers in its
//! cells, and under many tasks while the table changes.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use palisade_circuit_breaker::{CircuitBreakerLayer, Config, Open, SlidingWindow};
use palisade_traffic::{AsKey, CellError, CellRouter, Cells, SLOTS, slot_of};
use proptest::prelude::*;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};

/// Cells of one type, shared across threads.
type Cell = BoxCloneSyncService<u64, u64, BoxError>;

trait Boxed {
    fn boxed_clone_sync(self) -> Cell;
}

impl<S> Boxed for S
where
    S: Service<u64, Response = u64, Error = BoxError> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    fn boxed_clone_sync(self) -> Cell {
        BoxCloneSyncService::new(self)
    }
}

/// A change an operator makes.
#[derive(Debug, Clone)]
enum Change {
    Add,
    Assign(u16, u16, usize),
    Pin(u64, usize),
    Unpin(u64),
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        Just(Change::Add),
        (0..SLOTS, 1..SLOTS / 4, 0_usize..8).prop_map(|(start, len, cell)| Change::Assign(
            start,
            (start + len).min(SLOTS),
            cell
        )),
        (0_u64..200, 0_usize..8).prop_map(|(key, cell)| Change::Pin(key, cell)),
        (0_u64..200).prop_map(Change::Unpin),
    ]
}

proptest! {
    /// Every key is where a model of slots and pins says, after every
    /// change: no key moves that a change did not name.
    #[test]
    fn keys_move_only_when_a_change_names_them(
        changes in proptest::collection::vec(change(), 1..40),
    ) {
        let cells = Cells::new([("c0", ()), ("c1", ())]).unwrap();
        let mut names = vec!["c0".to_owned(), "c1".to_owned()];
        let mut slots: Vec<usize> = (0..SLOTS).map(|slot| usize::from(slot) / 2_048).collect();
        let mut pinned: HashMap<u64, usize> = HashMap::new();
        for change in changes {
            match change {
                Change::Add => {
                    let name = format!("c{}", names.len());
                    cells.add(&name, ()).unwrap();
                    names.push(name);
                }
                Change::Assign(start, end, cell) => {
                    let cell = cell % names.len();
                    cells.assign(start..end, &names[cell]).unwrap();
                    slots[usize::from(start)..usize::from(end)].fill(cell);
                }
                Change::Pin(key, cell) => {
                    let cell = cell % names.len();
                    cells.pin(key, &names[cell]).unwrap();
                    pinned.insert(key, cell);
                }
                Change::Unpin(key) => {
                    cells.unpin(key);
                    pinned.remove(&key);
                }
            }
            for key in 0_u64..300 {
                let expected = pinned
                    .get(&key)
                    .copied()
                    .unwrap_or(slots[usize::from(slot_of(key.key_hash()))]);
                let routed = cells.cell_of(key);
                prop_assert_eq!(routed.as_deref(), Some(names[expected].as_str()));
            }
        }
    }
}

/// Every cell of a new table has slots, whatever their number: rounding
/// the runs up left the last cells of most counts from 65 on none (of
/// 1,000 cells, 180 served no key).
#[test]
fn every_first_cell_has_slots() {
    for count in [1_u16, 2, 3, 64, 65, 100, 1_000, 2_048, 2_049, 4_095, SLOTS] {
        let cells = Cells::new((0..count).map(|n| (n.to_string(), ()))).unwrap();
        let runs = cells.assignments();
        assert_eq!(runs.len(), usize::from(count), "{count} cells");
        let most = SLOTS.div_ceil(count);
        for (n, (range, name)) in runs.iter().enumerate() {
            assert_eq!(name.as_ref(), n.to_string(), "{count} cells: in order");
            let len = u16::try_from(range.len()).unwrap();
            assert!(
                (1..=most).contains(&len),
                "{count} cells: {name} has {range:?}"
            );
        }
    }
}

#[test]
fn the_slots_are_shared_in_equal_runs_and_bad_changes_are_refused() {
    let cells = Cells::new([("a", ()), ("b", ()), ("c", ())]).unwrap();
    let runs: Vec<_> = cells
        .assignments()
        .into_iter()
        .map(|(range, name)| (range, name.to_string()))
        .collect();
    assert_eq!(
        runs,
        [
            (0..1_366, "a".to_owned()),
            (1_366..2_732, "b".to_owned()),
            (2_732..SLOTS, "c".to_owned())
        ]
    );
    assert_eq!(cells.add("a", ()), Err(CellError::Exists("a".to_owned())));
    assert_eq!(cells.assign(5..5, "a"), Err(CellError::Slots(5..5)));
    assert_eq!(
        cells.assign(0..SLOTS + 1, "a"),
        Err(CellError::Slots(0..SLOTS + 1))
    );
    assert_eq!(cells.pin("k", "z"), Err(CellError::Unknown("z".to_owned())));
    assert_eq!(
        Cells::<()>::new(Vec::<(&str, ())>::new()).unwrap_err(),
        CellError::Empty
    );
    assert_eq!(
        Cells::new([("a", ()), ("a", ())]).unwrap_err(),
        CellError::Exists("a".to_owned())
    );
}

/// Opens after 10 failures in its last 10 calls, for a minute.
fn breaker() -> CircuitBreakerLayer {
    CircuitBreakerLayer::new(
        Config::builder()
            .sliding_window(SlidingWindow::Count(10))
            .minimum_calls(10)
            .open_duration(Duration::from_secs(60))
            .build()
            .unwrap(),
    )
}

#[tokio::test]
async fn a_sick_cell_fails_fast_for_its_own_keys_and_no_other() {
    let reached_b = Arc::new(AtomicUsize::new(0));
    let healthy = service_fn(|user: u64| async move { Ok::<_, BoxError>(user) });
    let sick = {
        let reached_b = Arc::clone(&reached_b);
        service_fn(move |_user: u64| {
            reached_b.fetch_add(1, Ordering::Relaxed);
            async { Err::<u64, BoxError>("card processor unavailable".into()) }
        })
    };
    let cells = Cells::new([
        ("a", breaker().layer(healthy).boxed_clone_sync()),
        ("b", breaker().layer(sick).boxed_clone_sync()),
    ])
    .unwrap();
    let router = CellRouter::new(cells.clone(), |user: &u64| Some(*user));
    let (mut refused, mut failed) = (0, 0);
    for user in 0_u64..1_000 {
        let cell = cells.cell_of(user).unwrap();
        match (router.clone().oneshot(user).await, &*cell) {
            (Ok(served), "a") => assert_eq!(served, user),
            (Err(error), "b") if error.is::<Open>() => refused += 1,
            (Err(_), "b") => failed += 1,
            (result, cell) => panic!("user {user} on cell {cell}: {result:?}"),
        }
    }
    assert_eq!(failed, 10, "b's breaker opened after ten failures");
    assert!(
        refused > 400,
        "the rest of b's users are refused at once: {refused}"
    );
    assert_eq!(reached_b.load(Ordering::Relaxed), 10);
}

/// A service that is never ready.
#[derive(Clone)]
struct NeverReady;

impl Service<u64> for NeverReady {
    type Response = u64;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<u64, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Pending
    }

    fn call(&mut self, _user: u64) -> Self::Future {
        unreachable!("never ready, never called")
    }
}

#[tokio::test(start_paused = true)]
async fn a_cell_never_ready_holds_up_only_its_own_keys() {
    let healthy = service_fn(|user: u64| async move { Ok::<_, BoxError>(user) });
    let cells = Cells::new([
        ("a", healthy.boxed_clone_sync()),
        ("b", NeverReady.boxed_clone_sync()),
    ])
    .unwrap();
    let mut router = CellRouter::new(cells.clone(), |user: &u64| Some(*user));
    for user in 0_u64..100 {
        let call = router.ready().await.unwrap().call(user);
        let answered = tokio::time::timeout(Duration::from_secs(1), call).await;
        match &*cells.cell_of(user).unwrap() {
            "a" => assert_eq!(answered.unwrap().unwrap(), user),
            _ => assert!(answered.is_err(), "b's user {user} waits"),
        }
    }
    assert_eq!(
        cells.in_flight("b"),
        Some(0),
        "timed-out calls are not under way"
    );
}

#[tokio::test]
async fn a_retired_cell_finishes_its_requests_under_way_first() {
    let release = Arc::new(tokio::sync::Notify::new());
    let slow = {
        let release = Arc::clone(&release);
        service_fn(move |user: u64| {
            let release = Arc::clone(&release);
            async move {
                release.notified().await;
                Ok::<_, BoxError>(user)
            }
        })
    };
    let fast = service_fn(|user: u64| async move { Ok::<_, BoxError>(user) });
    let cells = Cells::new([("old", slow.boxed_clone_sync())]).unwrap();
    let router = CellRouter::new(cells.clone(), |user: &u64| Some(*user));
    let under_way = tokio::spawn(router.clone().oneshot(1));
    while cells.in_flight("old") != Some(1) {
        tokio::task::yield_now().await;
    }
    // Every key to the new cell: the next requests go there.
    cells.add("new", fast.boxed_clone_sync()).unwrap();
    assert!(matches!(
        cells.retire("old").await,
        Err(CellError::Serving(name)) if name == "old"
    ));
    cells.assign(0..SLOTS, "new").unwrap();
    cells.fallback("new").unwrap();
    assert_eq!(router.clone().oneshot(2).await.unwrap(), 2);
    let retiring = tokio::spawn({
        let cells = cells.clone();
        async move { cells.retire("old").await.map(|_| ()) }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!retiring.is_finished(), "waits for the request under way");
    assert_eq!(cells.cell_of(1_u64).as_deref(), Some("new"));
    release.notify_one();
    assert_eq!(under_way.await.unwrap().unwrap(), 1);
    retiring.await.unwrap().unwrap();
    assert_eq!(cells.in_flight("old"), None, "gone");
}

/// A response body that ends when its sender says (or at once, with
/// none).
#[cfg(feature = "http")]
struct Streaming(Option<tokio::sync::oneshot::Receiver<()>>);

#[cfg(feature = "http")]
impl http_body::Body for Streaming {
    type Data = &'static [u8];
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, BoxError>>> {
        if let Some(finished) = self.0.as_mut() {
            let _ = std::task::ready!(Pin::new(finished).poll(cx));
        }
        Poll::Ready(None)
    }
}

/// An HTTP request routed with `new_for_http` is under way on its cell
/// until its response's body ends: `retire` waits for a download or a
/// stream that outlives its response's head (it returned at the head,
/// and the stream was cut when the cell's backend went).
#[cfg(feature = "http")]
#[tokio::test]
async fn a_retired_cell_waits_for_the_bodies_of_its_responses() {
    use http::{HeaderName, Request, Response};
    use http_body::Body as _;
    use palisade_traffic::key;

    let cell = |finished: Option<tokio::sync::oneshot::Receiver<()>>| {
        let finished = Arc::new(std::sync::Mutex::new(finished));
        service_fn(move |_: Request<()>| {
            let body = Streaming(finished.lock().unwrap().take());
            async move { Ok::<_, BoxError>(Response::new(body)) }
        })
    };
    let (finish, finished) = tokio::sync::oneshot::channel();
    let cells = Cells::new([("old", cell(Some(finished)))]).unwrap();
    let user = key::header(HeaderName::from_static("x-user"));
    let router = CellRouter::new_for_http(cells.clone(), user);
    let streaming = router.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(cells.in_flight("old"), Some(1), "its body is under way");

    cells.add("new", cell(None)).unwrap();
    cells.assign(0..SLOTS, "new").unwrap();
    cells.fallback("new").unwrap();
    let served = router.clone().oneshot(Request::new(())).await.unwrap();
    drop(served);
    assert_eq!(cells.in_flight("new"), Some(0), "a dropped body ends");
    let retiring = tokio::spawn({
        let cells = cells.clone();
        async move { cells.retire("old").await.map(|_| ()) }
    });
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(!retiring.is_finished(), "waits for the body under way");

    finish.send(()).unwrap();
    let mut body = streaming.into_body();
    let end = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
    assert!(end.is_none());
    retiring.await.unwrap().unwrap();
    assert_eq!(cells.in_flight("old"), None, "gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_routed_while_keys_move_are_each_served_once() {
    let served = Arc::new(AtomicUsize::new(0));
    let cell = |served: Arc<AtomicUsize>| {
        service_fn(move |user: u64| {
            served.fetch_add(1, Ordering::Relaxed);
            async move {
                tokio::task::yield_now().await;
                Ok::<_, BoxError>(user)
            }
        })
        .boxed_clone_sync()
    };
    let cells = Cells::new([
        ("a", cell(Arc::clone(&served))),
        ("b", cell(Arc::clone(&served))),
    ])
    .unwrap();
    let router = CellRouter::new(cells.clone(), |user: &u64| Some(*user));
    let mover = tokio::spawn({
        let cells = cells.clone();
        async move {
            for round in 0..200_u16 {
                let name = if round % 2 == 0 { "a" } else { "b" };
                let start = (round * 97) % (SLOTS - 512);
                cells.assign(start..start + 512, name).unwrap();
                tokio::task::yield_now().await;
            }
        }
    });
    let tasks: Vec<_> = (0..8_u64)
        .map(|task| {
            let router = router.clone();
            tokio::spawn(async move {
                for call in 0..500_u64 {
                    let user = task * 1_000 + call;
                    assert_eq!(router.clone().oneshot(user).await.unwrap(), user);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    mover.await.unwrap();
    assert_eq!(served.load(Ordering::Relaxed), 4_000);
    assert_eq!(
        (cells.in_flight("a"), cells.in_flight("b")),
        (Some(0), Some(0))
    );
}

/// A request whose key is being worked out while its cell is retired goes
/// to a cell still serving: `retire` hands the old cell's service back
/// only when no request can reach it. (The router read the table before
/// the key function ran, so a request could enter a cell that `retire`
/// had already found idle and handed back.)
#[tokio::test]
async fn a_request_routed_while_its_cell_retires_reaches_a_serving_cell() {
    let served_by_old = Arc::new(AtomicUsize::new(0));
    let old = {
        let served = Arc::clone(&served_by_old);
        service_fn(move |user: u64| {
            served.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, BoxError>(user) }
        })
    };
    let new = service_fn(|user: u64| async move { Ok::<_, BoxError>(user) });
    let cells = Cells::new([
        ("old", old.boxed_clone_sync()),
        ("new", new.boxed_clone_sync()),
    ])
    .unwrap();
    cells.assign(0..SLOTS, "old").unwrap();
    let (keying, keyed) = std::sync::mpsc::channel::<()>();
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let wait = Arc::new(std::sync::Mutex::new(wait));
    let mut router = CellRouter::new(cells.clone(), move |user: &u64| {
        keying.send(()).unwrap();
        wait.lock().unwrap().recv().unwrap();
        Some(*user)
    });
    let routing = std::thread::spawn(move || router.call(7));
    keyed.recv().unwrap();
    // While the request's key is worked out, every key moves, and the old
    // cell is retired: it has no request under way.
    cells.assign(0..SLOTS, "new").unwrap();
    cells.fallback("new").unwrap();
    cells.retire("old").await.unwrap();
    go.send(()).unwrap();
    assert_eq!(routing.join().unwrap().await.unwrap(), 7);
    assert_eq!(
        served_by_old.load(Ordering::SeqCst),
        0,
        "the retired cell served nothing after retire returned"
    );
}
