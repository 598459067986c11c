//! The JetStream consumer helper against real NATS and PostgreSQL: events
//! go outbox → relay → JetStream → consumer → the consumer's tables, each
//! applied once, failures retried and then dead-lettered.
#![cfg(all(feature = "nats", feature = "postgres"))]

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use palisade_outbox::{
    BoxError, ConsumerConfig, ConsumerStats, Delivery, Event, Handled, Handler, JetStreamConsumer,
    NatsJetStreamPublisher, PgInbox, PgOutbox, Relay, Transient,
};
use palisade_tracecontext::{TraceContext, TraceFlags, TraceId};
use sqlx::PgConnection;

async fn jetstream() -> jetstream::Context {
    let url = palisade_testkit::servers::nats_url();
    jetstream::new(
        async_nats::connect(url)
            .await
            .expect("a reachable NATS (run scripts/services)"),
    )
}

/// Writes each applied event into `applied`; `Flaky` fails its first two
/// deliveries, `Bad` every one; `Slow` takes [`SLOW`] over its first,
/// `Hangs` never ends; `Dawdles` takes [`DAWDLE`] over each; `Outage`
/// fails as [`Transient`] while the rig's outage lasts, then once plainly;
/// unknown types are ignored.
struct Apply {
    schema: String,
    outage: Arc<AtomicBool>,
    deliveries: Mutex<HashMap<String, u32>>,
    /// The trace each applied event was handled in, by event id (a batch
    /// rolled back for another event's failure runs the handler again).
    traces: Mutex<HashMap<String, Option<TraceId>>>,
    /// The events whose transaction committed, as told.
    committed: Mutex<Vec<String>>,
    /// The extension attributes of each applied event.
    extensions: Mutex<Vec<std::collections::BTreeMap<String, String>>>,
}

impl Handler<PgConnection> for Apply {
    async fn handle(
        &self,
        tx: &mut PgConnection,
        delivery: &Delivery,
    ) -> Result<Handled, BoxError> {
        let seen = {
            let mut deliveries = self.deliveries.lock().unwrap();
            let seen = deliveries.entry(delivery.envelope.id.clone()).or_default();
            *seen += 1;
            *seen
        };
        match delivery.envelope.event_type.as_str() {
            // `New` is a type a newer version of the service takes.
            "Good" | "New" => {}
            "Flaky" if seen > 2 => {}
            "Flaky" | "Bad" => return Err(format!("cannot apply yet (delivery {seen})").into()),
            "Slow" if seen == 1 => tokio::time::sleep(SLOW).await,
            "Slow" => {}
            "Hangs" => std::future::pending::<()>().await,
            "Dawdles" => tokio::time::sleep(DAWDLE).await,
            "Outage" if self.outage.load(Ordering::SeqCst) => {
                return Err(Box::new(Transient::new("the store is away")));
            }
            "Outage" if seen == 1 => return Err("a plain failure".into()),
            "Outage" => {}
            _ => return Ok(Handled::Ignored),
        }
        self.extensions
            .lock()
            .unwrap()
            .push(delivery.envelope.extensions.clone());
        self.traces.lock().unwrap().insert(
            delivery.envelope.id.clone(),
            TraceContext::current().map(|context| context.trace_id()),
        );
        sqlx::query(&format!(
            "INSERT INTO {}.applied (id, payload) VALUES ($1, $2)",
            self.schema
        ))
        .bind(&delivery.envelope.id)
        .bind(delivery.payload.to_vec())
        .execute(tx)
        .await?;
        Ok(Handled::Applied)
    }

    fn committed(&self, delivery: &Delivery) {
        self.committed
            .lock()
            .unwrap()
            .push(delivery.envelope.id.clone());
    }
}

/// How long `Slow` takes over its first delivery.
const SLOW: Duration = Duration::from_secs(4);

/// How long `Dawdles` takes over each delivery.
const DAWDLE: Duration = Duration::from_millis(1_500);

/// A schema with an outbox, an inbox and the `applied` table, and a
/// fresh stream the outbox's events are relayed to.
struct Rig {
    db: support::PgSchema,
    /// Whether `Outage` events fail as transient.
    outage: Arc<AtomicBool>,
    outbox: PgOutbox,
    inbox: PgInbox,
    context: jetstream::Context,
    stream: String,
}

impl Rig {
    async fn new() -> Self {
        let db = support::PgSchema::new().await;
        let schema = &db.name;
        let outbox = db.outbox(|c| c).await;
        let inbox = PgInbox::new(db.pool.clone(), &format!("{schema}.inbox")).unwrap();
        inbox.migrate().await.unwrap();
        sqlx::query(&format!(
            "CREATE TABLE {schema}.applied (id TEXT PRIMARY KEY, payload BYTEA, n BIGSERIAL)"
        ))
        .execute(&db.pool)
        .await
        .unwrap();
        let context = jetstream().await;
        let stream = format!("C{}", fastrand::u64(..));
        NatsJetStreamPublisher::new(context.clone(), &stream, "/test")
            .ensure_stream(outbox.config(), true)
            .await
            .unwrap();
        Self {
            db,
            outage: Arc::default(),
            outbox,
            inbox,
            context,
            stream,
        }
    }

    /// Runs a consumer made from `config` until `seen` (half a minute at
    /// most), then stops it; its inbox retention.
    async fn run_until_seen<F: Future<Output = bool>>(
        &self,
        config: ConsumerConfig,
        seen: impl Fn() -> F,
    ) -> Duration {
        let consumer = Arc::new(self.consumer(config).await.unwrap());
        let (stop, running) = start(&consumer);
        let started = tokio::time::Instant::now();
        while !seen().await && started.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.send(()).unwrap();
        running.await.unwrap().unwrap();
        consumer.inbox_retention()
    }

    /// The one text column `sql` selects, row by row.
    async fn texts(&self, sql: String) -> Vec<String> {
        sqlx::query_scalar(&sql)
            .fetch_all(&self.db.pool)
            .await
            .unwrap()
    }

    /// Four events, applied by the durable `first`, run until then.
    async fn first_applies_four(&self) {
        self.publish(&good_and_new(4)).await;
        let first = self
            .run_until(self.config("first"), |stats| stats.applied == 4)
            .await;
        assert_eq!(first.applied, 4);
    }

    /// Writes `events` in one transaction and relays every one.
    async fn publish(&self, events: &[Event]) {
        let mut tx = self.db.pool.begin().await.unwrap();
        self.outbox.enqueue_all(&mut tx, events).await.unwrap();
        tx.commit().await.unwrap();
        let publisher = NatsJetStreamPublisher::new(self.context.clone(), &self.stream, "/test");
        let relay = Relay::new(self.outbox.clone(), publisher);
        let mut published = 0;
        while published < events.len() {
            published += relay.run_once().await.unwrap().published;
        }
    }

    /// The consumer `durable` of the stream's order events, which
    /// dead-letters to `<prefix>.dead` (in the stream, out of its filter).
    fn config(&self, durable: &str) -> ConsumerConfig {
        let prefix = self.stream.to_ascii_lowercase();
        ConsumerConfig::new(&self.stream, durable, &format!("{prefix}.dead"))
            .unwrap()
            .filter_subject(&format!("{prefix}.order.>"))
    }

    /// A consumer made from `config`, applying with [`handler`](Self::handler).
    async fn consumer(
        &self,
        config: ConsumerConfig,
    ) -> Result<JetStreamConsumer<PgInbox, Apply>, palisade_outbox::ConsumerSetupError> {
        JetStreamConsumer::new(
            self.context.clone(),
            config,
            self.inbox.clone(),
            self.handler(),
        )
        .await
    }

    /// Runs a consumer made from `config` until its stats are `done`
    /// (half a minute at most), then stops it; its stats.
    async fn run_until(
        &self,
        config: ConsumerConfig,
        done: impl Fn(ConsumerStats) -> bool,
    ) -> ConsumerStats {
        let consumer = Arc::new(self.consumer(config).await.unwrap());
        let (stop, running) = start(&consumer);
        until(&consumer, done).await;
        stop.send(()).unwrap();
        running.await.unwrap().unwrap();
        consumer.stats()
    }

    fn handler(&self) -> Apply {
        Apply {
            schema: self.db.name.clone(),
            outage: Arc::clone(&self.outage),
            deliveries: Mutex::default(),
            traces: Mutex::default(),
            committed: Mutex::default(),
            extensions: Mutex::default(),
        }
    }

    /// The payloads applied, in the order they were.
    async fn applied_in_order(&self) -> Vec<Vec<u8>> {
        sqlx::query_scalar(&format!(
            "SELECT payload FROM {}.applied ORDER BY n",
            self.db.name
        ))
        .fetch_all(&self.db.pool)
        .await
        .unwrap()
    }

    async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {}.{table}", self.db.name))
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }

    async fn remove(self) {
        self.context.delete_stream(&self.stream).await.unwrap();
        self.db.drop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_is_applied_once_and_failures_end_as_dead_letters() {
    let rig = Rig::new().await;
    let (context, stream, outbox) = (&rig.context, &rig.stream, &rig.outbox);
    let prefix = stream.to_ascii_lowercase();

    // Written inside a request's trace: the events carry it.
    let trace = TraceContext::new_root(TraceFlags::SAMPLED);
    let mut events: Vec<Event> = trace
        .clone()
        .scope(async {
            (0..5)
                .map(|n| Event::new("order", format!("o-{n}"), "Good", vec![n]))
                .collect()
        })
        .await;
    events.push(Event::new("order", "o-f", "Flaky", b"f".to_vec()));
    events.push(Event::new("order", "o-b", "Bad", b"b".to_vec()));
    events.push(Event::new("order", "o-u", "FromTheFuture", b"u".to_vec()));
    rig.publish(&events).await;

    // A copy of the first event that slipped past JetStream's window (a new
    // Nats-Msg-Id, the same event id), and a message with no envelope.
    let copy = context
        .get_stream(&stream)
        .await
        .unwrap()
        .get_raw_message(1)
        .await
        .unwrap();
    let mut headers = copy.headers.clone();
    headers.insert("Nats-Msg-Id", "another-id");
    context
        .publish_with_headers(copy.subject.clone(), headers, copy.payload.clone())
        .await
        .unwrap()
        .await
        .unwrap();
    context
        .publish(format!("{prefix}.order.Raw"), "no envelope".into())
        .await
        .unwrap()
        .await
        .unwrap();

    let dead_letters = format!("{prefix}.dead");
    let config = ConsumerConfig::new(stream, "apply", &dead_letters)
        .unwrap()
        .filter_subject(&format!("{prefix}.order.>"))
        .max_deliver(3)
        .retry_delay(Duration::from_millis(20), Duration::from_millis(100));
    let consumer = Arc::new(rig.consumer(config).await.unwrap());
    let (stop, running) = start(&consumer);
    let expected = ConsumerStats {
        applied: 6,
        duplicates: 1,
        ignored: 1,
        retried: 4,
        dead_lettered: 2,
        handed_on: 0,
    };
    until(&consumer, |stats| stats == expected).await;
    assert_eq!(consumer.stats(), expected);
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();

    // The inbox must remember a message as long as JetStream may bring it
    // back: here the stream's duplicate window is the longer.
    let retention = consumer.inbox_retention();
    assert!(
        retention >= outbox.config().retry_horizon(),
        "{retention:?}"
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        consumer
            .forget_processed(Duration::ZERO, 100)
            .await
            .unwrap(),
        7,
        "six applied and one ignored were recorded; failures were rolled back"
    );

    let applied = rig.count("applied").await;
    assert_eq!(applied, 6, "five good events and the flaky one, once each");
    let mut committed = consumer.handler().committed.lock().unwrap().clone();
    committed.sort();
    committed.dedup();
    assert_eq!(
        (
            committed.len(),
            consumer.handler().committed.lock().unwrap().len()
        ),
        (6, 6),
        "told once for each applied event, never for a rolled-back attempt"
    );
    let traces: Vec<Option<TraceId>> = consumer
        .handler()
        .traces
        .lock()
        .unwrap()
        .values()
        .copied()
        .collect();
    assert_eq!(traces.len(), 6);
    assert_eq!(
        traces
            .iter()
            .filter(|t| **t == Some(trace.trace_id()))
            .count(),
        5,
        "the good events were handled in the trace they were written in: {traces:?}"
    );
    assert!(
        traces.iter().all(Option::is_some),
        "the flaky one in a new trace"
    );

    // Nothing is left unacknowledged.
    let mut durable = context
        .get_stream(&stream)
        .await
        .unwrap()
        .get_consumer::<consumer::pull::Config>("apply")
        .await
        .unwrap();
    let info = durable.info().await.unwrap();
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0));

    // The two dead letters say why, and keep the original headers.
    let letters = context
        .get_stream(&stream)
        .await
        .unwrap()
        .create_consumer(consumer::pull::Config {
            filter_subject: dead_letters.clone(),
            ..consumer::pull::Config::default()
        })
        .await
        .unwrap()
        .fetch()
        .max_messages(10)
        .expires(Duration::from_secs(1))
        .messages()
        .await
        .unwrap()
        .map(|message| message.unwrap())
        .collect::<Vec<_>>()
        .await;
    assert_eq!(letters.len(), 2);
    let mut reasons: Vec<(String, String)> = letters
        .iter()
        .map(|letter| {
            let headers = letter.headers.as_ref().unwrap();
            let get = |name: &str| {
                headers
                    .get(name)
                    .map_or_else(String::new, |v| v.to_string())
            };
            (get("ce-type"), get("palisade-deliveries"))
        })
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            (String::new(), "1".to_owned()),
            ("Bad".to_owned(), "3".to_owned())
        ],
        "the raw message at once, the bad event after its third delivery"
    );
    let bad = letters
        .iter()
        .find_map(|l| {
            l.headers
                .as_ref()?
                .get("palisade-error")
                .map(|v| v.to_string())
        })
        .unwrap();
    assert!(
        bad.contains("cannot apply yet") || bad.contains("CloudEvents"),
        "{bad}"
    );

    rig.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_types_asked_for_reach_the_handler_and_the_rest_are_acknowledged() {
    let rig = Rig::new().await;
    let events: Vec<Event> = (0..6)
        .map(|n| {
            let kind = if n % 2 == 0 { "Good" } else { "Bad" };
            Event::new("order", format!("o-{n}"), kind, vec![n])
        })
        .collect();
    rig.publish(&events).await;

    let config = rig.config("goods");
    let consumer = Arc::new(rig.consumer(config).await.unwrap().only(["Good"]));
    let (stop, running) = start(&consumer);
    let mut durable = rig
        .context
        .get_stream(&rig.stream)
        .await
        .unwrap()
        .get_consumer::<consumer::pull::Config>("goods")
        .await
        .unwrap();
    for _ in 0..600 {
        let info = durable.info().await.unwrap();
        if (info.num_pending, info.num_ack_pending) == (0, 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    let info = durable.info().await.unwrap();
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0));
    assert_eq!(
        consumer.stats(),
        ConsumerStats {
            applied: 3,
            ..ConsumerStats::default()
        },
        "the Bad events never reached the handler (it fails them all)"
    );
    assert_eq!(
        rig.count("inbox").await,
        3,
        "skipped messages cost no inbox record"
    );
    rig.remove().await;
}

/// The events `Good` and `New`, alternating, `n` of them.
fn good_and_new(n: u8) -> Vec<Event> {
    (0..n)
        .map(|n| {
            let kind = if n % 2 == 0 { "Good" } else { "New" };
            Event::new("order", format!("o-{n}"), kind, vec![n])
        })
        .collect()
}

/// The instances' bucket, and the keys of `durable`'s entries in it.
///
/// Each listing is bounded and tried again: async-nats's `keys` waits for
/// ever when the entries it counted at its start run out (the bucket drops
/// them 30 s after their last write) before it is sent them.
async fn entries(rig: &Rig, durable: &str) -> (jetstream::kv::Store, Vec<String>) {
    let store = rig
        .context
        .get_key_value("palisade_consumers")
        .await
        .unwrap();
    let prefix = format!("{}.{durable}.", rig.stream);
    for _ in 0..5 {
        let listed = tokio::time::timeout(Duration::from_secs(5), async {
            let keys = store.keys().await.ok()?;
            Some(
                keys.filter_map(|key| {
                    std::future::ready(key.ok().filter(|key| key.starts_with(&prefix)))
                })
                .collect::<Vec<String>>()
                .await,
            )
        })
        .await;
        if let Ok(Some(keys)) = listed {
            return (store, keys);
        }
    }
    panic!("the bucket's keys could not be listed");
}

/// Waits until `durable` has `count` entries (half a minute at most);
/// their keys.
async fn until_entries(rig: &Rig, durable: &str, count: usize) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        let (_, keys) = entries(rig, durable).await;
        if keys.len() == count {
            return keys;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    entries(rig, durable).await.1
}

/// In a rolling deploy, an instance of the old version (taking `Good`)
/// shares the durable with one of the new (taking `Good` and `New`): the
/// old one hands `New` back rather than acknowledge it. It acknowledged
/// them unapplied before, and the new instance never saw them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_type_another_instance_takes_is_handed_on_not_dropped() {
    let rig = Rig::new().await;
    let old = Arc::new(
        rig.consumer(rig.config("shared"))
            .await
            .unwrap()
            .only(["Good"]),
    );
    // The new instance's entry, as it writes it while it runs.
    let (store, _) = entries(&rig, "shared").await;
    let elsewhere = format!("{}.shared.elsewhere", rig.stream);
    store
        .put(&elsewhere, r#"["Good","New"]"#.into())
        .await
        .unwrap();
    rig.publish(&good_and_new(6)).await;

    let (stop, running) = start(&old);
    until(&old, |stats| stats.applied == 3 && stats.handed_on >= 3).await;
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    assert_eq!(rig.count("applied").await, 3, "the old one applied its own");
    assert!(
        entries(&rig, "shared")
            .await
            .1
            .iter()
            .all(|key| *key == elsewhere),
        "the old one removed its entry when it stopped"
    );

    store.delete(&elsewhere).await.unwrap();
    let new = rig
        .run_until(rig.config("shared"), |stats| stats.applied == 3)
        .await;
    assert_eq!(
        new,
        ConsumerStats {
            applied: 3,
            ..ConsumerStats::default()
        },
        "every New event reached the new instance; handing on spent none of their tries"
    );
    assert_eq!(rig.count("applied").await, 6);
    rig.remove().await;
}

/// Two running instances taking different types: each message is applied
/// once, every `New` one by the instance taking it; each keeps an entry
/// while it runs and removes it when it stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_taking_different_types_share_a_durable_and_drop_nothing() {
    let rig = Rig::new().await;
    let new = Arc::new(
        rig.consumer(rig.config("pair"))
            .await
            .unwrap()
            .only(["Good", "New"]),
    );
    let (stop_new, running_new) = start(&new);
    assert_eq!(until_entries(&rig, "pair", 1).await.len(), 1, "entered");
    let old = Arc::new(
        rig.consumer(rig.config("pair"))
            .await
            .unwrap()
            .only(["Good"]),
    );
    let (stop_old, running_old) = start(&old);
    assert_eq!(
        until_entries(&rig, "pair", 2).await.len(),
        2,
        "one entry each"
    );

    rig.publish(&good_and_new(40)).await;
    for _ in 0..600 {
        if old.stats().applied + new.stats().applied == 40 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_old.send(()).unwrap();
    stop_new.send(()).unwrap();
    running_old.await.unwrap().unwrap();
    running_new.await.unwrap().unwrap();
    let (old, new) = (old.stats(), new.stats());
    assert_eq!(old.applied + new.applied, 40, "old {old:?}, new {new:?}");
    assert!(old.applied <= 20, "the old instance applied Good only");
    assert_eq!(rig.count("applied").await, 40);
    assert!(
        entries(&rig, "pair").await.1.is_empty(),
        "both removed theirs"
    );
    rig.remove().await;
}

/// A run dropped (its task aborted, as a process's grace ends) removes its
/// entry still, rather than hold its types for the entry's lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_run_removes_its_entry() {
    let rig = Rig::new().await;
    let consumer = Arc::new(
        rig.consumer(rig.config("cut"))
            .await
            .unwrap()
            .only(["Good"]),
    );
    let (_stop, running) = start(&consumer);
    assert_eq!(until_entries(&rig, "cut", 1).await.len(), 1, "entered");
    running.abort();
    let aborted = tokio::time::Instant::now();
    while !entries(&rig, "cut").await.1.is_empty() && aborted.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, left) = entries(&rig, "cut").await;
    // Judged only well within the 30 s the bucket keeps an entry: past
    // them, it would be gone without the guard too (a stalled machine).
    if aborted.elapsed() < Duration::from_secs(25) {
        assert!(left.is_empty(), "removed");
    }
    rig.remove().await;
}

/// A durable made anew under another name (to take another filter where
/// NATS cannot edit one), keeping the first one's inbox name, is delivered
/// the stream again and applies none of it twice. The inbox was keyed by
/// the durable's name alone, and the new durable applied it all again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_named_anew_with_the_old_inbox_name_applies_nothing_twice() {
    let rig = Rig::new().await;
    rig.first_applies_four().await;
    let second = rig
        .run_until(rig.config("second").inbox_name("first"), |stats| {
            stats.duplicates == 4
        })
        .await;
    assert_eq!(
        second,
        ConsumerStats {
            duplicates: 4,
            ..ConsumerStats::default()
        }
    );
    assert_eq!(rig.count("applied").await, 4);
    rig.remove().await;
}

/// While it runs, the consumer forgets its records older than it keeps
/// them (a day by default, and never less than JetStream may bring a
/// message back), from its start; newer ones stay, and so do the other
/// consumers' records. The inbox grew for ever unless its user forgot
/// them by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_consumer_forgets_the_records_it_keeps_no_longer() {
    let rig = Rig::new().await;
    let schema = &rig.db.name;
    sqlx::query(&format!(
        "INSERT INTO {schema}.inbox (consumer, message_id, processed_at) VALUES \
         ('records', 'old', now() - interval '25 hours'), \
         ('records', 'new', now() - interval '23 hours'), \
         ('other', 'others', now() - interval '25 hours')"
    ))
    .execute(&rig.db.pool)
    .await
    .unwrap();
    // Deliveries handed back are counted under the durable's name.
    sqlx::query(&format!(
        "INSERT INTO {schema}.inbox_handed_back (consumer, message_id, deliveries, handed_back_at) \
         VALUES ('forgets', 'old', 1, now() - interval '25 hours'), \
         ('other', 'others', 1, now() - interval '25 hours')"
    ))
    .execute(&rig.db.pool)
    .await
    .unwrap();
    let kept = || {
        rig.texts(format!(
            "SELECT message_id FROM {schema}.inbox ORDER BY message_id"
        ))
    };
    let counted = || {
        rig.texts(format!(
            "SELECT consumer FROM {schema}.inbox_handed_back ORDER BY consumer"
        ))
    };
    rig.run_until_seen(rig.config("forgets").inbox_name("records"), || async {
        kept().await == ["new", "others"] && counted().await == ["other"]
    })
    .await;
    assert_eq!(kept().await, ["new", "others"], "forgotten at the start");
    assert_eq!(
        counted().await,
        ["other"],
        "its hand-backs, under its durable's name"
    );

    // Kept a second, but never less than JetStream's horizon.
    sqlx::query(&format!(
        "INSERT INTO {schema}.inbox (consumer, message_id, processed_at) VALUES \
         ('short', 'recent', now() - interval '10 seconds'), \
         ('short', 'stale', now() - interval '25 hours')"
    ))
    .execute(&rig.db.pool)
    .await
    .unwrap();
    let horizon = rig
        .run_until_seen(
            rig.config("short").keep_records(Duration::from_secs(1)),
            || async { kept().await == ["new", "others", "recent"] },
        )
        .await;
    assert!(horizon > Duration::from_secs(10), "{horizon:?}");
    assert_eq!(
        kept().await,
        ["new", "others", "recent"],
        "kept for JetStream's horizon"
    );
    rig.remove().await;
}

/// A message whose id PostgreSQL cannot take as the inbox's key (a NUL,
/// or past what its index holds) is dead-lettered, and the messages after
/// it applied: its batch failed at the inbox every time, taken for the
/// database away, and the consumer stalled for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_id_no_inbox_can_key_is_dead_lettered() {
    let rig = Rig::new().await;
    let prefix = rig.stream.to_ascii_lowercase();
    let long = "x".repeat(8_000);
    for id in ["nul%00inside", long.as_str()] {
        let mut headers = async_nats::HeaderMap::new();
        for (name, value) in [
            ("ce-specversion", "1.0"),
            ("ce-id", id),
            ("ce-source", "/elsewhere"),
            ("ce-type", "Good"),
        ] {
            headers.insert(name, value);
        }
        rig.context
            .publish_with_headers(format!("{prefix}.order.Good"), headers, "hostile".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    rig.publish(&good_and_new(1)).await;
    let stats = rig
        .run_until(rig.config("keys"), |stats| stats.applied >= 1)
        .await;
    assert_eq!((stats.applied, stats.dead_lettered), (1, 2), "{stats:?}");
    rig.remove().await;
}

/// A durable made to start after an earlier one (keeping its inbox name)
/// is delivered what came after the earlier one's last acknowledged
/// message only: what the inbox has forgotten is not applied again (from
/// the stream's start, every message whose record was gone was applied a
/// second time). Made to start after a durable the stream does not have,
/// it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_made_to_start_after_another_applies_only_what_came_after() {
    let rig = Rig::new().await;
    rig.first_applies_four().await;
    // Its acknowledgements reach JetStream after the stop: waited for.
    let stream = rig.context.get_stream(&rig.stream).await.unwrap();
    let started = tokio::time::Instant::now();
    while stream.consumer_info("first").await.unwrap().num_ack_pending > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Its records forgotten, as they are after a day.
    sqlx::query(&format!("DELETE FROM {}.inbox", rig.db.name))
        .execute(&rig.db.pool)
        .await
        .unwrap();
    rig.publish(&[Event::new("order", "o-9", "Good", vec![9])])
        .await;
    let second = rig
        .run_until(
            rig.config("second")
                .inbox_name("first")
                .starting_after("first"),
            |stats| stats.applied >= 1,
        )
        .await;
    assert_eq!(
        second,
        ConsumerStats {
            applied: 1,
            ..ConsumerStats::default()
        }
    );
    let made = stream.consumer_info("second").await.unwrap().config;
    assert_eq!(
        made.deliver_policy,
        consumer::DeliverPolicy::ByStartSequence { start_sequence: 5 },
        "after the first's four"
    );
    // Made already, it is taken as made, the earlier one gone or not.
    stream.delete_consumer("first").await.unwrap();
    rig.consumer(
        rig.config("second")
            .inbox_name("first")
            .starting_after("first"),
    )
    .await
    .unwrap();

    let refused = rig
        .consumer(rig.config("third").starting_after("gone"))
        .await
        .expect_err("refused");
    assert!(refused.to_string().contains("gone"), "{refused}");
    assert!(stream.consumer_info("third").await.is_err(), "nothing made");
    rig.remove().await;
}

/// The event `Flaky` fails its first two deliveries: the aggregate's next
/// event must not be applied before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_message_holds_back_later_messages_of_its_aggregate() {
    let rig = Rig::new().await;
    let events = [
        Event::new("order", "o-1", "Flaky", b"first".to_vec()),
        Event::new("order", "o-1", "Good", b"second".to_vec()),
    ];
    rig.publish(&events).await;
    let config = rig
        .config("ordered")
        .retry_delay(Duration::from_millis(20), Duration::from_millis(100));
    let consumer = Arc::new(rig.consumer(config).await.unwrap());
    let (stop, running) = start(&consumer);
    until(&consumer, |stats| stats.applied == 2).await;
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    let order = rig.applied_in_order().await;
    assert_eq!(order, [b"first".to_vec(), b"second".to_vec()]);
    rig.remove().await;
}

/// A consumer whose durable is deleted under it (`nats consumer rm`, or
/// its stream deleted and made again) says so: `run` returned `Ok`, as at
/// a shutdown, and the service stood with nothing consumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_deleted_under_a_running_consumer_is_an_error() {
    let rig = Rig::new().await;
    rig.publish(&[Event::new("order", "o-1", "Good", b"first".to_vec())])
        .await;
    let consumer = Arc::new(rig.consumer(rig.config("gone")).await.unwrap());
    let (_stop, running) = start(&consumer);
    until(&consumer, |stats| stats.applied == 1).await;
    let stream = rig.context.get_stream(&rig.stream).await.unwrap();
    stream.delete_consumer("gone").await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(60), running)
        .await
        .expect("run ends with its subscription")
        .unwrap();
    let error = ended
        .expect_err("an error, not a shutdown's Ok")
        .to_string();
    assert!(error.contains("pull subscription ended"), "{error}");
    rig.remove().await;
}

/// A handler slower than the ack wait keeps its message: the consumer
/// keeps the acknowledgements of the batch it works on alive, so
/// JetStream does not deliver it again under the handler (it did after the
/// ack wait, and it came back a duplicate). One message alone: messages
/// the client pulled ahead of the batch are not kept alive (see
/// `JetStreamConsumer`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_slower_than_the_ack_wait_keeps_its_message() {
    let rig = Rig::new().await;
    rig.publish(&[Event::new("order", "o-1", "Slow", b"slow".to_vec())])
        .await;
    let config = rig
        .config("slow")
        .ack_wait(Duration::from_secs(3))
        .handler_timeout(SLOW + Duration::from_secs(1));
    let consumer = Arc::new(rig.consumer(config).await.unwrap());
    let (stop, running) = start(&consumer);
    until(&consumer, |stats| stats.applied == 1).await;
    // Anything JetStream delivered again would have come back by now.
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    let stats = consumer.stats();
    assert_eq!((stats.applied, stats.duplicates), (1, 0), "{stats:?}");
    rig.remove().await;
}

/// A message that arrives while a slow batch is applied is kept alive
/// too, and applied next: it waited in the client's buffer, where its ack
/// wait ran out, and JetStream delivered it again (a duplicate, and one
/// try fewer before it is dead-lettered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_arriving_under_a_slow_batch_is_kept_alive() {
    let rig = Rig::new().await;
    rig.publish(&[Event::new("order", "o-1", "Slow", b"slow".to_vec())])
        .await;
    let config = rig
        .config("ahead")
        .ack_wait(Duration::from_secs(3))
        .handler_timeout(SLOW + Duration::from_secs(1));
    let consumer = Arc::new(rig.consumer(config).await.unwrap());
    let (stop, running) = start(&consumer);
    // The slow one is being applied: the next arrives under it.
    while consumer.handler().deliveries.lock().unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    rig.publish(&[Event::new("order", "o-2", "Good", b"under".to_vec())])
        .await;
    until(&consumer, |stats| stats.applied == 2).await;
    // Anything JetStream delivered again would have come back by now.
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    let stats = consumer.stats();
    assert_eq!((stats.applied, stats.duplicates), (2, 0), "{stats:?}");
    assert_eq!(
        rig.applied_in_order().await,
        [b"slow".to_vec(), b"under".to_vec()]
    );
    rig.remove().await;
}

/// A handler that hangs fails its delivery at the handler timeout (it
/// held the consumer for ever): the message is dead-lettered, and the one
/// after it applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_handler_is_cut_off_and_the_next_message_applied() {
    let rig = Rig::new().await;
    let events = [
        Event::new("order", "o-2", "Hangs", b"hangs".to_vec()),
        Event::new("order", "o-2", "Good", b"after hangs".to_vec()),
    ];
    rig.publish(&events).await;
    let config = rig
        .config("cut-off")
        .handler_timeout(Duration::from_secs(1))
        .max_deliver(1);
    let consumer = Arc::new(rig.consumer(config).await.unwrap());
    let (stop, running) = start(&consumer);
    until(&consumer, |stats| stats.applied == 1).await;
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    let stats = consumer.stats();
    assert_eq!((stats.applied, stats.dead_lettered), (1, 1), "{stats:?}");
    assert_eq!(rig.applied_in_order().await, [b"after hangs".to_vec()]);
    rig.remove().await;
}

/// A dead-letter subject no stream captures is refused when the consumer
/// is made: what it gave up on could not be stored, and came back to fail
/// and be refused again, for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_subject_no_stream_captures_is_refused() {
    let rig = Rig::new().await;
    let nowhere = format!("nowhere{}.dead", fastrand::u64(..));
    let config = ConsumerConfig::new(&rig.stream, "unstored", &nowhere)
        .unwrap()
        .filter_subject(&format!("{}.order.>", rig.stream.to_ascii_lowercase()));
    let Err(error) = rig.consumer(config).await else {
        panic!("made");
    };
    assert!(
        error
            .to_string()
            .contains("captures the dead-letter subject"),
        "{error}"
    );
    rig.remove().await;
}

/// A message waiting out a long retry delay does not hold up shutdown: it
/// is handed back to JetStream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_while_a_message_waits_for_its_retry_hands_it_back() {
    let rig = Rig::new().await;
    rig.publish(&[Event::new("order", "o-1", "Bad", b"b".to_vec())])
        .await;
    let config = rig
        .config("stopping")
        .max_deliver(100)
        .retry_delay(Duration::from_secs(600), Duration::from_secs(600));
    let consumer = Arc::new(rig.consumer(config).await.unwrap());
    let (stop, running) = start(&consumer);
    until(&consumer, |stats| stats.retried == 1).await;
    assert_eq!(consumer.stats().retried, 1, "waiting for its retry");
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("stopped without waiting out the delay")
        .unwrap()
        .unwrap();
    assert_eq!(consumer.stats().dead_lettered, 0);
    rig.remove().await;
}

/// Stops during an outage (a handler failing [`Transient`]) spend none of
/// a message's tries, though JetStream counts a delivery for each hand
/// back: once the outage is over, a plain failure is tried again, not
/// dead-lettered at once. (Deliveries counted as tries: after two
/// restarts, the first plain failure dead-lettered it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stops_during_an_outage_spend_none_of_a_messages_tries() {
    let rig = Rig::new().await;
    rig.publish(&[Event::new("order", "o-1", "Outage", b"o".to_vec())])
        .await;
    rig.outage.store(true, Ordering::SeqCst);
    let config = rig
        .config("outage")
        .max_deliver(2)
        .retry_delay(Duration::from_millis(10), Duration::from_millis(10));
    for _ in 0..3 {
        rig.run_until(config.clone(), |stats| stats.retried >= 1)
            .await;
    }
    rig.outage.store(false, Ordering::SeqCst);
    let stats = rig
        .run_until(config, |stats| stats.applied + stats.dead_lettered >= 1)
        .await;
    assert_eq!(
        (stats.applied, stats.dead_lettered),
        (1, 0),
        "tried again after its plain failure: {stats:?}"
    );
    rig.remove().await;
}

/// A stop after a plain failure hands the message back as tried: its next
/// delivery counts it, and with `max_deliver(2)` its next failure is its
/// last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_after_a_plain_failure_counts_that_try() {
    let rig = Rig::new().await;
    rig.publish(&[Event::new("order", "o-1", "Bad", b"b".to_vec())])
        .await;
    let config = rig
        .config("tried")
        .max_deliver(2)
        .retry_delay(Duration::from_secs(600), Duration::from_secs(600));
    rig.run_until(config.clone(), |stats| stats.retried >= 1)
        .await;
    let stats = rig
        .run_until(config, |stats| stats.dead_lettered + stats.retried >= 1)
        .await;
    assert_eq!(
        (stats.dead_lettered, stats.retried),
        (1, 0),
        "its second try, its last: {stats:?}"
    );
    rig.remove().await;
}

/// An event's own headers (a tenant) travel as CloudEvents extension
/// attributes, `ce-<name>`, and reach the handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_event_headers_reach_nats_and_the_handler() {
    let rig = Rig::new().await;
    let event = Event::new("order", "o-1", "Good", b"{}".to_vec()).header("tenant", "acme");
    rig.publish(std::slice::from_ref(&event)).await;
    let stored = rig
        .context
        .get_stream(&rig.stream)
        .await
        .unwrap()
        .get_raw_message(1)
        .await
        .unwrap();
    assert_eq!(
        stored.headers.get("ce-tenant").map(|v| v.as_str()),
        Some("acme"),
        "{:?}",
        stored.headers
    );

    let config = rig.config("tenants");
    let consumer = Arc::new(rig.consumer(config).await.unwrap());
    let (stop, running) = start(&consumer);
    until(&consumer, |stats| stats.applied == 1).await;
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    let seen = consumer.handler().extensions.lock().unwrap().clone();
    assert_eq!(
        seen,
        [[("tenant".to_owned(), "acme".to_owned())].into()],
        "the handler sees the tenant"
    );
    rig.remove().await;
}

/// Waits until `consumer`'s stats are `done`; fails the test after half a
/// minute (a caller asserting nothing after it would pass otherwise).
async fn until(consumer: &JetStreamConsumer<PgInbox, Apply>, done: impl Fn(ConsumerStats) -> bool) {
    for _ in 0..600 {
        if done(consumer.stats()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the consumer never got there: {:?}", consumer.stats());
}

/// Runs `consumer` until the returned sender is used.
fn start(
    consumer: &Arc<JetStreamConsumer<PgInbox, Apply>>,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), BoxError>>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let consumer = consumer.clone();
    let running = tokio::spawn(async move {
        consumer
            .run(async {
                let _ = stopped.await;
            })
            .await
    });
    (stop, running)
}

#[test]
fn the_redelivery_horizon_counts_every_delay_and_ack_wait() {
    let config = ConsumerConfig::new("S", "c", "dead")
        .unwrap()
        .max_deliver(3)
        .retry_delay(Duration::from_millis(20), Duration::from_millis(30))
        .ack_wait(Duration::from_secs(2));
    // Delays before deliveries 2 and 3: 20 ms, then 40 ms capped at 30 ms.
    assert_eq!(
        config.redelivery_horizon(),
        Duration::from_millis(50) + Duration::from_secs(6)
    );
}

/// A consumer reading its own dead-letter subject got back what it gave
/// up on, failed it again and sent it there again, for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_would_read_its_own_dead_letters_is_refused() {
    let rig = Rig::new().await;
    let prefix = rig.stream.to_ascii_lowercase();
    let dead = format!("{prefix}.dead");
    for filter in [
        None,
        Some(format!("{prefix}.>")),
        Some(format!("{prefix}.*")),
    ] {
        let config = ConsumerConfig::new(&rig.stream, "looping", &dead).unwrap();
        let config = match &filter {
            Some(filter) => config.filter_subject(filter),
            None => config,
        };
        let refused = rig.consumer(config).await.unwrap_err().to_string();
        assert!(
            refused.contains(&format!("own dead-letter subject {dead}")),
            "{filter:?}: {refused}"
        );
    }
    let stream = rig.context.get_stream(&rig.stream).await.unwrap();
    assert!(
        stream.consumer_info("looping").await.is_err(),
        "refused before the durable consumer is made"
    );
    let config = rig.config("apart");
    rig.consumer(config).await.unwrap();
    // The same durable asked again with another filter: JetStream would
    // keep the first.
    let config = rig
        .config("apart")
        .filter_subject(&format!("{prefix}.order.Good"));
    let refused = rig.consumer(config).await.unwrap_err().to_string();
    assert!(refused.contains("exists with filter"), "{refused}");
    rig.remove().await;
}

/// Messages waiting behind a few batches, each shorter than half the ack
/// wait, are kept alive all the while: each batch kept them alive at a
/// pace of its own, which never came round, and JetStream delivered them
/// again (a delivery more, taken for a try).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_waiting_behind_short_batches_are_kept_alive() {
    let rig = Rig::new().await;
    // Each batch 1.5 s, the pace 2 s, the ack wait 4 s: the fifth waits
    // 6 s.
    let events: Vec<Event> = (0..5_u8)
        .map(|n| Event::new("order", format!("o-{n}"), "Dawdles", vec![n]))
        .collect();
    rig.publish(&events).await;
    let config = rig.config("dawdling").ack_wait(Duration::from_secs(4));
    let consumer = Arc::new(rig.consumer(config).await.unwrap().batch(1));
    let (stop, running) = start(&consumer);
    until(&consumer, |stats| stats.applied == 5).await;
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    let info = rig
        .context
        .get_stream(&rig.stream)
        .await
        .unwrap()
        .consumer_info("dawdling")
        .await
        .unwrap();
    assert_eq!(info.delivered.consumer_sequence, 5, "each delivered once");
    rig.remove().await;
}

/// A durable consumer made before with another ack wait keeps it, and the
/// consumer works with that one: it worked with the one asked, pacing its
/// "in progress" answers by it (a longer wait asked than made let
/// JetStream deliver a message again while it was applied) and keeping
/// its inbox records by it (a shorter one forgot them before a late
/// redelivery).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_made_with_another_ack_wait_is_worked_with_its_own() {
    let rig = Rig::new().await;
    let made = rig
        .consumer(rig.config("kept").ack_wait(Duration::from_secs(600)))
        .await
        .unwrap();
    let asked = rig
        .consumer(rig.config("kept").ack_wait(Duration::from_secs(1)))
        .await
        .unwrap();
    assert!(made.inbox_retention() >= Duration::from_secs(600));
    assert_eq!(asked.inbox_retention(), made.inbox_retention());
    rig.remove().await;
}

/// Settings past any use (a `Duration::MAX` delay or ack wait) overflowed
/// the horizon's sum, and `JetStreamConsumer::new`, which asks for it,
/// panicked.
#[test]
fn an_unbounded_redelivery_horizon_saturates() {
    let config = ConsumerConfig::new("S", "c", "dead")
        .unwrap()
        .max_deliver(3)
        .retry_delay(Duration::MAX, Duration::MAX);
    // Two delays of a day at most, and three ack waits of 30 s.
    assert_eq!(
        config.redelivery_horizon(),
        Duration::from_secs(2 * 86_400 + 90)
    );
    // An ack wait of a day at most, three times over.
    let config = config.ack_wait(Duration::MAX);
    assert_eq!(
        config.redelivery_horizon(),
        Duration::from_secs(2 * 86_400 + 3 * 86_400)
    );
}

#[test]
fn consumer_names_are_checked() {
    for (stream, durable, dead) in [
        ("", "a", "d"),
        ("S", "a.b", "d"),
        ("S", "a b", "d"),
        ("S", "a", ""),
        ("S", "a", "orders.*"),
        ("S", "a", "orders.>"),
        ("S", "a", "orders..dead"),
        ("S", "a", "orders.dead."),
        ("S", "a", "orders dead"),
    ] {
        let error = ConsumerConfig::new(stream, durable, dead).unwrap_err();
        assert!(error.to_string().contains("outbox"), "{error}");
    }
}
