//! The encodings and randomness the verifier, challenge and state share.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error::RandomError;

/// base64url without padding (RFC 4648 section 5, RFC 7636 appendix A).
/// Decoding refuses non-zero trailing bits, so every accepted text has one
/// encoding.
pub(crate) const BASE64URL: base64::engine::GeneralPurpose = URL_SAFE_NO_PAD;

/// Fills `dest` from the operating system's random source.
pub(crate) fn random_bytes(dest: &mut [u8]) -> Result<(), RandomError> {
    getrandom::fill(dest).map_err(RandomError::new)
}
