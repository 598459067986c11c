//! The dependency's own word on when to retry, under paused time:
//! `Retry-After` as seconds and as an HTTP date, and the deadline it must
//! fit in.
#![cfg(feature = "http")]

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::{Request, Response, StatusCode};
use palisade_retry::{Backoff, Config, RetryLayer};
use tokio::time::Instant;
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};

/// When each call reached the origin.
type Calls = Arc<Mutex<Vec<Instant>>>;

/// Answers `first` once, then 200; records when each call came.
fn origin(
    first: Response<()>,
) -> (
    impl Service<Request<()>, Response = Response<()>, Error = BoxError> + Clone,
    Calls,
) {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let record = calls.clone();
    let first = Arc::new(Mutex::new(Some(first)));
    let service = service_fn(move |_: Request<()>| {
        record.lock().unwrap().push(Instant::now());
        let response = first.lock().unwrap().take().unwrap_or_default();
        async move { Ok::<_, BoxError>(response) }
    });
    (service, calls)
}

fn answer(status: StatusCode, retry_after: Option<String>) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = status;
    if let Some(value) = retry_after {
        response
            .headers_mut()
            .insert("retry-after", value.parse().unwrap());
    }
    response
}

fn layer(
    deadline: Option<Duration>,
) -> RetryLayer<palisade_retry::http::RetryServerErrors, palisade_retry::http::HttpReplay> {
    let mut config = Config::builder().backoff(Backoff::full_jitter(
        Duration::from_millis(10),
        Duration::from_secs(10),
    ));
    if let Some(deadline) = deadline {
        config = config.deadline(deadline);
    }
    RetryLayer::new_for_http(config.build().unwrap())
}

async fn waits(first: Response<()>, deadline: Option<Duration>) -> (StatusCode, Vec<Duration>) {
    let (service, calls) = origin(first);
    let response = layer(deadline)
        .layer(service)
        .oneshot(Request::new(()))
        .await
        .unwrap();
    let calls = calls.lock().unwrap();
    let gaps = calls.windows(2).map(|pair| pair[1] - pair[0]).collect();
    (response.status(), gaps)
}

#[tokio::test(start_paused = true)]
async fn retry_after_in_seconds_is_the_wait() {
    let first = answer(StatusCode::SERVICE_UNAVAILABLE, Some("3".into()));
    let (status, gaps) = waits(first, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(gaps, [Duration::from_secs(3)]);
}

#[tokio::test(start_paused = true)]
async fn retry_after_as_an_http_date_is_the_wait() {
    // HTTP dates have whole seconds: 5 s from now is a wait in (4 s, 5 s],
    // less the (real) time the test takes to read it, far under a second.
    let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(5));
    let first = answer(StatusCode::TOO_MANY_REQUESTS, Some(date));
    let (status, gaps) = waits(first, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(gaps.len(), 1);
    assert!(
        gaps[0] > Duration::from_secs(3) && gaps[0] <= Duration::from_secs(5),
        "{gaps:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_429_without_retry_after_is_returned() {
    let (status, gaps) = waits(answer(StatusCode::TOO_MANY_REQUESTS, None), None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(gaps.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_hint_longer_than_the_time_left_stops_retrying() {
    let first = answer(StatusCode::SERVICE_UNAVAILABLE, Some("5".into()));
    let start = Instant::now();
    let (status, gaps) = waits(first, Some(Duration::from_secs(4))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "returned at once");
    assert!(gaps.is_empty());
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn a_server_retry_after_of_twenty_nines_with_a_duration_max_cap_does_not_panic() {
    let (service, calls) = origin(answer(
        StatusCode::SERVICE_UNAVAILABLE,
        Some("99999999999999999999".into()),
    ));
    let config = Config::builder()
        .backoff(Backoff::full_jitter(
            Duration::from_millis(10),
            Duration::MAX,
        ))
        .deadline(Duration::from_secs(30))
        .build()
        .unwrap();
    let response = RetryLayer::new_for_http(config)
        .layer(service)
        .oneshot(Request::new(()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        calls.lock().unwrap().len(),
        1,
        "the wait outlasts the deadline"
    );
}
