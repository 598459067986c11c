//! An axum service limited per API key, in process or, with `--redis URL`,
//! shared through Redis by every copy you start.
//!
//! ```sh
//! cargo run -p palisade-token-bucket --features http,redis --example axum [-- --redis redis://127.0.0.1:6379]
//! for i in $(seq 7); do curl -si -H 'x-api-key: demo' localhost:3000/orders | head -1; done
//! ```
//!
//! Each key may send 5 requests at once and one a second after that; the
//! sixth gets `429 Too Many Requests` with `Retry-After` and the RateLimit
//! fields. A request without an API key is limited by its client's address.
//! With `--redis`, start two copies on two ports (`--port 3001`): they share
//! each key's bucket.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::get;
use palisade_token_bucket::{Bucket, FailurePolicy, LocalStore, RateLimitLayer, RedisStore, key};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
    };
    let port = flag("--port").map_or(Ok(3000), |p| p.parse())?;
    let bucket = Bucket::new(5, 1.0)?;
    // A demo takes any API key; a service keys by one its authentication
    // checked in front of the limiter (any made-up key would be a fresh
    // bucket: see `key::header`).
    let by_api_key = key::or(
        key::header(http::HeaderName::from_static("x-api-key")),
        key::extension(|ConnectInfo(peer): &ConnectInfo<SocketAddr>| key::address_block(peer.ip())),
    );
    let routes = Router::new().route("/orders", get(|| async { "your orders\n" }));
    let app = match flag("--redis") {
        Some(url) => {
            let redis = redis::Client::open(url.as_str())?
                .get_connection_manager()
                .await?;
            // Each instance alone admits at most 2 a second while Redis is away.
            let fallback = FailurePolicy::Fallback {
                store: LocalStore::default(),
                bucket: Bucket::new(2, 0.5)?,
            };
            let store = RedisStore::new(redis, fallback).timeout(Duration::from_millis(20));
            routes.layer(RateLimitLayer::new_for_http(store, bucket, by_api_key))
        }
        None => routes.layer(RateLimitLayer::new_for_http(
            LocalStore::default(),
            bucket,
            by_api_key,
        )),
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!(
        "listening on http://{}/orders; try: curl -si -H 'x-api-key: demo' localhost:{port}/orders",
        listener.local_addr()?
    );
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
