//! Deterministic costs of trace-context propagation, palisade beside the
//! OpenTelemetry SDK: heap allocations per call, counted by a global
//! allocator, and a loop to count instructions under callgrind. Neither
//! moves with the machine's load, unlike wall time.
//!
//! - `tracecontext_allocs` prints allocations per call for each side,
//!   operation and case.
//! - `tracecontext_allocs <palisade|opentelemetry_sdk> <extract|extract_inject>
//!   <traceparent|4_members> <iterations>` runs one of them in a loop, for
//!   `valgrind --tool=callgrind` (run it with 0 and N iterations; the
//!   difference over N is the count per call).
//!
//! `extract` is what a server does with a request's headers (palisade
//! continues the trace with a new span id, the SDK builds a `Context`);
//! `extract_inject` adds writing a child of it to an outgoing request's
//! headers, a reused `HeaderMap` cleared each time, as in
//! `benches/tracecontext.rs`.
//!
//! Incoming header values are slices of one received buffer, as hyper
//! hands them to a server.

use std::alloc::System;
use std::hint::black_box;
use std::process::ExitCode;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use palisade_tracecontext::Propagator;
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

/// Counts every allocation and reallocation.
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Allocations and reallocations so far.
fn allocations_so_far() -> usize {
    let stats = GLOBAL.stats();
    stats.allocations + stats.reallocations
}

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const TRACESTATE: &str =
    "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE,vendor3=abc123,vendor4=opaque-value";

const SIDES: [&str; 2] = ["palisade", "opentelemetry_sdk"];
const OPERATIONS: [&str; 2] = ["extract", "extract_inject"];
const CASES: [&str; 2] = ["traceparent", "4_members"];

/// A request's headers as hyper parses them: each value a slice of the
/// buffer the head was read into.
fn incoming(case: &str) -> Option<HeaderMap> {
    let with_state = match case {
        "traceparent" => false,
        "4_members" => true,
        _ => return None,
    };
    let received = Bytes::from(format!("{TRACEPARENT}{TRACESTATE}"));
    let slice = |range| HeaderValue::from_maybe_shared(received.slice(range)).ok();
    let mut headers = HeaderMap::new();
    headers.insert("traceparent", slice(0..TRACEPARENT.len())?);
    if with_state {
        headers.insert("tracestate", slice(TRACEPARENT.len()..received.len())?);
    }
    Some(headers)
}

/// Runs `operation` of `side` `iterations` times on `incoming`.
fn run(side: &str, operation: &str, incoming: &HeaderMap, iterations: u64) -> Option<()> {
    let inject = match operation {
        "extract" => false,
        "extract_inject" => true,
        _ => return None,
    };
    let mut outgoing = HeaderMap::with_capacity(8);
    match side {
        "palisade" => {
            let propagator = Propagator::new();
            for _ in 0..iterations {
                let server = propagator.continue_or_start(black_box(incoming));
                if inject {
                    outgoing.clear();
                    propagator.inject(&server.child(), &mut outgoing);
                    black_box(&outgoing);
                }
                black_box(server);
            }
        }
        "opentelemetry_sdk" => {
            let propagator = TraceContextPropagator::new();
            for _ in 0..iterations {
                let context = propagator.extract(&HeaderExtractor(black_box(incoming)));
                if inject {
                    outgoing.clear();
                    propagator.inject_context(&context, &mut HeaderInjector(&mut outgoing));
                    black_box(&outgoing);
                }
                black_box(context);
            }
        }
        _ => return None,
    }
    Some(())
}

/// Allocations per call, after a first call that may set up lazily.
fn allocations(side: &str, operation: &str, case: &str) -> Option<f64> {
    const CALLS: u64 = 1000;
    let incoming = incoming(case)?;
    run(side, operation, &incoming, 1)?;
    let before = allocations_so_far();
    run(side, operation, &incoming, CALLS)?;
    let after = allocations_so_far();
    // The outgoing map of each `run`, made once, is not per call.
    let baseline = {
        let before = allocations_so_far();
        run(side, operation, &incoming, 0)?;
        allocations_so_far() - before
    };
    Some((after - before - baseline) as f64 / CALLS as f64)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => {
            println!(
                "{:<16} {:<12} {:>9} {:>18}",
                "allocations", "case", "palisade", "opentelemetry_sdk"
            );
            for operation in OPERATIONS {
                for case in CASES {
                    let [ours, theirs] =
                        SIDES.map(|side| allocations(side, operation, case).unwrap_or(f64::NAN));
                    println!("{operation:<16} {case:<12} {ours:>9} {theirs:>18}");
                }
            }
            ExitCode::SUCCESS
        }
        [side, operation, case, iterations] => {
            let (Some(incoming), Ok(iterations)) = (incoming(case), iterations.parse()) else {
                return usage();
            };
            match run(side, operation, &incoming, iterations) {
                Some(()) => ExitCode::SUCCESS,
                None => usage(),
            }
        }
        _ => usage(),
    }
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: tracecontext_allocs [<{}> <{}> <{}> <iterations>]",
        SIDES.join("|"),
        OPERATIONS.join("|"),
        CASES.join("|")
    );
    ExitCode::from(2)
}
