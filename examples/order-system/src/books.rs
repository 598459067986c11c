//! The books: what every service keeps that the system's invariants are
//! checked against (orders by state, stock, compensations, the breaker's
//! history, outboxes, consumers), each service's read from its own
//! database by the service ([`SagaService::books`]).
//!
//! A process reads the books of the services it runs, and adds those of
//! the processes it names as its peers, each one's `GET /books` on its
//! internal address ([`read_books`]): embedded, every service is in the
//! process; per process, the gateway reads the orders service's books and
//! its peers give the rest, so no process reads another service's tables.

use std::time::Duration;

use palisade_outbox::Backlog;
use serde::{Deserialize, Serialize};

use crate::db::ServiceDb;
use crate::gateway::Services;
use crate::inventory::{Inventory, StockLevel};
use crate::load::Gateway;
use crate::orders::Orders;
use crate::payment::Payment;
use crate::service::{Consumers, SagaService};
use crate::shipping::Shipping;
use crate::stuck::STUCK_AFTER;

/// The services whose books the system's are, in the saga's order.
const SERVICES: [&str; 4] = [Orders::NAME, Inventory::NAME, Payment::NAME, Shipping::NAME];

/// How long a peer has to give its books.
const PEER_TIMEOUT: Duration = Duration::from_secs(2);

/// Every service's books, and what they must show.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Books {
    /// The services whose books these are.
    pub services: Vec<String>,
    /// The services whose books were not read: a violation. Their
    /// database failed, or no process gave them (down, or not named by
    /// `--peers`).
    pub unread: Vec<String>,
    /// Orders by status and reason: (status, reason, count).
    pub orders: Vec<(String, Option<String>, i64)>,
    /// Every product's stock.
    pub stock: Vec<StockLevel>,
    /// Orders pending for longer than [`stuck_after_ms`](Self::stuck_after_ms):
    /// sagas held up somewhere (a dead event, a service down).
    pub stuck_sagas: u64,
    /// How long an order may be pending before it counts as stuck, in
    /// milliseconds.
    pub stuck_after_ms: u64,
    /// Compensations run.
    pub compensations: i64,
    /// Compensations that ran a second time for the same order.
    pub compensations_repeated: i64,
    /// Each outbox's backlog: (service, pending, dead).
    pub outboxes: Vec<(String, u64, u64)>,
    /// Each consumer's counters: (service, applied, duplicates dropped,
    /// given up on).
    pub consumers: Vec<(String, u64, u64, u64)>,
    /// The card processor breaker's last state (`Closed`, `Open`, …), as
    /// payment recorded it.
    pub breaker_state: String,
    /// How many times it opened (every payment replica's, all time).
    pub breaker_opens: u64,
    /// The median and 99th percentile of how long the sagas that ended in
    /// the last [`LATENCY_WINDOW`] took, in milliseconds; `None` when none
    /// ended.
    pub saga_latency_ms: Option<[i64; 2]>,
    /// The cells added up, by name, when there are several (empty for
    /// one): each has its own card processor, whose ledger an operator
    /// reads at `/admin/processor?cell=NAME`.
    pub cells: Vec<String>,
}

/// The sagas [`Books::saga_latency_ms`] describes: those that ended this
/// recently.
pub const LATENCY_WINDOW: Duration = Duration::from_secs(60);

/// The `p` quantile (0 to 1, nearest rank) of `sorted`, if it has any.
pub(crate) fn quantile(sorted: &[i64], p: f64) -> Option<i64> {
    let last = sorted.len().checked_sub(1)?;
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = (last as f64 * p).round() as usize;
    sorted.get(rank).copied()
}

impl Books {
    /// The invariants that do not hold: empty when the books are straight.
    /// With `settled`, every order must also have ended and every outbox
    /// be drained.
    #[must_use]
    pub fn violations(&self, settled: bool) -> Vec<String> {
        let mut violations = Vec::new();
        if !self.unread.is_empty() {
            violations.push(format!(
                "the books of {} were not read",
                self.unread.join(", ")
            ));
        }
        for level in &self.stock {
            if !level.balances() {
                violations.push(format!(
                    "stock of {} does not balance: initial {} != available {} + reserved {} + shipped {}",
                    level.sku, level.initial, level.available, level.reserved, level.shipped
                ));
            }
            if settled && level.reserved != 0 {
                violations.push(format!(
                    "{} still has {} reserved",
                    level.sku, level.reserved
                ));
            }
        }
        if self.compensations_repeated != 0 {
            violations.push(format!(
                "{} compensations ran twice",
                self.compensations_repeated
            ));
        }
        for (service, _, _, given_up) in &self.consumers {
            if *given_up != 0 {
                violations.push(format!("{service} gave up on events {given_up} times"));
            }
        }
        for (service, pending, dead) in &self.outboxes {
            if *dead != 0 {
                violations.push(format!("{service}'s outbox has {dead} dead events"));
            }
            if settled && *pending != 0 {
                violations.push(format!(
                    "{service}'s outbox still has {pending} pending events"
                ));
            }
        }
        if settled {
            let pending: i64 = self
                .orders
                .iter()
                .filter(|(status, _, _)| status == "pending")
                .map(|(_, _, count)| count)
                .sum();
            if pending != 0 {
                violations.push(format!("{pending} orders neither confirmed nor cancelled"));
            }
        }
        violations
    }

    /// The books of `service` that every service keeps: its outbox's
    /// backlog.
    ///
    /// # Errors
    ///
    /// The database's error.
    pub async fn of_outbox(service: &str, db: &ServiceDb) -> Result<Self, sqlx::Error> {
        let Backlog { pending, dead, .. } = db.backlog().await?;
        Ok(Self {
            services: vec![service.to_owned()],
            outboxes: vec![(service.to_owned(), pending, dead)],
            ..Self::default()
        })
    }

    /// Adds `part`, another service's (or process's) books: the tables of
    /// a service not read yet are taken from it (a replica reads the same
    /// tables again: the first reading is kept), and the consumers'
    /// counters, which are each process's own, are added up by service.
    pub fn merge(&mut self, part: Self) {
        for service in &part.services {
            if self.services.contains(service) {
                continue;
            }
            self.services.push(service.clone());
            match service.as_str() {
                Orders::NAME => {
                    self.orders.clone_from(&part.orders);
                    self.stuck_sagas = part.stuck_sagas;
                    self.stuck_after_ms = part.stuck_after_ms;
                    self.saga_latency_ms = part.saga_latency_ms;
                }
                Inventory::NAME => {
                    self.stock.clone_from(&part.stock);
                    self.compensations = part.compensations;
                    self.compensations_repeated = part.compensations_repeated;
                }
                Payment::NAME => {
                    self.breaker_state.clone_from(&part.breaker_state);
                    self.breaker_opens = part.breaker_opens;
                }
                _ => {}
            }
            self.outboxes.extend(
                part.outboxes
                    .iter()
                    .filter(|(name, _, _)| name == service)
                    .cloned(),
            );
        }
        for (service, applied, duplicates, given_up) in part.consumers {
            match self.consumers.iter_mut().find(|kept| kept.0 == service) {
                Some(kept) => {
                    kept.1 += applied;
                    kept.2 += duplicates;
                    kept.3 += given_up;
                }
                None => self
                    .consumers
                    .push((service, applied, duplicates, given_up)),
            }
        }
    }
}

impl Books {
    /// Whether `service`'s books went unread, in any cell.
    #[must_use]
    pub fn is_unread(&self, service: &str) -> bool {
        self.unread
            .iter()
            .any(|name| name.rsplit('/').next() == Some(service))
    }

    /// Adds the books of another cell (a complete saga stack of its own,
    /// named `cell`; `cells` names those added so far, the first first).
    /// Counts are summed: orders by status and reason, stuck sagas,
    /// compensations, breaker opens, and stock by product where both
    /// levels balance with nothing reserved below zero (a level that does
    /// not is listed apart, as `cell/sku`, so that two cells' errors cannot
    /// cancel out; so are levels whose sums would overflow). Services,
    /// outboxes, consumers and unread services are listed as `cell/name`; the breaker's state is each cell's
    /// (`a: Closed, b: Open`) when they differ; each saga latency quantile
    /// is the larger of the cells'.
    pub fn add_cell(&mut self, cell: &str, other: Self) {
        let named = |name: String| format!("{cell}/{name}");
        self.services.extend(other.services.into_iter().map(named));
        self.unread.extend(other.unread.into_iter().map(named));
        for (status, reason, count) in other.orders {
            match self
                .orders
                .iter_mut()
                .find(|kept| kept.0 == status && kept.1 == reason)
            {
                Some(kept) => kept.2 += count,
                None => self.orders.push((status, reason, count)),
            }
        }
        let sound = |level: &StockLevel| level.balances() && level.reserved >= 0;
        // Two sound rows whose sums fit; rows near the limits (edited by
        // hand) are kept apart rather than overflow.
        let merged = |kept: &StockLevel, level: &StockLevel| {
            Some(StockLevel {
                sku: kept.sku.clone(),
                initial: kept.initial.checked_add(level.initial)?,
                available: kept.available.checked_add(level.available)?,
                reserved: kept.reserved.checked_add(level.reserved)?,
                shipped: kept.shipped.checked_add(level.shipped)?,
            })
            .filter(|_| kept.sku == level.sku && sound(kept) && sound(level))
        };
        for mut level in other.stock {
            match self
                .stock
                .iter_mut()
                .find_map(|kept| merged(kept, &level).map(|sum| (kept, sum)))
            {
                Some((kept, sum)) => *kept = sum,
                None => {
                    if !sound(&level) || self.stock.iter().any(|kept| kept.sku == level.sku) {
                        level.sku = named(level.sku);
                    }
                    self.stock.push(level);
                }
            }
        }
        self.stuck_sagas += other.stuck_sagas;
        self.compensations += other.compensations;
        self.compensations_repeated += other.compensations_repeated;
        self.outboxes.extend(
            other
                .outboxes
                .into_iter()
                .map(|(name, pending, dead)| (named(name), pending, dead)),
        );
        self.consumers.extend(other.consumers.into_iter().map(
            |(name, applied, duplicates, given_up)| (named(name), applied, duplicates, given_up),
        ));
        // "NAME: state" for every cell once any differs (a state never
        // holds ": ").
        if self.breaker_state.contains(": ") {
            self.breaker_state = format!("{}, {cell}: {}", self.breaker_state, other.breaker_state);
        } else if other.breaker_state != self.breaker_state {
            let earlier: Vec<String> = self
                .cells
                .iter()
                .map(|name| format!("{name}: {}", self.breaker_state))
                .collect();
            self.breaker_state = format!("{}, {cell}: {}", earlier.join(", "), other.breaker_state);
        }
        self.cells.push(cell.to_owned());
        self.breaker_opens += other.breaker_opens;
        self.saga_latency_ms = match (self.saga_latency_ms, other.saga_latency_ms) {
            (Some([p50, p99]), Some([other_p50, other_p99])) => {
                Some([p50.max(other_p50), p99.max(other_p99)])
            }
            (kept, other) => kept.or(other),
        };
    }
}

/// The books of every cell (`(name, services)`, the first the one whose
/// names stay as they are), added up: see [`Books::add_cell`]. A cell's
/// service whose books were not read is unread (`cell/name`), and the
/// other cells' books are there still.
pub async fn read_cells_books_stuck_after(
    cells: &[(String, Services)],
    stuck_after: Duration,
) -> Books {
    let Some(((first_name, first), others)) = cells.split_first() else {
        return Books::default();
    };
    let mut books = read_books_stuck_after(first, stuck_after).await;
    books.cells = vec![first_name.clone()];
    for (name, services) in others {
        books.add_cell(name, read_books_stuck_after(services, stuck_after).await);
    }
    books
}

/// Reads every service's books, sagas counted as stuck after
/// [`STUCK_AFTER`].
pub async fn read_books(services: &Services) -> Books {
    read_books_stuck_after(services, STUCK_AFTER).await
}

/// Reads every service's books, sagas counted as stuck once pending for
/// longer than `stuck_after`: those of the services in this process, then
/// those its peers give. A service whose books no one gave is named in
/// [`Books::unread`], as is one whose database failed (the others' books
/// are there still: one failing database does not hide the rest).
pub async fn read_books_stuck_after(services: &Services, stuck_after: Duration) -> Books {
    let mut books = read_or_unread(&services.orders, stuck_after).await;
    if let Some(steps) = &services.steps {
        books.merge(read_or_unread(&steps.inventory, stuck_after).await);
        books.merge(read_or_unread(&steps.payment, stuck_after).await);
        books.merge(read_or_unread(&steps.shipping, stuck_after).await);
    }
    books.merge(consumers_books(&services.consumers));
    for part in peers_books(&services.peers).await {
        books.merge(part);
    }
    // In the saga's order, whichever peer answered first.
    let rank = |service: &str| SERVICES.iter().position(|known| *known == service);
    books.services.sort_by_key(|service| rank(service));
    books.outboxes.sort_by_key(|outbox| rank(&outbox.0));
    books
        .consumers
        .sort_by_key(|consumer| (rank(&consumer.0).is_none(), rank(&consumer.0)));
    books.unread = SERVICES
        .into_iter()
        .filter(|service| !books.services.iter().any(|read| read == service))
        .map(str::to_owned)
        .collect();
    books
}

/// `service`'s books, or none (so it is counted unread) when its database
/// fails.
async fn read_or_unread<S: SagaService>(service: &S, stuck_after: Duration) -> Books {
    service.books(stuck_after).await.unwrap_or_else(|error| {
        tracing::warn!(service = S::NAME, %error, "the service's books could not be read");
        Books::default()
    })
}

/// The counters of a process's consumers, as books of no service.
#[must_use]
pub fn consumers_books(consumers: &Consumers) -> Books {
    Books {
        consumers: consumers
            .stats()
            .into_iter()
            .map(|(name, stats)| (name, stats.applied, stats.duplicates, stats.dead_lettered))
            .collect(),
        ..Books::default()
    }
}

/// The books each of `peers` gives at `GET /books`, read at once: a peer
/// that keeps none (a relay, the processor: 404) gives nothing, nor does
/// one that fails or is late.
async fn peers_books(peers: &[Gateway]) -> Vec<Books> {
    let mut parts = Vec::new();
    for (peer, read) in Gateway::get_each(peers, "/books", PEER_TIMEOUT).await {
        match read {
            Ok((status, body)) if status.is_success() => {
                match serde_json::from_slice::<Books>(&body) {
                    Ok(part) => parts.push(part),
                    Err(error) => tracing::warn!(?peer, %error, "a peer's books do not read"),
                }
            }
            Ok((http::StatusCode::NOT_FOUND, _)) => {}
            Ok((status, _)) => tracing::debug!(?peer, %status, "a peer did not give its books"),
            Err(error) => tracing::debug!(?peer, %error, "a peer gave no books"),
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(service: &str, consumed: u64) -> Books {
        Books {
            services: vec![service.to_owned()],
            outboxes: vec![(service.to_owned(), consumed, 0)],
            consumers: vec![(service.to_owned(), consumed, 1, 0)],
            ..Books::default()
        }
    }

    #[test]
    fn replicas_give_a_services_tables_once_and_their_consumers_add_up() {
        let mut books = part(Orders::NAME, 5);
        let mut first = part(Inventory::NAME, 7);
        first.compensations = 2;
        let mut second = part(Inventory::NAME, 3);
        second.compensations = 2;
        let mut payment = part(Payment::NAME, 4);
        payment.breaker_state = "Open".to_owned();
        payment.breaker_opens = 1;
        for part in [first, second, payment] {
            books.merge(part);
        }
        assert_eq!(books.services, ["orders", "inventory", "payment"]);
        assert_eq!(books.compensations, 2, "the same table, read twice");
        assert_eq!(
            books.outboxes,
            [
                ("orders".to_owned(), 5, 0),
                ("inventory".to_owned(), 7, 0),
                ("payment".to_owned(), 4, 0)
            ]
        );
        assert_eq!(books.consumers[1], ("inventory".to_owned(), 10, 2, 0));
        assert_eq!(
            (books.breaker_state.as_str(), books.breaker_opens),
            ("Open", 1)
        );
    }

    /// Two cells' sound rows of a product whose sums would overflow (rows
    /// edited by hand near the limits) are kept apart, each still sound:
    /// summed saturating, they made a false "stock not conserved".
    #[test]
    fn cells_stock_rows_past_the_limits_are_kept_apart() {
        let full = || StockLevel {
            sku: "sku-1".to_owned(),
            initial: i64::MAX,
            available: i64::MAX,
            reserved: 0,
            shipped: 0,
        };
        let mut books = Books {
            stock: vec![full()],
            ..Books::default()
        };
        books.add_cell(
            "b",
            Books {
                stock: vec![full()],
                ..Books::default()
            },
        );
        let skus: Vec<&str> = books.stock.iter().map(|level| level.sku.as_str()).collect();
        assert_eq!(skus, ["sku-1", "b/sku-1"]);
        assert!(
            books.violations(false).is_empty(),
            "{:?}",
            books.violations(false)
        );
    }

    /// Two cells' books add up: counts summed by key, the second cell's
    /// outboxes named after it, each quantile the larger, the breakers'
    /// states each cell's; and stock errors of two cells in opposite
    /// directions are both reported, not cancelled out.
    #[test]
    fn cells_books_add_up_and_keep_each_cells_violations() {
        let level = |available, reserved| StockLevel {
            sku: "sku-1".to_owned(),
            initial: 10,
            available,
            reserved,
            shipped: 10 - available - reserved,
        };
        let cell = |confirmed, level, latency, state: &str| Books {
            orders: vec![("confirmed".to_owned(), None, confirmed)],
            stock: vec![level],
            breaker_state: state.to_owned(),
            saga_latency_ms: Some(latency),
            ..part(Orders::NAME, 1)
        };
        let mut books = cell(3, level(5, 0), [40, 90], "Closed");
        books.cells = vec!["a".to_owned()];
        let mut b = cell(1, level(8, 2), [60, 80], "Closed");
        b.orders.push(("pending".to_owned(), None, 1));
        books.add_cell("b", b);
        assert_eq!(
            books.orders,
            [
                ("confirmed".to_owned(), None, 4),
                ("pending".to_owned(), None, 1)
            ]
        );
        assert_eq!(
            (
                books.stock[0].initial,
                books.stock[0].available,
                books.stock[0].reserved
            ),
            (20, 13, 2)
        );
        assert_eq!(books.services, ["orders", "b/orders"]);
        assert_eq!(books.outboxes[1], ("b/orders".to_owned(), 1, 0));
        assert_eq!(books.breaker_state, "Closed");
        assert_eq!(books.saga_latency_ms, Some([60, 90]));
        assert!(books.violations(false).is_empty());
        assert!(
            books
                .violations(true)
                .iter()
                .any(|violation| violation.contains("still has 2 reserved")),
            "{:?}",
            books.violations(true)
        );

        // A unit lost in cell c and one made up in cell d: both reported.
        let mut lost = cell(0, level(5, 0), [1, 1], "Open");
        lost.stock[0].available = 4;
        let mut made_up = cell(0, level(5, 0), [1, 1], "Closed");
        made_up.stock[0].available = 6;
        books.add_cell("c", lost);
        books.add_cell("d", made_up);
        let unbalanced: Vec<&str> = books
            .stock
            .iter()
            .filter(|level| !level.balances())
            .map(|level| level.sku.as_str())
            .collect();
        assert_eq!(unbalanced, ["c/sku-1", "d/sku-1"]);
        assert_eq!(
            books.violations(false).len(),
            2,
            "{:?}",
            books.violations(false)
        );
        assert_eq!(books.cells, ["a", "b", "c", "d"]);
        assert_eq!(
            books.breaker_state,
            "a: Closed, b: Closed, c: Open, d: Closed"
        );
    }

    #[test]
    fn books_nobody_gave_are_a_violation() {
        let books = Books {
            unread: vec!["shipping".to_owned()],
            ..part(Orders::NAME, 0)
        };
        assert_eq!(
            books.violations(false),
            ["the books of shipping were not read"]
        );
    }
}
