//! The card processor's process: the simulator over gRPC, its faults at
//! `/admin/processor` for an operator.

use axum::middleware;
use palisade_outbox::BoxError;
use tokio::net::TcpListener;

use super::{Process, Role, ServeSettings, connect_redis, internal, run_until_stopped, serve_http};
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
        .serve_with_incoming_shutdown(crate::net::grpc_incoming(grpc), stop.signal());
    tasks.spawn(async move {
        if let Err(error) = serving.await {
            tracing::error!(%error, "card processor stopped");
        }
    });
    let app = internal(telemetry).merge(
        card::admin(simulator, None)
            .route_layer(middleware::from_fn(|request, next| {
                auth::require_role(identity::Role::Operator, request, next)
            }))
            .route_layer(middleware::from_fn_with_state(
                sessions,
                auth::require_bearer,
            )),
    );
    tasks.spawn(serve_http(listener, app, stop.signal()));
    run_until_stopped(tasks, stop, settings.stop_grace).await;
    Ok(())
}
