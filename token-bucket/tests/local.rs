//! The in-process store: against the reference token bucket, under paused
//! time, bounded in memory, and under contention.

#[path = "support/model.rs"]
mod model;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use model::Model;
use palisade_token_bucket::{Bucket, Clock, LocalStore, Store};
use proptest::prelude::*;

/// Rates whose interval is a whole number of nanoseconds, so the reference
/// and the store agree to the nanosecond.
const RATES: [f64; 8] = [1.0, 2.0, 5.0, 8.0, 10.0, 100.0, 1000.0, 0.5];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn decisions_match_the_reference_bucket(
        capacity in 1u32..20,
        rate in proptest::sample::select(RATES.to_vec()),
        steps in proptest::collection::vec((0u32..4, 1u32..6, 0u64..3_000_000_000), 1..200),
    ) {
        let bucket = Bucket::new(capacity, rate).unwrap();
        let store = LocalStore::new(1000);
        let mut model = Model::new(capacity, bucket.interval().as_nanos().try_into().unwrap());
        let mut now = 0u64;
        for (key, cost, advance) in steps {
            now += advance;
            let expected = model.decide(key, cost, now);
            let got = store.decide_at(&key.to_string(), &bucket, cost, Duration::from_nanos(now));
            prop_assert_eq!(got.is_allowed(), expected.allowed, "at {} ns", now);
            prop_assert_eq!(u64::from(got.remaining()), expected.remaining);
            let retry = expected.retry_after.map_or(Duration::MAX, Duration::from_nanos);
            prop_assert_eq!(got.retry_after(), retry);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_burst_passes_then_one_token_per_interval() {
    let store = LocalStore::with_clock(1000, Clock::Tokio);
    let bucket = Bucket::new(5, 10.0).unwrap();
    for left in (0..5).rev() {
        let decision = store.decide("k", &bucket, 1).await.unwrap();
        assert!(decision.is_allowed());
        assert_eq!(decision.remaining(), left);
    }
    let denied = store.decide("k", &bucket, 1).await.unwrap();
    assert!(!denied.is_allowed());
    assert_eq!(denied.retry_after(), Duration::from_millis(100));
    assert_eq!(denied.reset(), Duration::from_millis(500));

    tokio::time::advance(Duration::from_millis(99)).await;
    assert!(!store.decide("k", &bucket, 1).await.unwrap().is_allowed());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(store.decide("k", &bucket, 1).await.unwrap().is_allowed());
    tokio::time::advance(Duration::from_secs(10)).await;
    let decision = store.decide("k", &bucket, 3).await.unwrap();
    assert_eq!(decision.remaining(), 2, "full again, less the cost of 3");
}

#[test]
fn memory_stays_bounded_and_new_keys_cannot_escape_the_limit() {
    let store = LocalStore::new(64);
    let bucket = Bucket::new(1, 1.0).unwrap();
    let now = Duration::ZERO;
    // A thousand rotating keys, each spending its token: all active.
    let admitted = (0..1000)
        .filter(|i| {
            store
                .decide_at(&format!("ip-{i}"), &bucket, 1, now)
                .is_allowed()
        })
        .count();
    assert!(store.len() <= 64 + 16, "{} keys kept", store.len());
    // Past the bound, the rotating keys share one overflow bucket.
    assert!(admitted <= 64 + 16 + 1, "{admitted} admitted");
    // Once their buckets are full again the old keys are forgotten first.
    let later = Duration::from_secs(2);
    assert!(store.decide_at("newcomer", &bucket, 1, later).is_allowed());
    assert!(store.len() <= 64 + 16);
}

#[test]
fn many_threads_sharing_a_key_admit_exactly_the_burst() {
    let store = LocalStore::default();
    let bucket = Bucket::new(1000, 1e-6).unwrap();
    let admitted = Arc::new(AtomicU32::new(0));
    let now = Duration::from_secs(1);
    std::thread::scope(|scope| {
        for _ in 0..8 {
            let (store, admitted) = (store.clone(), admitted.clone());
            scope.spawn(move || {
                for _ in 0..500 {
                    if store.decide_at("shared", &bucket, 1, now).is_allowed() {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(admitted.load(Ordering::Relaxed), 1000);
}
