//! A saga service's process: its consumer, `/healthz`, `/metrics` and
//! `/books` (the service's books, for the gateway's), and its inbox kept
//! short.

use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use palisade_outbox::BoxError;

use super::{Process, ServeSettings, consumer, end_tasks, internal, run_consumer, serve_http};
use crate::books::{Books, consumers_books};
use crate::service::{Consumers, SagaService};
use crate::stuck::STUCK_AFTER;

/// Runs `service`'s consumer (see [`consumer`] and [`run_consumer`]) with
/// `/healthz`, `/metrics`, `/books` and the process's routes on its
/// listener.
pub(super) async fn consume<S: SagaService>(
    settings: &ServeSettings,
    service: S,
    process: Process<'_>,
) -> Result<(), BoxError> {
    let routes = process.routes.clone();
    let (listener, telemetry, mut tasks, stop) = process.into_parts();
    // The tasks already running (payment's charges) finish what they do.
    let consumer = match consumer(settings, service.clone()).await {
        Ok(consumer) => consumer,
        Err(error) => {
            end_tasks(tasks, stop, settings.stop_grace).await;
            return Err(error);
        }
    };
    let consumers = Consumers::default();
    consumers.add(S::NAME, consumer.clone());
    crate::metrics::observe_consumers(&telemetry.meter(), &consumers);
    let books = Router::new().route(
        "/books",
        get(move || books(service.clone(), consumers.clone())),
    );
    tasks.spawn(serve_http(
        listener,
        internal(telemetry).merge(routes).merge(books),
        stop.signal(),
    ));
    let consumed = run_consumer(&consumer, stop, settings.stop_grace).await;
    end_tasks(tasks, stop, settings.stop_grace).await;
    consumed
}

/// `GET /books`: `service`'s books and this process's consumers'.
async fn books<S: SagaService>(service: S, consumers: Consumers) -> Response {
    match service.books(STUCK_AFTER).await {
        Ok(mut books) => {
            books.merge(consumers_books(&consumers));
            Json::<Books>(books).into_response()
        }
        Err(error) => {
            tracing::error!(%error, "the books could not be read");
            http::StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}
