//! OpenTelemetry counters, read back through the SDK's in-memory exporter.
#![cfg(feature = "otel")]

use std::time::Duration;

use palisade_coalesce::{Cache, Freshness};
use palisade_testkit::MetricsProbe;

#[derive(Debug)]
struct OriginDown;

#[tokio::test(start_paused = true)]
async fn lookups_origin_calls_and_coalesced_callers_are_counted() {
    let probe = MetricsProbe::default();
    let freshness = Freshness::new(Duration::from_secs(10))
        .stale_while_revalidate(Duration::from_secs(60))
        .early_refresh(0.0);
    let cache: Cache<&str, u32, OriginDown> = Cache::new(100, freshness);
    cache.instrument(&probe.meter(), "trending");
    let slow = || async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok(7)
    };
    let misses: Vec<_> = (0..5)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get_with("top", slow).await })
        })
        .collect();
    for miss in misses {
        miss.await.unwrap().unwrap();
    }
    cache.get_with("top", slow).await.unwrap();
    tokio::time::advance(Duration::from_secs(20)).await;
    cache.get_with("top", slow).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let cache_label = || vec!["cache=trending".to_owned()];
    let served = |how: &str| vec!["cache=trending".to_owned(), format!("served={how}")];
    let mut lookups = probe.points("palisade.coalesce.lookups");
    lookups.sort();
    assert_eq!(
        lookups,
        [
            (served("fresh"), 1),
            (served("miss"), 5),
            (served("stale"), 1)
        ]
    );
    assert_eq!(
        probe.points("palisade.coalesce.origin_calls"),
        [(cache_label(), 2)]
    );
    assert_eq!(
        probe.points("palisade.coalesce.coalesced"),
        [(cache_label(), 4)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_lookup_left_without_a_value_is_counted_as_failed() {
    let probe = MetricsProbe::default();
    let cache: Cache<&str, u32, OriginDown> =
        Cache::new(100, Freshness::new(Duration::from_secs(10)));
    cache.instrument(&probe.meter(), "trending");
    cache
        .get_with("top", || async { Err(OriginDown) })
        .await
        .unwrap_err();
    cache.get_with("top", || async { Ok(7) }).await.unwrap();
    let served = |how: &str| vec!["cache=trending".to_owned(), format!("served={how}")];
    let mut lookups = probe.points("palisade.coalesce.lookups");
    lookups.sort();
    assert_eq!(lookups, [(served("failed"), 1), (served("miss"), 1)]);
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_lookup_left_without_a_value_is_counted_as_failed() {
    use palisade_coalesce::{RedisCache, RedisSettings};

    let probe = MetricsProbe::default();
    let settings = RedisSettings::new(Freshness::new(Duration::from_secs(10)))
        .prefix(&format!("palisade-test:{}", fastrand::u64(..)));
    let client = redis::Client::open(palisade_testkit::servers::redis_url()).unwrap();
    let connection = client.get_multiplexed_async_connection().await.unwrap();
    let cache: RedisCache<_, OriginDown> = RedisCache::connect(&client, connection, settings)
        .await
        .unwrap();
    cache.instrument(&probe.meter(), "trending");
    cache
        .get_with("top", || async { Err(OriginDown) })
        .await
        .unwrap_err();
    assert_eq!(
        probe.points("palisade.coalesce.lookups"),
        [(
            vec!["cache=trending".to_owned(), "served=failed".to_owned()],
            1
        )]
    );
}

#[cfg(feature = "http")]
#[tokio::test]
async fn a_layer_is_instrumented_in_the_builder_shape() {
    use palisade_coalesce::http::{CachedResponse, CoalesceLayer};
    use tower::{Layer, ServiceExt};

    let probe = MetricsProbe::default();
    let cache: Cache<String, CachedResponse, tower::BoxError> =
        Cache::new(10, Freshness::new(Duration::from_secs(10)));
    let layer = CoalesceLayer::new(cache).instrument(&probe.meter(), "ranking");
    let service = layer.layer(tower::service_fn(|_: http::Request<()>| async {
        Ok::<_, tower::BoxError>(http::Response::new(http_body_util::Full::new(
            bytes::Bytes::from_static(b"[7, 3, 9]"),
        )))
    }));
    let request = || {
        http::Request::get("http://catalog.example/ranking")
            .body(())
            .unwrap()
    };
    service.clone().oneshot(request()).await.unwrap();
    service.oneshot(request()).await.unwrap();
    assert_eq!(
        probe.points("palisade.coalesce.origin_calls"),
        [(vec!["cache=ranking".to_owned()], 1)]
    );
}
