//! The load command: places orders through the gateway, waits for every
//! saga to end, prints a summary and checks the books.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::gateway::Books;
use crate::inventory::CATALOG;
use crate::orders::{NewOrder, Order};
use crate::processor::{DECLINED_CARD, GOOD_CARD};

/// A boxed error.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// What to send.
#[derive(Debug, Clone)]
pub struct LoadSettings {
    /// The gateway's base URL, e.g. `http://127.0.0.1:8080`.
    pub gateway: String,
    /// Orders to place.
    pub orders: usize,
    /// Orders in flight at once.
    pub concurrency: usize,
    /// The share of orders paid with a card the processor declines.
    pub decline_rate: f64,
    /// Whether to draw progress on standard error.
    pub progress: bool,
}

/// What happened.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Orders placed.
    pub placed: usize,
    /// Confirmed.
    pub confirmed: usize,
    /// Cancelled, by reason.
    pub cancelled: BTreeMap<String, usize>,
    /// Not finished when the run ended.
    pub unfinished: usize,
    /// Saga latencies as the client saw them (from sending the order to
    /// learning how it ended), sorted.
    pub saga: Vec<Duration>,
    /// From the first placement to the last saga's end.
    pub elapsed: Duration,
    /// The books after the run.
    pub books: Option<Books>,
    /// Invariants that did not hold.
    pub violations: Vec<String>,
}

impl Summary {
    /// Sagas completed per second.
    #[must_use]
    pub fn orders_per_second(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let done = (self.placed - self.unfinished) as f64;
        done / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    /// The `p` quantile of saga latency, in milliseconds.
    #[must_use]
    pub fn saga_percentile(&self, p: f64) -> f64 {
        if self.saga.is_empty() {
            return 0.0;
        }
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let index = ((self.saga.len() - 1) as f64 * p).round() as usize;
        self.saga[index].as_secs_f64() * 1000.0
    }

    /// The summary as a table.
    #[must_use]
    pub fn table(&self) -> String {
        let mut rows: Vec<(String, String)> = vec![
            ("orders placed".into(), self.placed.to_string()),
            ("confirmed".into(), self.confirmed.to_string()),
        ];
        for (reason, count) in &self.cancelled {
            rows.push((format!("cancelled: {reason}"), count.to_string()));
        }
        rows.push(("unfinished".into(), self.unfinished.to_string()));
        if let Some(books) = &self.books {
            rows.push((
                "compensations run (all time)".into(),
                books.compensations.to_string(),
            ));
            let duplicates: u64 = books.consumers.iter().map(|c| c.2).sum();
            rows.push((
                "duplicates dropped by inboxes".into(),
                duplicates.to_string(),
            ));
        }
        rows.push((
            "saga latency p50 / p95 / p99".into(),
            format!(
                "{:.1} / {:.1} / {:.1} ms",
                self.saga_percentile(0.5),
                self.saga_percentile(0.95),
                self.saga_percentile(0.99)
            ),
        ));
        rows.push((
            "orders/s end to end".into(),
            format!("{:.0}", self.orders_per_second()),
        ));
        rows.push((
            "invariants".into(),
            if self.violations.is_empty() {
                "all hold".into()
            } else {
                format!("{} violated", self.violations.len())
            },
        ));
        let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
        let mut table = String::new();
        for (name, value) in rows {
            table.push_str(&format!("{name:<width$}  {value}\n"));
        }
        for violation in &self.violations {
            table.push_str(&format!("  violated: {violation}\n"));
        }
        table
    }
}

#[derive(Clone)]
struct Gateway {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
}

impl Gateway {
    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), Error> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = self.client.request(request.body(Full::new(body))?).await?;
        let status = response.status();
        Ok((status, response.into_body().collect().await?.to_bytes()))
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        let (status, body) = self.send(Method::GET, path, &[], Bytes::new()).await?;
        if !status.is_success() {
            return Err(format!("GET {path}: {status}: {}", String::from_utf8_lossy(&body)).into());
        }
        Ok(serde_json::from_slice(&body)?)
    }

    async fn place(&self, order: &NewOrder) -> Result<Order, Error> {
        let key = uuid::Uuid::now_v7().to_string();
        let body = Bytes::from(serde_json::to_vec(order)?);
        // A 503 (the service busy) is tried again with the same key: the
        // gateway places it once whatever happens.
        for attempt in 0..5 {
            let (status, reply) = self
                .send(
                    Method::POST,
                    "/orders",
                    &[
                        ("idempotency-key", &key),
                        ("content-type", "application/json"),
                    ],
                    body.clone(),
                )
                .await?;
            if status.is_success() {
                return Ok(serde_json::from_slice(&reply)?);
            }
            if status != StatusCode::SERVICE_UNAVAILABLE || attempt == 4 {
                return Err(format!(
                    "POST /orders: {status}: {}",
                    String::from_utf8_lossy(&reply)
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
        }
        unreachable!("the last attempt returns")
    }
}

fn random_order(decline_rate: f64) -> NewOrder {
    let sku = if fastrand::f64() < 0.03 {
        "sku-rare"
    } else {
        CATALOG[fastrand::usize(..CATALOG.len() - 1)].0
    };
    NewOrder {
        sku: sku.to_owned(),
        quantity: fastrand::i64(1..=3),
        card: if fastrand::f64() < decline_rate {
            DECLINED_CARD
        } else {
            GOOD_CARD
        }
        .to_owned(),
    }
}

/// Places the orders, `concurrency` sagas at a time (each worker places
/// an order and waits for its saga to end before the next), then waits for
/// the outboxes to drain and reads the books.
///
/// # Errors
///
/// The gateway could not be reached or answered wrongly.
pub async fn run(settings: &LoadSettings) -> Result<Summary, Error> {
    let gateway = Gateway {
        client: Client::builder(TokioExecutor::new()).build_http(),
        base: settings.gateway.trim_end_matches('/').to_owned(),
    };
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..settings.concurrency.clamp(1, settings.orders.max(1)) {
        let (gateway, next) = (gateway.clone(), next.clone());
        let (total, decline_rate, progress) =
            (settings.orders, settings.decline_rate, settings.progress);
        workers.spawn(async move {
            let mut ended = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let sent = Instant::now();
                let order = gateway.place(&random_order(decline_rate)).await?;
                let order: Order = gateway
                    .get(&format!("/orders/{}?wait_ms=30000", order.id))
                    .await?;
                ended.push((order, sent.elapsed()));
                if progress && fastrand::u8(..) == 0 {
                    let done = next.load(Ordering::Relaxed).min(total);
                    eprint!("\rorders: {done}/{total}");
                }
            }
            Ok::<_, Error>(ended)
        });
    }
    let mut summary = Summary::default();
    while let Some(ended) = workers.join_next().await {
        for (order, latency) in ended?? {
            summary.placed += 1;
            match order.status.as_str() {
                "confirmed" => summary.confirmed += 1,
                "cancelled" => {
                    *summary
                        .cancelled
                        .entry(order.reason.unwrap_or_default())
                        .or_default() += 1;
                }
                _ => summary.unfinished += 1,
            }
            summary.saga.push(latency);
        }
    }
    summary.elapsed = started.elapsed();
    summary.saga.sort_unstable();
    if settings.progress {
        eprintln!("\rorders: {0}/{0}", settings.orders);
    }

    // The sagas ended; the last events (OrderConfirmed…) may still be on
    // their way out of the outboxes.
    let deadline = Instant::now() + Duration::from_secs(60);
    let books = loop {
        let books: Books = gateway.get("/books").await?;
        let unsent: u64 = books.outboxes.iter().map(|(_, pending, _)| pending).sum();
        if unsent == 0 || Instant::now() > deadline {
            break books;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    summary.violations = books.violations(true);
    if summary.unfinished > 0 {
        summary.violations.push(format!(
            "{} orders of this run had not ended after 30 s",
            summary.unfinished
        ));
    }
    summary.books = Some(books);
    let _ = std::io::stderr().flush();
    Ok(summary)
}
