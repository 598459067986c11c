//! The relay's OpenTelemetry metrics, on a real PostgreSQL, read back
//! through the SDK's in-memory exporter.
#![cfg(all(feature = "otel", feature = "postgres"))]

mod support;

use std::time::Duration;

use palisade_outbox::{Event, MemoryBroker, Message, PublishError, Published, Publisher, Relay};
use palisade_testkit::MetricsProbe;

/// Refuses events of type `Poison`.
#[derive(Clone)]
struct Picky(MemoryBroker);

impl Publisher for Picky {
    async fn publish(&self, message: &Message) -> Result<Published, PublishError> {
        if message.event.event_type() == "Poison" {
            return Err(PublishError::rejected("refused"));
        }
        self.0.publish(message).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_dead_latency_and_backlog_are_reported() {
    let db = support::PgSchema::new().await;
    let pool = db.pool.clone();
    let outbox = db.outbox(|c| c.max_attempts(1)).await;
    let events = [
        Event::new("order", "a", "OrderCreated", b"1".to_vec()),
        Event::new("order", "b", "OrderCreated", b"2".to_vec()),
        Event::new("order", "c", "Poison", b"3".to_vec()),
    ];
    let mut tx = pool.begin().await.unwrap();
    outbox.enqueue_all(&mut tx, &events).await.unwrap();
    tx.commit().await.unwrap();

    let probe = MetricsProbe::default();
    let relay =
        Relay::new(outbox, Picky(MemoryBroker::new(10))).instrument(&probe.meter(), "orders");
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(relay.run(async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    }));
    let relay_label = || vec!["relay=orders".to_owned()];
    // The gauges refresh after the first batch; wait for them (bounded).
    let mut waited = 0;
    while probe.points_f64("palisade.outbox.dead_events") != [(relay_label(), 1.0)] {
        waited += 1;
        assert!(
            waited < 1500,
            "the backlog gauges never showed the dead event"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        probe.points_f64("palisade.outbox.pending"),
        [(relay_label(), 0.0)]
    );
    stop.send(true).unwrap();
    running.await.unwrap();

    assert_eq!(
        probe.points("palisade.outbox.published"),
        [(relay_label(), 2)]
    );
    assert_eq!(probe.points("palisade.outbox.dead"), [(relay_label(), 1)]);
    assert_eq!(
        probe.points_f64("palisade.outbox.publish_latency"),
        [(relay_label(), 2.0)],
        "two samples"
    );
    // In seconds, bucketed for seconds: under the SDK's default buckets
    // (for milliseconds) any latency under 5 s fell in the first two.
    let buckets = probe.buckets("palisade.outbox.publish_latency");
    let [(labels, buckets)] = &buckets[..] else {
        panic!("one series: {buckets:?}")
    };
    assert_eq!(labels, &relay_label());
    let bounds: Vec<f64> = buckets.iter().map(|&(bound, _)| bound).collect();
    let finite = &bounds[..bounds.len() - 1];
    assert!(
        finite.len() > 2 && finite[0] <= 0.01 && finite[finite.len() - 1] >= 60.0,
        "buckets from milliseconds to minutes: {bounds:?}"
    );
    assert_eq!(buckets.iter().map(|&(_, n)| n).sum::<u64>(), 2);
    assert_eq!(
        probe.points_f64("palisade.outbox.pending"),
        [],
        "the relay is gone: its backlog is no longer reported"
    );
    db.drop().await;
}
