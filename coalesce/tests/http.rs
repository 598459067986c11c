//! The HTTP layer on a real axum server on loopback: concurrent identical
//! GETs reach the origin once, and the origin's Cache-Control decides.
#![cfg(feature = "http")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::routing::get;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use palisade_coalesce::http::{CachedResponse, CoalesceLayer};
use palisade_coalesce::{Cache, Freshness};
use tower::{BoxError, ServiceBuilder};

/// An origin whose `/slow` takes 200 ms and answers its call number, and
/// whose other routes answer with the Cache-Control in their path.
async fn serve() -> (SocketAddr, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let (slow, directive) = (calls.clone(), calls.clone());
    let cache: Cache<String, CachedResponse, BoxError> = Cache::new(
        1000,
        Freshness::new(Duration::from_secs(60)).early_refresh(0.0),
    );
    let app = Router::new()
        .route(
            "/slow",
            get(move || async move {
                let n = slow.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
                format!("call {n}")
            })
            .post(|| async { "posted" }),
        )
        .route(
            "/with/{directive}",
            get(
                move |axum::extract::Path(value): axum::extract::Path<String>| async move {
                    let n = directive.fetch_add(1, Ordering::SeqCst) + 1;
                    ([("cache-control", value)], format!("call {n}"))
                },
            ),
        )
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|_: BoxError| async {
                    StatusCode::BAD_GATEWAY
                }))
                .layer(CoalesceLayer::new(cache)),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (address, calls)
}

async fn send(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Bytes) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut request = Request::builder()
        .method(method)
        .uri(format!("http://{address}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = client
        .request(request.body(Empty::new()).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_gets_reach_the_origin_once() {
    let (address, calls) = serve().await;
    let requests: Vec<_> = (0..200)
        .map(|_| tokio::spawn(async move { send(address, "GET", "/slow", &[]).await }))
        .collect();
    for request in requests {
        let (status, headers, body) = request.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "call 1");
        assert!(headers.contains_key("age"));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Later requests are served from the cache with their age.
    let (_, headers, body) = send(address, "GET", "/slow", &[]).await;
    assert_eq!(body, "call 1");
    assert!(headers["age"].to_str().unwrap().parse::<u64>().is_ok());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cache_requests_and_posts_go_to_the_origin() {
    let (address, calls) = serve().await;
    send(address, "GET", "/slow", &[]).await;
    let (_, _, body) = send(address, "GET", "/slow", &[("cache-control", "no-cache")]).await;
    assert_eq!(body, "call 2");
    let (_, _, body) = send(address, "GET", "/slow", &[("pragma", "no-cache")]).await;
    assert_eq!(body, "call 3");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let (_, _, body) = send(address, "POST", "/slow", &[]).await;
    assert_eq!(body, "posted");
    let (_, _, body) = send(address, "GET", "/slow", &[]).await;
    assert_eq!(body, "call 1", "the cached response is still served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_origins_cache_control_decides_what_is_stored() {
    let (address, calls) = serve().await;
    for directive in ["no-store", "private", "max-age=0"] {
        let path = format!("/with/{directive}");
        let before = calls.load(Ordering::SeqCst);
        send(address, "GET", &path, &[]).await;
        send(address, "GET", &path, &[]).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            before + 2,
            "{directive} is not stored"
        );
    }
    let before = calls.load(Ordering::SeqCst);
    let (_, headers, _) = send(address, "GET", "/with/max-age=60", &[]).await;
    assert_eq!(headers["cache-control"], "max-age=60");
    send(address, "GET", "/with/max-age=60", &[]).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        before + 1,
        "max-age=60 is stored"
    );
}

/// Two instances of one service, each with the layer on a `RedisCache` of
/// its own connections: concurrent GETs spread over both reach the origin
/// once.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_sharing_redis_reach_the_origin_once() {
    use palisade_coalesce::{RedisCache, RedisSettings};

    let url = palisade_testkit::servers::redis_url();
    let settings = RedisSettings::new(Freshness::new(Duration::from_secs(60)).early_refresh(0.0))
        .prefix(&format!("palisade-test:{}", fastrand::u64(..)));
    let calls = Arc::new(AtomicUsize::new(0));
    let mut instances = Vec::new();
    for _ in 0..2 {
        let client = redis::Client::open(url.as_str()).unwrap();
        let connection = client.get_multiplexed_async_connection().await.unwrap();
        let cache: RedisCache<_, BoxError> =
            RedisCache::connect(&client, connection, settings.clone())
                .await
                .unwrap();
        let origin = calls.clone();
        let app = Router::new()
            .route(
                "/slow",
                get(move || async move {
                    let n = origin.fetch_add(1, Ordering::SeqCst) + 1;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    format!("call {n}")
                }),
            )
            .layer(
                ServiceBuilder::new()
                    .layer(HandleErrorLayer::new(|_: BoxError| async {
                        StatusCode::BAD_GATEWAY
                    }))
                    .layer(CoalesceLayer::new(cache)),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        instances.push(listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    }
    let requests: Vec<_> = (0..100)
        .map(|i| {
            let address = instances[i % 2];
            tokio::spawn(async move { send(address, "GET", "/slow", &[]).await })
        })
        .collect();
    for request in requests {
        let (status, _, body) = request.await.unwrap();
        assert_eq!((status, body), (StatusCode::OK, Bytes::from("call 1")));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
