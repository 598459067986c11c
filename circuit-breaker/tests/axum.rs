//! HTTP mode on a real axum server on loopback: 5xx trips the breaker, 4xx
//! does not, a dependency's 503 Retry-After sets the open duration, and one
//! breaker is shared by every connection.
#![cfg(feature = "http")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use palisade_circuit_breaker::{CircuitBreaker, CircuitBreakerLayer, Config, SlidingWindow, State};

/// A server whose handler answers with the status in `status`, behind a
/// breaker; returns its address, the breaker, and the handler's call count.
async fn serve(
    status: Arc<AtomicU16>,
    config: Config,
) -> (SocketAddr, CircuitBreaker, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = CircuitBreakerLayer::new_for_http(config);
    let breaker = layer.breaker().clone();
    let counter = calls.clone();
    let app = Router::new()
        .route(
            "/",
            get(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                let code = StatusCode::from_u16(status.load(Ordering::SeqCst)).unwrap();
                async move {
                    let mut headers = HeaderMap::new();
                    if code == StatusCode::SERVICE_UNAVAILABLE {
                        headers.insert("retry-after", "120".parse().unwrap());
                    }
                    (code, headers, "")
                }
            }),
        )
        .layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (address, breaker, calls)
}

fn config() -> Config {
    Config::builder()
        .sliding_window(SlidingWindow::Count(10))
        .minimum_calls(10)
        .open_duration(Duration::from_secs(30))
        .jitter(0.0)
        .build()
        .unwrap()
}

/// Each request on a new connection, as many clients would.
async fn get_status(address: SocketAddr) -> (StatusCode, Option<String>) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let response = client
        .get(format!("http://{address}/").parse().unwrap())
        .await
        .unwrap();
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    response.into_body().collect().await.unwrap();
    (status, retry_after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_open_it_and_it_answers_503_itself() {
    let status = Arc::new(AtomicU16::new(500));
    let (address, breaker, calls) = serve(status.clone(), config()).await;
    for _ in 0..10 {
        assert_eq!(
            get_status(address).await.0,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
    assert_eq!(breaker.state(), State::Open);
    let (code, retry_after) = get_status(address).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    let seconds: u64 = retry_after.unwrap().parse().unwrap();
    assert!((1..=30).contains(&seconds), "{seconds}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        10,
        "the handler was not called while open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_do_not_open_it() {
    let status = Arc::new(AtomicU16::new(404));
    let (address, breaker, _) = serve(status, config()).await;
    for _ in 0..20 {
        assert_eq!(get_status(address).await.0, StatusCode::NOT_FOUND);
    }
    assert_eq!(breaker.state(), State::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependencys_retry_after_sets_the_open_duration() {
    let status = Arc::new(AtomicU16::new(503));
    let config = Config::builder()
        .sliding_window(SlidingWindow::Count(1))
        .minimum_calls(1)
        .jitter(0.0)
        .build()
        .unwrap();
    let (address, breaker, _) = serve(status, config).await;
    assert_eq!(get_status(address).await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(breaker.state(), State::Open);
    let (_, retry_after) = get_status(address).await;
    let seconds: u64 = retry_after.unwrap().parse().unwrap();
    assert!(
        (100..=120).contains(&seconds),
        "the hint, not the 30 s default: {seconds}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_connections_share_one_breaker() {
    let status = Arc::new(AtomicU16::new(500));
    let (address, breaker, calls) = serve(status, config()).await;
    let tasks: Vec<_> = (0..40)
        .map(|_| tokio::spawn(async move { get_status(address).await.0 }))
        .collect();
    let mut refused = 0;
    for task in tasks {
        if task.await.unwrap() == StatusCode::SERVICE_UNAVAILABLE {
            refused += 1;
        }
    }
    assert_eq!(breaker.state(), State::Open);
    let reached = calls.load(Ordering::SeqCst);
    assert_eq!(reached + refused, 40);
    assert!(reached >= 10, "{reached}");
    // Every connection has its own clone of the service; the breaker the
    // failures opened is the one the next connection meets.
    assert_eq!(get_status(address).await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(calls.load(Ordering::SeqCst), reached);
}
