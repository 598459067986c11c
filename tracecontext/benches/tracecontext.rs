//! The costs on the request path: parsing and formatting `traceparent`,
//! and a whole extract → inject of a request's headers.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::HeaderMap;
use palisade_tracecontext::{Propagator, TraceContext, TraceParent, TraceState};

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const TRACESTATE: &str =
    "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE,vendor3=abc123,vendor4=opaque-value";

fn traceparent(c: &mut Criterion) {
    c.bench_function("tracecontext/traceparent_parse_format", |b| {
        b.iter(|| {
            let parent = TraceParent::parse(black_box(TRACEPARENT.as_bytes())).unwrap();
            black_box(parent.encode())
        });
    });
    c.bench_function("tracecontext/tracestate_parse_4_members", |b| {
        b.iter(|| TraceState::parse_lines([black_box(TRACESTATE.as_bytes())]));
    });
}

fn propagation(c: &mut Criterion) {
    let propagator = Propagator::new();
    let mut incoming = HeaderMap::new();
    incoming.insert("traceparent", TRACEPARENT.parse().unwrap());
    incoming.insert("tracestate", TRACESTATE.parse().unwrap());
    c.bench_function("tracecontext/extract_inject", |b| {
        b.iter(|| {
            let context = propagator.continue_or_start(black_box(&incoming));
            let mut outgoing = HeaderMap::new();
            propagator.inject(&context.child(), &mut outgoing);
            black_box(outgoing)
        });
    });
    c.bench_function("tracecontext/new_root", |b| {
        b.iter(|| black_box(TraceContext::new_root(propagator.new_trace_flags())));
    });
}

criterion_group!(benches, traceparent, propagation);
criterion_main!(benches);
