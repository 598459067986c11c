//! gRPC mode: a tonic client behind the retry layer against a tonic server
//! on loopback that answers trailers-only errors on demand.
#![cfg(feature = "tonic")]

use std::collections::VecDeque;
use std::time::Duration;

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
