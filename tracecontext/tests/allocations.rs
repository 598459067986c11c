//! Heap allocations on the request path, counted by a global allocator, so
//! a change that adds one fails here. This binary holds this one test, so
//! nothing else allocates while it counts and the counts are exact.

use std::alloc::System;
use std::collections::HashMap;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use palisade_tracecontext::{Propagator, TraceContext};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const TRACESTATE: &str =
    "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE,vendor3=abc123,vendor4=opaque-value";

/// Allocations (and reallocations) made by `f`, whose result is dropped
/// after counting.
fn allocations<T>(f: impl FnOnce() -> T) -> usize {
    let region = Region::new(GLOBAL);
    let kept = f();
    let stats = region.change();
    drop(kept);
    stats.allocations + stats.reallocations
}

/// A request's headers as hyper gives them to a server: each value a slice
/// of the buffer the head was read into.
fn received(tracestate: Option<&str>) -> HeaderMap {
    let head = Bytes::from(format!("{TRACEPARENT}{}", tracestate.unwrap_or_default()));
    let value = |range| HeaderValue::from_maybe_shared(head.slice(range)).unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("traceparent", value(0..TRACEPARENT.len()));
    if tracestate.is_some() {
        headers.insert("tracestate", value(TRACEPARENT.len()..head.len()));
    }
    headers
}

#[test]
fn request_path_allocations() {
    let propagator = Propagator::new();
    // The thread's id generator is set up by the first id.
    drop(TraceContext::new_root(propagator.new_trace_flags()));

    let plain = received(Some(TRACESTATE));
    let bare = received(None);
    let mut outgoing = HeaderMap::with_capacity(8);
    let extract_inject = |incoming: &HeaderMap, outgoing: &mut HeaderMap| {
        allocations(|| {
            outgoing.clear();
            let server = propagator.continue_or_start(incoming);
            propagator.inject(&server.child(), outgoing);
            server
        })
    };

    // Extract: the ids are parsed in place and the tracestate shares the
    // received bytes.
    assert_eq!(allocations(|| propagator.continue_or_start(&plain)), 0);
    assert_eq!(allocations(|| propagator.continue_or_start(&bare)), 0);
    // Extract and inject a child: only the new traceparent's value; the
    // tracestate is shared all the way.
    assert_eq!(extract_inject(&plain, &mut outgoing), 1);
    assert_eq!(outgoing["tracestate"], TRACESTATE);
    assert_eq!(extract_inject(&bare, &mut outgoing), 1);

    // A tracestate that is not in normal form (here over two lines) is
    // joined into one shareable allocation.
    let (first, second) = TRACESTATE.split_at(TRACESTATE.find(",vendor3").unwrap());
    let mut two_lines = received(Some(first));
    two_lines.append("tracestate", HeaderValue::from_str(&second[1..]).unwrap());
    assert_eq!(allocations(|| propagator.continue_or_start(&two_lines)), 1);
    assert_eq!(extract_inject(&two_lines, &mut outgoing), 2);
    assert_eq!(outgoing["tracestate"], TRACESTATE);

    // A string map (message headers) copies the tracestate once, and its
    // clones share that copy.
    let attributes = HashMap::from([
        ("traceparent".to_owned(), TRACEPARENT.to_owned()),
        ("tracestate".to_owned(), TRACESTATE.to_owned()),
    ]);
    assert_eq!(allocations(|| propagator.continue_or_start(&attributes)), 1);
    assert_eq!(
        allocations(|| {
            let server = propagator.continue_or_start(&attributes);
            propagator.inject(&server.child(), &mut outgoing);
            server
        }),
        2
    );
}
