//! The orders service: accepts orders (once per idempotency key) and
//! records how each saga ended.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use palisade_outbox::{BoxError, Delivery, Handled, Handler};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use tokio::sync::Notify;

use crate::db::{Param, ServiceDb, Tx};
use crate::events::{Line, SagaEvent, types};

/// The orders service's tables.
pub const TABLES: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, user_id TEXT NOT NULL, \
     idempotency_key TEXT NOT NULL, sku TEXT NOT NULL, quantity BIGINT NOT NULL, amount_cents BIGINT NOT NULL, card TEXT NOT NULL, \
     status TEXT NOT NULL, reason TEXT, created_ms BIGINT NOT NULL, finished_ms BIGINT, \
     UNIQUE (user_id, idempotency_key))",
];

/// The events the orders service consumes.
pub const CONSUMES: &[&str] = &[
    types::SHIPPING_SCHEDULED,
    types::INVENTORY_REJECTED,
    types::INVENTORY_RELEASED,
];

/// An order as placed by a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewOrder {
    /// The product.
    pub sku: String,
    /// How many (1 to 100).
    pub quantity: i64,
    /// The card to charge.
    pub card: String,
}

/// An order and where its saga stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Requests waiting for an order's saga to end, by order id; an entry
    /// lives only while someone waits.
    waiting: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
}

impl Orders {
    /// The service on its database.
    #[must_use]
    pub fn new(db: ServiceDb) -> Self {
        Self {
            db,
            waiting: Arc::default(),
        }
    }

    /// `user`'s order `id` once its saga ended, or as it stands after
    /// `wait`.
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
        let deadline = tokio::time::Instant::now() + wait;
        let notify = self
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id.to_owned())
            .or_default()
            .clone();
        let found = loop {
            // Registered before reading, so an end committed between the
            // read and the wait is not missed. The wake-up comes after the
            // commit (`committed`); the short re-reads are for ends that a
            // consumer in another process commits.
            let notified = notify.notified();
            let order = self.find(user, id).await?;
            let ended = order.as_ref().is_none_or(|order| order.status != "pending");
            if ended || tokio::time::Instant::now() >= deadline {
                break order;
            }
            let _ = tokio::time::timeout_at(
                deadline.min(tokio::time::Instant::now() + Duration::from_millis(50)),
                notified,
            )
            .await;
        };
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        if Arc::strong_count(&notify) == 2 {
            waiting.remove(id);
        }
        Ok(found)
    }

    /// Places `user`'s `order` under `idempotency_key`: the order and its
    /// `OrderCreated` in one transaction. The same user's same key again
    /// returns the first order (`false`: not created now).
    ///
    /// # Errors
    ///
    /// The database's error.
    pub async fn place(
        &self,
        user: &str,
        idempotency_key: &str,
        order: &NewOrder,
    ) -> Result<(Order, bool), sqlx::Error> {
        let line = Line {
            order_id: uuid::Uuid::now_v7().to_string(),
            sku: order.sku.clone(),
            quantity: order.quantity,
            amount_cents: order.quantity * UNIT_PRICE_CENTS,
            card: order.card.clone(),
        };
        let event = SagaEvent::OrderCreated(line.clone()).to_event();
        let created = crate::on_pool!(&self.db, |pool| {
            let mut tx = pool.begin().await?;
            // The insert comes first, so the transaction writes from its
            // first statement (SQLite never has to upgrade a reader to a
            // writer).
            let inserted = tx
                .execute(
                    "INSERT INTO orders (id, user_id, idempotency_key, sku, quantity, amount_cents, card, status, created_ms) \
                     VALUES ($1, $8, $2, $3, $4, $5, $6, 'pending', $7) ON CONFLICT (user_id, idempotency_key) DO NOTHING",
                    &[
                        Param::Text(&line.order_id),
                        Param::Text(idempotency_key),
                        Param::Text(&line.sku),
                        Param::Int(line.quantity),
                        Param::Int(line.amount_cents),
                        Param::Text(&line.card),
                        Param::Int(now_ms()),
                        Param::Text(user),
                    ],
                )
                .await?;
            if inserted == 0 {
                tx.rollback().await?;
                false
            } else {
                self.db.enqueue(&mut *tx, &event).await?;
                tx.commit().await?;
                true
            }
        });
        if !created {
            let existing = self
                .find_where(
                    "user_id = $1 AND idempotency_key = $2",
                    user,
                    idempotency_key,
                )
                .await?
                .ok_or(sqlx::Error::RowNotFound)?;
            return Ok((existing, false));
        }
        let order = Order {
            id: line.order_id,
            sku: line.sku,
            quantity: line.quantity,
            amount_cents: line.amount_cents,
            status: "pending".to_owned(),
            reason: None,
            saga_ms: None,
        };
        Ok((order, true))
    }

    /// `user`'s order `id`.
    ///
    /// # Errors
    ///
    /// The database's error.
    pub async fn find(&self, user: &str, id: &str) -> Result<Option<Order>, sqlx::Error> {
        self.find_where("user_id = $1 AND id = $2", user, id).await
    }

    async fn find_where(
        &self,
        condition: &str,
        user: &str,
        value: &str,
    ) -> Result<Option<Order>, sqlx::Error> {
        let sql = format!(
            "SELECT id, sku, quantity, amount_cents, status, reason, finished_ms - created_ms AS saga_ms \
             FROM orders WHERE {condition}"
        );
        crate::on_pool!(&self.db, |pool| {
            let row = sqlx::query(&sql)
                .bind(user)
                .bind(value)
                .fetch_optional(pool)
                .await?;
            Ok(row.map(|row| Order {
                id: row.get("id"),
                sku: row.get("sku"),
                quantity: row.get("quantity"),
                amount_cents: row.get("amount_cents"),
                status: row.get("status"),
                reason: row.get("reason"),
                saga_ms: row.get("saga_ms"),
            }))
        })
    }
    /// Orders by status.
    ///
    /// # Errors
    ///
    /// The database's error.
    pub async fn counts(&self) -> Result<Vec<(String, Option<String>, i64)>, sqlx::Error> {
        crate::on_pool!(&self.db, |pool| {
            sqlx::query_as(
            "SELECT status, reason, count(*) FROM orders GROUP BY status, reason ORDER BY status, reason"
        )
        .fetch_all(pool)
        .await
        })
    }

    /// The database.
    #[must_use]
    pub const fn db(&self) -> &ServiceDb {
        &self.db
    }

    /// Ends the saga of `order_id` as `status`, once.
    async fn finish<C: Tx>(
        &self,
        tx: &mut C,
        order_id: &str,
        status: &str,
        reason: Option<&str>,
    ) -> Result<(), BoxError> {
        let done = tx
            .execute(
                "UPDATE orders SET status = $2, reason = $3, finished_ms = $4 WHERE id = $1 AND status = 'pending'",
                &[
                    Param::Text(order_id),
                    Param::Text(status),
                    Param::OptionalText(reason),
                    Param::Int(now_ms()),
                ],
            )
            .await?;
        if done != 1 {
            return Err(format!("order {order_id} is not pending; cannot become {status}").into());
        }
        let event = match reason {
            None => SagaEvent::OrderConfirmed {
                order_id: order_id.to_owned(),
            },
            Some(reason) => SagaEvent::OrderCancelled {
                order_id: order_id.to_owned(),
                reason: reason.to_owned(),
            },
        };
        self.db.enqueue(tx, &event.to_event()).await?;
        Ok(())
    }
}

impl<C: Tx> Handler<C> for Orders {
    async fn handle(&self, tx: &mut C, delivery: &Delivery) -> Result<Handled, BoxError> {
        match SagaEvent::from_delivery("orders", delivery)? {
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
            _ => return Ok(Handled::Ignored),
        }
        Ok(Handled::Applied)
    }

    /// The saga's end is committed: whoever waits for it reads it now.
    fn committed(&self, delivery: &Delivery) {
        // The event's subject is its aggregate: the order.
        let Some(order_id) = delivery.envelope.subject.as_deref() else {
            return;
        };
        if let Some(waiter) = self
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(order_id)
        {
            waiter.notify_waiters();
        }
    }
}
