//! The code verifier: the client's secret for one authorization request.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use crate::encoding::{BASE64URL, random_bytes};
use crate::error::{GenerateError, RandomError, VerifierError};

/// The shortest code verifier RFC 7636 allows (section 4.1).
pub const MIN_VERIFIER_LEN: usize = 43;
/// The longest code verifier RFC 7636 allows (section 4.1).
pub const MAX_VERIFIER_LEN: usize = 128;

/// Random octets behind a default verifier: 32 octets encode to exactly
/// [`MIN_VERIFIER_LEN`] base64url characters, 256 bits of entropy.
const DEFAULT_ENTROPY: usize = 32;

/// A PKCE code verifier (RFC 7636 section 4.1): 43 to 128 characters from
/// the unreserved set `[A-Za-z0-9-._~]`.
///
/// A value of this type is always valid: it is either generated from the
/// operating system's random source or parsed with its grammar checked.
///
/// The verifier is a secret until the token request is made. Its `Debug`
/// output shows only its length, it has no `Display`, its comparison runs
/// in constant time, and its memory is zeroed when it is dropped. Read it
/// with [`expose_secret`](Self::expose_secret) to put it in the token
/// request.
///
/// # Example
///
/// ```
/// use palisade_pkce::CodeVerifier;
///
/// let verifier = CodeVerifier::generate();
/// assert_eq!(verifier.expose_secret().len(), 43);
/// assert_eq!(format!("{verifier:?}"), "CodeVerifier(<redacted, 43 chars>)");
///
/// let long = CodeVerifier::generate_with_length(128)?;
/// assert_eq!(long.expose_secret().len(), 128);
///
/// // One received in a token request is parsed, which checks its grammar.
/// let parsed: CodeVerifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".parse()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct CodeVerifier {
    secret: String,
}

impl CodeVerifier {
    /// Generates a verifier of 43 characters from 32 octets of the operating
    /// system's random source, as RFC 7636 section 4.1 recommends.
    ///
    /// # Panics
    ///
    /// Panics if the operating system's random source fails, which on the
    /// platforms Rust supports happens only when it is missing altogether.
    /// Use [`try_generate`](Self::try_generate) to handle that case.
    #[must_use]
    pub fn generate() -> Self {
        match Self::try_generate() {
            Ok(verifier) => verifier,
            Err(err) => panic!("{err}"),
        }
    }

    /// Generates a verifier like [`generate`](Self::generate), returning an
    /// error instead of panicking when the random source fails.
    ///
    /// # Errors
    ///
    /// [`RandomError`] when the operating system's random source fails.
    pub fn try_generate() -> Result<Self, RandomError> {
        let mut octets = Zeroizing::new([0u8; DEFAULT_ENTROPY]);
        random_bytes(octets.as_mut_slice())?;
        Ok(Self {
            secret: BASE64URL.encode(octets.as_slice()),
        })
    }

    /// Generates a verifier of exactly `len` characters, each carrying six
    /// random bits (43 characters carry 258 bits, 128 carry 768).
    ///
    /// # Errors
    ///
    /// [`GenerateError::InvalidLength`] when `len` is outside 43..=128, and
    /// [`GenerateError::Random`] when the random source fails.
    pub fn generate_with_length(len: usize) -> Result<Self, GenerateError> {
        if !(MIN_VERIFIER_LEN..=MAX_VERIFIER_LEN).contains(&len) {
            return Err(GenerateError::InvalidLength { len });
        }
        // 3 octets encode to 4 characters: draw enough octets for `len`
        // characters, encode, and keep the first `len`.
        let mut octets = Zeroizing::new([0u8; MAX_VERIFIER_LEN * 3 / 4]);
        let needed = len.div_ceil(4) * 3;
        random_bytes(&mut octets[..needed])?;
        let mut secret = BASE64URL.encode(&octets[..needed]);
        secret.truncate(len);
        Ok(Self { secret })
    }

    /// Parses a verifier, checking its length (43 to 128 characters) and
    /// that every character is in the unreserved set `[A-Za-z0-9-._~]`.
    ///
    /// This is the check an authorization server must make before hashing a
    /// verifier it receives.
    ///
    /// # Errors
    ///
    /// [`VerifierError`] naming what is wrong: the length, or the first
    /// character outside the unreserved set and where it stands.
    pub fn parse(input: &str) -> Result<Self, VerifierError> {
        check_verifier_grammar(input)?;
        Ok(Self {
            secret: input.to_owned(),
        })
    }

    /// The verifier's characters, to send as `code_verifier` in the token
    /// request. Keep them out of logs and URLs.
    #[must_use]
    pub fn expose_secret(&self) -> &str {
        &self.secret
    }
}

/// Checks the verifier grammar of RFC 7636 section 4.1 without copying.
pub(crate) fn check_verifier_grammar(input: &str) -> Result<(), VerifierError> {
    let len = input.len();
    // Refuse oversized input before looking at its characters, so a huge
    // value costs nothing to reject.
    if len > MAX_VERIFIER_LEN {
        return Err(VerifierError::TooLong { len });
    }
    if let Some((index, ch)) = input.char_indices().find(|&(_, ch)| !is_unreserved(ch)) {
        return Err(VerifierError::InvalidCharacter { index, ch });
    }
    if len < MIN_VERIFIER_LEN {
        return Err(VerifierError::TooShort { len });
    }
    Ok(())
}

/// `unreserved` from RFC 3986 section 2.3, the verifier's alphabet.
const fn is_unreserved(ch: char) -> bool {
    ch.is_ascii_alphanumeric() || matches!(ch, '-' | '.' | '_' | '~')
}

impl FromStr for CodeVerifier {
    type Err = VerifierError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for CodeVerifier {
    type Error = VerifierError;

    /// Takes ownership of `value` when it is a valid verifier, so no copy of
    /// the secret is made; an invalid value is zeroed before it is dropped.
    fn try_from(mut value: String) -> Result<Self, Self::Error> {
        match check_verifier_grammar(&value) {
            Ok(()) => Ok(Self { secret: value }),
            Err(err) => {
                value.zeroize();
                Err(err)
            }
        }
    }
}

impl PartialEq for CodeVerifier {
    /// Compares in constant time for verifiers of equal length.
    fn eq(&self, other: &Self) -> bool {
        self.secret.as_bytes().ct_eq(other.secret.as_bytes()).into()
    }
}

impl Eq for CodeVerifier {}

impl fmt::Debug for CodeVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CodeVerifier(<redacted, {} chars>)", self.secret.len())
    }
}

impl Drop for CodeVerifier {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_generated_length_is_exact_and_parses() {
        for len in MIN_VERIFIER_LEN..=MAX_VERIFIER_LEN {
            let verifier = CodeVerifier::generate_with_length(len).unwrap();
            assert_eq!(verifier.expose_secret().len(), len);
            CodeVerifier::parse(verifier.expose_secret()).unwrap();
        }
    }

    #[test]
    fn lengths_outside_the_rfc_range_are_refused() {
        for len in [0, 1, 42, 129, usize::MAX] {
            assert!(matches!(
                CodeVerifier::generate_with_length(len),
                Err(GenerateError::InvalidLength { len: l }) if l == len
            ));
        }
    }

    #[test]
    fn two_generated_verifiers_differ() {
        assert_ne!(CodeVerifier::generate(), CodeVerifier::generate());
    }

    #[test]
    fn character_errors_name_the_first_offender() {
        assert_eq!(
            CodeVerifier::parse("abc def").unwrap_err(),
            VerifierError::InvalidCharacter { index: 3, ch: ' ' }
        );
        assert_eq!(
            CodeVerifier::parse("ééé").unwrap_err(),
            VerifierError::InvalidCharacter { index: 0, ch: 'é' }
        );
    }
}
