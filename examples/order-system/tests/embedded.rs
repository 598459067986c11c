//! The order system on its embedded defaults (SQLite files, the in-process
//! broker), driven through its gateway on loopback.

use palisade_order_system::embedded::{Settings, System};
use palisade_order_system::load::{self, LoadSettings};

async fn start() -> (System, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("palisade-order-system-{}", fastrand::u64(..)));
    let system = System::start(Settings {
        data_dir: dir.clone(),
        listen: ([127, 0, 0, 1], 0).into(),
    })
    .await
    .unwrap();
    (system, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_orders_end_confirmed_or_cancelled_with_the_books_straight() {
    let (system, dir) = start().await;
    let summary = load::run(&LoadSettings {
        gateway: format!("http://{}", system.address),
        orders: 300,
        concurrency: 32,
        decline_rate: 0.2,
        progress: false,
    })
    .await
    .unwrap();
    println!("{}", summary.table());
    assert_eq!(summary.violations, Vec::<String>::new());
    assert_eq!(summary.placed, 300);
    assert_eq!(summary.unfinished, 0);
    let cancelled: usize = summary.cancelled.values().sum();
    assert_eq!(summary.confirmed + cancelled, 300);
    let declined = summary
        .cancelled
        .get("payment_declined")
        .copied()
        .unwrap_or(0);
    assert!(declined > 0, "about 60 declined cards: {summary:?}");
    let books = summary.books.unwrap();
    assert_eq!(
        books.compensations,
        i64::try_from(declined).unwrap(),
        "one release per declined order"
    );
    let shipped: i64 = books.stock.iter().map(|level| level.shipped).sum();
    assert!(shipped > 0);
    system.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_idempotency_key_places_one_order_and_bad_requests_are_refused() {
    let (system, dir) = start().await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let base = format!("http://{}", system.address);
    let post = |key: Option<&str>, body: &str| {
        let mut request = http::Request::post(format!("{base}/orders"));
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        let request = request
            .body(http_body_util::Full::new(bytes::Bytes::from(
                body.to_owned(),
            )))
            .unwrap();
        let client = client.clone();
        async move {
            use http_body_util::BodyExt;
            let response = client.request(request).await.unwrap();
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (
                status,
                serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
            )
        }
    };
    let order = r#"{"sku":"sku-1","quantity":2,"card":"4242424242424242"}"#;
    let (first, placed) = post(Some("key-1"), order).await;
    let (again, replayed) = post(Some("key-1"), order).await;
    assert_eq!((first.as_u16(), again.as_u16()), (201, 200));
    assert_eq!(placed["id"], replayed["id"], "the same order");
    assert_eq!(placed["amount_cents"], 2500);

    let (status, problem) = post(None, order).await;
    assert_eq!(status.as_u16(), 400);
    assert!(
        problem["error"]
            .as_str()
            .unwrap()
            .contains("Idempotency-Key")
    );
    for bad in [
        "not json",
        r#"{"sku":"sku-1","quantity":0,"card":"4242424242424242"}"#,
        r#"{"sku":"nope","quantity":1,"card":"4242424242424242"}"#,
        r#"{"sku":"sku-1","quantity":1,"card":"12ab"}"#,
    ] {
        let (status, _) = post(Some("key-bad"), bad).await;
        assert_eq!(status.as_u16(), 422, "{bad}");
    }
    let books = palisade_order_system::gateway::read_books(&system.services)
        .await
        .unwrap();
    let placed_orders: i64 = books.orders.iter().map(|(_, _, n)| n).sum();
    assert_eq!(placed_orders, 1, "one order for two requests with one key");
    system.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
