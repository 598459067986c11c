//! The card processor stalled (every charge far slower than payment's
//! deadline) under the embedded system: payment's breaker opens on the
//! slow calls, no transaction of payment's stays open while it waits, and
//! every saga ends once the stall is lifted, with no order charged twice.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use palisade_order_system::load;
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};

mod support;
use support::{load_settings, set_processor, signed_in, start};

/// Whether a write transaction can be begun on `db` right now, with no
/// wait: `false` while another connection holds one open.
async fn writable(db: &std::path::Path) -> bool {
    let options = SqliteConnectOptions::new()
        .filename(db)
        .busy_timeout(Duration::ZERO);
    let mut connection = SqliteConnection::connect_with(&options).await.unwrap();
    let began = sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut connection)
        .await
        .is_ok();
    if began {
        sqlx::query("ROLLBACK")
            .execute(&mut connection)
            .await
            .unwrap();
    }
    let _ = connection.close().await;
    began
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_processor_opens_the_breaker_holds_no_transaction_and_every_saga_ends() {
    let (system, dir) = start().await;
    let operator = signed_in(&system, "operator").await;
    let gateway = support::admin(&system);
    let books = || async {
        let (status, body) = gateway
            .send(Method::GET, "/books", &[], Bytes::new())
            .await
            .unwrap();
        assert!(status.is_success());
        serde_json::from_slice::<palisade_order_system::books::Books>(&body).unwrap()
    };

    // A minute a charge: far past payment's deadline.
    set_processor(&operator, serde_json::json!({ "delay_ms": 60_000 })).await;
    let settings = load_settings(&system, 40, 16);
    let running = tokio::spawn(async move { load::run(&settings).await });

    // The slow calls open the breaker.
    let deadline = Instant::now() + Duration::from_secs(120);
    while books().await.breaker_opens == 0 {
        assert!(
            Instant::now() < deadline,
            "the breaker never opened on slow calls"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // While the processor still stalls, payment's database takes a write:
    // no transaction of payment's waits on the processor.
    let payment_db = dir.join("payment.db");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !writable(&payment_db).await {
        assert!(
            Instant::now() < deadline,
            "payment's database stayed locked by a transaction while the processor stalled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The stall lifted, every saga ends and the books hold, none charged
    // twice (read from the processor's own ledger).
    set_processor(&operator, serde_json::json!({ "delay_ms": 0 })).await;
    let summary = running.await.unwrap().unwrap();
    println!("{}", summary.table());
    assert_eq!(summary.violations, Vec::<String>::new());
    assert_eq!(summary.placed, 40);
    assert_eq!(summary.unfinished, 0);
    let ledger = summary.ledger.expect("the processor's ledger was read");
    let confirmed = u64::try_from(summary.confirmed).unwrap();
    assert_eq!(ledger.charged_twice, 0);
    assert_eq!(ledger.charges, confirmed, "one charge per confirmed order");

    system.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
