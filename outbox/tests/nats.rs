//! The JetStream publisher against a real NATS server (`NATS_URL`, default
//! `nats://127.0.0.1:4222`), fed by the outbox on a real PostgreSQL. Each
//! test uses its own stream.
#![cfg(all(feature = "nats", feature = "postgres"))]

mod support;

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures_util::{StreamExt, TryStreamExt};
use palisade_outbox::{
    Delivery, Event, Message, NatsJetStreamPublisher, OutboxConfig, OutboxStore, PgOutbox,
    Published, Publisher, Relay,
};

async fn jetstream() -> jetstream::Context {
    let url = palisade_testkit::servers::nats_url();
    jetstream::new(
        async_nats::connect(url)
            .await
            .expect("a reachable NATS (run scripts/services)"),
    )
}

/// Creates the stream `name` on `<name>.>` (lowercase), as `config` has it
/// otherwise.
async fn stream_of(context: &jetstream::Context, name: &str, config: stream::Config) {
    context
        .create_stream(stream::Config {
            name: name.to_owned(),
            subjects: vec![format!("{}.>", name.to_ascii_lowercase())],
            ..config
        })
        .await
        .unwrap();
}

/// The configuration of the stream `name`.
async fn stream_config(context: &jetstream::Context, name: &str) -> stream::Config {
    let mut stream = context.get_stream(name).await.unwrap();
    stream.info().await.unwrap().config.clone()
}

fn unique() -> String {
    format!("T{}", fastrand::u64(..))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_must_remember_ids_for_the_retry_horizon() {
    let context = jetstream().await;
    let name = unique();
    let config = OutboxConfig::default().max_attempts(5);
    let publisher = NatsJetStreamPublisher::new(context.clone(), &name, "/test");
    let missing = publisher.ensure_stream(&config, false).await.unwrap_err();
    assert!(missing.to_string().contains("is not there"), "{missing}");

    stream_of(
        &context,
        &name,
        stream::Config {
            duplicate_window: Duration::from_secs(1),
            ..stream::Config::default()
        },
    )
    .await;
    let short = publisher.ensure_stream(&config, false).await.unwrap_err();
    assert!(
        short
            .to_string()
            .contains("shorter than the relay's retry horizon"),
        "{short}"
    );
    publisher.ensure_stream(&config, true).await.unwrap();
    let window = stream_config(&context, &name).await.duplicate_window;
    assert!(window >= config.retry_horizon());
    context.delete_stream(&name).await.unwrap();
}

/// A stream that keeps its messages in memory is refused, created or not:
/// a restart of NATS would lose events the outbox counted as delivered
/// (it was taken).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_in_memory_is_refused() {
    let context = jetstream().await;
    let name = unique();
    stream_of(
        &context,
        &name,
        stream::Config {
            duplicate_window: Duration::from_secs(3600),
            storage: stream::StorageType::Memory,
            ..stream::Config::default()
        },
    )
    .await;
    let publisher = NatsJetStreamPublisher::new(context.clone(), &name, "/test");
    for create in [false, true] {
        let refused = publisher
            .ensure_stream(&OutboxConfig::default(), create)
            .await
            .unwrap_err();
        assert!(refused.to_string().contains("in memory"), "{refused}");
    }
    context.delete_stream(&name).await.unwrap();
}

/// A stream the publisher makes has the template's limits and replicas,
/// the publisher's name and subjects, and a window covering the retry
/// horizon (it was made with JetStream's defaults, keeping every message
/// for ever); a template no outbox can work with (in memory, capturing
/// none of the publisher's subjects, removing messages once taken, no
/// acks, a message a subject, messages gone before the window) makes
/// nothing, and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_made_by_the_publisher_has_the_templates_settings() {
    let context = jetstream().await;
    let config = OutboxConfig::default();
    let template = stream::Config {
        name: "ignored".to_owned(),
        max_age: Duration::from_secs(3_600),
        max_bytes: 1 << 20,
        max_messages: 10_000,
        num_replicas: 1,
        duplicate_window: Duration::from_secs(1),
        ..stream::Config::default()
    };

    let name = unique();
    let publisher =
        NatsJetStreamPublisher::new(context.clone(), &name, "/test").creating(template.clone());
    publisher.ensure_stream(&config, true).await.unwrap();
    let made = stream_config(&context, &name).await;
    assert_eq!(made.name, name);
    assert_eq!(made.subjects, [format!("{}.>", name.to_ascii_lowercase())]);
    assert_eq!(
        (made.max_age, made.max_bytes, made.max_messages),
        (Duration::from_secs(3_600), 1 << 20, 10_000)
    );
    assert!(made.duplicate_window >= config.retry_horizon());
    publisher.ensure_stream(&config, false).await.unwrap();
    context.delete_stream(&name).await.unwrap();

    let refusals = [
        (
            stream::Config {
                storage: stream::StorageType::Memory,
                ..template.clone()
            },
            "in memory",
        ),
        (
            stream::Config {
                subjects: vec!["elsewhere.>".to_owned()],
                ..template.clone()
            },
            "none of the publisher's subjects",
        ),
        (
            stream::Config {
                retention: stream::RetentionPolicy::WorkQueue,
                ..template.clone()
            },
            "retention",
        ),
        (
            stream::Config {
                no_ack: true,
                ..template.clone()
            },
            "no_ack",
        ),
        (
            stream::Config {
                max_messages_per_subject: 1,
                ..template.clone()
            },
            "max_messages_per_subject",
        ),
        (
            stream::Config {
                max_age: Duration::from_secs(60),
                ..template
            },
            "max_age",
        ),
    ];
    for (template, says) in refusals {
        let name = unique();
        let refused = NatsJetStreamPublisher::new(context.clone(), &name, "/test")
            .creating(template)
            .ensure_stream(&config, true)
            .await
            .unwrap_err();
        assert!(refused.to_string().contains(says), "{refused}");
        assert!(context.get_stream(&name).await.is_err(), "nothing made");
    }
}

/// A stream that captures none of the publisher's subjects is refused:
/// every publish would find no stream, read as NATS away, and be retried
/// for ever (it was taken). One that captures some (an aggregate's) is
/// taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_capturing_none_of_the_publishers_subjects_is_refused() {
    let context = jetstream().await;
    let name = unique();
    stream_of(
        &context,
        &name,
        stream::Config {
            duplicate_window: Duration::from_secs(3600),
            ..stream::Config::default()
        },
    )
    .await;
    let config = OutboxConfig::default();
    for create in [false, true] {
        let refused = NatsJetStreamPublisher::new(context.clone(), &name, "/test")
            .subject_prefix("elsewhere")
            .ensure_stream(&config, create)
            .await
            .unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("none of the publisher's subjects"),
            "{refused}"
        );
    }
    NatsJetStreamPublisher::new(context.clone(), &name, "/test")
        .ensure_stream(&config, false)
        .await
        .unwrap();
    context.delete_stream(&name).await.unwrap();

    let narrow = unique();
    let prefix = narrow.to_ascii_lowercase();
    context
        .create_stream(stream::Config {
            name: narrow.clone(),
            subjects: vec![format!("{prefix}.order.>")],
            duplicate_window: Duration::from_secs(3600),
            ..stream::Config::default()
        })
        .await
        .unwrap();
    NatsJetStreamPublisher::new(context.clone(), &narrow, "/test")
        .ensure_stream(&config, false)
        .await
        .unwrap();
    context.delete_stream(&narrow).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_jetstream_once_with_their_envelope() {
    let db = support::PgSchema::new().await;
    let (pool, schema) = (db.pool.clone(), db.name.clone());
    let outbox = db.outbox(|c| c).await;

    let context = jetstream().await;
    let name = unique();
    let publisher = NatsJetStreamPublisher::new(context.clone(), &name, "/orders");
    publisher
        .ensure_stream(outbox.config(), true)
        .await
        .unwrap();

    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let events: Vec<Event> = (0..20)
        .map(|n| {
            Event::new(
                "order",
                format!("o-{}", n % 4),
                "OrderCreated",
                format!("{{\"n\":{n}}}").into_bytes(),
            )
            .content_type("application/json")
            .header("traceparent", traceparent)
        })
        .collect();
    let mut tx = pool.begin().await.unwrap();
    outbox.enqueue_all(&mut tx, &events).await.unwrap();
    tx.commit().await.unwrap();

    let relay = Relay::new(outbox.clone(), publisher.clone());
    let mut published = 0;
    while published < 20 {
        published += relay.run_once().await.unwrap().published;
    }
    // A retry of an already stored event is acknowledged as a duplicate.
    let again = outbox_message(&outbox, &pool, &schema, &events[0]).await;
    assert_eq!(
        publisher.publish(&again).await.unwrap(),
        Published::Duplicate
    );

    let consumer = context
        .get_stream(&name)
        .await
        .unwrap()
        .create_consumer(consumer::pull::Config::default())
        .await
        .unwrap();
    let mut messages = consumer
        .fetch()
        .max_messages(100)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Some(message) = messages.next().await {
        got.push(message.unwrap());
    }
    assert_eq!(got.len(), 20, "stored once each");
    let first = &got[0];
    let headers = first.headers.as_ref().unwrap();
    let header = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
    assert_eq!(header("ce-specversion").as_deref(), Some("1.0"));
    assert_eq!(header("ce-type").as_deref(), Some("OrderCreated"));
    assert_eq!(header("ce-source").as_deref(), Some("/orders"));
    assert_eq!(header("ce-traceparent").as_deref(), Some(traceparent));
    assert_eq!(
        header("ce-datacontenttype").as_deref(),
        Some("application/json")
    );
    assert_eq!(header("Nats-Msg-Id"), header("ce-id"));
    assert_eq!(
        first.subject.as_str(),
        format!("{}.order.OrderCreated", name.to_ascii_lowercase())
    );

    context.delete_stream(&name).await.unwrap();
    db.drop().await;
}

/// An outbox in a schema of its own, and a stream of its own (as
/// [`stream_of`] makes it) with a two-minute duplicate window and
/// `config` otherwise.
struct Streamed {
    db: support::PgSchema,
    outbox: PgOutbox,
    context: jetstream::Context,
    name: String,
}

impl Streamed {
    async fn new(
        outbox: impl FnOnce(OutboxConfig) -> OutboxConfig,
        config: stream::Config,
    ) -> Self {
        let db = support::PgSchema::new().await;
        let outbox = db.outbox(outbox).await;
        let context = jetstream().await;
        let name = unique();
        let config = stream::Config {
            duplicate_window: Duration::from_secs(120),
            ..config
        };
        stream_of(&context, &name, config).await;
        Self {
            db,
            outbox,
            context,
            name,
        }
    }

    /// A publisher to the stream.
    fn publisher(&self) -> NatsJetStreamPublisher {
        NatsJetStreamPublisher::new(self.context.clone(), &self.name, "/test")
    }

    /// Enqueues `events` in one committed transaction.
    async fn enqueue(&self, events: &[Event]) {
        let mut tx = self.db.pool.begin().await.unwrap();
        self.outbox.enqueue_all(&mut tx, events).await.unwrap();
        tx.commit().await.unwrap();
    }

    async fn end(self) {
        self.context.delete_stream(&self.name).await.unwrap();
        self.db.drop().await;
    }
}

/// A message too large for the stream is the message's fault and spends
/// an attempt; a stream that is full (`DiscardPolicy::New`) takes no
/// message at all, and a subject no stream captures has no responders:
/// both are the broker's, waited out with the event's attempts untouched.
/// With one attempt each, the full stream's event would be dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_too_large_is_rejected_and_a_full_or_missing_stream_is_waited_out() {
    let full = stream::Config {
        max_messages: 1,
        max_message_size: 1024,
        discard: stream::DiscardPolicy::New,
        ..stream::Config::default()
    };
    let streamed = Streamed::new(|c| c.max_attempts(1), full).await;
    let events = [
        Event::new("order", "o-1", "Placed", b"{}".to_vec()),
        Event::new("order", "o-2", "Placed", vec![b'x'; 2048]),
    ];
    streamed.enqueue(&events).await;
    let relay = Relay::new(streamed.outbox.clone(), streamed.publisher());
    let report = relay.run_once().await.unwrap();
    assert_eq!((report.published, report.dead), (1, 1), "{report:?}");

    // The stream is full now, and a subject no stream captures has no
    // responders: a third event is waited out by both, not spent.
    let third = Event::new("order", "o-3", "Placed", b"{}".to_vec());
    streamed.enqueue(std::slice::from_ref(&third)).await;
    let nowhere_prefix = format!("nowhere{}", unique().to_ascii_lowercase());
    let nowhere = streamed.publisher().subject_prefix(&nowhere_prefix);
    for relay in [
        Relay::new(streamed.outbox.clone(), streamed.publisher()),
        Relay::new(streamed.outbox.clone(), nowhere),
    ] {
        let report = run_until_claimed(&relay).await;
        assert_eq!((report.unavailable, report.dead), (1, 0), "{report:?}");
    }
    // The missing stream's error names the subject no stream took.
    let last_error: String = sqlx::query_scalar(&format!(
        "SELECT last_error FROM {} WHERE id = $1",
        streamed.outbox.config().table()
    ))
    .bind(third.id().to_string())
    .fetch_one(&streamed.db.pool)
    .await
    .unwrap();
    assert!(
        last_error.contains(&format!("{nowhere_prefix}.order.Placed")),
        "{last_error}"
    );
    let dead = streamed.outbox.dead_events(10).await.unwrap();
    assert_eq!(dead.len(), 1, "only the large message is dead: {dead:?}");
    assert_eq!(dead[0].id, events[1].id());

    // Room again: the waiting event goes through.
    let stream = streamed.context.get_stream(&streamed.name).await.unwrap();
    stream.purge().await.unwrap();
    let report = run_until_claimed(&relay).await;
    assert_eq!(report.published, 1, "{report:?}");
    streamed.end().await;
}

/// A message larger than the whole stream (`max_bytes`, no
/// `max_message_size` to say so apart) gets the same "store failed" as a
/// full stream, but can never be stored: it is rejected and, at its last
/// attempt, dead, where it waited for ever and held its aggregate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_larger_than_the_whole_stream_is_rejected() {
    let small = stream::Config {
        max_bytes: 1024,
        discard: stream::DiscardPolicy::New,
        ..stream::Config::default()
    };
    let streamed = Streamed::new(|c| c.max_attempts(1), small).await;
    streamed
        .enqueue(&[Event::new("order", "o-1", "Placed", vec![b'x'; 2048])])
        .await;
    let relay = Relay::new(streamed.outbox.clone(), streamed.publisher());
    let report = relay.run_once().await.unwrap();
    assert_eq!((report.dead, report.unavailable), (1, 0), "{report:?}");
    streamed.end().await;
}

/// A stream whose subjects hold one message each, refusing more.
fn one_per_subject() -> stream::Config {
    stream::Config {
        max_messages_per_subject: 1,
        discard: stream::DiscardPolicy::New,
        discard_new_per_subject: true,
        ..stream::Config::default()
    }
}

/// Events the broker would not take while it took others of their batch
/// (a subject of the stream full under `discard_new_per_subject`) wait
/// the outage backoff's cap, where they came straight back after its
/// base, claimed and published again and again for as long as the
/// subject stayed full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_a_full_subject_refuses_while_others_pass_wait_the_longest_backoff() {
    let streamed = Streamed::new(|c| c, one_per_subject()).await;
    let relay = Relay::new(streamed.outbox.clone(), streamed.publisher())
        .outage_backoff(Duration::from_millis(1), Duration::from_secs(2));
    streamed
        .enqueue(&[Event::new("order", "o-1", "Placed", b"{}".to_vec())])
        .await;
    assert_eq!(relay.run_once().await.unwrap().published, 1);

    // The subject `order.Placed` is full now; `order.Paid` is not.
    streamed
        .enqueue(&[
            Event::new("order", "o-2", "Placed", b"{}".to_vec()),
            Event::new("order", "o-3", "Paid", b"{}".to_vec()),
        ])
        .await;
    let report = relay.run_once().await.unwrap();
    assert_eq!((report.published, report.unavailable), (1, 1), "{report:?}");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let again = relay.run_once().await.unwrap();
    assert_eq!(again.claimed, 0, "not due again so soon: {again:?}");

    // Claimed alone once due, it is refused again: a broker with no room
    // answered, so no outage (whose first wait is the base) but the same
    // long wait.
    let report = run_until_claimed(&relay).await;
    assert_eq!((report.claimed, report.unavailable), (1, 1), "{report:?}");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let again = relay.run_once().await.unwrap();
    assert_eq!(again.claimed, 0, "not due again so soon: {again:?}");
    streamed.end().await;
}

/// A message larger than a stream it is not published to is not judged
/// by that stream: a publisher named for one stream whose subjects land
/// in another, only full, waits (it read the named stream's `max_bytes`
/// and rejected the message, dead at its one attempt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_is_measured_against_the_stream_that_takes_its_subject() {
    let named = stream::Config {
        max_bytes: 1024,
        ..stream::Config::default()
    };
    let streamed = Streamed::new(|c| c.max_attempts(1), named).await;
    let taking = unique();
    let full = stream::Config {
        max_messages: 1,
        discard: stream::DiscardPolicy::New,
        ..stream::Config::default()
    };
    stream_of(&streamed.context, &taking, full).await;
    let elsewhere = format!("{}.events", taking.to_ascii_lowercase());
    let context = &streamed.context;
    let first = context.publish(elsewhere.clone(), "first".into()).await;
    first.unwrap().await.unwrap();
    let publisher = streamed.publisher().subject(move |_| elsewhere.clone());
    streamed
        .enqueue(&[Event::new("order", "o-1", "Placed", vec![b'x'; 2048])])
        .await;
    let relay = Relay::new(streamed.outbox.clone(), publisher);
    let report = relay.run_once().await.unwrap();
    assert_eq!((report.unavailable, report.dead), (1, 0), "{report:?}");
    context.delete_stream(&taking).await.unwrap();
    streamed.end().await;
}

/// A stream with no room answered: a relay's breaker does not take that
/// for the broker failing (it opened on a full subject, and every relay
/// sharing it stopped publishing to the subjects with room).
#[cfg(feature = "circuit-breaker")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_subject_does_not_open_the_relays_breaker() {
    use palisade_circuit_breaker::{CircuitBreaker, Config};

    let streamed = Streamed::new(|c| c, one_per_subject()).await;
    let breaker = CircuitBreaker::new(
        Config::builder()
            .minimum_calls(2)
            .open_duration(Duration::from_secs(30))
            .build()
            .unwrap(),
    );
    let relay = Relay::new(streamed.outbox.clone(), streamed.publisher()).circuit_breaker(breaker);
    // One `Placed` fills its subject; four more find it full.
    let placed: Vec<Event> = (0..5)
        .map(|n| Event::new("order", format!("p-{n}"), "Placed", b"{}".to_vec()))
        .collect();
    streamed.enqueue(&placed).await;
    let report = relay.run_once().await.unwrap();
    assert_eq!((report.published, report.unavailable), (1, 4), "{report:?}");

    streamed
        .enqueue(&[Event::new("order", "o-1", "Paid", b"{}".to_vec())])
        .await;
    let report = relay.run_once().await.unwrap();
    assert_eq!((report.published, report.unavailable), (1, 0), "{report:?}");
    streamed.end().await;
}

/// The publishes a full stream refuses together read its limit once,
/// not once each (a batch of a hundred sent two hundred requests to a
/// broker that had just said it had no room).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publishes_a_full_stream_refuses_together_read_its_limit_once() {
    let small = stream::Config {
        max_bytes: 600,
        discard: stream::DiscardPolicy::New,
        ..stream::Config::default()
    };
    let streamed = Streamed::new(|c| c, small).await;
    let filler = format!("{}.filler", streamed.name.to_ascii_lowercase());
    let filled = streamed
        .context
        .publish(filler, vec![b'x'; 400].into())
        .await;
    filled.unwrap().await.unwrap();
    let watcher = async_nats::connect(palisade_testkit::servers::nats_url())
        .await
        .unwrap();
    let mut reads = watcher
        .subscribe(format!("$JS.API.STREAM.INFO.{}", streamed.name))
        .await
        .unwrap();
    watcher.flush().await.unwrap();
    let events: Vec<Event> = (0..20)
        .map(|n| Event::new("order", format!("o-{n}"), "Placed", b"{}".to_vec()))
        .collect();
    streamed.enqueue(&events).await;
    let relay = Relay::new(streamed.outbox.clone(), streamed.publisher());
    let report = relay.run_once().await.unwrap();
    assert_eq!((report.claimed, report.unavailable), (20, 20), "{report:?}");
    // Every read the relay made is in before the server answers this.
    watcher.flush().await.unwrap();
    let mut count = 0;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), reads.next()).await {
        count += 1;
    }
    assert_eq!(count, 1, "one read of the stream's limit");
    streamed.end().await;
}

/// One turn of `relay` that claimed something, once the events handed back
/// by the turns before are due again.
async fn run_until_claimed<P: Publisher>(
    relay: &Relay<PgOutbox, P>,
) -> palisade_outbox::BatchReport {
    for _ in 0..600 {
        let report = relay.run_once().await.unwrap();
        if report.claimed > 0 {
            return report;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing came due in 30 s");
}

/// The outbox message of `event`, as a relay would claim it again.
async fn outbox_message(
    outbox: &PgOutbox,
    pool: &sqlx::PgPool,
    schema: &str,
    event: &Event,
) -> Message {
    sqlx::query(&format!(
        "UPDATE {schema}.outbox SET status = 'pending' WHERE id = $1"
    ))
    .bind(event.id().to_string())
    .execute(pool)
    .await
    .unwrap();
    let claimed = outbox.claim().await.unwrap();
    claimed
        .into_iter()
        .find(|m| m.event.id() == event.id())
        .unwrap()
}

/// A read model is rebuilt from the stream: the replay reads the matching
/// history in stream order, leaves out what has no envelope, and consumes
/// nothing (a second replay reads it all again; no consumer is left).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_reads_the_matching_history_in_order_and_changes_nothing() {
    let db = support::PgSchema::new().await;
    let pool = db.pool.clone();
    let outbox = db.outbox(|c| c).await;
    let context = jetstream().await;
    let name = unique();
    let prefix = name.to_ascii_lowercase();
    let publisher = NatsJetStreamPublisher::new(context.clone(), &name, "/orders");
    publisher
        .ensure_stream(outbox.config(), true)
        .await
        .unwrap();
    let empty = replayed(&context, &name, &format!("{prefix}.order.Shipped")).await;
    assert!(empty.is_empty());

    let events: Vec<Event> = (0..12)
        .map(|n| {
            let kind = if n % 3 == 0 { "Shipped" } else { "Placed" };
            Event::new("order", format!("o-{n}"), kind, vec![n])
        })
        .collect();
    let mut tx = pool.begin().await.unwrap();
    outbox.enqueue_all(&mut tx, &events).await.unwrap();
    tx.commit().await.unwrap();
    let relay = Relay::new(outbox.clone(), publisher);
    let mut published = 0;
    while published < events.len() {
        published += relay.run_once().await.unwrap().published;
    }
    context
        .publish(format!("{prefix}.order.Shipped"), "no envelope".into())
        .await
        .unwrap()
        .await
        .unwrap();

    let shipped: Vec<String> = events
        .iter()
        .filter(|event| event.event_type() == "Shipped")
        .map(|event| event.id().to_string())
        .collect();
    for _ in 0..2 {
        let replayed = replayed(&context, &name, &format!("{prefix}.order.Shipped")).await;
        let ids: Vec<&str> = replayed.iter().map(|d| d.envelope.id.as_str()).collect();
        assert_eq!(ids, shipped);
        assert_eq!(replayed[1].payload.as_ref(), [3]);
        assert_eq!(
            replayed[1].subject,
            format!("{prefix}.order.Shipped"),
            "{replayed:?}"
        );
    }
    let mut stream = context.get_stream(&name).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.consumer_count, 0);
    let missing = palisade_outbox::replay(&context, &unique(), ">").await;
    assert!(missing.is_err());

    context.delete_stream(&name).await.unwrap();
    db.drop().await;
}

/// Every delivery of a replay of `stream` on `filter`.
async fn replayed(context: &jetstream::Context, stream: &str, filter: &str) -> Vec<Delivery> {
    palisade_outbox::replay(context, stream, filter)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

/// A history longer than one pull comes whole and in order, as it is
/// pulled (the replay held all of it in memory before), to a reader slow
/// over a delivery too, and ends where the stream ended when the replay
/// began: what is published while it is read is not part of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_longer_than_a_pull_comes_in_order_and_ends_where_the_stream_did() {
    let context = jetstream().await;
    let name = unique();
    let prefix = name.to_ascii_lowercase();
    let publisher = NatsJetStreamPublisher::new(context.clone(), &name, "/orders");
    publisher
        .ensure_stream(&OutboxConfig::default(), true)
        .await
        .unwrap();
    let publish = |n: usize| {
        let publisher = publisher.clone();
        async move {
            let event = Event::new(
                "order",
                format!("o-{n}"),
                "Shipped",
                n.to_be_bytes().to_vec(),
            );
            let id = event.id().to_string();
            let published = publisher.publish(&Message::new(event, 0, 0)).await;
            assert!(matches!(published, Ok(Published::Stored)), "{published:?}");
            id
        }
    };
    let mut history = Vec::new();
    for n in 0..1_100 {
        history.push(publish(n).await);
    }

    let mut replay = palisade_outbox::replay(&context, &name, &format!("{prefix}.>"))
        .await
        .unwrap();
    let first = replay.try_next().await.unwrap().unwrap();
    for n in 1_100..1_110 {
        publish(n).await;
    }
    // A reader slow over one delivery: past the pull's expiry (a pull
    // read as the reader went dropped what it still held, unsaid).
    tokio::time::sleep(Duration::from_secs(7)).await;
    let mut ids = vec![first.envelope.id];
    while let Some(delivery) = replay.try_next().await.unwrap() {
        ids.push(delivery.envelope.id);
    }
    assert_eq!(ids.len(), history.len());
    assert!(ids == history, "the replay's order is the stream's");
    assert!(replay.try_next().await.unwrap().is_none(), "it stays ended");
    let mut stream = context.get_stream(&name).await.unwrap();
    assert_eq!(
        stream.info().await.unwrap().state.consumer_count,
        0,
        "its consumer is deleted at its end"
    );
    context.delete_stream(&name).await.unwrap();
}
