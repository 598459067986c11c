//! The cache under paused time: fresh, stale-while-revalidate,
//! stale-if-error, early refresh, coalesced misses and its bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use palisade_coalesce::{Cache, Freshness, Served};

#[derive(Debug)]
struct OriginDown;

type Trending = Cache<&'static str, u64, OriginDown>;

/// An origin's work, as the tests hand it over.
type Computation = std::pin::Pin<Box<dyn Future<Output = Result<u64, OriginDown>> + Send>>;

fn s(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// An origin that takes `took` and answers its call number, or fails when
/// `failing` is set.
#[derive(Clone, Default)]
struct Origin {
    calls: Arc<AtomicU64>,
    failing: Arc<std::sync::atomic::AtomicBool>,
}

impl Origin {
    fn compute(&self, took: Duration) -> impl FnOnce() -> Computation + Send + 'static {
        let origin = self.clone();
        move || {
            Box::pin(async move {
                let call = origin.calls.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(took).await;
                if origin.failing.load(Ordering::SeqCst) {
                    Err(OriginDown)
                } else {
                    Ok(call)
                }
            })
        }
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
}

/// Lets background tasks run to completion (paused time jumps ahead).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
    tokio::time::sleep(s(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_miss_is_computed_once_then_served_fresh() {
    let cache = Trending::new(100, Freshness::new(s(30)).early_refresh(0.0));
    let origin = Origin::default();
    let first = cache.get_with("top", origin.compute(s(1))).await.unwrap();
    assert_eq!((first.value, first.served), (1, Served::Miss));
    tokio::time::advance(s(10)).await;
    let again = cache.get_with("top", origin.compute(s(1))).await.unwrap();
    assert_eq!(
        (again.value, again.served, again.age),
        (1, Served::Fresh, s(10))
    );
    assert_eq!(origin.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_stale_value_is_served_at_once_while_one_refresh_runs() {
    let freshness = Freshness::new(s(30))
        .stale_while_revalidate(s(60))
        .early_refresh(0.0);
    let cache = Trending::new(100, freshness);
    let origin = Origin::default();
    cache.get_with("top", origin.compute(s(1))).await.unwrap();
    tokio::time::advance(s(40)).await;
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let before = tasks();
    // No read yields: each finds the refresh the first one started.
    for _ in 0..50 {
        let stale = cache.get_with("top", origin.compute(s(5))).await.unwrap();
        assert_eq!((stale.value, stale.served), (1, Served::Stale));
    }
    assert_eq!(tasks(), before + 1, "one refresh task, not one per read");
    settle().await;
    tokio::time::sleep(s(5)).await;
    assert_eq!(origin.calls(), 2, "fifty stale reads, one refresh");
    let fresh = cache.get_with("top", origin.compute(s(1))).await.unwrap();
    assert_eq!((fresh.value, fresh.served), (2, Served::Fresh));
}

#[tokio::test(start_paused = true)]
async fn a_failing_origin_is_covered_by_the_stale_value_within_its_window() {
    let freshness = Freshness::new(s(30))
        .stale_if_error(s(300))
        .early_refresh(0.0);
    let cache = Trending::new(100, freshness);
    let origin = Origin::default();
    cache.get_with("top", origin.compute(s(1))).await.unwrap();
    origin.failing.store(true, Ordering::SeqCst);
    tokio::time::advance(s(100)).await;
    let covered = cache.get_with("top", origin.compute(s(1))).await.unwrap();
    assert_eq!((covered.value, covered.served), (1, Served::StaleIfError));
    tokio::time::advance(s(300)).await;
    let error = cache
        .get_with("top", origin.compute(s(1)))
        .await
        .unwrap_err();
    assert!(error.failure().is_some(), "past the window the error shows");
}

#[tokio::test(start_paused = true)]
async fn concurrent_misses_cause_one_origin_call() {
    let cache = Trending::new(100, Freshness::new(s(30)));
    let origin = Origin::default();
    let lookups: Vec<_> = (0..200)
        .map(|_| {
            let (cache, compute) = (cache.clone(), origin.compute(s(2)));
            tokio::spawn(async move { cache.get_with("cold", compute).await })
        })
        .collect();
    for lookup in lookups {
        assert_eq!(lookup.await.unwrap().unwrap().value, 1);
    }
    assert_eq!(origin.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn hot_keys_are_refreshed_before_they_expire() {
    // The value takes 1 s to compute and is fresh for 10 s; at 9.5 s each
    // read refreshes early with probability exp(-0.5) = 0.61.
    let cache = Trending::new(100, Freshness::new(s(10)).early_refresh(1.0));
    let origin = Origin::default();
    cache.get_with("hot", origin.compute(s(1))).await.unwrap();
    tokio::time::advance(Duration::from_millis(9500)).await;
    for _ in 0..30 {
        let read = cache.get_with("hot", origin.compute(s(1))).await.unwrap();
        assert_eq!(read.served, Served::Fresh);
    }
    settle().await;
    assert_eq!(origin.calls(), 2, "one early refresh, coalesced");
    let read = cache.get_with("hot", origin.compute(s(1))).await.unwrap();
    assert_eq!(
        (read.value, read.served),
        (2, Served::Fresh),
        "never found cold"
    );
}

#[tokio::test(start_paused = true)]
async fn the_cache_holds_at_most_its_capacity() {
    let cache: Cache<u32, u32, OriginDown> = Cache::new(16, Freshness::new(s(30)));
    for key in 0..100 {
        cache
            .get_with(key, move || async move { Ok(key) })
            .await
            .unwrap();
    }
    assert!(cache.len() <= 16, "{} entries", cache.len());
}

/// A full cache makes room a sixteenth at a time, however many entries
/// were stored at the same instant (all of them, under a paused clock):
/// eviction removed every entry stored at its cutoff, so the whole cache.
#[tokio::test(start_paused = true)]
async fn an_eviction_keeps_fifteen_sixteenths_of_the_cache() {
    let cache: Cache<u32, u32, OriginDown> = Cache::new(32, Freshness::new(s(30)));
    for key in 0..33 {
        cache
            .get_with(key, move || async move { Ok(key) })
            .await
            .unwrap();
    }
    assert_eq!(cache.len(), 31, "two evicted, the new one stored");
}

#[tokio::test(start_paused = true)]
async fn a_refresh_that_may_not_be_stored_drops_the_old_entry() {
    let freshness = Freshness::new(s(30))
        .stale_while_revalidate(s(60))
        .stale_if_error(s(600))
        .early_refresh(0.0);
    let cache = Trending::new(100, freshness);
    cache
        .get_with_freshness("top", move || async move { Ok((1, Some(freshness))) })
        .await
        .unwrap();
    tokio::time::advance(s(40)).await;
    // The origin now says the value may not be kept (`no-store`, say).
    let stale = cache
        .get_with_freshness("top", || async { Ok((2, None)) })
        .await
        .unwrap();
    assert_eq!((stale.value, stale.served), (1, Served::Stale));
    settle().await;
    assert!(cache.is_empty(), "the old entry is dropped, not kept stale");
    let next = cache
        .get_with_freshness("top", || async { Ok((3, None)) })
        .await
        .unwrap();
    assert_eq!((next.value, next.served), (3, Served::Miss));
}

/// A write lands while a computation of the key is running, and the
/// writer invalidates: the next lookup must not join the computation that
/// read the old version, and what that computation finds must not be
/// stored as fresh after the invalidation.
#[tokio::test(start_paused = true)]
async fn an_invalidation_is_not_undone_by_a_computation_already_running() {
    let cache = Trending::new(10, Freshness::new(s(60)));
    let (read, version_1) = tokio::sync::oneshot::channel::<u64>();
    let before = tokio::spawn({
        let cache = cache.clone();
        async move {
            cache
                .get_with("k", || async move { Ok(version_1.await.unwrap_or(0)) })
                .await
        }
    });
    // The origin has read version 1 and is slow to answer; the write of
    // version 2 lands and invalidates.
    tokio::time::sleep(Duration::from_millis(1)).await;
    cache.invalidate(&"k");
    let after = tokio::spawn({
        let cache = cache.clone();
        async move { cache.get_with("k", || async { Ok(2) }).await }
    });
    tokio::time::sleep(Duration::from_millis(1)).await;
    read.send(1).unwrap();
    assert_eq!(
        before.await.unwrap().unwrap().value,
        1,
        "asked before the write"
    );
    let after = after.await.unwrap().unwrap();
    assert_eq!((after.value, after.served), (2, Served::Miss));
    let later = cache.get_with("k", || async { Ok(3) }).await.unwrap();
    assert_eq!((later.value, later.served), (2, Served::Fresh));
}

/// The same, with a background refresh running when the write lands.
#[tokio::test(start_paused = true)]
async fn an_invalidation_is_not_undone_by_a_refresh_already_running() {
    let cache = Trending::new(10, Freshness::new(s(1)).stale_while_revalidate(s(60)));
    cache.get_with("k", || async { Ok(0) }).await.unwrap();
    tokio::time::advance(s(2)).await;
    let (read, version_1) = tokio::sync::oneshot::channel::<u64>();
    let stale = cache
        .get_with("k", || async move { Ok(version_1.await.unwrap_or(0)) })
        .await
        .unwrap();
    assert_eq!((stale.value, stale.served), (0, Served::Stale));
    cache.invalidate(&"k");
    // Bounded: a lookup that joined the refresh would wait for `read`.
    let after = tokio::time::timeout(s(10), cache.get_with("k", || async { Ok(2) }))
        .await
        .expect("a new computation, not the running refresh")
        .unwrap();
    assert_eq!((after.value, after.served), (2, Served::Miss));
    assert!(
        read.send(1).is_err(),
        "the refresh, waited on by none, is dropped"
    );
    settle().await;
    let later = cache.get_with("k", || async { Ok(3) }).await.unwrap();
    assert_eq!(
        later.value, 2,
        "the refresh that read version 1 stored nothing"
    );
}

/// `Duration::MAX` as a way of saying "forever": kept, served fresh, and
/// no lookup panics (an `Instant` plus it overflows).
#[tokio::test(start_paused = true)]
async fn a_value_fresh_for_ever_is_kept_and_served() {
    let cache = Trending::new(
        10,
        Freshness::new(Duration::MAX)
            .stale_while_revalidate(Duration::MAX)
            .stale_if_error(Duration::MAX),
    );
    let first = cache.get_with("k", || async { Ok(1) }).await.unwrap();
    assert_eq!((first.value, first.served), (1, Served::Miss));
    tokio::time::advance(s(365 * 86_400)).await;
    let later = cache.get_with("k", || async { Ok(2) }).await.unwrap();
    assert_eq!((later.value, later.served), (1, Served::Fresh));
}

/// An origin that never answers, and what says when its computation was
/// dropped (closed then).
fn never_answering() -> (
    impl FnOnce() -> Computation + Send + 'static,
    tokio::sync::oneshot::Receiver<()>,
) {
    let (held, given_up) = tokio::sync::oneshot::channel::<()>();
    let origin = move || -> Computation {
        Box::pin(async move {
            let _held = held;
            std::future::pending().await
        })
    };
    (origin, given_up)
}

/// A background refresh whose origin never answers runs on its own only
/// through the value's stale window (and one fresh lifetime): after it, a
/// lookup computes anew instead of joining it for ever.
#[tokio::test(start_paused = true)]
async fn a_refresh_that_never_ends_does_not_hold_its_key_past_the_stale_window() {
    let cache = Trending::new(
        10,
        Freshness::new(s(1))
            .stale_while_revalidate(s(1))
            .early_refresh(0.0),
    );
    cache.get_with("k", || async { Ok(1) }).await.unwrap();
    tokio::time::advance(Duration::from_millis(1_500)).await;
    let (hung, mut given_up) = never_answering();
    let stale = cache.get_with("k", hung).await.unwrap();
    assert_eq!((stale.value, stale.served), (1, Served::Stale));
    // An hour goes by (the refresh's task runs when its time comes).
    tokio::time::sleep(s(3_600)).await;
    assert_eq!(
        given_up.try_recv(),
        Err(tokio::sync::oneshot::error::TryRecvError::Closed),
        "the refresh was given up"
    );
    // Bounded: a lookup that joined the hung refresh would never return.
    let later = tokio::time::timeout(s(5), cache.get_with("k", || async { Ok(2) }))
        .await
        .expect("a new computation, not the hung refresh")
        .unwrap();
    assert_eq!((later.value, later.served), (2, Served::Miss));
}

/// A refresh whose origin never answers, its key invalidated while nobody
/// waits on it: it is dropped, not left running.
#[tokio::test(start_paused = true)]
async fn an_invalidated_refresh_nobody_waits_on_is_dropped() {
    let cache = Trending::new(10, Freshness::new(s(1)).stale_while_revalidate(s(60)));
    cache.get_with("k", || async { Ok(1) }).await.unwrap();
    tokio::time::advance(s(2)).await;
    let (hung, mut given_up) = never_answering();
    let stale = cache.get_with("k", hung).await.unwrap();
    assert_eq!(stale.served, Served::Stale);
    cache.invalidate(&"k");
    settle().await;
    assert_eq!(
        given_up.try_recv(),
        Err(tokio::sync::oneshot::error::TryRecvError::Closed),
        "the refresh was dropped"
    );
}

/// With the flight map full, callers of a key compute on their own: the
/// first to finish stores its value, whatever the others still running.
#[tokio::test(start_paused = true)]
async fn uncoalesced_computations_do_not_keep_each_other_from_storing() {
    // Room for one flight, taken by a key that never answers.
    let cache = Trending::new(1, Freshness::new(s(60)));
    tokio::spawn({
        let cache = cache.clone();
        async move {
            cache
                .get_with("full", std::future::pending::<Result<u64, OriginDown>>)
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(1)).await;
    // Two callers of "k", the first to start the first to finish.
    let lookup = |answer: tokio::sync::oneshot::Receiver<u64>| {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_with("k", || async move { Ok(answer.await.unwrap_or(0)) })
                .await
        })
    };
    let (answer_first, first) = tokio::sync::oneshot::channel();
    let first = lookup(first);
    tokio::time::sleep(Duration::from_millis(1)).await;
    let (answer_second, second) = tokio::sync::oneshot::channel();
    let second = lookup(second);
    tokio::time::sleep(Duration::from_millis(1)).await;
    answer_first.send(1).unwrap();
    assert_eq!(first.await.unwrap().unwrap().value, 1);
    let read = cache.get_with("k", || async { Ok(3) }).await.unwrap();
    assert_eq!((read.value, read.served), (1, Served::Fresh));
    answer_second.send(2).unwrap();
    assert_eq!(second.await.unwrap().unwrap().value, 2);
}

/// Callers computing on their own (the flight map full), one started
/// before an invalidation and one after: the later one's value stands,
/// whichever finishes last.
#[tokio::test(start_paused = true)]
async fn an_invalidation_fences_off_callers_computing_on_their_own() {
    let cache = Trending::new(1, Freshness::new(s(60)));
    let (full, _never) = never_answering();
    tokio::spawn({
        let cache = cache.clone();
        async move { cache.get_with("full", full).await }
    });
    tokio::time::sleep(Duration::from_millis(1)).await;
    let (answer_before, before) = tokio::sync::oneshot::channel::<u64>();
    let before = tokio::spawn({
        let cache = cache.clone();
        async move {
            cache
                .get_with("k", || async move { Ok(before.await.unwrap_or(0)) })
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(1)).await;
    cache.invalidate(&"k");
    let after = cache.get_with("k", || async { Ok(2) }).await.unwrap();
    assert_eq!((after.value, after.served), (2, Served::Miss));
    answer_before.send(1).unwrap();
    assert_eq!(before.await.unwrap().unwrap().value, 1, "asked before");
    let read = cache.get_with("k", || async { Ok(3) }).await.unwrap();
    assert_eq!((read.value, read.served), (2, Served::Fresh));
}
