//! The live dashboard, at `/dashboard` on the admin address: one page,
//! embedded in the binary (nothing comes from a CDN), that draws what the
//! system does: sagas ended per second, saga latency (p50 and p99 of the
//! last minute), the card processor's breaker over time with its opens,
//! orders by state, rate-limit decisions, each outbox's backlog and each
//! consumer's applied, duplicate and given-up messages.
//!
//! Its numbers are the admin listener's own `/metrics`, and in per-process
//! mode every other process's too (the gateway's `--peers`), read
//! here every second from the first time the page is opened, and kept for
//! five minutes: a page opened late still draws the minutes before it, and
//! the page asks `/dashboard/readings` only for the readings it has not
//! drawn.
//!
//! Several processes' numbers are added up where they count events (a
//! `_total` counter: each replica counts its own) and the largest is taken
//! where they describe a shared thing (a gauge: replicas of one service
//! see the same outbox backlog).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Json};
use axum::routing::get;
use serde::{Deserialize, Serialize};

use crate::gateway::Services;
use crate::load::Gateway;
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
    "palisade_books_unread{",
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
    watch: Mutex<Watch>,
}

/// Whether the readings are being taken, and when a page last asked for
/// them: they are taken while a page watches, not for good once one did.
#[derive(Debug, Default)]
struct Watch {
    sampling: bool,
    asked: Option<tokio::time::Instant>,
}

impl Readings {
    /// A page asks for the readings: whether the sampling is to start.
    fn asked(&self) -> bool {
        let mut watch = self.watch.lock().unwrap_or_else(PoisonError::into_inner);
        watch.asked = Some(tokio::time::Instant::now());
        !std::mem::replace(&mut watch.sampling, true)
    }

    /// Whether the sampling stops: no page asked for [`KEPT`] (it starts
    /// again with the next that does).
    fn unwatched(&self) -> bool {
        let mut watch = self.watch.lock().unwrap_or_else(PoisonError::into_inner);
        let stale = watch.asked.is_none_or(|asked| asked.elapsed() > KEPT);
        if stale {
            watch.sampling = false;
        }
        stale
    }

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
    source: Arc<Source>,
}

/// Where the readings come from: this listener's metrics (with the books),
/// and its peers' `/metrics`.
struct Source {
    services: Services,
    books_read: BooksSlot,
}

impl Dashboard {
    /// Starts reading the metrics, unless they are: until the routes are
    /// dropped, or no page has asked for them for [`KEPT`] (each reading
    /// reads the books, every service's tables).
    fn sample(&self) {
        if self.readings.asked() {
            let readings = Arc::downgrade(&self.readings);
            tokio::spawn(sample(readings, self.source.clone()));
        }
    }
}

async fn sample(readings: Weak<Readings>, source: Arc<Source>) {
    let mut every = tokio::time::interval(EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        every.tick().await;
        let Some(readings) = readings.upgrade() else {
            return;
        };
        if readings.unwatched() {
            return;
        }
        let books = crate::books::read_books(&source.services).await;
        let mut texts = vec![
            source
                .services
                .telemetry
                .render_with(&source.books_read, books)
                .await,
        ];
        for (peer, read) in Gateway::get_each(&source.services.peers, "/metrics", EVERY / 2).await {
            match read {
                Ok((status, body)) if status.is_success() => {
                    texts.push(String::from_utf8_lossy(&body).into_owned());
                }
                Ok((status, _)) => tracing::debug!(?peer, %status, "a peer's /metrics answered"),
                Err(error) => tracing::debug!(?peer, %error, "a peer's /metrics could not be read"),
            }
        }
        readings.push(Reading {
            at: crate::orders::now_ms(),
            metrics: drawn(&texts),
        });
    }
}

/// The drawn metrics of several processes' Prometheus texts, as one:
/// counters (`_total`) added up, gauges the largest.
fn drawn(texts: &[String]) -> String {
    let mut merged: BTreeMap<&str, f64> = BTreeMap::new();
    for line in texts.iter().flat_map(|text| text.lines()) {
        if !DRAWN.iter().any(|name| line.starts_with(name)) {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let counter = series
            .split('{')
            .next()
            .is_some_and(|name| name.ends_with("_total"));
        merged
            .entry(series)
            .and_modify(|kept| {
                *kept = if counter {
                    *kept + value
                } else {
                    kept.max(value)
                }
            })
            .or_insert(value);
    }
    merged
        .into_iter()
        .fold(String::new(), |mut text, (series, value)| {
            text.push_str(series);
            text.push(' ');
            text.push_str(&value.to_string());
            text.push('\n');
            text
        })
}

/// `/dashboard` (the page) and `/dashboard/readings` (what it draws),
/// reading `services`' metrics as `/metrics` does (through `books_read`)
/// and the `/metrics` of their peers.
pub fn routes(services: Services, books_read: BooksSlot) -> Router {
    let dashboard = Dashboard {
        readings: Arc::default(),
        source: Arc::new(Source {
            services,
            books_read,
        }),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The readings are taken while a page asks for them, and stop once
    /// none has for five minutes (they went on for good once a page had
    /// been opened, reading every table each second); the next page
    /// starts them again.
    #[tokio::test(start_paused = true)]
    async fn readings_stop_once_no_page_asks_and_start_with_the_next() {
        let readings = Readings::default();
        assert!(readings.asked(), "the first page starts them");
        assert!(!readings.asked(), "once");
        tokio::time::advance(KEPT).await;
        assert!(!readings.unwatched(), "asked five minutes ago");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(readings.unwatched(), "no page since");
        assert!(readings.asked(), "the next page starts them again");
    }

    #[test]
    fn processes_counters_add_up_and_their_gauges_take_the_largest() {
        let gateway = "# TYPE palisade_orders gauge\n\
                       palisade_orders{reason=\"\",status=\"confirmed\"} 7\n\
                       palisade_outbox_pending{relay=\"orders\"} 2\n\
                       palisade_retry_attempts_total 40\n"
            .to_owned();
        let inventory = "palisade_consumer_applied_total{service=\"inventory\"} 10\n\
                         palisade_outbox_pending{relay=\"inventory\"} 5\n"
            .to_owned();
        let inventory_2 = "palisade_consumer_applied_total{service=\"inventory\"} 12\n\
                           palisade_outbox_pending{relay=\"inventory\"} 4\n"
            .to_owned();
        assert_eq!(
            drawn(&[gateway, inventory, inventory_2]),
            "palisade_consumer_applied_total{service=\"inventory\"} 22\n\
             palisade_orders{reason=\"\",status=\"confirmed\"} 7\n\
             palisade_outbox_pending{relay=\"inventory\"} 5\n\
             palisade_outbox_pending{relay=\"orders\"} 2\n",
            "what the page does not draw is left out"
        );
    }
}
