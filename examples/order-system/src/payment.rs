//! The payment service: charges the card of every order whose stock is
//! reserved, through the card processor over gRPC (with retry and a
//! circuit breaker, see [`processor::stack`](crate::processor::stack)).

use std::future::Future;

use palisade_outbox::{BoxError, Delivery, Handled, Handler, Transient};

use crate::db::{Param, ServiceDb, Tx};
use crate::events::{SagaEvent, types};
use crate::processor::{Breaker, Charge, ProcessorClient};

/// The payment service's tables.
pub const TABLES: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS payments (order_id TEXT PRIMARY KEY, amount_cents BIGINT NOT NULL, \
     status TEXT NOT NULL, reason TEXT)",
    // Every state change of the card processor's breaker, by every
    // replica: its history survives restarts and is read by the books.
    "CREATE TABLE IF NOT EXISTS breaker_transitions (at_ms BIGINT NOT NULL, from_state TEXT NOT NULL, \
     to_state TEXT NOT NULL)",
];

/// The card processor's breaker, as payment's records tell: its last
/// state and how many times it opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerHistory {
    /// The last state any replica's breaker moved to (`Closed` if none
    /// ever moved).
    pub state: String,
    /// Transitions to `Open`.
    pub opens: u64,
}

impl BreakerHistory {
    /// Reads the history from payment's database.
    ///
    /// # Errors
    ///
    /// The database's error.
    pub async fn read(db: &ServiceDb) -> Result<Self, sqlx::Error> {
        let (opens, state): (i64, Option<String>) = crate::on_pool!(db, |pool| sqlx::query_as(
            "SELECT (SELECT count(*) FROM breaker_transitions WHERE to_state = 'Open'), \
             (SELECT to_state FROM breaker_transitions ORDER BY at_ms DESC LIMIT 1)"
        )
        .fetch_one(pool)
        .await)?;
        Ok(Self {
            state: state.unwrap_or_else(|| "Closed".to_owned()),
            opens: u64::try_from(opens).unwrap_or(0),
        })
    }
}

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

    /// Records every transition of `breaker` until `stopped` completes.
    /// A record that cannot be written is logged and skipped: the history
    /// is for people, the breaker works without it.
    pub async fn record_transitions(&self, breaker: &Breaker, stopped: impl Future<Output = ()>) {
        use tokio::sync::broadcast::error::RecvError;
        let mut transitions = breaker.subscribe();
        tokio::pin!(stopped);
        loop {
            let transition = tokio::select! {
                () = &mut stopped => return,
                transition = transitions.recv() => transition,
            };
            let transition = match transition {
                Ok(transition) => transition,
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "breaker transitions missed");
                    continue;
                }
                Err(RecvError::Closed) => return,
            };
            let (from, to) = (
                format!("{:?}", transition.from),
                format!("{:?}", transition.to),
            );
            let recorded = crate::on_pool!(&self.db, |pool| {
                sqlx::query(
                "INSERT INTO breaker_transitions (at_ms, from_state, to_state) VALUES ($1, $2, $3)"
            )
            .bind(crate::orders::now_ms())
            .bind(&from)
            .bind(&to)
            .execute(pool)
            .await
            .map(drop)
            });
            if let Err(error) = recorded {
                tracing::warn!(%error, "breaker transition not recorded");
            }
        }
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
