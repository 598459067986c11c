//! The facade's stacks, as the README writes them, against real servers:
//! a tonic client over a real tonic server, and an axum router.
#![cfg(all(
    feature = "breaker",
    feature = "retry",
    feature = "rate-limit",
    feature = "tracecontext",
    feature = "tonic"
))]

use std::time::Duration;

use http::{Request, StatusCode};
use palisade::prelude::*;
use palisade_testkit::grpc::HealthServer;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tower::{ServiceBuilder, ServiceExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tonic_client_stacked_with_the_facade_retries_past_a_restart() {
    // The server answers UNAVAILABLE to its first call, as one restarting
    // would, then serves.
    let server =
        HealthServer::start(|call| (call == 1).then(|| tonic::Status::unavailable("restarting")))
            .await;
    let channel = tonic::transport::Endpoint::from_shared(server.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let retries = RetryConfig::builder()
        .backoff(Backoff::full_jitter(
            Duration::from_millis(1),
            Duration::from_millis(50),
        ))
        .build()
        .unwrap();
    let channel = ServiceBuilder::new()
        .propagate_trace()
        .retry_for_tonic(retries)
        .circuit_breaker_for_grpc(BreakerConfig::default())
        .rate_limit_for_grpc(
            LocalStore::default(),
            Bucket::new(100, 50.0).unwrap(),
            key::global("health"),
        )
        .service(channel);
    let mut client = HealthClient::new(channel);
    let reply = client.check(HealthCheckRequest::default()).await.unwrap();
    assert_eq!(reply.into_inner().status(), ServingStatus::Serving);
    assert_eq!(server.calls(), 2, "the UNAVAILABLE was retried once");
}

#[tokio::test]
async fn an_axum_router_takes_the_http_presets_as_they_are() {
    // One request at once, then one every 1,000 s, for everyone.
    let app: axum::Router = axum::Router::new()
        .route("/", axum::routing::get(|| async { "served" }))
        .layer(
            ServiceBuilder::new()
                .trace_context()
                .circuit_breaker_for_http(BreakerConfig::default())
                .rate_limit_for_http(
                    LocalStore::default(),
                    Bucket::new(1, 0.001).unwrap(),
                    key::global("everyone"),
                ),
        );
    let request = || Request::get("/").body(axum::body::Body::empty()).unwrap();
    let served = app.clone().oneshot(request()).await.unwrap();
    assert_eq!(served.status(), StatusCode::OK);
    let refused = app.clone().oneshot(request()).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key(http::header::RETRY_AFTER));
}

#[cfg(feature = "coalesce")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coalesced_route_reaches_its_handler_once_for_a_crowd() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use palisade::coalesce::http::CachedResponse;
    use palisade::coalesce::{Cache, Freshness};

    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let cache: Cache<String, CachedResponse, tower::BoxError> =
        Cache::new(100, Freshness::new(Duration::from_secs(60)));
    let app: axum::Router = axum::Router::new()
        .route(
            "/ranking",
            axum::routing::get(move || async move {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                "[7, 3, 9]"
            }),
        )
        .layer(ServiceBuilder::new().trace_context().coalesce(cache));
    let crowd: Vec<_> = (0..20)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move {
                let request = Request::get("/ranking")
                    .body(axum::body::Body::empty())
                    .unwrap();
                let response = app.oneshot(request).await.unwrap();
                let status = response.status();
                let body = http_body_util::BodyExt::collect(response.into_body())
                    .await
                    .unwrap()
                    .to_bytes();
                (status, body)
            })
        })
        .collect();
    for answer in crowd {
        let (status, body) = answer.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "[7, 3, 9]");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// A timeout beneath a client's cache reaches a retry above it as the
/// timeout it is: the flight's shared error skipped it in its source
/// chain, so a cache in between turned off the retrying of timeouts.
#[cfg(feature = "coalesce")]
#[tokio::test(start_paused = true)]
async fn a_retry_above_a_cache_retries_a_timeout_beneath_it() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use palisade::coalesce::http::{CachedResponse, CoalesceLayer};
    use palisade::coalesce::{Cache, Freshness};

    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let origin = tower::service_fn(move |_: Request<String>| {
        let call = counted.fetch_add(1, Ordering::SeqCst);
        async move {
            if call == 0 {
                // The first call times out, as one beneath a timeout does.
                tokio::time::timeout(Duration::from_millis(50), std::future::pending::<()>())
                    .await?;
            }
            Ok::<_, tower::BoxError>(http::Response::new(axum::body::Body::from("served")))
        }
    });
    let cache: Cache<String, CachedResponse, tower::BoxError> =
        Cache::new(100, Freshness::new(Duration::from_secs(60)));
    let retries = RetryConfig::builder()
        .backoff(Backoff::constant(Duration::from_millis(5)))
        .build()
        .unwrap();
    let response = ServiceBuilder::new()
        .retry_for_http(retries)
        .layer(CoalesceLayer::new(cache))
        .service(origin)
        .oneshot(
            Request::get("http://origin/ranking")
                .body(String::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 2, "the timeout was retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tonic_server_takes_the_grpc_presets_with_layer() {
    use tonic::transport::Server;
    use tonic::transport::server::TcpIncoming;

    // Trace context, a breaker and a limit of two calls at once (then one
    // every 1,000 s), on the server's side of the wire.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let presets = ServiceBuilder::new()
        .trace_context()
        .circuit_breaker_for_grpc(BreakerConfig::default())
        .rate_limit_for_grpc(
            LocalStore::default(),
            Bucket::new(2, 0.001).unwrap(),
            key::global("all"),
        )
        .into_inner();
    tokio::spawn(
        Server::builder()
            .layer(presets)
            .add_service(health)
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    for _ in 0..2 {
        client.check(HealthCheckRequest::default()).await.unwrap();
    }
    let refused = client
        .check(HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
}

/// The client stack of the README is what a user stores in a struct and
/// calls from a generic handler: `Clone + Send + Sync`, with `Send`
/// futures, and no boxing.
#[test]
fn the_client_stack_is_clone_send_and_sync() {
    fn storable<T: Clone + Send + Sync + 'static>(_: &T) {}
    fn send<T: Send>(_: &T) {}

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _entered = runtime.enter();
    let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
    let stack = ServiceBuilder::new()
        .propagate_trace()
        .retry_for_tonic(RetryConfig::default())
        .circuit_breaker_for_grpc(BreakerConfig::default())
        .rate_limit_for_grpc(
            LocalStore::default(),
            Bucket::new(100, 50.0).unwrap(),
            key::global("health"),
        )
        .service(channel);
    storable(&stack);
    let mut client = HealthClient::new(stack);
    let call = async move { client.check(HealthCheckRequest::default()).await };
    send(&call);
}
