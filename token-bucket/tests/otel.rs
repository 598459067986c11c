//! OpenTelemetry metrics, read back through the SDK's in-memory exporter.
#![cfg(all(feature = "otel", feature = "redis"))]

use std::time::Duration;

use palisade_testkit::MetricsProbe;
use palisade_testkit::servers::redis_proxy;
use palisade_token_bucket::key::global;
use palisade_token_bucket::{
    Bucket, Clock, FailurePolicy, Leasing, LeasingStore, LocalStore, RateLimitLayer, RedisStore,
    Store,
};
use tower::{BoxError, Layer, ServiceExt, service_fn};

#[tokio::test(start_paused = true)]
async fn decisions_are_counted_by_result() {
    let probe = MetricsProbe::default();
    let layer = RateLimitLayer::new(
        LocalStore::with_clock(100, Clock::Tokio),
        Bucket::new(2, 1.0).unwrap(),
        global("all"),
    )
    .instrument(&probe.meter(), "api");
    let service = layer.layer(service_fn(|n: u32| async move { Ok::<_, BoxError>(n) }));
    for n in 0..5 {
        let _ = service.clone().oneshot(n).await;
    }
    let mut decisions = probe.points("palisade.token_bucket.decisions");
    decisions.sort();
    let result = |r: &str| vec!["limiter=api".to_owned(), format!("result={r}")];
    assert_eq!(decisions, [(result("allowed"), 2), (result("denied"), 3)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_errors_fallbacks_and_the_degraded_state_are_reported() {
    let probe = MetricsProbe::default();
    let (proxy, through) = redis_proxy().await;
    // Waits on a reply as long as the store allows (redis-rs's own default
    // cuts it at 500 ms); a cut proxy fails it at once.
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    let connection = redis::Client::open(through)
        .unwrap()
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap();
    let store = RedisStore::new(connection, FailurePolicy::FailOpen)
        .prefix(&format!("palisade-test:{}", fastrand::u64(..)))
        .timeout(Duration::from_secs(1))
        .instrument(&probe.meter(), "shared");
    let bucket = Bucket::new(10, 10.0).unwrap();
    store.decide("k", &bucket, 1).await.unwrap();
    assert_eq!(
        probe.points("palisade.token_bucket.degraded"),
        [(vec!["store=shared".to_owned()], 0)]
    );
    proxy.cut().await;
    for _ in 0..3 {
        assert!(store.decide("k", &bucket, 1).await.unwrap().is_allowed());
    }
    assert!(store.is_degraded());
    let errors: u64 = probe
        .points("palisade.token_bucket.store_errors")
        .iter()
        .map(|(_, n)| n)
        .sum();
    assert!(errors >= 1, "at least the call that found Redis gone");
    let fallbacks = probe.points("palisade.token_bucket.fallback_decisions");
    assert_eq!(fallbacks, [(vec!["store=shared".to_owned()], 3)]);
    assert_eq!(
        probe.points("palisade.token_bucket.degraded"),
        [(vec!["store=shared".to_owned()], 1)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_counted_and_the_tokens_held_reported() {
    let probe = MetricsProbe::default();
    let connection = redis::Client::open(palisade_testkit::servers::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let redis = RedisStore::new(connection, FailurePolicy::Propagate)
        .prefix(&format!("palisade-test:{}", fastrand::u64(..)))
        .timeout(Duration::from_secs(1));
    // Leases cover an hour, so their sizes (1, 2, 4, …) do not depend on
    // the machine's speed.
    let leasing = Leasing::new()
        .cover(Duration::from_secs(3600))
        .hold(Duration::from_secs(3600))
        .max_share(0.5);
    let store = LeasingStore::new(redis, leasing)
        .unwrap()
        .instrument(&probe.meter(), "leased");
    let bucket = Bucket::new(100, 0.001).unwrap();
    for _ in 0..10 {
        assert!(store.decide("k", &bucket, 1).await.unwrap().is_allowed());
    }
    let at = |name: &str| {
        probe
            .points(name)
            .into_iter()
            .map(|(attributes, n)| {
                assert_eq!(attributes, ["store=leased"]);
                n
            })
            .sum::<u64>()
    };
    // Leases of 1, 2, 4 and 8 tokens: ten spent, five held.
    assert_eq!(at("palisade.token_bucket.refills"), 4);
    // Beyond the cost of each request that asked: 0, 1, 3 and 7.
    assert_eq!(at("palisade.token_bucket.leased_tokens"), 11);
    assert_eq!(at("palisade.token_bucket.held_tokens"), 5);
    assert_eq!(store.give_back().await, 5);
    assert_eq!(at("palisade.token_bucket.returned_tokens"), 5);
    assert_eq!(at("palisade.token_bucket.held_tokens"), 0);
}
