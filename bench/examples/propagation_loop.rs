//! Runs one side of the trace-context comparison in a loop, for counting
//! instructions under `valgrind --tool=callgrind`: unlike wall time, the
//! count does not move with the machine's load.
//!
//! `propagation_loop <palisade|opentelemetry_sdk> <traceparent|extract_inject_4_members> <iterations>`
//!
//! `scripts/bench` runs it with 0 and N iterations and prints the
//! difference per iteration.

use std::hint::black_box;
use std::process::ExitCode;

use http::HeaderMap;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use palisade_tracecontext::Propagator;

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const TRACESTATE: &str =
    "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE,vendor3=abc123,vendor4=opaque-value";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [side, case, iterations] = args.as_slice() else {
        eprintln!(
            "usage: propagation_loop <palisade|opentelemetry_sdk> <traceparent|extract_inject_4_members> <iterations>"
        );
        return ExitCode::from(2);
    };
    let Ok(iterations) = iterations.parse::<u64>() else {
        eprintln!("iterations must be a whole number");
        return ExitCode::from(2);
    };
    let mut incoming = HeaderMap::new();
    incoming.insert("traceparent", TRACEPARENT.parse().expect("valid"));
    match case.as_str() {
        "traceparent" => {}
        "extract_inject_4_members" => {
            incoming.insert("tracestate", TRACESTATE.parse().expect("valid"));
        }
        _ => {
            eprintln!("unknown case {case:?}");
            return ExitCode::from(2);
        }
    }
    let mut outgoing = HeaderMap::with_capacity(8);
    match side.as_str() {
        "palisade" => {
            let propagator = Propagator::new();
            for _ in 0..iterations {
                outgoing.clear();
                let server = propagator.continue_or_start(black_box(&incoming));
                propagator.inject(&server.child(), &mut outgoing);
                black_box(&outgoing);
            }
        }
        "opentelemetry_sdk" => {
            let propagator = TraceContextPropagator::new();
            for _ in 0..iterations {
                outgoing.clear();
                let context = propagator.extract(&HeaderExtractor(black_box(&incoming)));
                propagator.inject_context(&context, &mut HeaderInjector(&mut outgoing));
                black_box(&outgoing);
            }
        }
        _ => {
            eprintln!("unknown side {side:?}");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}
