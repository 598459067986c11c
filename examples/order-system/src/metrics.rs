//! `GET /metrics`: the system's books in the Prometheus text format
//! (version 0.0.4), read fresh at each scrape.

use std::fmt::Write as _;

use crate::gateway::Books;

/// One metric family: its help, type and samples.
pub(crate) struct Family<'a> {
    out: &'a mut String,
}

impl<'a> Family<'a> {
    pub(crate) fn new(out: &'a mut String, name: &str, kind: &str, help: &str) -> Self {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        Self { out }
    }

    pub(crate) fn sample(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        value: impl std::fmt::Display,
    ) {
        let _ = write!(self.out, "{name}");
        if !labels.is_empty() {
            self.out.push('{');
            for (n, (label, value)) in labels.iter().enumerate() {
                if n > 0 {
                    self.out.push(',');
                }
                let escaped = value
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.out, "{label}=\"{escaped}\"");
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// The books as Prometheus metrics.
#[must_use]
pub fn render(books: &Books) -> String {
    let mut out = String::new();
    let name = "palisade_orders";
    let mut family = Family::new(
        &mut out,
        name,
        "gauge",
        "Orders by status and cancellation reason.",
    );
    for (status, reason, count) in &books.orders {
        family.sample(
            name,
            &[
                ("status", status),
                ("reason", reason.as_deref().unwrap_or("")),
            ],
            count,
        );
    }
    let name = "palisade_stock_units";
    let mut family = Family::new(
        &mut out,
        name,
        "gauge",
        "Units of each product, by where they are.",
    );
    for level in &books.stock {
        for (state, units) in [
            ("initial", level.initial),
            ("available", level.available),
            ("reserved", level.reserved),
            ("shipped", level.shipped),
        ] {
            family.sample(name, &[("sku", &level.sku), ("state", state)], units);
        }
    }
    let name = "palisade_sagas_stuck";
    Family::new(
        &mut out,
        name,
        "gauge",
        "Orders pending for longer than palisade_sagas_stuck_after_seconds.",
    )
    .sample(name, &[], books.stuck_sagas);
    let name = "palisade_sagas_stuck_after_seconds";
    Family::new(
        &mut out,
        name,
        "gauge",
        "How long an order may be pending before it counts as stuck.",
    )
    .sample(
        name,
        &[],
        std::time::Duration::from_millis(books.stuck_after_ms).as_secs_f64(),
    );
    let name = "palisade_breaker_opens_total";
    Family::new(
        &mut out,
        name,
        "counter",
        "Times the card processor's circuit breaker opened.",
    )
    .sample(name, &[], books.breaker_opens);
    let name = "palisade_breaker_open";
    Family::new(
        &mut out,
        name,
        "gauge",
        "Whether the card processor's circuit breaker refuses calls now.",
    )
    .sample(name, &[], u8::from(books.breaker_state.contains("Open")));
    let name = "palisade_compensations_total";
    Family::new(
        &mut out,
        name,
        "counter",
        "Compensations run (reservations released).",
    )
    .sample(name, &[], books.compensations);
    // The outboxes' backlogs are the relays' own gauges
    // (`palisade_outbox_pending{relay}`, see the telemetry module).
    out + &consumers(&books.consumers)
}

/// Consumers' counters, `(service, applied, duplicates dropped, given
/// up)`, as Prometheus metrics.
#[must_use]
pub fn consumers(consumers: &[(String, u64, u64, u64)]) -> String {
    let mut out = String::new();
    for (name, help, pick) in [
        (
            "palisade_consumer_applied_total",
            "Events applied, by consuming service.",
            0,
        ),
        (
            "palisade_consumer_duplicates_total",
            "Redelivered events the inbox dropped, by service.",
            1,
        ),
        (
            "palisade_consumer_given_up_total",
            "Events a consumer gave up on, by service.",
            2,
        ),
    ] {
        let mut family = Family::new(&mut out, name, "counter", help);
        for (service, applied, duplicates, given_up) in consumers {
            let value = [applied, duplicates, given_up][pick];
            family.sample(name, &[("service", service)], value);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::StockLevel;

    #[test]
    fn the_books_read_as_prometheus_text() {
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
        };
        let text = render(&books);
        assert!(text.contains("# TYPE palisade_orders gauge\n"));
        assert!(text.contains("palisade_orders{status=\"confirmed\",reason=\"\"} 7\n"));
        assert!(text.contains("palisade_stock_units{sku=\"sku-1\",state=\"shipped\"} 3\n"));
        assert!(text.contains("palisade_compensations_total 2\n"));
        assert!(text.contains("# TYPE palisade_sagas_stuck gauge\npalisade_sagas_stuck 3\n"));
        assert!(text.contains("palisade_sagas_stuck_after_seconds 60\n"));
        assert!(text.contains("palisade_breaker_opens_total 1\n"));
        assert!(text.contains("palisade_breaker_open 0\n"));
        assert!(text.contains("palisade_consumer_duplicates_total{service=\"inventory\"} 1\n"));
        // Every sample line is `name{labels} value` or `name value`.
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
