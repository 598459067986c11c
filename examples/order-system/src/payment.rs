//! The payment service: charges the card of every order whose stock is
//! reserved, through the card processor over gRPC (with retry and a
//! circuit breaker, see [`processor::stack`](crate::processor::stack)).

use palisade_outbox::{BoxError, Delivery, Handled, Handler, Transient};

use crate::db::{Param, ServiceDb, Tx};
use crate::events::{SagaEvent, types};
use crate::processor::{Charge, ProcessorClient};

/// The payment service's tables.
pub const TABLES: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS payments (order_id TEXT PRIMARY KEY, amount_cents BIGINT NOT NULL, \
     status TEXT NOT NULL, reason TEXT)",
];

/// The events the payment service consumes.
pub const CONSUMES: &[&str] = &[types::INVENTORY_RESERVED];

/// The payment service.
#[derive(Debug, Clone)]
pub struct Payment {
    db: ServiceDb,
    processor: ProcessorClient,
}

impl Payment {
    /// The service on its database, charging through `processor`.
    #[must_use]
    pub const fn new(db: ServiceDb, processor: ProcessorClient) -> Self {
        Self { db, processor }
    }

    /// The database.
    #[must_use]
    pub const fn db(&self) -> &ServiceDb {
        &self.db
    }
}

impl<C: Tx> Handler<C> for Payment {
    async fn handle(&self, tx: &mut C, delivery: &Delivery) -> Result<Handled, BoxError> {
        let SagaEvent::InventoryReserved(line) = SagaEvent::from_delivery("payment", delivery)?
        else {
            return Ok(Handled::Ignored);
        };
        // The processor charges once per order id, so a retry after a
        // failure here is not a second charge. It being down (retries
        // spent, or the breaker open) is not the order's fault: transient,
        // tried again until it is back.
        let charge = self
            .processor
            .charge(&line.order_id, &line.card, line.amount_cents)
            .await
            .map_err(|status| Transient::new(format!("card processor: {status}")))?;
        let (status, reason, event) = match charge {
            Charge::Approved => ("succeeded", None, SagaEvent::PaymentSucceeded(line.clone())),
            Charge::Declined(reason) => (
                "failed",
                Some(reason.clone()),
                SagaEvent::PaymentFailed {
                    line: line.clone(),
                    reason,
                },
            ),
        };
        tx.execute(
            "INSERT INTO payments (order_id, amount_cents, status, reason) VALUES ($1, $2, $3, $4)",
            &[
                Param::Text(&line.order_id),
                Param::Int(line.amount_cents),
                Param::Text(status),
                Param::OptionalText(reason.as_deref()),
            ],
        )
        .await?;
        self.db.enqueue(tx, &event.to_event()).await?;
        Ok(Handled::Applied)
    }
}
