//! The card processor the payment service calls: a simulator that declines
//! some cards.
//!
//! In the embedded default it runs in process. Cards ending in `0002` are
//! declined (`insufficient_funds`); every other card is approved. A charge
//! is idempotent per order id: asking again answers as the first time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// The processor's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Charge {
    /// The card was charged.
    Approved,
    /// The card was not charged, and why.
    Declined(String),
}

/// The card that is always declined.
pub const DECLINED_CARD: &str = "4000000000000002";
/// A card that is always approved.
pub const GOOD_CARD: &str = "4242424242424242";

/// The simulated card processor.
#[derive(Debug, Clone, Default)]
pub struct CardProcessor {
    charges: Arc<Mutex<HashMap<String, Charge>>>,
}

impl CardProcessor {
    /// Charges `amount_cents` to `card` for `order_id`, once.
    ///
    /// # Errors
    ///
    /// Never in process; the signature leaves room for a remote processor.
    #[allow(clippy::unused_async)]
    pub async fn charge(
        &self,
        order_id: &str,
        card: &str,
        amount_cents: i64,
    ) -> Result<Charge, palisade_outbox::BoxError> {
        let answer = if card.ends_with("0002") {
            Charge::Declined("insufficient_funds".to_owned())
        } else if amount_cents <= 0 {
            Charge::Declined("invalid_amount".to_owned())
        } else {
            Charge::Approved
        };
        let mut charges = self.charges.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(charges.entry(order_id.to_owned()).or_insert(answer).clone())
    }
}
