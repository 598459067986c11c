//! Random, URL-safe values that bind a response to its request: OAuth
//! `state` and OpenID Connect `nonce`.

use std::fmt;

use base64::Engine as _;
use subtle::ConstantTimeEq;

use crate::encoding::{BASE64URL, random_bytes};
use crate::error::RandomError;

/// Random octets behind a state or nonce: 256 bits, 43 characters.
const ENTROPY: usize = 32;

fn random_token() -> Result<String, RandomError> {
    let mut octets = [0u8; ENTROPY];
    random_bytes(&mut octets)?;
    Ok(BASE64URL.encode(octets))
}

macro_rules! random_token_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq)]
        pub struct $name {
            value: String,
        }

        impl $name {
            #[doc = concat!("Generates a ", $what, " of 43 base64url characters from 32 octets")]
            /// of the operating system's random source.
            ///
            /// # Panics
            ///
            /// Panics if the operating system's random source fails; use
            /// `try_generate` to handle that case.
            #[must_use]
            pub fn generate() -> Self {
                match Self::try_generate() {
                    Ok(token) => token,
                    Err(err) => panic!("{err}"),
                }
            }

            #[doc = concat!("Generates a ", $what, ", returning an error instead of panicking")]
            /// when the random source fails.
            ///
            /// # Errors
            ///
            /// [`RandomError`] when the operating system's random source
            /// fails.
            pub fn try_generate() -> Result<Self, RandomError> {
                random_token().map(|value| Self { value })
            }

            #[doc = concat!("Restores a ", $what, " kept between the request and the response,")]
            /// for instance in a session. An empty value (a session that
            /// kept none, read with a default) matches nothing.
            #[must_use]
            pub fn from_stored(value: impl Into<String>) -> Self {
                Self { value: value.into() }
            }

            /// The value, to send in the request and to keep.
            #[must_use]
            pub fn as_str(&self) -> &str {
                &self.value
            }

            #[doc = concat!("Whether `received` is this ", $what, ", compared in constant time;")]
            /// never when this one is empty (restored from a session that
            /// kept none: a callback no request of this client started,
            /// with an empty parameter, matched it).
            #[must_use]
            pub fn matches(&self, received: &str) -> bool {
                !self.value.is_empty() && bool::from(self.value.as_bytes().ct_eq(received.as_bytes()))
            }
        }

        /// Redacted, as the code verifier's is: a session or a request
        /// logged whole would give the value away, which is all an
        /// attacker needs to answer in its place.
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}(<redacted, {} chars>)", stringify!($name), self.value.len())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.value)
            }
        }
    };
}

random_token_type!(
    /// The OAuth `state` parameter: a random value the client sends in the
    /// authorization request and checks on the redirect, so a response it
    /// did not ask for (cross-site request forgery) is refused.
    ///
    /// # Example
    ///
    /// ```
    /// use palisade_pkce::State;
    ///
    /// let state = State::generate();
    /// // ... sent in the authorization request, kept in the session ...
    /// let kept = State::from_stored(state.as_str());
    /// assert!(kept.matches(state.as_str()));
    /// assert!(!kept.matches("forged"));
    /// ```
    State,
    "state"
);

random_token_type!(
    /// The OpenID Connect `nonce`: a random value the client sends in the
    /// authorization request and finds again in the ID token, so a replayed
    /// token is refused.
    ///
    /// # Example
    ///
    /// ```
    /// use palisade_pkce::Nonce;
    ///
    /// let nonce = Nonce::generate();
    /// assert_eq!(nonce.as_str().len(), 43);
    /// assert!(nonce.matches(nonce.as_str()));
    /// ```
    Nonce,
    "nonce"
);

#[cfg(test)]
mod tests {
    use super::{Nonce, State};

    #[test]
    fn debug_keeps_the_value_out_of_logs() {
        let state = State::from_stored("s3cr3t-state");
        let nonce = Nonce::from_stored("s3cr3t-nonce");
        for shown in [format!("{state:?}"), format!("{nonce:?}")] {
            assert!(!shown.contains("s3cr3t"), "{shown}");
            assert!(shown.contains("12 chars"), "{shown}");
        }
    }

    /// A session that kept no state, read with a default, matched a
    /// callback with an empty `state` (login cross-site request forgery).
    #[test]
    fn an_empty_stored_value_matches_nothing() {
        assert!(!State::from_stored("").matches(""));
        assert!(!Nonce::from_stored(String::new()).matches(""));
        let state = State::generate();
        assert!(State::from_stored(state.as_str()).matches(state.as_str()));
        assert!(!State::from_stored(state.as_str()).matches(""));
    }
}
