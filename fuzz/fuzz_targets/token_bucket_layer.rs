//! The rate limit's HTTP and gRPC layers under arbitrary (mode, key, time)
//! sequences on a paused clock, against the reference token bucket: a call
//! is let through exactly when the model has a token for it, and then
//! reaches the inner service and tells the tokens left; a refused call
//! never reaches it, carries the refusal, and says how long to wait
//! (`Retry-After` in whole seconds rounded up, `grpc-retry-pushback-ms` in
//! milliseconds rounded up).
#![no_main]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{HeaderName, Request, Response, StatusCode};
use libfuzzer_sys::fuzz_target;
use palisade_hints::Refusal;
use palisade_token_bucket::{Bucket, Clock, LocalStore, RateLimitLayer, RateLimited, key};
use tower::{Layer, ServiceExt};

#[path = "paused.rs"]
mod paused;

#[path = "../../token-bucket/tests/support/model.rs"]
mod model;

/// Rates whose refill interval is a whole number of nanoseconds.
const RATES: [f64; 6] = [1.0, 2.0, 5.0, 10.0, 100.0, 0.5];

/// Whole units of `unit` in `nanos`, rounded up.
fn rounded_up(nanos: u64, unit: u64) -> u64 {
    nanos.div_ceil(unit)
}

fuzz_target!(|input: (u8, u8, Vec<(bool, u8, u32)>)| {
    let (capacity, rate, steps) = input;
    let capacity = u32::from(capacity % 20) + 1;
    let bucket = Bucket::new(capacity, RATES[usize::from(rate) % RATES.len()]).unwrap();
    let interval = u64::try_from(bucket.interval().as_nanos()).unwrap();
    paused::run(async move {
        let by_key = || key::header(HeaderName::from_static("x-key"));
        let reached = Arc::new(AtomicUsize::new(0));
        let counted = reached.clone();
        let origin = tower::service_fn(move |_: Request<()>| {
            counted.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok::<_, std::convert::Infallible>(Response::new(
                String::new(),
            )))
        });
        let http = RateLimitLayer::new_for_http(
            LocalStore::with_clock(64, Clock::Tokio),
            bucket.clone(),
            by_key(),
        )
        .layer(origin.clone());
        let grpc = RateLimitLayer::new_for_grpc(
            LocalStore::with_clock(64, Clock::Tokio),
            bucket.clone(),
            by_key(),
        )
        .layer(origin);
        let mut models = [
            model::Model::new(capacity, interval),
            model::Model::new(capacity, interval),
        ];
        let mut now = 0_u64;
        for (grpc_mode, key, wait_us) in steps.into_iter().take(256) {
            let wait = u64::from(wait_us % 2_000_000);
            tokio::time::advance(Duration::from_micros(wait)).await;
            now += wait * 1_000;
            let key = key % 4;
            let request = Request::builder()
                .header("x-key", key.to_string())
                .body(())
                .unwrap();
            let expected = models[usize::from(grpc_mode)].decide(u32::from(key), 1, now);
            let before = reached.load(Ordering::SeqCst);
            let response = if grpc_mode {
                grpc.clone().oneshot(request).await.unwrap()
            } else {
                http.clone().oneshot(request).await.unwrap()
            };
            let passed = reached.load(Ordering::SeqCst) > before;
            assert_eq!(passed, expected.allowed, "key {key} at {now} ns");
            let headers = response.headers();
            if expected.allowed {
                assert_eq!(response.status(), StatusCode::OK);
                if !grpc_mode {
                    let state = headers["ratelimit"].to_str().unwrap();
                    let left = format!("\"default\";r={};", expected.remaining);
                    assert!(state.starts_with(&left), "{state} vs {left}");
                }
                continue;
            }
            assert!(response.extensions().get::<RateLimited>().is_some());
            let refusal = response.extensions().get::<Refusal>().unwrap();
            assert_eq!(
                refusal.retry_after(),
                expected.retry_after.map(Duration::from_nanos)
            );
            if grpc_mode {
                assert_eq!(headers["grpc-status"], "8");
                match expected.retry_after {
                    Some(wait) => assert_eq!(
                        headers["grpc-retry-pushback-ms"],
                        rounded_up(wait, 1_000_000).to_string()
                    ),
                    None => assert!(!headers.contains_key("grpc-retry-pushback-ms")),
                }
            } else {
                assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
                match expected.retry_after {
                    Some(wait) => assert_eq!(
                        headers[http::header::RETRY_AFTER],
                        rounded_up(wait, 1_000_000_000).max(1).to_string()
                    ),
                    None => assert!(!headers.contains_key(http::header::RETRY_AFTER)),
                }
            }
        }
    });
});
