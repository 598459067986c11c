//! `order-system`: runs the order system, or places load on it.
//!
//! The command line is [`Cli`]; `order-system help COMMAND` (or
//! `COMMAND --help`) says what each command takes, with the environment
//! variables its flags fall back on.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use palisade_order_system::dead_events::{self, Location, Requeue};
use palisade_order_system::embedded::{Settings, System};
use palisade_order_system::identity::{self, Credential, Credentials};
use palisade_order_system::load::{self, Gateway, LoadSettings, Progress};
use palisade_order_system::serve::{self, Infrastructure, Role, ServeSettings};

/// Runs the palisade order system (order → inventory → payment → shipping,
/// with compensations), or places load on it.
///
/// Without a command, runs every service in one process (`run`).
#[derive(Debug, Parser)]
#[command(
    name = "order-system",
    version,
    args_conflicts_with_subcommands = true,
    after_help = "An identity file is JSON: {\"users\": [{\"name\", \"password_hash\" \
                  (Argon2id PHC string), \"roles\": [\"operator\"]}], \"clients\": \
                  [{\"client_id\", \"redirect_uris\": [...]}]}"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// `run`'s flags, when no command is named.
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every service in one process, on SQLite files and an in-process
    /// broker (the default).
    ///
    /// Who may sign in comes from --identity, else from DIR/identity.json,
    /// made on first start with demo users whose generated passwords are in
    /// DIR/credentials.json. The card vault's key is DIR/payment-vault.key,
    /// made on first start.
    Run(RunArgs),
    /// Places orders through the gateway, waits for every saga and checks
    /// the books.
    ///
    /// Each worker signs in once as a user of the credentials file granted
    /// no role. With --processor-outage, the card processor (every cell's)
    /// is down for that long once a quarter of the orders are placed, set
    /// by the file's operator through the gateway, or at --processor-admin.
    Load(LoadArgs),
    /// One service as a process of its own, on PostgreSQL, NATS JetStream
    /// and Redis.
    ///
    /// Payment's card vault key comes from PAYMENT_VAULT_KEY (64 hex digits,
    /// the same for every replica; required for payment).
    Serve(ServeArgs),
    /// Writes DIR/identity.json with demo users (alice, bob, operator with
    /// the operator role, and load users) and DIR/credentials.json with
    /// their generated passwords, unless DIR/identity.json exists.
    Identity(IdentityArgs),
    /// Signs in with the PKCE flow and prints the bearer token.
    Token(TokenArgs),
    /// The events a service's outbox gave up on after their last attempt.
    #[command(subcommand)]
    DeadEvents(DeadEvents),
    /// Removes a system run with --namespace NS from the servers (its
    /// schemas, its stream, its Redis keys), once its processes stopped.
    RemoveNamespace(OnServers),
    /// Builds the catalog's ranking (a read model of the saga's events)
    /// again from the stream, while the system may be running: every
    /// ShippingScheduled the stream keeps is replayed into the catalog's
    /// schema.
    RebuildCatalog(OnServers),
    /// Builds the order history (a read model of the saga's events) again
    /// from the stream, while the system may be running: every
    /// OrderCreated, OrderConfirmed and OrderCancelled the stream keeps is
    /// replayed into the history's schema.
    RebuildHistory(OnServers),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The data directory: one SQLite file per service, the demo users, the
    /// vault key.
    #[arg(long, value_name = "DIR", default_value = "order-system-data")]
    data: PathBuf,
    /// The gateway's public address.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The gateway's admin address, for /books, /metrics and /admin
    /// (keep it on loopback or a private network).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8081")]
    admin_listen: SocketAddr,
    /// Cells: complete saga stacks (each with its own SQLite files and
    /// card processor, in DIR/cell-a, DIR/cell-b, …), each signed-in user
    /// served by one, chosen by a hash of their id. Each cell's books and
    /// metrics are at /cells/NAME/books and /cells/NAME/metrics on the
    /// admin address; /books adds up every cell's.
    #[arg(long, value_name = "N", default_value_t = 1,
        value_parser = clap::value_parser!(u8).range(1..=26))]
    cells: u8,
    #[command(flatten)]
    identity: IdentityFile,
}

/// Who may sign in.
#[derive(Debug, Args)]
struct IdentityFile {
    /// Who may sign in: an identity file (see `order-system --help`).
    #[arg(long = "identity", value_name = "FILE", env = "PALISADE_IDENTITY")]
    file: Option<PathBuf>,
}

impl IdentityFile {
    /// The file, unless its variable is set but empty.
    fn path(self) -> Option<PathBuf> {
        self.file.filter(|file| !file.as_os_str().is_empty())
    }
}

#[derive(Debug, Args)]
struct LoadArgs {
    /// The gateway's public URL.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8080")]
    gateway: String,
    /// The gateway's admin URL, where the books are read.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8081")]
    admin: String,
    #[command(flatten)]
    credentials: CredentialsFile,
    /// Orders to place.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    orders: usize,
    /// Orders in flight at once.
    #[arg(long, value_name = "C", default_value_t = 64,
          value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
    /// The share of orders paid with a card the processor declines.
    #[arg(long, value_name = "P", default_value_t = 0.2, value_parser = share)]
    decline_rate: f64,
    /// Makes the card processor unavailable for this long, once a quarter of
    /// the orders are placed.
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=600))]
    processor_outage: Option<u64>,
    /// Where the card processor's faults are set when it runs as a service
    /// of its own (its HTTP URL); by default, through the gateway.
    #[arg(long, value_name = "URL")]
    processor_admin: Option<String>,
    /// How progress is shown on standard error: a bar with rate and ETA, a
    /// line every tenth of the orders, or nothing; `auto` draws the bar on a
    /// terminal and the lines elsewhere.
    #[arg(long, value_name = "HOW", default_value = "auto")]
    progress: ProgressArg,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ProgressArg {
    Auto,
    Bar,
    Lines,
    None,
}

/// A share: a number from 0 to 1.
fn share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(share) if (0.0..=1.0).contains(&share) => Ok(share),
        _ => Err(format!("{text:?} is not a number from 0 to 1")),
    }
}

/// The demo users' passwords.
#[derive(Debug, Args)]
struct CredentialsFile {
    /// The users' passwords, as `identity` or the embedded default writes
    /// them.
    #[arg(
        id = "credentials",
        long = "credentials",
        value_name = "FILE",
        default_value = "order-system-data/credentials.json"
    )]
    file: PathBuf,
}

impl CredentialsFile {
    fn load(&self) -> Result<Credentials, String> {
        Credentials::load(&self.file).map_err(|error| {
            format!("{error}\n(the embedded default writes it on first start; --credentials FILE names another)")
        })
    }
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// The service this process runs.
    #[arg(value_name = "SERVICE", value_parser = role)]
    role: Role,
    /// Its HTTP address.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    #[command(flatten)]
    servers: Servers,
    /// The processor's gRPC address.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:50051")]
    grpc: SocketAddr,
    /// Payment's URL of the processor's gRPC.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:50051")]
    processor: String,
    /// Payment's HTTP URL, where the gateway has card numbers tokenized
    /// (required for the gateway).
    #[arg(long, value_name = "URL", env = "PALISADE_PAYMENT")]
    payment: Option<String>,
    #[command(flatten)]
    namespace: Namespace,
    #[command(flatten)]
    identity: IdentityFile,
    /// The gateway's admin address, for /books, /metrics and /admin.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8081")]
    admin_listen: SocketAddr,
    /// The other processes' HTTP URLs (each one's --listen): the gateway's
    /// /books adds the books of the services they run, and its dashboard
    /// their /metrics.
    #[arg(
        long,
        value_name = "URL",
        value_delimiter = ',',
        env = "PALISADE_PEERS"
    )]
    peers: Vec<String>,
    /// How long the process, asked to stop (SIGTERM, Ctrl-C), lets the
    /// work under way finish before cutting it short.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 25,
        env = "PALISADE_STOP_GRACE",
        value_parser = clap::value_parser!(u64).range(1..=600)
    )]
    stop_grace: u64,
}

/// Where the servers are.
#[derive(Debug, Args)]
struct Servers {
    /// A PostgreSQL URL.
    #[arg(
        long,
        value_name = "URL",
        env = "PALISADE_POSTGRES",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    postgres: String,
    /// A NATS URL (JetStream enabled).
    #[arg(
        long,
        value_name = "URL",
        env = "PALISADE_NATS",
        hide_env_values = true,
        default_value = "nats://127.0.0.1:4222"
    )]
    nats: String,
    /// A Redis URL.
    #[arg(
        long,
        value_name = "URL",
        env = "PALISADE_REDIS",
        hide_env_values = true,
        default_value = "redis://127.0.0.1:6379"
    )]
    redis: String,
}

impl Servers {
    fn infrastructure(self) -> Infrastructure {
        Infrastructure {
            postgres: self.postgres,
            nats: self.nats,
            redis: self.redis,
        }
    }
}

/// A system on the servers: `remove-namespace`'s and the rebuilds' flags.
#[derive(Debug, Args)]
struct OnServers {
    #[command(flatten)]
    servers: Servers,
    #[command(flatten)]
    namespace: Namespace,
}

/// A service's name as `serve` takes it.
fn role(name: &str) -> Result<Role, String> {
    name.parse()
}

/// Where several systems share servers.
#[derive(Debug, Args)]
struct Namespace {
    /// Schemas are NS_SERVICE and the stream ORDERS_NS, so several systems
    /// share the servers.
    #[arg(
        long = "namespace",
        value_name = "NS",
        env = "PALISADE_NAMESPACE",
        default_value = ""
    )]
    name: String,
}

#[derive(Debug, Args)]
struct IdentityArgs {
    /// Where the files are written.
    #[arg(value_name = "DIR")]
    dir: PathBuf,
    /// How many load users (load-1, load-2, …) besides alice, bob and
    /// operator.
    #[arg(long, value_name = "N", default_value_t = 64)]
    load_users: usize,
}

#[derive(Debug, Args)]
struct TokenArgs {
    /// The gateway's public URL.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8080")]
    gateway: String,
    /// Who signs in.
    #[arg(long, value_name = "NAME", default_value = "alice")]
    user: String,
    /// Their password; else the one the credentials file holds for them.
    #[arg(long, value_name = "P", conflicts_with = "credentials")]
    password: Option<String>,
    #[command(flatten)]
    credentials: CredentialsFile,
}

#[derive(Debug, Subcommand)]
enum DeadEvents {
    /// Lists a service's dead events, oldest first.
    List {
        #[command(flatten)]
        service: DeadEventsOf,
        /// At most this many (1 to 1,000).
        #[arg(long, value_name = "N", default_value_t = 100,
              value_parser = clap::value_parser!(u32).range(1..=1_000))]
        limit: u32,
    },
    /// Puts dead events back in line, their attempts reset.
    Requeue {
        #[command(flatten)]
        service: DeadEventsOf,
        #[command(flatten)]
        which: Which,
    },
}

/// Which dead events to requeue: exactly one of the two.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct Which {
    /// The one with this event id.
    #[arg(long, value_name = "ID")]
    id: Option<uuid::Uuid>,
    /// All of the service's.
    #[arg(long)]
    all: bool,
}

/// Whose dead events, and where their outbox is.
#[derive(Debug, Args)]
struct DeadEventsOf {
    /// orders, inventory, payment or shipping.
    #[arg(long, value_name = "SERVICE")]
    service: String,
    /// The embedded system's data directory.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "order-system-data",
        conflicts_with = "postgres"
    )]
    data: PathBuf,
    /// A PostgreSQL URL: the outbox in the schemas `serve` uses.
    #[arg(long, value_name = "URL")]
    postgres: Option<String>,
    #[command(flatten)]
    namespace: Namespace,
}

impl DeadEventsOf {
    fn location(&self) -> Location {
        match &self.postgres {
            Some(url) => Location::Postgres {
                url: url.clone(),
                namespace: self.namespace.name.clone(),
            },
            None => Location::Data(self.data.clone()),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("order-system: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            None => run(cli.run).await,
            Some(Command::Run(args)) => run(args).await,
            Some(Command::Load(args)) => load_command(args).await,
            // Boxed: a service process holds every store it serves.
            Some(Command::Serve(args)) => Box::pin(serve_command(args)).await,
            Some(Command::Identity(args)) => identity_command(args).await,
            Some(Command::Token(args)) => token_command(args).await,
            Some(Command::DeadEvents(action)) => dead_events_command(action).await,
            Some(Command::RemoveNamespace(args)) => remove_namespace(args).await,
            Some(Command::RebuildCatalog(args)) => rebuild_catalog(args).await,
            Some(Command::RebuildHistory(args)) => rebuild_history(args).await,
        }
    });
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("order-system: {error}");
            ExitCode::from(2)
        }
    }
}

fn init_logs() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .init();
}

/// Listens for Ctrl-C (`SIGINT`) and `SIGTERM` from the call on (not from
/// the first poll: a signal that comes while the system starts is kept,
/// not met by the default action that ends the process unshut); the
/// future completes on the first.
fn stop_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let interrupt = signal(SignalKind::interrupt());
    let terminate = signal(SignalKind::terminate());
    let received = |listening: std::io::Result<tokio::signal::unix::Signal>| async move {
        match listening {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                eprintln!("order-system: cannot listen for a stop signal: {error}");
                std::future::pending::<()>().await;
            }
        }
    };
    async move {
        tokio::select! {
            () = received(interrupt) => {}
            () = received(terminate) => {}
        }
    }
}

async fn serve_command(args: ServeArgs) -> Result<ExitCode, String> {
    let role = args.role;
    let mut settings = ServeSettings::new(role, args.servers.infrastructure(), args.listen);
    settings.grpc = args.grpc;
    settings.admin_listen = args.admin_listen;
    settings.processor = args.processor;
    settings.payment = args.payment.filter(|url| !url.is_empty());
    settings.namespace = args.namespace.name;
    settings.identity = args.identity.path();
    settings.peers = args.peers;
    settings.stop_grace = Duration::from_secs(args.stop_grace);
    init_logs();
    // Boxed: every service's future, a large one to hold in `main`'s.
    Box::pin(serve::serve(settings, stop_signal()))
        .await
        .map_err(|error| format!("{}: {error}", role.name()))?;
    Ok(ExitCode::SUCCESS)
}

async fn rebuild_catalog(args: OnServers) -> Result<ExitCode, String> {
    let rebuilt = serve::rebuild_catalog(args.servers.infrastructure(), &args.namespace.name);
    rebuilt_read_model("the catalog", "ShippingScheduled events", rebuilt).await
}

async fn rebuild_history(args: OnServers) -> Result<ExitCode, String> {
    let rebuilt = serve::rebuild_history(args.servers.infrastructure(), &args.namespace.name);
    rebuilt_read_model("the order history", "events", rebuilt).await
}

/// Says what a rebuild of the read model `name` did.
async fn rebuilt_read_model(
    name: &str,
    events: &str,
    rebuilt: impl Future<Output = Result<u64, palisade_outbox::BoxError>>,
) -> Result<ExitCode, String> {
    let applied = rebuilt.await.map_err(|error| format!("{name}: {error}"))?;
    println!("{name} rebuilt from {applied} {events}");
    Ok(ExitCode::SUCCESS)
}

async fn remove_namespace(args: OnServers) -> Result<ExitCode, String> {
    let namespace = args.namespace.name;
    let removed = serve::remove_namespace(args.servers.infrastructure(), &namespace)
        .await
        .map_err(|error| format!("namespace {namespace:?}: {error}"))?;
    println!(
        "namespace {namespace}: {} schemas dropped, stream {}, {} Redis keys deleted",
        removed.schemas,
        if removed.stream {
            "deleted"
        } else {
            "not there"
        },
        removed.keys
    );
    Ok(ExitCode::SUCCESS)
}

async fn run(args: RunArgs) -> Result<ExitCode, String> {
    init_logs();
    let stopped = stop_signal();
    let mut settings = Settings::new(args.data, args.listen);
    settings.admin_listen = args.admin_listen;
    settings.identity = args.identity.path();
    settings.cells = usize::from(args.cells);
    let system = System::start(settings).await.map_err(|e| e.to_string())?;
    if let Some(demo) = &system.demo {
        println!(
            "{} demo users; their passwords are in {} (readable by you only)",
            if demo.created {
                "created"
            } else {
                "signing in"
            },
            demo.credentials.display()
        );
    }
    println!(
        "order system running on http://{0} (embedded: SQLite, in-process broker)\n\
         books and metrics (admin, not public): http://{1}/books, http://{1}/metrics\n\
         live dashboard: http://{1}/dashboard\n\
         place orders:  cargo run -p palisade-order-system -- load --gateway http://{0} --admin http://{1} --orders 1000\n\
         stop: Ctrl-C",
        system.address, system.admin_address
    );
    if system.cells.len() > 1 {
        let names: Vec<&str> = system.cells.iter().map(|cell| cell.name.as_str()).collect();
        println!(
            "{} cells ({}): each one's books at http://{}/cells/NAME/books",
            names.len(),
            names.join(", "),
            system.admin_address
        );
    }
    stopped.await;
    system.stop().await;
    Ok(ExitCode::SUCCESS)
}

async fn load_command(args: LoadArgs) -> Result<ExitCode, String> {
    let settings = LoadSettings {
        gateway: args.gateway,
        admin: args.admin,
        orders: args.orders,
        concurrency: args.concurrency.into(),
        decline_rate: args.decline_rate,
        progress: match args.progress {
            ProgressArg::Auto => Progress::for_stderr(),
            ProgressArg::Bar => Progress::Bar,
            ProgressArg::Lines => Progress::Lines,
            ProgressArg::None => Progress::Hidden,
        },
        credentials: args.credentials.load()?,
        processor_outage: args.processor_outage.map(Duration::from_secs),
        processor_admin: args.processor_admin,
    };
    let summary = load::run(&settings).await.map_err(|e| e.to_string())?;
    print!("{}", summary.table());
    Ok(if summary.violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn token_command(args: TokenArgs) -> Result<ExitCode, String> {
    let mut gateway = Gateway::new(&args.gateway);
    let credential = match args.password {
        Some(password) => Credential {
            name: args.user,
            password,
            roles: Vec::new(),
        },
        None => args
            .credentials
            .load()?
            .of(&args.user)
            .cloned()
            .ok_or_else(|| {
                format!(
                    "no password for {:?} in the credentials; give --password",
                    args.user
                )
            })?,
    };
    gateway
        .sign_in(&credential)
        .await
        .map_err(|e| e.to_string())?;
    let token = gateway
        .authorization()
        .and_then(|value| value.strip_prefix("Bearer "))
        .ok_or("no token")?;
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}

async fn identity_command(args: IdentityArgs) -> Result<ExitCode, String> {
    let dir = args.dir;
    std::fs::create_dir_all(&dir).map_err(|error| format!("{}: {error}", dir.display()))?;
    let seeded = identity::seed_demo(&dir, args.load_users)
        .await
        .map_err(|error| error.to_string())?;
    println!(
        "{} {} (demo users); their passwords are in {}",
        if seeded.created { "wrote" } else { "kept" },
        seeded.identity.display(),
        seeded.credentials.display()
    );
    Ok(ExitCode::SUCCESS)
}

async fn dead_events_command(action: DeadEvents) -> Result<ExitCode, String> {
    let of = match &action {
        DeadEvents::List { service, .. } | DeadEvents::Requeue { service, .. } => service,
    };
    let service = of.service.as_str();
    let failed = |error: dead_events::Error| format!("{service}: {error}");
    let db = of.location().open(service).await.map_err(failed)?;
    match &action {
        DeadEvents::List { limit, .. } => {
            let dead = dead_events::list(&db, *limit).await.map_err(failed)?;
            if dead.is_empty() {
                println!("{service}: no dead events");
            }
            for event in dead {
                println!(
                    "{}  {} of {} {}  {} attempts  {}",
                    event.id,
                    event.event_type,
                    event.aggregate_type,
                    event.aggregate_id,
                    event.attempts,
                    event.last_error.unwrap_or_default()
                );
            }
        }
        DeadEvents::Requeue { which, .. } => {
            let which = which.id.map_or(Requeue::All, Requeue::One);
            let requeued = dead_events::requeue(&db, which).await.map_err(failed)?;
            println!("{service}: {requeued} requeued");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn no_command_runs_the_embedded_system_with_run_s_flags() {
        let cli = Cli::try_parse_from(["order-system", "--data", "elsewhere"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.run.data, PathBuf::from("elsewhere"));
        assert_eq!(cli.run.cells, 1);
    }

    /// A limit of 0 listed nothing and said there were no dead events.
    #[test]
    fn dead_events_are_listed_one_to_a_thousand_at_a_time() {
        let list = |limit: &str| {
            Cli::try_parse_from([
                "order-system",
                "dead-events",
                "list",
                "--service",
                "payment",
                "--limit",
                limit,
            ])
        };
        assert!(list("1000").is_ok());
        for limit in ["0", "1001"] {
            let error = list(limit).unwrap_err();
            assert!(error.to_string().contains("--limit"), "{error}");
        }
    }

    #[test]
    fn cells_are_one_to_twenty_six() {
        let cli = Cli::try_parse_from(["order-system", "run", "--cells", "2"]).unwrap();
        let Some(Command::Run(run)) = cli.command else {
            panic!("run");
        };
        assert_eq!(run.cells, 2);
        for cells in ["0", "27", "two"] {
            let error = Cli::try_parse_from(["order-system", "--cells", cells]).unwrap_err();
            assert!(error.to_string().contains("--cells"), "{error}");
        }
    }
}
