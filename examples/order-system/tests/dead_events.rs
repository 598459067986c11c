//! Dead events have a way back: an operator lists and requeues them, per
//! service, through the gateway's `/admin/dead-events` and through
//! `order-system dead-events` (a data directory, or PostgreSQL in a
//! namespace); the saga held up by one then ends; and `/books` and
//! `/metrics` count the sagas pending past a threshold meanwhile.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use palisade_order_system::books::Books;
use palisade_order_system::card::{CardNumber, CardToken};
use palisade_order_system::db::{Emit, ServiceDb, Statements};
use palisade_order_system::dead_events::Dead;
use palisade_order_system::embedded::System;
use palisade_order_system::events::Line;
use palisade_order_system::load::Gateway;
use palisade_order_system::orders::{self, Order, Orders};
use palisade_order_system::payment::{
    Payment,
    vault::{self, Vault, VaultKey},
};
use palisade_order_system::processor::GOOD_CARD;
use palisade_order_system::service::SagaService;
use palisade_outbox::{
    Event, Message, OutboxConfig, PgOutbox, PublishError, Published, Publisher, Relay, SqliteOutbox,
};
use tokio::time::Instant;

mod support;
use support::{place_directly, settings, signed_in};

/// A broker that refuses every message: each attempt is spent.
struct Refusing;

impl Publisher for Refusing {
    async fn publish(&self, _: &Message) -> Result<Published, PublishError> {
        Err(PublishError::rejected("refused by the stream's limits"))
    }
}

/// Payment's token of the card that is approved, in the vault of `dir`
/// (as the gateway has it tokenized).
async fn good_card_token(dir: &Path) -> CardToken {
    let db = ServiceDb::open_sqlite(dir, Payment::NAME, Payment::TABLES)
        .await
        .unwrap();
    let key = VaultKey::load_or_create(&dir.join(vault::KEY_FILE)).unwrap();
    let vault = Vault::open(db.clone(), &key).await.unwrap();
    let card = vault
        .tokenize(&CardNumber::parse(GOOD_CARD).unwrap())
        .await
        .unwrap();
    db.close().await;
    card
}

/// Writes alice's order to the orders database of `dir` as the gateway
/// places one (the order and its `OrderCreated` in one transaction), the
/// event then made dead by one refused attempt; the order's id.
async fn order_with_a_dead_event(dir: &Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let card = good_card_token(dir).await;
    let db = ServiceDb::open_sqlite(dir, Orders::NAME, Orders::TABLES)
        .await
        .unwrap();
    let line = Line {
        order_id: uuid::Uuid::now_v7().to_string(),
        user_id: "alice".into(),
        sku: "sku-1".to_owned(),
        quantity: 1,
        amount_cents: orders::UNIT_PRICE_CENTS,
        card_token: card.token,
        card_last4: card.last4,
    };
    let placed_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    place_directly(&db, &line, i64::try_from(placed_ms).unwrap()).await;
    let ServiceDb::Sqlite { pool, .. } = &db else {
        unreachable!("a SQLite file")
    };

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

async fn books(gateway: &Gateway, stuck_after_ms: u64) -> Books {
    let (status, body) = gateway
        .send(
            Method::GET,
            &format!("/books?stuck_after_ms={stuck_after_ms}"),
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    serde_json::from_slice(&body).unwrap()
}

/// Waits until `/books` counts `stuck` sagas pending for longer than
/// `stuck_after_ms`.
async fn wait_for_stuck(gateway: &Gateway, stuck_after_ms: u64, stuck: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let counted = books(gateway, stuck_after_ms).await.stuck_sagas;
        if counted == stuck {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{counted} stuck sagas, never {stuck}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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

async fn dead_listed(gateway: &Gateway, service: &str) -> (StatusCode, Vec<Dead>) {
    let (status, body) = gateway
        .send(
            Method::GET,
            &format!("/admin/dead-events/{service}"),
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
    let dead = if status == StatusCode::OK {
        let listed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        serde_json::from_value(listed["dead"].clone()).unwrap()
    } else {
        Vec::new()
    };
    (status, dead)
}

async fn requeue(gateway: &Gateway, service: &str, body: &str) -> (StatusCode, serde_json::Value) {
    let (status, body) = gateway
        .send(
            Method::POST,
            &format!("/admin/dead-events/{service}/requeue"),
            &[("content-type", "application/json")],
            Bytes::from(body.to_owned()),
        )
        .await
        .unwrap();
    (status, serde_json::from_slice(&body).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_requeues_a_dead_event_through_the_gateway_and_its_saga_ends() {
    let (settings, dir) = settings();
    let order_id = order_with_a_dead_event(&dir).await;
    let system = System::start(settings).await.unwrap();
    let open = support::admin(&system);
    let alice = signed_in(&system, "alice").await;
    let operator = signed_in(&system, "operator").await;

    // Its saga is held up: stuck past a threshold of zero, not of an hour,
    // and the gauge says so.
    wait_for_stuck(&open, 0, 1).await;
    assert_eq!(books(&open, 3_600_000).await.stuck_sagas, 0);
    let (_, metrics) = open
        .send(Method::GET, "/metrics?stuck_after_ms=0", &[], Bytes::new())
        .await
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics).into_owned();
    assert!(metrics.contains("\npalisade_sagas_stuck 1\n"), "{metrics}");
    assert!(metrics.contains("\npalisade_sagas_stuck_after_seconds 0\n"));

    // Operators only.
    assert_eq!(dead_listed(&alice, "orders").await.0, StatusCode::FORBIDDEN);
    assert_eq!(
        requeue(&alice, "orders", r#"{"all": true}"#).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        dead_listed(
            &Gateway::new(&format!("http://{}", system.address)),
            "orders"
        )
        .await
        .0,
        StatusCode::UNAUTHORIZED
    );

    let (status, dead) = dead_listed(&operator, "orders").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event_type, "OrderCreated");
    assert_eq!(dead[0].aggregate_id, order_id);
    assert_eq!(dead[0].attempts, 1);
    assert_eq!(
        dead_listed(&operator, "payment").await,
        (StatusCode::OK, vec![])
    );
    assert_eq!(
        dead_listed(&operator, "billing").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        requeue(&operator, "orders", "{}").await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );

    let id = &dead[0].id;
    let (status, requeued) = requeue(&operator, "orders", &format!(r#"{{"id": "{id}"}}"#)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(requeued["requeued"], 1);

    assert_eq!(ended(&alice, &order_id).await.status, "confirmed");
    wait_for_stuck(&open, 0, 0).await;
    assert_eq!(
        dead_listed(&operator, "orders").await,
        (StatusCode::OK, vec![])
    );
    // Requeued once: not dead any more.
    assert_eq!(
        requeue(&operator, "orders", &format!(r#"{{"id": "{id}"}}"#))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    let books = books(&open, 0).await;
    assert_eq!(books.violations(false), Vec::<String>::new());
    system.stop().await;
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
    assert!(error.contains("<--id <ID>|--all>"), "{error}");

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
    let mut tx = db.begin().await.unwrap();
    let event = Event::new("order", "o-1", "PaymentSucceeded", b"{}".to_vec());
    tx.enqueue(&event).await.unwrap();
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
