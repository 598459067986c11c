//! gRPC mode: a side's `grpc-status` judges its calls, from the head or,
//! when only the trailers carry it, at the end of the body.
#![cfg(feature = "grpc")]

use std::time::Duration;

use http::{HeaderMap, Request, Response};
use http_body::Body as _;
use http_body_util::{BodyExt, Full};
use palisade_hints::Refusal;
use palisade_testkit::grpc::HealthServer;
use palisade_traffic::{Canary, CanaryPlan, CanarySplit, GrpcStatus};
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower::{BoxError, ServiceExt, service_fn};

/// Calls and errors on both sides together.
fn total(canary: &Canary) -> (u64, u64) {
    let ((stable_calls, stable_errors), (canary_calls, canary_errors)) = canary.counts();
    (stable_calls + canary_calls, stable_errors + canary_errors)
}

/// A gRPC-shaped response whose status `code` comes only in the trailers.
fn trailed(code: &'static str) -> Response<tonic::body::Body> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", code.parse().unwrap());
    let body = Full::new(tonic::codegen::Bytes::from_static(b"\0\0\0\0\0"))
        .with_trailers(std::future::ready(Some(Ok(trailers))));
    Response::new(tonic::body::Body::new(body))
}

/// Judged when the trailers arrive, not before; a body dropped before its
/// end, never read, counts for neither side.
/// The HTTP judge,
/// `ServerErrorsAsFailures`, the only gRPC-aware one before, read the head
/// (HTTP 200, no `grpc-status`) and judged the failed call a success.
#[tokio::test(start_paused = true)]
async fn a_failure_in_the_trailers_is_judged_when_the_body_ends() {
    let side = service_fn(|code: &'static str| async move { Ok::<_, BoxError>(trailed(code)) });
    let canary = Canary::new(CanaryPlan::new()).unwrap();
    let split = CanarySplit::new(side, side, canary.clone(), |_: &&'static str| None::<u64>)
        .failures(GrpcStatus);

    let response = split.clone().oneshot("14").await.unwrap();
    assert_eq!(total(&canary), (0, 0), "not before the trailers");
    response.into_body().collect().await.unwrap();
    assert_eq!(total(&canary), (1, 1));

    let response = split.clone().oneshot("0").await.unwrap();
    response.into_body().collect().await.unwrap();
    assert_eq!(total(&canary), (2, 1));

    drop(split.oneshot("14").await.unwrap());
    assert_eq!(total(&canary), (2, 1), "dropped before its end");
}

/// A status in the head judges at once; a rate limiter's refusal counts
/// for neither side, and another refusal is a failure.
#[tokio::test(start_paused = true)]
async fn the_head_judges_when_it_says() {
    let side = service_fn(|answer: Result<u32, Refusal>| async move {
        let response: Response<tonic::body::Body> = match answer {
            Ok(code) => palisade_hints::grpc::trailers_only(code, "as asked"),
            Err(refusal) => palisade_hints::grpc::refusal_response(14, "refused", refusal),
        };
        Ok::<_, BoxError>(response)
    });
    let canary = Canary::new(CanaryPlan::new()).unwrap();
    let split = CanarySplit::new(side, side, canary.clone(), |_: &Result<u32, Refusal>| {
        None::<u64>
    })
    .failures(GrpcStatus);
    let wait = Some(Duration::from_secs(1));
    for answer in [
        Ok(0),
        Ok(5),
        Ok(14),
        Err(Refusal::rate_limited(wait)),
        Err(Refusal::circuit_open(wait)),
    ] {
        split.clone().oneshot(answer).await.unwrap();
    }
    assert_eq!(
        total(&canary),
        (4, 2),
        "OK and NOT_FOUND succeed, UNAVAILABLE and an open breaker fail, a limiter's refusal is not counted"
    );
}

/// A tonic client split between two servers: the canary, whose every
/// answer fails in its trailers, is halted, and every call then goes to
/// the stable server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_server_failing_in_its_trailers_is_halted() {
    let stable = HealthServer::start(|_| None).await;
    let canary_server =
        HealthServer::start_in_trailers(|_| Some(tonic::Status::internal("broken"))).await;
    let channel = |server: &HealthServer| {
        Endpoint::from_shared(server.url.clone())
            .unwrap()
            .connect_lazy()
    };
    let canary = Canary::new(CanaryPlan::new().steps([0.5, 1.0]).min_calls(20)).unwrap();
    let split = CanarySplit::new(
        channel(&stable),
        channel(&canary_server),
        canary.clone(),
        |_: &Request<tonic::body::Body>| None::<u64>,
    )
    .failures(GrpcStatus);
    let mut client = HealthClient::new(split);
    let mut calls = 0;
    while !canary.is_halted() {
        calls += 1;
        assert!(calls < 10_000, "never halted: {:?}", canary.counts());
        let _ = client.check(HealthCheckRequest::default()).await;
    }
    let served = stable.calls();
    for _ in 0..10 {
        client.check(HealthCheckRequest::default()).await.unwrap();
    }
    assert_eq!(stable.calls(), served + 10, "every call back on stable");
}

/// A call never polled never ran: it counts for neither side; one
/// abandoned while it ran is a failure.
#[tokio::test(start_paused = true)]
async fn a_call_never_polled_does_not_count_and_one_abandoned_fails() {
    use std::future::Future;
    use tower::Service;

    let side = service_fn(|wait: bool| async move {
        if wait {
            std::future::pending::<()>().await;
        }
        Ok::<_, BoxError>(())
    });
    let canary = Canary::new(CanaryPlan::new()).unwrap();
    let mut split = CanarySplit::new(side, side, canary.clone(), |_: &bool| None::<u64>);
    std::future::poll_fn(|cx| split.poll_ready(cx))
        .await
        .unwrap();
    drop(split.call(false));
    assert_eq!(total(&canary), (0, 0), "never polled");

    let mut call = Box::pin(split.call(true));
    let cx = &mut std::task::Context::from_waker(std::task::Waker::noop());
    assert!(call.as_mut().poll(cx).is_pending());
    drop(call);
    assert_eq!(total(&canary), (1, 1), "abandoned while it ran");
}

/// A closure judges at once, as a `Failure` of your own does through
/// `AtOnce`.
#[tokio::test(start_paused = true)]
async fn closures_and_failures_of_your_own_judge_at_once() {
    #[derive(Clone)]
    struct Odd;

    impl palisade_traffic::Failure<u32, BoxError> for Odd {
        fn is_failure(&self, result: &Result<u32, BoxError>) -> bool {
            result.as_ref().is_ok_and(|n| n % 2 == 1)
        }
    }

    let side = service_fn(|n: u32| async move { Ok::<_, BoxError>(n) });
    let canary = Canary::new(CanaryPlan::new()).unwrap();
    let by_closure = CanarySplit::new(side, side, canary.clone(), |_: &u32| None::<u64>)
        .failures(|result: &Result<u32, BoxError>| result.as_ref().is_ok_and(|n| *n > 10));
    for n in [1, 20] {
        by_closure.clone().oneshot(n).await.unwrap();
    }
    assert_eq!(total(&canary), (2, 1));

    let own = CanarySplit::new(side, side, canary.clone(), |_: &u32| None::<u64>)
        .failures(palisade_traffic::AtOnce(Odd));
    for n in [1, 2] {
        own.clone().oneshot(n).await.unwrap();
    }
    assert_eq!(total(&canary), (4, 2));
}

/// A body frame by frame: each `Some` a frame, `None` a poll with none
/// yet (a stream that waits), `Err` a panic.
struct Scripted(std::collections::VecDeque<Result<Option<&'static str>, ()>>);

impl http_body::Body for Scripted {
    type Data = tonic::codegen::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        match self.0.pop_front() {
            Some(Ok(Some(data))) => std::task::Poll::Ready(Some(Ok(http_body::Frame::data(
                tonic::codegen::Bytes::from_static(data.as_bytes()),
            )))),
            Some(Ok(None)) => std::task::Poll::Pending,
            Some(Err(())) => panic!("the stream failed"),
            None => std::task::Poll::Ready(None),
        }
    }
}

/// A streamed body dropped before its end, after a frame or while its
/// reader waits for the next (a client that took what it wanted, or
/// cancelled; a server's reader polls again as soon as a frame is sent,
/// so a cancel finds it waiting), counts for neither side; one that
/// panics while polled is a failure.
#[tokio::test(start_paused = true)]
async fn a_stream_that_panics_fails_and_one_dropped_unfinished_does_not() {
    let side = service_fn(|script: Vec<Result<Option<&'static str>, ()>>| async move {
        Ok::<_, BoxError>(Response::new(tonic::body::Body::new(Scripted(
            script.into(),
        ))))
    });
    let canary = Canary::new(CanaryPlan::new()).unwrap();
    let split =
        CanarySplit::new(side, side, canary.clone(), |_: &Vec<_>| None::<u64>).failures(GrpcStatus);
    let cx = &mut std::task::Context::from_waker(std::task::Waker::noop());

    let mut taken = split
        .clone()
        .oneshot(vec![Ok(Some("one")), Ok(Some("two"))])
        .await
        .unwrap();
    assert!(
        std::pin::Pin::new(taken.body_mut())
            .poll_frame(cx)
            .is_ready()
    );
    drop(taken);
    assert_eq!(total(&canary), (0, 0), "read in part");

    let mut hung = split
        .clone()
        .oneshot(vec![Ok(Some("one")), Ok(None)])
        .await
        .unwrap();
    assert!(
        std::pin::Pin::new(hung.body_mut())
            .poll_frame(cx)
            .is_ready()
    );
    assert!(
        std::pin::Pin::new(hung.body_mut())
            .poll_frame(cx)
            .is_pending()
    );
    drop(hung);
    assert_eq!(total(&canary), (0, 0), "dropped while waiting");

    let panics = split.oneshot(vec![Err(())]).await.unwrap();
    let read = tokio::spawn(async move { panics.into_body().collect().await });
    assert!(read.await.unwrap_err().is_panic());
    assert_eq!(total(&canary), (1, 1), "panicked");
}
