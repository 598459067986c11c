//! palisade-outbox's relay on real PostgreSQL and NATS JetStream, in one
//! run:
//!
//! 1. The ceiling: raw JetStream publishes with acknowledgement, 256 in
//!    flight, from one client.
//! 2. Relay throughput: 50,000 committed events (over 1,000 aggregates, per-
//!    aggregate order on) drained to JetStream by one relay, then by two,
//!    in events per second from the first claim to the last acknowledgement.
//! 3. Commit → publish latency at 500 events/s (one event per
//!    transaction, 10 s): from just before `COMMIT` to the message reaching
//!    a subscriber, with LISTEN/NOTIFY and with polling only (every 100 ms,
//!    and every 1 s, the default).
//!
//! ```sh
//! cargo run --release -p palisade-bench --example outbox_relay
//! # Only the ceiling and the drains, one relay then two, 5 rounds:
//! cargo run --release -p palisade-bench --example outbox_relay -- drain 5
//! # One relay over 1,000, 100 and 10 aggregates:
//! cargo run --release -p palisade-bench --example outbox_relay -- hot
//! ```
//!
//! Uses `DATABASE_URL` and `NATS_URL` (defaults: the local servers of
//! `scripts/services`); each part works in its own schema and stream and
//! removes them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures_util::StreamExt;
use palisade_bench::percentile_ms;
use palisade_outbox::{Event, NatsJetStreamPublisher, OutboxConfig, PgOutbox, Relay};
use sqlx::PgPool;

const DRAIN_EVENTS: u32 = 50_000;
const CEILING_MESSAGES: u32 = 50_000;
const RATE: u32 = 500;
const LATENCY_SECONDS: u32 = 10;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// A fresh schema's outbox and a fresh stream's publisher.
async fn setup(
    pool: &PgPool,
    context: &jetstream::Context,
    config: impl FnOnce(OutboxConfig) -> OutboxConfig,
) -> Result<(PgOutbox, NatsJetStreamPublisher, String, String), Error> {
    let schema = format!("outbox_bench_{}", fastrand::u64(..));
    let stream = format!("BENCH{}", fastrand::u64(..));
    let outbox = PgOutbox::new(
        pool.clone(),
        config(OutboxConfig::new(&format!("{schema}.outbox"))?),
    );
    outbox.migrate().await?;
    let publisher = NatsJetStreamPublisher::new(context.clone(), &stream, "/bench");
    publisher.ensure_stream(outbox.config(), true).await?;
    Ok((outbox, publisher, schema, stream))
}

async fn teardown(
    pool: &PgPool,
    context: &jetstream::Context,
    schema: &str,
    stream: &str,
) -> Result<(), Error> {
    context.delete_stream(stream).await?;
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(pool)
        .await?;
    Ok(())
}

fn payload(n: u32) -> Vec<u8> {
    format!(r#"{{"order":"o-{n}","sku":"sku-{}","quantity":2,"total_cents":4200,"note":"a payload of about two hundred bytes, as an order event might be, padded here to that size ......"}}"#, n % 97).into_bytes()
}

/// Raw JetStream: publish with acks, `window` in flight.
async fn ceiling(context: &jetstream::Context) -> Result<f64, Error> {
    let stream = format!("BENCH{}", fastrand::u64(..));
    let subject = stream.to_ascii_lowercase();
    context
        .create_stream(jetstream::stream::Config {
            name: stream.clone(),
            subjects: vec![format!("{subject}.>")],
            ..Default::default()
        })
        .await?;
    let started = Instant::now();
    let acks = futures_util::stream::iter(0..CEILING_MESSAGES)
        .map(|n| {
            let context = context.clone();
            let subject = format!("{subject}.order.Placed");
            async move {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", uuid::Uuid::now_v7().to_string().as_str());
                context
                    .publish_with_headers(subject, headers, payload(n).into())
                    .await?
                    .await?;
                Ok::<(), Error>(())
            }
        })
        .buffer_unordered(256);
    let results: Vec<_> = acks.collect().await;
    let elapsed = started.elapsed();
    for result in results {
        result?;
    }
    context.delete_stream(&stream).await?;
    Ok(f64::from(CEILING_MESSAGES) / elapsed.as_secs_f64())
}

/// Enqueues `events` events (a multiple of 1,000) over `aggregates`
/// aggregates, then times `relays` relays draining them.
async fn drain(
    pool: &PgPool,
    context: &jetstream::Context,
    relays: usize,
    (events, aggregates): (u32, u32),
) -> Result<f64, Error> {
    let (outbox, publisher, schema, stream) = setup(pool, context, |c| {
        c.batch_size(500).poll_interval(Duration::from_millis(50))
    })
    .await?;
    for chunk in 0..events / 1000 {
        let events: Vec<Event> = (0..1000)
            .map(|i| {
                let n = chunk * 1000 + i;
                Event::new(
                    "order",
                    format!("o-{}", n % aggregates),
                    "OrderPlaced",
                    payload(n),
                )
                .content_type("application/json")
            })
            .collect();
        let mut tx = pool.begin().await?;
        outbox.enqueue_all(&mut tx, &events).await?;
        tx.commit().await?;
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let running: Vec<_> = (0..relays)
        .map(|_| {
            let relay = Relay::new(outbox.clone(), publisher.clone());
            let mut stopped = stopped.clone();
            tokio::spawn(relay.run(async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            }))
        })
        .collect();
    // Drained when no event is pending. Asked as cheaply as PostgreSQL
    // can answer (the first entry of the pending index), so the bench's
    // own polling takes no CPU from the relays it measures, as counting
    // the backlog (a pass over every pending event) would.
    let pending = format!("SELECT EXISTS (SELECT 1 FROM {schema}.outbox WHERE status = 'pending')");
    while sqlx::query_scalar::<_, bool>(&pending)
        .fetch_one(pool)
        .await?
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();
    stop.send(true)?;
    for relay in running {
        relay.await?;
    }
    let stored = context
        .get_stream(&stream)
        .await?
        .info()
        .await?
        .state
        .messages;
    assert_eq!(stored, u64::from(events), "every event stored once");
    teardown(pool, context, &schema, &stream).await?;
    Ok(f64::from(events) / elapsed.as_secs_f64())
}

/// Commit → subscriber latencies at `RATE` events/s.
async fn latencies(
    pool: &PgPool,
    context: &jetstream::Context,
    client: &async_nats::Client,
    listen: bool,
    poll: Duration,
) -> Result<Vec<Duration>, Error> {
    let (outbox, publisher, schema, stream) =
        setup(pool, context, |c| c.poll_interval(poll)).await?;
    if listen {
        outbox.listen().await?;
    }
    let committing: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut subscriber = client
        .subscribe(format!("{}.>", stream.to_ascii_lowercase()))
        .await?;
    let total = (RATE * LATENCY_SECONDS) as usize;
    let receiving = {
        let committing = committing.clone();
        tokio::spawn(async move {
            let mut seen = Vec::with_capacity(total);
            while seen.len() < total {
                let Some(message) = subscriber.next().await else {
                    break;
                };
                let arrived = Instant::now();
                let Some(id) = message.headers.as_ref().and_then(|h| h.get("ce-id")) else {
                    continue;
                };
                if let Some(sent) = committing.lock().unwrap().remove(id.as_str()) {
                    seen.push(arrived - sent);
                }
            }
            seen
        })
    };
    let relay = tokio::spawn(Relay::new(outbox.clone(), publisher).run(std::future::pending()));
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / RATE);
    for n in 0..RATE * LATENCY_SECONDS {
        ticks.tick().await;
        let event = Event::new("order", format!("o-{}", n % 100), "OrderPlaced", payload(n));
        let mut tx = pool.begin().await?;
        outbox.enqueue(&mut tx, &event).await?;
        committing
            .lock()
            .unwrap()
            .insert(event.id().to_string(), Instant::now());
        tx.commit().await?;
    }
    let mut seen = tokio::time::timeout(Duration::from_secs(60), receiving).await??;
    relay.abort();
    teardown(pool, context, &schema, &stream).await?;
    seen.sort();
    Ok(seen)
}

/// One relay draining the same number of events over fewer and fewer
/// aggregates. Per-aggregate order lets a claim take one event of each
/// aggregate, so over few aggregates a batch never fills: claims must not
/// walk the backlog held behind the events in flight (they set it aside),
/// and each aggregate moves one event per claim, publish and settle.
async fn hot_aggregates(pool: &PgPool, context: &jetstream::Context) -> Result<(), Error> {
    const EVENTS: u32 = 10_000;
    for aggregates in [1000, 100, 10] {
        let rate = drain(pool, context, 1, (EVENTS, aggregates)).await?;
        println!(
            "relay drain, 1 relay, {EVENTS} events over {aggregates:>4} aggregates: {rate:>8.0} events/s"
        );
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Error> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(&env(
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/test",
        ))
        .await?;
    let client = async_nats::connect(env("NATS_URL", "nats://127.0.0.1:4222")).await?;
    let context = jetstream::new(client.clone());

    let mut args = std::env::args().skip(1);
    let part = args.next();
    if part.as_deref() == Some("hot") {
        return hot_aggregates(&pool, &context).await;
    }
    let drain_only = match part.as_deref() {
        None => false,
        Some("drain") => true,
        Some(other) => return Err(format!("unknown part {other:?}: drain [ROUNDS] or hot").into()),
    };
    let rounds: usize = args.next().map_or(Ok(1), |n| n.parse())?;

    let ceiling = ceiling(&context).await?;
    println!("raw JetStream publish, 256 in flight: {ceiling:>8.0} msg/s (the ceiling)");
    // One relay, then two, round after round: the host drifts between
    // rounds, so each round's pair is a fair comparison and the medians
    // say which is faster.
    let mut rates = [Vec::new(), Vec::new()];
    for _ in 0..rounds {
        for (relays, seen) in (1..).zip(&mut rates) {
            let rate = drain(&pool, &context, relays, (DRAIN_EVENTS, 1000)).await?;
            println!(
                "relay drain, {relays} relay(s), {DRAIN_EVENTS} events: {rate:>8.0} events/s ({:.0}% of the ceiling)",
                rate / ceiling * 100.0
            );
            seen.push(rate);
        }
    }
    if rounds > 1 {
        for (relays, seen) in (1..).zip(&mut rates) {
            seen.sort_by(f64::total_cmp);
            let median = seen[seen.len() / 2];
            println!(
                "median of {rounds}, {relays} relay(s): {median:>8.0} events/s ({:.0}% of the ceiling)",
                median / ceiling * 100.0
            );
        }
    }
    if drain_only {
        return Ok(());
    }
    for (name, listen, poll) in [
        (
            "LISTEN/NOTIFY (poll 1 s as fallback)",
            true,
            Duration::from_secs(1),
        ),
        (
            "polling only, every 100 ms",
            false,
            Duration::from_millis(100),
        ),
        ("polling only, every 1 s", false, Duration::from_secs(1)),
    ] {
        let seen = latencies(&pool, &context, &client, listen, poll).await?;
        println!(
            "commit -> publish at {RATE}/s, {name}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} events)",
            percentile_ms(&seen, 0.5),
            percentile_ms(&seen, 0.99),
            percentile_ms(&seen, 1.0),
            seen.len()
        );
    }
    Ok(())
}
