//! Arbitrary header lines through the combined extractor and back out: no
//! panic, and what is sent is always a valid, canonical trace context.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use palisade_tracecontext::{Propagator, TraceParent, TraceState};

#[derive(Debug, Arbitrary)]
struct Line<'a> {
    /// 0: traceparent, 1: tracestate, other: a header of no interest.
    which: u8,
    value: &'a [u8],
}

#[derive(Debug, Arbitrary)]
struct Request<'a> {
    lines: Vec<Line<'a>>,
    limit: Option<u16>,
}

fuzz_target!(|request: Request<'_>| {
    let mut headers = HeaderMap::new();
    for line in &request.lines {
        let name = match line.which {
            0 => "traceparent",
            1 => "tracestate",
            _ => "x-other",
        };
        if let Ok(value) = HeaderValue::from_bytes(line.value) {
            headers.append(HeaderName::from_static(name), value);
        }
    }
    let mut propagator = Propagator::new();
    if let Some(limit) = request.limit {
        propagator = propagator.tracestate_limit(usize::from(limit));
    }
    let context = propagator.continue_or_start(&headers);

    // A trace is continued exactly when there is one valid traceparent.
    let parents: Vec<_> = headers.get_all("traceparent").iter().collect();
    if let [only] = parents[..] {
        if let Ok(parent) = TraceParent::parse(only.as_bytes()) {
            assert_eq!(context.trace_id(), parent.trace_id());
            assert_eq!(context.parent_id(), Some(parent.parent_id()));
        }
    }

    let mut outgoing = HeaderMap::new();
    propagator.inject(&context.child(), &mut outgoing);
    let sent = outgoing.get("traceparent").expect("always sent");
    let parent = TraceParent::parse(sent.as_bytes()).expect("valid");
    assert_eq!(parent.to_string().as_bytes(), sent.as_bytes());
    assert_eq!(parent.trace_id(), context.trace_id());
    if let Some(state) = outgoing.get("tracestate") {
        assert!(!state.is_empty());
        TraceState::parse_lines([state.as_bytes()]).expect("valid");
    }
});
