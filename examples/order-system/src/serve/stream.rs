//! The stream: connecting to JetStream, making sure the stream is there,
//! the relays' publisher, and each service's durable consumer.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use palisade_outbox::{
    BoxError, ConsumerConfig, JetStreamConsumer, NatsJetStreamPublisher, OutboxConfig, PgInbox,
    PgOutbox,
};

use super::{ServeSettings, Stop, postgres};
use crate::db::redact_url;
use crate::service::{Consuming, INBOX_KEPT, SagaService};

pub(super) async fn connect_jetstream(
    settings: &ServeSettings,
) -> Result<jetstream::Context, BoxError> {
    let client = async_nats::connect(&settings.infrastructure.nats)
        .await
        .map_err(|error| {
            format!(
                "NATS at {}: {error}",
                redact_url(&settings.infrastructure.nats)
            )
        })?;
    Ok(jetstream::new(client))
}

/// Makes sure the stream exists with a duplicate window covering the
/// relays' retries; processes starting together may race to create it,
/// hence the second try.
pub(super) async fn ensure_stream(
    settings: &ServeSettings,
    context: &jetstream::Context,
    config: &OutboxConfig,
) -> Result<(), BoxError> {
    let publisher = publisher(settings, context, "setup");
    match publisher.ensure_stream(config, true).await {
        Ok(()) => Ok(()),
        Err(_) => Ok(publisher.ensure_stream(config, true).await?),
    }
}

pub(super) fn publisher(
    settings: &ServeSettings,
    context: &jetstream::Context,
    service: &str,
) -> NatsJetStreamPublisher {
    NatsJetStreamPublisher::new(
        context.clone(),
        &settings.stream(),
        &format!("/order-system/{service}"),
    )
}

/// What `consumes` are published on in the stream whose subjects start
/// with `subjects`: the event type's own subject when there is one (the
/// other events never reach the consumer), else every saga event's, the
/// consumer skipping those it does not consume (NATS 2.9 filters a consumer
/// on one subject only).
pub(super) fn filter_subject(subjects: &str, consumes: &[&str]) -> String {
    match consumes {
        [only] => format!("{subjects}.order.{only}"),
        _ => format!("{subjects}.order.>"),
    }
}

/// `service`'s durable consumer of the saga's events it consumes.
pub(super) async fn consumer<S: SagaService>(
    settings: &ServeSettings,
    service: S,
) -> Result<Arc<JetStreamConsumer<PgInbox, Consuming<S, PgOutbox>>>, BoxError> {
    let (outbox, inbox) = postgres(service.db());
    let context = connect_jetstream(settings).await?;
    ensure_stream(settings, &context, outbox.config()).await?;
    let subjects = settings.subjects();
    let config = ConsumerConfig::new(
        &settings.stream(),
        S::NAME,
        &format!("{subjects}.dead.{}", S::NAME),
    )?
    .filter_subject(&filter_subject(&subjects, S::CONSUMES))
    .max_deliver(5)
    .retry_delay(Duration::from_millis(200), Duration::from_secs(5))
    // A replica killed holding a message: another gets it after this.
    .ack_wait(Duration::from_secs(10))
    .keep_records(INBOX_KEPT);
    let (outbox, inbox) = (outbox.clone(), inbox.clone());
    let consumer = JetStreamConsumer::new(context, config, inbox, Consuming(service, outbox))
        .await?
        .only(S::CONSUMES.iter().copied());
    Ok(Arc::new(consumer))
}

/// Runs `consumer` until `stop` completes (its inbox forgets records
/// older than [`INBOX_KEPT`] meanwhile). Once the process is asked to
/// stop, the batch under way has until the stop's `grace` is over (a
/// statement hung on a lost database would hold the stop for good); it is
/// cut short then, its messages left to come back.
pub(super) async fn run_consumer<S: SagaService>(
    consumer: &JetStreamConsumer<PgInbox, Consuming<S, PgOutbox>>,
    stop: &Stop,
    grace: Duration,
) -> Result<(), BoxError> {
    tokio::select! {
        biased;
        consumed = consumer.run(stop.signal()) => consumed,
        () = stop.grace_over(grace) => {
            tracing::warn!(consumer = S::NAME, "the batch under way outlasted the stop's grace; cut short");
            Ok(())
        }
    }
}
