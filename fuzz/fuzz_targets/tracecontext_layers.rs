//! Arbitrary header lines into the server layer, whose handler calls a
//! downstream service through the propagate layer, as a service in the
//! middle of a trace does.
//!
//! Invariants: nothing panics; the handler runs in one context, continued
//! from the incoming traceparent exactly when there is one valid line, and
//! the same one the server's `traceresponse` names; the downstream call
//! carries one valid traceparent in that trace, as a child of the handler's
//! span, and at most one tracestate line.
#![no_main]

use std::sync::{Arc, Mutex};

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use palisade_tracecontext::{
    PropagateLayer, TRACEPARENT, TRACERESPONSE, TRACESTATE, TraceContext, TraceContextLayer,
    TraceParent,
};
use tower::{Layer, ServiceExt};

#[derive(Debug, Arbitrary)]
struct Line<'a> {
    /// 0: traceparent, 1: tracestate, other: a header of no interest.
    which: u8,
    value: &'a [u8],
}

fuzz_target!(|lines: Vec<Line<'_>>| {
    let mut incoming = Request::new(());
    for line in lines.iter().take(16) {
        let name = match line.which % 3 {
            0 => TRACEPARENT,
            1 => TRACESTATE,
            _ => "x-other",
        };
        if let Ok(value) = HeaderValue::from_bytes(line.value) {
            incoming
                .headers_mut()
                .append(HeaderName::from_static(name), value);
        }
    }
    let valid_parent = match &incoming
        .headers()
        .get_all(TRACEPARENT)
        .iter()
        .collect::<Vec<_>>()[..]
    {
        [only] => TraceParent::parse(only.as_bytes()).ok(),
        _ => None,
    };

    let sent: Arc<Mutex<Option<HeaderMap>>> = Arc::default();
    let handled: Arc<Mutex<Option<TraceContext>>> = Arc::default();
    let (outgoing, context) = (sent.clone(), handled.clone());
    let downstream = PropagateLayer::new().layer(tower::service_fn(move |request: Request<()>| {
        *outgoing.lock().unwrap() = Some(request.headers().clone());
        std::future::ready(Ok::<_, std::convert::Infallible>(Response::new(())))
    }));
    let server = TraceContextLayer::new()
        .traceresponse(true)
        .layer(tower::service_fn(move |_: Request<()>| {
            let downstream = downstream.clone();
            let context = context.clone();
            async move {
                *context.lock().unwrap() = TraceContext::current();
                downstream.oneshot(Request::new(())).await
            }
        }));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let response = runtime.block_on(server.oneshot(incoming)).unwrap();

    let handled = handled
        .lock()
        .unwrap()
        .take()
        .expect("the handler runs in a context");
    if let Some(parent) = valid_parent {
        assert_eq!(handled.trace_id(), parent.trace_id());
        assert_eq!(handled.parent_id(), Some(parent.parent_id()));
    } else {
        assert_eq!(handled.parent_id(), None, "a new trace");
    }
    let answered: TraceParent = response.headers()[TRACERESPONSE]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(answered.trace_id(), handled.trace_id());
    assert_eq!(answered.parent_id(), handled.span_id());

    let sent = sent.lock().unwrap().take().expect("the downstream call");
    let parents: Vec<_> = sent.get_all(TRACEPARENT).iter().collect();
    assert_eq!(parents.len(), 1);
    let child = TraceParent::parse(parents[0].as_bytes()).expect("a valid traceparent");
    assert_eq!(child.trace_id(), handled.trace_id());
    assert_ne!(child.parent_id(), handled.span_id(), "a span of its own");
    assert!(sent.get_all(TRACESTATE).iter().count() <= 1);
});
