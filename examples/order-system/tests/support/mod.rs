//! What the order system's HTTP tests share: a system in a fresh data
//! directory, and clients signed in as its demo users.
#![allow(dead_code, unreachable_pub)]

use palisade_order_system::db::{Emit, Param, ServiceDb, Tx};
use palisade_order_system::embedded::{Settings, System};
use palisade_order_system::events::{Line, SagaEvent};
use palisade_order_system::identity::Credentials;
use palisade_order_system::load::{Gateway, LoadSettings, Progress};
use palisade_outbox::{Delivery, Envelope};
use palisade_token_bucket::Bucket;

/// Settings for a system in a fresh data directory, with 16 demo load
/// users (each hash costs tens of milliseconds).
pub fn settings() -> (Settings, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("palisade-order-system-{}", fastrand::u64(..)));
    let mut settings = Settings::new(dir.clone(), ([127, 0, 0, 1], 0).into());
    settings.admin_listen = ([127, 0, 0, 1], 0).into();
    settings.demo_load_users = 16;
    (settings, dir)
}

pub async fn start_with(per_user: Option<Bucket>) -> (System, std::path::PathBuf) {
    let (mut settings, dir) = settings();
    if let Some(bucket) = per_user {
        settings.limits.per_user = bucket;
    }
    (System::start(settings).await.unwrap(), dir)
}

pub async fn start() -> (System, std::path::PathBuf) {
    start_with(None).await
}

/// A load of `orders` orders, `concurrency` at a time, a fifth of them
/// declined, on `system`, quietly.
pub fn load_settings(system: &System, orders: usize, concurrency: usize) -> LoadSettings {
    LoadSettings {
        gateway: format!("http://{}", system.address),
        admin: format!("http://{}", system.admin_address),
        orders,
        concurrency,
        decline_rate: 0.2,
        progress: Progress::Hidden,
        credentials: credentials(system),
        processor_outage: None,
        processor_admin: None,
    }
}

/// The demo users' passwords the system wrote on its first start.
pub fn credentials(system: &System) -> Credentials {
    Credentials::load(&system.demo.as_ref().unwrap().credentials).unwrap()
}

/// A client of `system`'s admin listener (`/books`, `/metrics`).
pub fn admin(system: &System) -> Gateway {
    Gateway::new(&format!("http://{}", system.admin_address))
}

/// A client of `system`'s gateway signed in as the demo user `name`.
pub async fn signed_in(system: &System, name: &str) -> Gateway {
    let mut gateway = Gateway::new(&format!("http://{}", system.address));
    gateway
        .sign_in(credentials(system).of(name).unwrap())
        .await
        .unwrap();
    gateway
}

/// Places `line` as alice's pending order, created at `created_ms`, with
/// its `OrderCreated`, in one transaction on the orders service's SQLite
/// file: an order as the gateway places one, without the gateway's checks
/// (for orders no client could place).
pub async fn place_directly(orders: &ServiceDb, line: &Line, created_ms: i64) {
    let mut tx = orders.begin().await.unwrap();
    tx.execute(
        "INSERT INTO orders (id, user_id, idempotency_key, sku, quantity, amount_cents, \
         card_token, card_last4, status, created_ms) \
         VALUES ($1, 'alice', $1, $2, $3, $4, $5, $6, 'pending', $7)",
        &[
            Param::Text(&line.order_id),
            Param::Text(&line.sku),
            Param::Int(line.quantity),
            Param::Int(line.amount_cents),
            Param::Text(&line.card_token),
            Param::Text(&line.card_last4),
            Param::Int(created_ms),
        ],
    )
    .await
    .unwrap();
    tx.enqueue(&SagaEvent::OrderCreated(line.clone()).to_event())
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

/// Waits (30 s at most) until `at_least` PostgreSQL sessions wait for a
/// lock while running a statement `LIKE` `statement`, as seen by
/// `watcher`'s session: `false` when they did not.
pub async fn wait_for_lock_waiters(
    watcher: &mut sqlx::PgConnection,
    statement: &str,
    at_least: i64,
) -> bool {
    for _ in 0..3_000 {
        // The watcher may be in a transaction, where PostgreSQL keeps the
        // first view of pg_stat_activity it took: drop it each time.
        sqlx::query("SELECT pg_stat_clear_snapshot()")
            .execute(&mut *watcher)
            .await
            .unwrap();
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE $1",
        )
        .bind(statement)
        .fetch_one(&mut *watcher)
        .await
        .unwrap();
        if waiting >= at_least {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    false
}

/// `event` as a consumer is handed it from the stream.
pub fn delivery(event: &SagaEvent) -> Delivery {
    Delivery {
        envelope: Envelope {
            id: uuid::Uuid::now_v7().to_string(),
            source: "/test".to_owned(),
            event_type: event.type_name().to_owned(),
            subject: Some(event.order_id().to_owned()),
            aggregate_type: Some("order".to_owned()),
            time_ms: None,
            content_type: None,
            traceparent: None,
            tracestate: None,
            extensions: std::collections::BTreeMap::new(),
        },
        subject: format!("orders.order.{}", event.type_name()),
        payload: serde_json::to_vec(event).unwrap().into(),
        attempt: 1,
    }
}

/// Sets the card processor's injected faults (`{"unavailable": true}`,
/// `{"delay_ms": 200}`) through the gateway, as the operator.
pub async fn set_processor(operator: &Gateway, faults: serde_json::Value) {
    let (status, reply) = operator
        .send(
            http::Method::PUT,
            "/admin/processor",
            &[("content-type", "application/json")],
            bytes::Bytes::from(faults.to_string()),
        )
        .await
        .unwrap();
    assert!(status.is_success(), "{status}: {reply:?}");
}

/// Places an order as `user` and waits for its saga up to `wait`: the
/// order's status then.
pub async fn place_and_wait(user: &Gateway, wait: std::time::Duration) -> String {
    let path = format!("/orders/{}?wait_ms={}", place(user).await, wait.as_millis());
    let (status, body) = user
        .send(http::Method::GET, &path, &[], bytes::Bytes::new())
        .await
        .unwrap();
    assert!(status.is_success(), "{status}: {body:?}");
    let order: serde_json::Value = serde_json::from_slice(&body).unwrap();
    order["status"].as_str().unwrap().to_owned()
}

/// Places an order as `user`: its id.
pub async fn place(user: &Gateway) -> String {
    let key = format!("order-{}", fastrand::u64(..));
    let (status, body) = user
        .send(
            http::Method::POST,
            "/orders",
            &[
                ("content-type", "application/json"),
                ("idempotency-key", key.as_str()),
            ],
            bytes::Bytes::from_static(br#"{"sku":"sku-1","quantity":1,"card":"4242424242424242"}"#),
        )
        .await
        .unwrap();
    assert!(status.is_success(), "{status}: {body:?}");
    let order: serde_json::Value = serde_json::from_slice(&body).unwrap();
    order["id"].as_str().unwrap().to_owned()
}

/// The injected faults of the card processor `services` run in process.
pub fn processor_faults(
    services: &palisade_order_system::gateway::Services,
) -> &palisade_order_system::processor::Faults {
    services
        .processor
        .as_ref()
        .expect("the embedded system runs its card processor")
        .faults()
}
