//! The canary split through the umbrella: its presets come with the
//! umbrella's features.
#![cfg(all(feature = "traffic", feature = "grpc"))]

use http::Request;
use http_body_util::BodyExt;
use palisade::traffic::{Canary, CanaryPlan, CanarySplit, GrpcStatus};
use tower::{BoxError, ServiceExt, service_fn};

/// The umbrella's `grpc` turns on the canary split's gRPC judge too.
#[tokio::test]
async fn the_canary_split_judges_a_failure_in_the_trailers() {
    let side = service_fn(|_: Request<()>| async {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "13".parse().unwrap());
        let body = http_body_util::Full::new(tonic::codegen::Bytes::from_static(b"\0\0\0\0\0"))
            .with_trailers(std::future::ready(Some(Ok(trailers))));
        Ok::<_, BoxError>(http::Response::new(tonic::body::Body::new(body)))
    });
    let canary = Canary::new(CanaryPlan::new()).unwrap();
    let split = CanarySplit::new(side, side, canary.clone(), |_: &Request<()>| None::<u64>)
        .failures(GrpcStatus);
    let response = split.oneshot(Request::new(())).await.unwrap();
    response.into_body().collect().await.unwrap();
    let ((stable_calls, stable_errors), (canary_calls, canary_errors)) = canary.counts();
    assert_eq!(
        (stable_calls + canary_calls, stable_errors + canary_errors),
        (1, 1)
    );
}
