//! gRPC mode against a real tonic server and client on loopback: the
//! client sees RESOURCE_EXHAUSTED with the pushback, and the retry and
//! circuit-breaker layers around the limiter read its refusal right.
#![cfg(feature = "grpc")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::Request;
use palisade_circuit_breaker::{CircuitBreakerLayer, Config as BreakerConfig, State};
use palisade_retry::{Backoff, Config as RetryConfig, RetryLayer};
use palisade_token_bucket::grpc::ResourceExhausted;
use palisade_token_bucket::key::{Global, OneToken, global};
use palisade_token_bucket::{
    Bucket, Clock, Decision, LocalStore, RateLimitLayer, Store, StoreError,
};
use tonic::body::Body;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower::ServiceBuilder;

/// The limiter in gRPC mode, one bucket for every call.
type Limit<St> = RateLimitLayer<St, Global, OneToken, ResourceExhausted>;

/// A health server, behind `limit` when there is one, on a fresh loopback
/// port; its URL and the calls that reached the health service.
async fn serve<St: Store>(limit: Option<Limit<St>>) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let reached = Arc::new(AtomicUsize::new(0));
    let counted = reached.clone();
    let counter = tower::layer::layer_fn(move |inner| {
        let counted = counted.clone();
        tower::util::MapRequest::new(inner, move |request: Request<Body>| {
            counted.fetch_add(1, Ordering::SeqCst);
            request
        })
    });
    tokio::spawn(
        Server::builder()
            .layer(tower::util::option_layer(limit))
            .layer(counter)
            .add_service(health)
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    (url, reached)
}

async fn channel(url: &str) -> Channel {
    Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tonic_client_sees_resource_exhausted_with_the_pushback() {
    // Two calls at once, then one every 2 s.
    let limit = RateLimitLayer::new_for_grpc(
        LocalStore::default(),
        Bucket::new(2, 0.5).unwrap(),
        global("everyone"),
    );
    let (url, reached) = serve(Some(limit)).await;
    let mut client = HealthClient::new(channel(&url).await);
    for _ in 0..2 {
        client.check(HealthCheckRequest::default()).await.unwrap();
    }
    let status = client
        .check(HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert_eq!(status.message(), "rate limited");
    let pushback = palisade_testkit::grpc::pushback_ms(&status);
    assert!((1..=2_000).contains(&pushback), "{pushback}");
    assert_eq!(
        reached.load(Ordering::SeqCst),
        2,
        "the refused call stopped at the limit"
    );
}

/// A store whose backend is down, for every decision.
#[derive(Debug, Clone)]
struct Down;

impl Store for Down {
    type Future = std::future::Ready<Result<Decision, StoreError>>;

    type Pinned = ();

    fn decide(&self, _: &str, _: &Bucket, _: u32) -> Self::Future {
        std::future::ready(Err(StoreError::backend("connection refused")))
    }

    fn pin(&self, _: &str) {}

    fn decide_pinned(&self, (): &(), bucket: &Bucket, cost: u32) -> Self::Future {
        self.decide("", bucket, cost)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_decide_is_unavailable_not_unknown() {
    let limit =
        RateLimitLayer::new_for_grpc(Down, Bucket::new(2, 0.5).unwrap(), global("everyone"));
    let (url, reached) = serve(Some(limit)).await;
    let mut client = HealthClient::new(channel(&url).await);
    let status = client
        .check(HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.metadata().get("grpc-retry-pushback-ms").is_none());
    assert_eq!(reached.load(Ordering::SeqCst), 0);
}

/// A breaker that opens on the first call that fails.
fn opens_on_one_failure() -> BreakerConfig {
    BreakerConfig::builder()
        .minimum_calls(1)
        .failure_rate_threshold(0.5)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_beneath_a_grpc_breaker_is_not_a_failure() {
    let (url, reached) = serve(None::<Limit<LocalStore>>).await;
    let breaker = CircuitBreakerLayer::new_for_grpc(opens_on_one_failure());
    let state = breaker.breaker().clone();
    // One call, then nothing for a thousand seconds.
    let limit = RateLimitLayer::new_for_grpc(
        LocalStore::default(),
        Bucket::new(1, 0.001).unwrap(),
        global("everyone"),
    );
    let stack = ServiceBuilder::new()
        .layer(breaker)
        .layer(limit)
        .service(channel(&url).await);
    let mut client = HealthClient::new(stack);
    client.check(HealthCheckRequest::default()).await.unwrap();
    for _ in 0..5 {
        let status = client
            .check(HealthCheckRequest::default())
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    }
    assert_eq!(state.state(), State::Closed);
    let counts = state.metrics(std::time::Instant::now()).counts;
    assert_eq!((counts.calls, counts.failures), (1, 0), "{counts:?}");
    assert_eq!(reached.load(Ordering::SeqCst), 1);
}

/// A store that cannot decide (Redis down, failure policy `Propagate`):
/// the limiter answers UNAVAILABLE itself, marked as its own refusal, so a
/// breaker above does not count a healthy service's calls as failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_failure_beneath_a_grpc_breaker_is_not_a_failure() {
    let (url, reached) = serve(None::<Limit<LocalStore>>).await;
    let breaker = CircuitBreakerLayer::new_for_grpc(opens_on_one_failure());
    let state = breaker.breaker().clone();
    let limit =
        RateLimitLayer::new_for_grpc(Down, Bucket::new(2, 0.5).unwrap(), global("everyone"));
    let stack = ServiceBuilder::new()
        .layer(breaker)
        .layer(limit)
        .service(channel(&url).await);
    let mut client = HealthClient::new(stack);
    for _ in 0..5 {
        let status = client
            .check(HealthCheckRequest::default())
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    }
    assert_eq!(state.state(), State::Closed);
    let counts = state.metrics(std::time::Instant::now()).counts;
    assert_eq!((counts.calls, counts.failures), (0, 0), "{counts:?}");
    assert_eq!(reached.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn retry_waits_out_the_pushback_of_a_refusal_beneath_it() {
    let (url, reached) = serve(None::<Limit<LocalStore>>).await;
    // One call at once, then one every 50 ms on the test's paused clock:
    // the second call is refused here, and retried once its token is
    // there.
    let limit = RateLimitLayer::new_for_grpc(
        LocalStore::with_clock(16, Clock::Tokio),
        Bucket::new(1, 20.0).unwrap(),
        global("everyone"),
    );
    let config = RetryConfig::builder()
        .backoff(Backoff::full_jitter(
            Duration::from_millis(1),
            Duration::from_secs(1),
        ))
        .build()
        .unwrap();
    let decided = Arc::new(AtomicUsize::new(0));
    let counted = decided.clone();
    let stack = ServiceBuilder::new()
        .layer(RetryLayer::new_for_tonic(config))
        .map_request(move |request: Request<Body>| {
            counted.fetch_add(1, Ordering::SeqCst);
            request
        })
        .layer(limit)
        .service(channel(&url).await);
    let mut client = HealthClient::new(stack);
    for _ in 0..2 {
        client.check(HealthCheckRequest::default()).await.unwrap();
    }
    assert_eq!(decided.load(Ordering::SeqCst), 3, "one refusal, retried");
    assert_eq!(reached.load(Ordering::SeqCst), 2);
}
