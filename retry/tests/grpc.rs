//! gRPC mode: a tonic client behind the retry layer against a tonic server
//! on loopback that answers trailers-only errors on demand.
#![cfg(feature = "grpc")]

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use palisade_retry::grpc::RetryUnavailable;
use palisade_retry::http::{BufferBody, HttpReplay, ReplayBody};
use palisade_retry::{Backoff, Config, Retry, RetryLayer};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tower::util::MapRequest;
use tower::{Service, ServiceBuilder};

/// Answers the scripted statuses (trailers-only) before letting calls
/// through to the real service, and counts every call.
#[derive(Clone)]
struct Scripted<S> {
    inner: S,
    script: Arc<Mutex<(VecDeque<tonic::Status>, usize)>>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<Request<tonic::body::Body>> for Scripted<S>
where
    S: Service<Request<tonic::body::Body>, Response = Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<tonic::body::Body>) -> Self::Future {
        let mut script = self.script.lock().unwrap();
        script.1 += 1;
        match script.0.pop_front() {
            Some(status) => Box::pin(async move { Ok(status.into_http()) }),
            None => Box::pin(self.inner.call(request)),
        }
    }
}

/// The channel as a user stacks it: retry, then tonic's body around the
/// replayable one.
type Stack = Retry<
    MapRequest<Channel, fn(Request<ReplayBody<tonic::body::Body>>) -> Request<tonic::body::Body>>,
    RetryUnavailable,
    HttpReplay<BufferBody>,
>;

fn to_tonic(request: Request<ReplayBody<tonic::body::Body>>) -> Request<tonic::body::Body> {
    request.map(tonic::body::Body::new)
}

async fn connect(
    script: Vec<tonic::Status>,
) -> (
    HealthClient<Stack>,
    Arc<Mutex<(VecDeque<tonic::Status>, usize)>>,
) {
    let script = Arc::new(Mutex::new((script.into_iter().collect(), 0)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let shared = script.clone();
    tokio::spawn(
        Server::builder()
            .layer(tower::layer::layer_fn(move |inner| Scripted {
                inner,
                script: shared.clone(),
            }))
            .add_service(health)
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    let channel = Endpoint::from_shared(format!("http://{address}"))
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
        .layer(RetryLayer::new_for_grpc(config))
        .map_request(to_tonic as fn(_) -> _)
        .service(channel);
    (HealthClient::new(channel), script)
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
    let (mut client, script) = connect(vec![
        tonic::Status::unavailable("restarting"),
        pushback(tonic::Status::unavailable("restarting"), "20"),
    ])
    .await;
    let response = client.check(HealthCheckRequest::default()).await.unwrap();
    assert_eq!(response.into_inner().status(), ServingStatus::Serving);
    assert_eq!(script.lock().unwrap().1, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhaustion_is_retried_only_when_the_server_pushes_back() {
    let (mut client, script) = connect(vec![tonic::Status::resource_exhausted("quota")]).await;
    let status = client
        .check(HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(script.lock().unwrap().1, 1);

    let (mut client, script) =
        client_with_pushback(tonic::Status::resource_exhausted("quota"), "10").await;
    client.check(HealthCheckRequest::default()).await.unwrap();
    assert_eq!(script.lock().unwrap().1, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_negative_pushback_means_no_retry_and_other_codes_are_answers() {
    let (mut client, script) =
        client_with_pushback(tonic::Status::unavailable("go away"), "-1").await;
    let status = client
        .check(HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(script.lock().unwrap().1, 1);

    let (mut client, script) = connect(vec![tonic::Status::internal("bug")]).await;
    let status = client
        .check(HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Internal);
    assert_eq!(script.lock().unwrap().1, 1);
}

async fn client_with_pushback(
    status: tonic::Status,
    ms: &'static str,
) -> (
    HealthClient<Stack>,
    Arc<Mutex<(VecDeque<tonic::Status>, usize)>>,
) {
    connect(vec![pushback(status, ms)]).await
}
