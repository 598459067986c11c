//! The generic layer: refusals as errors, keys and costs, readiness.

use std::convert::Infallible;
use std::time::Duration;

use palisade_hints::Refusal;
use palisade_token_bucket::key::global;
use palisade_token_bucket::{Bucket, Clock, LocalStore, RateLimitLayer, RateLimited};
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};
use tower_test::{assert_request_eq, mock};

fn echo() -> impl Service<(String, u32), Response = u32, Error = BoxError> + Clone {
    service_fn(|(_, n): (String, u32)| async move { Ok::<_, BoxError>(n) })
}

#[tokio::test(start_paused = true)]
async fn a_refusal_is_a_downcastable_error_with_the_wait() {
    let layer = RateLimitLayer::new(
        LocalStore::with_clock(1000, Clock::Tokio),
        Bucket::new(2, 4.0).unwrap(),
        global("all"),
    );
    let service = layer.layer(echo());
    for n in 0..2 {
        assert_eq!(service.clone().oneshot(("a".into(), n)).await.unwrap(), n);
    }
    let err = service.clone().oneshot(("a".into(), 9)).await.unwrap_err();
    let limited = err.downcast_ref::<RateLimited>().expect("RateLimited");
    assert_eq!(limited.retry_after(), Some(Duration::from_millis(250)));
    let refusal = Refusal::find(&*err).expect("the shared refusal marker");
    assert_eq!(refusal.retry_after(), Some(Duration::from_millis(250)));

    tokio::time::advance(Duration::from_millis(250)).await;
    assert_eq!(service.oneshot(("a".into(), 3)).await.unwrap(), 3);
}

#[tokio::test(start_paused = true)]
async fn keys_have_their_own_buckets_costs_weigh_and_no_key_is_unlimited() {
    let layer = RateLimitLayer::new(
        LocalStore::with_clock(1000, Clock::Tokio),
        Bucket::new(5, 1.0).unwrap(),
        |(user, _): &(String, u32)| (user != "internal").then(|| user.clone()),
    )
    .cost(|(_, weight): &(String, u32)| *weight);
    let service = layer.layer(echo());
    let call = |user: &str, weight| service.clone().oneshot((user.to_owned(), weight));
    assert!(call("alice", 5).await.is_ok());
    assert!(
        call("alice", 1).await.is_err(),
        "alice spent her 5 tokens at once"
    );
    assert!(call("bob", 3).await.is_ok());
    assert!(call("bob", 2).await.is_ok());
    assert!(call("bob", 1).await.is_err());
    let err = call("carol", 6).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<RateLimited>().unwrap().retry_after(),
        None,
        "a cost over the capacity never fits"
    );
    for _ in 0..100 {
        assert!(call("internal", 1).await.is_ok(), "no key, no limit");
    }
}

#[tokio::test(start_paused = true)]
async fn a_refused_request_never_reaches_the_inner_service() {
    let layer = RateLimitLayer::new(
        LocalStore::with_clock(1000, Clock::Tokio),
        Bucket::new(1, 1.0).unwrap(),
        global("all"),
    );
    let (inner, mut handle) = mock::pair::<u32, u32>();
    let mut service = layer.cost(|_: &u32| 1).layer(inner);
    handle.allow(2);
    service.ready().await.unwrap();
    let first = tokio::spawn(service.call(1));
    assert_request_eq!(handle, 1).send_response(10);
    assert_eq!(first.await.unwrap().unwrap(), 10);
    service.ready().await.unwrap();
    let err = service.call(2).await.unwrap_err();
    assert!(err.is::<RateLimited>());
    // The mock saw one request only: a second would be waiting here.
    assert!(handle.poll_request().is_pending());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn global_layers_share_one_pinned_bucket_with_the_key_s_name() {
    let store = LocalStore::default();
    // No refill within the test: exactly the capacity is admitted.
    let bucket = Bucket::new(200, 1e-6).unwrap();
    // 50 spent through a layer that names the key on each request.
    let by_name = RateLimitLayer::new(store.clone(), bucket, |_: &(String, u32)| {
        Some("api".to_owned())
    })
    .layer(echo());
    for n in 0..50 {
        by_name.clone().oneshot(("anyone".into(), n)).await.unwrap();
    }
    // Two layers naming the same key, each making a service per task, as
    // axum makes one per connection.
    let layers = [
        RateLimitLayer::new(store.clone(), bucket, global("api")),
        RateLimitLayer::new(store.clone(), bucket, global("api")),
    ];
    let tasks: Vec<_> = (0..64)
        .map(|task| {
            let echo = service_fn(|(_, n): (String, u32)| async move { Ok::<_, Infallible>(n) });
            let service = layers[task % 2].layer(echo);
            tokio::spawn(async move {
                let mut admitted = 0;
                for n in 0..10 {
                    match service.clone().oneshot(("anyone".into(), n)).await {
                        Ok(_) => admitted += 1,
                        Err(err) => assert!(err.is::<RateLimited>(), "{err}"),
                    }
                }
                admitted
            })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        admitted += task.await.unwrap();
    }
    assert_eq!(admitted, 150, "the 200 tokens less the 50 spent by name");
    assert!(by_name.oneshot(("anyone".into(), 0)).await.is_err());
}

/// Two limits on one user, a burst a second and a day's worth, on one
/// store: each keeps its own state. They shared the key's state, and the
/// day's first request pushed it 86 s ahead, so the per-second limit
/// refused the user for the next 86 s.
#[tokio::test(start_paused = true)]
async fn two_buckets_on_one_store_keep_their_own_state() {
    let store = LocalStore::with_clock(1000, Clock::Tokio);
    let per_second = Bucket::new(10, 10.0).unwrap();
    let per_day = Bucket::per(1000, Duration::from_secs(86_400)).unwrap();
    let user = |(user, _): &(String, u32)| Some(user.clone());
    let service = tower::ServiceBuilder::new()
        .layer(RateLimitLayer::new(store.clone(), per_day, user))
        .layer(RateLimitLayer::new(store, per_second, user))
        .service(echo());
    for n in 0..10 {
        let admitted = service.clone().oneshot(("alice".into(), n)).await;
        assert!(admitted.is_ok(), "call {n}: {admitted:?}");
    }
    let err = service
        .clone()
        .oneshot(("alice".into(), 10))
        .await
        .unwrap_err();
    let limited = err.downcast_ref::<RateLimited>().expect("RateLimited");
    assert_eq!(
        limited.retry_after(),
        Some(Duration::from_millis(100)),
        "the second's burst is spent, a token a tenth of a second"
    );
}
