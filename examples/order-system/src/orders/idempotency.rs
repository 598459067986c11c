//! What an idempotency key is checked against: the request's fingerprint,
//! and the keys whose first request is being placed right now.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::TokenizedOrder;

/// The fingerprint of a request: SHA-256 (hex) of the order as canonical
/// JSON (every field, names sorted, no whitespace), so the same order
/// written differently is the same request. The card is its vault token
/// (one per card number), so no digest of a card number is kept.
pub(crate) fn fingerprint(order: &TokenizedOrder) -> String {
    // Destructured: a field added to the order is a compile error here
    // until it is part of the fingerprint.
    let TokenizedOrder {
        sku,
        quantity,
        card,
    } = order;
    let canonical =
        serde_json::json!({ "card_token": card.token, "quantity": quantity, "sku": sku });
    crate::auth::digest(&canonical.to_string())
}

/// The (user, idempotency key) pairs being placed in this process. An
/// entry lives as long as its [`Claim`]: the set holds no more than the
/// requests in flight.
#[derive(Debug, Clone, Default)]
pub(crate) struct InFlight {
    keys: Arc<Mutex<HashSet<(String, String)>>>,
}

impl InFlight {
    fn lock(&self) -> MutexGuard<'_, HashSet<(String, String)>> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Claims `user`'s `key` for one placement; `None` while another
    /// request holds it.
    pub(crate) fn claim(&self, user: &str, key: &str) -> Option<Claim> {
        let entry = (user.to_owned(), key.to_owned());
        self.lock().insert(entry.clone()).then(|| Claim {
            in_flight: self.clone(),
            entry,
        })
    }

    /// How many keys are being placed.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// A key claimed for one placement, released when dropped (placed,
/// refused, failed or cancelled by a client gone).
#[derive(Debug)]
pub(crate) struct Claim {
    in_flight: InFlight,
    entry: (String, String),
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.in_flight.lock().remove(&self.entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_claimed_once_at_a_time_per_user() {
        let in_flight = InFlight::default();
        let claim = in_flight.claim("alice", "k").unwrap();
        assert!(in_flight.claim("alice", "k").is_none());
        assert!(in_flight.claim("bob", "k").is_some(), "bob's key is his");
        drop(claim);
        assert_eq!(in_flight.len(), 0);
        assert!(in_flight.claim("alice", "k").is_some());
    }

    #[test]
    fn the_same_order_has_one_fingerprint_and_another_order_another() {
        let order = |quantity| TokenizedOrder {
            sku: "sku-1".to_owned(),
            quantity,
            card: crate::card::CardToken {
                token: "card_0123456789abcdef0123456789abcdef".to_owned(),
                last4: "4242".to_owned(),
            },
        };
        assert_eq!(fingerprint(&order(1)), fingerprint(&order(1)));
        assert_ne!(fingerprint(&order(1)), fingerprint(&order(2)));
        assert_eq!(fingerprint(&order(1)).len(), 64);
    }
}
