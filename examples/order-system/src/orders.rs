//! The orders service: accepts orders (once per idempotency key) and
//! records how each saga ended.
//!
//! An idempotency key (draft-ietf-httpapi-idempotency-key-header-07) is
//! the user's own and lasts [`IDEMPOTENCY_WINDOW`] from its order's
//! placement: within it, the same order again is the first order
//! ([`Placement::Replayed`]), another order is refused
//! ([`PlaceError::KeyReused`]), and a request sent while the first is
//! still being placed is refused too ([`PlaceError::InProgress`]). Past
//! it, the key is released from its order when reused, and places a new
//! one.
//!
//! New orders placed at the same time share a transaction of the orders
//! database (a group commit): one insert of the
//! orders, one of their `OrderCreated` events. Each is answered as it
//! would be alone: an order whose key is taken, or whose group failed, is
//! placed again on its own, and that answer is its.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use palisade_outbox::{BoxError, Delivery, Event};
use serde::{Deserialize, Serialize};

use crate::books::{Books, LATENCY_WINDOW, quantile};
use crate::card::{CardNumber, CardToken};
use crate::db::{Emit, Param, ServiceDb, Statements, Tx};
use crate::events::{Line, SagaEvent, types};
use crate::group_commit::GroupCommit;
use crate::service::{SagaService, not_consumed};

mod idempotency;
mod waiters;

use idempotency::{InFlight, fingerprint};
use waiters::Waiters;

/// How long an idempotency key is remembered by default: 24 hours from
/// its order's placement.
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

/// How many orders requests may wait for at once with a wake-up; past
/// that, a wait re-reads its order every [`REREAD_ENDS`].
pub const WAITED_ORDERS: usize = 10_000;

/// How often a request waiting for an order's end reads it again, by
/// default (see [`Orders::reread_ends`]).
pub const REREAD_ENDS: Duration = Duration::from_millis(50);

/// An order as placed by a client (the body of `POST /orders`).
///
/// Its `Debug` shows the card's last four digits only (see
/// [`CardNumber`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewOrder {
    /// The product.
    pub sku: String,
    /// How many (1 to 100).
    pub quantity: i64,
    /// The card to charge.
    pub card: CardNumber,
}

impl NewOrder {
    /// The order with its card as payment's vault tokenized it.
    #[must_use]
    pub fn tokenized(&self, card: CardToken) -> TokenizedOrder {
        TokenizedOrder {
            sku: self.sku.clone(),
            quantity: self.quantity,
            card,
        }
    }
}

/// An order as the orders service places it: the card is a token of
/// payment's vault, and its last four digits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizedOrder {
    /// The product.
    pub sku: String,
    /// How many (1 to 100).
    pub quantity: i64,
    /// The card to charge.
    pub card: CardToken,
}

/// An order and where its saga stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Order {
    /// The order's id.
    pub id: String,
    /// The product.
    pub sku: String,
    /// How many.
    pub quantity: i64,
    /// What it costs, in cents.
    pub amount_cents: i64,
    /// `pending`, `confirmed` or `cancelled`.
    pub status: String,
    /// Why it was cancelled.
    pub reason: Option<String>,
    /// Milliseconds from placement to the end of the saga.
    pub saga_ms: Option<i64>,
}

/// What [`Orders::place`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// The order was placed now.
    Created(Order),
    /// The key was used for the same order within its window: that order,
    /// as it stands.
    Replayed(Order),
}

/// Why [`Orders::place`] placed no order.
#[derive(Debug)]
#[non_exhaustive]
pub enum PlaceError {
    /// The key was used for a different order within its window.
    KeyReused,
    /// Another request with the key is being placed now.
    InProgress,
    /// The database's error.
    Database(sqlx::Error),
}

impl std::fmt::Display for PlaceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::KeyReused => f.write_str("idempotency key already used for another order"),
            Self::InProgress => f.write_str("a request with this idempotency key is in progress"),
            Self::Database(error) => write!(f, "orders database: {error}"),
        }
    }
}

impl std::error::Error for PlaceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Database(error) => Some(error),
            Self::KeyReused | Self::InProgress => None,
        }
    }
}

impl From<sqlx::Error> for PlaceError {
    fn from(error: sqlx::Error) -> Self {
        Self::Database(error)
    }
}

/// An order's columns, as [`Orders::find`] selects them: its user's first.
type OrderRow = (
    String,
    String,
    String,
    i64,
    i64,
    String,
    Option<String>,
    Option<i64>,
);

impl From<OrderRow> for Order {
    fn from((_, id, sku, quantity, amount_cents, status, reason, saga_ms): OrderRow) -> Self {
        Self {
            id,
            sku,
            quantity,
            amount_cents,
            status,
            reason,
            saga_ms,
        }
    }
}

impl Order {
    /// The order `line` describes, just placed.
    fn placed(line: &Line) -> Self {
        Self {
            id: line.order_id.clone(),
            sku: line.sku.clone(),
            quantity: line.quantity,
            amount_cents: line.amount_cents,
            status: "pending".to_owned(),
            reason: None,
            saga_ms: None,
        }
    }
}

/// An order to place: its line (with its user), and the user's
/// idempotency key and request fingerprint.
#[derive(Debug, Clone)]
struct Placing {
    idempotency_key: String,
    fingerprint: String,
    line: Line,
    created_ms: i64,
}

/// The insert of new orders, up to its `VALUES`: [`ORDER_COLUMNS`]
/// columns, as [`Placing::params`] binds them.
const INSERT_ORDERS: &str = "INSERT INTO orders (id, user_id, idempotency_key, request_fingerprint, \
     sku, quantity, amount_cents, card_token, card_last4, status, created_ms)";
const ORDER_COLUMNS: usize = 11;

/// Orders one statement inserts at most (eleven values each, far below
/// either database's limit).
const ORDERS_PER_STATEMENT: usize = 500;

impl Placing {
    /// `user`'s `order` under `idempotency_key`, with a new order id,
    /// placed at `now_ms` (the database's clock).
    fn new(user: &str, idempotency_key: &str, order: &TokenizedOrder, now_ms: i64) -> Self {
        Self {
            idempotency_key: idempotency_key.to_owned(),
            fingerprint: fingerprint(order),
            line: Line {
                order_id: uuid::Uuid::now_v7().to_string(),
                user_id: user.to_owned(),
                sku: order.sku.clone(),
                quantity: order.quantity,
                amount_cents: order.quantity * UNIT_PRICE_CENTS,
                card_token: order.card.token.clone(),
                card_last4: order.card.last4.clone(),
            },
            created_ms: now_ms,
        }
    }

    /// Its row's values, in [`INSERT_ORDERS`]'s order.
    fn params(&self) -> [Param<'_>; ORDER_COLUMNS] {
        [
            Param::Text(&self.line.order_id),
            Param::Text(&self.line.user_id),
            Param::Text(&self.idempotency_key),
            Param::Text(&self.fingerprint),
            Param::Text(&self.line.sku),
            Param::Int(self.line.quantity),
            Param::Int(self.line.amount_cents),
            Param::Text(&self.line.card_token),
            Param::Text(&self.line.card_last4),
            Param::Text("pending"),
            Param::Int(self.created_ms),
        ]
    }
}

/// Places `group` in one transaction of `db`, set by set: each order
/// whose user's key is free, with its `OrderCreated`. Answers, in
/// `group`'s order, which were placed; an order whose key has an order
/// already is not.
async fn place_all(db: ServiceDb, group: Vec<(Placing, Event)>) -> Result<Vec<bool>, sqlx::Error> {
    let mut tx = db.begin().await?;
    let mut placed = HashSet::with_capacity(group.len());
    for chunk in group.chunks(ORDERS_PER_STATEMENT) {
        let params: Vec<Param<'_>> = chunk
            .iter()
            .flat_map(|(placing, _)| placing.params())
            .collect();
        let ids: Vec<(String,)> = tx
            .fetch_all(
                &format!(
                    "{INSERT_ORDERS} VALUES {} \
                     ON CONFLICT (user_id, idempotency_key) DO NOTHING RETURNING id",
                    crate::db::placeholders(chunk.len(), ORDER_COLUMNS)
                ),
                &params,
            )
            .await?;
        placed.extend(ids.into_iter().map(|(id,)| id));
    }
    let answers: Vec<bool> = group
        .iter()
        .map(|(placing, _)| placed.contains(&placing.line.order_id))
        .collect();
    let events: Vec<Event> = group
        .into_iter()
        .zip(&answers)
        .filter_map(|((_, event), placed)| placed.then_some(event))
        .collect();
    tx.enqueue_all(&events).await?;
    tx.commit().await?;
    Ok(answers)
}

/// The price of one unit of any product, in cents.
pub const UNIT_PRICE_CENTS: i64 = 1_250;

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The orders service.
#[derive(Debug, Clone)]
pub struct Orders {
    db: ServiceDb,
    /// How long an idempotency key is remembered.
    window: Duration,
    /// The keys being placed now.
    placing: InFlight,
    /// New orders waiting to be placed together.
    placements: Arc<GroupCommit<(Placing, Event), bool>>,
    /// Requests waiting for an order's saga to end.
    waiters: Waiters,
    /// How often a waiting request reads its order again, for ends that
    /// another process commits.
    reread: Duration,
}

impl Orders {
    /// The service on its database, remembering idempotency keys for
    /// [`IDEMPOTENCY_WINDOW`].
    #[must_use]
    pub fn new(db: ServiceDb) -> Self {
        Self {
            db,
            window: IDEMPOTENCY_WINDOW,
            placing: InFlight::default(),
            placements: Arc::default(),
            waiters: Waiters::new(WAITED_ORDERS),
            reread: REREAD_ENDS,
        }
    }

    /// Reads a waited-for order again every `every` instead of every
    /// [`REREAD_ENDS`]. Ends this process's consumer commits wake their
    /// waiters at once; the re-reads are for the ends that a consumer in
    /// another process (another gateway on the same database) commits, so a
    /// single process can read rarely: `embedded` uses one second.
    #[must_use]
    pub const fn reread_ends(mut self, every: Duration) -> Self {
        self.reread = every;
        self
    }

    /// Remembers idempotency keys for `window` from their order's
    /// placement instead.
    #[must_use]
    pub const fn idempotency_window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// How many idempotency keys are being placed now (in this process).
    #[must_use]
    pub fn placing(&self) -> usize {
        self.placing.len()
    }

    /// Answers every request waiting for an order's saga to end with the
    /// order as it stands, now and from now on: for a stop, whose
    /// graceful shutdown would otherwise wait out their waits (up to 30 s,
    /// as long as a deployment's grace period) while the consumers that
    /// end the sagas are stopping.
    pub fn end_waits(&self) {
        self.waiters.close();
    }

    /// How many orders someone waits for now.
    #[must_use]
    pub fn waiting(&self) -> usize {
        self.waiters.len()
    }

    /// `user`'s order `id` once its saga ended, or as it stands after
    /// `wait`; `None` when `user` has no such order.
    ///
    /// Only a pending order is waited for; the wait leaves nothing
    /// behind, however it ends (see [`WAITED_ORDERS`]).
    ///
    /// # Errors
    ///
    /// The database's error.
    pub async fn wait_for_end(
        &self,
        user: &str,
        id: &str,
        wait: Duration,
    ) -> Result<Option<Order>, sqlx::Error> {
        self.wait_for_end_seen(user, id, wait, || {}).await
    }

    /// [`wait_for_end`](Self::wait_for_end), calling `pending` once a
    /// read showed `user`'s order pending: the wait is for a saga of
    /// theirs (not for an id that is no order, or another user's).
    ///
    /// # Errors
    ///
    /// The database's error.
    pub async fn wait_for_end_seen(
        &self,
        user: &str,
        id: &str,
        wait: Duration,
        pending: impl FnOnce(),
    ) -> Result<Option<Order>, sqlx::Error> {
        let mut pending = Some(pending);
        if wait.is_zero() {
            return self.find(user, id).await;
        }
        let deadline = tokio::time::Instant::now() + wait;
        let waiter = self.waiters.register(id);
        let mut read = false;
        loop {
            // Registered before reading, so an end committed between the
            // read and the wait is not missed. The wake-up comes after the
            // commit (`committed`); the short re-reads are for ends that a
            // consumer in another process commits.
            let notified = waiter.as_ref().map(waiters::Waiter::notified);
            // Ended by this process's consumer: the wake-up carried it.
            // Only once a read showed the order is `user`'s: the wait is
            // by order id alone.
            if read && let Some(ended) = waiter.as_ref().and_then(waiters::Waiter::ended) {
                return Ok(Some(ended));
            }
            let order = self.find(user, id).await?;
            read = true;
            let ended = order.as_ref().is_none_or(|order| order.status != "pending");
            if !ended && let Some(pending) = pending.take() {
                pending();
            }
            // Read after the wake-up was registered: a stop that comes
            // after this check wakes it.
            let stopping = self.waiters.closed();
            if ended || stopping || tokio::time::Instant::now() >= deadline {
                return Ok(order);
            }
            let now = tokio::time::Instant::now();
            match notified {
                Some(notified) => {
                    let tick = deadline.min(now + self.reread);
                    let _ = tokio::time::timeout_at(tick, notified).await;
                }
                // No room to be woken: read again soon.
                None => tokio::time::sleep_until(deadline.min(now + REREAD_ENDS)).await,
            }
        }
    }

    /// Places `user`'s `order` under `idempotency_key`: the order and its
    /// `OrderCreated` in one transaction. The same user's same key within
    /// its window answers for the first order (see the [module](self)).
    ///
    /// "Being placed" is this process's knowledge: a request with the
    /// key sent to another process (another gateway on the same
    /// database) while this one places it waits for it on the key's
    /// unique index, then answers as a later request would.
    ///
    /// # Errors
    ///
    /// [`PlaceError::KeyReused`], [`PlaceError::InProgress`], or the
    /// database's error.
    pub async fn place(
        &self,
        user: &str,
        idempotency_key: &str,
        order: &TokenizedOrder,
    ) -> Result<Placement, PlaceError> {
        let _claim = self
            .placing
            .claim(user, idempotency_key)
            .ok_or(PlaceError::InProgress)?;
        let now = self.db.now_ms().await?;
        let placing = Placing::new(user, idempotency_key, order, now);
        // Most keys are new: placed together with the orders placed
        // alongside, in one transaction.
        let created = Placement::Created(Order::placed(&placing.line));
        let event = SagaEvent::OrderCreated(placing.line.clone()).to_event();
        let grouped = self
            .placements
            .write((placing.clone(), event), |group| {
                place_all(self.db.clone(), group)
            })
            .await;
        match grouped {
            Ok(true) => return Ok(created),
            // The key has an order: whether to replay it is decided alone.
            Ok(false) => {}
            // Placed alone, this one's own error is the answer (and the
            // others' bad input no concern of it).
            Err(error) => {
                tracing::debug!(%error, "orders placed together failed; placing alone");
            }
        }
        self.place_alone(&placing).await
    }

    /// Places `placing` in a transaction of its own; the key may have an
    /// order already (see [`place`](Self::place)).
    async fn place_alone(&self, placing: &Placing) -> Result<Placement, PlaceError> {
        let (user, idempotency_key) = (
            placing.line.user_id.as_str(),
            placing.idempotency_key.as_str(),
        );
        let now = placing.created_ms;
        let window = i64::try_from(self.window.as_millis()).unwrap_or(i64::MAX);
        let insert = format!(
            "{INSERT_ORDERS} VALUES {} ON CONFLICT (user_id, idempotency_key) DO NOTHING",
            crate::db::placeholders(1, ORDER_COLUMNS)
        );
        let params = placing.params();
        let event = SagaEvent::OrderCreated(placing.line.clone()).to_event();
        let mut tx = self.db.begin().await?;
        // The insert comes first, so the transaction writes from its first
        // statement (SQLite never has to upgrade a reader to a writer).
        if tx.execute(&insert, &params).await? == 0 {
            let (first, recorded, placed_ms): (String, Option<String>, i64) = tx
                .fetch_optional(
                    "SELECT id, request_fingerprint, created_ms FROM orders \
                     WHERE user_id = $1 AND idempotency_key = $2",
                    &[Param::Text(user), Param::Text(idempotency_key)],
                )
                .await?
                .ok_or(sqlx::Error::RowNotFound)?;
            if placed_ms > now.saturating_sub(window) {
                tx.rollback().await?;
                if recorded.as_deref() != Some(placing.fingerprint.as_str()) {
                    return Err(PlaceError::KeyReused);
                }
                let first = self.find(user, &first).await?;
                return first
                    .map(Placement::Replayed)
                    .ok_or(PlaceError::Database(sqlx::Error::RowNotFound));
            }
            // Past its window: the key leaves its first order. A request
            // from another process that released it first and placed its
            // own order has it now: that one is still being answered.
            tx.execute(
                "UPDATE orders SET idempotency_key = NULL, request_fingerprint = NULL WHERE id = $1",
                &[Param::Text(&first)],
            )
            .await?;
            if tx.execute(&insert, &params).await? == 0 {
                tx.rollback().await?;
                return Err(PlaceError::InProgress);
            }
        }
        tx.enqueue(&event).await?;
        tx.commit().await?;
        Ok(Placement::Created(Order::placed(&placing.line)))
    }

    /// `user`'s order `id`.
    ///
    /// # Errors
    ///
    /// The database's error.
    pub async fn find(&self, user: &str, id: &str) -> Result<Option<Order>, sqlx::Error> {
        // By the primary key alone, the user checked here: with the user in
        // the statement too, a plan cached while the table was small can
        // take the (user_id, idempotency_key) index and read every order of
        // the user at each lookup.
        let row: Option<OrderRow> = self
            .db
            .fetch_optional(
                "SELECT user_id, id, sku, quantity, amount_cents, status, reason, \
                 finished_ms - created_ms FROM orders WHERE id = $1",
                &[Param::Text(id)],
            )
            .await?;
        Ok(row.filter(|row| row.0 == user).map(Order::from))
    }

    /// Orders by status.
    ///
    /// # Errors
    ///
    /// The database's error.
    pub async fn counts(&self) -> Result<Vec<(String, Option<String>, i64)>, sqlx::Error> {
        self.db
            .fetch_all(
                "SELECT status, reason, count(*) FROM orders GROUP BY status, reason ORDER BY status, reason",
                &[],
            )
            .await
    }

    /// How long the sagas that ended in the last `window` took (from the
    /// order's placing to its end), in milliseconds, shortest first.
    ///
    /// # Errors
    ///
    /// The database's error.
    pub async fn recent_saga_ms(&self, window: Duration) -> Result<Vec<i64>, sqlx::Error> {
        let now = self.db.now_ms().await?;
        let since = now.saturating_sub(i64::try_from(window.as_millis()).unwrap_or(i64::MAX));
        let rows: Vec<(i64,)> = self
            .db
            .fetch_all(
                "SELECT finished_ms - created_ms FROM orders WHERE finished_ms >= $1 ORDER BY 1",
                &[Param::Int(since)],
            )
            .await?;
        Ok(rows.into_iter().map(|(ms,)| ms).collect())
    }

    /// Ends the saga of `order_id` as `status`, once.
    async fn finish<C: Emit>(
        &self,
        tx: &mut C,
        order_id: &str,
        status: &str,
        reason: Option<&str>,
    ) -> Result<(), BoxError> {
        let now = self.db.now_ms_in(tx).await?;
        let ended: Option<OrderRow> = tx
            .fetch_optional(
                "UPDATE orders SET status = $2, reason = $3, finished_ms = $4 \
                 WHERE id = $1 AND status = 'pending' \
                 RETURNING user_id, id, sku, quantity, amount_cents, status, reason, \
                 finished_ms - created_ms",
                &[
                    Param::Text(order_id),
                    Param::Text(status),
                    Param::OptionalText(reason),
                    Param::Int(now),
                ],
            )
            .await?;
        let Some(ended) = ended else {
            // Ended so already: its message came again, nothing to do.
            // Ended otherwise: the saga contradicts itself, for an
            // operator to see.
            let now: Option<(String, Option<String>)> = tx
                .fetch_optional(
                    "SELECT status, reason FROM orders WHERE id = $1",
                    &[Param::Text(order_id)],
                )
                .await?;
            if now.is_some_and(|(was, why)| was == status && why.as_deref() == reason) {
                tracing::debug!(
                    order_id,
                    status,
                    "order ended so already; the message that came again is dropped"
                );
                return Ok(());
            }
            return Err(format!("order {order_id} is not pending; cannot become {status}").into());
        };
        // Handed to the requests waiting for it once this commits.
        self.waiters.written(Order::from(ended));
        let event = match reason {
            None => SagaEvent::OrderConfirmed {
                order_id: order_id.to_owned(),
            },
            Some(reason) => SagaEvent::OrderCancelled {
                order_id: order_id.to_owned(),
                reason: reason.to_owned(),
            },
        };
        tx.enqueue(&event.to_event()).await?;
        Ok(())
    }
}

impl SagaService for Orders {
    const NAME: &'static str = "orders";
    /// An order keeps its idempotency key and its request's fingerprint
    /// until the key is reused past its window (then both are `NULL`).
    const TABLES: &'static [&'static str] = &[
        "CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, user_id TEXT NOT NULL, \
         idempotency_key TEXT, request_fingerprint TEXT, sku TEXT NOT NULL, quantity BIGINT NOT NULL, amount_cents BIGINT NOT NULL, card_token TEXT NOT NULL, \
         card_last4 TEXT NOT NULL,      status TEXT NOT NULL, reason TEXT, created_ms BIGINT NOT NULL, finished_ms BIGINT, \
         UNIQUE (user_id, idempotency_key))",
    ];
    const CONSUMES: &'static [&'static str] = &[
        types::SHIPPING_SCHEDULED,
        types::INVENTORY_REJECTED,
        types::INVENTORY_RELEASED,
    ];

    fn db(&self) -> &ServiceDb {
        &self.db
    }

    /// Orders by state, the sagas stuck past `stuck_after`, and how long
    /// the sagas that ended in the last [`LATENCY_WINDOW`] took.
    async fn books(&self, stuck_after: Duration) -> Result<Books, sqlx::Error> {
        let recent = self.recent_saga_ms(LATENCY_WINDOW).await?;
        Ok(Books {
            orders: self.counts().await?,
            stuck_sagas: crate::stuck::count(self, stuck_after).await?,
            stuck_after_ms: u64::try_from(stuck_after.as_millis()).unwrap_or(u64::MAX),
            saga_latency_ms: quantile(&recent, 0.5)
                .zip(quantile(&recent, 0.99))
                .map(|(p50, p99)| [p50, p99]),
            ..Books::of_outbox(Self::NAME, &self.db).await?
        })
    }

    async fn apply<T: Emit>(&self, tx: &mut T, event: SagaEvent) -> Result<(), BoxError> {
        match event {
            SagaEvent::ShippingScheduled(line) => {
                self.finish(tx, &line.order_id, "confirmed", None).await?;
            }
            SagaEvent::InventoryRejected { order_id } => {
                self.finish(tx, &order_id, "cancelled", Some("out_of_stock"))
                    .await?;
            }
            SagaEvent::InventoryReleased { order_id } => {
                self.finish(tx, &order_id, "cancelled", Some("payment_declined"))
                    .await?;
            }
            other => return Err(not_consumed(Self::NAME, &other)),
        }
        Ok(())
    }

    /// The saga's end is committed: whoever waits for it has it now.
    fn committed(&self, delivery: &Delivery) {
        // The event's subject is its aggregate: the order.
        let Some(order_id) = delivery.envelope.subject.as_deref() else {
            return;
        };
        self.waiters.wake(order_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placing(user: &str, key: &str) -> (Placing, Event) {
        let order = TokenizedOrder {
            sku: "sku-1".to_owned(),
            quantity: 1,
            card: CardToken {
                token: "card_0123456789abcdef0123456789abcdef".to_owned(),
                last4: "4242".to_owned(),
            },
        };
        let placing = Placing::new(user, key, &order, now_ms());
        let event = SagaEvent::OrderCreated(placing.line.clone()).to_event();
        (placing, event)
    }

    /// One group, written set by set: the orders whose keys are free are
    /// placed, each with its one `OrderCreated`; one whose key has an
    /// order (from an earlier group, or earlier in this one) is not.
    #[tokio::test]
    async fn a_group_places_the_orders_whose_keys_are_free_with_their_events() {
        let (db, dir) = crate::service::scratch_db::<Orders>().await;
        assert_eq!(
            place_all(db.clone(), vec![placing("alice", "k1")])
                .await
                .unwrap(),
            [true]
        );
        let group = vec![
            placing("alice", "k2"),
            placing("alice", "k1"),
            placing("bob", "k1"),
            placing("alice", "k2"),
        ];
        let ids: Vec<String> = group.iter().map(|(p, _)| p.line.order_id.clone()).collect();
        assert_eq!(
            place_all(db.clone(), group).await.unwrap(),
            [true, false, true, false]
        );
        let mut placed: Vec<(String, String)> = db
            .fetch_all(
                "SELECT o.id, e.event_type FROM orders o JOIN outbox e ON e.aggregate_id = o.id \
                 WHERE o.id IN ($1, $2, $3, $4) ORDER BY e.seq",
                &ids.iter().map(|id| Param::Text(id)).collect::<Vec<_>>(),
            )
            .await
            .unwrap();
        placed.sort();
        let mut expected = vec![
            (ids[0].clone(), "OrderCreated".to_owned()),
            (ids[2].clone(), "OrderCreated".to_owned()),
        ];
        expected.sort();
        assert_eq!(placed, expected);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// An order's end that comes again is dropped (it failed, "not
    /// pending", until it was dead-lettered); an end that contradicts the
    /// one it has is still an error, for an operator to see.
    #[tokio::test]
    async fn an_end_that_comes_again_is_dropped_and_a_contradiction_is_not() {
        let (db, dir) = crate::service::scratch_db::<Orders>().await;
        let orders = Orders::new(db.clone());
        let (placed, created) = placing("alice", "k1");
        let line = placed.line.clone();
        assert_eq!(
            place_all(db.clone(), vec![(placed, created)])
                .await
                .unwrap(),
            [true]
        );
        let apply = |event: SagaEvent| {
            let (db, orders) = (db.clone(), &orders);
            async move {
                let mut tx = db.begin().await.unwrap();
                let applied = orders.apply(&mut tx, event).await;
                tx.commit().await.unwrap();
                applied
            }
        };
        for _ in 0..2 {
            apply(SagaEvent::ShippingScheduled(line.clone()))
                .await
                .unwrap();
        }
        let ends: Vec<(String,)> = db
            .fetch_all(
                "SELECT event_type FROM outbox WHERE event_type <> 'OrderCreated'",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(ends, [("OrderConfirmed".to_owned(),)]);
        let contradiction = SagaEvent::InventoryRejected {
            order_id: line.order_id.clone(),
        };
        assert!(apply(contradiction).await.is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
