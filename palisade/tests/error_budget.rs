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
