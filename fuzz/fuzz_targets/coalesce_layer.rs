//! A crowd of concurrent requests through the HTTP coalescing layer, each
//! with arbitrary credentials, `no-cache` and `If-None-Match`, to an origin
//! answering an arbitrary status, Cache-Control and body, on a paused
//! clock.
//!
//! Invariants: nothing panics; the origin is called at most once a
//! request, and exactly once for a crowd that does not bypass the cache
//! when its response may be shared (or the flight failed); each caller
//! gets the origin's status or a `304` (its own condition matched), or
//! the layer's error only when the body was over the cap.
#![no_main]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use palisade_coalesce::http::{CachedResponse, CoalesceLayer};
use palisade_coalesce::{Cache, Freshness};
use tower::{BoxError, Layer, ServiceExt};

#[path = "paused.rs"]
mod paused;

const CACHE_CONTROL: [&str; 6] = [
    "max-age=60",
    "no-store",
    "private",
    "",
    "max-age=0",
    "no-cache",
];
const STATUSES: [u16; 4] = [200, 404, 500, 503];
const MAX_BODY: usize = 32;

#[derive(Debug, Arbitrary)]
struct Caller {
    authorization: bool,
    no_cache: bool,
    if_none_match: bool,
}

#[derive(Debug, Arbitrary)]
struct Input {
    status: u8,
    cache_control: u8,
    body: u8,
    callers: Vec<Caller>,
}

fuzz_target!(|input: Input| {
    if input.callers.is_empty() {
        return;
    }
    let callers: Vec<Caller> = input.callers.into_iter().take(8).collect();
    let status = STATUSES[usize::from(input.status) % STATUSES.len()];
    let cache_control = CACHE_CONTROL[usize::from(input.cache_control) % CACHE_CONTROL.len()];
    let body = usize::from(input.body % 48);
    paused::run(async move {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let origin = tower::service_fn(move |_: Request<()>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let mut response =
                    Response::new(http_body_util::Full::new(Bytes::from(vec![b'x'; body])));
                *response.status_mut() = StatusCode::from_u16(status).unwrap();
                let headers = response.headers_mut();
                headers.insert(http::header::ETAG, "\"v1\"".parse().unwrap());
                if !cache_control.is_empty() {
                    headers.insert(http::header::CACHE_CONTROL, cache_control.parse().unwrap());
                }
                Ok::<_, BoxError>(response)
            }
        });
        let cache: Cache<String, CachedResponse, BoxError> =
            Cache::new(16, Freshness::new(Duration::from_secs(10)));
        let service = CoalesceLayer::new(cache).max_body(MAX_BODY).layer(origin);
        let mut crowd = tokio::task::JoinSet::new();
        for caller in &callers {
            let mut request = Request::get("http://catalog.example/ranking");
            if caller.authorization {
                request = request.header(http::header::AUTHORIZATION, "Bearer t");
            }
            if caller.no_cache {
                request = request.header(http::header::CACHE_CONTROL, "no-cache");
            }
            if caller.if_none_match {
                request = request.header(http::header::IF_NONE_MATCH, "\"v1\"");
            }
            let request = request.body(()).unwrap();
            crowd.spawn(service.clone().oneshot(request));
        }
        let mut answers = Vec::new();
        while let Some(answer) = crowd.join_next().await {
            answers.push(answer.unwrap());
        }

        let calls = calls.load(Ordering::SeqCst);
        assert!(calls >= 1 && calls <= callers.len(), "{calls} origin calls");
        let bypass = callers.iter().any(|c| c.authorization || c.no_cache);
        let shareable = !matches!(cache_control, "no-store" | "private" | "no-cache");
        if !bypass && (shareable || body > MAX_BODY) {
            assert_eq!(calls, 1, "one flight for the crowd");
        }
        for answer in answers {
            match answer {
                Ok(response) => {
                    let got = response.status().as_u16();
                    assert!(
                        got == status || got == 304,
                        "{got} for an origin answering {status}"
                    );
                }
                // The layer's own failure: the body over the cap.
                Err(error) => assert!(body > MAX_BODY, "{error}"),
            }
        }
    });
});
