//! The shipping service: schedules a parcel for every paid order.

use palisade_outbox::{BoxError, Delivery, Handled, Handler};

use crate::db::{Param, ServiceDb, Tx};
use crate::events::{SagaEvent, types};

/// The shipping service's tables.
pub const TABLES: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS shipments (order_id TEXT PRIMARY KEY, sku TEXT NOT NULL, quantity BIGINT NOT NULL)",
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

impl<C: Tx> Handler<C> for Shipping {
    async fn handle(&self, tx: &mut C, delivery: &Delivery) -> Result<Handled, BoxError> {
        let SagaEvent::PaymentSucceeded(line) = SagaEvent::from_delivery("shipping", delivery)?
        else {
            return Ok(Handled::Ignored);
        };
        tx.execute(
            "INSERT INTO shipments (order_id, sku, quantity) VALUES ($1, $2, $3)",
            &[
                Param::Text(&line.order_id),
                Param::Text(&line.sku),
                Param::Int(line.quantity),
            ],
        )
        .await?;
        self.db
            .enqueue(tx, &SagaEvent::ShippingScheduled(line).to_event())
            .await?;
        Ok(Handled::Applied)
    }
}
