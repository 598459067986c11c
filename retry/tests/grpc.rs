//! gRPC mode: a tonic client behind the retry layer against a tonic server
//! on loopback that answers trailers-only errors on demand, and the layer
//! alone on a paused clock where the time a call takes is the point.
#![cfg(feature = "tonic")]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use palisade_hints::grpc;
use palisade_retry::http::ReplayBody;
use tower::{BoxError, ServiceExt};

use palisade_retry::grpc::RetryUnavailable;
use palisade_retry::http::{HttpReplay, TonicBody};
use palisade_retry::{Backoff, Config, Retry, RetryLayer};
use palisade_testkit::grpc::HealthServer;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tower::ServiceBuilder;

/// The channel as a user stacks it: the tonic preset, straight in front of
/// the channel.
type Stack = Retry<Channel, RetryUnavailable, HttpReplay<TonicBody>>;

/// A health server that answers `script` in order, then lets calls through,
/// and a client to it through the retry layer.
async fn connect(script: Vec<tonic::Status>) -> (HealthClient<Stack>, HealthServer) {
    let mut script: VecDeque<_> = script.into();
    let server = HealthServer::start(move |_| script.pop_front()).await;
    let channel = Endpoint::from_shared(server.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let config = Config::builder()
        .backoff(Backoff::full_jitter(
            Duration::from_millis(5),
            Duration::from_secs(1),
        ))
        .build()
        .unwrap();
    let channel = ServiceBuilder::new()
        .layer(RetryLayer::new_for_tonic(config))
        .service(channel);
    (HealthClient::new(channel), server)
}

fn pushback(status: tonic::Status, ms: &'static str) -> tonic::Status {
    let mut status = status;
    status
        .metadata_mut()
        .insert("grpc-retry-pushback-ms", ms.parse().unwrap());
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_is_retried_and_the_call_succeeds() {
    let (mut client, server) = connect(vec![
        tonic::Status::unavailable("restarting"),
        pushback(tonic::Status::unavailable("restarting"), "20"),
    ])
    .await;
    let response = client.check(HealthCheckRequest::default()).await.unwrap();
    assert_eq!(response.into_inner().status(), ServingStatus::Serving);
    assert_eq!(server.calls(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhaustion_is_retried_only_when_the_server_pushes_back() {
    let (mut client, server) = connect(vec![tonic::Status::resource_exhausted("quota")]).await;
    let status = client
        .check(HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(server.calls(), 1);

    let (mut client, server) = connect(vec![pushback(
        tonic::Status::resource_exhausted("quota"),
        "10",
    )])
    .await;
    client.check(HealthCheckRequest::default()).await.unwrap();
    assert_eq!(server.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_negative_pushback_means_no_retry_and_other_codes_are_answers() {
    let (mut client, server) =
        connect(vec![pushback(tonic::Status::unavailable("go away"), "-1")]).await;
    let status = client
        .check(HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(server.calls(), 1);

    let (mut client, server) = connect(vec![tonic::Status::internal("bug")]).await;
    let status = client
        .check(HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Internal);
    assert_eq!(server.calls(), 1);
}

/// A call past the retry's deadline reaches the tonic client as
/// `DEADLINE_EXCEEDED`; it was `UNKNOWN`, tonic knowing nothing of the
/// retry's error. The server accepts the connection and never answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_the_deadline_is_deadline_exceeded() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = silent.local_addr().unwrap();
    let _silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((connection, _)) = silent.accept().await {
            held.push(connection);
        }
    });
    let channel = Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect_lazy();
    let config = Config::builder()
        .deadline(Duration::from_millis(200))
        .build()
        .unwrap();
    let channel = ServiceBuilder::new()
        .layer(RetryLayer::new_for_tonic(config))
        .service(channel);
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
}

/// The `grpc-timeout` of each call a server received, in order.
type Seen = Arc<Mutex<Vec<Option<Duration>>>>;

/// A server taking 50 ms to answer each call `UNAVAILABLE`, recording
/// the `grpc-timeout` each call came with, behind the gRPC preset with a
/// constant `backoff`.
fn unavailable_behind_retries(
    backoff: Duration,
) -> (
    impl tower::Service<http::Request<Full<Bytes>>, Response = http::Response<()>, Error = BoxError>,
    Seen,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let server = tower::service_fn(move |request: http::Request<ReplayBody<Full<Bytes>>>| {
        let record = record.clone();
        async move {
            record
                .lock()
                .unwrap()
                .push(grpc::timeout(request.headers()));
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok::<_, BoxError>(grpc::trailers_only::<()>(grpc::UNAVAILABLE, "restarting"))
        }
    });
    let config = Config::builder()
        .backoff(Backoff::constant(backoff))
        .max_attempts(10)
        .build()
        .unwrap();
    let retried = ServiceBuilder::new()
        .layer(RetryLayer::new_for_grpc(config))
        .service(server);
    (retried, seen)
}

/// A gRPC call whose caller gives it `timeout` (a `grpc-timeout` value).
fn call_within(timeout: &'static str) -> http::Request<Full<Bytes>> {
    http::Request::builder()
        .method("POST")
        .uri("http://server/grpc.health.v1.Health/Check")
        .header("content-type", "application/grpc")
        .header("grpc-timeout", timeout)
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap()
}

/// A call's `grpc-timeout` is the whole call's, retries included: each
/// attempt tells the server the time its caller has left, and none starts
/// once that is up. Every attempt sent the first one's `300m` again, and a
/// call retried twice ran past three times what its caller gave it.
#[tokio::test(start_paused = true)]
async fn each_attempt_tells_the_server_the_time_its_caller_has_left() {
    let (retried, seen) = unavailable_behind_retries(Duration::from_millis(100));
    let started = tokio::time::Instant::now();
    let response = retried.oneshot(call_within("300m")).await.unwrap();
    assert_eq!(grpc::status(response.headers()), Some(grpc::UNAVAILABLE));
    // Attempts at 0 and 150 ms (50 ms each, 100 ms apart); the next would
    // start at 300 ms, when the caller's time is up: the second answer
    // goes back as it comes.
    assert_eq!(
        *seen.lock().unwrap(),
        [
            Some(Duration::from_millis(300)),
            Some(Duration::from_millis(150))
        ]
    );
    assert_eq!(started.elapsed(), Duration::from_millis(200));
}

/// No backoff is waited that ends past the caller's time: the answer goes
/// back as the attempt before it ends. The retry slept the whole backoff
/// (a second, against 300 ms) before it found the time up.
#[tokio::test(start_paused = true)]
async fn no_backoff_is_waited_past_the_time_its_caller_has() {
    let (retried, seen) = unavailable_behind_retries(Duration::from_secs(1));
    let started = tokio::time::Instant::now();
    let response = retried.oneshot(call_within("300m")).await.unwrap();
    assert_eq!(grpc::status(response.headers()), Some(grpc::UNAVAILABLE));
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert_eq!(started.elapsed(), Duration::from_millis(50));
}

/// A server that answers `UNAVAILABLE` after 50 ms and, once it has been
/// called, is never ready again (a concurrency limit that never frees).
#[derive(Clone)]
struct ReadyOnce {
    called: Arc<Mutex<bool>>,
}

impl tower::Service<http::Request<ReplayBody<Full<Bytes>>>> for ReadyOnce {
    type Response = http::Response<()>;
    type Error = BoxError;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<http::Response<()>, BoxError>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        if *self.called.lock().unwrap() {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(Ok(()))
        }
    }

    fn call(&mut self, _: http::Request<ReplayBody<Full<Bytes>>>) -> Self::Future {
        *self.called.lock().unwrap() = true;
        Box::pin(async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(grpc::trailers_only::<()>(grpc::UNAVAILABLE, "restarting"))
        })
    }
}

/// A retry whose service does not get ready returns the last answer once
/// the caller's time is up. It waited for readiness with nothing but
/// `Config::deadline` to end the wait (none here): for as long as the
/// service stayed unready.
#[tokio::test(start_paused = true)]
async fn a_retry_waiting_for_readiness_ends_with_its_callers_time() {
    let config = Config::builder()
        .backoff(Backoff::constant(Duration::from_millis(100)))
        .build()
        .unwrap();
    let retried = ServiceBuilder::new()
        .layer(RetryLayer::new_for_grpc(config))
        .service(ReadyOnce {
            called: Arc::new(Mutex::new(false)),
        });
    let started = tokio::time::Instant::now();
    let response = tokio::time::timeout(
        Duration::from_secs(3_600),
        retried.oneshot(call_within("300m")),
    )
    .await
    .expect("ended by the caller's time, not held for the service")
    .unwrap();
    assert_eq!(grpc::status(response.headers()), Some(grpc::UNAVAILABLE));
    assert_eq!(started.elapsed(), Duration::from_millis(300));
}
