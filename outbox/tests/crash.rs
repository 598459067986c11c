//! The crash run: a relay process is killed (`SIGKILL`) at random moments,
//! 20 times, while 20,000 events are written, and restarted each time.
//! Every event must reach the consumer, be applied exactly once, in order
//! per aggregate, and nothing may be left pending. Real PostgreSQL and NATS.
//!
//! This file is its own `main` (`harness = false`): run with
//! `PALISADE_CRASH_RELAY=<schema>:<stream>` it is the relay process the run
//! kills; without it, it is the run.

mod support;

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use palisade_outbox::{
    BoxError, ConsumerConfig, Delivery, Event, Handled, Handler, JetStreamConsumer,
    NatsJetStreamPublisher, OutboxConfig, OutboxStore, PgInbox, PgOutbox, Relay,
};
use palisade_testkit::servers::{database_url, nats_url};
use sqlx::PgConnection;

const EVENTS: u32 = 20_000;
const AGGREGATES: u32 = 200;
const PER_TRANSACTION: u32 = 100;
const KILLS: u32 = 20;

fn outbox_config(schema: &str) -> OutboxConfig {
    OutboxConfig::new(&format!("{schema}.outbox"))
        .unwrap()
        .batch_size(200)
        .lease(Duration::from_secs(1))
        .poll_interval(Duration::from_millis(200))
}

async fn jetstream() -> async_nats::jetstream::Context {
    let nats = async_nats::connect(nats_url())
        .await
        .expect("a reachable NATS (run scripts/services)");
    async_nats::jetstream::new(nats)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    match std::env::var("PALISADE_CRASH_RELAY") {
        Ok(target) => relay(&target).await,
        Err(_) => run().await,
    }
}

/// The relay process: publishes until it is killed.
async fn relay(target: &str) {
    let (schema, stream) = target.split_once(':').expect("<schema>:<stream>");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&database_url())
        .await
        .expect("a reachable PostgreSQL (run scripts/services)");
    let outbox = PgOutbox::new(pool, outbox_config(schema));
    let context = jetstream().await;
    outbox.listen().await.unwrap();
    let publisher = NatsJetStreamPublisher::new(context, stream, "/crash");
    Relay::new(outbox, publisher)
        .run(std::future::pending())
        .await;
}

/// Applies each event into `applied`, with its position in application
/// order.
struct Apply {
    schema: String,
}

impl Handler<PgConnection> for Apply {
    async fn handle(
        &self,
        tx: &mut PgConnection,
        delivery: &Delivery,
    ) -> Result<Handled, BoxError> {
        let n = u32::from_be_bytes(delivery.payload[..4].try_into()?);
        sqlx::query(&format!(
            "INSERT INTO {}.applied (event_id, aggregate, n) VALUES ($1, $2, $3)",
            self.schema
        ))
        .bind(delivery.envelope.id.to_string())
        .bind(delivery.envelope.subject.clone().unwrap_or_default())
        .bind(i64::from(n))
        .execute(tx)
        .await?;
        Ok(Handled::Applied)
    }
}

fn spawn_relay(target: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .env("PALISADE_CRASH_RELAY", target)
        .spawn()
        .expect("the relay process starts")
}

async fn run() {
    let started = Instant::now();
    let context = jetstream().await;
    let db = support::PgSchema::new().await;
    let (pool, schema) = (db.pool.clone(), db.name.clone());
    let stream = format!("CRASH{}", fastrand::u64(..));
    let target = format!("{schema}:{stream}");
    let outbox = PgOutbox::new(pool.clone(), outbox_config(&schema));
    outbox.migrate().await.unwrap();
    let inbox = PgInbox::new(pool.clone(), &format!("{schema}.inbox")).unwrap();
    inbox.migrate().await.unwrap();
    sqlx::query(&format!(
        "CREATE TABLE {schema}.applied (position BIGSERIAL, event_id TEXT NOT NULL, \
         aggregate TEXT NOT NULL, n BIGINT NOT NULL)"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let publisher = NatsJetStreamPublisher::new(context.clone(), &stream, "/crash");
    publisher
        .ensure_stream(outbox.config(), true)
        .await
        .unwrap();

    let consumer = std::sync::Arc::new(
        JetStreamConsumer::new(
            context.clone(),
            ConsumerConfig::new(
                &stream,
                "apply",
                &format!("{}.dead", stream.to_ascii_lowercase()),
            )
            .unwrap()
            .filter_subject(&format!("{}.order.>", stream.to_ascii_lowercase())),
            inbox,
            Apply {
                schema: schema.clone(),
            },
        )
        .await
        .unwrap(),
    );
    let consuming = {
        let consumer = consumer.clone();
        tokio::spawn(async move { consumer.run(std::future::pending()).await })
    };

    // The writers: 200 transactions of 100 events, event n of aggregate a
    // carrying n, while the relay is being killed.
    let writing = {
        let (pool, outbox) = (pool.clone(), outbox.clone());
        tokio::spawn(async move {
            for batch in 0..EVENTS / PER_TRANSACTION {
                let events: Vec<Event> = (0..PER_TRANSACTION)
                    .map(|i| {
                        let k = batch * PER_TRANSACTION + i;
                        Event::new(
                            "order",
                            format!("a{}", k % AGGREGATES),
                            "Counted",
                            (k / AGGREGATES).to_be_bytes().to_vec(),
                        )
                    })
                    .collect();
                let mut tx = pool.begin().await.unwrap();
                outbox.enqueue_all(&mut tx, &events).await.unwrap();
                tx.commit().await.unwrap();
                tokio::time::sleep(Duration::from_millis(fastrand::u64(5..40))).await;
            }
        })
    };

    let mut relay = spawn_relay(&target);
    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(100..600))).await;
        relay.kill().unwrap(); // SIGKILL
        relay.wait().unwrap();
        relay = spawn_relay(&target);
    }
    writing.await.unwrap();

    // The last relay drains the outbox; the consumer catches up.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let backlog = outbox.backlog().await.unwrap();
        let stats = consumer.stats();
        if backlog.pending == 0 && stats.applied == u64::from(EVENTS) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stuck: {backlog:?}, consumer {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    relay.kill().unwrap();
    relay.wait().unwrap();
    consuming.abort();

    let backlog = outbox.backlog().await.unwrap();
    assert_eq!((backlog.pending, backlog.dead), (0, 0), "nothing left");
    let (applied, distinct): (i64, i64) = sqlx::query_as(&format!(
        "SELECT count(*), count(DISTINCT event_id) FROM {schema}.applied"
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (applied, distinct),
        (i64::from(EVENTS), i64::from(EVENTS)),
        "every event applied exactly once"
    );
    let out_of_order: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM (SELECT n, row_number() OVER (PARTITION BY aggregate ORDER BY position) - 1 AS expected \
         FROM {schema}.applied) applied WHERE n <> expected"
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(out_of_order, 0, "applied in order within each aggregate");
    let stored = context
        .get_stream(&stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    let stats = consumer.stats();
    assert_eq!(stats.dead_lettered, 0);

    println!(
        "crash run: {EVENTS} events, {KILLS} relay kills, {applied} applied once each, \
         {stored} messages in the stream, {} redeliveries dropped by the inbox, {:.1} s",
        stats.duplicates,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        stored,
        u64::from(EVENTS),
        "JetStream dropped every re-publish"
    );

    context.delete_stream(&stream).await.unwrap();
    db.drop().await;
}
