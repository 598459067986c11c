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
//!   public `--listen`.
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

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use palisade_circuit_breaker::CircuitBreaker;
use palisade_coalesce::{Freshness, RedisCache, RedisSettings};
use palisade_outbox::{
    BoxError, ConsumerConfig, JetStreamConsumer, NatsJetStreamPublisher, OutboxConfig, PgInbox,
    PgOutbox, Relay,
};
use palisade_token_bucket::{FailurePolicy, LocalStore, RedisStore};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::auth::{self, Sessions};
use crate::catalog::Catalog;
use crate::db::{ServiceDb, redact_url};
use crate::gateway::{self, Services, Shared};
use crate::identity::{self, Identity};
use crate::inventory::Inventory;
use crate::limits::Limits;
use crate::orders::Orders;
use crate::payment::Payment;
use crate::payment::cards::{self, RemoteVault, Tokenizer};
use crate::payment::vault::{Vault, VaultKey};
use crate::processor::{self as card, ChargeStore, ProcessorClient, ProcessorServer, Simulator};
use crate::service::{Consumers, Consuming, SagaService};
use crate::shipping::Shipping;
use crate::telemetry::Telemetry;

/// The JetStream stream the saga's events go through (with a namespace
/// `ns`, `ORDERS_NS`). Events are on `orders.order.<type>` (`orders_ns.…`),
/// and each consumer's dead letters on `orders.dead.<service>`, in the same
/// stream.
pub const STREAM: &str = "ORDERS";

/// The services that own a database, with their tables.
pub(crate) const DATABASES: [(&str, &[&str]); 4] = [
    (Orders::NAME, Orders::TABLES),
    (Inventory::NAME, Inventory::TABLES),
    (Payment::NAME, Payment::TABLES),
    (Shipping::NAME, Shipping::TABLES),
];

/// What a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The HTTP API, the orders service, auth and the catalog.
    Gateway,
    /// The inventory service's consumer.
    Inventory,
    /// The payment service's consumer.
    Payment,
    /// The shipping service's consumer.
    Shipping,
    /// The relays of every outbox.
    Relay,
    /// The card processor simulator.
    Processor,
}

impl Role {
    /// Every role, in the order a system is best started.
    pub const ALL: [Self; 6] = [
        Self::Processor,
        Self::Relay,
        Self::Inventory,
        Self::Payment,
        Self::Shipping,
        Self::Gateway,
    ];

    /// The role's name on the command line.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::Inventory => Inventory::NAME,
            Self::Payment => Payment::NAME,
            Self::Shipping => Shipping::NAME,
            Self::Relay => "relay",
            Self::Processor => "processor",
        }
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|role| role.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|role| role.name()).collect();
                format!("no service {name:?}; one of {}", names.join(", "))
            })
    }
}

/// Where the servers are. `Debug` shows the URLs without their passwords
/// ([`redact_url`]).
#[derive(Clone, PartialEq, Eq)]
pub struct Infrastructure {
    /// A PostgreSQL URL.
    pub postgres: String,
    /// A NATS URL (JetStream enabled).
    pub nats: String,
    /// A Redis URL.
    pub redis: String,
}

impl std::fmt::Debug for Infrastructure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Infrastructure")
            .field("postgres", &redact_url(&self.postgres))
            .field("nats", &redact_url(&self.nats))
            .field("redis", &redact_url(&self.redis))
            .finish()
    }
}

/// How one process runs.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    /// What it runs.
    pub role: Role,
    /// The servers.
    pub infrastructure: Infrastructure,
    /// Its HTTP address: the API for the gateway, `/healthz` and `/metrics`
    /// (and the processor's `/admin/processor`) for the others.
    pub listen: SocketAddr,
    /// The gateway's admin address, for `/books` and `/metrics`:
    /// `127.0.0.1:8081` by default, loopback.
    pub admin_listen: SocketAddr,
    /// The processor's gRPC address.
    pub grpc: SocketAddr,
    /// The processor's URL, for payment.
    pub processor: String,
    /// Payment's HTTP URL (its `--listen` address), where the gateway
    /// tokenizes card numbers (required for the gateway).
    pub payment: Option<String>,
    /// The card vault's key, for payment; `None`: from
    /// [`PAYMENT_VAULT_KEY`](crate::payment::vault::KEY_VARIABLE).
    pub vault_key: Option<VaultKey>,
    /// The gateway's token buckets: by client address, for signing in,
    /// by user.
    pub limits: Limits,
    /// Payment's circuit breaker in front of the processor.
    pub breaker: palisade_circuit_breaker::Config,
    /// Keeps several systems apart on the same servers (tests running at
    /// once): schemas `<namespace>_<service>`, the stream
    /// `ORDERS_<NAMESPACE>`, Redis keys under it. Empty: none.
    pub namespace: String,
    /// The gateway's identity file: who may sign in, through which
    /// clients (required for the gateway).
    pub identity: Option<PathBuf>,
}

impl ServeSettings {
    /// `role` on `infrastructure`, listening on `listen`; the processor's
    /// gRPC on `127.0.0.1:50051`, the gateway's and payment's defaults.
    #[must_use]
    pub fn new(role: Role, infrastructure: Infrastructure, listen: SocketAddr) -> Self {
        Self {
            role,
            infrastructure,
            listen,
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            grpc: SocketAddr::from(([127, 0, 0, 1], 50051)),
            processor: "http://127.0.0.1:50051".to_owned(),
            payment: None,
            vault_key: None,
            limits: Limits::default(),
            breaker: card::breaker_config(),
            namespace: String::new(),
            identity: None,
        }
    }

    /// `service`'s schema.
    fn schema(&self, service: &str) -> String {
        schema(&self.namespace, service)
    }

    /// `name` in the namespace, joined with `separator`.
    fn namespaced(&self, name: &str, separator: &str) -> String {
        namespaced(&self.namespace, name, separator)
    }

    /// The stream's name.
    fn stream(&self) -> String {
        if self.namespace.is_empty() {
            STREAM.to_owned()
        } else {
            format!("{STREAM}_{}", self.namespace.to_ascii_uppercase())
        }
    }

    /// The prefix of the sign-in store's keys in Redis.
    fn sessions_prefix(&self) -> String {
        self.namespaced("palisade:order-system:auth", ":")
    }

    /// The first token of the stream's subjects.
    fn subjects(&self) -> String {
        self.stream().to_ascii_lowercase()
    }

    fn check(&self) -> Result<(), String> {
        let ns = &self.namespace;
        if !ns.is_empty() && !crate::db::is_identifier(ns) {
            return Err(format!(
                "namespace {ns:?}: lowercase letters, digits and `_`, starting with a letter"
            ));
        }
        Ok(())
    }
}

/// `service`'s schema in `namespace` (empty: none): `NS_service`.
pub(crate) fn schema(namespace: &str, service: &str) -> String {
    namespaced(namespace, service, "_")
}

/// `name` in `namespace` (empty: none), joined with `separator`.
fn namespaced(namespace: &str, name: &str, separator: &str) -> String {
    if namespace.is_empty() {
        name.to_owned()
    } else {
        format!("{namespace}{separator}{name}")
    }
}

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
    let mut settings = ServeSettings::new(
        Role::Gateway,
        infrastructure,
        SocketAddr::from(([127, 0, 0, 1], 0)),
    );
    settings.namespace = namespace.to_owned();
    settings.check()?;
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

/// Removes every trace of the system in `namespace` from the servers: the
/// services' and the processor's schemas, the stream, and the Redis keys
/// (rate limits, cached answers, sign-in), so that a namespace used for a
/// test or a measurement leaves nothing behind. Its processes must be
/// stopped first. What is already gone is skipped.
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
    let mut settings = ServeSettings::new(
        Role::Relay,
        infrastructure,
        SocketAddr::from(([127, 0, 0, 1], 0)),
    );
    settings.namespace = namespace.to_owned();
    settings.check()?;
    let mut removed = Removed::default();

    let mut db =
        <sqlx::PgConnection as sqlx::Connection>::connect(&settings.infrastructure.postgres)
            .await
            .map_err(|error| format!("PostgreSQL: {error}"))?;
    let services = DATABASES.iter().map(|(service, _)| *service);
    for service in services.chain([Catalog::NAME, Role::Processor.name()]) {
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
    // Every key the system writes is under `namespaced(…, ":")`.
    let pattern = format!("{}*", settings.namespaced("", ":"));
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
    Ok(removed)
}

/// Tells every task of a process to stop.
#[derive(Debug, Clone)]
struct Stop(watch::Receiver<bool>);

impl Stop {
    /// Completes once the process is asked to stop.
    fn signal(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stopped = self.0.clone();
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
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
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let stop = Stop(stopped);
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

async fn connect_jetstream(settings: &ServeSettings) -> Result<jetstream::Context, BoxError> {
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
async fn ensure_stream(
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

fn publisher(
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
fn filter_subject(subjects: &str, consumes: &[&str]) -> String {
    match consumes {
        [only] => format!("{subjects}.order.{only}"),
        _ => format!("{subjects}.order.>"),
    }
}

/// `service`'s durable consumer of the saga's events it consumes.
async fn consumer<S: SagaService>(
    settings: &ServeSettings,
    service: S,
) -> Result<Arc<JetStreamConsumer<PgInbox, Consuming<S>>>, BoxError> {
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
    .ack_wait(Duration::from_secs(10));
    let inbox = inbox.clone();
    let consumer = JetStreamConsumer::new(context, config, inbox, Consuming(service))
        .await?
        .only(S::CONSUMES.iter().copied());
    Ok(Arc::new(consumer))
}

/// Runs `service`'s consumer (see [`consumer`]) with `/healthz`, `/metrics`
/// and the process's routes on its listener, and forgets its inbox records
/// once JetStream can no longer bring them back.
async fn consume<S: SagaService>(
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

async fn serve_http(
    listener: TcpListener,
    app: Router,
    stopped: impl Future<Output = ()> + Send + 'static,
) {
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    if let Err(error) = axum::serve(listener, app)
        .with_graceful_shutdown(stopped)
        .await
    {
        tracing::error!(%error, "HTTP server stopped");
    }
}

/// The relays of every service's outbox, each woken by `LISTEN`, all
/// publishing through one circuit breaker in front of NATS (reported as
/// `nats`): once it finds the broker down, the four relays stop calling it
/// and wait for its probe instead of timing out a batch each.
async fn relays(settings: &ServeSettings, process: Process<'_>) -> Result<(), BoxError> {
    let (listener, telemetry, mut tasks, stop) = process.into_parts();
    let context = connect_jetstream(settings).await?;
    let meter = telemetry.meter();
    let broker = CircuitBreaker::new(broker_breaker_config());
    broker.instrument(&meter, "nats");
    for (service, tables) in DATABASES {
        let db = open(settings, service, tables, 2).await?;
        let (outbox, _) = postgres(&db);
        outbox.listen().await?;
        ensure_stream(settings, &context, outbox.config()).await?;
        let relay = Relay::new(outbox.clone(), publisher(settings, &context, service))
            .circuit_breaker(broker.clone())
            .instrument(&meter, service);
        tasks.spawn(relay.run(stop.signal()));
    }
    tasks.spawn(serve_http(listener, internal(telemetry), stop.signal()));
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// The relays' breaker in front of NATS: it opens once half of the last
/// publishes (5 at least) found the broker unavailable, and probes after
/// 1 s, then 2 s, 4 s, … up to 30 s while the outage lasts. A publish the
/// broker answers, refused or not, counts as a success.
fn broker_breaker_config() -> palisade_circuit_breaker::Config {
    palisade_circuit_breaker::Config::builder()
        .minimum_calls(5)
        .open_duration(Duration::from_secs(1))
        .open_backoff(2.0, Duration::from_secs(30))
        .build()
        .unwrap_or_else(|_| unreachable!("a valid breaker config"))
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

/// The card processor over gRPC on `settings.grpc`, its faults on
/// `listener`'s `/admin/processor` for operators signed in at a gateway.
async fn processor(settings: &ServeSettings, process: Process<'_>) -> Result<(), BoxError> {
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

/// The gateway: the API, the orders service (placing orders, and its
/// consumer ending sagas), auth and the catalog; rate limits, the
/// catalog's cache and sign-in in Redis.
async fn gateway(settings: &ServeSettings, process: Process<'_>) -> Result<(), BoxError> {
    let identity = Identity::load(settings.identity.as_deref().ok_or(
        "the gateway needs --identity FILE (or PALISADE_IDENTITY): who may sign in \
         (`order-system identity DIR` makes one with demo users)",
    )?)?;
    let cards = RemoteVault::new(settings.payment.as_deref().ok_or(
        "the gateway needs --payment URL (or PALISADE_PAYMENT): payment's HTTP address, \
         where card numbers are tokenized",
    )?)?;
    let admin_listener = TcpListener::bind(settings.admin_listen)
        .await
        .map_err(|error| format!("--admin-listen {}: {error}", settings.admin_listen))?;
    let (listener, telemetry, mut tasks, stop) = process.into_parts();
    // This gateway's consumer wakes the requests waiting for the ends it
    // commits; the re-reads catch those another gateway's consumer
    // commits (its replicas share the durable consumer), a quarter of a
    // second late at most.
    let orders = Orders::new(open(settings, Orders::NAME, Orders::TABLES, 8).await?)
        .reread_ends(Duration::from_millis(250));
    let inventory =
        Inventory::new(open(settings, Inventory::NAME, Inventory::TABLES, 2).await?).await?;
    let payment = open(settings, Payment::NAME, Payment::TABLES, 1).await?;
    let shipping = open(settings, Shipping::NAME, Shipping::TABLES, 1).await?;
    let meter = telemetry.meter();
    let catalog =
        Catalog::new(open(settings, Catalog::NAME, Catalog::TABLES, 2).await?).instrument(&meter);

    let (client, connection) = connect_redis(settings).await?;
    // Redis down: each gateway limits alone with the same bucket, rather
    // than refusing everyone or letting everyone through. Each bucket has
    // its keys under a prefix of its own.
    let limits = settings.limits.stored(|name, bucket| {
        RedisStore::new(
            connection.clone(),
            FailurePolicy::Fallback {
                store: LocalStore::default(),
                bucket,
            },
        )
        .prefix(&settings.namespaced(&format!("palisade:order-system:rl:{name}"), ":"))
        // Redis shares the gateway's cores: under full load a 10 ms answer
        // is late for reasons that are not Redis's; 50 ms still fails fast.
        .timeout(Duration::from_millis(50))
        .instrument(&meter, name)
    });
    let trending = RedisCache::<_, tower::BoxError>::connect(
        &client,
        connection.clone(),
        RedisSettings::new(Freshness::new(Duration::from_secs(5)))
            .prefix(&settings.namespaced("palisade:order-system:catalog", ":")),
    )
    .await
    .map_err(|error| {
        format!(
            "Redis at {}: {error}",
            redact_url(&settings.infrastructure.redis)
        )
    })?;
    trending.instrument(&meter, "trending");

    // The catalog's read model is kept beside the API that serves it.
    let projection = consumer(settings, catalog.clone()).await?;
    let consumer = consumer(settings, orders.clone()).await?;
    let consumers = Consumers::default();
    consumers.add(Orders::NAME, consumer.clone());
    consumers.add(Catalog::NAME, projection.clone());
    let services = Services {
        telemetry,
        processor: None,
        breaker: None,
        auth: auth::Auth::new(
            identity,
            Sessions::redis(connection.clone(), &settings.sessions_prefix()),
        ),
        catalog,
        orders,
        inventory,
        payment,
        cards: Tokenizer::Remote(Box::new(cards)),
        shipping,
        consumers,
    };
    let shared = Shared { limits, trending };
    let admin = gateway::admin_router(services.clone());
    let app = gateway::router(services, shared, &meter);
    tasks.spawn(serve_http(listener, app, stop.signal()));
    tasks.spawn(serve_http(admin_listener, admin, stop.signal()));
    let signal = stop.signal();
    tasks.spawn(async move {
        if let Err(error) = projection.run(signal).await {
            tracing::error!(%error, "the catalog's consumer stopped");
        }
    });
    let consumed = consumer.run(stop.signal()).await;
    while tasks.join_next().await.is_some() {}
    consumed
}
