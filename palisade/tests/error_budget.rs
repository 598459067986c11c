//! The error-budget presets as `ServiceBuilder` methods count what the
//! SLO layer's presets count.
#![cfg(all(feature = "slo", feature = "http"))]

use http::{Request, StatusCode};
use palisade::prelude::*;
use palisade::slo::{Counts, ErrorBudget, Objective};
use tower::{BoxError, ServiceBuilder, ServiceExt, service_fn};

#[tokio::test]
async fn the_builder_counts_calls_against_the_budget() {
    let budget = ErrorBudget::new(Objective::new(0.99)).unwrap();
    let app: axum::Router = axum::Router::new()
        .route("/", axum::routing::get(|| async { "served" }))
        .route(
            "/broken",
            axum::routing::get(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
        )
        .layer(ServiceBuilder::new().error_budget_for_http(budget.clone()));
    for path in ["/", "/broken"] {
        let request = Request::get(path).body(axum::body::Body::empty()).unwrap();
        app.clone().oneshot(request).await.unwrap();
    }
    assert_eq!(
        budget.report(budget.now()).counts(),
        Counts { good: 1, bad: 1 }
    );

    let generic = ErrorBudget::new(Objective::new(0.99)).unwrap();
    let service = ServiceBuilder::new()
        .error_budget(generic.clone())
        .service(service_fn(|fail: bool| async move {
            if fail {
                Err::<(), BoxError>("failed".into())
            } else {
                Ok(())
            }
        }));
    for fail in [false, true, true] {
        let _ = service.clone().oneshot(fail).await;
    }
    assert_eq!(
        generic.report(generic.now()).counts(),
        Counts { good: 1, bad: 2 }
    );
}

/// The gRPC preset reads a status that comes only in the trailers, at the
/// end of the body.
#[cfg(feature = "grpc")]
#[tokio::test]
async fn the_grpc_builder_counts_a_failure_in_the_trailers() {
    use http_body_util::BodyExt;

    let budget = ErrorBudget::new(Objective::new(0.99)).unwrap();
    let service = ServiceBuilder::new()
        .error_budget_for_grpc(budget.clone())
        .service(service_fn(|_: Request<()>| async {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", "14".parse().unwrap());
            let body = http_body_util::Full::new(tonic::codegen::Bytes::from_static(b"\0\0\0\0\0"))
                .with_trailers(std::future::ready(Some(Ok(trailers))));
            Ok::<_, BoxError>(http::Response::new(tonic::body::Body::new(body)))
        }));
    let response = service.oneshot(Request::new(())).await.unwrap();
    response.into_body().collect().await.unwrap();
    assert_eq!(
        budget.report(budget.now()).counts(),
        Counts { good: 0, bad: 1 }
    );
}
