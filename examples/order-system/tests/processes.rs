//! The order system as separate processes (`order-system serve …`) on real
//! PostgreSQL, NATS JetStream and Redis, driven through its gateway: the
//! books keep straight with replicas, and through chaos (services killed
//! with `SIGKILL` and restarted, the card processor down until the breaker
//! opens).
//!
//! Each test runs in a namespace of its own (schemas, stream, Redis keys),
//! dropped at the end.
//!
//! After a run, no card number is in clear anywhere: in any table of the
//! namespace's schemas (outboxes, inboxes, orders, payment's vault …), in
//! any message of its stream (the saga's events and dead letters), or in
//! any process's log.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{StreamExt as _, TryStreamExt as _};

use palisade_order_system::books::Books;
use palisade_order_system::identity::{Credentials, Role, seed_demo};
use palisade_order_system::load::{self, Gateway, LoadSettings, Progress, Summary};
use palisade_order_system::payment::vault::{KEY_VARIABLE, VaultKey};
use palisade_order_system::processor::{AdminStatus, BREAKER, DECLINED_CARD, GOOD_CARD};
use palisade_order_system::serve::{
    FLEET_FAMILY, Infrastructure, REDIS_ROOT, Removed, rebuild_catalog, rebuild_history,
    remove_namespace,
};
use palisade_testkit::servers::{database_url, nats_url, redis_url};

/// Each test starts a whole system (some 50 PostgreSQL connections at
/// most); one at a time keeps them within the server's connection limit.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A free port on loopback (the OS picks it; the process binds it a moment
/// later).
fn free_address() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
}

/// One system: its processes, by name (`inventory`, `inventory-2`, …).
struct System {
    namespace: String,
    logs: std::path::PathBuf,
    grpc: SocketAddr,
    /// The gateways' identity file (demo users) and their passwords.
    identity: std::path::PathBuf,
    credentials: Credentials,
    /// Payment's card vault key (64 hex digits), the same for every
    /// replica.
    vault_key: String,
    /// The processes' `RUST_LOG`.
    log_filter: String,
    processes: HashMap<String, (Vec<String>, SocketAddr, Child)>,
    /// Each gateway's admin address (`/books`, `/metrics`).
    admins: HashMap<String, SocketAddr>,
}

impl System {
    async fn new() -> Self {
        let namespace = format!("t{}", fastrand::u64(..) % 1_000_000_000);
        let logs = std::env::temp_dir().join(format!("palisade-order-system-{namespace}"));
        std::fs::create_dir_all(&logs).unwrap();
        // One load user per worker of `load`.
        let seeded = seed_demo(&logs, 32).await.unwrap();
        Self {
            namespace,
            grpc: free_address(),
            identity: seeded.identity,
            credentials: Credentials::load(&seeded.credentials).unwrap(),
            vault_key: VaultKey::generate().to_hex().to_string(),
            log_filter: "warn".to_owned(),
            logs,
            processes: HashMap::new(),
            admins: HashMap::new(),
        }
    }

    /// Starts `service` as `name` and waits for its `/healthz`.
    async fn start(&mut self, name: &str, service: &str) {
        let listen = free_address();
        let mut args: Vec<String> = [
            "serve",
            service,
            "--listen",
            &listen.to_string(),
            "--namespace",
            &self.namespace,
            "--postgres",
            &database_url(),
            "--nats",
            &nats_url(),
            "--redis",
            &redis_url(),
        ]
        .map(str::to_owned)
        .to_vec();
        match service {
            "processor" => args.extend(["--grpc".to_owned(), self.grpc.to_string()]),
            "payment" => args.extend(["--processor".to_owned(), format!("http://{}", self.grpc)]),
            "gateway" => {
                let admin = free_address();
                self.admins.insert(name.to_owned(), admin);
                args.extend(["--admin-listen".to_owned(), admin.to_string()]);
                args.extend(["--identity".to_owned(), self.identity.display().to_string()]);
                args.extend(["--payment".to_owned(), self.address("payment")]);
                // Every process started before it but the gateways: their
                // books and metrics (a gateway's own are on its own page).
                let others: Vec<String> = self
                    .processes
                    .iter()
                    .filter(|(_, (args, _, _))| args[1] != "gateway")
                    .map(|(_, (_, listen, _))| format!("http://{listen}"))
                    .collect();
                args.extend(["--peers".to_owned(), others.join(",")]);
            }
            _ => {}
        }
        let child = self.spawn(name, &args);
        self.processes
            .insert(name.to_owned(), (args, listen, child));
        self.wait_healthy(name, listen).await;
    }

    fn spawn(&self, name: &str, args: &[String]) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("{name}.log")))
            .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_order-system"));
        if args[1] == "payment" {
            command.env(KEY_VARIABLE, &self.vault_key);
        }
        command
            .args(args)
            .env("RUST_LOG", &self.log_filter)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    async fn wait_healthy(&mut self, name: &str, address: SocketAddr) {
        let health = Gateway::new(&format!("http://{address}"));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let answered = health
                .send(http::Method::GET, "/healthz", &[], bytes::Bytes::new())
                .await;
            if matches!(answered, Ok((status, _)) if status.is_success()) {
                return;
            }
            let (_, _, child) = self.processes.get_mut(name).unwrap();
            if let Ok(Some(exit)) = child.try_wait() {
                panic!("{name} exited ({exit}); see {}", self.logs.display());
            }
            assert!(
                Instant::now() < deadline,
                "{name} not healthy after 60 s; see {}",
                self.logs.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills `name` with `SIGKILL`: no shutdown, no goodbye.
    fn kill(&mut self, name: &str) {
        let (_, _, child) = self.processes.get_mut(name).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Starts `name` again, as it was started.
    async fn restart(&mut self, name: &str) {
        let (args, listen, _) = &self.processes[name];
        let (args, listen) = (args.clone(), *listen);
        let child = self.spawn(name, &args);
        self.processes.get_mut(name).unwrap().2 = child;
        self.wait_healthy(name, listen).await;
    }

    fn address(&self, name: &str) -> String {
        format!("http://{}", self.processes[name].1)
    }

    /// The gateway `name`'s admin URL.
    fn admin(&self, name: &str) -> String {
        format!("http://{}", self.admins[name])
    }

    /// What `name`'s `/metrics` says of `series` (`name{labels}`).
    async fn metric(&self, address: &str, series: &str) -> Option<f64> {
        let metrics = fetched(&Gateway::new(address), "/metrics").await;
        drawn(std::str::from_utf8(&metrics).unwrap(), series)
    }

    /// The gateway's dashboard reads every process's `/metrics`: a
    /// consumer's counters are its replicas' added up, and the services in
    /// other processes are there.
    async fn assert_dashboard_adds_up_every_process(&self) {
        let inventory = "palisade_consumer_applied_total{service=\"inventory\"}";
        // The dashboard reads once a second and the replicas may still be
        // applying: ask until a reading and the replicas agree.
        let (mut reading, mut replicas) = (String::new(), 0.0);
        for _ in 0..100 {
            replicas = 0.0;
            for name in ["inventory", "inventory-2"] {
                replicas += self
                    .metric(&self.address(name), inventory)
                    .await
                    .unwrap_or(0.0);
            }
            reading = self.dashboard_reading().await.unwrap_or_default();
            if replicas > 0.0 && drawn(&reading, inventory) == Some(replicas) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(replicas > 0.0);
        assert_eq!(drawn(&reading, inventory), Some(replicas), "{reading}");
        for service in ["payment", "shipping"] {
            let series = format!("palisade_consumer_applied_total{{service=\"{service}\"}}");
            assert!(
                drawn(&reading, &series).is_some(),
                "no {service} in:\n{reading}"
            );
        }
    }

    /// The metrics of the gateway dashboard's latest reading, if it took one.
    async fn dashboard_reading(&self) -> Option<String> {
        let body = fetched(&Gateway::new(&self.admin("gateway")), "/dashboard/readings").await;
        let readings: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
        Some(readings.last()?["metrics"].as_str().unwrap().to_owned())
    }

    /// Every service, with two replicas of inventory and of the relay.
    async fn start_all(&mut self) {
        for (name, service) in [
            ("processor", "processor"),
            ("relay", "relay"),
            ("relay-2", "relay"),
            ("inventory", "inventory"),
            ("inventory-2", "inventory"),
            ("payment", "payment"),
            ("payment-2", "payment"),
            ("shipping", "shipping"),
            ("gateway", "gateway"),
            ("gateway-2", "gateway"),
        ] {
            self.start(name, service).await;
        }
    }

    async fn books(&self) -> Books {
        let body = fetched(&Gateway::new(&self.admin("gateway")), "/books").await;
        serde_json::from_slice(&body).unwrap()
    }

    /// A client of the gateway signed in as the demo user `name`.
    async fn signed_in(&self, name: &str) -> Gateway {
        let mut gateway = Gateway::new(&self.address("gateway"));
        gateway
            .sign_in(self.credentials.of(name).unwrap())
            .await
            .unwrap();
        gateway
    }

    /// A client of the card processor's admin with `as_who`'s token.
    fn processor_admin(&self, as_who: &Gateway) -> Gateway {
        Gateway::new(&self.address("processor")).with_authorization(as_who.authorization())
    }

    async fn operator(&self) -> Gateway {
        let operator = self
            .credentials
            .with_role(Role::Operator)
            .map(|operator| operator.name.clone())
            .unwrap();
        self.signed_in(&operator).await
    }

    /// The charges the card processor has seen, refused ones included.
    async fn processor_calls(&self) -> u64 {
        let admin = self.processor_admin(&self.operator().await);
        let body = fetched(&admin, "/admin/processor").await;
        serde_json::from_slice::<AdminStatus>(&body)
            .unwrap()
            .processor
            .calls
    }

    async fn set_processor_unavailable(&self, unavailable: bool) {
        let body = serde_json::json!({ "unavailable": unavailable }).to_string();
        let admin = self.processor_admin(&self.operator().await);
        let (status, _) = processor_settings(&admin, body).await;
        assert!(status.is_success());
    }

    fn load(&self, orders: usize) -> LoadSettings {
        LoadSettings {
            gateway: self.address("gateway"),
            admin: self.admin("gateway"),
            orders,
            concurrency: 32,
            decline_rate: 0.2,
            progress: Progress::Hidden,
            credentials: self.credentials.clone(),
            processor_outage: None,
            processor_admin: Some(self.address("processor")),
        }
    }

    /// Checks that JetStream delivered payment's and shipping's durable
    /// consumers the events of the one type each consumes and nothing
    /// else: as many deliveries as the stream holds of that type (a few
    /// more for redeliveries), not every saga event.
    async fn assert_delivered_only_what_they_consume(&self) {
        let stream_name = format!("ORDERS_{}", self.namespace.to_ascii_uppercase());
        let subjects = stream_name.to_ascii_lowercase();
        let nats = async_nats::connect(nats_url()).await.unwrap();
        let mut stream = async_nats::jetstream::new(nats)
            .get_stream(&stream_name)
            .await
            .unwrap();
        let all = stream.info().await.unwrap().state.messages;
        for (durable, consumes) in [
            ("payment", "InventoryReserved"),
            ("shipping", "PaymentSucceeded"),
        ] {
            let subject = format!("{subjects}.order.{consumes}");
            let published = stream
                .info_with_subjects(&subject)
                .await
                .unwrap()
                .try_fold(0, |sum, (_, count)| async move { Ok(sum + count) })
                .await
                .map(|count| u64::try_from(count).unwrap())
                .unwrap();
            let delivered = stream
                .consumer_info(durable)
                .await
                .unwrap()
                .delivered
                .consumer_sequence;
            assert!(published > 0, "no {consumes} in the stream");
            assert!(
                (published..published + 10).contains(&delivered),
                "{durable}: {delivered} deliveries for {published} {consumes} events \
                 ({all} messages in the stream)"
            );
        }
    }

    /// Checks that no card number the load pays with is in clear in any
    /// table of the namespace's schemas, any message of its stream, or any
    /// process's log.
    async fn assert_no_card_number_in_clear(&self) {
        let in_clear = |text: &[u8]| {
            [GOOD_CARD, DECLINED_CARD]
                .iter()
                .any(|card| text.windows(card.len()).any(|at| at == card.as_bytes()))
        };
        let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(&database_url())
            .await
            .unwrap();
        let tables: Vec<(String, String)> = sqlx::query_as(
            "SELECT table_schema::text, table_name::text FROM information_schema.tables \
             WHERE table_schema LIKE $1 AND table_type = 'BASE TABLE'",
        )
        .bind(format!("{}\\_%", self.namespace))
        .fetch_all(&mut db)
        .await
        .unwrap();
        let names: Vec<String> = tables.iter().map(|(s, t)| format!("{s}.{t}")).collect();
        for service in ["orders", "inventory", "payment", "shipping"] {
            for table in ["outbox", "inbox"] {
                let name = format!("{}_{service}.{table}", self.namespace);
                assert!(names.contains(&name), "{name} in {names:?}");
            }
        }
        let mut rows_read = 0;
        for (schema, table) in &tables {
            let rows: Vec<String> =
                sqlx::query_scalar(&format!("SELECT t::text FROM {schema}.{table} t"))
                    .fetch_all(&mut db)
                    .await
                    .unwrap();
            rows_read += rows.len();
            for row in rows {
                assert!(!in_clear(row.as_bytes()), "{schema}.{table}: {row}");
            }
        }
        assert!(rows_read > 300, "{rows_read} rows read");

        let nats = async_nats::connect(nats_url()).await.unwrap();
        let mut stream = async_nats::jetstream::new(nats)
            .get_stream(format!("ORDERS_{}", self.namespace.to_ascii_uppercase()))
            .await
            .unwrap();
        let state = stream.info().await.unwrap().state.clone();
        let mut messages = 0;
        for sequence in state.first_sequence..=state.last_sequence {
            let Ok(message) = stream.get_raw_message(sequence).await else {
                continue;
            };
            messages += 1;
            assert!(
                !in_clear(&message.payload),
                "message {sequence} on {}: {:?}",
                message.subject,
                message.payload
            );
            for (name, values) in message.headers.iter() {
                for value in values {
                    assert!(!in_clear(value.as_str().as_bytes()), "{name}: {value}");
                }
            }
        }
        assert!(messages > 300, "{messages} messages read");

        let mut logs = 0;
        for entry in std::fs::read_dir(&self.logs).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|ext| ext == "log") {
                let text = std::fs::read(&path).unwrap();
                logs += 1;
                assert!(!in_clear(&text), "{} logs a card number", path.display());
            }
        }
        assert_eq!(logs, self.processes.len(), "a log per process");
        println!("no card number in {rows_read} rows, {messages} messages, {logs} logs");
    }

    /// The catalog's ranking as its table holds it: (sku, shipped), by sku.
    async fn trending(&self) -> Vec<(String, i64)> {
        let pool = sqlx::PgPool::connect(&database_url()).await.unwrap();
        let schema = format!("{}_catalog", self.namespace);
        let ranking = sqlx::query_as(&format!(
            "SELECT sku, shipped FROM {schema}.trending ORDER BY sku"
        ))
        .fetch_all(&pool)
        .await
        .unwrap();
        pool.close().await;
        ranking
    }

    /// Checks that the catalog's ranking, a read model of the shipments,
    /// agrees with inventory's books once it caught up with the stream;
    /// then that, lost, it is built again the same from the stream while
    /// the gateways run.
    async fn assert_trending_rebuilds(&self, books: &Books) {
        let shipped: Vec<(String, i64)> = books
            .stock
            .iter()
            .filter(|level| level.shipped > 0)
            .map(|level| (level.sku.clone(), level.shipped))
            .collect();
        assert!(!shipped.is_empty(), "orders were shipped");
        let mut trending = self.trending().await;
        for _ in 0..300 {
            if trending == shipped {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            trending = self.trending().await;
        }
        assert_eq!(trending, shipped, "the read model caught up");

        let pool = sqlx::PgPool::connect(&database_url()).await.unwrap();
        sqlx::query(&format!("DELETE FROM {}_catalog.trending", self.namespace))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
        assert!(self.trending().await.is_empty());
        let applied = rebuild_catalog(infrastructure(), &self.namespace)
            .await
            .unwrap();
        let shipments: i64 = books
            .orders
            .iter()
            .filter(|(status, _, _)| status == "confirmed")
            .map(|(_, _, n)| n)
            .sum();
        assert_eq!(applied, u64::try_from(shipments).unwrap());
        assert_eq!(self.trending().await, shipped, "rebuilt from the stream");
    }

    /// A user's requests through both gateways draw on one bucket (100 at
    /// once, 50 a second), which each gateway leases from Redis a tenth at
    /// most at a time: over the flood, at most `100 + 50 × elapsed + 2 ×
    /// 10` are admitted. They come from an address of their own, whose
    /// buckets (200 at each gateway) the flood never empties.
    async fn assert_a_users_bucket_is_the_fleets(&self, token: &str) {
        let address = std::net::IpAddr::from([127, 0, 0, 77]);
        let gateways = ["gateway", "gateway-2"]
            .map(|name| Gateway::from_address(&self.address(name), address));
        let (mut admitted, mut refused) = (0_u32, 0_u32);
        let started = Instant::now();
        for n in 0..300 {
            let (status, _) = gateways[n % 2]
                .send(
                    http::Method::GET,
                    "/orders/none",
                    &[("authorization", token)],
                    bytes::Bytes::new(),
                )
                .await
                .unwrap();
            match status {
                http::StatusCode::NOT_FOUND => admitted += 1,
                http::StatusCode::TOO_MANY_REQUESTS => refused += 1,
                other => panic!("{other}"),
            }
        }
        let bound = 100.0 + 50.0 * started.elapsed().as_secs_f64() + 20.0;
        assert!(refused > 0, "{admitted} admitted");
        // Each gateway asked Redis once a lease, and says so.
        for gateway in ["gateway", "gateway-2"] {
            let admin = self.admin(gateway);
            let refills = self
                .metric(
                    &admin,
                    "palisade_token_bucket_refills_total{store=\"per-user\"}",
                )
                .await;
            assert!(refills.is_some_and(|n| n > 0.0), "{gateway}: {refills:?}");
            let held = self
                .metric(
                    &admin,
                    "palisade_token_bucket_held_tokens{store=\"per-user\"}",
                )
                .await;
            assert!(held.is_some(), "{gateway} reports the tokens it holds");
        }
        assert!(
            f64::from(admitted) <= bound,
            "{admitted} admitted over a bound of {bound:.1}"
        );
    }

    /// The order history, a read model kept by the gateways, caught up
    /// with the orders (every order, as it ended), and is built again from
    /// the stream.
    async fn assert_history_rebuilds(&self, books: &Books) {
        let pool = sqlx::PgPool::connect(&database_url()).await.unwrap();
        let by_status = format!(
            "SELECT status, reason, count(*) FROM {}_history.order_history \
             WHERE user_id IS NOT NULL GROUP BY status, reason ORDER BY status, reason",
            self.namespace
        );
        let history = || async {
            sqlx::query_as::<_, (String, Option<String>, i64)>(&by_status)
                .fetch_all(&pool)
                .await
                .unwrap()
        };
        let mut seen = history().await;
        for _ in 0..300 {
            if seen == books.orders {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            seen = history().await;
        }
        assert_eq!(seen, books.orders, "the history caught up");

        sqlx::query(&format!(
            "DELETE FROM {}_history.order_history",
            self.namespace
        ))
        .execute(&pool)
        .await
        .unwrap();
        let applied = rebuild_history(infrastructure(), &self.namespace)
            .await
            .unwrap();
        let orders: i64 = books.orders.iter().map(|(_, _, n)| n).sum();
        assert_eq!(
            applied,
            2 * u64::try_from(orders).unwrap(),
            "a creation and an end each"
        );
        assert_eq!(history().await, books.orders, "rebuilt from the stream");
        pool.close().await;
    }

    /// Both payment replicas hold the breaker open while the processor is
    /// down, and between them send it one probe an open period: over two
    /// cycles or more, the processor sees as many calls as the fleet
    /// published failed probes (give or take the one whose verdict falls
    /// on the edge of the count), where two breakers alone would probe
    /// twice a cycle.
    async fn assert_one_probe_a_cycle(&self, fleet: &FleetMessages) {
        // Both replicas opened: the first open heard, and a little more.
        let deadline = Instant::now() + Duration::from_secs(30);
        while fleet.heard(|_| true) == 0 {
            assert!(
                Instant::now() < deadline,
                "the fleet never heard of an open breaker"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (start, calls_before) = (Instant::now(), self.processor_calls().await);
        let probed =
            |message: &(Instant, String)| message.0 > start && message.1.ends_with(" probe");
        let deadline = Instant::now() + Duration::from_secs(90);
        while fleet.heard(probed) < 2 {
            assert!(
                Instant::now() < deadline,
                "fewer than two probes failed: {:?}",
                fleet.all()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let probes = fleet.heard(probed);
        let calls = self.processor_calls().await - calls_before;
        assert!(
            calls.abs_diff(u64::try_from(probes).unwrap()) <= 1,
            "{calls} calls reached the processor for {probes} probes: {:?}",
            fleet.all()
        );
    }

    /// Stops every process and drops the namespace's schemas and stream.
    async fn remove(mut self) {
        let names: Vec<String> = self.processes.keys().cloned().collect();
        for name in names {
            self.kill(&name);
        }
        // Everything the system left on the servers goes, and only once.
        let removed = remove_namespace(infrastructure(), &self.namespace)
            .await
            .unwrap();
        assert_eq!(removed.schemas, 7, "{removed:?}");
        assert!(removed.stream, "{removed:?}");
        assert!(removed.keys > 0, "sign-in and rate limits: {removed:?}");
        let again = remove_namespace(infrastructure(), &self.namespace)
            .await
            .unwrap();
        assert_eq!(again, Removed::default());
        let mut redis = redis::Client::open(redis_url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let left: Vec<String> = redis::cmd("KEYS")
            .arg(format!("*{}:*", self.namespace))
            .query_async(&mut redis)
            .await
            .unwrap();
        assert!(left.is_empty(), "left in Redis: {left:?}");
        let _ = std::fs::remove_dir_all(&self.logs);
    }
}

impl Drop for System {
    fn drop(&mut self) {
        for (_, _, child) in self.processes.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Removing a namespace removes the system's keys in it and nothing else:
/// `--namespace palisade` matched `palisade:*`, every key of the default
/// system (its users signed out, its limits and breaker reset), and a
/// namespace named like another application's keys took those.
#[tokio::test]
async fn removing_a_namespace_leaves_other_keys_alone() {
    let mut redis = redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let other = format!("otherapp_{}", fastrand::u32(..));
    let theirs = [
        // The default system's sign-in and rate limits.
        format!("{REDIS_ROOT}:auth:token:probe-{other}"),
        format!("{{{REDIS_ROOT}:rl:per-user:probe-{other}}}"),
        // Another application's, named like the namespace.
        format!("{other}:session"),
    ];
    let ours = format!("{{{other}:{REDIS_ROOT}:rl:per-user:probe}}");
    for key in theirs.iter().chain([&ours]) {
        let () = redis::AsyncCommands::set_ex(&mut redis, key, "kept", 60)
            .await
            .unwrap();
    }
    for namespace in ["palisade", other.as_str()] {
        remove_namespace(infrastructure(), namespace).await.unwrap();
    }
    for key in &theirs {
        let kept: bool = redis::AsyncCommands::exists(&mut redis, key).await.unwrap();
        assert!(kept, "{key} was removed");
        let _: i64 = redis::AsyncCommands::del(&mut redis, key).await.unwrap();
    }
    let gone: bool = redis::AsyncCommands::exists(&mut redis, &ours)
        .await
        .unwrap();
    assert!(!gone, "the namespace's own key stays");
}

/// The servers the tests run on.
fn infrastructure() -> Infrastructure {
    Infrastructure {
        postgres: database_url(),
        nats: nats_url(),
        redis: redis_url(),
    }
}

fn assert_straight(summary: &Summary, orders: usize) {
    println!("{}", summary.table());
    assert_eq!(summary.violations, Vec::<String>::new());
    assert_eq!(summary.placed, orders);
    let cancelled: usize = summary.cancelled.values().sum();
    assert_eq!(summary.confirmed + cancelled, orders);
    assert!(summary.ledger.is_some(), "the processor's ledger was read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_as_processes_with_replicas_keep_the_books_straight() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut system = System::new().await;
    // The services' own debug lines too, for the card number check.
    system.log_filter = "info,palisade_order_system=debug,palisade_outbox=debug".to_owned();
    system.start_all().await;
    let summary = load::run(&system.load(300)).await.unwrap();
    assert_straight(&summary, 300);
    let books = summary.books.unwrap();
    let declined = summary
        .cancelled
        .get("payment_declined")
        .copied()
        .unwrap_or(0);
    assert!(declined > 0, "about 60 declined cards");
    assert_eq!(books.compensations, i64::try_from(declined).unwrap());
    // The gateway opened no schema but its own: the books of the other
    // services came from their processes, and so do their dead events.
    assert_eq!(
        books.services,
        ["orders", "inventory", "payment", "shipping"],
        "{books:?}"
    );
    assert!(books.unread.is_empty(), "{books:?}");
    let (status, body) = system
        .signed_in("operator")
        .await
        .send(
            http::Method::GET,
            "/admin/dead-events/payment",
            &[],
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(status, http::StatusCode::NOT_FOUND);
    assert!(
        String::from_utf8_lossy(&body).contains("order-system dead-events"),
        "{body:?}"
    );
    system.assert_delivered_only_what_they_consume().await;
    system.assert_trending_rebuilds(&books).await;
    system.assert_history_rebuilds(&books).await;

    // Signed in through one gateway, known to the other; the same
    // Idempotency-Key through either places one order.
    let one = system.signed_in("alice").await;
    let token = one.authorization().unwrap().to_owned();
    let order = br#"{"sku":"sku-1","quantity":1,"card":"4242424242424242"}"#;
    let mut placed = Vec::new();
    for gateway in ["gateway-2", "gateway"] {
        let (status, body) = Gateway::new(&system.address(gateway))
            .send(
                http::Method::POST,
                "/orders",
                &[
                    ("authorization", token.as_str()),
                    ("idempotency-key", "alice-1"),
                    ("content-type", "application/json"),
                ],
                bytes::Bytes::from_static(order),
            )
            .await
            .unwrap();
        let order: serde_json::Value = serde_json::from_slice(&body).unwrap();
        placed.push((status, order["id"].clone()));
    }
    assert_eq!(placed[0].0, http::StatusCode::CREATED, "{placed:?}");
    assert_eq!(placed[1].0, http::StatusCode::OK, "{placed:?}");
    assert_eq!(placed[0].1, placed[1].1, "one order");
    // In alice's history (on PostgreSQL) once it reached the read model.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = one
            .send(
                http::Method::GET,
                "/orders?limit=5",
                &[],
                bytes::Bytes::new(),
            )
            .await
            .unwrap();
        assert_eq!(status, http::StatusCode::OK);
        let page: serde_json::Value = serde_json::from_slice(&body).unwrap();
        if page["orders"][0]["id"] == placed[0].1 {
            break;
        }
        assert!(Instant::now() < deadline, "not in the history: {page}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    system.assert_a_users_bucket_is_the_fleets(&token).await;

    // Payment down: the gateway cannot have the card tokenized; it
    // answers 503 and places nothing.
    let count = |books: Books| -> i64 { books.orders.iter().map(|(_, _, n)| n).sum() };
    let before = count(system.books().await);
    system.kill("payment");
    let (status, body) = Gateway::new(&system.address("gateway"))
        .send(
            http::Method::POST,
            "/orders",
            &[
                ("authorization", token.as_str()),
                ("idempotency-key", "alice-2"),
                ("content-type", "application/json"),
            ],
            bytes::Bytes::from_static(order),
        )
        .await
        .unwrap();
    let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, http::StatusCode::SERVICE_UNAVAILABLE, "{problem}");
    // A request sent again after its answer was lost may have placed an
    // order before: the caller is told to keep its key, not that nothing
    // was placed (a new key would place a second).
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .ends_with("try again with the same Idempotency-Key"),
        "{problem}"
    );
    assert_eq!(count(system.books().await), before, "nothing placed");
    system.restart("payment").await;

    // The processor's own admin takes an operator's token from a gateway,
    // and nothing less.
    let anonymous = Gateway::new(&system.address("processor"));
    for (who, admin, expected) in [
        ("nobody", anonymous, http::StatusCode::UNAUTHORIZED),
        (
            "alice",
            system.processor_admin(&one),
            http::StatusCode::FORBIDDEN,
        ),
        (
            "operator",
            system.processor_admin(&system.signed_in("operator").await),
            http::StatusCode::OK,
        ),
    ] {
        let (status, _) = processor_settings(&admin, r#"{"delay_ms":0}"#).await;
        assert_eq!(status, expected, "{who}");
    }
    // The same routes as the embedded gateway's: settings out of range are
    // refused, saying why, as there.
    let admin = system.processor_admin(&system.signed_in("operator").await);
    let (status, body) = processor_settings(&admin, r#"{"delay_ms":600000}"#).await;
    assert_eq!(status, http::StatusCode::UNPROCESSABLE_ENTITY);
    let refused: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        refused["error"].as_str().unwrap().contains("delay_ms"),
        "{refused}"
    );

    // Both replicas of inventory took a share of its events.
    for name in ["inventory", "inventory-2"] {
        let metrics = fetched(&Gateway::new(&system.address(name)), "/metrics").await;
        let metrics = String::from_utf8(metrics.to_vec()).unwrap();
        let applied: u64 = metrics
            .lines()
            .find_map(|line| {
                line.strip_prefix("palisade_consumer_applied_total{service=\"inventory\"} ")
            })
            .and_then(|value| value.parse().ok())
            .unwrap_or(0);
        assert!(applied > 0, "{name} applied nothing:\n{metrics}");
    }
    system.assert_dashboard_adds_up_every_process().await;
    system.assert_no_card_number_in_clear().await;
    system.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_kills_and_an_outage_lose_nothing() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let seed = fastrand::u64(..);
    println!("chaos seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut system = System::new().await;
    system.start_all().await;

    // Orders flow while inventory, payment and the relays are killed at
    // random moments and restarted.
    let first = 600;
    let settings = system.load(first);
    let running = tokio::spawn(async move { load::run(&settings).await });
    let victims = ["inventory", "payment", "relay", "inventory-2", "relay-2"];
    for round in 0..6 {
        tokio::time::sleep(Duration::from_millis(rng.u64(100..600))).await;
        let victim = victims[rng.usize(..victims.len())];
        println!("round {round}: SIGKILL {victim}");
        system.kill(victim);
        tokio::time::sleep(Duration::from_millis(rng.u64(0..500))).await;
        system.restart(victim).await;
    }
    let summary = running.await.unwrap().unwrap();
    assert_straight(&summary, first);

    // The card processor goes down with sagas waiting on it: they stall,
    // payment's breaker opens; it comes back, the breaker closes and
    // every saga ends.
    let opens_before = system.books().await.breaker_opens;
    let fleet = FleetMessages::listen(&system.namespace).await;
    system.set_processor_unavailable(true).await;
    let second = 200;
    let settings = system.load(second);
    let running = tokio::spawn(async move { load::run(&settings).await });
    let deadline = Instant::now() + Duration::from_secs(90);
    while system.books().await.breaker_opens == opens_before {
        assert!(Instant::now() < deadline, "the breaker never opened");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    system.assert_one_probe_a_cycle(&fleet).await;
    system.set_processor_unavailable(false).await;
    let summary = running.await.unwrap().unwrap();
    assert_straight(&summary, second);
    // Payment records the breaker's way back (half-open, then closed) as
    // it happens.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let books = system.books().await;
        if books.breaker_state == "Closed" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the breaker did not close: {books:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    system.remove().await;
}

/// What payment's replicas say on the channel of the breaker they share.
struct FleetMessages {
    heard: std::sync::Arc<std::sync::Mutex<Vec<(Instant, String)>>>,
}

impl FleetMessages {
    async fn listen(namespace: &str) -> Self {
        let mut pubsub = redis::Client::open(redis_url())
            .unwrap()
            .get_async_pubsub()
            .await
            .unwrap();
        let channel =
            palisade_circuit_breaker::fleet::Fleet::new(redis::Client::open(redis_url()).unwrap())
                .prefix(&format!("{namespace}:{REDIS_ROOT}:{FLEET_FAMILY}"))
                .channel(BREAKER);
        pubsub.subscribe(&channel).await.unwrap();
        let heard: std::sync::Arc<std::sync::Mutex<Vec<(Instant, String)>>> =
            std::sync::Arc::default();
        let hearing = std::sync::Arc::clone(&heard);
        tokio::spawn(async move {
            let mut messages = pubsub.into_on_message();
            while let Some(message) = messages.next().await {
                let text: String = message.get_payload().unwrap();
                hearing.lock().unwrap().push((Instant::now(), text));
            }
        });
        Self { heard }
    }

    fn heard(&self, which: impl Fn(&(Instant, String)) -> bool) -> usize {
        self.heard
            .lock()
            .unwrap()
            .iter()
            .filter(|m| which(m))
            .count()
    }

    fn all(&self) -> Vec<String> {
        self.heard
            .lock()
            .unwrap()
            .iter()
            .map(|(_, m)| m.clone())
            .collect()
    }
}

/// `PUT /admin/processor` with the JSON `settings`, through `admin`.
async fn processor_settings(
    admin: &Gateway,
    settings: impl Into<bytes::Bytes>,
) -> (http::StatusCode, bytes::Bytes) {
    admin
        .send(
            http::Method::PUT,
            "/admin/processor",
            &[("content-type", "application/json")],
            settings.into(),
        )
        .await
        .unwrap()
}

/// `GET path` from `gateway`, which must answer 2xx.
async fn fetched(gateway: &Gateway, path: &str) -> bytes::Bytes {
    let (status, body) = gateway
        .send(http::Method::GET, path, &[], bytes::Bytes::new())
        .await
        .unwrap();
    assert!(status.is_success(), "GET {path}: {status}");
    body
}

/// The value of `series` in a Prometheus text.
fn drawn(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .parse::<f64>()
            .ok()
    })
}
