//! NATS taken away for 10 s in the middle of a run (a proxy between the
//! relay and the server is cut, then resumed): events wait in the outbox,
//! none is lost or dead, and the backlog drains once the broker is back.
#![cfg(all(feature = "nats", feature = "postgres"))]

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use palisade_outbox::{Event, NatsJetStreamPublisher, OutboxStore, Relay};
use palisade_testkit::servers::{nats_proxy, nats_url};

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
