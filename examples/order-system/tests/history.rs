//! The order history: a read model of the saga's events, each user's
//! orders at `GET /orders`, whichever order its events arrive in.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use palisade_order_system::db::ServiceDb;
use palisade_order_system::events::{Line, SagaEvent};
use palisade_order_system::history::History;
use palisade_order_system::load::Gateway;
use palisade_order_system::orders::Order;
use palisade_order_system::processor::{DECLINED_CARD, GOOD_CARD};
use palisade_order_system::service::{Consuming, SagaService};
use palisade_outbox::Handler;
use tokio::time::Instant;

mod support;
use support::{signed_in, start};

/// Places an order of `quantity` units of sku-1 with `card`, and waits for
/// its saga to end; its id.
async fn placed(client: &Gateway, key: &str, quantity: i64, card: &str) -> String {
    let body = format!(r#"{{"sku":"sku-1","quantity":{quantity},"card":"{card}"}}"#);
    let (status, body) = client
        .send(
            Method::POST,
            "/orders",
            &[
                ("idempotency-key", key),
                ("content-type", "application/json"),
            ],
            Bytes::from(body),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::CREATED);
    let id = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = client
        .send(
            Method::GET,
            &format!("/orders/{id}?wait_ms=30000"),
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    id
}

/// `GET /orders` with `query`.
async fn history(client: &Gateway, query: &str) -> (StatusCode, Vec<Order>) {
    let (status, body) = client
        .send(Method::GET, &format!("/orders{query}"), &[], Bytes::new())
        .await
        .unwrap();
    if !status.is_success() {
        return (status, Vec::new());
    }
    let page: serde_json::Value = serde_json::from_slice(&body).unwrap();
    (
        status,
        serde_json::from_value(page["orders"].clone()).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_user_sees_their_own_orders_newest_first_as_they_ended() {
    let (system, dir) = start().await;
    let alice = signed_in(&system, "alice").await;
    let bob = signed_in(&system, "bob").await;
    let first = placed(&alice, "a-1", 1, GOOD_CARD).await;
    let declined = placed(&alice, "a-2", 2, DECLINED_CARD).await;
    let last = placed(&alice, "a-3", 3, GOOD_CARD).await;

    // The history trails the saga by its lag: asked until it caught up.
    let deadline = Instant::now() + Duration::from_secs(30);
    let orders = loop {
        let (status, orders) = history(&alice, "").await;
        assert_eq!(status, StatusCode::OK);
        if orders.len() == 3 && orders.iter().all(|order| order.status != "pending") {
            break orders;
        }
        assert!(
            Instant::now() < deadline,
            "the history never caught up: {orders:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let seen: Vec<(&str, i64, &str, Option<&str>)> = orders
        .iter()
        .map(|order| {
            (
                order.id.as_str(),
                order.quantity,
                order.status.as_str(),
                order.reason.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (last.as_str(), 3, "confirmed", None),
            (declined.as_str(), 2, "cancelled", Some("payment_declined")),
            (first.as_str(), 1, "confirmed", None),
        ]
    );
    assert_eq!(
        orders[0].amount_cents,
        3 * palisade_order_system::orders::UNIT_PRICE_CENTS
    );

    // Pages: the newest, then those before it.
    let (_, page) = history(&alice, "?limit=1").await;
    assert_eq!(page.len(), 1);
    let (_, rest) = history(&alice, &format!("?before={}", page[0].id)).await;
    assert_eq!(rest, orders[1..]);

    // Nobody else's.
    assert_eq!(history(&bob, "").await, (StatusCode::OK, Vec::new()));
    // A misspelt parameter is refused, not ignored; so are a page size
    // out of range (it was made 1 or 100) and a `before` that names no
    // order (an empty one answered no orders at all; a NUL byte reached
    // PostgreSQL, which answered 503).
    for query in [
        "?limt=1",
        "?limit=0",
        "?limit=101",
        "?before=",
        "?before=%00",
        "?before=o-1",
    ] {
        assert_eq!(
            history(&alice, query).await.0,
            StatusCode::BAD_REQUEST,
            "{query}"
        );
    }
    for path in ["/orders/%00", "/orders/not-an-order"] {
        let (status, _) = alice
            .send(Method::GET, path, &[], Bytes::new())
            .await
            .unwrap();
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
    system.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn an_orders_end_applied_before_its_creation_ends_the_same_row() {
    let dir = std::env::temp_dir().join(format!("palisade-history-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let db = ServiceDb::open_sqlite(&dir, History::NAME, History::TABLES)
        .await
        .unwrap();
    let history = History::new(db.clone());
    let ServiceDb::Sqlite { pool, outbox, .. } = db.clone() else {
        unreachable!("a SQLite file was opened")
    };
    let handler = Consuming(history.clone(), outbox);
    let apply = async |event: SagaEvent| {
        let mut tx = pool.begin().await.unwrap();
        handler
            .handle(&mut *tx, &support::delivery(&event))
            .await
            .unwrap();
        tx.commit().await.unwrap();
    };
    let line = |order_id: &str| Line {
        order_id: order_id.to_owned(),
        user_id: "alice".to_owned(),
        sku: "sku-2".to_owned(),
        quantity: 4,
        amount_cents: 5_000,
        card_token: "card_0123456789abcdef0123456789abcdef".to_owned(),
        card_last4: "4242".to_owned(),
    };
    let cancelled = |order_id: &str| SagaEvent::OrderCancelled {
        order_id: order_id.to_owned(),
        reason: "out_of_stock".to_owned(),
    };

    // In order, and the other way round.
    apply(SagaEvent::OrderCreated(line("o-1"))).await;
    apply(cancelled("o-1")).await;
    apply(cancelled("o-2")).await;
    // Until its creation comes, the order is nobody's.
    assert_eq!(history.of_user("alice", None, 10).await.unwrap().len(), 1);
    apply(SagaEvent::OrderCreated(line("o-2"))).await;

    let rows = history.of_user("alice", None, 10).await.unwrap();
    let as_past = |id: &str| Order {
        id: id.to_owned(),
        sku: "sku-2".to_owned(),
        quantity: 4,
        amount_cents: 5_000,
        status: "cancelled".to_owned(),
        reason: Some("out_of_stock".to_owned()),
        saga_ms: None,
    };
    assert_eq!(rows, [as_past("o-2"), as_past("o-1")]);
    let _ = std::fs::remove_dir_all(dir);
}
