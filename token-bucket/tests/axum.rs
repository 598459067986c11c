//! HTTP mode on real axum servers on loopback: 429 with the wait and the
//! RateLimit fields, one bucket across connections, and two instances
//! sharing a bucket through Redis.
#![cfg(all(feature = "http", feature = "redis"))]

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::routing::get;
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use palisade_token_bucket::{
    Bucket, FailurePolicy, LocalStore, RateLimitLayer, RedisStore, Store, key,
};

async fn serve<St: Store>(
    layer: RateLimitLayer<
        St,
        key::Header,
        key::OneToken,
        palisade_token_bucket::http::TooManyRequests,
    >,
) -> SocketAddr {
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    address
}

fn api_key() -> key::Header {
    key::header(http::HeaderName::from_static("x-api-key"))
}

/// One request on a new connection (a new client each time, so axum
/// serves each from a fresh clone of the service).
async fn get_with(address: SocketAddr, api_key: Option<&str>) -> (StatusCode, HeaderMap) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut request = Request::get(format!("http://{address}/"));
    if let Some(key) = api_key {
        request = request.header("x-api-key", key);
    }
    let response = client
        .request(request.body(Empty::new()).unwrap())
        .await
        .unwrap();
    (response.status(), response.headers().clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_then_429_with_the_wait_and_the_ratelimit_fields() {
    let layer = RateLimitLayer::new_for_http(
        LocalStore::default(),
        Bucket::new(3, 0.5).unwrap(),
        api_key(),
    )
    .legacy_headers();
    let address = serve(layer).await;
    for left in (0..3).rev() {
        let (status, headers) = get_with(address, Some("k-1")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["ratelimit-policy"], "\"default\";q=3;w=6");
        let state = headers["ratelimit"].to_str().unwrap();
        assert!(
            state.starts_with(&format!("\"default\";r={left};t=")),
            "{state}"
        );
        assert_eq!(headers["x-ratelimit-remaining"], left.to_string().as_str());
    }
    let (status, headers) = get_with(address, Some("k-1")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["retry-after"], "2", "one token takes 2 s");
    assert!(
        headers["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with("\"default\";r=0;t=")
    );
    assert_eq!(headers["x-ratelimit-limit"], "3");

    let (status, _) = get_with(address, Some("k-2")).await;
    assert_eq!(status, StatusCode::OK, "another key, another bucket");
    let (status, headers) = get_with(address, None).await;
    assert_eq!(status, StatusCode::OK, "no key, not limited");
    assert!(!headers.contains_key("ratelimit"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_bucket_through_redis() {
    let url = palisade_testkit::servers::redis_url();
    let prefix = format!("palisade-test:{}", fastrand::u64(..));
    let mut instances = Vec::new();
    for _ in 0..2 {
        // Waits on a reply as long as the store allows (redis-rs's own
        // default cuts it at 500 ms).
        let config = redis::aio::ConnectionManagerConfig::new().set_response_timeout(None);
        let redis = redis::Client::open(url.as_str())
            .unwrap()
            .get_connection_manager_with_config(config)
            .await
            .unwrap();
        let store = RedisStore::new(redis, FailurePolicy::FailClosed)
            .prefix(&prefix)
            .timeout(Duration::from_secs(5));
        instances.push(
            serve(RateLimitLayer::new_for_http(
                store,
                Bucket::new(6, 0.01).unwrap(),
                api_key(),
            ))
            .await,
        );
    }
    let mut admitted = 0;
    for i in 0..20 {
        let (status, _) = get_with(instances[i % 2], Some("tenant-a")).await;
        if status == StatusCode::OK {
            admitted += 1;
        } else {
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        }
    }
    assert_eq!(admitted, 6, "one bucket for the fleet");
}
