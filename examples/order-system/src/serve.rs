//! Each service as a process of its own, on real infrastructure:
//! PostgreSQL (a schema per service), NATS JetStream (one stream,
//! [`STREAM`], which every relay publishes to and every service consumes
//! from) and Redis (the gateway's rate limits, cached catalog and sign-in).
//!
//! ```text
//! order-system serve processor --listen 127.0.0.1:9106 --grpc 127.0.0.1:50051
//! order-system serve relay     --listen 127.0.0.1:9105
//! order-system serve inventory --listen 127.0.0.1:9102
//! PAYMENT_VAULT_KEY=$(openssl rand -hex 32) \
//! order-system serve payment   --listen 127.0.0.1:9103 --processor http://127.0.0.1:50051
//! order-system serve shipping  --listen 127.0.0.1:9104
//! order-system serve gateway   --listen 127.0.0.1:8080 --identity identity.json \
//!                              --payment http://127.0.0.1:9103
//! ```
//!
//! - **gateway**: the HTTP API, in front of the orders service (it places
//!   orders and consumes the events that end sagas), auth (its users and
//!   clients from the `--identity` file) and the catalog. It has each
//!   order's card number tokenized by payment (`POST /cards` at
//!   `--payment`) before placing the order. Its `/books` and `/metrics`
//!   are on `--admin-listen` (`127.0.0.1:8081` by default), not on the
//!   public `--listen`; it opens no schema but the orders' and the
//!   catalog's, and the books of the other services come from the
//!   processes `--peers` names.
//! - each of **inventory**, **payment**, **shipping** gives its service's
//!   books at `GET /books` on its `--listen`, read from its own schema.
//! - **inventory**, **payment**, **shipping**: a durable JetStream consumer
//!   each, applying events through the service's inbox. Payment also keeps
//!   the card vault ([`payment::vault`](crate::payment::vault)), its key
//!   from `PAYMENT_VAULT_KEY` (64 hex digits; the same for every replica),
//!   and tokenizes card numbers at `POST /cards` on its `--listen`
//!   address ([`payment::cards`](crate::payment::cards)), which is
//!   internal like every process's `/metrics`.
//! - **relay**: the relays of all four outboxes.
//! - **processor**: the card processor simulator, over gRPC (on loopback
//!   unless `--grpc` says otherwise), with its faults at `/admin/processor`
//!   on its HTTP port, for a bearer token of a user granted the operator
//!   role (checked in the gateways' sign-in store in Redis).
//!
//! Every other process answers `GET /healthz` and `GET /metrics` on its
//! `--listen` address, which is internal. Replicas share the work: consumers of a service bind
//! to the same durable consumer, relays claim batches with `SKIP LOCKED`,
//! gateways share rate limits, cached answers, sign-in codes and tokens
//! through Redis.
//!
//! This module starts a process and holds what every process has
//! ([`serve`]); each part has a file of its own under `serve/`: the
//! settings (`settings.rs`), the stream (`stream.rs`: JetStream, the
//! relays' publisher, each service's durable consumer), one file per role
//! (`gateway.rs`, `consume.rs` for inventory, payment and shipping,
//! `relays.rs`, `processor.rs`), and the commands run against a system on
//! the servers (`namespace.rs`, `read_models.rs`).

mod consume;
mod gateway;
mod namespace;
mod processor;
mod read_models;
mod relays;
mod settings;
mod stream;

pub use namespace::{Removed, remove_namespace};
pub use read_models::{rebuild_catalog, rebuild_history};
pub(crate) use settings::schema;
pub use settings::{Infrastructure, Role, ServeSettings};

use consume::consume;
use gateway::gateway;
use processor::processor;
use relays::relays;
use stream::{connect_jetstream, consumer, ensure_stream, filter_subject, publisher, run_consumer};

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::header;
use axum::routing::get;
use palisade_circuit_breaker::fleet::Fleet;
use palisade_outbox::{BoxError, PgInbox, PgOutbox};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::db::{ServiceDb, redact_url};
use crate::inventory::Inventory;
use crate::orders::Orders;
use crate::payment::Payment;
use crate::payment::cards;
use crate::payment::vault::{Vault, VaultKey};
use crate::processor::{self as card, ProcessorClient};
use crate::service::SagaService;
use crate::shipping::Shipping;
use crate::telemetry::Telemetry;

/// The JetStream stream the saga's events go through (with a namespace
/// `ns`, `ORDERS_NS`). Events are on `orders.order.<type>` (`orders_ns.…`),
/// and each consumer's dead letters on `orders.dead.<service>`, in the same
/// stream.
pub const STREAM: &str = "ORDERS";

/// The first part of every Redis key and channel the system writes, after
/// its namespace (`<namespace>:palisade:order-system:…`, in braces where a
/// key names its Cluster slot): all that
/// [`remove_namespace`] removes.
pub const REDIS_ROOT: &str = "palisade:order-system";

/// Where payment's replicas share their breaker in Redis, under
/// [`REDIS_ROOT`] and the namespace: keys and channel
/// `{palisade:order-system:cb:card-processor}` (the channel with `:dbN`
/// after it on a database N other than 0, as `Fleet::channel` says).
pub const FLEET_FAMILY: &str = "cb";

/// The services that own a database, with their tables.
pub(crate) const DATABASES: [(&str, &[&str]); 4] = [
    (Orders::NAME, Orders::TABLES),
    (Inventory::NAME, Inventory::TABLES),
    (Payment::NAME, Payment::TABLES),
    (Shipping::NAME, Shipping::TABLES),
];

/// Tells every task of a process to stop, and keeps when it did.
#[derive(Debug, Clone)]
struct Stop(Arc<watch::Sender<Option<Instant>>>);

impl Stop {
    fn new() -> Self {
        Self(Arc::new(watch::Sender::new(None)))
    }

    /// Completes once the process is asked to stop.
    fn signal(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut asked = self.0.subscribe();
        async move {
            let _ = asked.wait_for(Option::is_some).await;
        }
    }

    /// Asks every task to stop; asking again changes nothing (the first
    /// time stands).
    fn now(&self) {
        self.0.send_if_modified(|asked| {
            let first = asked.is_none();
            if first {
                *asked = Some(Instant::now());
            }
            first
        });
    }

    /// Completes `grace` after the process was asked to stop: the end of
    /// the time the work under way has to finish.
    fn grace_over(&self, grace: Duration) -> impl Future<Output = ()> + Send + 'static {
        let mut asked = self.0.subscribe();
        async move {
            let at = match asked.wait_for(Option::is_some).await {
                Ok(asked) => *asked,
                Err(_) => None,
            };
            // A grace past what an instant holds is no end.
            match at.and_then(|at| at.checked_add(grace)) {
                Some(over) => tokio::time::sleep_until(over).await,
                None => std::future::pending().await,
            }
        }
    }
}

/// Runs `settings.role` until `shutdown` completes, then lets the work under
/// way finish.
///
/// # Errors
///
/// A server that cannot be reached at start, an address that cannot be
/// bound, or JetStream refusing the stream or consumer.
pub async fn serve(
    settings: ServeSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), BoxError> {
    settings.check()?;
    let stop = Stop::new();
    let asked = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        asked.now();
    });
    let listener = TcpListener::bind(settings.listen).await?;
    tracing::info!(service = settings.role.name(), address = %listener.local_addr()?, "starting");
    let mut process = Process {
        listener,
        telemetry: Telemetry::default(),
        tasks: JoinSet::new(),
        stop: &stop,
        routes: Router::new(),
    };
    match settings.role {
        Role::Processor => processor(&settings, process).await,
        Role::Relay => relays(&settings, process).await,
        Role::Gateway => gateway(&settings, process).await,
        Role::Inventory => {
            let db = open(&settings, Inventory::NAME, Inventory::TABLES, 2).await?;
            consume(&settings, Inventory::new(db).await?, process).await
        }
        Role::Payment => {
            let channel =
                tonic::transport::Endpoint::from_shared(settings.processor.clone())?.connect_lazy();
            let meter = process.telemetry.meter();
            let (channel, breaker) = card::stack(channel, settings.breaker.clone(), &meter);
            // Payment's replicas share the breaker: one's trip opens them
            // all, and one probe a cycle goes to the processor. Without
            // Redis each goes on with its own.
            let redis = redis::Client::open(settings.infrastructure.redis.as_str())
                .map_err(|error| format!("--redis: {error}"))?;
            Fleet::new(redis)
                .prefix(&settings.redis_prefix(FLEET_FAMILY))
                .join(card::BREAKER, &breaker)?;
            let vault_key = match &settings.vault_key {
                Some(key) => key.clone(),
                None => VaultKey::from_env()?,
            };
            let db = open(&settings, Payment::NAME, Payment::TABLES, 2).await?;
            let vault = Vault::open(db.clone(), &vault_key).await?;
            let payment = Payment::new(db.clone(), ProcessorClient::new(channel), vault.clone());
            let (recorder, signal) = (payment.clone(), stop.signal());
            process
                .tasks
                .spawn(async move { recorder.record_transitions(&breaker, signal).await });
            let (charger, signal) = (payment.clone(), stop.signal());
            process
                .tasks
                .spawn(async move { charger.charge_intents(signal).await });
            consume(
                &settings,
                payment,
                process.with_routes(cards::routes(vault)),
            )
            .await
        }
        Role::Shipping => {
            let db = open(&settings, Shipping::NAME, Shipping::TABLES, 2).await?;
            consume(&settings, Shipping::new(db), process).await
        }
    }
}

/// What every process has: its HTTP listener, its metrics, its tasks
/// besides the main one, and the signal to stop.
struct Process<'a> {
    listener: TcpListener,
    telemetry: Telemetry,
    tasks: JoinSet<()>,
    stop: &'a Stop,
    /// Routes the service serves besides `/healthz` and `/metrics`.
    routes: Router,
}

impl<'a> Process<'a> {
    fn into_parts(self) -> (TcpListener, Telemetry, JoinSet<()>, &'a Stop) {
        (self.listener, self.telemetry, self.tasks, self.stop)
    }

    /// Serves `routes` too.
    fn with_routes(mut self, routes: Router) -> Self {
        self.routes = self.routes.merge(routes);
        self
    }
}

async fn open(
    settings: &ServeSettings,
    service: &str,
    tables: &[&str],
    connections: u32,
) -> Result<ServiceDb, BoxError> {
    let schema = settings.schema(service);
    ServiceDb::open_postgres(
        &settings.infrastructure.postgres,
        &schema,
        tables,
        connections,
    )
    .await
    .map_err(|error| format!("PostgreSQL ({service}): {error}").into())
}

fn postgres(db: &ServiceDb) -> (&PgOutbox, &PgInbox) {
    db.as_postgres()
        .unwrap_or_else(|| unreachable!("serve opens PostgreSQL databases only"))
}

/// `/healthz`, and `/metrics`: every instrument of `telemetry`'s meter.
fn internal(telemetry: Telemetry) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(move || async move {
                (
                    [(header::CONTENT_TYPE, crate::telemetry::CONTENT_TYPE)],
                    telemetry.render(),
                )
            }),
        )
}

/// Ends a process's `tasks` once its main work has ended (asked to
/// stop, or its consumer failed): every task is told to stop, and
/// finishes the work under way (a charge at the processor is recorded, a
/// request answered) within `grace` of the stop; what is still running
/// then is cut short.
async fn end_tasks(mut tasks: JoinSet<()>, stop: &Stop, grace: Duration) {
    stop.now();
    let finished = async { while tasks.join_next().await.is_some() {} };
    // From when the stop was asked, not from now: one grace for the whole
    // stop, the consumers' last batch included.
    if tokio::select! {
        biased;
        () = finished => false,
        () = stop.grace_over(grace) => true,
    } {
        tracing::warn!(
            tasks = tasks.len(),
            ?grace,
            "work still under way after the stop's grace; cut short"
        );
        tasks.shutdown().await;
    }
}

/// Runs a process whose work is all in `tasks` until it is asked to
/// stop (or every task has ended), then ends them as [`end_tasks`] does.
async fn run_until_stopped(mut tasks: JoinSet<()>, stop: &Stop, grace: Duration) {
    tokio::select! {
        () = stop.signal() => {}
        () = async { while tasks.join_next().await.is_some() {} } => {}
    }
    end_tasks(tasks, stop, grace).await;
}

async fn serve_http(
    listener: TcpListener,
    app: Router,
    stopped: impl Future<Output = ()> + Send + 'static,
) {
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    if let Err(error) = axum::serve(crate::net::http_listener(listener), app)
        .with_graceful_shutdown(stopped)
        .await
    {
        tracing::error!(%error, "HTTP server stopped");
    }
}

/// Connects to Redis.
async fn connect_redis(
    settings: &ServeSettings,
) -> Result<(redis::Client, redis::aio::ConnectionManager), BoxError> {
    let redis_error = |error: redis::RedisError| {
        format!(
            "Redis at {}: {error}",
            redact_url(&settings.infrastructure.redis)
        )
    };
    let client =
        redis::Client::open(settings.infrastructure.redis.as_str()).map_err(redis_error)?;
    let connection = redis::aio::ConnectionManager::new(client.clone())
        .await
        .map_err(redis_error)?;
    Ok((client, connection))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A grace past what an instant can hold (`Duration::MAX`, "wait as
    /// long as it takes") never ends; it panicked adding to the stop's
    /// instant.
    #[tokio::test]
    async fn a_grace_past_what_an_instant_holds_never_ends() {
        let stop = Stop::new();
        stop.now();
        let over = stop.grace_over(Duration::MAX);
        assert!(
            tokio::time::timeout(Duration::from_millis(10), over)
                .await
                .is_err()
        );
    }
}
