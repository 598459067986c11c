//! RFC 7636 written as plainly as possible, for the targets to compare
//! against. Shared by the pkce targets through `#[path]`.

// Each target uses part of the reference.
#![allow(dead_code)]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// Section 4.1: 43 to 128 characters of `[A-Za-z0-9-._~]`.
pub fn is_verifier(s: &str) -> bool {
    let unreserved = |c: char| c.is_ascii_alphanumeric() || "-._~".contains(c);
    (43..=128).contains(&s.chars().count()) && s.chars().all(unreserved)
}

/// Section 4.2, `S256`.
pub fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// An `S256` challenge is the base64url text of a 32-octet digest.
pub fn is_s256_challenge(s: &str) -> bool {
    URL_SAFE_NO_PAD
        .decode(s)
        .is_ok_and(|octets| octets.len() == 32 && URL_SAFE_NO_PAD.encode(&octets) == s)
}
