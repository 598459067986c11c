//! `order-system`: runs the order system, or places load on it.
//!
//! See `order-system help` ([`USAGE`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use palisade_order_system::dead_events::{self, Location, Requeue};
use palisade_order_system::embedded::{Settings, System};
use palisade_order_system::identity::{self, Credential, Credentials};
use palisade_order_system::load::{self, Gateway, LoadSettings};
use palisade_order_system::serve::{self, Infrastructure, Role, ServeSettings};

/// The command line.
const USAGE: &str = "usage:
  order-system [run] [--data DIR] [--listen ADDR] [--admin-listen ADDR] [--identity FILE]
      every service in one process on SQLite files in DIR (default: ./order-system-data),
      the gateway on ADDR (default: 127.0.0.1:8080), its /books and /metrics on the
      --admin-listen ADDR (default: 127.0.0.1:8081); who may sign in comes from FILE
      (or PALISADE_IDENTITY), else from DIR/identity.json, made on first start with
      demo users whose generated passwords are in DIR/credentials.json; the card vault's
      key is DIR/payment-vault.key, made on first start
  order-system load [--gateway URL] [--admin URL] [--credentials FILE] [--orders N]
                    [--concurrency C] [--decline-rate P] [--processor-outage SECONDS]
                    [--processor-admin URL]
      places N orders (default 1000), C at a time (default 64), a share P of them
      with a card that is declined (default 0.2), waits for every saga and checks the books
      at the gateway's admin URL (default http://127.0.0.1:8081);
      each worker signs in once as a user of FILE granted no role (default:
      ./order-system-data/credentials.json); with --processor-outage, the card processor
      is down for SECONDS once a quarter of the orders are placed, set by FILE's operator
      through the gateway, or the processor's own HTTP address given as --processor-admin
  order-system serve SERVICE [--listen ADDR] [--postgres URL] [--nats URL] [--redis URL]
                     [--grpc ADDR] [--processor URL] [--payment URL] [--namespace NS]
                     [--identity FILE] [--admin-listen ADDR]
      one service as a process of its own on PostgreSQL, NATS JetStream and Redis
      (default: the local servers, or PALISADE_POSTGRES, PALISADE_NATS, PALISADE_REDIS);
      SERVICE is one of processor, relay, inventory, payment, shipping, gateway.
      ADDR: its HTTP address (default 127.0.0.1:8080); --grpc: the processor's
      gRPC address (default 127.0.0.1:50051, loopback); --processor: payment's URL of it;
      --payment (or PALISADE_PAYMENT, required for the gateway): payment's HTTP URL
      (its ADDR), where the gateway has card numbers tokenized; payment's card vault key
      comes from PAYMENT_VAULT_KEY (64 hex digits, required for payment);
      --namespace (or PALISADE_NAMESPACE): schemas NS_<service>, stream ORDERS_NS;
      --identity (or PALISADE_IDENTITY, required for the gateway): who may sign in;
      --admin-listen: the gateway's address for /books and /metrics (default 127.0.0.1:8081)
  order-system identity DIR [--load-users N]
      writes DIR/identity.json with demo users (alice, bob, operator with the operator role,
      N load users, default 64) and DIR/credentials.json with their generated passwords,
      unless DIR/identity.json exists
  order-system token [--gateway URL] [--user NAME] [--password P | --credentials FILE]
      signs in as NAME (default alice) with the PKCE flow and prints the bearer token;
      the password is P, or NAME's in FILE (default ./order-system-data/credentials.json)
  order-system dead-events list --service SERVICE [--limit N] [--data DIR | --postgres URL [--namespace NS]]
  order-system dead-events requeue --service SERVICE (--id ID | --all) [--data DIR | --postgres URL [--namespace NS]]
      the events SERVICE's outbox gave up on after their last attempt (SERVICE: orders,
      inventory, payment, shipping): listed, oldest first (N, default 100), or put back
      in line with their attempts reset, the one with event id ID or all of them; in the
      embedded data directory DIR (default ./order-system-data), or with --postgres in
      the schemas `serve` uses (NS: --namespace or PALISADE_NAMESPACE)

An identity file is JSON: {\"users\": [{\"name\", \"password_hash\" (Argon2id PHC string),
\"roles\": [\"operator\"]}], \"clients\": [{\"client_id\", \"redirect_uris\": [...]}]}";

/// Where the embedded default keeps its demo users' passwords.
const DEFAULT_CREDENTIALS: &str = "order-system-data/credentials.json";

/// The value after `flag` in `args`, parsed.
fn flag<T: std::str::FromStr>(args: &[String], flag: &str, default: T) -> Result<T, String> {
    match args.iter().position(|arg| arg == flag) {
        None => Ok(default),
        Some(at) => args
            .get(at + 1)
            .and_then(|value| value.parse().ok())
            .ok_or_else(|| format!("{flag} needs a valid value")),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = args
        .first()
        .map(String::as_str)
        .filter(|a| !a.starts_with("--"));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("order-system: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match command {
        None | Some("run") => runtime.block_on(run(&args)),
        Some("load") => runtime.block_on(load_command(&args)),
        Some("token") => runtime.block_on(token_command(&args)),
        Some("serve") => runtime.block_on(serve_command(&args)),
        Some("identity") => runtime.block_on(identity_command(&args)),
        Some("dead-events") => runtime.block_on(dead_events_command(&args)),
        Some("help" | "--help" | "-h") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => Err(format!("unknown command {other:?}\n{USAGE}")),
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("order-system: {error}");
            ExitCode::from(2)
        }
    }
}

/// `--identity FILE`, else `PALISADE_IDENTITY`, else none.
fn identity_file(args: &[String]) -> Result<Option<PathBuf>, String> {
    let env = std::env::var("PALISADE_IDENTITY").unwrap_or_default();
    let file: String = flag(args, "--identity", env)?;
    Ok((!file.is_empty()).then(|| PathBuf::from(file)))
}

/// The credentials file named by `--credentials`, or the embedded
/// default's.
fn credentials(args: &[String]) -> Result<Credentials, String> {
    let path: PathBuf = flag(args, "--credentials", PathBuf::from(DEFAULT_CREDENTIALS))?;
    Credentials::load(&path).map_err(|error| {
        format!("{error}\n(the embedded default writes it on first start; --credentials FILE names another)")
    })
}

fn init_logs() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .init();
}

/// Completes on Ctrl-C or `SIGTERM`.
async fn stop_signal() {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = async {
            match terminate.as_mut() {
                Some(terminate) => { terminate.recv().await; }
                None => std::future::pending().await,
            }
        } => {}
    }
}

async fn serve_command(args: &[String]) -> Result<ExitCode, String> {
    let role: Role = args
        .get(1)
        .ok_or_else(|| format!("serve needs a service\n{USAGE}"))?
        .parse()?;
    let env = Infrastructure::from_env();
    let infrastructure = Infrastructure {
        postgres: flag(args, "--postgres", env.postgres)?,
        nats: flag(args, "--nats", env.nats)?,
        redis: flag(args, "--redis", env.redis)?,
    };
    let mut settings = ServeSettings::new(
        role,
        infrastructure,
        flag(args, "--listen", SocketAddr::from(([127, 0, 0, 1], 8080)))?,
    );
    settings.grpc = flag(args, "--grpc", settings.grpc)?;
    settings.admin_listen = flag(args, "--admin-listen", settings.admin_listen)?;
    settings.processor = flag(args, "--processor", settings.processor)?;
    let payment: String = flag(
        args,
        "--payment",
        std::env::var("PALISADE_PAYMENT").unwrap_or_default(),
    )?;
    settings.payment = (!payment.is_empty()).then_some(payment);
    settings.namespace = flag(
        args,
        "--namespace",
        std::env::var("PALISADE_NAMESPACE").unwrap_or_default(),
    )?;
    settings.identity = identity_file(args)?;
    init_logs();
    serve::serve(settings, stop_signal())
        .await
        .map_err(|error| format!("{}: {error}", role.name()))?;
    Ok(ExitCode::SUCCESS)
}

async fn run(args: &[String]) -> Result<ExitCode, String> {
    init_logs();
    let mut settings = Settings::new(
        flag(args, "--data", PathBuf::from("order-system-data"))?,
        flag(args, "--listen", SocketAddr::from(([127, 0, 0, 1], 8080)))?,
    );
    settings.admin_listen = flag(args, "--admin-listen", settings.admin_listen)?;
    settings.identity = identity_file(args)?;
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
         place orders:  cargo run -p palisade-order-system -- load --gateway http://{0} --admin http://{1} --orders 1000\n\
         stop: Ctrl-C",
        system.address, system.admin_address
    );
    stop_signal().await;
    system.stop().await;
    Ok(ExitCode::SUCCESS)
}

async fn load_command(args: &[String]) -> Result<ExitCode, String> {
    let settings = LoadSettings {
        gateway: flag(args, "--gateway", "http://127.0.0.1:8080".to_owned())?,
        admin: flag(args, "--admin", "http://127.0.0.1:8081".to_owned())?,
        orders: flag(args, "--orders", 1000)?,
        concurrency: flag(args, "--concurrency", 64)?,
        decline_rate: flag(args, "--decline-rate", 0.2)?,
        progress: true,
        credentials: credentials(args)?,
        processor_outage: match flag(args, "--processor-outage", 0_u64)? {
            0 => None,
            seconds @ 1..=600 => Some(Duration::from_secs(seconds)),
            _ => return Err("--processor-outage must be 0 to 600 seconds".to_owned()),
        },
        processor_admin: match flag(args, "--processor-admin", String::new())? {
            url if url.is_empty() => None,
            url => Some(url),
        },
    };
    if !(0.0..=1.0).contains(&settings.decline_rate) {
        return Err("--decline-rate must be between 0 and 1".to_owned());
    }
    let summary = load::run(&settings).await.map_err(|e| e.to_string())?;
    print!("{}", summary.table());
    Ok(if summary.violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn token_command(args: &[String]) -> Result<ExitCode, String> {
    let mut gateway = Gateway::new(&flag(
        args,
        "--gateway",
        "http://127.0.0.1:8080".to_owned(),
    )?);
    let name: String = flag(args, "--user", "alice".to_owned())?;
    let credential = match flag(args, "--password", String::new())? {
        password if password.is_empty() => {
            credentials(args)?.of(&name).cloned().ok_or_else(|| {
                format!("no password for {name:?} in the credentials; give --password")
            })?
        }
        password => Credential {
            name,
            password,
            roles: Vec::new(),
        },
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

async fn identity_command(args: &[String]) -> Result<ExitCode, String> {
    let dir = args
        .get(1)
        .filter(|dir| !dir.starts_with("--"))
        .ok_or_else(|| format!("identity needs a directory\n{USAGE}"))?;
    let dir = PathBuf::from(dir);
    std::fs::create_dir_all(&dir).map_err(|error| format!("{}: {error}", dir.display()))?;
    let seeded = identity::seed_demo(&dir, flag(args, "--load-users", 64)?)
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

async fn dead_events_command(args: &[String]) -> Result<ExitCode, String> {
    let action = args
        .get(1)
        .map(String::as_str)
        .filter(|action| ["list", "requeue"].contains(action))
        .ok_or_else(|| format!("dead-events needs list or requeue\n{USAGE}"))?;
    let service: String = flag(args, "--service", String::new())?;
    if service.is_empty() {
        return Err(format!("dead-events needs --service SERVICE\n{USAGE}"));
    }
    let location = match flag(args, "--postgres", String::new())? {
        url if url.is_empty() => {
            Location::Data(flag(args, "--data", PathBuf::from("order-system-data"))?)
        }
        url => Location::Postgres {
            url,
            namespace: flag(
                args,
                "--namespace",
                std::env::var("PALISADE_NAMESPACE").unwrap_or_default(),
            )?,
        },
    };
    let failed = |error: dead_events::Error| format!("{service}: {error}");
    let db = location.open(&service).await.map_err(failed)?;
    if action == "list" {
        let dead = dead_events::list(&db, flag(args, "--limit", 100)?)
            .await
            .map_err(failed)?;
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
    } else {
        let id: String = flag(args, "--id", String::new())?;
        let which = Requeue::parse(
            (!id.is_empty()).then_some(id.as_str()),
            args.iter().any(|arg| arg == "--all"),
        )
        .map_err(|problem| format!("dead-events requeue: {problem} (--id ID or --all)"))?;
        let requeued = dead_events::requeue(&db, which).await.map_err(failed)?;
        println!("{service}: {requeued} requeued");
    }
    Ok(ExitCode::SUCCESS)
}
