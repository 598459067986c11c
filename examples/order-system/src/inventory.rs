//! The inventory service: reserves stock for new orders, releases it when
//! payment fails (the compensation), and ships it when shipping is
//! scheduled. Its books always balance: `initial = available + reserved +
//! shipped` for every product.

use palisade_outbox::BoxError;
use serde::{Deserialize, Serialize};

use crate::books::Books;
use crate::db::{Emit, Param, ServiceDb, Statements, Tx};
use crate::events::{Line, SagaEvent, types};
use crate::service::{SagaService, not_consumed};

/// The stock of each product on sale ([`PRODUCTS`](crate::catalog::PRODUCTS))
/// at the start: plenty of most, few of `sku-rare`, so that some orders
/// are cancelled for lack of stock.
pub const STARTING_STOCK: &[(&str, i64)] = &[
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
        // Wide: a row edited by hand near the limits must not overflow.
        self.initial as i128
            == self.available as i128 + self.reserved as i128 + self.shipped as i128
    }
}

/// The inventory service.
#[derive(Debug, Clone)]
pub struct Inventory {
    db: ServiceDb,
}

impl Inventory {
    /// The service on its database, stocked with [`STARTING_STOCK`] the first
    /// time.
    ///
    /// # Errors
    ///
    /// The database's error.
    pub async fn new(db: ServiceDb) -> Result<Self, sqlx::Error> {
        for (sku, initial) in STARTING_STOCK {
            db.execute(
                "INSERT INTO stock (sku, initial, available) VALUES ($1, $2, $2) ON CONFLICT DO NOTHING",
                &[Param::Text(sku), Param::Int(*initial)],
            )
            .await?;
        }
        Ok(Self { db })
    }

    /// Every product's books.
    ///
    /// # Errors
    ///
    /// The database's error.
    pub async fn stock(&self) -> Result<Vec<StockLevel>, sqlx::Error> {
        self.db
            .fetch_all(
                "SELECT sku, initial, available, reserved, shipped FROM stock ORDER BY sku",
                &[],
            )
            .await
    }

    /// Compensations run, and how many orders had one run more than once.
    ///
    /// # Errors
    ///
    /// The database's error.
    pub async fn compensations(&self) -> Result<(i64, i64), sqlx::Error> {
        self.db
            .fetch_one(
                "SELECT count(*), count(*) - count(DISTINCT order_id || '/' || kind) FROM compensations",
                &[],
            )
            .await
    }

    async fn reserve<C: Emit>(&self, tx: &mut C, line: Line) -> Result<(), BoxError> {
        // Answered once per order: an order created message delivered
        // again after its inbox record was forgotten (a relay back after
        // the broker's duplicate window) found an order the stock had
        // refused reserved now, and charged and shipped it though the
        // customer was told it was cancelled.
        let answered: Option<(i64,)> = tx
            .fetch_optional(
                "SELECT CAST(1 AS BIGINT) FROM reservations WHERE order_id = $1 \
                 UNION ALL SELECT CAST(1 AS BIGINT) FROM rejections WHERE order_id = $1",
                &[Param::Text(&line.order_id)],
            )
            .await?;
        if answered.is_some() {
            tracing::debug!(order_id = %line.order_id, "order answered already; the reservation asked again is dropped");
            return Ok(());
        }
        let taken = tx
            .execute(
                "UPDATE stock SET available = available - $2, reserved = reserved + $2 \
                 WHERE sku = $1 AND available >= $2",
                &[Param::Text(&line.sku), Param::Int(line.quantity)],
            )
            .await?;
        let event = if taken == 1 {
            tx.execute(
                "INSERT INTO reservations (order_id, sku, quantity, status) VALUES ($1, $2, $3, 'reserved')",
                &[
                    Param::Text(&line.order_id),
                    Param::Text(&line.sku),
                    Param::Int(line.quantity),
                ],
            )
            .await?;
            SagaEvent::InventoryReserved(line)
        } else {
            tx.execute(
                "INSERT INTO rejections (order_id) VALUES ($1)",
                &[Param::Text(&line.order_id)],
            )
            .await?;
            SagaEvent::InventoryRejected {
                order_id: line.order_id,
            }
        };
        tx.enqueue(&event.to_event()).await?;
        Ok(())
    }

    /// Moves the reservation of `order_id` from `reserved` to `to`
    /// (`released`: back on the shelf; `shipped`: gone), with the stock:
    /// `true`, or `false` when it is `to` already (its message came again:
    /// nothing to do); an error if it is neither.
    async fn settle<C: Emit>(
        &self,
        tx: &mut C,
        order_id: &str,
        to: &str,
    ) -> Result<bool, BoxError> {
        let column = if to == "released" {
            "available"
        } else {
            "shipped"
        };
        // The stock first, while the reservation still reads `reserved`.
        let moved = tx
            .execute(
                &format!(
                    "UPDATE stock SET reserved = reserved - r.quantity, {column} = {column} + r.quantity \
                     FROM (SELECT sku, quantity FROM reservations WHERE order_id = $1 AND status = 'reserved') AS r \
                     WHERE stock.sku = r.sku"
                ),
                &[Param::Text(order_id)],
            )
            .await?;
        let marked = tx
            .execute(
                "UPDATE reservations SET status = $2 WHERE order_id = $1 AND status = 'reserved'",
                &[Param::Text(order_id), Param::Text(to)],
            )
            .await?;
        if moved == 1 && marked == 1 {
            return Ok(true);
        }
        if moved != 0 || marked != 0 {
            // Half a move: rolled back with the error below.
            return Err(format!("order {order_id}: its stock and reservation disagree").into());
        }
        let settled: Option<(i64,)> = tx
            .fetch_optional(
                "SELECT CAST(1 AS BIGINT) FROM reservations WHERE order_id = $1 AND status = $2",
                &[Param::Text(order_id), Param::Text(to)],
            )
            .await?;
        if settled.is_some() {
            tracing::debug!(
                order_id,
                to,
                "reservation settled already; the message that came again is dropped"
            );
            return Ok(false);
        }
        Err(format!("order {order_id} has no reservation to mark {to}").into())
    }
}

impl SagaService for Inventory {
    const NAME: &'static str = "inventory";
    const TABLES: &'static [&'static str] = &[
        "CREATE TABLE IF NOT EXISTS stock (sku TEXT PRIMARY KEY, initial BIGINT NOT NULL, \
         available BIGINT NOT NULL, reserved BIGINT NOT NULL DEFAULT 0, shipped BIGINT NOT NULL DEFAULT 0, \
         CHECK (available >= 0 AND reserved >= 0 AND shipped >= 0))",
        "CREATE TABLE IF NOT EXISTS reservations (order_id TEXT PRIMARY KEY, sku TEXT NOT NULL, \
         quantity BIGINT NOT NULL, status TEXT NOT NULL CHECK (status IN ('reserved', 'released', 'shipped')))",
        // The orders the stock could not serve, so each is answered once.
        "CREATE TABLE IF NOT EXISTS rejections (order_id TEXT PRIMARY KEY)",
        // Every compensation run, to prove none ran twice.
        "CREATE TABLE IF NOT EXISTS compensations (order_id TEXT NOT NULL, kind TEXT NOT NULL)",
    ];
    const CONSUMES: &'static [&'static str] = &[
        types::ORDER_CREATED,
        types::PAYMENT_FAILED,
        types::SHIPPING_SCHEDULED,
    ];

    fn db(&self) -> &ServiceDb {
        &self.db
    }

    /// Every product's stock, and the compensations run.
    async fn books(&self, _stuck_after: std::time::Duration) -> Result<Books, sqlx::Error> {
        let (compensations, compensations_repeated) = self.compensations().await?;
        Ok(Books {
            stock: self.stock().await?,
            compensations,
            compensations_repeated,
            ..Books::of_outbox(Self::NAME, &self.db).await?
        })
    }

    /// The stock rows are the hot spot: a batch of events writes several
    /// of them, in any order. Each batch locks them all in one order first,
    /// so replicas take turns rather than deadlock.
    async fn prepare<C: Tx>(&self, tx: &mut C) -> Result<(), BoxError> {
        tx.lock_in_order("stock", "sku").await?;
        Ok(())
    }

    async fn apply<T: Emit>(&self, tx: &mut T, event: SagaEvent) -> Result<(), BoxError> {
        match event {
            SagaEvent::OrderCreated(line) => self.reserve(tx, line).await?,
            SagaEvent::PaymentFailed { line, .. } => {
                if !self.settle(tx, &line.order_id, "released").await? {
                    return Ok(());
                }
                tx.execute(
                    "INSERT INTO compensations (order_id, kind) VALUES ($1, 'release')",
                    &[Param::Text(&line.order_id)],
                )
                .await?;
                let released = SagaEvent::InventoryReleased {
                    order_id: line.order_id,
                };
                tx.enqueue(&released.to_event()).await?;
            }
            SagaEvent::ShippingScheduled(line) => {
                self.settle(tx, &line.order_id, "shipped").await?;
            }
            other => return Err(not_consumed(Self::NAME, &other)),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stock_near_the_limits_is_checked_without_overflow() {
        let level = |initial, available| StockLevel {
            sku: "sku".to_owned(),
            initial,
            available,
            reserved: 1,
            shipped: 0,
        };
        assert!(!level(i64::MAX, i64::MAX).balances());
        assert!(level(i64::MAX, i64::MAX - 1).balances());
    }

    fn line(order_id: &str, sku: &str, quantity: i64) -> Line {
        Line {
            order_id: order_id.to_owned(),
            user_id: "alice".into(),
            sku: sku.to_owned(),
            quantity,
            amount_cents: 1250,
            card_token: "card_0123456789abcdef0123456789abcdef".to_owned(),
            card_last4: "4242".to_owned(),
        }
    }

    /// An order answered once, reserved or refused, is not answered
    /// again when its reservation is asked again: a refused order whose
    /// message came back once stock was in was reserved (and paid and
    /// shipped), and a reserved one failed on its reservation's key until
    /// it was dead-lettered.
    async fn answered_once(db: ServiceDb) {
        let inventory = Inventory::new(db.clone()).await.unwrap();
        let orders = [
            line("refused", "sku-rare", 41),
            line("reserved", "sku-1", 2),
        ];
        let apply = |line: Line| {
            let (db, inventory) = (db.clone(), &inventory);
            async move {
                let mut tx = db.begin().await.unwrap();
                inventory
                    .apply(&mut tx, SagaEvent::OrderCreated(line))
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
            }
        };
        for order in &orders {
            apply(order.clone()).await;
        }
        // Stock comes in; then both orders' messages come again.
        db.execute(
            "UPDATE stock SET available = 1000 WHERE sku = 'sku-rare'",
            &[],
        )
        .await
        .unwrap();
        for order in &orders {
            apply(order.clone()).await;
        }
        let events: Vec<(String, String)> = db
            .fetch_all(
                "SELECT aggregate_id, event_type FROM outbox ORDER BY seq",
                &[],
            )
            .await
            .unwrap();
        let events: Vec<(&str, &str)> = events
            .iter()
            .map(|(order, kind)| (order.as_str(), kind.as_str()))
            .collect();
        assert_eq!(
            events,
            [
                ("refused", types::INVENTORY_REJECTED),
                ("reserved", types::INVENTORY_RESERVED)
            ]
        );
        let stock = inventory.stock().await.unwrap();
        let level = |sku: &str| stock.iter().find(|level| level.sku == sku).unwrap().clone();
        assert_eq!(
            (level("sku-rare").available, level("sku-rare").reserved),
            (1000, 0)
        );
        assert_eq!(level("sku-1").reserved, 2);

        // A release and a shipment that come again are dropped: no second
        // compensation, no second event, the stock moved once (they
        // failed, no reservation to mark, until dead-lettered).
        let (released, shipped) = (line("released", "sku-2", 3), line("shipped", "sku-3", 4));
        for order in [&released, &shipped] {
            apply(order.clone()).await;
        }
        let settle = |event: SagaEvent| {
            let (db, inventory) = (db.clone(), &inventory);
            async move {
                let mut tx = db.begin().await.unwrap();
                inventory.apply(&mut tx, event).await.unwrap();
                tx.commit().await.unwrap();
            }
        };
        for _ in 0..2 {
            settle(SagaEvent::PaymentFailed {
                line: released.clone(),
                reason: "declined".into(),
            })
            .await;
            settle(SagaEvent::ShippingScheduled(shipped.clone())).await;
        }
        let (compensations, repeated) = inventory.compensations().await.unwrap();
        assert_eq!((compensations, repeated), (1, 0));
        let (releases,): (i64,) = db
            .fetch_one(
                "SELECT count(*) FROM outbox WHERE event_type = 'InventoryReleased'",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(releases, 1);
        let stock = inventory.stock().await.unwrap();
        let level = |sku: &str| stock.iter().find(|level| level.sku == sku).unwrap().clone();
        assert_eq!(
            (level("sku-2").reserved, level("sku-2").available),
            (0, 1_000_000)
        );
        assert_eq!((level("sku-3").reserved, level("sku-3").shipped), (0, 4));
    }

    #[tokio::test]
    async fn an_order_is_answered_once_whatever_comes_again_on_sqlite() {
        let (db, dir) = crate::service::scratch_db::<Inventory>().await;
        answered_once(db).await;
        let _ = std::fs::remove_dir_all(dir);
    }

    /// On PostgreSQL too, where the check read an `INT4` as an `i64` and
    /// failed whenever the order had been answered.
    #[tokio::test]
    async fn an_order_is_answered_once_whatever_comes_again_on_postgres() {
        let schema = format!("inventory_once_{}", fastrand::u64(..));
        let url = palisade_testkit::servers::database_url();
        let db = ServiceDb::open_postgres(&url, &schema, Inventory::TABLES, 2)
            .await
            .unwrap();
        answered_once(db.clone()).await;
        db.execute(&format!("DROP SCHEMA {schema} CASCADE"), &[])
            .await
            .unwrap();
    }
}
