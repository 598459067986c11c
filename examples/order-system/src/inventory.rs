//! The inventory service: reserves stock for new orders, releases it when
//! payment fails (the compensation), and ships it when shipping is
//! scheduled. Its books always balance: `initial = available + reserved +
//! shipped` for every product.

use palisade_outbox::{BoxError, Delivery, Handled, Handler};
use serde::{Deserialize, Serialize};
use sqlx::SqliteConnection;

use crate::db::ServiceDb;
use crate::events::{Line, SagaEvent, types};

/// The inventory service's tables.
pub const TABLES: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS stock (sku TEXT PRIMARY KEY, initial INTEGER NOT NULL, \
     available INTEGER NOT NULL, reserved INTEGER NOT NULL DEFAULT 0, shipped INTEGER NOT NULL DEFAULT 0, \
     CHECK (available >= 0 AND reserved >= 0 AND shipped >= 0))",
    "CREATE TABLE IF NOT EXISTS reservations (order_id TEXT PRIMARY KEY, sku TEXT NOT NULL, \
     quantity INTEGER NOT NULL, status TEXT NOT NULL CHECK (status IN ('reserved', 'released', 'shipped')))",
    // Every compensation run, to prove none ran twice.
    "CREATE TABLE IF NOT EXISTS compensations (order_id TEXT NOT NULL, kind TEXT NOT NULL)",
];

/// The events the inventory service consumes.
pub const CONSUMES: &[&str] = &[
    types::ORDER_CREATED,
    types::PAYMENT_FAILED,
    types::SHIPPING_SCHEDULED,
];

/// The products and their starting stock: plenty of most, few of
/// `sku-rare`, so that some orders are cancelled for lack of stock.
pub const CATALOG: &[(&str, i64)] = &[
    ("sku-1", 1_000_000),
    ("sku-2", 1_000_000),
    ("sku-3", 1_000_000),
    ("sku-4", 1_000_000),
    ("sku-rare", 40),
];

/// One product's books.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct StockLevel {
    /// The product.
    pub sku: String,
    /// Stock at the start.
    pub initial: i64,
    /// On the shelf.
    pub available: i64,
    /// Set aside for orders being paid.
    pub reserved: i64,
    /// Gone with shipped orders.
    pub shipped: i64,
}

impl StockLevel {
    /// Whether nothing was created or lost.
    #[must_use]
    pub const fn balances(&self) -> bool {
        self.initial == self.available + self.reserved + self.shipped
    }
}

/// The inventory service.
#[derive(Debug, Clone)]
pub struct Inventory {
    db: ServiceDb,
}

impl Inventory {
    /// The service on its database, stocked with [`CATALOG`] the first
    /// time.
    ///
    /// # Errors
    ///
    /// The database's error.
    pub async fn new(db: ServiceDb) -> Result<Self, sqlx::Error> {
        for (sku, initial) in CATALOG {
            sqlx::query(
                "INSERT INTO stock (sku, initial, available) VALUES ($1, $2, $2) ON CONFLICT DO NOTHING",
            )
            .bind(sku)
            .bind(initial)
            .execute(&db.pool)
            .await?;
        }
        Ok(Self { db })
    }

    /// The database.
    #[must_use]
    pub const fn db(&self) -> &ServiceDb {
        &self.db
    }

    /// Every product's books.
    ///
    /// # Errors
    ///
    /// The database's error.
    pub async fn stock(&self) -> Result<Vec<StockLevel>, sqlx::Error> {
        sqlx::query_as("SELECT sku, initial, available, reserved, shipped FROM stock ORDER BY sku")
            .fetch_all(&self.db.pool)
            .await
    }

    /// Compensations run, and how many orders had one run more than once.
    ///
    /// # Errors
    ///
    /// The database's error.
    pub async fn compensations(&self) -> Result<(i64, i64), sqlx::Error> {
        sqlx::query_as("SELECT count(*), count(*) - count(DISTINCT order_id || '/' || kind) FROM compensations")
            .fetch_one(&self.db.pool)
            .await
    }

    async fn reserve(&self, tx: &mut SqliteConnection, line: Line) -> Result<(), BoxError> {
        let taken = sqlx::query(
            "UPDATE stock SET available = available - $2, reserved = reserved + $2 \
             WHERE sku = $1 AND available >= $2",
        )
        .bind(&line.sku)
        .bind(line.quantity)
        .execute(&mut *tx)
        .await?;
        let event = if taken.rows_affected() == 1 {
            sqlx::query("INSERT INTO reservations (order_id, sku, quantity, status) VALUES ($1, $2, $3, 'reserved')")
                .bind(&line.order_id)
                .bind(&line.sku)
                .bind(line.quantity)
                .execute(&mut *tx)
                .await?;
            SagaEvent::InventoryReserved(line)
        } else {
            SagaEvent::InventoryRejected {
                order_id: line.order_id,
            }
        };
        self.db.outbox.enqueue(tx, &event.to_event()).await?;
        Ok(())
    }

    /// Moves a reservation of `order_id` from `reserved` to `to`, with the
    /// stock; an error if it is not reserved (a step run twice).
    async fn settle(
        &self,
        tx: &mut SqliteConnection,
        order_id: &str,
        to: &str,
    ) -> Result<(), BoxError> {
        let reservation: Option<(String, i64)> = sqlx::query_as(
            "UPDATE reservations SET status = $2 WHERE order_id = $1 AND status = 'reserved' RETURNING sku, quantity",
        )
        .bind(order_id)
        .bind(to)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((sku, quantity)) = reservation else {
            return Err(format!("order {order_id} has no reservation to mark {to}").into());
        };
        let column = if to == "released" {
            "available"
        } else {
            "shipped"
        };
        sqlx::query(&format!(
            "UPDATE stock SET reserved = reserved - $2, {column} = {column} + $2 WHERE sku = $1"
        ))
        .bind(&sku)
        .bind(quantity)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}

impl Handler<SqliteConnection> for Inventory {
    async fn handle(
        &self,
        tx: &mut SqliteConnection,
        delivery: &Delivery,
    ) -> Result<Handled, BoxError> {
        match SagaEvent::from_delivery("inventory", delivery)? {
            SagaEvent::OrderCreated(line) => self.reserve(tx, line).await?,
            SagaEvent::PaymentFailed { line, .. } => {
                self.settle(tx, &line.order_id, "released").await?;
                sqlx::query("INSERT INTO compensations (order_id, kind) VALUES ($1, 'release')")
                    .bind(&line.order_id)
                    .execute(&mut *tx)
                    .await?;
                let released = SagaEvent::InventoryReleased {
                    order_id: line.order_id,
                };
                self.db.outbox.enqueue(tx, &released.to_event()).await?;
            }
            SagaEvent::ShippingScheduled(line) => {
                self.settle(tx, &line.order_id, "shipped").await?;
            }
            _ => return Ok(Handled::Ignored),
        }
        Ok(Handled::Applied)
    }
}
