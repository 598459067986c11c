//! The orders routes through the embedded system's gateway: idempotency
//! keys (draft-ietf-httpapi-idempotency-key-header) and waiting for a
//! saga's end; and the orders service's idempotency on PostgreSQL.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use palisade_order_system::card::CardToken;
use palisade_order_system::db::{Param, ServiceDb, Statements};
use palisade_order_system::embedded::System;
use palisade_order_system::load::Gateway;
use palisade_order_system::orders::{self, Orders, PlaceError, Placement, TokenizedOrder};
use palisade_order_system::service::SagaService;
use sqlx::Connection;

mod support;
use support::{signed_in, start};

const ORDER: &str = r#"{"sku":"sku-1","quantity":2,"card":"4242424242424242"}"#;

/// `POST /orders` under `key`: the status, the `Content-Type` and the
/// body as JSON.
async fn post_order(
    gateway: &Gateway,
    key: &str,
    body: &str,
) -> (StatusCode, String, serde_json::Value) {
    let reply = gateway
        .exchange(
            Method::POST,
            "/orders",
            &[
                ("content-type", "application/json"),
                ("idempotency-key", key),
            ],
            Bytes::from(body.to_owned()),
        )
        .await
        .unwrap();
    let content_type = reply.headers()[http::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    (
        reply.status(),
        content_type,
        serde_json::from_slice(reply.body()).unwrap(),
    )
}

/// Waits (up to 30 s) until `condition` holds.
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    for _ in 0..3_000 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}: not within 30 s");
}

async fn stop(system: System, dir: std::path::PathBuf) {
    system.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_reused_for_another_order_is_refused_with_a_problem_naming_it() {
    let (system, dir) = start().await;
    let alice = signed_in(&system, "alice").await;
    let (status, _, first) = post_order(&alice, "key-1", ORDER).await;
    assert_eq!(status, StatusCode::CREATED);

    // The same order, written differently: the same request.
    let same = r#"{ "card": "4242424242424242", "quantity": 2, "sku": "sku-1" }"#;
    let (status, _, replayed) = post_order(&alice, "key-1", same).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(replayed["id"], first["id"]);

    let other = r#"{"sku":"sku-1","quantity":3,"card":"4242424242424242"}"#;
    let (status, content_type, problem) = post_order(&alice, "key-1", other).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(content_type, "application/problem+json");
    assert_eq!(problem["status"], 422);
    assert_eq!(problem["idempotency_key"], "key-1");
    assert!(problem["type"].is_string() && problem["title"].is_string());
    assert!(problem["detail"].as_str().unwrap().contains("key-1"));

    // Keys are the user's own: bob's key-1 is a key of his.
    let bob = signed_in(&system, "bob").await;
    let (status, _, bobs) = post_order(&bob, "key-1", other).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_ne!(bobs["id"], first["id"]);

    let books = palisade_order_system::books::read_books(&system.services).await;
    let placed: i64 = books.orders.iter().map(|(_, _, n)| n).sum();
    assert_eq!(placed, 2, "alice's one order and bob's");
    stop(system, dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_sent_as_a_structured_field_string_is_the_same_key() {
    let (system, dir) = start().await;
    let alice = signed_in(&system, "alice").await;
    let (status, _, first) = post_order(&alice, r#""key \"1\"""#, ORDER).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _, replayed) = post_order(&alice, r#"key "1""#, ORDER).await;
    assert_eq!((status, &replayed["id"]), (StatusCode::OK, &first["id"]));
    for malformed in [r#""key"#, r#""key\x""#, r#""key" 2"#, r#""""#] {
        let (status, content_type, problem) = post_order(&alice, malformed, ORDER).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{malformed}: {problem}");
        assert_eq!(content_type, "application/problem+json");
    }
    stop(system, dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_sent_while_the_first_is_being_placed_gets_409() {
    let (system, dir) = start().await;
    let alice = signed_in(&system, "alice").await;
    let orders = system.services.orders.clone();

    // Another writer holds the orders database: the first request waits
    // inside its placement.
    let mut writer = {
        use sqlx::Connection;
        sqlx::SqliteConnection::connect(&format!("sqlite://{}", dir.join("orders.db").display()))
            .await
            .unwrap()
    };
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut writer)
        .await
        .unwrap();
    let first = tokio::spawn({
        let alice = alice.clone();
        async move { post_order(&alice, "key-1", ORDER).await }
    });
    eventually("the first request is being placed", || {
        orders.placing() == 1
    })
    .await;

    for body in [
        ORDER,
        r#"{"sku":"sku-2","quantity":1,"card":"4242424242424242"}"#,
    ] {
        let (status, content_type, problem) = post_order(&alice, "key-1", body).await;
        assert_eq!(status, StatusCode::CONFLICT, "{problem}");
        assert_eq!(content_type, "application/problem+json");
        assert_eq!(problem["idempotency_key"], "key-1");
    }

    sqlx::query("ROLLBACK").execute(&mut writer).await.unwrap();
    let (status, _, placed) = first.await.unwrap();
    assert_eq!(status, StatusCode::CREATED);
    let (status, _, replayed) = post_order(&alice, "key-1", ORDER).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(replayed["id"], placed["id"]);
    assert_eq!(orders.placing(), 0);
    stop(system, dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_past_its_window_places_a_new_order() {
    let (system, dir) = start().await;
    let alice = signed_in(&system, "alice").await;
    let (_, _, first) = post_order(&alice, "key-1", ORDER).await;
    let first_id = first["id"].as_str().unwrap();

    // The first order placed a day and a minute ago.
    let window = i64::try_from(orders::IDEMPOTENCY_WINDOW.as_millis()).unwrap();
    let aged = system
        .services
        .orders
        .db()
        .execute(
            "UPDATE orders SET created_ms = created_ms - $1 WHERE id = $2",
            &[Param::Int(window + 60_000), Param::Text(first_id)],
        )
        .await
        .unwrap();
    assert_eq!(aged, 1);
    let other = r#"{"sku":"sku-2","quantity":1,"card":"4242424242424242"}"#;
    let (status, _, second) = post_order(&alice, "key-1", other).await;
    assert_eq!(status, StatusCode::CREATED, "{second}");
    assert_ne!(second["id"], first["id"]);
    let (status, _, replayed) = post_order(&alice, "key-1", other).await;
    assert_eq!((status, &replayed["id"]), (StatusCode::OK, &second["id"]));
    // The first order is still alice's.
    let (status, _) = alice
        .send(
            Method::GET,
            &format!("/orders/{first_id}"),
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    stop(system, dir).await;
}

/// An order of alice's that stays pending (the card processor is out of
/// service): alice, the operator, and the path of a 30 s wait for it.
async fn a_pending_order(system: &System) -> (Gateway, Gateway, String) {
    let alice = signed_in(system, "alice").await;
    let operator = signed_in(system, "operator").await;
    processor_unavailable(&operator, true).await;
    let (_, _, order) = post_order(&alice, "key-1", ORDER).await;
    let path = format!("/orders/{}?wait_ms=30000", order["id"].as_str().unwrap());
    (alice, operator, path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_dropped_by_its_client_leaves_no_waiter() {
    let (system, dir) = start().await;
    let (alice, operator, path) = a_pending_order(&system).await;
    let orders = system.services.orders.clone();

    let waits: Vec<_> = (0..2)
        .map(|_| {
            let (alice, path) = (alice.clone(), path.clone());
            tokio::spawn(async move { alice.send(Method::GET, &path, &[], Bytes::new()).await })
        })
        .collect();
    eventually("a request waits", || orders.waiting() == 1).await;
    waits[0].abort();
    let (status, _) = alice
        .send(Method::GET, "/orders/unknown?wait_ms=0", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
    // One client still waits for the order. (Looked for until it is seen:
    // the second request may register its wait only after the first's
    // is dropped; an entry dropped under it would never come back.)
    eventually("the other request still waits", || orders.waiting() == 1).await;
    waits[1].abort();
    eventually("the dropped waits are gone", || orders.waiting() == 0).await;

    processor_unavailable(&operator, false).await;
    stop(system, dir).await;
}

/// Puts the card processor out of service (or back), as an operator.
async fn processor_unavailable(operator: &Gateway, unavailable: bool) {
    let (status, _) = operator
        .send(
            Method::PUT,
            "/admin/processor",
            &[("content-type", "application/json")],
            Bytes::from(format!(r#"{{"unavailable":{unavailable}}}"#)),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
}

/// A stop answers the requests waiting for a saga's end with their order
/// as it stands: the server's graceful shutdown waited them out (30 s
/// each), while the consumers that would end the sagas were stopping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_answers_the_requests_waiting_for_a_saga_at_once() {
    let (system, dir) = start().await;
    let (alice, _, path) = a_pending_order(&system).await;
    let orders = system.services.orders.clone();
    let wait = tokio::spawn(async move { alice.send(Method::GET, &path, &[], Bytes::new()).await });
    eventually("the request waits", || orders.waiting() == 1).await;

    // Far less than the wait: only a failure waits this long.
    let stopped = tokio::time::timeout(Duration::from_secs(20), async {
        system.stop().await;
        wait.await.unwrap().unwrap()
    })
    .await
    .expect("the stop waited for the request's wait");
    let (status, body) = stopped;
    assert_eq!(status, StatusCode::OK);
    let answered: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answered["status"], "pending", "{answered}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_whose_lookup_fails_leaves_no_waiter() {
    let (system, dir) = start().await;
    let alice = signed_in(&system, "alice").await;
    system.services.orders.db().close().await;
    // Ids no order has, in the shape of one (anything else is answered
    // 404 without a lookup).
    for id in [
        "0190a000-0000-7000-8000-000000000001",
        "0190a000-0000-7000-8000-000000000002",
    ] {
        let (status, _) = alice
            .send(
                Method::GET,
                &format!("/orders/{id}?wait_ms=1000"),
                &[],
                Bytes::new(),
            )
            .await
            .unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(system.services.orders.waiting(), 0);
    stop(system, dir).await;
}

fn new_order(quantity: i64) -> TokenizedOrder {
    TokenizedOrder {
        sku: "sku-1".to_owned(),
        quantity,
        card: CardToken {
            token: "card_0123456789abcdef0123456789abcdef".to_owned(),
            last4: "4242".to_owned(),
        },
    }
}

/// The orders service's tables in a new schema `prefix_<random>` of the
/// test database, with `connections` connections: the database and the
/// schema (for the test to drop).
async fn orders_on_postgres(prefix: &str, connections: u32) -> (ServiceDb, String) {
    let schema = format!("{prefix}_{}", fastrand::u64(..));
    let db = ServiceDb::open_postgres(
        &palisade_testkit::servers::database_url(),
        &schema,
        Orders::TABLES,
        connections,
    )
    .await
    .unwrap();
    (db, schema)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_on_postgres_replay_refuse_and_expire() {
    let (db, schema) = orders_on_postgres("orders_idempotency", 2).await;
    let orders = Orders::new(db.clone()).idempotency_window(Duration::from_secs(3_600));

    let Placement::Created(first) = orders.place("alice", "k", &new_order(1)).await.unwrap() else {
        panic!("the first placement creates");
    };
    assert_eq!(
        orders.place("alice", "k", &new_order(1)).await.unwrap(),
        Placement::Replayed(first.clone())
    );
    assert!(matches!(
        orders.place("alice", "k", &new_order(2)).await,
        Err(PlaceError::KeyReused)
    ));
    assert!(matches!(
        orders.place("bob", "k", &new_order(2)).await.unwrap(),
        Placement::Created(_)
    ));

    let aged = db
        .execute(
            "UPDATE orders SET created_ms = created_ms - 3600001 WHERE id = $1",
            &[Param::Text(&first.id)],
        )
        .await
        .unwrap();
    assert_eq!(aged, 1);
    let Placement::Created(second) = orders.place("alice", "k", &new_order(2)).await.unwrap()
    else {
        panic!("an expired key places a new order");
    };
    assert_ne!(second.id, first.id);
    assert_eq!(orders.find("alice", &first.id).await.unwrap(), Some(first));

    db.execute(&format!("DROP SCHEMA {schema} CASCADE"), &[])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_duplicate_sent_to_another_gateway_waits_for_the_first_and_replays_it() {
    use sqlx::Connection;
    let url = palisade_testkit::servers::database_url();
    let schema = format!("orders_duplicate_{}", fastrand::u64(..));
    let db = ServiceDb::open_postgres(&url, &schema, Orders::TABLES, 2)
        .await
        .unwrap();
    // Two gateways' orders services on one database.
    let (one, another) = (Orders::new(db.clone()), Orders::new(db.clone()));

    // A transaction of a third holds the key's index entry: both
    // placements wait on it.
    let mut holder = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query(&format!(
        "INSERT INTO {schema}.orders (id, user_id, idempotency_key, sku, quantity, amount_cents, card_token, card_last4, status, created_ms) \
         VALUES ('held', 'carol', 'k', 'sku-1', 1, 1250, 'card_0123456789abcdef0123456789abcdef', '4242', 'pending', 0)"
    ))
    .execute(&mut holder)
    .await
    .unwrap();
    let placements = [one, another]
        .map(|orders| tokio::spawn(async move { orders.place("carol", "k", &new_order(1)).await }));
    // Most runs see both wait on the key here; a run that does not (the
    // suite's other schemas being made and dropped meanwhile) checks the
    // same answers below, the placements merely arriving later.
    let _ = support::wait_for_lock_waiters(&mut holder, "INSERT INTO orders%", 2).await;
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();

    let mut created = Vec::new();
    let mut replayed = Vec::new();
    for placement in placements {
        match placement.await.unwrap().unwrap() {
            Placement::Created(order) => created.push(order),
            Placement::Replayed(order) => replayed.push(order),
        }
    }
    assert_eq!(created.len(), 1, "one order: {created:?} {replayed:?}");
    assert_eq!(replayed, created, "the other answers with it");

    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&mut holder)
        .await
        .unwrap();
}

/// Placements at once (placed together, in whatever groups they fall)
/// answer as each would alone: a new key places its order, once, with
/// one `OrderCreated`; a key placed before replays its order for the same
/// request and refuses another.
async fn placements_at_once_answer_as_each_would_alone(db: ServiceDb) {
    let orders = Orders::new(db.clone()).idempotency_window(Duration::from_secs(3_600));
    let mut before = Vec::new();
    for key in 0..100 {
        let key = format!("old-{key}");
        let Placement::Created(order) = orders.place("alice", &key, &new_order(1)).await.unwrap()
        else {
            panic!("a new key places its order");
        };
        before.push(order);
    }
    let mut calls = tokio::task::JoinSet::new();
    for key in 0..100 {
        let again = orders.clone();
        calls.spawn(async move {
            // The same request again, or another one, under a used key.
            let quantity = if key % 2 == 0 { 1 } else { 2 };
            let used = format!("old-{key}");
            (key, again.place("alice", &used, &new_order(quantity)).await)
        });
        let new = orders.clone();
        calls.spawn(async move {
            let free = format!("new-{key}");
            (key + 100, new.place("alice", &free, &new_order(3)).await)
        });
    }
    let mut created = std::collections::HashSet::new();
    while let Some(joined) = calls.join_next().await {
        match joined.unwrap() {
            (key, Ok(Placement::Created(order))) if key >= 100 => {
                assert_eq!(order.quantity, 3);
                assert!(created.insert(order.id));
            }
            (key, Ok(Placement::Replayed(order))) if key < 100 && key % 2 == 0 => {
                assert_eq!(order, before[key]);
            }
            (key, Err(PlaceError::KeyReused)) if key < 100 && key % 2 == 1 => {}
            (key, other) => panic!("key {key}: {other:?}"),
        }
    }
    assert_eq!(created.len(), 100);
    let (rows, events, ordered): (i64, i64, i64) = db
        .fetch_one(
            "SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM outbox), \
             (SELECT count(DISTINCT aggregate_id) FROM outbox WHERE event_type = 'OrderCreated')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((rows, events, ordered), (200, 200, 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn placements_at_once_on_sqlite_answer_as_each_would_alone() {
    let dir = std::env::temp_dir().join(format!("palisade-orders-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let db = ServiceDb::open_sqlite(&dir, Orders::NAME, Orders::TABLES)
        .await
        .unwrap();
    placements_at_once_answer_as_each_would_alone(db).await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn placements_at_once_on_postgres_answer_as_each_would_alone() {
    let (db, schema) = orders_on_postgres("orders_at_once", 4).await;
    placements_at_once_answer_as_each_would_alone(db.clone()).await;
    db.execute(&format!("DROP SCHEMA {schema} CASCADE"), &[])
        .await
        .unwrap();
}

/// The trace's vendor state (`tracestate`) reaches every step's events:
/// payment kept only the `traceparent` of the charges it had to make, so
/// its events, and the steps' after it, had lost it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_orders_tracestate_reaches_every_step() {
    let (system, dir) = start().await;
    let alice = signed_in(&system, "alice").await;
    let (trace_id, state) = ("4bf92f3577b34da6a3ce929d0e0e4736", "congo=t61rcWkgMzE");
    let reply = alice
        .exchange(
            Method::POST,
            "/orders",
            &[
                ("content-type", "application/json"),
                ("idempotency-key", "traced"),
                ("traceparent", &format!("00-{trace_id}-00f067aa0ba902b7-01")),
                ("tracestate", state),
            ],
            Bytes::from(ORDER),
        )
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::CREATED);
    let order: serde_json::Value = serde_json::from_slice(reply.body()).unwrap();
    let path = format!("/orders/{}?wait_ms=30000", order["id"].as_str().unwrap());
    let (_, body) = alice
        .send(Method::GET, &path, &[], Bytes::new())
        .await
        .unwrap();
    let ended: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(ended["status"], "confirmed", "{ended}");
    for (service, event) in [
        ("inventory", "InventoryReserved"),
        ("payment", "PaymentSucceeded"),
        ("shipping", "ShippingScheduled"),
        ("orders", "OrderConfirmed"),
    ] {
        let mut db = sqlx::sqlite::SqliteConnection::connect(&format!(
            "sqlite://{}",
            dir.join(format!("{service}.db")).display()
        ))
        .await
        .unwrap();
        let (headers,): (String,) =
            sqlx::query_as("SELECT headers FROM outbox WHERE event_type = $1")
                .bind(event)
                .fetch_one(&mut db)
                .await
                .unwrap();
        let headers: serde_json::Value = serde_json::from_str(&headers).unwrap();
        assert_eq!(headers["tracestate"], state, "{event}: {headers}");
        let traceparent = headers["traceparent"].as_str().unwrap();
        assert!(traceparent.contains(trace_id), "{event}: {headers}");
    }

    // A client's tracestate of 32 long members is cut at the gateway to
    // 512 characters: whole, it went into every event of the saga.
    let long = (0..32)
        .map(|n| format!("v{n}={}", "x".repeat(200)))
        .collect::<Vec<_>>()
        .join(",");
    let long_trace = "5bf92f3577b34da6a3ce929d0e0e4736";
    let reply = alice
        .exchange(
            Method::POST,
            "/orders",
            &[
                ("content-type", "application/json"),
                ("idempotency-key", "traced-long"),
                (
                    "traceparent",
                    &format!("00-{long_trace}-00f067aa0ba902b7-01"),
                ),
                ("tracestate", &long),
            ],
            Bytes::from(ORDER),
        )
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::CREATED);
    let mut db = sqlx::sqlite::SqliteConnection::connect(&format!(
        "sqlite://{}",
        dir.join("orders.db").display()
    ))
    .await
    .unwrap();
    let placed: Vec<(String,)> =
        sqlx::query_as("SELECT headers FROM outbox WHERE event_type = 'OrderCreated'")
            .fetch_all(&mut db)
            .await
            .unwrap();
    let headers: serde_json::Value = placed
        .iter()
        .map(|(headers,)| serde_json::from_str::<serde_json::Value>(headers).unwrap())
        .find(|headers| {
            headers["traceparent"]
                .as_str()
                .unwrap()
                .contains(long_trace)
        })
        .expect("the second order's event");
    let kept = headers["tracestate"].as_str().unwrap_or_default();
    assert!(
        !kept.is_empty() && kept.len() <= palisade_tracecontext::MIN_PROPAGATED_LEN,
        "{} characters kept",
        kept.len()
    );
    stop(system, dir).await;
}
