//! palisade-tracecontext against the OpenTelemetry SDK's
//! `TraceContextPropagator` (with `opentelemetry-http`'s header adapters),
//! on the same `HeaderMap`s.
//!
//! - `traceparent`: read a `traceparent` from a request's headers and write
//!   one to an outgoing request's headers.
//! - `extract_inject_4_members`: the same with a 4-member `tracestate`,
//!   carried along.
//! - `extract_4_members`: only reading the request's headers (palisade
//!   continues the trace with a span id of its own; the SDK builds its
//!   `Context`).
//!
//! - `headers_alone`: no propagator, only what any propagator reading and
//!   writing `http::HeaderMap`s must do in the same case: look up both
//!   headers, make one new `traceparent` value, and write it and the
//!   `tracestate`. No parsing, no ids. It roughly bounds how much faster
//!   than the SDK a propagator on these maps can be (`scripts/bench`
//!   prints it); only skipping the check of the new value's bytes, which
//!   `http` allows only with `unsafe`, would go under it.
//!
//! Both sides write into one outgoing `HeaderMap` that is cleared between
//! iterations, as a real outgoing request already has its header map:
//! allocating a map is the client's cost, not propagation's.
//!
//! palisade's side also makes a new span id for the server and another for
//! the outgoing call, which the SDK's propagator alone does not do (its
//! tracer would): the comparison is tilted against palisade, not for it.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use palisade_tracecontext::Propagator;

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const TRACESTATE: &str =
    "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE,vendor3=abc123,vendor4=opaque-value";

fn requests() -> [(&'static str, HeaderMap); 2] {
    let mut traceparent_only = HeaderMap::new();
    traceparent_only.insert("traceparent", TRACEPARENT.parse().unwrap());
    let mut with_state = traceparent_only.clone();
    with_state.insert("tracestate", TRACESTATE.parse().unwrap());
    [
        ("traceparent", traceparent_only),
        ("extract_inject_4_members", with_state),
    ]
}

fn compare(c: &mut Criterion) {
    let mut group = c.benchmark_group("peers-tracecontext");
    let palisade = Propagator::new();
    let sdk = TraceContextPropagator::new();
    for (case, incoming) in requests() {
        group.bench_with_input(
            BenchmarkId::new("palisade", case),
            &incoming,
            |b, incoming| {
                let mut outgoing = HeaderMap::with_capacity(8);
                b.iter(|| {
                    outgoing.clear();
                    let server = palisade.continue_or_start(black_box(incoming));
                    palisade.inject(&server.child(), &mut outgoing);
                    black_box(&outgoing);
                });
            },
        );
        group.bench_with_input(
            BenchmarkId::new("opentelemetry_sdk", case),
            &incoming,
            |b, incoming| {
                let mut outgoing = HeaderMap::with_capacity(8);
                b.iter(|| {
                    outgoing.clear();
                    let context = sdk.extract(&HeaderExtractor(black_box(incoming)));
                    sdk.inject_context(&context, &mut HeaderInjector(&mut outgoing));
                    black_box(&outgoing);
                });
            },
        );
    }
    for (case, incoming) in requests() {
        group.bench_with_input(
            BenchmarkId::new("headers_alone", case),
            &incoming,
            |b, incoming| {
                let mut outgoing = HeaderMap::with_capacity(8);
                b.iter(|| {
                    outgoing.clear();
                    black_box(headers_alone(black_box(incoming), &mut outgoing));
                    black_box(&outgoing);
                });
            },
        );
    }
    let (_, incoming) = &requests()[1];
    group.bench_function(
        BenchmarkId::new("headers_alone", "extract_4_members"),
        |b| {
            b.iter(|| black_box(read_headers(black_box(incoming))));
        },
    );
    group.bench_function(BenchmarkId::new("palisade", "extract_4_members"), |b| {
        b.iter(|| black_box(palisade.continue_or_start(black_box(incoming))));
    });
    group.bench_function(
        BenchmarkId::new("opentelemetry_sdk", "extract_4_members"),
        |b| b.iter(|| black_box(sdk.extract(&HeaderExtractor(black_box(incoming))))),
    );
    group.finish();
}

/// The two names, made once, as a propagator would keep them.
static TRACEPARENT_NAME: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE_NAME: HeaderName = HeaderName::from_static("tracestate");

/// The incoming `traceparent`, if it appears once, and `tracestate`:
/// the lookups any propagator makes.
fn read_headers(incoming: &HeaderMap) -> (Option<&HeaderValue>, Option<&HeaderValue>) {
    let mut parents = incoming.get_all(&TRACEPARENT_NAME).iter();
    let parent = parents.next().filter(|_| parents.next().is_none());
    (parent, incoming.get(&TRACESTATE_NAME))
}

/// The header work of a propagation with no propagator: the lookups, one
/// new `traceparent` value (its bytes copied and checked, as a value made
/// of a new span id is), and both writes.
fn headers_alone(incoming: &HeaderMap, outgoing: &mut HeaderMap) -> bool {
    let (parent, state) = read_headers(incoming);
    let Some(parent) = parent else { return false };
    // The fixtures' `traceparent`s are all 55 bytes long.
    let mut value = [0u8; 55];
    value.copy_from_slice(&parent.as_bytes()[..55]);
    let Ok(value) = HeaderValue::from_bytes(black_box(&value)) else {
        return false;
    };
    outgoing.insert(TRACEPARENT_NAME.clone(), value);
    if let Some(state) = state {
        outgoing.insert(TRACESTATE_NAME.clone(), state.clone());
    }
    true
}

/// Both sides must produce the same trace on the wire, or the timing
/// compares different work.
fn check_equivalence() {
    let palisade = Propagator::new();
    let sdk = TraceContextPropagator::new();
    for (_, incoming) in requests() {
        let mut ours = HeaderMap::new();
        palisade.inject(&palisade.continue_or_start(&incoming), &mut ours);
        let mut theirs = HeaderMap::new();
        sdk.inject_context(
            &sdk.extract(&HeaderExtractor(&incoming)),
            &mut HeaderInjector(&mut theirs),
        );
        assert_eq!(
            ours["traceparent"].as_bytes()[..36],
            theirs["traceparent"].as_bytes()[..36]
        );
        // The SDK writes an empty `tracestate` when there is none; palisade
        // writes none at all. Same trace either way.
        let theirs_state = theirs.get("tracestate").filter(|v| !v.is_empty());
        assert_eq!(ours.get("tracestate"), theirs_state);
    }
}

fn benches(c: &mut Criterion) {
    check_equivalence();
    compare(c);
}

criterion_group!(tracecontext, benches);
criterion_main!(tracecontext);
