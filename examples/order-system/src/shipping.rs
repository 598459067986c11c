//! The shipping service: schedules a parcel for every paid order.

use palisade_outbox::{BoxError, Delivery, Handled, Handler};
use sqlx::SqliteConnection;

use crate::db::ServiceDb;
use crate::events::{SagaEvent, types};

/// The shipping service's tables.
pub const TABLES: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS shipments (order_id TEXT PRIMARY KEY, sku TEXT NOT NULL, quantity INTEGER NOT NULL)",
];

/// The events the shipping service consumes.
pub const CONSUMES: &[&str] = &[types::PAYMENT_SUCCEEDED];

/// The shipping service.
#[derive(Debug, Clone)]
pub struct Shipping {
    db: ServiceDb,
}

impl Shipping {
    /// The service on its database.
    #[must_use]
    pub const fn new(db: ServiceDb) -> Self {
        Self { db }
    }

    /// The database.
    #[must_use]
    pub const fn db(&self) -> &ServiceDb {
        &self.db
    }
}

impl Handler<SqliteConnection> for Shipping {
    async fn handle(
        &self,
        tx: &mut SqliteConnection,
        delivery: &Delivery,
    ) -> Result<Handled, BoxError> {
        let SagaEvent::PaymentSucceeded(line) = SagaEvent::from_delivery("shipping", delivery)?
        else {
            return Ok(Handled::Ignored);
        };
        sqlx::query("INSERT INTO shipments (order_id, sku, quantity) VALUES ($1, $2, $3)")
            .bind(&line.order_id)
            .bind(&line.sku)
            .bind(line.quantity)
            .execute(&mut *tx)
            .await?;
        self.db
            .outbox
            .enqueue(tx, &SagaEvent::ShippingScheduled(line).to_event())
            .await?;
        Ok(Handled::Applied)
    }
}
