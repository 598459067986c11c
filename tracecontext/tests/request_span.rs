//! The request's context and span below the server layer. Alone in its
//! test binary: `tracing` caches whether a span is made at all the first
//! time any thread passes its place, and another test passing the server
//! layer with no subscriber at that moment left this one without its span
//! (seen once in CI).

use http::{Request, Response};
use palisade_tracecontext::{TraceContext, TraceContextLayer, TraceParent};
use tower::{ServiceBuilder, ServiceExt, service_fn};

const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03";

/// A layer below the server layer sees the request's context and span in
/// its `call`, not only in its future: tower-http's trace layer makes its
/// span there, and it became the root of a trace of its own. Neither was
/// current there on the code before.
#[tokio::test]
async fn the_layers_below_call_in_the_requests_context_and_span() {
    use std::sync::{Arc, Mutex};

    let seen = Arc::new(Mutex::new(None));
    let saw = seen.clone();
    let service = ServiceBuilder::new()
        .layer(TraceContextLayer::new())
        .map_request(move |request: Request<()>| {
            let span = tracing::Span::current().metadata().map(|span| span.name());
            *saw.lock().unwrap() = Some((TraceContext::current(), span));
            request
        })
        .service(service_fn(|_: Request<()>| async {
            Ok::<_, std::convert::Infallible>(Response::new(()))
        }));
    let subscriber = tracing_subscriber::registry();
    let _default = tracing::subscriber::set_default(subscriber);
    let request = Request::get("/")
        .header("traceparent", TP)
        .body(())
        .unwrap();
    service.oneshot(request).await.unwrap();
    let (context, span) = seen.lock().unwrap().take().unwrap();
    let incoming: TraceParent = TP.parse().unwrap();
    assert_eq!(
        context.map(|context| context.trace_id()),
        Some(incoming.trace_id()),
        "the request's context"
    );
    assert_eq!(span, Some("request"), "the request's span");
}
