//! A service for the W3C Trace Context test harness.
//!
//! The harness POSTs a JSON array of `{"url": ..., "arguments": ...}`; for
//! each element, in order, the service POSTs `arguments` as JSON to `url`,
//! carrying the propagated `traceparent` and `tracestate`, then answers
//! 200. Run it, then point the harness at it:
//!
//! ```sh
//! cargo run -p palisade-tracecontext --example tracecontext-conformance -- --listen 127.0.0.1:5000
//! # in a checkout of w3c/trace-context (main):
//! SPEC_LEVEL=2 STRICT_LEVEL=2 python test/test.py http://127.0.0.1:5000/test
//! ```
//!
//! It follows the Level 2 text the harness tests on `main`: `@` is an
//! ordinary `tracestate` key character and a repeated key keeps its first
//! member (see `palisade_tracecontext::TraceState`).

use std::net::SocketAddr;

mod service;

const USAGE: &str = "usage: tracecontext-conformance [--listen ADDR]   (default 127.0.0.1:5000)";

fn listen_address() -> Result<SocketAddr, String> {
    let mut args = std::env::args().skip(1);
    let mut listen = "127.0.0.1:5000".to_owned();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().ok_or(USAGE)?,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    listen
        .parse()
        .map_err(|err| format!("--listen {listen:?}: {err}"))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let address = match listen_address() {
        Ok(address) => address,
        Err(message) => {
            eprintln!("{message}");
            return std::process::ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(address).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("cannot listen on {address}: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    println!("tracecontext-conformance listening on http://{address}/test");
    if let Err(err) = axum::serve(listener, service::router()).await {
        eprintln!("server error: {err}");
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}
