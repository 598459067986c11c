//! The read models, built again from the stream while the system runs.

use palisade_outbox::BoxError;

use super::{Infrastructure, ServeSettings, connect_jetstream, filter_subject, open};
use crate::catalog::Catalog;
use crate::service::SagaService;

/// Builds the catalog's ranking again from the stream of the system in
/// `namespace` (empty: the default system), while it may be running:
/// see [`Catalog::rebuild`]. Returns the events applied.
///
/// # Errors
///
/// The namespace is not a name, or PostgreSQL or JetStream failed (the
/// stream must exist: the system ran at least once).
pub async fn rebuild_catalog(
    infrastructure: Infrastructure,
    namespace: &str,
) -> Result<u64, BoxError> {
    let settings = ServeSettings::of_system(infrastructure, namespace)?;
    let catalog = Catalog::new(open(&settings, Catalog::NAME, Catalog::TABLES, 1).await?);
    let context = connect_jetstream(&settings).await?;
    let filter = filter_subject(&settings.subjects(), Catalog::CONSUMES);
    let stream = settings.stream();
    // Boxed: reading a stream is a large future to hold in the rebuild's.
    let history = Box::pin(async {
        palisade_outbox::replay(&context, &stream, &filter)
            .await
            .map_err(|error| format!("replaying stream {stream}: {error}").into())
    });
    catalog.rebuild(history).await
}
