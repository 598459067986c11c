//! However many batches an outage fails, it is logged once when it starts
//! and once when it ends; so is a broker with no room. Alone in its
//! binary: the log subscriber is the process's.
#![cfg(feature = "sqlite")]

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_outbox::{
    Event, MemoryBroker, Message, OutboxConfig, PublishError, Published, Publisher, Relay,
    SqliteOutbox,
};

/// Log lines, as written.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn count(&self, line: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .matches(line)
            .count()
    }
}

/// A broker that takes every message ([`UP`]), none ([`DOWN`]), has no
/// room for any ([`FULL`]), or has no room for aggregates whose id starts
/// with `f` and cannot be reached for the others ([`MIXED`]).
#[derive(Clone)]
struct Switched {
    broker: MemoryBroker,
    mode: Arc<AtomicU8>,
}

const UP: u8 = 0;
const DOWN: u8 = 1;
const FULL: u8 = 2;
const MIXED: u8 = 3;

impl Publisher for Switched {
    async fn publish(&self, message: &Message) -> Result<Published, PublishError> {
        let roomless = message.event.aggregate_id().starts_with('f');
        match self.mode.load(Ordering::SeqCst) {
            DOWN => Err(PublishError::unavailable("no responders")),
            FULL => Err(PublishError::full("maximum messages exceeded")),
            MIXED if roomless => Err(PublishError::full("maximum messages exceeded")),
            MIXED => Err(PublishError::unavailable("timed out")),
            _ => self.broker.publish(message).await,
        }
    }
}

#[tokio::test]
async fn an_outage_is_logged_once_each_way() {
    let logs = Logs::default();
    let writer = logs.clone();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish(),
    )
    .unwrap();
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect("sqlite::memory:")
        .await
        .unwrap();
    let outbox = SqliteOutbox::new(pool.clone(), OutboxConfig::new("outbox").unwrap());
    outbox.migrate().await.unwrap();
    let place = async |aggregates: &[&str]| {
        let events: Vec<Event> = aggregates
            .iter()
            .map(|aggregate| Event::new("order", *aggregate, "OrderCreated", b"{}".to_vec()))
            .collect();
        let mut tx = pool.begin().await.unwrap();
        outbox.enqueue_all(&mut tx, &events).await.unwrap();
        tx.commit().await.unwrap();
    };
    let publisher = Switched {
        broker: MemoryBroker::new(100),
        mode: Arc::new(AtomicU8::new(DOWN)),
    };
    // The shortest backoff there is, waited out before each turn.
    let backoff = Duration::from_millis(1);
    let relay = Relay::new(outbox.clone(), publisher.clone()).outage_backoff(backoff, backoff);

    // Twenty batches of the two events waiting, none taken.
    let twenty_refused = async || {
        for _ in 0..20 {
            assert_eq!(relay.run_once().await.unwrap().unavailable, 2);
            tokio::time::sleep(backoff * 2).await;
        }
    };
    place(&["a", "b"]).await;
    twenty_refused().await;
    publisher.mode.store(UP, Ordering::SeqCst);
    assert_eq!(relay.run_once().await.unwrap().published, 2);
    place(&["c"]).await;
    assert_eq!(relay.run_once().await.unwrap().published, 1);
    assert_eq!(logs.count("broker unavailable; events wait"), 1);
    assert_eq!(logs.count("broker available again"), 1);

    // No room, batch after batch: said once each way (it warned at every
    // batch), and no outage, for the broker answered.
    publisher.mode.store(FULL, Ordering::SeqCst);
    place(&["d", "e"]).await;
    twenty_refused().await;
    publisher.mode.store(UP, Ordering::SeqCst);
    assert_eq!(relay.run_once().await.unwrap().published, 2);
    assert_eq!(logs.count("the broker has no room for some events"), 1);
    assert_eq!(logs.count("the broker has room again"), 1);
    assert_eq!(logs.count("broker unavailable; events wait"), 1);

    // No room for one, and the other out of reach: an outage all the
    // same, whose waits grow (a broker full and timing out was asked
    // again at the base wait for ever).
    publisher.mode.store(MIXED, Ordering::SeqCst);
    place(&["f", "g"]).await;
    assert_eq!(relay.run_once().await.unwrap().unavailable, 2);
    publisher.mode.store(UP, Ordering::SeqCst);
    tokio::time::sleep(backoff * 2).await;
    assert_eq!(relay.run_once().await.unwrap().published, 2);
    assert_eq!(logs.count("broker unavailable; events wait"), 2);
    assert_eq!(logs.count("broker available again"), 2);
}
