//! The server and client layers, through axum and hyper on loopback, and
//! the message carriers.

use std::collections::{BTreeMap, HashMap};

use axum::body::Body;
use axum::routing::get;
use axum::{Extension, Router};
use http::{HeaderMap, Request, Response};
use palisade_tracecontext::{
    Propagate, PropagateLayer, Propagator, TraceContext, TraceContextLayer, TraceFlags, TraceParent,
};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03";

/// A client that answers with the headers it was sent.
fn echo_client() -> Propagate<
    impl Service<Request<()>, Response = Response<HeaderMap>, Error = std::convert::Infallible> + Clone,
> {
    ServiceBuilder::new()
        .layer(PropagateLayer::new())
        .service(service_fn(|request: Request<()>| async move {
            Ok(Response::new(request.headers().clone()))
        }))
}

fn sent(headers: &HeaderMap) -> TraceParent {
    assert_eq!(headers.get_all("traceparent").iter().count(), 1);
    TraceParent::parse(headers["traceparent"].as_bytes()).unwrap()
}

async fn context_of(app: Router, request: Request<Body>) -> (TraceContext, HeaderMap) {
    let response = app.oneshot(request).await.unwrap();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), 1 << 16)
        .await
        .unwrap();
    // The handler answered with its context's traceparent.
    let parent = TraceParent::parse(&body).unwrap();
    let context = TraceContext::continue_from(parent, Default::default());
    (context, headers)
}

fn app() -> Router {
    Router::new()
        .route(
            "/",
            get(|Extension(context): Extension<TraceContext>| async move {
                let current = TraceContext::current().unwrap();
                assert_eq!(current, context, "current() is the extension's context");
                context.traceparent().to_string()
            }),
        )
        .layer(TraceContextLayer::new().traceresponse(true))
}

#[tokio::test]
async fn the_server_continues_a_valid_trace_and_answers_traceresponse() {
    let request = Request::get("/")
        .header("traceparent", TP)
        .body(Body::empty())
        .unwrap();
    let (context, headers) = context_of(app(), request).await;
    let incoming = TraceParent::parse(TP.as_bytes()).unwrap();
    assert_eq!(context.trace_id(), incoming.trace_id());
    assert_ne!(
        context.parent_id(),
        Some(incoming.parent_id()),
        "a span of our own"
    );
    assert_eq!(context.flags(), incoming.flags(), "sampled and random kept");
    let response = TraceParent::parse(headers["traceresponse"].as_bytes()).unwrap();
    assert_eq!(response.trace_id(), incoming.trace_id());
}

#[tokio::test]
async fn the_server_starts_a_trace_without_a_valid_parent() {
    let request = Request::get("/")
        .header("traceparent", "garbage")
        .body(Body::empty())
        .unwrap();
    let (context, _) = context_of(app(), request).await;
    assert_ne!(
        context.trace_id(),
        TraceParent::parse(TP.as_bytes()).unwrap().trace_id()
    );
    assert_eq!(
        context.flags(),
        TraceFlags::SAMPLED.union(TraceFlags::RANDOM)
    );
}

#[tokio::test]
async fn traceresponse_is_off_by_default() {
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(TraceContextLayer::new());
    let response = app
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert!(response.headers().get("traceresponse").is_none());
}

#[tokio::test]
async fn new_traces_follow_the_propagator_settings() {
    let propagator = Propagator::new()
        .random_flag(false)
        .sample_new_traces(false);
    assert_eq!(propagator.start().flags(), TraceFlags::NONE);
    let client = ServiceBuilder::new()
        .layer(PropagateLayer::new().propagator(propagator))
        .service(service_fn(|request: Request<()>| async move {
            Ok::<_, std::convert::Infallible>(Response::new(request.headers().clone()))
        }));
    let headers = client.oneshot(Request::new(())).await.unwrap().into_body();
    assert_eq!(sent(&headers).flags(), TraceFlags::NONE);
}

#[tokio::test]
async fn the_client_sends_a_child_of_the_extension_context() {
    let parent = TraceContext::continue_from(TP.parse().unwrap(), Default::default());
    let mut request = Request::new(());
    request.extensions_mut().insert(parent.clone());
    request
        .headers_mut()
        .insert("traceparent", "stale".parse().unwrap());
    request
        .headers_mut()
        .insert("tracestate", "stale=1".parse().unwrap());
    let headers = echo_client().oneshot(request).await.unwrap().into_body();
    let child = sent(&headers);
    assert_eq!(child.trace_id(), parent.trace_id());
    assert_ne!(child.parent_id(), parent.span_id(), "a new child span");
    assert!(
        headers.get("tracestate").is_none(),
        "an empty tracestate is removed"
    );
}

#[tokio::test]
async fn the_client_sends_a_child_of_the_current_context_and_its_tracestate() {
    let mut parent = TraceContext::continue_from(TP.parse().unwrap(), Default::default());
    parent.trace_state_mut().insert("palisade", "1").unwrap();
    let client = echo_client();
    let (a, b) = parent
        .clone()
        .scope(async move {
            let a = client
                .clone()
                .oneshot(Request::new(()))
                .await
                .unwrap()
                .into_body();
            let b = client.oneshot(Request::new(())).await.unwrap().into_body();
            (a, b)
        })
        .await;
    assert_eq!(sent(&a).trace_id(), parent.trace_id());
    assert_ne!(
        sent(&a).parent_id(),
        sent(&b).parent_id(),
        "each call its own span"
    );
    assert_eq!(a["tracestate"], "palisade=1");
}

#[tokio::test]
async fn the_client_starts_a_trace_when_there_is_none() {
    assert!(TraceContext::current().is_none());
    let headers = echo_client()
        .oneshot(Request::new(()))
        .await
        .unwrap()
        .into_body();
    assert!(sent(&headers).flags().is_random());
}

#[test]
fn message_carriers_round_trip() {
    let propagator = Propagator::new();
    let mut context = propagator.start();
    context.trace_state_mut().insert("palisade", "x").unwrap();

    let mut attributes: HashMap<String, String> = HashMap::new();
    propagator.inject(&context, &mut attributes);
    let (parent, state) = propagator.extract(&attributes).unwrap();
    assert_eq!(parent, context.traceparent());
    assert_eq!(state.get("palisade"), Some("x"));

    let mut ordered: BTreeMap<String, String> = BTreeMap::new();
    propagator.inject(&context, &mut ordered);
    assert_eq!(
        ordered.keys().collect::<Vec<_>>(),
        ["traceparent", "tracestate"]
    );
    let consumer = propagator.continue_or_start(&ordered);
    assert_eq!(consumer.trace_id(), context.trace_id());
    assert_eq!(consumer.parent_id(), Some(context.span_id()));

    // An empty state removes a stale one instead of writing it empty.
    propagator.inject(&propagator.start(), &mut ordered);
    assert!(!ordered.contains_key("tracestate"));
}

#[test]
fn extraction_reports_why_it_refused() {
    use palisade_tracecontext::ExtractError;
    let propagator = Propagator::new();
    let mut headers = HeaderMap::new();
    assert_eq!(propagator.extract(&headers), Err(ExtractError::Missing));
    headers.append("traceparent", TP.parse().unwrap());
    headers.append("traceparent", TP.parse().unwrap());
    assert_eq!(propagator.extract(&headers), Err(ExtractError::Duplicated));
    headers.insert("traceparent", "00-x".parse().unwrap());
    assert!(matches!(
        propagator.extract(&headers),
        Err(ExtractError::Invalid(_))
    ));
}

#[test]
fn the_tracestate_limit_applies_on_extraction() {
    let mut headers = HeaderMap::new();
    headers.insert("traceparent", TP.parse().unwrap());
    let long: Vec<String> = (0..30)
        .map(|i| format!("k{i:02}={}", "v".repeat(30)))
        .collect();
    headers.insert("tracestate", long.join(",").parse().unwrap());
    let (_, whole) = Propagator::new().extract(&headers).unwrap();
    assert_eq!(whole.len(), 30);
    let (_, cut) = Propagator::new()
        .tracestate_limit(512)
        .extract(&headers)
        .unwrap();
    assert!(cut.to_string().len() <= 512);
    assert_eq!(cut.iter().next().unwrap().0, "k00");
}
