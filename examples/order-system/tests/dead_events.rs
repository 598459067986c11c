//! Dead events have a way back: an operator lists and requeues them, per
//! service, with `order-system dead-events` (a data directory, or
//! PostgreSQL in a namespace); the saga held up by one then ends.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use palisade_order_system::db::ServiceDb;
use palisade_order_system::embedded::System;
use palisade_order_system::events::{Line, SagaEvent};
use palisade_order_system::load::Gateway;
use palisade_order_system::orders::{self, Order};
use palisade_outbox::{
    Event, Message, OutboxConfig, PgOutbox, PublishError, Published, Publisher, Relay, SqliteOutbox,
};
use tokio::time::Instant;

mod support;
use support::{settings, signed_in};

/// A broker that refuses every message: each attempt is spent.
struct Refusing;

impl Publisher for Refusing {
    async fn publish(&self, _: &Message) -> Result<Published, PublishError> {
        Err(PublishError::rejected("refused by the stream's limits"))
    }
}

/// Writes alice's order to the orders database of `dir` as the gateway
/// places one (the order and its `OrderCreated` in one transaction), the
/// event then made dead by one refused attempt; the order's id.
async fn order_with_a_dead_event(dir: &Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let db = ServiceDb::open_sqlite(dir, "orders", orders::TABLES)
        .await
        .unwrap();
    let ServiceDb::Sqlite { pool, .. } = &db else {
        unreachable!("a SQLite file")
    };
    let line = Line {
        order_id: uuid::Uuid::now_v7().to_string(),
        sku: "sku-1".to_owned(),
        quantity: 1,
        amount_cents: orders::UNIT_PRICE_CENTS,
        card: "4242424242424242".to_owned(),
    };
    let placed_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO orders (id, user_id, idempotency_key, sku, quantity, amount_cents, card, status, created_ms) \
         VALUES ($1, 'alice', 'dead-1', $2, $3, $4, $5, 'pending', $6)",
    )
    .bind(&line.order_id)
    .bind(&line.sku)
    .bind(line.quantity)
    .bind(line.amount_cents)
    .bind(&line.card)
    .bind(i64::try_from(placed_ms).unwrap())
    .execute(&mut *tx)
    .await
    .unwrap();
    db.enqueue(&mut *tx, &SagaEvent::OrderCreated(line.clone()).to_event())
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let one_try = OutboxConfig::new("outbox").unwrap().max_attempts(1);
    Relay::new(SqliteOutbox::new(pool.clone(), one_try), Refusing)
        .run_once()
        .await
        .unwrap();
    assert_eq!(db.backlog().await.unwrap().dead, 1);
    pool.close().await;
    line.order_id
}

/// Runs `order-system` with `args`: whether it succeeded, its stdout and
/// its stderr.
async fn cli(args: &[&str]) -> (bool, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_order-system"))
        .args(args)
        .output()
        .await
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Waits for alice's order `id` to end.
async fn ended(alice: &Gateway, id: &str) -> Order {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = alice
            .send(
                Method::GET,
                &format!("/orders/{id}?wait_ms=5000"),
                &[],
                Bytes::new(),
            )
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        let order: Order = serde_json::from_slice(&body).unwrap();
        if order.status != "pending" {
            return order;
        }
        assert!(Instant::now() < deadline, "order {id} never ended");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_requeues_a_dead_event_in_a_data_directory_and_its_saga_ends() {
    let (settings, dir) = settings();
    let order_id = order_with_a_dead_event(&dir).await;
    let data = dir.to_str().unwrap();

    let (ok, listed, _) =
        cli(&["dead-events", "list", "--service", "orders", "--data", data]).await;
    assert!(ok);
    let line = listed.lines().next().unwrap();
    assert!(
        line.contains(&format!("OrderCreated of order {order_id}")),
        "{listed}"
    );
    let id = line.split_whitespace().next().unwrap().to_owned();

    let (ok, _, error) = cli(&[
        "dead-events",
        "list",
        "--service",
        "billing",
        "--data",
        data,
    ])
    .await;
    assert!(!ok);
    assert!(
        error.contains("no service \"billing\"; one of orders"),
        "{error}"
    );
    let (ok, _, error) = cli(&[
        "dead-events",
        "list",
        "--service",
        "orders",
        "--data",
        "/nonexistent",
    ])
    .await;
    assert!(!ok);
    assert!(error.contains("--data names"), "{error}");
    let (ok, _, error) = cli(&[
        "dead-events",
        "requeue",
        "--service",
        "orders",
        "--data",
        data,
    ])
    .await;
    assert!(!ok);
    assert!(error.contains("--id ID or --all"), "{error}");

    let (ok, requeued, error) = cli(&[
        "dead-events",
        "requeue",
        "--service",
        "orders",
        "--data",
        data,
        "--id",
        &id,
    ])
    .await;
    assert!(ok, "{error}");
    assert_eq!(requeued.trim(), "orders: 1 requeued");
    let (ok, listed, _) =
        cli(&["dead-events", "list", "--service", "orders", "--data", data]).await;
    assert!(ok);
    assert_eq!(listed.trim(), "orders: no dead events");

    let system = System::start(settings).await.unwrap();
    let alice = signed_in(&system, "alice").await;
    assert_eq!(ended(&alice, &order_id).await.status, "confirmed");
    system.stop().await;
}

#[tokio::test]
async fn the_cli_requeues_dead_events_on_postgresql_in_a_namespace() {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let namespace = format!("dead{}", fastrand::u32(..));
    let schema = format!("{namespace}_payment");
    let db = ServiceDb::open_postgres(&url, &schema, &[], 1)
        .await
        .unwrap();
    let ServiceDb::Postgres { pool, .. } = &db else {
        unreachable!("a PostgreSQL schema")
    };
    let mut tx = pool.begin().await.unwrap();
    let event = Event::new("order", "o-1", "PaymentSucceeded", b"{}".to_vec());
    db.enqueue(&mut *tx, &event).await.unwrap();
    tx.commit().await.unwrap();
    let one_try = OutboxConfig::new(&format!("{schema}.outbox"))
        .unwrap()
        .max_attempts(1);
    Relay::new(PgOutbox::new(pool.clone(), one_try), Refusing)
        .run_once()
        .await
        .unwrap();
    assert_eq!(db.backlog().await.unwrap().dead, 1);

    let at = [
        "--service",
        "payment",
        "--postgres",
        &url,
        "--namespace",
        &namespace,
    ];
    let (ok, listed, error) = cli(&[&["dead-events", "list"][..], &at[..]].concat()).await;
    assert!(ok, "{error}");
    assert!(listed.contains("PaymentSucceeded of order o-1"), "{listed}");
    let (ok, _, error) = cli(&[
        "dead-events",
        "list",
        "--service",
        "payment",
        "--postgres",
        &url,
        "--namespace",
        "nosuch",
    ])
    .await;
    assert!(!ok);
    assert!(error.contains("no schema nosuch_payment"), "{error}");

    let (ok, requeued, error) =
        cli(&[&["dead-events", "requeue", "--all"][..], &at[..]].concat()).await;
    assert!(ok, "{error}");
    assert_eq!(requeued.trim(), "payment: 1 requeued");
    let backlog = db.backlog().await.unwrap();
    assert_eq!((backlog.dead, backlog.pending), (0, 1));

    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(pool)
        .await
        .unwrap();
}
