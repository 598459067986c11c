//! The live dashboard, at `/dashboard` on the admin address: one page,
//! embedded in the binary (nothing comes from a CDN), that draws what the
//! system does: sagas ended per second, saga latency (p50 and p99 of the
//! last minute), the card processor's breaker over time with its opens,
//! orders by state, rate-limit decisions, each outbox's backlog and each
//! consumer's applied, duplicate and given-up messages.
//!
//! Its numbers are the admin listener's own `/metrics`, read here every
//! second from the first time the page is opened, and kept for five
//! minutes: a page opened late still draws the minutes before it, and the
//! page asks `/dashboard/readings` only for the readings it has not drawn.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Json};
use axum::routing::get;
use serde::{Deserialize, Serialize};

use crate::gateway::Services;
use crate::metrics::BooksSlot;

/// How often the metrics are read.
const EVERY: Duration = Duration::from_secs(1);

/// How long readings are kept.
const KEPT: Duration = Duration::from_secs(5 * 60);

/// The metrics the page draws; a reading keeps only their lines.
const DRAWN: &[&str] = &[
    "palisade_orders{",
    "palisade_sagas_latency_seconds{",
    "palisade_breaker_open ",
    "palisade_breaker_opens_total ",
    "palisade_token_bucket_decisions_total{",
    "palisade_outbox_pending{",
    "palisade_outbox_dead_events{",
    "palisade_consumer_applied_total{",
    "palisade_consumer_duplicates_total{",
    "palisade_consumer_given_up_total{",
];

/// One reading: when (milliseconds since the Unix epoch) and the drawn
/// metrics' lines, as Prometheus text.
#[derive(Debug, Clone, Serialize)]
struct Reading {
    at: i64,
    metrics: String,
}

#[derive(Debug, Default)]
struct Readings {
    kept: Mutex<VecDeque<Reading>>,
    /// Set once the readings started.
    sampling: OnceLock<()>,
}

impl Readings {
    fn push(&self, reading: Reading) {
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        let oldest = reading.at - i64::try_from(KEPT.as_millis()).unwrap_or(i64::MAX);
        while kept.front().is_some_and(|first| first.at < oldest) {
            kept.pop_front();
        }
        kept.push_back(reading);
    }

    fn since(&self, at: i64) -> Vec<Reading> {
        let kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        kept.iter()
            .filter(|reading| reading.at > at)
            .cloned()
            .collect()
    }
}

#[derive(Clone)]
struct Dashboard {
    readings: Arc<Readings>,
    services: Services,
    books_read: BooksSlot,
}

impl Dashboard {
    /// Starts reading the metrics, once: until the routes are dropped.
    fn sample(&self) {
        self.readings.sampling.get_or_init(|| {
            let readings = Arc::downgrade(&self.readings);
            let (services, books_read) = (self.services.clone(), self.books_read.clone());
            tokio::spawn(sample(readings, services, books_read));
        });
    }
}

async fn sample(readings: Weak<Readings>, services: Services, books_read: BooksSlot) {
    let mut every = tokio::time::interval(EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        every.tick().await;
        let Some(readings) = readings.upgrade() else {
            return;
        };
        let books = match crate::gateway::read_books(&services).await {
            Ok(books) => books,
            Err(error) => {
                tracing::debug!(%error, "the dashboard could not read the books");
                continue;
            }
        };
        let text = services.telemetry.render_with(&books_read, books).await;
        let metrics = text
            .lines()
            .filter(|line| DRAWN.iter().any(|name| line.starts_with(name)))
            .fold(String::new(), |mut kept, line| {
                kept.push_str(line);
                kept.push('\n');
                kept
            });
        readings.push(Reading {
            at: crate::orders::now_ms(),
            metrics,
        });
    }
}

/// `/dashboard` (the page) and `/dashboard/readings` (what it draws),
/// reading `services`' metrics as `/metrics` does, through `books_read`.
pub fn routes(services: Services, books_read: BooksSlot) -> Router {
    let dashboard = Dashboard {
        readings: Arc::default(),
        services,
        books_read,
    };
    Router::new()
        .route("/dashboard", get(page))
        .route("/dashboard/readings", get(readings))
        .with_state(dashboard)
}

async fn page(State(dashboard): State<Dashboard>) -> Html<&'static str> {
    dashboard.sample();
    Html(include_str!("dashboard.html"))
}

#[derive(Debug, Deserialize)]
struct Since {
    #[serde(default)]
    since: i64,
}

async fn readings(
    State(dashboard): State<Dashboard>,
    Query(Since { since }): Query<Since>,
) -> impl IntoResponse {
    dashboard.sample();
    Json(dashboard.readings.since(since))
}
