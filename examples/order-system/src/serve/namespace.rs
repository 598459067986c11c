//! A system run in a namespace, removed from the servers once its
//! processes stopped ([`remove_namespace`]).

use async_nats::jetstream;
use palisade_outbox::BoxError;

use super::{DATABASES, Infrastructure, Role, ServeSettings, connect_jetstream, connect_redis};
use crate::catalog::Catalog;
use crate::history::History;
use crate::service::SagaService;

/// What [`remove_namespace`] removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Removed {
    /// PostgreSQL schemas dropped.
    pub schemas: u64,
    /// Whether the namespace's JetStream stream was there and is deleted.
    pub stream: bool,
    /// Redis keys deleted.
    pub keys: u64,
}

/// Removes every trace of the system in `namespace` from the servers: the
/// services' and the processor's schemas, the stream, and the Redis keys
/// (rate limits, cached answers, sign-in), so that a namespace used for a
/// test or a measurement leaves nothing behind. Its processes must be
/// stopped first. What is already gone is skipped. (The services'
/// entries in the account's `palisade_consumers` bucket, which their
/// consumers remove when they stop, run out within a minute otherwise;
/// the bucket is every durable's and stays.)
///
/// # Errors
///
/// An empty namespace (the default system is never removed this way), one
/// that is not an identifier, or a server's error.
pub async fn remove_namespace(
    infrastructure: Infrastructure,
    namespace: &str,
) -> Result<Removed, BoxError> {
    if namespace.is_empty() {
        return Err("refusing to remove the default system: name a --namespace".into());
    }
    let settings = ServeSettings::of_system(infrastructure, namespace)?;
    let mut removed = Removed::default();

    let mut db =
        <sqlx::PgConnection as sqlx::Connection>::connect(&settings.infrastructure.postgres)
            .await
            .map_err(|error| format!("PostgreSQL: {error}"))?;
    let services = DATABASES.iter().map(|(service, _)| *service);
    for service in services.chain([Catalog::NAME, History::NAME, Role::Processor.name()]) {
        let schema = settings.schema(service);
        let existed: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM information_schema.schemata WHERE schema_name = $1)",
        )
        .bind(&schema)
        .fetch_one(&mut db)
        .await?;
        // `schema` is an identifier: checked above.
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .execute(&mut db)
            .await?;
        removed.schemas += u64::from(existed);
    }

    let context = connect_jetstream(&settings).await?;
    removed.stream = match context.delete_stream(settings.stream()).await {
        Ok(_) => true,
        Err(error)
            if matches!(
                error.kind(),
                jetstream::context::DeleteStreamErrorKind::JetStream(ref js)
                    if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            ) =>
        {
            false
        }
        Err(error) => return Err(format!("stream {}: {error}", settings.stream()).into()),
    };

    let (_, mut redis) = connect_redis(&settings).await?;
    // Every key the system writes begins with its root in the namespace,
    // some in braces (one Redis Cluster slot a key: rate limits, the
    // breaker payment's replicas share). Nothing else is matched: the
    // namespace's name alone (`palisade:*`) matched the default system's
    // keys, and any other application's under that name.
    let root = settings.redis_root();
    for pattern in [format!("{root}:*"), format!("{{{root}:*")] {
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut redis)
                .await?;
            if !keys.is_empty() {
                let deleted: u64 = redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async(&mut redis)
                    .await?;
                removed.keys += deleted;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(removed)
}
