//! A saga service's process: its consumer, `/healthz` and `/metrics`,
//! and its inbox kept short.

use std::time::Duration;

use palisade_outbox::BoxError;

use super::{Process, ServeSettings, consumer, internal, serve_http};
use crate::service::{Consumers, SagaService};

/// Runs `service`'s consumer (see [`consumer`]) with `/healthz`, `/metrics`
/// and the process's routes on its listener, and forgets its inbox records
/// once JetStream can no longer bring them back.
pub(super) async fn consume<S: SagaService>(
    settings: &ServeSettings,
    service: S,
    process: Process<'_>,
) -> Result<(), BoxError> {
    let consumer = consumer(settings, service).await?;
    let routes = process.routes.clone();
    let (listener, telemetry, mut tasks, stop) = process.into_parts();
    let consumers = Consumers::default();
    consumers.add(S::NAME, consumer.clone());
    crate::metrics::observe_consumers(&telemetry.meter(), &consumers);
    tasks.spawn(serve_http(
        listener,
        internal(telemetry).merge(routes),
        stop.signal(),
    ));
    let (forgetting, signal) = (consumer.clone(), stop.signal());
    tasks.spawn(async move {
        tokio::pin!(signal);
        let retention = forgetting.inbox_retention();
        loop {
            tokio::select! {
                () = &mut signal => return,
                () = tokio::time::sleep(Duration::from_secs(60)) => {}
            }
            if let Err(error) = forgetting.forget_processed(retention, 10_000).await {
                tracing::warn!(%error, "old inbox records not forgotten; trying again later");
            }
        }
    });
    let consumed = consumer.run(stop.signal()).await;
    tasks.shutdown().await;
    consumed
}
