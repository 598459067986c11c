//! HTTP mode as a tower service, no server: what the RateLimit fields say,
//! and which bucket a request without the configured key draws on.
#![cfg(feature = "http")]

use std::net::SocketAddr;

use axum::extract::ConnectInfo;
use http::{HeaderName, Request, Response, StatusCode};
use palisade_token_bucket::{Bucket, Clock, LocalStore, RateLimitLayer, key};
use tower::{BoxError, Layer, ServiceExt, service_fn};

fn ok() -> impl tower::Service<Request<()>, Response = Response<()>, Error = BoxError> + Clone {
    service_fn(|_: Request<()>| async { Ok::<_, BoxError>(Response::new(())) })
}

#[tokio::test(start_paused = true)]
async fn a_sub_second_refill_advertises_the_enforced_rate_not_capacity_per_second() {
    // 5 at once, 100 a second: 100 are admitted in every second, so a
    // one-second window must say 100, not 5.
    let layer = RateLimitLayer::new_for_http(
        LocalStore::with_clock(100, Clock::Tokio),
        Bucket::new(5, 100.0).unwrap(),
        key::global("all"),
    );
    let response = layer.layer(ok()).oneshot(Request::new(())).await.unwrap();
    assert_eq!(
        response.headers()["ratelimit-policy"],
        "\"default\";q=100;w=1"
    );

    // A refill time of whole seconds is the window, and the capacity its quota.
    let layer = RateLimitLayer::new_for_http(
        LocalStore::with_clock(100, Clock::Tokio),
        Bucket::new(100, 10.0).unwrap(),
        key::global("all"),
    );
    let response = layer.layer(ok()).oneshot(Request::new(())).await.unwrap();
    assert_eq!(
        response.headers()["ratelimit-policy"],
        "\"default\";q=100;w=10"
    );

    // 10 at once, 4 a second: full in 2.5 s; a 3 s window refills 12.
    let layer = RateLimitLayer::new_for_http(
        LocalStore::with_clock(100, Clock::Tokio),
        Bucket::new(10, 4.0).unwrap(),
        key::global("all"),
    );
    let response = layer.layer(ok()).oneshot(Request::new(())).await.unwrap();
    assert_eq!(
        response.headers()["ratelimit-policy"],
        "\"default\";q=12;w=3"
    );
}

/// Two limiters a response passes through, per address outside and per
/// user inside: the answer carries each one's policy and state. The outer
/// replaced the inner's, so the per-user limit's 429 said 97 were left.
#[tokio::test(start_paused = true)]
async fn stacked_limiters_each_advertise_their_policy() {
    let limiter = |bucket, name| {
        RateLimitLayer::new_for_http(
            LocalStore::with_clock(100, Clock::Tokio),
            bucket,
            key::global(name),
        )
        .policy_name(name)
        .unwrap()
    };
    let service = tower::ServiceBuilder::new()
        .layer(limiter(Bucket::new(100, 10.0).unwrap(), "per-address"))
        .layer(limiter(Bucket::new(2, 1.0).unwrap(), "per-user"))
        .service(ok());
    for _ in 0..2 {
        let admitted = service.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(admitted.status(), StatusCode::OK);
    }
    let refused = service.oneshot(Request::new(())).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let fields = |name: &str| items(&refused, name);
    assert_eq!(
        fields("ratelimit-policy"),
        ["\"per-user\";q=2;w=2", "\"per-address\";q=100;w=10"]
    );
    assert_eq!(
        fields("ratelimit"),
        ["\"per-user\";r=0;t=2", "\"per-address\";r=97;t=1"]
    );
    assert_eq!(fields("retry-after"), ["1"], "the refusing limiter's");

    // Unnamed, the two would be one name: the item with fewer left is
    // kept. The legacy fields, asked for by the outer one alone, hold the
    // limit with the fewest left, the inner one's.
    let unnamed = |bucket| {
        RateLimitLayer::new_for_http(
            LocalStore::with_clock(100, Clock::Tokio),
            bucket,
            key::global("all"),
        )
    };
    let service = tower::ServiceBuilder::new()
        .layer(unnamed(Bucket::new(100, 10.0).unwrap()).legacy_headers())
        .layer(unnamed(Bucket::new(2, 1.0).unwrap()))
        .service(ok());
    for _ in 0..2 {
        service.clone().oneshot(Request::new(())).await.unwrap();
    }
    let refused = service.oneshot(Request::new(())).await.unwrap();
    let fields = |name: &str| items(&refused, name);
    assert_eq!(fields("ratelimit"), ["\"default\";r=0;t=2"]);
    assert_eq!(fields("x-ratelimit-remaining"), ["0"]);
    assert_eq!(fields("x-ratelimit-limit"), ["2"]);

    // The service's own fields give way to the first limiter's.
    let service = unnamed(Bucket::new(2, 1.0).unwrap()).layer(service_fn(|_: Request<()>| async {
        let mut response = Response::new(());
        let own = http::HeaderValue::from_static("\"svc\";r=1;t=1");
        response.headers_mut().insert("ratelimit", own);
        Ok::<_, BoxError>(response)
    }));
    let admitted = service.oneshot(Request::new(())).await.unwrap();
    assert_eq!(items(&admitted, "ratelimit"), ["\"default\";r=1;t=1"]);

    for bad in ["", "per \"user\"", "a\\b", "naïve", "tab\there"] {
        let named = RateLimitLayer::new_for_http(
            LocalStore::default(),
            Bucket::new(1, 1.0).unwrap(),
            key::global("all"),
        )
        .policy_name(bad);
        assert!(named.is_err(), "{bad:?}");
    }
}

/// The values of the field `name` in `response`, in order.
fn items(response: &Response<()>, name: &str) -> Vec<String> {
    response
        .headers()
        .get_all(name)
        .iter()
        .map(|value| value.to_str().unwrap().to_owned())
        .collect()
}

fn from(peer: &str, api_key: Option<&str>) -> Request<()> {
    let mut request = Request::get("/orders");
    if let Some(api_key) = api_key {
        request = request.header("x-api-key", api_key);
    }
    let mut request = request.body(()).unwrap();
    let peer: SocketAddr = peer.parse().unwrap();
    request.extensions_mut().insert(ConnectInfo(peer));
    request
}

#[tokio::test(start_paused = true)]
async fn a_request_without_the_api_key_falls_back_to_its_client_address() {
    let by_api_key_or_address = key::or(
        key::header(HeaderName::from_static("x-api-key")),
        key::extension(|ConnectInfo(peer): &ConnectInfo<SocketAddr>| peer.ip().to_string()),
    );
    let service = RateLimitLayer::new_for_http(
        LocalStore::with_clock(100, Clock::Tokio),
        Bucket::new(1, 0.001).unwrap(),
        by_api_key_or_address,
    )
    .layer(ok());
    let status = |request| {
        let service = service.clone();
        async move { service.oneshot(request).await.unwrap().status() }
    };
    assert_eq!(status(from("10.0.0.1:5000", None)).await, StatusCode::OK);
    assert_eq!(
        status(from("10.0.0.1:5001", None)).await,
        StatusCode::TOO_MANY_REQUESTS,
        "no API key: limited by its address, whatever the port"
    );
    assert_eq!(status(from("10.0.0.2:5000", None)).await, StatusCode::OK);
    // An API key that spells an address draws on its own bucket, so nobody
    // can spend another client's address bucket by naming it.
    assert_eq!(
        status(from("10.0.0.9:5000", Some("10.0.0.2"))).await,
        StatusCode::OK
    );
    assert_eq!(
        status(from("10.0.0.1:5000", Some("k-1"))).await,
        StatusCode::OK,
        "with a key, the key's bucket"
    );
}

/// A store that could not decide is answered 503, marked as the limiter's
/// own refusal (a breaker above does not record it) with the wait until
/// the store is worth asking again.
#[test]
fn a_store_failure_is_a_marked_503_with_its_wait() {
    use palisade_hints::{Refusal, RefusalReason};
    use palisade_token_bucket::http::TooManyRequests;
    use palisade_token_bucket::{Respond, StoreError};

    let failed = StoreError::backend("connection refused")
        .with_retry_after(std::time::Duration::from_millis(500));
    assert_eq!(
        Refusal::find(&failed).map(Refusal::reason),
        Some(RefusalReason::StoreDown),
        "the marker is in the error's source chain"
    );
    let response: Response<()> =
        Respond::<Response<()>, BoxError>::store_failed(&TooManyRequests::default(), failed)
            .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    let refusal = response.extensions().get::<Refusal>().expect("the marker");
    assert_eq!(refusal.reason(), RefusalReason::StoreDown);
}
