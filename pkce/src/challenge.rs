//! The code challenge: what the client sends in the authorization request.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::encoding::BASE64URL;
use crate::error::{ChallengeError, VerifierError};
use crate::verifier::{CodeVerifier, check_verifier_grammar};

/// Length of an `S256` challenge: a 32-octet digest in base64url.
const S256_LEN: usize = 43;

/// How the challenge is derived from the verifier (RFC 7636 section 4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChallengeMethod {
    /// `S256`: `BASE64URL(SHA256(ASCII(code_verifier)))`. The only method a
    /// client should use.
    S256,
    /// `plain`: the challenge is the verifier itself. It protects nothing
    /// against an attacker who can read the authorization request, so a
    /// server accepts it only when [`allow_plain`] is set.
    ///
    /// [`allow_plain`]: crate::ServerPolicy::allow_plain
    Plain,
}

impl ChallengeMethod {
    /// The method's name as it appears in `code_challenge_method`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::S256 => "S256",
            Self::Plain => "plain",
        }
    }
}

impl fmt::Display for ChallengeMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ChallengeMethod {
    type Err = ChallengeError;

    /// Parses `S256` or `plain`, case-sensitively as RFC 7636 spells them.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "S256" => Ok(Self::S256),
            "plain" => Ok(Self::Plain),
            _ => Err(ChallengeError::UnknownMethod),
        }
    }
}

/// A PKCE code challenge and its method (RFC 7636 section 4.2).
///
/// A client derives it from its [`CodeVerifier`]; a server parses the one
/// it receives with [`CodeChallenge::parse`] (or, applying its policy, with
/// [`ServerPolicy::accept`](crate::ServerPolicy::accept)), stores
/// [`as_str`](Self::as_str) and [`method`](Self::method) with the
/// authorization code, and parses them back at the token request.
///
/// # Example
///
/// ```
/// use palisade_pkce::{ChallengeMethod, CodeChallenge, CodeVerifier};
///
/// let verifier: CodeVerifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".parse()?;
/// let challenge = CodeChallenge::s256(&verifier);
/// assert_eq!(challenge.as_str(), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
/// assert_eq!(challenge.method(), ChallengeMethod::S256);
///
/// // What a server stored parses back to the same challenge.
/// let stored = CodeChallenge::parse(challenge.as_str(), ChallengeMethod::S256)?;
/// assert_eq!(stored, challenge);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CodeChallenge {
    method: ChallengeMethod,
    value: String,
}

impl CodeChallenge {
    /// The `S256` challenge of `verifier`.
    #[must_use]
    pub fn s256(verifier: &CodeVerifier) -> Self {
        let encoded = s256_encode(verifier.expose_secret());
        Self {
            method: ChallengeMethod::S256,
            value: String::from_utf8_lossy(&encoded).into_owned(),
        }
    }

    /// The challenge of `verifier` under `method`.
    ///
    /// Prefer [`s256`](Self::s256): `plain` sends the verifier itself.
    #[must_use]
    pub fn new(verifier: &CodeVerifier, method: ChallengeMethod) -> Self {
        match method {
            ChallengeMethod::S256 => Self::s256(verifier),
            ChallengeMethod::Plain => Self {
                method,
                value: verifier.expose_secret().to_owned(),
            },
        }
    }

    /// Parses a received challenge, checking the grammar of its method: an
    /// `S256` challenge is 43 base64url characters that encode exactly 32
    /// octets; a `plain` one is a valid verifier (43 to 128 unreserved
    /// characters).
    ///
    /// This checks grammar only. Whether the server accepts the method is
    /// [`ServerPolicy::accept`](crate::ServerPolicy::accept)'s decision.
    ///
    /// # Errors
    ///
    /// [`ChallengeError::InvalidLength`], [`ChallengeError::InvalidCharacter`]
    /// or, for `S256`, [`ChallengeError::NonCanonical`].
    pub fn parse(value: &str, method: ChallengeMethod) -> Result<Self, ChallengeError> {
        match method {
            ChallengeMethod::S256 => check_s256_grammar(value)?,
            ChallengeMethod::Plain => check_verifier_grammar(value).map_err(|err| match err {
                VerifierError::TooShort { len } | VerifierError::TooLong { len } => {
                    ChallengeError::InvalidLength { method, len }
                }
                VerifierError::InvalidCharacter { index, ch } => {
                    ChallengeError::InvalidCharacter { method, index, ch }
                }
            })?,
        }
        Ok(Self {
            method,
            value: value.to_owned(),
        })
    }

    /// The challenge as sent in `code_challenge`.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.value
    }

    /// The method, as sent in `code_challenge_method`.
    #[must_use]
    pub const fn method(&self) -> ChallengeMethod {
        self.method
    }

    /// Whether `verifier`, already checked against the verifier grammar,
    /// derives this challenge. The comparison runs in constant time.
    pub(crate) fn is_derived_from(&self, verifier: &str) -> bool {
        let matches = match self.method {
            ChallengeMethod::S256 => s256_encode(verifier).ct_eq(self.value.as_bytes()),
            ChallengeMethod::Plain => verifier.as_bytes().ct_eq(self.value.as_bytes()),
        };
        matches.into()
    }
}

impl fmt::Display for CodeChallenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.value)
    }
}

/// `BASE64URL(SHA256(verifier))` into a stack buffer.
fn s256_encode(verifier: &str) -> [u8; S256_LEN] {
    let digest = Sha256::digest(verifier.as_bytes());
    let mut encoded = [0u8; S256_LEN];
    let written = BASE64URL
        .encode_slice(digest, &mut encoded)
        .expect("a 32-octet digest encodes to 43 base64url characters");
    debug_assert_eq!(written, S256_LEN);
    encoded
}

fn check_s256_grammar(value: &str) -> Result<(), ChallengeError> {
    let method = ChallengeMethod::S256;
    if value.len() != S256_LEN {
        return Err(ChallengeError::InvalidLength {
            method,
            len: value.len(),
        });
    }
    if let Some((index, ch)) = value
        .char_indices()
        .find(|&(_, ch)| !(ch.is_ascii_alphanumeric() || ch == '-' || ch == '_'))
    {
        return Err(ChallengeError::InvalidCharacter { method, index, ch });
    }
    // 43 characters hold 258 bits: the last one's two low bits must be zero
    // for the text to be the encoding of a 32-octet digest.
    let mut digest = [0u8; 32];
    match BASE64URL.decode_slice(value, &mut digest) {
        Ok(32) => Ok(()),
        _ => Err(ChallengeError::NonCanonical),
    }
}
