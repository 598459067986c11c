//! The read models, built again from the stream while the system runs.

use palisade_outbox::BoxError;

use super::{Infrastructure, ServeSettings, connect_jetstream, filter_subject, open};
use crate::catalog::Catalog;
use crate::db::ServiceDb;
use crate::history::History;
use crate::read_model::{ReadModel, rebuild};

/// Builds the catalog's ranking again from the stream of the system in
/// `namespace` (empty: the default system), while it may be running:
/// see [`rebuild`]. Returns the events applied.
///
/// # Errors
///
/// The namespace is not a name, or PostgreSQL or JetStream failed (the
/// stream must exist: the system ran at least once).
pub async fn rebuild_catalog(
    infrastructure: Infrastructure,
    namespace: &str,
) -> Result<u64, BoxError> {
    // Boxed: reading a stream is a large future to hold in the caller's.
    Box::pin(rebuild_from_stream(infrastructure, namespace, Catalog::new)).await
}

/// Builds the order history again from the stream of the system in
/// `namespace`, as [`rebuild_catalog`] does the ranking.
///
/// # Errors
///
/// As [`rebuild_catalog`].
pub async fn rebuild_history(
    infrastructure: Infrastructure,
    namespace: &str,
) -> Result<u64, BoxError> {
    Box::pin(rebuild_from_stream(infrastructure, namespace, History::new)).await
}

/// Builds the read model `made` on its schema again from the events of the
/// types it consumes that the system's stream keeps.
async fn rebuild_from_stream<R: ReadModel>(
    infrastructure: Infrastructure,
    namespace: &str,
    made: fn(ServiceDb) -> R,
) -> Result<u64, BoxError> {
    let settings = ServeSettings::of_system(infrastructure, namespace)?;
    let model = made(open(&settings, R::NAME, R::TABLES, 1).await?);
    let context = connect_jetstream(&settings).await?;
    let filter = filter_subject(&settings.subjects(), R::CONSUMES);
    let stream = settings.stream();
    let history = Box::pin(async {
        palisade_outbox::replay(&context, &stream, &filter)
            .await
            .map_err(|error| format!("replaying stream {stream}: {error}").into())
    });
    rebuild(&model, history).await
}
