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
