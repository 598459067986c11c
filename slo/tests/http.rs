//! HTTP mode on an axum `Router`: 5xx responses are bad, a limiter's 429
//! is not counted, and requests marked `LowPriority` are answered 503
//! while the budget pages.
#![cfg(feature = "http")]

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header::RETRY_AFTER};
use axum::routing::get;
use palisade_hints::{Refusal, RefusalReason};
use palisade_slo::{
    BurnAlert, Counts, ErrorBudget, HeaderKey, KeyedBudgets, LowPriority, Marked, Objective,
    Severity, Shedding, SloLayer,
};
use tower::ServiceExt;

const MINUTE: Duration = Duration::from_secs(60);

fn budget() -> ErrorBudget {
    ErrorBudget::new(
        Objective::new(0.9)
            .over(60 * MINUTE)
            .alerts([BurnAlert::new(Severity::Page, 5.0, 10 * MINUTE, MINUTE)]),
    )
    .unwrap()
}

fn app(budget: &ErrorBudget) -> Router {
    Router::new()
        .route("/orders", get(|| async { "ok" }))
        .route(
            "/broken",
            get(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
        )
        .route("/missing", get(|| async { StatusCode::NOT_FOUND }))
        .route(
            "/limited",
            get(|| async {
                let mut response = axum::response::Response::new(Body::empty());
                *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
                response
                    .extensions_mut()
                    .insert(Refusal::rate_limited(Some(Duration::from_secs(1))));
                response
            }),
        )
        .route("/reports", get(|| async { "report" }))
        .route(
            "/grpc/{code}",
            get(
                |axum::extract::Path(code): axum::extract::Path<u32>| async move {
                    palisade_hints::grpc::trailers_only::<Body>(code, "as asked")
                },
            ),
        )
        .route(
            "/quota",
            get(|| async {
                let mut exhausted = palisade_hints::grpc::trailers_only::<Body>(8, "quota");
                let wait = palisade_hints::grpc::pushback_value(Duration::from_millis(100));
                exhausted
                    .headers_mut()
                    .insert("grpc-retry-pushback-ms", wait);
                exhausted
            }),
        )
        .layer(SloLayer::new_for_http(budget.clone()).shed(Shedding::low_priority(Marked)))
}

async fn get_status(app: &Router, path: &str, low_priority: bool) -> axum::response::Response {
    let mut request = Request::get(path).body(Body::empty()).unwrap();
    if low_priority {
        request.extensions_mut().insert(LowPriority);
    }
    app.clone().oneshot(request).await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn server_errors_burn_the_budget_and_marked_requests_are_shed() {
    let budget = budget();
    let app = app(&budget);
    for path in ["/orders", "/missing", "/limited"] {
        get_status(&app, path, false).await;
    }
    assert_eq!(
        budget.report(budget.now()).counts(),
        Counts { good: 2, bad: 0 },
        "a 404 is good, a limiter's 429 not counted"
    );
    for _ in 0..10 {
        let response = get_status(&app, "/broken", false).await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
    tokio::time::advance(Duration::from_secs(1)).await;

    let shed = get_status(&app, "/reports", true).await;
    assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(shed.headers()[RETRY_AFTER], "30");
    assert_eq!(
        shed.extensions().get::<Refusal>().map(Refusal::reason),
        Some(RefusalReason::Shed)
    );
    let unmarked = get_status(&app, "/reports", false).await;
    assert_eq!(
        unmarked.status(),
        StatusCode::OK,
        "only marked requests are shed"
    );
    assert_eq!(
        budget.report(budget.now()).counts(),
        Counts { good: 3, bad: 10 }
    );
}

/// A gRPC call whose head says the service failed (a tonic handler's
/// `Err(Status::unavailable(..))`, answered trailers-only with HTTP 200)
/// is bad; one whose code is the caller's (NOT_FOUND), or a quota naming
/// its wait (as a 429 is), is good. Every one was good on the code
/// before.
#[tokio::test(start_paused = true)]
async fn a_grpc_call_that_failed_in_its_head_is_bad() {
    let budget = budget();
    let app = app(&budget);
    for path in ["/grpc/0", "/grpc/5", "/grpc/13", "/grpc/14", "/quota"] {
        let response = get_status(&app, path, false).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(
        budget.report(budget.now()).counts(),
        Counts { good: 3, bad: 2 },
        "OK, NOT_FOUND and a paced RESOURCE_EXHAUSTED good; INTERNAL and UNAVAILABLE bad"
    );
}

/// Per key: each tenant's server errors burn that tenant's budget, a
/// request with no tenant counts into the others', and a low-priority
/// request is shed while its own tenant's budget pages, not another's.
#[tokio::test(start_paused = true)]
async fn each_tenant_burns_its_own_budget_and_is_shed_alone() {
    let budgets = KeyedBudgets::new(
        Objective::new(0.9)
            .over(60 * MINUTE)
            .alerts([BurnAlert::new(Severity::Page, 5.0, 10 * MINUTE, MINUTE)]),
        16,
    )
    .unwrap();
    let app = Router::new()
        .route("/reports", get(|| async { "report" }))
        .route(
            "/broken",
            get(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
        )
        .layer(
            SloLayer::keyed_for_http(
                budgets.clone(),
                HeaderKey::new(http::HeaderName::from_static("x-tenant")),
            )
            .shed(Shedding::low_priority(Marked)),
        );
    let call = |path: &str, tenant: Option<&str>, low_priority: bool| {
        let mut request = Request::get(path);
        if let Some(tenant) = tenant {
            request = request.header("x-tenant", tenant);
        }
        let mut request = request.body(Body::empty()).unwrap();
        if low_priority {
            request.extensions_mut().insert(LowPriority);
        }
        app.clone().oneshot(request)
    };
    for _ in 0..10 {
        call("/broken", Some("acme"), false).await.unwrap();
        call("/reports", Some("globex"), false).await.unwrap();
    }
    call("/reports", None, false).await.unwrap();
    tokio::time::advance(Duration::from_secs(1)).await;

    let counts = |budget: ErrorBudget| budget.report(budget.now()).counts();
    assert_eq!(
        counts(budgets.get("acme").unwrap()),
        Counts { good: 0, bad: 10 }
    );
    assert_eq!(
        counts(budgets.get("globex").unwrap()),
        Counts { good: 10, bad: 0 }
    );
    assert_eq!(counts(budgets.others().clone()), Counts { good: 1, bad: 0 });

    let shed = call("/reports", Some("acme"), true).await.unwrap();
    assert_eq!(
        shed.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "acme's budget pages"
    );
    let served = call("/reports", Some("globex"), true).await.unwrap();
    assert_eq!(served.status(), StatusCode::OK, "globex's does not");
}
