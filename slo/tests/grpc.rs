//! gRPC mode: a tonic client behind the layer against tonic servers on
//! loopback, the status read from the head or, when only the trailers
//! carry it, at the end of the body; shed calls answered UNAVAILABLE.
#![cfg(feature = "grpc")]

use std::time::Duration;

use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use palisade_hints::{Refusal, RefusalReason};
use palisade_slo::{BurnAlert, Counts, ErrorBudget, Objective, Severity, Shedding, SloLayer};
use palisade_testkit::grpc::HealthServer;
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower::{Layer, ServiceBuilder, ServiceExt, service_fn};

const MINUTE: Duration = Duration::from_secs(60);

fn budget() -> ErrorBudget {
    ErrorBudget::new(
        Objective::new(0.9)
            .over(60 * MINUTE)
            .alerts([BurnAlert::new(Severity::Page, 5.0, 10 * MINUTE, MINUTE)]),
    )
    .unwrap()
}

fn counts(budget: &ErrorBudget) -> Counts {
    budget.report(budget.now()).counts()
}

/// A health client to `server` behind the layer counting into `budget`.
async fn client(
    server: &HealthServer,
    budget: &ErrorBudget,
) -> HealthClient<
    palisade_slo::Slo<
        tonic::transport::Channel,
        palisade_slo::GrpcStatus,
        palisade_slo::Unavailable,
        palisade_slo::ShedNothing,
    >,
> {
    let channel = Endpoint::from_shared(server.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(
        ServiceBuilder::new()
            .layer(SloLayer::new_for_grpc(budget.clone()))
            .service(channel),
    )
}

/// A server that sends its failure after a message, in the trailers (as
/// one whose stream fails, or a proxy that never answers trailers-only,
/// does): the call is bad. `new_for_http`, the only gRPC-aware preset
/// before, read the head (HTTP 200, no `grpc-status`) and counted it good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_its_server_sends_in_the_trailers_is_bad() {
    let server =
        HealthServer::start_in_trailers(|n| (n == 2).then(|| tonic::Status::unavailable("down")))
            .await;
    let budget = budget();
    let mut client = client(&server, &budget).await;
    client.check(HealthCheckRequest::default()).await.unwrap();
    let failed = client
        .check(HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert_eq!(failed.code(), tonic::Code::Unavailable);
    client.check(HealthCheckRequest::default()).await.unwrap();
    assert_eq!(server.calls(), 3);
    assert_eq!(counts(&budget), Counts { good: 2, bad: 1 });
}

/// A tonic handler's `Err(Status)`, answered trailers-only, is read from
/// the head: UNAVAILABLE is bad, NOT_FOUND (the caller's) good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_answered_trailers_only_is_read_from_the_head() {
    let server = HealthServer::start(|n| match n {
        1 => Some(tonic::Status::unavailable("down")),
        2 => Some(tonic::Status::not_found("no such service")),
        _ => None,
    })
    .await;
    let budget = budget();
    let mut client = client(&server, &budget).await;
    for code in [tonic::Code::Unavailable, tonic::Code::NotFound] {
        let status = client
            .check(HealthCheckRequest::default())
            .await
            .unwrap_err();
        assert_eq!(status.code(), code);
    }
    client.check(HealthCheckRequest::default()).await.unwrap();
    assert_eq!(counts(&budget), Counts { good: 2, bad: 1 });
}

/// A gRPC-shaped response whose status `code` comes only in the trailers.
fn trailed(code: &'static str) -> Response<tonic::body::Body> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", code.parse().unwrap());
    let body = Full::new(Bytes::from_static(b"\0\0\0\0\0"))
        .with_trailers(std::future::ready(Some(Ok(trailers))));
    Response::new(tonic::body::Body::new(body))
}

/// The call is counted when the trailers arrive, not before; a body
/// dropped unfinished, within the objective's latency, is not counted.
#[tokio::test(start_paused = true)]
async fn the_call_counts_when_its_body_ends() {
    let budget = budget();
    let service =
        SloLayer::new_for_grpc(budget.clone()).layer(service_fn(|code: &'static str| async move {
            Ok::<_, std::convert::Infallible>(trailed(code))
        }));
    let response = service.clone().oneshot("13").await.unwrap();
    assert_eq!(
        counts(&budget),
        Counts::default(),
        "not before the trailers"
    );
    let collected = response.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "13");
    assert_eq!(counts(&budget), Counts { good: 0, bad: 1 });

    let response = service.clone().oneshot("0").await.unwrap();
    response.into_body().collect().await.unwrap();
    assert_eq!(counts(&budget), Counts { good: 1, bad: 1 });

    drop(service.oneshot("14").await.unwrap());
    assert_eq!(
        counts(&budget),
        Counts { good: 1, bad: 1 },
        "a call dropped unfinished says nothing"
    );
}

/// A body that ends without a `grpc-status` is bad: the call has no
/// status, which gRPC clients take as a failure.
#[tokio::test(start_paused = true)]
async fn a_body_ending_without_a_status_is_bad() {
    let budget = budget();
    let service = SloLayer::new_for_grpc(budget.clone()).layer(service_fn(|_: ()| async {
        let body = Full::new(Bytes::from_static(b"\0\0\0\0\0"));
        Ok::<_, std::convert::Infallible>(Response::new(tonic::body::Body::new(body)))
    }));
    let response = service.oneshot(()).await.unwrap();
    response.into_body().collect().await.unwrap();
    assert_eq!(counts(&budget), Counts { good: 0, bad: 1 });
}

/// A rate limiter's refusal beneath is not counted; any other refusal (an
/// open breaker's) is bad.
#[tokio::test(start_paused = true)]
async fn refusals_beneath_count_as_in_http_mode() {
    let budget = budget();
    let service =
        SloLayer::new_for_grpc(budget.clone()).layer(service_fn(|refusal: Refusal| async move {
            let response: Response<tonic::body::Body> = palisade_hints::grpc::refusal_response(
                palisade_hints::grpc::UNAVAILABLE,
                "refused",
                refusal,
            );
            Ok::<_, std::convert::Infallible>(response)
        }));
    let wait = Some(Duration::from_secs(1));
    service
        .clone()
        .oneshot(Refusal::rate_limited(wait))
        .await
        .unwrap();
    assert_eq!(counts(&budget), Counts::default());
    service.oneshot(Refusal::circuit_open(wait)).await.unwrap();
    assert_eq!(counts(&budget), Counts { good: 0, bad: 1 });
}

/// While the budget pages, a low-priority call is answered trailers-only
/// UNAVAILABLE with its wait, and the service is not called.
#[tokio::test(start_paused = true)]
async fn a_shed_call_is_answered_unavailable_with_its_wait() {
    let budget = budget();
    for _ in 0..10 {
        budget.record(false, budget.now());
    }
    tokio::time::advance(Duration::from_secs(1)).await;
    let layer = SloLayer::new_for_grpc(budget.clone())
        .shed(Shedding::low_priority(|_: &Request<()>| true).retry_after(Duration::from_secs(2)));
    let service = layer.layer(service_fn(|_: Request<()>| async {
        Ok::<_, std::convert::Infallible>(trailed("0"))
    }));
    let shed = service.oneshot(Request::new(())).await.unwrap();
    assert_eq!(shed.headers()["grpc-status"], "14");
    assert_eq!(shed.headers()["grpc-retry-pushback-ms"], "2000");
    assert_eq!(
        shed.extensions().get::<Refusal>().map(Refusal::reason),
        Some(RefusalReason::Shed)
    );
    assert_eq!(counts(&budget), Counts { good: 0, bad: 10 });
}

/// A body dropped unfinished after the objective's latency threshold is a
/// slow call, bad, as a future dropped unfinished then is.
#[tokio::test(start_paused = true)]
async fn a_body_dropped_past_the_threshold_is_bad() {
    let budget = ErrorBudget::new(
        Objective::new(0.9)
            .over(60 * MINUTE)
            .alerts([BurnAlert::new(Severity::Page, 5.0, 10 * MINUTE, MINUTE)])
            .latency(Duration::from_millis(100)),
    )
    .unwrap();
    let service =
        SloLayer::new_for_grpc(budget.clone()).layer(service_fn(|code: &'static str| async move {
            Ok::<_, std::convert::Infallible>(trailed(code))
        }));
    let response = service.oneshot("0").await.unwrap();
    tokio::time::advance(Duration::from_millis(200)).await;
    drop(response);
    assert_eq!(counts(&budget), Counts { good: 0, bad: 1 });
}

/// A body whose stream panics (a tonic streaming handler's) counts its
/// call bad, as a service that panics in its future does; the call had
/// moved into the body, out of the future's watch.
#[tokio::test(start_paused = true)]
async fn a_body_that_panics_counts_its_call_bad() {
    struct Panics;

    impl hyper::body::Body for Panics {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
            panic!("the stream failed");
        }
    }

    let budget = budget();
    let service = SloLayer::new_for_grpc(budget.clone()).layer(service_fn(|_: ()| async {
        Ok::<_, std::convert::Infallible>(Response::new(tonic::body::Body::new(Panics)))
    }));
    let response = service.oneshot(()).await.unwrap();
    let read = tokio::spawn(async move { response.into_body().collect().await });
    assert!(read.await.unwrap_err().is_panic());
    assert_eq!(counts(&budget), Counts { good: 0, bad: 1 });
}

/// A closure decides at once, as before the two phases.
#[tokio::test(start_paused = true)]
async fn a_closure_classifies_at_once() {
    let budget = budget();
    let service = SloLayer::new(budget.clone())
        .classify(|result: &Result<u32, std::io::Error>| match result {
            Ok(n) if *n > 10 => palisade_slo::Event::Bad,
            Ok(_) => palisade_slo::Event::Good,
            Err(_) => palisade_slo::Event::Excluded,
        })
        .layer(service_fn(|n: u32| async move {
            if n == 0 {
                Err(std::io::Error::other("refused"))
            } else {
                Ok(n)
            }
        }));
    for n in [0, 1, 20] {
        let _ = service.clone().oneshot(n).await;
    }
    assert_eq!(counts(&budget), Counts { good: 1, bad: 1 });
}

/// A call never polled says nothing, even dropped by a task that panics
/// for its own reasons.
#[tokio::test(start_paused = true)]
async fn a_call_never_polled_says_nothing_when_its_task_panics() {
    let budget = budget();
    let mut service =
        SloLayer::new_for_grpc(budget.clone()).layer(service_fn(|code: &'static str| async move {
            Ok::<_, std::convert::Infallible>(trailed(code))
        }));
    let call = tower::Service::call(&mut service, "0");
    let task = tokio::spawn(async move {
        let _call = call;
        panic!("the caller's own");
    });
    assert!(task.await.unwrap_err().is_panic());
    assert_eq!(counts(&budget), Counts::default());
}
