//! Broker outages in the middle of a run: NATS cut away behind a proxy,
//! killed, or running without JetStream, each far longer than the relay's
//! and the consumers' whole backoff ladders, while orders keep coming.
//! Events wait in the outbox with their attempts untouched, none is lost or
//! dead, and once the broker is back every event is stored once and applied
//! once by each consumer.
#![cfg(all(feature = "nats", feature = "postgres", feature = "circuit-breaker"))]

mod support;

use std::collections::HashSet;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use palisade_circuit_breaker::{CircuitBreaker, Config as BreakerConfig};
use palisade_outbox::{
    BoxError, ConsumerConfig, Delivery, Event, Handled, Handler, JetStreamConsumer,
    NatsJetStreamPublisher, OutboxStore, PgInbox, Relay, Transient,
};
use palisade_testkit::servers::{nats_proxy, nats_url};
use sqlx::PgConnection;

const OUTAGE: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_wait_out_a_broker_outage_and_drain_after() {
    let db = support::PgSchema::new().await;
    let pool = db.pool.clone();
    let outbox = db
        .outbox(|c| {
            c.max_attempts(30)
                .backoff(Duration::from_millis(100), Duration::from_secs(1))
                .poll_interval(Duration::from_millis(100))
        })
        .await;

    // The relay reaches NATS through the proxy; the test checks directly.
    let (proxy, through) = nats_proxy().await;
    let relay_side = jetstream::new(async_nats::connect(&through).await.unwrap());
    let direct = jetstream::new(async_nats::connect(nats_url()).await.unwrap());
    let stream = format!("DOWN{}", fastrand::u64(..));
    let publisher = NatsJetStreamPublisher::new(relay_side, &stream, "/test");
    publisher
        .ensure_stream(outbox.config(), true)
        .await
        .unwrap();
    let relay = tokio::spawn(Relay::new(outbox.clone(), publisher).run(std::future::pending()));

    let mut written = Vec::new();
    let mut write = async |round: u32| {
        let events: Vec<Event> = (0..10)
            .map(|i| {
                Event::new(
                    "order",
                    format!("o-{i}"),
                    "Placed",
                    round.to_be_bytes().to_vec(),
                )
            })
            .collect();
        written.extend(events.iter().map(Event::id));
        let mut tx = pool.begin().await.unwrap();
        outbox.enqueue_all(&mut tx, &events).await.unwrap();
        tx.commit().await.unwrap();
    };
    for round in 0..5 {
        write(round).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.cut().await;
    let cut_at = Instant::now();
    let mut round = 5;
    while cut_at.elapsed() < OUTAGE {
        write(round).await;
        round += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let during = outbox.backlog().await.unwrap();
    assert!(
        during.pending >= 10,
        "events wait while the broker is away: {during:?}"
    );
    assert_eq!(during.dead, 0);
    proxy.resume().await;
    for round in round..round + 5 {
        write(round).await;
    }

    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let backlog = outbox.backlog().await.unwrap();
        if backlog.pending == 0 {
            assert_eq!(backlog.dead, 0, "nothing given up on");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the backlog never drained: {backlog:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    relay.abort();

    let stored: HashSet<String> = direct
        .get_stream(&stream)
        .await
        .unwrap()
        .create_consumer(consumer::pull::Config::default())
        .await
        .unwrap()
        .fetch()
        .max_messages(written.len() + 100)
        .expires(Duration::from_secs(1))
        .messages()
        .await
        .unwrap()
        .map(|message| {
            let message = message.unwrap();
            message
                .headers
                .as_ref()
                .unwrap()
                .get("ce-id")
                .unwrap()
                .to_string()
        })
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect();
    let written: HashSet<String> = written.iter().map(ToString::to_string).collect();
    assert_eq!(stored, written, "every event stored, once");
    assert_eq!(
        direct
            .get_stream(&stream)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .state
            .messages,
        written.len() as u64,
        "no event stored twice"
    );

    direct.delete_stream(&stream).await.unwrap();
    db.drop().await;
}

/// A `nats-server` of the test's own (`NATS_SERVER`, default
/// `/usr/sbin/nats-server`) on a free port, keeping its JetStream store in
/// a directory of its own across restarts.
struct OwnNats {
    port: u16,
    store: PathBuf,
    server: Option<Child>,
}

impl OwnNats {
    /// Started with JetStream.
    async fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let store = std::env::temp_dir().join(format!("palisade-nats-{}", fastrand::u64(..)));
        let mut nats = Self {
            port,
            store,
            server: None,
        };
        nats.run(true).await;
        nats
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// (Re)starts the server, with JetStream or without (the server
    /// answers, JetStream does not: a stream that lost its quorum looks so
    /// to a client), once it listens.
    async fn run(&mut self, jetstream: bool) {
        self.stop();
        let binary =
            std::env::var("NATS_SERVER").unwrap_or_else(|_| "/usr/sbin/nats-server".to_owned());
        let mut command = Command::new(binary);
        command
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if jetstream {
            command.arg("-js").arg("-sd").arg(&self.store);
        }
        self.server = Some(command.spawn().expect("nats-server installed"));
        for _ in 0..500 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("nats-server never listened on {}", self.port);
    }

    /// Kills the server: NATS gone altogether.
    fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// The two outages of issue #16.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outage {
    /// The server is killed.
    NatsGone,
    /// The server runs without JetStream: publishes find no responders.
    JetStreamUnavailable,
}

/// Records what it applies in `applied`, as consumer `name`; fails every
/// seventh event as [`Transient`] on its first three deliveries (more than
/// the consumer's `max_deliver`).
struct Record {
    schema: String,
    name: &'static str,
}

impl Handler<PgConnection> for Record {
    async fn handle(
        &self,
        tx: &mut PgConnection,
        delivery: &Delivery,
    ) -> Result<Handled, BoxError> {
        let n: u32 = std::str::from_utf8(&delivery.payload)?.parse()?;
        if n.is_multiple_of(7) && delivery.attempt <= 3 {
            return Err(Transient::new("a dependency is down").into());
        }
        sqlx::query(&format!(
            "INSERT INTO {}.applied (consumer, id) VALUES ($1, $2)",
            self.schema
        ))
        .bind(self.name)
        .bind(&delivery.envelope.id)
        .execute(tx)
        .await?;
        Ok(Handled::Applied)
    }
}

/// The ladder every test outage outlasts many times over: three attempts
/// 20 to 40 ms apart, a 1 s lease.
const LADDER_OUTAGE: Duration = Duration::from_secs(6);

/// Orders keep coming during an outage longer than the whole backoff
/// ladder; afterwards nothing is dead and each consumer applied every event
/// exactly once.
async fn orders_outlive(outage: Outage) {
    let mut nats = OwnNats::start().await;
    let db = support::PgSchema::new().await;
    let (pool, schema) = (db.pool.clone(), db.name.clone());
    let outbox = db
        .outbox(|c| {
            c.max_attempts(3)
                .backoff(Duration::from_millis(20), Duration::from_millis(40))
                .lease(Duration::from_secs(1))
                .poll_interval(Duration::from_millis(100))
        })
        .await;
    let inbox = PgInbox::new(pool.clone(), &format!("{schema}.inbox")).unwrap();
    inbox.migrate().await.unwrap();
    sqlx::query(&format!(
        "CREATE TABLE {schema}.applied (consumer TEXT NOT NULL, id TEXT NOT NULL)"
    ))
    .execute(&pool)
    .await
    .unwrap();

    let context = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let stream = format!("OUTAGE{}", fastrand::u64(..));
    let prefix = stream.to_ascii_lowercase();
    let publisher = NatsJetStreamPublisher::new(context.clone(), &stream, "/test");
    publisher
        .ensure_stream(outbox.config(), true)
        .await
        .unwrap();
    let breaker = CircuitBreaker::new(
        BreakerConfig::builder()
            .minimum_calls(4)
            .open_duration(Duration::from_millis(200))
            .build()
            .unwrap(),
    );
    let relay = Relay::new(outbox.clone(), publisher)
        .outage_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .circuit_breaker(breaker);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }
    };
    let relaying = tokio::spawn(relay.run(until_stopped()));
    let mut consumers = Vec::new();
    for name in ["inventory", "payment"] {
        let config = ConsumerConfig::new(&stream, name, &format!("{prefix}.dead.{name}"))
            .unwrap()
            .filter_subject(&format!("{prefix}.order.>"))
            .max_deliver(2)
            .retry_delay(Duration::from_millis(10), Duration::from_millis(20))
            .ack_wait(Duration::from_secs(2));
        let handler = Record {
            schema: schema.clone(),
            name,
        };
        let consumer = Arc::new(
            JetStreamConsumer::new(context.clone(), config, inbox.clone(), handler)
                .await
                .unwrap(),
        );
        let running = tokio::spawn({
            let consumer = consumer.clone();
            let shutdown = until_stopped();
            async move {
                consumer
                    .run(shutdown)
                    .await
                    .map_err(|error| error.to_string())
            }
        });
        consumers.push((name, consumer, running));
    }

    let mut written = Vec::new();
    let mut place = async |n: usize| {
        let event = Event::new(
            "order",
            format!("o-{n}"),
            "Placed",
            n.to_string().into_bytes(),
        );
        written.push(event.id().to_string());
        let mut tx = pool.begin().await.unwrap();
        outbox.enqueue(&mut tx, &event).await.unwrap();
        tx.commit().await.unwrap();
    };
    for n in 0..20 {
        place(n).await;
    }
    let applied = |consumer: &'static str| {
        let (pool, schema) = (pool.clone(), schema.clone());
        async move {
            sqlx::query_scalar::<_, i64>(&format!(
                "SELECT count(*) FROM {schema}.applied WHERE consumer = $1"
            ))
            .bind(consumer)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    wait_for("the first orders applied", async || {
        applied("inventory").await == 20 && applied("payment").await == 20
    })
    .await;

    match outage {
        Outage::NatsGone => nats.stop(),
        Outage::JetStreamUnavailable => nats.run(false).await,
    }
    let started = Instant::now();
    let mut n = 20;
    while started.elapsed() < LADDER_OUTAGE {
        place(n).await;
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let during = outbox.backlog().await.unwrap();
    assert!(during.pending > 0, "orders wait for the broker: {during:?}");
    assert_eq!(during.dead, 0, "none given up on during the outage");

    nats.run(true).await;
    for n in n..n + 5 {
        place(n).await;
    }
    let total = i64::try_from(written.len()).unwrap();
    wait_for("every order applied after the outage", async || {
        applied("inventory").await == total && applied("payment").await == total
    })
    .await;

    let backlog = outbox.backlog().await.unwrap();
    assert_eq!((backlog.pending, backlog.dead), (0, 0), "{backlog:?}");
    let written: HashSet<String> = written.into_iter().collect();
    for (name, consumer, _) in &consumers {
        let ids: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT id FROM {schema}.applied WHERE consumer = $1"
        ))
        .bind(name)
        .fetch_all(&pool)
        .await
        .unwrap();
        let once: HashSet<String> = ids.iter().cloned().collect();
        assert_eq!(ids.len(), once.len(), "{name} applied an event twice");
        assert_eq!(once, written, "{name} applied every event");
        assert_eq!(consumer.stats().dead_lettered, 0, "{name} gave up on none");
    }
    stop.send(true).unwrap();
    relaying.await.unwrap();
    for (name, _, running) in consumers {
        running
            .await
            .unwrap()
            .unwrap_or_else(|error| panic!("{name}: {error}"));
    }
    context.delete_stream(&stream).await.unwrap();
    db.drop().await;
}

/// Waits until `done` holds (a generous bound: two minutes).
async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_outlive_jetstream_being_unavailable() {
    orders_outlive(Outage::JetStreamUnavailable).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_outlive_nats_being_gone() {
    orders_outlive(Outage::NatsGone).await;
}
