//! However many batches an outage fails, it is logged once when it starts
//! and once when it ends. Alone in its binary: the log subscriber is the
//! process's.
#![cfg(feature = "sqlite")]

use std::sync::atomic::{AtomicBool, Ordering};
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

/// A broker that is unavailable while `down` is set.
#[derive(Clone)]
struct Switched {
    broker: MemoryBroker,
    down: Arc<AtomicBool>,
}

impl Publisher for Switched {
    async fn publish(&self, message: &Message) -> Result<Published, PublishError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(PublishError::unavailable("no responders"));
        }
        self.broker.publish(message).await
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
        broker: MemoryBroker::new(10),
        down: Arc::new(AtomicBool::new(true)),
    };
    // The shortest backoff there is, waited out before each turn.
    let backoff = Duration::from_millis(1);
    let relay = Relay::new(outbox.clone(), publisher.clone()).outage_backoff(backoff, backoff);

    place(&["a", "b"]).await;
    for _ in 0..20 {
        assert_eq!(relay.run_once().await.unwrap().unavailable, 2);
        tokio::time::sleep(backoff * 2).await;
    }
    publisher.down.store(false, Ordering::SeqCst);
    assert_eq!(relay.run_once().await.unwrap().published, 2);
    place(&["c"]).await;
    assert_eq!(relay.run_once().await.unwrap().published, 1);
    assert_eq!(logs.count("broker unavailable; events wait"), 1);
    assert_eq!(logs.count("broker available again"), 1);
}
