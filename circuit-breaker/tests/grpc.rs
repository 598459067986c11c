//! gRPC mode: a tonic client behind the breaker against tonic servers on
//! loopback, and the status in trailers read at the end of the body.
#![cfg(feature = "grpc")]

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use palisade_circuit_breaker::{
    CircuitBreakerLayer, Config, GrpcStatus, KeyedCircuitBreakerLayer, SlidingWindow, State,
    Unavailable,
};
use palisade_testkit::grpc::HealthServer;
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower::{Layer, ServiceBuilder, ServiceExt, service_fn};

fn config(calls: u32) -> Config {
    Config::builder()
        .sliding_window(SlidingWindow::Count(calls))
        .minimum_calls(calls)
        .open_duration(Duration::from_secs(30))
        .jitter(0.0)
        .build()
        .unwrap()
}

/// A health server that answers UNAVAILABLE itself when `unavailable`.
async fn server(unavailable: bool) -> HealthServer {
    HealthServer::start(move |_| unavailable.then(|| tonic::Status::unavailable("down"))).await
}

/// A health client to `server` behind a breaker opening after 3 failures.
async fn client(
    server: &HealthServer,
) -> (
    HealthClient<
        palisade_circuit_breaker::CircuitBreakerService<
            tonic::transport::Channel,
            palisade_circuit_breaker::CircuitBreaker,
            GrpcStatus,
            Unavailable,
        >,
    >,
    palisade_circuit_breaker::CircuitBreaker,
) {
    let layer = CircuitBreakerLayer::new_for_grpc(config(3));
    let breaker = layer.breaker().clone();
    let channel = Endpoint::from_shared(server.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    (
        HealthClient::new(ServiceBuilder::new().layer(layer).service(channel)),
        breaker,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_answers_open_it_and_it_answers_unavailable_itself() {
    let server = server(true).await;
    let (mut client, breaker) = client(&server).await;
    for _ in 0..3 {
        let status = client
            .check(HealthCheckRequest::default())
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(status.message(), "down");
    }
    assert_eq!(breaker.state(), State::Open);
    let status = client
        .check(HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(status.message(), "circuit open");
    let pushback = palisade_testkit::grpc::pushback_ms(&status);
    assert!((1..=30_000).contains(&pushback), "{pushback}");
    assert_eq!(server.calls(), 3, "the server was not called while open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successful_calls_are_read_from_the_trailers_and_keep_it_closed() {
    let server = server(false).await;
    let (mut client, breaker) = client(&server).await;
    for _ in 0..5 {
        client.check(HealthCheckRequest::default()).await.unwrap();
    }
    assert_eq!(server.calls(), 5);
    assert_eq!(breaker.state(), State::Closed);
    let counts = breaker.metrics(std::time::Instant::now()).counts;
    assert_eq!(
        (counts.calls, counts.failures),
        (3, 0),
        "every call settled as a success"
    );
}

/// A gRPC-shaped response whose status comes only in the trailers.
fn trailed(
    code: &'static str,
) -> Response<impl hyper::body::Body<Data = Bytes, Error = std::convert::Infallible> + Default> {
    trailed_with(code, &[])
}

/// As [`trailed`], with `fields` in the trailers too.
fn trailed_with(
    code: &'static str,
    fields: &[(&'static str, &'static str)],
) -> Response<impl hyper::body::Body<Data = Bytes, Error = std::convert::Infallible> + Default> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", code.parse().unwrap());
    for (name, value) in fields {
        trailers.insert(*name, value.parse().unwrap());
    }
    let body = Full::new(Bytes::from_static(b"\0\0\0\0\0"))
        .with_trailers(std::future::ready(Some(Ok(trailers))));
    Response::new(DefaultBody(Some(body)))
}

/// `with_trailers` bodies have no `Default`; the breaker needs one for its
/// own answers.
struct DefaultBody<B>(Option<B>);

impl<B> Default for DefaultBody<B> {
    fn default() -> Self {
        Self(None)
    }
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for DefaultBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        match self.0.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }
}

#[tokio::test]
async fn a_failure_in_the_trailers_counts_when_the_body_ends() {
    let layer = CircuitBreakerLayer::new_for_grpc(config(1));
    let breaker = layer.breaker().clone();
    let service = layer.layer(service_fn(|_: Request<()>| async {
        Ok::<_, std::convert::Infallible>(trailed("14"))
    }));
    let response = service.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(
        breaker.state(),
        State::Closed,
        "not settled before the trailers"
    );
    let collected = response.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "14");
    assert_eq!(breaker.state(), State::Open);
}

/// A quota answer naming its wait in the trailers is no failure either;
/// one naming none is.
#[tokio::test]
async fn a_quota_answer_in_the_trailers_counts_as_in_the_headers() {
    for (fields, state) in [
        (&[("grpc-retry-pushback-ms", "500")][..], State::Closed),
        (&[][..], State::Open),
    ] {
        let layer = CircuitBreakerLayer::new_for_grpc(config(1));
        let breaker = layer.breaker().clone();
        let service = layer.layer(service_fn(move |_: Request<()>| async move {
            Ok::<_, std::convert::Infallible>(trailed_with("8", fields))
        }));
        let response = service.oneshot(Request::new(())).await.unwrap();
        response.into_body().collect().await.unwrap();
        assert_eq!(breaker.state(), state, "{fields:?}");
    }
}

/// A body that ends without a `grpc-status` fails its call, though a
/// reader that takes a body's word that it has ended (as hyper's server
/// does) never polls it for the end: it said it had ended before the poll
/// that counts the failure, and the call counted nothing.
#[tokio::test]
async fn a_body_ending_without_a_status_fails_for_a_reader_stopping_at_its_end() {
    let layer = CircuitBreakerLayer::new_for_grpc(config(1));
    let breaker = layer.breaker().clone();
    let service = layer.layer(service_fn(|_: Request<()>| async {
        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new())))
    }));
    let mut body = service.oneshot(Request::new(())).await.unwrap().into_body();
    while !hyper::body::Body::is_end_stream(&body) {
        if body.frame().await.is_none() {
            break;
        }
    }
    drop(body);
    assert_eq!(breaker.metrics(std::time::Instant::now()).counts.calls, 1);
    assert_eq!(breaker.state(), State::Open);
}

#[tokio::test]
async fn a_body_dropped_before_its_trailers_counts_nothing() {
    let layer = CircuitBreakerLayer::new_for_grpc(config(1));
    let breaker = layer.breaker().clone();
    let service = layer.layer(service_fn(|_: Request<()>| async {
        Ok::<_, std::convert::Infallible>(trailed("14"))
    }));
    drop(service.clone().oneshot(Request::new(())).await.unwrap());
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(breaker.metrics(std::time::Instant::now()).counts.calls, 0);
    // An OK in the trailers is a success.
    let layer = CircuitBreakerLayer::new_for_grpc(config(1));
    let breaker = layer.breaker().clone();
    let service = layer.layer(service_fn(|_: Request<()>| async {
        Ok::<_, std::convert::Infallible>(trailed("0"))
    }));
    let response = service.oneshot(Request::new(())).await.unwrap();
    response.into_body().collect().await.unwrap();
    assert_eq!(breaker.metrics(std::time::Instant::now()).counts.calls, 1);
    assert_eq!(breaker.state(), State::Closed);
}

/// A server's quota answer that says when to come back (RESOURCE_EXHAUSTED
/// with a `grpc-retry-pushback-ms` wait, what a palisade rate limiter on
/// the server sends) paces this caller and is no failure: a client over
/// its quota, its retry waiting out each pushback, opened its breaker for
/// everyone (the tonic example's twelfth call failed "circuit open"). A
/// RESOURCE_EXHAUSTED that names no wait still fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_answer_naming_its_wait_is_not_a_failure() {
    let paced = HealthServer::start(|_| {
        let mut status = tonic::Status::resource_exhausted("quota");
        status
            .metadata_mut()
            .insert("grpc-retry-pushback-ms", "500".parse().unwrap());
        Some(status)
    })
    .await;
    let (mut paced_client, breaker) = client(&paced).await;
    for _ in 0..10 {
        let status = paced_client
            .check(HealthCheckRequest::default())
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    }
    assert_eq!(breaker.state(), State::Closed);
    let exhausted =
        HealthServer::start(|_| Some(tonic::Status::resource_exhausted("out of memory"))).await;
    let (mut exhausted_client, breaker) = client(&exhausted).await;
    for _ in 0..3 {
        exhausted_client
            .check(HealthCheckRequest::default())
            .await
            .unwrap_err();
    }
    assert_eq!(breaker.state(), State::Open);
}

/// A response with HTTP status `status` and no `grpc-status`: a proxy's
/// answer, not the gRPC server's.
fn proxied(status: u16) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::default());
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
    response
}

#[tokio::test]
async fn http_429_502_503_504_without_grpc_status_are_unavailable() {
    for status in [429, 502, 503, 504] {
        let layer = CircuitBreakerLayer::new_for_grpc(config(1));
        let breaker = layer.breaker().clone();
        let service = layer.layer(service_fn(move |_: Request<()>| async move {
            Ok::<_, std::convert::Infallible>(proxied(status))
        }));
        service.oneshot(Request::new(())).await.unwrap();
        assert_eq!(breaker.state(), State::Open, "HTTP {status}");
    }
    // 404 is UNIMPLEMENTED under gRPC's mapping: an answer, not a failure.
    let layer = CircuitBreakerLayer::new_for_grpc(config(1));
    let breaker = layer.breaker().clone();
    let service = layer.layer(service_fn(|_: Request<()>| async {
        Ok::<_, std::convert::Infallible>(proxied(404))
    }));
    service.oneshot(Request::new(())).await.unwrap();
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(breaker.metrics(std::time::Instant::now()).counts.calls, 1);
}

#[tokio::test]
async fn a_refusal_beneath_a_grpc_breaker_is_not_a_failure() {
    let inner = CircuitBreakerLayer::new_for_grpc(config(1));
    inner.breaker().force_open();
    let outer = CircuitBreakerLayer::new_for_grpc(config(1));
    let breaker = outer.breaker().clone();
    let service = outer.layer(inner.layer(service_fn(|_: Request<()>| async {
        Ok::<_, std::convert::Infallible>(trailed("0"))
    })));
    for _ in 0..3 {
        let response = service.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(response.headers()["grpc-status"], "14");
    }
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(breaker.metrics(std::time::Instant::now()).counts.calls, 0);
}

#[tokio::test(start_paused = true)]
async fn pushback_zero_keeps_the_configured_open_duration() {
    let layer = CircuitBreakerLayer::new_for_grpc(config(1));
    let breaker = layer.breaker().clone();
    let service = layer.layer(service_fn(|_: Request<()>| async {
        let mut response = Response::new(Full::<Bytes>::default());
        response
            .headers_mut()
            .insert("grpc-status", "14".parse().unwrap());
        response
            .headers_mut()
            .insert("grpc-retry-pushback-ms", "0".parse().unwrap());
        Ok::<_, std::convert::Infallible>(response)
    }));
    service.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(breaker.state(), State::Open);
    let refused = service.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(refused.headers()["grpc-retry-pushback-ms"], "30000");
}

#[tokio::test]
async fn keyed_breakers_serve_grpc_one_per_key_with_the_status_from_the_trailers() {
    // One breaker per tenant; tenant "a"'s calls fail in their trailers,
    // tenant "b"'s succeed.
    let layer =
        KeyedCircuitBreakerLayer::new(config(2), |request: &Request<&'static str>| *request.body())
            .classify(GrpcStatus)
            .respond_with(Unavailable);
    let registry = layer.registry();
    let service = layer.layer(service_fn(|request: Request<&'static str>| async move {
        let code = if *request.body() == "a" { "14" } else { "0" };
        Ok::<_, std::convert::Infallible>(trailed(code))
    }));
    for tenant in ["a", "b", "a", "b"] {
        let response = service.clone().oneshot(Request::new(tenant)).await.unwrap();
        response.into_body().collect().await.unwrap();
    }
    assert_eq!(registry.get(&"a").state(), State::Open);
    assert_eq!(registry.get(&"b").state(), State::Closed);
    let refused = service.clone().oneshot(Request::new("a")).await.unwrap();
    assert_eq!(refused.headers()["grpc-status"], "14");
    assert_eq!(refused.headers()["grpc-message"], "circuit%20open");
    let served = service.clone().oneshot(Request::new("b")).await.unwrap();
    let trailers = served.into_body().collect().await.unwrap();
    assert_eq!(trailers.trailers().unwrap()["grpc-status"], "0");
}
