//! Card numbers: checked where they come in (the gateway), then held as
//! little as possible.
//!
//! A [`CardNumber`] is 12 to 19 ASCII digits passing the Luhn check; it
//! cannot be made otherwise (reading one from JSON checks it too). Its
//! `Debug` shows the last four digits only, its memory is wiped when it is
//! dropped, and reading it from JSON never echoes a refused value in the
//! error. Past the gateway an order carries a [`CardToken`] instead: the
//! token payment's vault keeps the number under
//! ([`payment::vault`](crate::payment::vault)), and the last four digits.
//!
//! # Example
//!
//! ```
//! use palisade_order_system::card::CardNumber;
//!
//! let card = CardNumber::parse("4242424242424242").unwrap();
//! assert_eq!(card.last4(), "4242");
//! assert_eq!(format!("{card:?}"), "CardNumber(…4242)");
//! assert!(CardNumber::parse("4242424242424241").is_err());
//! ```

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Whether `digits` (ASCII digits only) pass the Luhn check: from the
/// right, every second digit doubled (less 9 when over 9), the sum a
/// multiple of 10. Anything but ASCII digits, or nothing, fails.
#[must_use]
pub fn luhn(digits: &str) -> bool {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let sum: u32 = digits
        .bytes()
        .rev()
        .map(|b| u32::from(b - b'0'))
        .enumerate()
        .map(|(at, digit)| match (at % 2 == 1, digit * 2) {
            (true, doubled) if doubled > 9 => doubled - 9,
            (true, doubled) => doubled,
            (false, _) => digit,
        })
        .sum();
    sum.is_multiple_of(10)
}

/// A card number that is not one: the reason, which never holds the
/// number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidCard;

impl std::fmt::Display for InvalidCard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "card must be a card number: a string of 12 to 19 digits passing the Luhn check",
        )
    }
}

impl std::error::Error for InvalidCard {}

/// A card number: 12 to 19 ASCII digits passing the [`luhn`] check.
///
/// `Debug` shows the last four digits only; the digits are wiped from
/// memory on drop. [`expose`](Self::expose) is for the two that need the
/// number: payment's vault, and the card processor.
#[derive(Clone, PartialEq, Eq)]
pub struct CardNumber(Zeroizing<String>);

impl CardNumber {
    /// Checks `digits`.
    ///
    /// # Errors
    ///
    /// [`InvalidCard`] unless `digits` are 12 to 19 ASCII digits passing
    /// the Luhn check.
    pub fn parse(digits: &str) -> Result<Self, InvalidCard> {
        if (12..=19).contains(&digits.len()) && luhn(digits) {
            Ok(Self(Zeroizing::new(digits.to_owned())))
        } else {
            Err(InvalidCard)
        }
    }

    /// The digits.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The last four digits.
    #[must_use]
    pub fn last4(&self) -> &str {
        &self.0[self.0.len() - 4..]
    }
}

impl std::fmt::Debug for CardNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CardNumber(…{})", self.last4())
    }
}

impl Serialize for CardNumber {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.expose())
    }
}

impl<'de> Deserialize<'de> for CardNumber {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Any: serde_json's `deserialize_str` would quote a number itself.
        deserializer.deserialize_any(CardVisitor)
    }
}

/// Reads a card number from a string, and refuses anything else without
/// echoing it (serde's own "invalid type" error would quote a number).
struct CardVisitor;

impl serde::de::Visitor<'_> for CardVisitor {
    type Value = CardNumber;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a card number")
    }

    fn visit_str<E: serde::de::Error>(self, digits: &str) -> Result<CardNumber, E> {
        CardNumber::parse(digits).map_err(E::custom)
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<CardNumber, E> {
        Err(E::custom(InvalidCard))
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<CardNumber, E> {
        Err(E::custom(InvalidCard))
    }

    fn visit_i128<E: serde::de::Error>(self, _: i128) -> Result<CardNumber, E> {
        Err(E::custom(InvalidCard))
    }

    fn visit_u128<E: serde::de::Error>(self, _: u128) -> Result<CardNumber, E> {
        Err(E::custom(InvalidCard))
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<CardNumber, E> {
        Err(E::custom(InvalidCard))
    }
}

/// A card as the services past the gateway know it: payment's vault
/// token for the number, and its last four digits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardToken {
    /// The vault's token: `card_` and 32 hex digits.
    pub token: String,
    /// The number's last four digits.
    pub last4: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_accepts_valid_numbers_and_refuses_the_rest() {
        for valid in [
            "4242424242424242",
            "4000000000000002",
            "5555555555554444",
            "378282246310005",
            "0",
        ] {
            assert!(luhn(valid), "{valid}");
        }
        for invalid in [
            "4242424242424241",
            "4000000000000003",
            "1",
            "",
            "4242 4242 4242 4242",
            "424242424242424x",
            "４２４２",
        ] {
            assert!(!luhn(invalid), "{invalid}");
        }
    }

    /// A Luhn-valid number of `len` digits: `4`, zeros, and the check
    /// digit.
    fn valid_of_length(len: usize) -> String {
        let body = format!("4{}", "0".repeat(len - 2));
        let check = (0..10)
            .map(|d| format!("{body}{d}"))
            .find(|candidate| luhn(candidate))
            .unwrap();
        assert_eq!(check.len(), len);
        check
    }

    #[test]
    fn a_card_number_is_12_to_19_digits_passing_luhn() {
        assert_eq!(CardNumber::parse(&valid_of_length(11)), Err(InvalidCard));
        assert!(CardNumber::parse(&valid_of_length(12)).is_ok());
        assert!(CardNumber::parse(&valid_of_length(19)).is_ok());
        assert_eq!(CardNumber::parse(&valid_of_length(20)), Err(InvalidCard));
        assert_eq!(CardNumber::parse("4242424242424241"), Err(InvalidCard));
        assert_eq!(CardNumber::parse("42424242424242a2"), Err(InvalidCard));
        assert_eq!(CardNumber::parse("+424242424242424"), Err(InvalidCard));
    }

    #[test]
    fn debug_and_errors_show_the_last_four_digits_at_most() {
        let card = CardNumber::parse("4242424242424242").unwrap();
        assert_eq!(format!("{card:?}"), "CardNumber(…4242)");
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Body {
            card: CardNumber,
        }
        let body: Body = serde_json::from_str(r#"{"card":"4242424242424242"}"#).unwrap();
        assert!(!format!("{body:?}").contains("42424242"), "{body:?}");
        assert_eq!(
            serde_json::to_string(&card).unwrap(),
            r#""4242424242424242""#
        );
        for refused in [
            r#"{"card":"4242424242424241"}"#,
            r#"{"card":4242424242424241}"#,
            r#"{"card":42424242424242411234}"#,
            r#"{"card":4242424242424241.5}"#,
        ] {
            let error = serde_json::from_str::<Body>(refused)
                .unwrap_err()
                .to_string();
            assert!(error.starts_with("card must be"), "{error}");
            assert!(!error.contains("424242"), "{error}");
        }
    }
}
