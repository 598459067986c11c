//! Every service in one process: SQLite files in a data directory, the
//! in-process [`HandoffBroker`] (a publish is acknowledged once its
//! consumers applied the event, so a crash or Ctrl-C leaves what they had
//! not in the outbox, published again on the next start), one relay per
//! outbox, one consumer per service. With several [cells](Settings::cells),
//! each cell has all of that of its own, in a directory of its own, and
//! the gateway routes each user to one.
//!
//! Who may sign in comes from an identity file
//! ([`identity`](crate::identity)); without one, the data directory's,
//! made with demo users and generated passwords on first start
//! ([`seed_demo`]). The card vault's key is the data directory's
//! `payment-vault.key`, made on first start (see
//! [`VaultKey::load_or_create`]): next to the data it protects, which is
//! for a demo only; real infrastructure takes it from configuration.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use palisade_outbox::{HandoffBroker, MemoryConsumer, Relay, SqliteInbox, SqliteOutbox};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::catalog::Catalog;
use crate::db::ServiceDb;
use crate::gateway::{self, Services, Steps};
use crate::history::History;
use crate::identity::{Identity, Seeded, seed_demo};
use crate::inventory::Inventory;
use crate::orders::Orders;
use crate::payment::Payment;
use crate::payment::cards::Tokenizer;
use crate::payment::vault::{self, Vault, VaultKey};
use crate::processor::{self as card, ChargeStore, ProcessorClient, ProcessorServer, Simulator};
use crate::service::{Consumers, Consuming, INBOX_KEPT, SagaService};
use crate::shipping::Shipping;

/// Where and how the embedded system runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The directory of the SQLite files (created if missing).
    pub data_dir: PathBuf,
    /// Where the gateway listens (port 0: any free port).
    pub listen: SocketAddr,
    /// Where the gateway's admin routes (`/books`, `/metrics`) listen:
    /// `127.0.0.1:8081` by default, loopback.
    pub admin_listen: SocketAddr,
    /// The gateway's token buckets: by client address, for signing in,
    /// by user.
    pub limits: crate::limits::Limits,
    /// Adjusts the catalog (its query's delay, its freshness).
    pub catalog: fn(Catalog) -> Catalog,
    /// The circuit breaker on payment's channel to the card processor.
    pub breaker: palisade_circuit_breaker::Config,
    /// The identity file; `None`: the data directory's, with demo users
    /// made on first start.
    pub identity: Option<PathBuf>,
    /// How many `load-NN` demo users a first start makes (one per load
    /// worker gives each worker a rate limit of its own).
    pub demo_load_users: usize,
    /// What the gateway promises (see
    /// [`objectives`](crate::objectives)).
    pub objectives: crate::objectives::Objectives,
    /// How many cells (1 to 26, named `a` to `z`): each a complete saga
    /// stack (orders, inventory, payment with its own card processor,
    /// shipping, history) with its own SQLite files, in `cell-<name>` under
    /// the data directory when there are several. The gateway routes each
    /// signed-in user to one cell by a hash of their id
    /// ([`palisade_traffic::CellRouter`]), so one cell's failure touches
    /// only its users; sign-in and the catalog are shared.
    pub cells: usize,
}

impl Settings {
    /// The defaults: `./order-system-data`, `127.0.0.1:8080`,
    /// the default [`Limits`](crate::limits::Limits), the data directory's identity with 64 demo
    /// load users.
    #[must_use]
    pub fn new(data_dir: PathBuf, listen: SocketAddr) -> Self {
        Self {
            data_dir,
            listen,
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            limits: crate::limits::Limits::default(),
            catalog: |catalog| catalog,
            breaker: card::breaker_config(),
            identity: None,
            demo_load_users: 64,
            objectives: crate::objectives::Objectives::default(),
            cells: 1,
        }
    }
}

/// The most cells: one per letter.
pub const MAX_CELLS: usize = 26;

/// One cell of the running system.
#[derive(Debug, Clone)]
pub struct Cell {
    /// Its name (`a`, `b`, …), in `/cells/{name}/…` on the admin
    /// listener.
    pub name: String,
    /// Its services (sign-in and the catalog are the whole system's).
    pub services: Services,
    /// Its inventory, payment and shipping.
    pub steps: Steps,
}

/// The running system.
#[derive(Debug)]
pub struct System {
    /// Where the gateway listens.
    pub address: SocketAddr,
    /// Where the gateway's admin routes listen.
    pub admin_address: SocketAddr,
    /// The first cell's services (every service, with one cell), for
    /// checks from the same process.
    pub services: Services,
    /// The first cell's inventory, payment and shipping (also in
    /// [`services`](Self::services), which may have none).
    pub steps: Steps,
    /// Every cell, the first one first.
    pub cells: Vec<Cell>,
    /// Which cell serves which user: the gateway's routing table.
    pub routing: palisade_traffic::Cells<axum::Router>,
    /// The demo identity and its passwords, unless an identity file was
    /// given.
    pub demo: Option<Seeded>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    processor_tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The saga consumers' capacity of events queued each.
const QUEUE: usize = 4096;

impl System {
    /// Opens the databases, starts the relays, the consumers and the
    /// gateway, for each cell.
    ///
    /// # Errors
    ///
    /// A number of cells out of 1 to 26, a database or the listening
    /// socket could not be opened, the identity could not be read or made,
    /// or a card vault's key could not be read or made, or does not open
    /// the cards stored.
    pub async fn start(
        settings: Settings,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        if !(1..=MAX_CELLS).contains(&settings.cells) {
            return Err(format!(
                "{} cells: the embedded system runs 1 to {MAX_CELLS}",
                settings.cells
            )
            .into());
        }
        // The addresses asked for are bound first, before anything of the
        // system's own takes a port (each cell's card processor listens on
        // a port the system picks, which may be one of these).
        let bind = |address: SocketAddr, what: &'static str| async move {
            TcpListener::bind(address)
                .await
                .map_err(|error| format!("{what} {address}: {error}"))
        };
        let listener = bind(settings.listen, "listen").await?;
        let address = listener.local_addr()?;
        let admin_listener = bind(settings.admin_listen, "admin listen").await?;
        let admin_address = admin_listener.local_addr()?;
        std::fs::create_dir_all(&settings.data_dir)?;
        let dir = &settings.data_dir;
        let (identity, demo) = match &settings.identity {
            Some(path) => (Identity::load(path)?, None),
            None => {
                let seeded = seed_demo(dir, settings.demo_load_users).await?;
                (Identity::load(&seeded.identity)?, Some(seeded))
            }
        };
        let (stop, stopped) = watch::channel(false);
        let until_stopped = move || {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            }
        };
        let mut running = Running {
            tasks: JoinSet::new(),
            processors: Vec::new(),
        };
        // The gateway's metrics, and the first cell's.
        let telemetry = crate::telemetry::Telemetry::default();
        let meter = telemetry.meter();
        // Shared by every cell: who is signed in, and the catalog (fed by
        // every cell's shipments).
        let auth = crate::auth::Auth::new(identity, crate::auth::Sessions::default());
        let catalog = (settings.catalog)(
            Catalog::new(ServiceDb::open_sqlite(dir, Catalog::NAME, Catalog::TABLES).await?)
                .instrument(&meter),
        );
        let mut cells = Vec::with_capacity(settings.cells);
        for (index, name) in ('a'..='z').take(settings.cells).enumerate() {
            let cell_dir = if settings.cells == 1 {
                dir.clone()
            } else {
                dir.join(format!("cell-{name}"))
            };
            std::fs::create_dir_all(&cell_dir)?;
            let shared = CellShared {
                telemetry: if index == 0 {
                    telemetry.clone()
                } else {
                    crate::telemetry::Telemetry::default()
                },
                auth: auth.clone(),
                catalog: catalog.clone(),
                breaker: settings.breaker.clone(),
            };
            let (services, steps) =
                start_cell(&cell_dir, shared, &mut running, &until_stopped).await?;
            cells.push(Cell {
                name: name.to_string(),
                services,
                steps,
            });
        }

        let shared = gateway::Shared {
            objectives: settings.objectives,
            ..gateway::Shared::local(settings.limits, &meter)
        };
        let (app, routing) = gateway::cells_router(
            cells
                .iter()
                .map(|cell| (cell.name.clone(), cell.services.clone()))
                .collect(),
            shared,
            &meter,
        )?;
        // The unprefixed admin routes are the first cell's, but for
        // `/books`, which adds up every cell's (what the load command
        // checks); `/cells/NAME/…` are each cell's own.
        let first = cells[0].clone();
        let first_routes = gateway::admin_routes(first.services.clone());
        let first_admin = first_routes
            .clone()
            .merge(gateway::books_route(first.services.clone()));
        let mut admin = if cells.len() > 1 {
            first_routes.merge(gateway::cells_books_route(
                cells
                    .iter()
                    .map(|cell| (cell.name.clone(), cell.services.clone()))
                    .collect(),
            ))
        } else {
            first_admin.clone()
        };
        if cells.len() > 1 {
            for cell in &cells {
                let cell_admin = if cell.name == first.name {
                    first_admin.clone()
                } else {
                    gateway::admin_router(cell.services.clone())
                };
                admin = admin.nest(&format!("/cells/{}", cell.name), cell_admin);
            }
        }
        for (listener, app) in [(listener, app), (admin_listener, admin)] {
            let shutdown = until_stopped();
            running.tasks.spawn(async move {
                let app = app.into_make_service_with_connect_info::<SocketAddr>();
                if let Err(error) = axum::serve(crate::net::http_listener(listener), app)
                    .with_graceful_shutdown(shutdown)
                    .await
                {
                    tracing::error!(%error, "gateway stopped");
                }
            });
        }
        tracing::info!(%address, %admin_address, cells = cells.len(), data_dir = %settings.data_dir.display(), "order system running (embedded)");
        Ok(Self {
            address,
            admin_address,
            services: first.services,
            steps: first.steps,
            cells,
            routing,
            demo,
            stop,
            tasks: running.tasks,
            processor_tasks: running.processors,
        })
    }

    /// The cell serving `user`.
    ///
    /// # Panics
    ///
    /// Never: every user is routed to one of [`cells`](Self::cells).
    #[must_use]
    pub fn cell_of(&self, user: &str) -> &Cell {
        let name = self
            .routing
            .cell_of(user)
            .unwrap_or_else(|| unreachable!("the routing table routes every key"));
        self.cells
            .iter()
            .find(|cell| *cell.name == *name)
            .unwrap_or_else(|| unreachable!("the routing table names the system's cells"))
    }

    /// Stops every task, letting the batch or message under way finish,
    /// then the card processors. Requests waiting for a saga's end are
    /// answered at once, with their order as it stands.
    pub async fn stop(mut self) {
        for cell in &self.cells {
            cell.services.orders.end_waits();
        }
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
        for processor in self.processor_tasks {
            processor.abort();
        }
    }
}

/// What a cell takes from the whole system.
struct CellShared {
    /// Where its metrics go.
    telemetry: crate::telemetry::Telemetry,
    auth: crate::auth::Auth,
    catalog: Catalog,
    /// Its breaker's configuration.
    breaker: palisade_circuit_breaker::Config,
}

/// The system's tasks: relays, consumers and listeners until stopped, and
/// the card processors, stopped last.
struct Running {
    tasks: JoinSet<()>,
    processors: Vec<tokio::task::JoinHandle<()>>,
}

/// Starts a cell in `dir`: its databases, its card processor, its broker
/// with a relay per outbox and a consumer per service (the shared
/// catalog's among them), until `until_stopped` ends.
async fn start_cell<F>(
    dir: &std::path::Path,
    shared: CellShared,
    running: &mut Running,
    until_stopped: &impl Fn() -> F,
) -> Result<(Services, Steps), Box<dyn std::error::Error + Send + Sync>>
where
    F: Future<Output = ()> + Send + 'static,
{
    let CellShared {
        telemetry,
        auth,
        catalog,
        breaker,
    } = shared;
    let meter = telemetry.meter();
    // Every end is committed by this process's consumer, which wakes
    // its waiters: re-reading is only a safety net here.
    let orders = Orders::new(ServiceDb::open_sqlite(dir, Orders::NAME, Orders::TABLES).await?)
        .reread_ends(Duration::from_secs(1));
    let inventory =
        Inventory::new(ServiceDb::open_sqlite(dir, Inventory::NAME, Inventory::TABLES).await?)
            .await?;

    // The card processor, served over gRPC on a loopback port of its
    // own, its charges in a file of its own; payment reaches it through
    // trace context, retry and a circuit breaker.
    let simulator = Simulator::new(ChargeStore::open_sqlite(dir).await?);
    let processor_listener = TcpListener::bind("127.0.0.1:0").await?;
    let processor_address = processor_listener.local_addr()?;
    // Stopped last, by `stop`: payment's channel keeps a connection to
    // it open, and the payment under way may still need it.
    let serving = tonic::transport::Server::builder()
        .add_service(ProcessorServer::new(simulator.clone()))
        .serve_with_incoming(crate::net::grpc_incoming(processor_listener));
    running.processors.push(tokio::spawn(async move {
        if let Err(error) = serving.await {
            tracing::error!(%error, "card processor stopped");
        }
    }));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{processor_address}"))?
        .connect_lazy();
    let (channel, breaker) = card::stack(channel, breaker, &meter);
    // The card vault's key: made in the data directory on first
    // start (0600), read from there after.
    let payment_db = ServiceDb::open_sqlite(dir, Payment::NAME, Payment::TABLES).await?;
    let vault_key = VaultKey::load_or_create(&dir.join(vault::KEY_FILE))?;
    let vault = Vault::open(payment_db.clone(), &vault_key).await?;
    let payment = Payment::new(payment_db, ProcessorClient::new(channel), vault.clone());
    let shipping =
        Shipping::new(ServiceDb::open_sqlite(dir, Shipping::NAME, Shipping::TABLES).await?);
    let history = History::new(ServiceDb::open_sqlite(dir, History::NAME, History::TABLES).await?)
        .instrument(&meter);

    // Every consumer subscribes before any relay publishes: the broker
    // hands an event only to the subscriptions it has.
    let broker = HandoffBroker::new(QUEUE);
    let consumers = Consumers::default();
    let tasks = &mut running.tasks;
    spawn_consumer(&consumers, tasks, &broker, orders.clone(), until_stopped());
    spawn_consumer(
        &consumers,
        tasks,
        &broker,
        inventory.clone(),
        until_stopped(),
    );
    spawn_consumer(&consumers, tasks, &broker, payment.clone(), until_stopped());
    spawn_consumer(
        &consumers,
        tasks,
        &broker,
        shipping.clone(),
        until_stopped(),
    );
    spawn_consumer(&consumers, tasks, &broker, catalog.clone(), until_stopped());
    spawn_consumer(&consumers, tasks, &broker, history.clone(), until_stopped());
    for (name, db) in [
        (Orders::NAME, orders.db()),
        (Inventory::NAME, inventory.db()),
        (Payment::NAME, payment.db()),
        (Shipping::NAME, shipping.db()),
    ] {
        let relay = Relay::new(sqlite(db).0.clone(), broker.clone()).instrument(&meter, name);
        tasks.spawn(relay.run(until_stopped()));
    }
    {
        let (recorder, breaker, stopped) = (payment.clone(), breaker.clone(), until_stopped());
        tasks.spawn(async move { recorder.record_transitions(&breaker, stopped).await });
        let (charger, stopped) = (payment.clone(), until_stopped());
        tasks.spawn(async move { charger.charge_intents(stopped).await });
    }
    let steps = Steps {
        inventory,
        payment,
        shipping,
    };
    let services = Services {
        telemetry,
        processor: Some(simulator),
        breaker: Some(breaker),
        auth,
        catalog,
        history,
        orders,
        steps: Some(steps.clone()),
        cards: Tokenizer::InProcess(vault),
        consumers,
        peers: Vec::new(),
    };
    Ok((services, steps))
}

/// The outbox and inbox of a database the embedded system opened.
fn sqlite(db: &ServiceDb) -> (&SqliteOutbox, &SqliteInbox) {
    db.as_sqlite()
        .unwrap_or_else(|| unreachable!("the embedded system opens SQLite files only"))
}

/// Runs `service`'s consumer of `broker`'s events in `tasks` until
/// `shutdown`, its counters counted in `consumers`.
fn spawn_consumer<S: SagaService>(
    consumers: &Consumers,
    tasks: &mut JoinSet<()>,
    broker: &HandoffBroker,
    service: S,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let (outbox, inbox) = sqlite(service.db());
    let (outbox, inbox) = (outbox.clone(), inbox.clone());
    let consumer = Arc::new(
        MemoryConsumer::new(S::NAME, inbox, Consuming(service, outbox))
            .only(S::CONSUMES.iter().copied())
            .keep_records(INBOX_KEPT),
    );
    consumers.add(S::NAME, consumer.clone());
    let subscription = broker.subscribe_to(S::CONSUMES.iter().copied());
    tasks.spawn(async move { consumer.run(subscription, shutdown).await });
}
