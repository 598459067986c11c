//! HTTP mode against real axum servers on loopback, through hyper's client.
#![cfg(feature = "http")]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::routing::any;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Frame};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use palisade_circuit_breaker::CircuitBreakerLayer;
use palisade_retry::http::ReplayBody;
use palisade_retry::{Backoff, Budget, Config, RetryLayer};
use tower::{BoxError, ServiceBuilder, ServiceExt};

/// What the server saw, and the statuses it has left to answer (200 once
/// they run out).
#[derive(Default)]
struct Script {
    statuses: VecDeque<u16>,
    bodies: Vec<Bytes>,
}

async fn serve(statuses: &[u16]) -> (SocketAddr, Arc<Mutex<Script>>) {
    let script = Arc::new(Mutex::new(Script {
        statuses: statuses.iter().copied().collect(),
        bodies: Vec::new(),
    }));
    let app = app(script.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (address, script)
}

/// Records each request's body and answers the next scripted status.
fn app(script: Arc<Mutex<Script>>) -> Router {
    Router::new().route(
        "/",
        any(move |body: Bytes| {
            let mut script = script.lock().unwrap();
            script.bodies.push(body);
            let status = script.statuses.pop_front().unwrap_or(200);
            async move { StatusCode::from_u16(status).unwrap() }
        }),
    )
}

fn config() -> Config {
    Config::builder()
        .max_attempts(3)
        .backoff(Backoff::constant(Duration::from_millis(5)))
        .build()
        .unwrap()
}

fn clone_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

fn request(method: Method, address: SocketAddr, key: bool) -> Request<Full<Bytes>> {
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("http://{address}/"));
    if key {
        builder = builder.header("idempotency-key", "order-17");
    }
    builder
        .body(Full::new(Bytes::from_static(b"{\"qty\":1}")))
        .unwrap()
}

fn calls(script: &Mutex<Script>) -> usize {
    script.lock().unwrap().bodies.len()
}

/// Sends one request through a retrying client; the final status.
async fn send(method: Method, address: SocketAddr, key: bool) -> StatusCode {
    ServiceBuilder::new()
        .layer(RetryLayer::new_for_http(config()))
        .service(clone_client())
        .oneshot(request(method, address, key))
        .await
        .unwrap()
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_then_200_is_retried() {
    let (address, script) = serve(&[503]).await;
    assert_eq!(send(Method::GET, address, false).await, StatusCode::OK);
    assert_eq!(calls(&script), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_retried_only_with_an_idempotency_key() {
    let (address, script) = serve(&[503, 503]).await;
    let status = send(Method::POST, address, false).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(calls(&script), 1, "sent once");

    assert_eq!(send(Method::POST, address, true).await, StatusCode::OK);
    assert_eq!(calls(&script), 3, "with a key: 503, then 200");
    let script = script.lock().unwrap();
    assert!(script.bodies.iter().all(|body| body == "{\"qty\":1}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4xx_is_never_retried() {
    let (address, script) = serve(&[404]).await;
    assert_eq!(
        send(Method::GET, address, false).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(calls(&script), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_retried_until_the_attempts_run_out() {
    // Bind and drop a listener: its port now refuses connections.
    let address = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let attempts = Arc::new(Mutex::new(0));
    let counted = attempts.clone();
    let client = ServiceBuilder::new()
        .layer(RetryLayer::new_for_http(config()))
        .map_request(move |request: Request<Full<Bytes>>| {
            *counted.lock().unwrap() += 1;
            request
        })
        .service(clone_client());
    let err = client
        .oneshot(request(Method::GET, address, false))
        .await
        .unwrap_err();
    assert!(
        palisade_retry::http::is_connect_or_timeout(&*err),
        "{err:?}"
    );
    assert_eq!(*attempts.lock().unwrap(), 3);
}

/// A request body streamed in `chunks` chunks of 512 bytes, not `Clone`.
struct Streamed {
    left: u8,
}

impl hyper::body::Body for Streamed {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        self.left -= 1;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![
            b'a' + self.left;
            512
        ])))))
    }
}

fn streamed(address: SocketAddr, chunks: u8) -> Request<Body> {
    Request::put(format!("http://{address}/"))
        .body(Body::new(Streamed { left: chunks }))
        .unwrap()
}

fn buffering_client(
    cap: usize,
) -> impl tower::Service<
    Request<Body>,
    Response = hyper::Response<hyper::body::Incoming>,
    Error = BoxError,
    Future: Send,
> + Clone {
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Body>>();
    ServiceBuilder::new()
        .layer(RetryLayer::new_for_http(config()).buffer_bodies(cap))
        .service(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_body_under_the_cap_is_replayed_whole() {
    let (address, script) = serve(&[503]).await;
    let response = buffering_client(64 * 1024)
        .oneshot(streamed(address, 8))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let script = script.lock().unwrap();
    assert_eq!(script.bodies.len(), 2);
    assert_eq!(script.bodies[0].len(), 4096);
    assert_eq!(
        script.bodies[0], script.bodies[1],
        "the replay is byte for byte"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_body_over_the_cap_is_sent_once_and_not_retried() {
    let (address, script) = serve(&[503]).await;
    let response = buffering_client(1024)
        .oneshot(streamed(address, 8))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let script = script.lock().unwrap();
    assert_eq!(script.bodies.len(), 1);
    assert_eq!(script.bodies[0].len(), 4096, "sent whole, just not kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breakers_own_503_is_not_retried() {
    let (address, script) = serve(&[]).await;
    let breaker = CircuitBreakerLayer::new_for_http(palisade_circuit_breaker::Config::default());
    breaker.breaker().force_open();
    let client = ServiceBuilder::new()
        .layer(RetryLayer::new_for_http(config()))
        .layer(breaker)
        .map_response(|response: hyper::Response<hyper::body::Incoming>| response.map(Body::new))
        .service(clone_client());
    let response = client
        .oneshot(request(Method::GET, address, false))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        calls(&script),
        0,
        "the breaker answered; nothing was retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_budget_serves_every_connection_of_an_axum_router() {
    // The layer on a Router, retrying a handler that always fails: axum
    // clones the service per connection, and every clone draws on the one
    // budget. With 20% and no floor or bank, a clone with its own account
    // could never afford a retry; the shared one affords one per 5 requests.
    let script = Arc::new(Mutex::new(Script {
        statuses: std::iter::repeat_n(503, 10_000).collect(),
        bodies: Vec::new(),
    }));
    let retry = RetryLayer::new_for_http(
        Config::builder()
            .max_attempts(2)
            .backoff(Backoff::constant(Duration::ZERO))
            .budget(Budget::new(0.2).min_per_second(0).max_banked(1))
            .build()
            .unwrap(),
    )
    .buffer_bodies_into(1024, Body::new)
    .answer_failures();
    let app = app(script.clone()).layer(retry);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    for _ in 0..200 {
        // A fresh client per request: a new connection, a new clone.
        let response = clone_client()
            .oneshot(request(Method::GET, address, false))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let _ = response.into_body().collect().await;
    }
    assert_eq!(calls(&script), 240, "200 requests and 20% of them retried");
}

#[tokio::test(start_paused = true)]
async fn a_body_the_transport_releases_during_the_backoff_is_replayed() {
    // The first attempt reads one chunk, answers 503 and hands its body to
    // a task that lets go of it 1 ms later (a connection still draining
    // it), well inside the 50 ms backoff: the retry must take it from there.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let origin = tower::service_fn(move |request: Request<ReplayBody<Body>>| {
        let record = record.clone();
        async move {
            let first = record.lock().unwrap().is_empty();
            let mut body = request.into_body();
            if first {
                let chunk = body.frame().await.unwrap().unwrap().into_data().unwrap();
                record.lock().unwrap().push(chunk);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    drop(body);
                });
                return Ok::<_, BoxError>(http::Response::builder().status(503).body(()).unwrap());
            }
            let whole = body.collect().await?.to_bytes();
            record.lock().unwrap().push(whole);
            Ok(http::Response::new(()))
        }
    });
    let config = Config::builder()
        .backoff(Backoff::constant(Duration::from_millis(50)))
        .build()
        .unwrap();
    let response = ServiceBuilder::new()
        .layer(RetryLayer::new_for_http(config).buffer_bodies(64 * 1024))
        .service(origin)
        .oneshot(streamed("127.0.0.1:9".parse().unwrap(), 3))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "retried");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[1].len(),
        3 * 512,
        "the whole body, replayed then streamed"
    );
    assert!(seen[1].starts_with(&seen[0]));
}

#[test]
fn the_crate_docs_list_trace_and_every_other_method_the_gate_allows() {
    let gate = palisade_retry::http::Idempotency::default();
    let methods = [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::PUT,
        Method::DELETE,
        Method::TRACE,
        Method::POST,
        Method::PATCH,
        Method::CONNECT,
    ];
    let allowed: Vec<_> = methods
        .into_iter()
        .filter(|method| gate.allows(&Request::builder().method(method.clone()).body(()).unwrap()))
        .collect();
    assert!(
        allowed.contains(&Method::TRACE),
        "RFC 9110: TRACE is idempotent"
    );
    for (file, docs) in [
        ("src/lib.rs", include_str!("../src/lib.rs")),
        ("src/http/mod.rs", include_str!("../src/http/mod.rs")),
    ] {
        for method in &allowed {
            assert!(
                docs.contains(&format!("`{method}`")),
                "{file} omits {method}"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn on_a_router_a_deadline_passed_is_a_504_not_an_error() {
    let retry = RetryLayer::new_for_http(
        Config::builder()
            .deadline(Duration::from_millis(100))
            .build()
            .unwrap(),
    )
    .buffer_bodies_into(1024, Body::new)
    .answer_failures();
    let app = Router::new()
        .route(
            "/slow",
            axum::routing::get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        )
        .layer(retry);
    let response = app
        .oneshot(Request::get("/slow").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    let failure = response
        .extensions()
        .get::<palisade_retry::http::RetryFailure>()
        .expect("the failure in the extensions");
    assert!(
        failure.0.is::<palisade_retry::DeadlineExceeded>(),
        "{failure}"
    );
}

/// A call a palisade layer below refused is answered as palisade layers
/// answer their refusals, not as a failed retry: `503` with `Retry-After`
/// and the `Refusal` in the extensions (`429` for a rate limit), so a
/// breaker above does not count it against the dependency. (It was a
/// `502` with the marker only deep in the failure's sources.)
#[tokio::test(start_paused = true)]
async fn on_a_router_a_refusal_below_is_answered_as_a_refusal() {
    use palisade_hints::{Refusal, RefusalReason};
    use tower::Layer;

    for (refusal, status) in [
        (
            Refusal::circuit_open(Some(Duration::from_secs(2))),
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        (Refusal::rate_limited(None), StatusCode::TOO_MANY_REQUESTS),
    ] {
        let refusing = tower::service_fn(move |_: Request<Body>| async move {
            Err::<axum::response::Response, BoxError>(Box::new(refusal))
        });
        let retry = RetryLayer::new_for_http(Config::default())
            .buffer_bodies_into(1024, Body::new)
            .answer_failures();
        let response = retry
            .layer(refusing)
            .oneshot(Request::get("/quote").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), status);
        assert_eq!(response.extensions().get::<Refusal>(), Some(&refusal));
        if refusal.reason() == RefusalReason::CircuitOpen {
            assert_eq!(response.headers()["retry-after"], "2");
        }
    }
}
