//! The saga's events: what each service tells the others, as outbox events
//! about the order aggregate.

use palisade_outbox::{Delivery, Event};
use serde::{Deserialize, Serialize};

/// What an order asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// The order.
    pub order_id: String,
    /// Whose order it is (empty in events written before it was carried).
    #[serde(default)]
    pub user_id: String,
    /// The product.
    pub sku: String,
    /// How many.
    pub quantity: i64,
    /// What it costs, in cents.
    pub amount_cents: i64,
    /// The card to charge: its token in payment's vault (never the
    /// number; see [`card`](crate::card)).
    pub card_token: String,
    /// The card number's last four digits.
    pub card_last4: String,
}

/// One step of the saga.
///
/// Forward: `OrderCreated → InventoryReserved → PaymentSucceeded →
/// ShippingScheduled → OrderConfirmed`. Compensations: `PaymentFailed →
/// InventoryReleased → OrderCancelled`, and `InventoryRejected →
/// OrderCancelled`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum SagaEvent {
    /// Orders accepted an order.
    OrderCreated(Line),
    /// Inventory set the stock aside.
    InventoryReserved(Line),
    /// Inventory had not enough stock.
    InventoryRejected {
        /// The order.
        order_id: String,
    },
    /// Payment charged the card.
    PaymentSucceeded(Line),
    /// The card processor declined the card.
    PaymentFailed {
        /// The order.
        line: Line,
        /// The processor's reason.
        reason: String,
    },
    /// Inventory put the reserved stock back (compensating the
    /// reservation).
    InventoryReleased {
        /// The order.
        order_id: String,
    },
    /// Shipping scheduled the parcel; the reserved stock is shipped.
    ShippingScheduled(Line),
    /// The order is complete.
    OrderConfirmed {
        /// The order.
        order_id: String,
    },
    /// The order is cancelled.
    OrderCancelled {
        /// The order.
        order_id: String,
        /// Why: `out_of_stock` or `payment_declined`.
        reason: String,
    },
}

/// The event type names, as the outbox and the broker know them.
pub mod types {
    /// [`SagaEvent::OrderCreated`](super::SagaEvent::OrderCreated).
    pub const ORDER_CREATED: &str = "OrderCreated";
    /// [`SagaEvent::InventoryReserved`](super::SagaEvent::InventoryReserved).
    pub const INVENTORY_RESERVED: &str = "InventoryReserved";
    /// [`SagaEvent::InventoryRejected`](super::SagaEvent::InventoryRejected).
    pub const INVENTORY_REJECTED: &str = "InventoryRejected";
    /// [`SagaEvent::PaymentSucceeded`](super::SagaEvent::PaymentSucceeded).
    pub const PAYMENT_SUCCEEDED: &str = "PaymentSucceeded";
    /// [`SagaEvent::PaymentFailed`](super::SagaEvent::PaymentFailed).
    pub const PAYMENT_FAILED: &str = "PaymentFailed";
    /// [`SagaEvent::InventoryReleased`](super::SagaEvent::InventoryReleased).
    pub const INVENTORY_RELEASED: &str = "InventoryReleased";
    /// [`SagaEvent::ShippingScheduled`](super::SagaEvent::ShippingScheduled).
    pub const SHIPPING_SCHEDULED: &str = "ShippingScheduled";
    /// [`SagaEvent::OrderConfirmed`](super::SagaEvent::OrderConfirmed).
    pub const ORDER_CONFIRMED: &str = "OrderConfirmed";
    /// [`SagaEvent::OrderCancelled`](super::SagaEvent::OrderCancelled).
    pub const ORDER_CANCELLED: &str = "OrderCancelled";
}

impl SagaEvent {
    /// The event's type name.
    #[must_use]
    pub const fn type_name(&self) -> &'static str {
        match self {
            Self::OrderCreated(_) => types::ORDER_CREATED,
            Self::InventoryReserved(_) => types::INVENTORY_RESERVED,
            Self::InventoryRejected { .. } => types::INVENTORY_REJECTED,
            Self::PaymentSucceeded(_) => types::PAYMENT_SUCCEEDED,
            Self::PaymentFailed { .. } => types::PAYMENT_FAILED,
            Self::InventoryReleased { .. } => types::INVENTORY_RELEASED,
            Self::ShippingScheduled(_) => types::SHIPPING_SCHEDULED,
            Self::OrderConfirmed { .. } => types::ORDER_CONFIRMED,
            Self::OrderCancelled { .. } => types::ORDER_CANCELLED,
        }
    }

    /// The order the event is about: the aggregate, so one order's events
    /// are published in order.
    #[must_use]
    pub fn order_id(&self) -> &str {
        match self {
            Self::OrderCreated(line)
            | Self::InventoryReserved(line)
            | Self::PaymentSucceeded(line)
            | Self::ShippingScheduled(line)
            | Self::PaymentFailed { line, .. } => &line.order_id,
            Self::InventoryRejected { order_id }
            | Self::InventoryReleased { order_id }
            | Self::OrderConfirmed { order_id }
            | Self::OrderCancelled { order_id, .. } => order_id,
        }
    }

    /// The outbox event carrying it (JSON), in the current trace.
    #[must_use]
    pub fn to_event(&self) -> Event {
        let payload = serde_json::to_vec(self).unwrap_or_default();
        Event::new("order", self.order_id(), self.type_name(), payload)
            .content_type("application/json")
    }

    /// Reads the event a delivery carries, and logs (at debug level) that
    /// `service` handles it, with the trace it belongs to.
    ///
    /// # Errors
    ///
    /// When the payload is not a saga event.
    pub fn from_delivery(service: &str, delivery: &Delivery) -> Result<Self, serde_json::Error> {
        let event: Self = serde_json::from_slice(&delivery.payload)?;
        tracing::debug!(
            service,
            event = event.type_name(),
            order_id = event.order_id(),
            trace_id = current_trace_id(),
            attempt = delivery.attempt,
            "saga step"
        );
        Ok(event)
    }
}

/// The id of the trace the current task runs in, for logs; empty outside
/// any.
#[must_use]
pub fn current_trace_id() -> String {
    palisade_tracecontext::TraceContext::current()
        .map(|context| context.trace_id().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_and_name_their_type_and_order() {
        let line = Line {
            order_id: "o-1".into(),
            user_id: "alice".into(),
            sku: "sku-1".into(),
            quantity: 2,
            amount_cents: 4200,
            card_token: "card_0123456789abcdef0123456789abcdef".into(),
            card_last4: "4242".into(),
        };
        let failed = SagaEvent::PaymentFailed {
            line,
            reason: "declined".into(),
        };
        let event = failed.to_event();
        assert_eq!(event.event_type(), "PaymentFailed");
        assert_eq!(event.aggregate_id(), "o-1");
        let back: SagaEvent = serde_json::from_slice(event.payload()).unwrap();
        assert_eq!(back, failed);
    }
}
