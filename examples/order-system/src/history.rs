//! Each user's order history, a read model of the saga's events (CQRS):
//! `GET /orders` on the gateway.
//!
//! The history consumes `OrderCreated` (whose order it is, and what) and
//! the saga's end, `OrderConfirmed` or `OrderCancelled`, into a table of
//! its own (`order_history`, in the history's database), reading no other
//! service's data. The two may be applied in either order (the gateways'
//! consumers share the stream, and a redelivered event comes late): each
//! event writes only its own columns of the order's row, so whichever comes
//! first, the row ends the same. It can be built again from the stream
//! ([`read_model::rebuild`](crate::read_model::rebuild), `order-system
//! rebuild-history`), and its lag is the `palisade_read_model_lag_seconds`
//! histogram with `read_model="history"`.
//!
//! It trails the orders service by that lag: an order placed a moment ago
//! is at `GET /orders/{id}` at once, and in the history once its
//! `OrderCreated` reached it.

use opentelemetry::metrics::Meter;
use palisade_outbox::{BoxError, Delivery};

use crate::db::{Emit, Param, ServiceDb, Statements, Tx};
use crate::events::{SagaEvent, types};
use crate::orders::Order;
use crate::read_model::{Lag, ReadModel};
use crate::service::{SagaService, not_consumed};

/// The most orders one page of history holds.
pub const MAX_PAGE: i64 = 100;

/// The order history service.
#[derive(Debug, Clone)]
pub struct History {
    db: ServiceDb,
    lag: Lag,
}

impl History {
    /// The service on its database (opened with
    /// [`TABLES`](SagaService::TABLES)).
    #[must_use]
    pub fn new(db: ServiceDb) -> Self {
        Self {
            db,
            lag: Lag::default(),
        }
    }

    /// Measures the history's [`Lag`] with `meter`
    /// (`read_model="history"`).
    #[must_use]
    pub fn instrument(mut self, meter: &Meter) -> Self {
        self.lag = Lag::instrument(meter);
        self
    }

    /// `user`'s orders, newest first: at most `limit` (1 to [`MAX_PAGE`]),
    /// those placed before the order `before` when given (the next page).
    /// The history keeps no saga times: `saga_ms` is `None`.
    ///
    /// # Errors
    ///
    /// The database's error.
    pub async fn of_user(
        &self,
        user: &str,
        before: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Order>, sqlx::Error> {
        // Order ids are UUID v7: their order is the order of placing.
        let limit = Param::Int(limit.clamp(1, MAX_PAGE));
        let (sql, params) = match before {
            None => (
                "SELECT order_id AS id, sku, quantity, amount_cents, status, reason, \
                 CAST(NULL AS BIGINT) AS saga_ms \
                 FROM order_history WHERE user_id = $1 ORDER BY order_id DESC LIMIT $2",
                vec![Param::Text(user), limit],
            ),
            Some(before) => (
                "SELECT order_id AS id, sku, quantity, amount_cents, status, reason, \
                 CAST(NULL AS BIGINT) AS saga_ms \
                 FROM order_history WHERE user_id = $1 AND order_id < $2 \
                 ORDER BY order_id DESC LIMIT $3",
                vec![Param::Text(user), Param::Text(before), limit],
            ),
        };
        self.db.fetch_all(sql, &params).await
    }
}

impl SagaService for History {
    const NAME: &'static str = "history";
    /// A row is made by whichever of an order's events comes first: its
    /// owner and line are `NULL` until `OrderCreated` comes.
    const TABLES: &'static [&'static str] = &[
        "CREATE TABLE IF NOT EXISTS order_history (order_id TEXT PRIMARY KEY, \
         user_id TEXT, sku TEXT, quantity BIGINT, amount_cents BIGINT, \
         status TEXT NOT NULL DEFAULT 'pending', reason TEXT)",
        "CREATE INDEX IF NOT EXISTS order_history_by_user ON order_history (user_id, order_id)",
    ];
    const CONSUMES: &'static [&'static str] = &[
        types::ORDER_CREATED,
        types::ORDER_CONFIRMED,
        types::ORDER_CANCELLED,
    ];

    fn db(&self) -> &ServiceDb {
        &self.db
    }

    async fn apply<T: Emit>(&self, tx: &mut T, event: SagaEvent) -> Result<(), BoxError> {
        match event {
            SagaEvent::OrderCreated(line) => {
                tx.execute(
                    "INSERT INTO order_history (order_id, user_id, sku, quantity, amount_cents) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (order_id) DO UPDATE SET \
                     user_id = excluded.user_id, sku = excluded.sku, \
                     quantity = excluded.quantity, amount_cents = excluded.amount_cents",
                    &[
                        Param::Text(&line.order_id),
                        Param::Text(&line.user_id),
                        Param::Text(&line.sku),
                        Param::Int(line.quantity),
                        Param::Int(line.amount_cents),
                    ],
                )
                .await?;
            }
            SagaEvent::OrderConfirmed { order_id } => {
                self.end(tx, &order_id, "confirmed", None).await?;
            }
            SagaEvent::OrderCancelled { order_id, reason } => {
                self.end(tx, &order_id, "cancelled", Some(&reason)).await?;
            }
            other => return Err(not_consumed(Self::NAME, &other)),
        }
        Ok(())
    }

    fn committed(&self, delivery: &Delivery) {
        self.lag.committed(Self::NAME, delivery);
    }
}

impl History {
    /// Records that the order `order_id` ended as `status`.
    async fn end<C: Tx>(
        &self,
        tx: &mut C,
        order_id: &str,
        status: &str,
        reason: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        tx.execute(
            "INSERT INTO order_history (order_id, status, reason) VALUES ($1, $2, $3) \
             ON CONFLICT (order_id) DO UPDATE SET status = excluded.status, reason = excluded.reason",
            &[
                Param::Text(order_id),
                Param::Text(status),
                Param::OptionalText(reason),
            ],
        )
        .await?;
        Ok(())
    }
}

impl ReadModel for History {
    const PROJECTED: &'static [&'static str] = &["order_history"];
}
