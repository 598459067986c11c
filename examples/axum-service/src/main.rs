//! An axum service stacked with palisade's presets and nothing else:
//! every request continues its caller's trace (or starts one), draws on
//! its user's rate limit, and `GET /ranking`, a slow computation that is
//! the same for everyone, runs once for a crowd of requests.
//!
//! ```text
//! cargo run -p palisade-example-axum -- 127.0.0.1:8090
//! curl -H 'x-user: alice' http://127.0.0.1:8090/ranking
//! ```
//!
//! A user is the `x-user` header (a real service would take it from a
//! verified token); a request without one is limited by its client's
//! address block (the address, or its IPv6 /64). Each user may make 5 requests at once, then 1 a second.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::get;
use axum::serve::ListenerExt;
use palisade::coalesce::http::CachedResponse;
use palisade::coalesce::{Cache, Freshness};
use palisade::prelude::*;
use tower::ServiceBuilder;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8090".to_owned());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    // axum leaves the sockets it accepts with Nagle's algorithm on, which
    // holds a response's later writes back until the first is
    // acknowledged.
    let listener = listener.tap_io(|tcp: &mut tokio::net::TcpStream| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(
        listener,
        app()?.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}

/// The service: its routes, then the presets.
fn app() -> Result<Router, Box<dyn std::error::Error>> {
    let computed = Arc::new(AtomicUsize::new(0));
    let ranking = get(move || async move {
        // The slow part, e.g. a query over every order of the day.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let n = computed.fetch_add(1, Ordering::SeqCst) + 1;
        format!("[7, 3, 9] (computed {n} time(s))")
    });
    let cache: Cache<String, CachedResponse, tower::BoxError> =
        Cache::new(1_000, Freshness::new(Duration::from_secs(10)));
    let user_or_address = key::or(
        key::header(http::HeaderName::from_static("x-user")),
        // The address's block (its IPv6 /64): a client picks among a
        // block's addresses at will, and each address would be a bucket.
        key::extension(|ConnectInfo(peer): &ConnectInfo<SocketAddr>| key::address_block(peer.ip())),
    );
    Ok(Router::new()
        .route(
            "/ranking",
            ranking.layer(ServiceBuilder::new().coalesce(cache)),
        )
        .route("/hello", get(|| async { "hello" }))
        .layer(
            ServiceBuilder::new()
                .layer(TraceContextLayer::new().traceresponse(true))
                .rate_limit_for_http(LocalStore::default(), Bucket::new(5, 1.0)?, user_or_address),
        ))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Instant;

    use axum::body::Body;
    use axum::extract::ConnectInfo;
    use http::{Request, StatusCode};
    use tower::ServiceExt;

    /// The addresses of one IPv6 /64 share a limit: keyed by the whole
    /// address, a client stepping through its block was never limited.
    #[tokio::test]
    async fn the_addresses_of_one_ipv6_block_share_a_limit() {
        let app = super::app().unwrap();
        let started = Instant::now();
        let mut limited = 0;
        for n in 1..=20 {
            let peer: SocketAddr = format!("[2001:db8:0:7::{n:x}]:40000").parse().unwrap();
            let request = Request::get("/hello")
                .extension(ConnectInfo(peer))
                .body(Body::empty())
                .unwrap();
            let status = app.clone().oneshot(request).await.unwrap().status();
            if status == StatusCode::TOO_MANY_REQUESTS {
                limited += 1;
            }
        }
        // 5 at once, then 1 a second: judged only when the 20 took less
        // than 10 s (a stalled machine refills the bucket meanwhile).
        if started.elapsed().as_secs() < 10 {
            assert!(limited >= 5, "{limited} of 20 limited");
        }
    }
}
