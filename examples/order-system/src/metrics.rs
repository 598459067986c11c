//! The system's own instruments, next to the crates' on `/metrics` (see
//! [`telemetry`](crate::telemetry)): each consumer's counters, and the
//! books (orders by state, stock, stuck sagas, the breaker's history,
//! compensations), read fresh from the databases at each scrape of the
//! admin listener.

use std::sync::{Arc, Mutex, PoisonError};

use opentelemetry::KeyValue;
use opentelemetry::metrics::Meter;

use crate::books::Books;
use crate::service::Consumers;

/// Counts each of `consumers`' deliveries, by service: applied, dropped
/// as duplicates, given up on.
pub fn observe_consumers(meter: &Meter, consumers: &Consumers) {
    type Pick = fn(&palisade_outbox::ConsumerStats) -> u64;
    let counters: [(&'static str, &'static str, Pick); 3] = [
        (
            "palisade.consumer.applied",
            "Events applied, by consuming service.",
            |stats| stats.applied,
        ),
        (
            "palisade.consumer.duplicates",
            "Redelivered events the inbox dropped, by service.",
            |stats| stats.duplicates,
        ),
        (
            "palisade.consumer.given_up",
            "Times a consumer gave up on an event (each delivery given up on), by service.",
            |stats| stats.dead_lettered,
        ),
    ];
    for (name, description, pick) in counters {
        let consumers = consumers.clone();
        let _ = meter
            .u64_observable_counter(name)
            .with_description(description)
            .with_callback(move |observer| {
                for (service, stats) in consumers.stats() {
                    observer.observe(pick(&stats), &[KeyValue::new("service", service)]);
                }
            })
            .build();
    }
}

/// Where a scrape puts the books it read for the instruments of
/// [`observe_books`] (see [`Telemetry::render_with`](crate::telemetry::Telemetry::render_with)).
pub type BooksSlot = Arc<Mutex<Option<Books>>>;

/// A gauge's points: each value with its attributes.
type Points = Vec<(i64, Vec<KeyValue>)>;

/// Measures the books a scrape put in the slot it returns.
///
/// A figure drawn from a service whose books went unread at the scrape
/// (its database failed, its process did not answer) is left out rather
/// than shown as nothing: `palisade_sagas_stuck 0` while the orders
/// database is down would silence the alert meant for it, and a counter
/// going to 0 reads as a reset. `palisade_books_unread{service}` is 1
/// for each of them.
#[must_use]
pub fn observe_books(meter: &Meter) -> BooksSlot {
    let slot = BooksSlot::default();
    let gauge = |name: &'static str,
                 description: &'static str,
                 from: &'static str,
                 observe: fn(&Books, &mut Points)| {
        let slot = slot.clone();
        let _ = meter
            .i64_observable_gauge(name)
            .with_description(description)
            .with_callback(move |observer| {
                let mut points = Vec::new();
                with_books_of(&slot, from, |books| observe(books, &mut points));
                for (value, attributes) in points {
                    observer.observe(value, &attributes);
                }
            })
            .build();
    };
    let counter = |name: &'static str,
                   description: &'static str,
                   from: &'static str,
                   pick: fn(&Books) -> u64| {
        let slot = slot.clone();
        let _ = meter
            .u64_observable_counter(name)
            .with_description(description)
            .with_callback(move |observer| {
                with_books_of(&slot, from, |books| observer.observe(pick(books), &[]));
            })
            .build();
    };
    gauge(
        "palisade.books.unread",
        "Whether each service's books could not be read at this scrape (1), leaving its figures out.",
        EVERY_SERVICE,
        |books, points| {
            let read = books.services.iter().map(|service| (service, 0));
            let unread = books.unread.iter().map(|service| (service, 1));
            for (service, value) in read.chain(unread) {
                points.push((value, vec![KeyValue::new("service", service.clone())]));
            }
        },
    );
    gauge(
        "palisade.orders",
        "Orders by status and cancellation reason.",
        ORDERS,
        |books, points| {
            for (status, reason, count) in &books.orders {
                points.push((
                    *count,
                    vec![
                        KeyValue::new("status", status.clone()),
                        KeyValue::new("reason", reason.clone().unwrap_or_default()),
                    ],
                ));
            }
        },
    );
    gauge(
        "palisade.stock.units",
        "Units of each product, by where they are.",
        INVENTORY,
        |books, points| {
            for level in &books.stock {
                for (state, units) in [
                    ("initial", level.initial),
                    ("available", level.available),
                    ("reserved", level.reserved),
                    ("shipped", level.shipped),
                ] {
                    points.push((
                        units,
                        vec![
                            KeyValue::new("sku", level.sku.clone()),
                            KeyValue::new("state", state),
                        ],
                    ));
                }
            }
        },
    );
    gauge(
        "palisade.sagas.stuck",
        "Orders pending for longer than palisade_sagas_stuck_after_seconds.",
        ORDERS,
        |books, points| {
            points.push((
                i64::try_from(books.stuck_sagas).unwrap_or(i64::MAX),
                Vec::new(),
            ));
        },
    );
    gauge(
        "palisade.breaker.open",
        "Whether the card processor's circuit breaker refuses calls now.",
        PAYMENT,
        |books, points| points.push((i64::from(books.breaker_state.contains("Open")), Vec::new())),
    );
    counter(
        "palisade.breaker.opens",
        "Times the card processor's circuit breaker opened.",
        PAYMENT,
        |books| books.breaker_opens,
    );
    counter(
        "palisade.compensations",
        "Compensations run (reservations released).",
        INVENTORY,
        |books| u64::try_from(books.compensations).unwrap_or(0),
    );
    let stuck_after = slot.clone();
    let _ = meter
        .f64_observable_gauge("palisade.sagas.stuck_after")
        .with_description("How long an order may be pending before it counts as stuck.")
        .with_unit("s")
        .with_callback(move |observer| {
            with_books_of(&stuck_after, ORDERS, |books| {
                observer.observe(
                    std::time::Duration::from_millis(books.stuck_after_ms).as_secs_f64(),
                    &[],
                );
            });
        })
        .build();
    let latency = slot.clone();
    let _ = meter
        .f64_observable_gauge("palisade.sagas.latency")
        .with_description("How long the sagas that ended in the last minute took, by quantile.")
        .with_unit("s")
        .with_callback(move |observer| {
            with_books_of(&latency, ORDERS, |books| {
                for (quantile, ms) in books
                    .saga_latency_ms
                    .into_iter()
                    .flat_map(|[p50, p99]| [("0.5", p50), ("0.99", p99)])
                {
                    #[allow(clippy::cast_precision_loss)]
                    let seconds = ms as f64 / 1000.0;
                    observer.observe(seconds, &[KeyValue::new("quantile", quantile)]);
                }
            });
        })
        .build();
    // The outboxes' backlogs are the relays' own gauges
    // (`palisade_outbox_pending{relay}`).
    slot
}

/// The services the books' figures are drawn from.
const ORDERS: &str = "orders";
const INVENTORY: &str = "inventory";
const PAYMENT: &str = "payment";

/// Figures about every service, read or not.
const EVERY_SERVICE: &str = "";

/// Runs `measure` on the books in `slot`, if a scrape put some there and
/// `from`'s were read in every cell.
fn with_books_of(slot: &BooksSlot, from: &str, measure: impl FnOnce(&Books)) {
    let books = slot.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(books) = books.as_ref().filter(|books| !books.is_unread(from)) {
        measure(books);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::StockLevel;
    use crate::telemetry::Telemetry;

    #[tokio::test]
    async fn the_books_read_as_prometheus_text() {
        let books = Books {
            orders: vec![
                ("confirmed".into(), None, 7),
                ("cancelled".into(), Some("payment_declined".into()), 2),
            ],
            stock: vec![StockLevel {
                sku: "sku-1".into(),
                initial: 10,
                available: 6,
                reserved: 1,
                shipped: 3,
            }],
            stuck_sagas: 3,
            stuck_after_ms: 60_000,
            compensations: 2,
            compensations_repeated: 0,
            outboxes: vec![("orders".into(), 0, 0)],
            consumers: vec![("inventory".into(), 12, 1, 0)],
            breaker_state: "Closed".into(),
            breaker_opens: 1,
            saga_latency_ms: Some([12, 1_250]),
            ..Books::default()
        };
        let telemetry = Telemetry::default();
        let slot = observe_books(&telemetry.meter());
        let text = telemetry.render_with(&slot, books).await;
        for line in [
            "# TYPE palisade_orders gauge\n",
            "palisade_orders{reason=\"\",status=\"confirmed\"} 7\n",
            "palisade_orders{reason=\"payment_declined\",status=\"cancelled\"} 2\n",
            "palisade_stock_units{sku=\"sku-1\",state=\"shipped\"} 3\n",
            "palisade_compensations_total 2\n",
            "# TYPE palisade_sagas_stuck gauge\npalisade_sagas_stuck 3\n",
            "palisade_sagas_stuck_after_seconds 60\n",
            "palisade_breaker_opens_total 1\n",
            "palisade_breaker_open 0\n",
            "palisade_sagas_latency_seconds{quantile=\"0.5\"} 0.012\n",
            "palisade_sagas_latency_seconds{quantile=\"0.99\"} 1.25\n",
        ] {
            assert!(text.contains(line), "{line:?} not in:\n{text}");
        }
        // Every sample line is `name{labels} value` or `name value`.
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }

    /// A service whose books went unread (its database down) gives none
    /// of its figures, rather than zeros: the stuck sagas read 0 while
    /// the orders database was down, and the breaker's opens went back to
    /// 0 like a reset counter while payment's was. The others' stay.
    #[tokio::test]
    async fn a_services_figures_are_left_out_while_its_books_are_unread() {
        let books = |read: &[&str], unread: &[&str]| Books {
            services: read.iter().map(|&service| service.to_owned()).collect(),
            unread: unread.iter().map(|&service| service.to_owned()).collect(),
            orders: vec![("confirmed".into(), None, 7)],
            stock: vec![StockLevel {
                sku: "sku-1".into(),
                initial: 10,
                available: 10,
                reserved: 0,
                shipped: 0,
            }],
            stuck_after_ms: 60_000,
            compensations: 2,
            breaker_state: "Closed".into(),
            breaker_opens: 1,
            saga_latency_ms: Some([12, 1_250]),
            ..Books::default()
        };
        let orders_figures = [
            "palisade_orders{",
            "palisade_sagas_stuck ",
            "palisade_sagas_stuck_after_seconds ",
            "palisade_sagas_latency_seconds{",
        ];
        let inventory_figures = ["palisade_stock_units{", "palisade_compensations_total "];
        let payment_figures = ["palisade_breaker_open ", "palisade_breaker_opens_total "];
        for (read, unread, kept, left_out) in [
            (
                &["orders", "inventory", "shipping"][..],
                &["payment"][..],
                [&orders_figures[..], &inventory_figures[..]].concat(),
                payment_figures.to_vec(),
            ),
            (
                &["inventory", "payment", "shipping", "b/orders"][..],
                &["orders", "b/inventory"][..],
                payment_figures.to_vec(),
                [&orders_figures[..], &inventory_figures[..]].concat(),
            ),
        ] {
            let telemetry = Telemetry::default();
            let slot = observe_books(&telemetry.meter());
            let text = telemetry.render_with(&slot, books(read, unread)).await;
            for service in unread {
                let line = format!("palisade_books_unread{{service=\"{service}\"}} 1\n");
                assert!(text.contains(&line), "{line:?} not in:\n{text}");
            }
            for service in read {
                let line = format!("palisade_books_unread{{service=\"{service}\"}} 0\n");
                assert!(text.contains(&line), "{line:?} not in:\n{text}");
            }
            for figure in kept {
                assert!(text.contains(figure), "{figure:?} not in:\n{text}");
            }
            for figure in left_out {
                assert!(!text.contains(figure), "{figure:?} in:\n{text}");
            }
        }
    }
}
