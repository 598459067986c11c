//! The OpenTelemetry bridge: exported spans carry the propagated ids, and
//! `Propagator` works as a `TextMapPropagator`.
#![cfg(feature = "otel")]

use std::collections::HashMap;

use axum::body::Body;
use axum::routing::get;
use axum::{Extension, Router};
use http::{Request, Response};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use palisade_tracecontext::{
    PropagateLayer, Propagator, TraceContext, TraceContextLayer, TraceParent,
};
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tracing_subscriber::layer::SubscriberExt as _;

const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// A subscriber exporting through tracing-opentelemetry to memory.
fn exporting() -> (
    InMemorySpanExporter,
    SdkTracerProvider,
    tracing::subscriber::DefaultGuard,
) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    (
        exporter,
        provider,
        tracing::subscriber::set_default(subscriber),
    )
}

/// The server layer's `request` span, once exported.
fn exported_request(
    exporter: &InMemorySpanExporter,
    provider: &SdkTracerProvider,
) -> opentelemetry_sdk::trace::SpanData {
    provider.force_flush().unwrap();
    exporter
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .find(|s| s.name == "request")
        .expect("exported")
}

fn app() -> Router {
    // Inside the handler, an outgoing call through PropagateLayer.
    let client = ServiceBuilder::new()
        .layer(PropagateLayer::new())
        .service(service_fn(|request: Request<()>| async move {
            Ok::<_, std::convert::Infallible>(Response::new(request.headers().clone()))
        }));
    Router::new()
        .route(
            "/",
            get(
                move |Extension(context): Extension<TraceContext>| async move {
                    let sent = client.oneshot(Request::new(())).await.unwrap().into_body();
                    format!(
                        "{} {}",
                        context.traceparent(),
                        sent["traceparent"].to_str().unwrap()
                    )
                },
            ),
        )
        .layer(TraceContextLayer::new())
}

async fn call(app: Router, headers: &[(&str, &str)]) -> (TraceParent, TraceParent) {
    let mut request = Request::get("/");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = app
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let body = axum::body::to_bytes(response.into_body(), 1 << 16)
        .await
        .unwrap();
    let (server, sent) = std::str::from_utf8(&body).unwrap().split_once(' ').unwrap();
    (server.parse().unwrap(), sent.parse().unwrap())
}

#[tokio::test]
async fn the_exported_server_span_continues_the_remote_parent() {
    let (exporter, provider, _guard) = exporting();
    let (server, sent) = call(
        app(),
        &[("traceparent", TP), ("tracestate", "congo=t61rcWkgMzE")],
    )
    .await;
    let request = exported_request(&exporter, &provider);

    let incoming: TraceParent = TP.parse().unwrap();
    assert_eq!(
        request.span_context.trace_id().to_bytes(),
        incoming.trace_id().to_bytes()
    );
    assert_eq!(
        request.parent_span_id.to_bytes(),
        incoming.parent_id().to_bytes()
    );
    assert_eq!(
        request.span_context.trace_state().get("congo"),
        Some("t61rcWkgMzE")
    );
    // The context the handler sees is the exported span's.
    assert_eq!(
        server.parent_id().to_bytes(),
        request.span_context.span_id().to_bytes()
    );
    // And the outgoing call names it as its parent.
    assert_eq!(sent.parent_id(), server.parent_id());
    assert_eq!(sent.trace_id(), incoming.trace_id());
}

#[tokio::test]
async fn a_new_trace_takes_the_sdk_ids() {
    let (exporter, provider, _guard) = exporting();
    let (server, _) = call(app(), &[]).await;
    let request = exported_request(&exporter, &provider);
    assert_eq!(
        server.trace_id().to_bytes(),
        request.span_context.trace_id().to_bytes()
    );
    assert_eq!(
        server.parent_id().to_bytes(),
        request.span_context.span_id().to_bytes()
    );
}

/// The random flag says how the trace id was made, so it travels with the
/// id: an outgoing call in a trace the SDK does not sample carries it
/// still (the SDK gives such a span no flags, and it went out as `00`).
#[tokio::test]
async fn the_random_flag_travels_where_the_sdk_does_not_sample() {
    let (_exporter, _provider, _guard) = exporting();
    let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-02";
    let (server, sent) = call(app(), &[("traceparent", unsampled)]).await;
    assert!(server.flags().is_random());
    assert!(sent.flags().is_random(), "sent {sent}");
    assert!(!sent.flags().is_sampled(), "sent {sent}");
    assert_eq!(sent.trace_id(), server.trace_id());
}

/// A subscriber without the OpenTelemetry layer. Every test of this file
/// holds a subscriber while it runs: `tracing` caches whether a span is
/// made at all the first time any thread passes its place, so a test
/// passing the server layer with none could leave another's exporter
/// without its `request` span.
#[tokio::test]
async fn without_an_otel_layer_the_layers_work_alone() {
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry());
    let (server, sent) = call(app(), &[("traceparent", TP)]).await;
    assert_eq!(
        server.trace_id(),
        TP.parse::<TraceParent>().unwrap().trace_id()
    );
    assert_eq!(sent.trace_id(), server.trace_id());
    assert_ne!(
        sent.parent_id(),
        server.parent_id(),
        "a child span of our own"
    );
}

#[test]
fn text_map_propagator_extracts_and_injects_exactly() {
    let propagator = Propagator::new();
    let fields: Vec<&str> = propagator.fields().collect();
    assert_eq!(fields, ["traceparent", "tracestate"]);

    let carrier = HashMap::from([
        ("traceparent".to_owned(), TP.to_owned()),
        ("tracestate".to_owned(), "rojo=1, congo=2".to_owned()),
    ]);
    let cx = TextMapPropagator::extract(&propagator, &carrier);
    let span = cx.span();
    let remote = span.span_context();
    assert!(remote.is_remote() && remote.is_valid());
    assert_eq!(remote.trace_state().header(), "rojo=1,congo=2");

    let mut out: HashMap<String, String> = HashMap::new();
    propagator.inject_context(&cx, &mut out);
    assert_eq!(out["traceparent"], TP);
    assert_eq!(out["tracestate"], "rojo=1,congo=2");

    // What the SDK's propagator would take, ours refuses.
    for bad in [
        "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333-01",
    ] {
        let carrier = HashMap::from([("traceparent".to_owned(), bad.to_owned())]);
        let cx = TextMapPropagator::extract(&propagator, &carrier);
        assert!(!cx.span().span_context().is_valid(), "{bad}");
    }

    // An invalid span context injects nothing.
    let mut out: HashMap<String, String> = HashMap::new();
    propagator.inject_context(&opentelemetry::Context::new(), &mut out);
    assert!(out.is_empty());
}

/// A `tracestate` with Level 2 keys that OpenTelemetry's `TraceState`
/// refuses (it keeps the Recommendation's `tenant@system` limits):
/// `foo@@bar` and 15 characters after an `@`.
const LEVEL_2_STATE: &str = "foo@@bar=1,congo=2,t@vvvvvvvvvvvvvvv=3";

#[tokio::test]
async fn level_2_tracestate_keys_survive_the_opentelemetry_bridge() {
    let (exporter, provider, _guard) = exporting();
    let client = ServiceBuilder::new()
        .layer(PropagateLayer::new())
        .service(service_fn(|request: Request<()>| async move {
            Ok::<_, std::convert::Infallible>(Response::new(request.headers().clone()))
        }));
    let app: Router = Router::new()
        .route(
            "/",
            get(move || async move {
                let sent = client.oneshot(Request::new(())).await.unwrap().into_body();
                sent.get("tracestate")
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default()
            }),
        )
        .layer(TraceContextLayer::new());
    let response = app
        .oneshot(
            Request::get("/")
                .header("traceparent", TP)
                .header("tracestate", LEVEL_2_STATE)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let body = axum::body::to_bytes(response.into_body(), 1 << 16)
        .await
        .unwrap();
    // The next hop gets every member we received, in order.
    assert_eq!(std::str::from_utf8(&body).unwrap(), LEVEL_2_STATE);
    // The exported span keeps the members OpenTelemetry can hold.
    let request = exported_request(&exporter, &provider);
    assert_eq!(request.span_context.trace_state().header(), "congo=2");
}

#[test]
fn text_map_propagator_passes_on_level_2_keys() {
    let propagator = Propagator::new();
    let carrier = HashMap::from([
        ("traceparent".to_owned(), TP.to_owned()),
        ("tracestate".to_owned(), LEVEL_2_STATE.to_owned()),
    ]);
    let cx = TextMapPropagator::extract(&propagator, &carrier);
    let span = cx.span();
    assert_eq!(span.span_context().trace_state().header(), "congo=2");
    let mut out: HashMap<String, String> = HashMap::new();
    propagator.inject_context(&cx, &mut out);
    assert_eq!(out["tracestate"], LEVEL_2_STATE);

    // A state changed through OpenTelemetry is sent as changed.
    let changed = span
        .span_context()
        .trace_state()
        .insert("ours", "1")
        .unwrap();
    let remote = span.span_context();
    let cx = cx.with_remote_span_context(opentelemetry::trace::SpanContext::new(
        remote.trace_id(),
        remote.span_id(),
        remote.trace_flags(),
        true,
        changed,
    ));
    let mut out: HashMap<String, String> = HashMap::new();
    propagator.inject_context(&cx, &mut out);
    assert_eq!(out["tracestate"], "ours=1,congo=2");

    // Another trace in the same context does not inherit what we received.
    let other = opentelemetry::trace::SpanContext::new(
        opentelemetry::trace::TraceId::from_bytes([7; 16]),
        remote.span_id(),
        remote.trace_flags(),
        true,
        opentelemetry::trace::TraceState::default(),
    );
    let mut out: HashMap<String, String> = HashMap::new();
    propagator.inject_context(&cx.with_remote_span_context(other), &mut out);
    assert!(!out.contains_key("tracestate"), "{out:?}");
}
