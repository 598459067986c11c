//! Read models (CQRS): services whose tables are a projection of the
//! saga's events, kept by consuming them and built again from the stream
//! ([`rebuild`]), with their lag measured ([`Lag`]).
//!
//! Two are kept: the catalog's trending ranking
//! ([`catalog`](crate::catalog)) and each user's order history
//! ([`history`](crate::history)).

use std::future::Future;

use futures_util::{Stream, TryStreamExt};
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Histogram, Meter};
use palisade_outbox::{BoxError, Delivery, Handled, Handler, InboxStore};

use crate::db::{INBOX, Outbox, Param, ServiceDb, Tx};
use crate::service::{Consuming, SagaService};

/// A service whose tables are a projection of the events it consumes.
pub trait ReadModel: SagaService {
    /// The tables the projection writes: what a rebuild clears.
    const PROJECTED: &'static [&'static str];
}

/// Builds `model`'s projection again from `history`, the stream's events
/// of the types it consumes from its start (see
/// [`palisade_outbox::replay`]), in one transaction: the projection and
/// the model's inbox records are locked and cleared, the history is read,
/// then every event in it applied as the consumer would. Returns the
/// events applied.
///
/// The history is read and applied [`REBUILT_AT_ONCE`] events at a time,
/// so a rebuild holds that many in memory however long the stream.
///
/// The consumer may run meanwhile and loses nothing: the history is read
/// once the lock is held, so it holds every event the consumer committed
/// before; the consumer's later writes wait for the rebuild to end, then
/// skip what it applied and apply what came after. (A rebuild longer than
/// JetStream's ack wait has the waiting batches delivered again meanwhile:
/// duplicates, skipped.) An event that cannot be read is left out with a
/// warning, as the consumer gives up on it.
///
/// # Errors
///
/// The database's, the history's, or an event that cannot be read.
pub async fn rebuild<R, F, H>(model: &R, history: F) -> Result<u64, BoxError>
where
    R: ReadModel,
    F: Future<Output = Result<H, BoxError>> + Send,
    H: Stream<Item = Result<Delivery, BoxError>> + Send,
{
    match model.db() {
        ServiceDb::Sqlite { inbox, outbox, .. } => rebuild_in(model, inbox, outbox, history).await,
        ServiceDb::Postgres { inbox, outbox, .. } => {
            rebuild_in(model, inbox, outbox, history).await
        }
    }
}

/// How many events of its history a rebuild reads and applies at once.
pub const REBUILT_AT_ONCE: usize = 512;

async fn rebuild_in<R, I, O, F, H>(
    model: &R,
    inbox: &I,
    outbox: &O,
    history: F,
) -> Result<u64, BoxError>
where
    R: ReadModel,
    I: InboxStore,
    <I::Database as sqlx::Database>::Connection: Tx,
    O: Outbox<Connection = <I::Database as sqlx::Database>::Connection>,
    F: Future<Output = Result<H, BoxError>> + Send,
    H: Stream<Item = Result<Delivery, BoxError>> + Send,
{
    let mut transaction = inbox.begin().await?;
    let tx = &mut *transaction;
    let mut locked = vec![INBOX];
    locked.extend(R::PROJECTED);
    tx.lock_tables(&locked).await?;
    for table in R::PROJECTED {
        tx.execute(&format!("DELETE FROM {table}"), &[]).await?;
    }
    tx.execute(
        &format!("DELETE FROM {INBOX} WHERE consumer = $1"),
        &[Param::Text(R::NAME)],
    )
    .await?;
    let handler = Consuming(model.clone(), outbox.clone());
    handler.prepare(tx).await?;
    let mut history = std::pin::pin!(history.await?.try_chunks(REBUILT_AT_ONCE));
    let mut applied = 0;
    while let Some(deliveries) = history.try_next().await.map_err(|error| error.1)? {
        let ids: Vec<&str> = deliveries.iter().map(|d| d.envelope.id.as_str()).collect();
        let first_times = inbox.process_all(tx, R::NAME, &ids).await?;
        for (delivery, first_time) in deliveries.iter().zip(first_times) {
            if !first_time {
                continue;
            }
            match handler.handle(tx, delivery).await {
                Ok(Handled::Applied) => applied += 1,
                Ok(Handled::Ignored) => {}
                Err(error) if error.is::<serde_json::Error>() => {
                    tracing::warn!(id = %delivery.envelope.id, %error, "unreadable event left out of the rebuild");
                }
                Err(error) => return Err(error),
            }
        }
    }
    // An error left out above may have aborted the transaction
    // (PostgreSQL): the inbox's commit says so rather than roll back in
    // silence.
    inbox.commit(transaction).await?;
    Ok(applied)
}

/// A read model's lag: the `palisade.read_model.lag` histogram, seconds
/// from an event's creation to its commit in the model, labelled
/// `read_model`. Nothing is measured until [`instrument`](Self::instrument)ed.
#[derive(Debug, Clone, Default)]
pub struct Lag(Option<Histogram<f64>>);

impl Lag {
    /// Measures with `meter`.
    #[must_use]
    pub fn instrument(meter: &Meter) -> Self {
        Self(Some(
            meter
                .f64_histogram("palisade.read_model.lag")
                .with_unit("s")
                .with_boundaries(palisade_hints::SECONDS_BOUNDARIES.to_vec())
                .with_description("From an event's creation to its commit in a read model")
                .build(),
        ))
    }

    /// Records `delivery`'s lag, now that `read_model` committed it.
    pub fn committed(&self, read_model: &'static str, delivery: &Delivery) {
        if let (Some(lag), Some(created_ms)) = (&self.0, delivery.envelope.time_ms) {
            let lag_ms = crate::orders::now_ms().saturating_sub(created_ms).max(0);
            #[allow(clippy::cast_precision_loss)]
            lag.record(
                lag_ms as f64 / 1000.0,
                &[KeyValue::new("read_model", read_model)],
            );
        }
    }
}
