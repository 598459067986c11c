//! A tonic server and a client of it, each stacked with palisade's presets
//! and nothing else: the server continues each call's trace and limits its
//! callers; the client sends its trace on, retries what the server pushes
//! back, and fails fast through a circuit breaker.
//!
//! ```text
//! cargo run -p palisade-example-tonic -- 6
//! ```
//!
//! Each call runs in a trace of its own; the server answers with a
//! `traceresponse` naming its span, which the client checks is in the
//! same trace. The server admits 2 calls at once and 2 a second: the later
//! calls are refused with `RESOURCE_EXHAUSTED` and a pushback, which the
//! client's retry waits out, so every call is served.

use std::error::Error;
use std::time::Instant;

use palisade::prelude::*;
use palisade::tracecontext::{TRACERESPONSE, TraceFlags, TraceParent};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Endpoint, Server};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower::ServiceBuilder;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let calls: u32 = match std::env::args().nth(1) {
        Some(calls) => calls
            .parse()
            .map_err(|_| "the argument is a number of calls")?,
        None => 6,
    };

    // The server: a health service behind trace context and a rate limit.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let server = Server::builder()
        .layer(
            ServiceBuilder::new()
                .layer(TraceContextLayer::new().traceresponse(true))
                .rate_limit_for_grpc(
                    LocalStore::default(),
                    Bucket::new(2, 2.0)?,
                    key::global("all"),
                )
                .into_inner(),
        )
        .add_service(health)
        // tonic leaves the sockets it accepts with Nagle's algorithm on,
        // which holds a reply's later frames back until the first is
        // acknowledged.
        .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true)));
    tokio::spawn(server);

    // The client: trace context, retries, a breaker, then the channel.
    let channel = ServiceBuilder::new()
        .propagate_trace()
        .retry_for_tonic(RetryConfig::default())
        .circuit_breaker_for_grpc(BreakerConfig::default())
        .service(Endpoint::from_shared(url)?.connect().await?);
    let mut client = HealthClient::new(channel);

    let started = Instant::now();
    for call in 1..=calls {
        let trace = TraceContext::new_root(TraceFlags::SAMPLED);
        let reply = trace
            .clone()
            .scope(client.check(HealthCheckRequest::default()))
            .await?;
        let server_span: TraceParent = reply
            .metadata()
            .get(TRACERESPONSE)
            .ok_or("no traceresponse")?
            .to_str()?
            .parse()?;
        let same_trace = server_span.trace_id() == trace.trace_id();
        println!(
            "call {call}: {:?} at {:>4} ms, server span {} in the same trace: {same_trace}",
            reply.into_inner().status(),
            started.elapsed().as_millis(),
            server_span.parent_id(),
        );
    }
    Ok(())
}
