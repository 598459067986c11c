//! Two cells in one embedded system: each user's orders go to the cell
//! the gateway's routing table gives them, each cell has its own books,
//! and one cell's card processor outage holds up its own users' sagas
//! only, while the other cell's sagas end as usual.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use palisade_order_system::embedded::System;

mod support;
use support::{admin, place_and_wait, processor_faults, signed_in};

/// `GET path` on the admin listener: its status and body.
async fn admin_get(system: &System, path: &str) -> (http::StatusCode, String) {
    let (status, body) = admin(system)
        .send(Method::GET, path, &[], Bytes::new())
        .await
        .unwrap();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// An embedded system of two cells, `a` and `b`, in a data directory of
/// its own.
async fn two_cells() -> (System, PathBuf) {
    let (mut settings, dir) = support::settings();
    settings.cells = 2;
    (System::start(settings).await.unwrap(), dir)
}

/// Stops `system` and removes its data directory.
async fn stop(system: System, dir: PathBuf) {
    system.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// How many orders the books under `prefix` (`/cells/NAME`, or the
/// unprefixed ones of every cell) hold with each of `statuses`.
async fn orders_in<const N: usize>(system: &System, prefix: &str, statuses: [&str; N]) -> [i64; N] {
    let (status, body) = admin_get(system, &format!("{prefix}/books")).await;
    assert!(status.is_success(), "{status}");
    let books: serde_json::Value = serde_json::from_str(&body).unwrap();
    // (status, reason, count) rows.
    let rows = books["orders"].as_array().unwrap().clone();
    statuses.map(|status| {
        rows.iter()
            .filter(|row| row[0] == status)
            .map(|row| row[2].as_i64().unwrap())
            .sum()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_cells_processor_outage_holds_up_only_its_own_users() {
    let (system, dir) = two_cells().await;
    let names: Vec<&str> = system.cells.iter().map(|cell| cell.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    // A user of each cell, as the routing table places them.
    let users: Vec<String> = ["alice", "bob"]
        .into_iter()
        .map(str::to_owned)
        .chain((0..16).map(|n| format!("load-{n:02}")))
        .collect();
    let in_cell = |name: &str| {
        users
            .iter()
            .find(|user| system.cell_of(user).name == name)
            .unwrap_or_else(|| panic!("no demo user in cell {name}"))
            .clone()
    };
    let (user_a, user_b) = (in_cell("a"), in_cell("b"));
    let (client_a, client_b) = (
        signed_in(&system, &user_a).await,
        signed_in(&system, &user_b).await,
    );

    // Cell b's card processor goes down.
    let processor_b = system.cells[1]
        .services
        .processor
        .as_ref()
        .unwrap()
        .faults();
    processor_b.set_unavailable(true);
    let wait = Duration::from_secs(20);
    for _ in 0..3 {
        assert_eq!(place_and_wait(&client_a, wait).await, "confirmed");
    }
    assert_eq!(
        place_and_wait(&client_b, Duration::from_secs(1)).await,
        "pending",
        "cell b's payment waits its processor's outage out"
    );
    // Each cell's books hold its own users' orders only.
    let statuses = ["confirmed", "pending", "cancelled"];
    assert_eq!(orders_in(&system, "/cells/a", statuses).await, [3, 0, 0]);
    assert_eq!(orders_in(&system, "/cells/b", statuses).await, [0, 1, 0]);
    assert_eq!(
        orders_in(&system, "", statuses).await,
        [3, 1, 0],
        "the unprefixed books add up every cell's"
    );
    // The unprefixed metrics are the first cell's; each cell's dashboard
    // is its own page.
    for (path, series) in [
        (
            "/metrics",
            "palisade_orders{reason=\"\",status=\"confirmed\"} 3",
        ),
        (
            "/cells/b/metrics",
            "palisade_orders{reason=\"\",status=\"pending\"} 1",
        ),
    ] {
        let (status, text) = admin_get(&system, path).await;
        assert!(status.is_success(), "{path}: {status}");
        assert!(text.contains(series), "{series} not in {path}:\n{text}");
    }
    let (status, _) = admin_get(&system, "/cells/b/dashboard").await;
    assert!(status.is_success(), "{status}");
    // A user of cell a sees only their own orders, all ended.
    let (status, body) = client_a
        .send(Method::GET, "/orders", &[], Bytes::new())
        .await
        .unwrap();
    assert!(status.is_success());
    let history: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        history["orders"]
            .as_array()
            .unwrap()
            .iter()
            .all(|order| order["status"] != "pending"),
        "{history}"
    );

    // Back up: cell b's saga ends.
    processor_b.set_unavailable(false);
    assert_eq!(place_and_wait(&client_b, wait).await, "confirmed");
    stop(system, dir).await;
}

#[tokio::test]
async fn a_system_of_no_cells_or_too_many_is_refused() {
    for cells in [0, 27] {
        let (mut settings, dir) = support::settings();
        settings.cells = cells;
        let error = System::start(settings).await.unwrap_err().to_string();
        assert!(error.contains("1 to 26"), "{error}");
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// The addresses asked for are bound before anything else starts, so
/// none of the system's own ports (a cell's card processor listens on one
/// it picks) can take one of them; one in use is named in the error.
#[tokio::test]
async fn an_address_in_use_is_refused_by_name_before_anything_starts() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().map(|address| (taken, address)).unwrap();
    for admin in [false, true] {
        let (mut settings, dir) = support::settings();
        let what = if admin {
            settings.admin_listen = taken.1;
            "admin listen"
        } else {
            settings.listen = taken.1;
            "listen"
        };
        let error = System::start(settings).await.unwrap_err().to_string();
        assert!(
            error.starts_with(&format!("{what} {}: ", taken.1)),
            "{error}"
        );
        assert!(
            !dir.join("orders.db").exists(),
            "a database was opened first"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_names_the_cell_an_admin_request_is_for() {
    let (system, dir) = two_cells().await;
    let operator = signed_in(&system, "operator").await;
    let unavailable = |name: &str| {
        let cell = system.cells.iter().find(|cell| cell.name == name).unwrap();
        processor_faults(&cell.services).settings().unavailable
    };
    let put = |path: &'static str| {
        operator.send(
            Method::PUT,
            path,
            &[("content-type", "application/json")],
            Bytes::from_static(br#"{"unavailable": true}"#),
        )
    };
    let (status, body) = put("/admin/processor?cell=b").await.unwrap();
    assert!(status.is_success(), "{status}: {body:?}");
    assert!(unavailable("b"));
    assert!(!unavailable("a"));

    let (status, body) = put("/admin/processor?cell=z").await.unwrap();
    assert_eq!(status, http::StatusCode::NOT_FOUND, "{body:?}");

    // Without `?cell`, the operator's own cell.
    let own = system.cell_of("operator").name.clone();
    let other = if own == "a" { "b" } else { "a" };
    for cell in &system.cells {
        processor_faults(&cell.services).set_unavailable(false);
    }
    let (status, _) = put("/admin/processor").await.unwrap();
    assert!(status.is_success());
    assert!(unavailable(&own));
    assert!(!unavailable(other));
    stop(system, dir).await;
}

/// The load command on two cells checks both: `/books` adds up their
/// orders, and the card charges it reads are both cells' processors',
/// one per confirmed order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_command_checks_every_cell() {
    let (system, dir) = two_cells().await;
    let summary = palisade_order_system::load::run(&support::load_settings(&system, 60, 8))
        .await
        .unwrap();
    assert!(summary.violations.is_empty(), "{:?}", summary.violations);
    let books = summary.books.unwrap();
    assert_eq!(books.cells, ["a", "b"]);
    let placed: i64 = books.orders.iter().map(|(_, _, count)| count).sum();
    assert_eq!(placed, 60, "both cells' orders");
    let ledger = summary.ledger.unwrap();
    assert_eq!(
        (ledger.charges, ledger.charged_twice),
        (u64::try_from(summary.confirmed).unwrap(), 0),
        "both cells' processors"
    );
    // Each cell took some of the load's users.
    for cell in ["a", "b"] {
        let [ended] = orders_in(&system, &format!("/cells/{cell}"), ["confirmed"]).await;
        assert!(ended > 0, "cell {cell} confirmed none");
    }
    stop(system, dir).await;
}

/// A cell whose database fails does not hide the others' books: the
/// summed `/books` answers with that cell's service unread (a violation
/// the load reports), every other service and cell read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cells_failing_database_leaves_its_service_unread_and_the_rest_read() {
    use palisade_order_system::db::{Pool, Statements};
    use palisade_order_system::service::SagaService;

    let (system, dir) = two_cells().await;
    let Pool::Sqlite(shipping) = system.cells[1].steps.shipping.db().pool() else {
        panic!("the embedded system is on SQLite");
    };
    shipping.close().await;

    let (status, body) = admin_get(&system, "/books").await;
    assert!(status.is_success(), "{status}: {body}");
    let books: palisade_order_system::books::Books = serde_json::from_str(&body).unwrap();
    assert_eq!(books.cells, ["a", "b"]);
    assert_eq!(books.unread, ["b/shipping"]);
    assert!(books.services.contains(&"b/orders".to_owned()));
    assert!(books.services.contains(&"shipping".to_owned()));
    assert_eq!(
        books.violations(false),
        ["the books of b/shipping were not read"]
    );
    for (cell, unread) in [("a", vec![]), ("b", vec!["shipping"])] {
        let (status, body) = admin_get(&system, &format!("/cells/{cell}/books")).await;
        assert!(status.is_success(), "{status}: {body}");
        let books: palisade_order_system::books::Books = serde_json::from_str(&body).unwrap();
        assert_eq!(books.unread, unread, "cell {cell}");
    }
    stop(system, dir).await;
}

/// The load's processor outage takes every cell's processor down (it
/// took the operator's cell's only): each cell's breaker opens, and every
/// order still ends with the books straight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loads_processor_outage_takes_every_cells_processor_down() {
    let (system, dir) = two_cells().await;
    let settings = palisade_order_system::load::LoadSettings {
        processor_outage: Some(Duration::from_secs(2)),
        ..support::load_settings(&system, 200, 16)
    };
    let summary = palisade_order_system::load::run(&settings).await.unwrap();
    assert!(summary.violations.is_empty(), "{:?}", summary.violations);
    assert_eq!((summary.placed, summary.unfinished), (200, 0));
    for cell in ["a", "b"] {
        let (status, body) = admin_get(&system, &format!("/cells/{cell}/books")).await;
        assert!(status.is_success(), "{status}");
        let books: palisade_order_system::books::Books = serde_json::from_str(&body).unwrap();
        assert!(books.breaker_opens >= 1, "cell {cell}: {books:?}");
    }
    for cell in &system.cells {
        assert!(!processor_faults(&cell.services).settings().unavailable);
    }
    stop(system, dir).await;
}
