//! The card processor's process: the simulator over gRPC, its faults at
//! `/admin/processor` for an operator.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use palisade_outbox::BoxError;
use tokio::net::TcpListener;

use super::{Process, Role, ServeSettings, connect_redis, internal, serve_http};
use crate::auth::{self, Sessions};
use crate::identity::{self};
use crate::processor::{self as card, ChargeStore, ProcessorServer, Simulator};

/// The card processor over gRPC on `settings.grpc`, its faults on
/// `listener`'s `/admin/processor` for operators signed in at a gateway.
pub(super) async fn processor(
    settings: &ServeSettings,
    process: Process<'_>,
) -> Result<(), BoxError> {
    let (listener, telemetry, mut tasks, stop) = process.into_parts();
    let (_, connection) = connect_redis(settings).await?;
    let sessions = Sessions::redis(connection, &settings.sessions_prefix());
    let charges = ChargeStore::open_postgres(
        &settings.infrastructure.postgres,
        &settings.schema(Role::Processor.name()),
    )
    .await
    .map_err(|error| format!("PostgreSQL (processor): {error}"))?;
    let simulator = Simulator::new(charges);
    let grpc = TcpListener::bind(settings.grpc).await?;
    tracing::info!(address = %grpc.local_addr()?, "card processor (gRPC)");
    let serving = tonic::transport::Server::builder()
        .add_service(ProcessorServer::new(simulator.clone()))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(grpc),
            stop.signal(),
        );
    tasks.spawn(async move {
        if let Err(error) = serving.await {
            tracing::error!(%error, "card processor stopped");
        }
    });
    let app = internal(telemetry).merge(
        Router::new()
            .route("/admin/processor", get(faults).put(set_faults))
            .route_layer(middleware::from_fn(|request, next| {
                auth::require_role(identity::Role::Operator, request, next)
            }))
            .route_layer(middleware::from_fn_with_state(
                sessions,
                auth::require_bearer,
            ))
            .with_state(simulator),
    );
    tasks.spawn(serve_http(listener, app, stop.signal()));
    while tasks.join_next().await.is_some() {}
    Ok(())
}

async fn faults(State(simulator): State<Simulator>) -> Response {
    status(&simulator).await
}

async fn set_faults(State(simulator): State<Simulator>, body: Bytes) -> Response {
    match card::FaultSettings::from_json(&body) {
        Ok(settings) => {
            simulator.faults().apply(settings);
            tracing::warn!(?settings, "card processor faults set");
            status(&simulator).await
        }
        Err(problem) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(serde_json::json!({ "error": problem })),
        )
            .into_response(),
    }
}

/// What the processor's `/admin/processor` shows: its [`card::Report`].
async fn status(simulator: &Simulator) -> Response {
    match simulator.report().await {
        Ok(report) => axum::Json(report).into_response(),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({ "error": format!("the ledger: {error}") })),
        )
            .into_response(),
    }
}
