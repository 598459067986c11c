//! The shipping service: schedules a parcel for every paid order.

use palisade_outbox::BoxError;

use crate::db::{Emit, Param, ServiceDb};
use crate::events::{SagaEvent, types};
use crate::service::{SagaService, not_consumed};

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
}

impl SagaService for Shipping {
    const NAME: &'static str = "shipping";
    const TABLES: &'static [&'static str] = &[
        "CREATE TABLE IF NOT EXISTS shipments (order_id TEXT PRIMARY KEY, sku TEXT NOT NULL, quantity BIGINT NOT NULL)",
    ];
    const CONSUMES: &'static [&'static str] = &[types::PAYMENT_SUCCEEDED];

    fn db(&self) -> &ServiceDb {
        &self.db
    }

    async fn apply<T: Emit>(&self, tx: &mut T, event: SagaEvent) -> Result<(), BoxError> {
        let SagaEvent::PaymentSucceeded(line) = event else {
            return Err(not_consumed(Self::NAME, &event));
        };
        // Once per order: a payment's message that came again ships
        // nothing more (it failed on the shipment's key until it was
        // dead-lettered).
        let scheduled = tx
            .execute(
                "INSERT INTO shipments (order_id, sku, quantity) VALUES ($1, $2, $3) \
                 ON CONFLICT (order_id) DO NOTHING",
                &[
                    Param::Text(&line.order_id),
                    Param::Text(&line.sku),
                    Param::Int(line.quantity),
                ],
            )
            .await?;
        if scheduled == 1 {
            tx.enqueue(&SagaEvent::ShippingScheduled(line).to_event())
                .await?;
        }
        Ok(())
    }
}
