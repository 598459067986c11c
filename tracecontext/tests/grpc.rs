//! One trace across a real gRPC call: a tonic channel behind
//! `PropagateLayer`, a tonic server behind `TraceContextLayer`, on loopback.

use std::sync::{Arc, Mutex};

use palisade_tracecontext::{PropagateLayer, Propagator, TraceContext, TraceContextLayer};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Endpoint, Server};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower::ServiceBuilder;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_call_continues_the_callers_trace() {
    let seen: Arc<Mutex<Vec<TraceContext>>> = Arc::default();
    let record = seen.clone();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = Server::builder()
        .layer(
            ServiceBuilder::new()
                .layer(TraceContextLayer::new())
                .map_request(move |request: http::Request<tonic::body::Body>| {
                    let context = request.extensions().get::<TraceContext>().cloned();
                    record.lock().unwrap().extend(context);
                    request
                }),
        )
        .add_service(health)
        .serve_with_incoming(TcpIncoming::from(listener));
    tokio::spawn(server);

    let channel = Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let channel = ServiceBuilder::new()
        .layer(PropagateLayer::new())
        .service(channel);
    let mut client = HealthClient::new(channel);

    let caller = Propagator::new().start();
    let response = caller
        .clone()
        .scope(client.check(HealthCheckRequest::default()))
        .await
        .unwrap();
    assert_eq!(response.into_inner().status, 1, "SERVING");

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    let server = &seen[0];
    assert_eq!(server.trace_id(), caller.trace_id());
    let client_span = server.parent_id().unwrap();
    assert_ne!(
        client_span,
        caller.span_id(),
        "the call is a child span of the caller"
    );
}
