//! Error types.
//!
//! Every error says what is wrong in lowercase, without echoing secrets, and
//! those a server returns to a client name the OAuth error code to answer
//! with ([`ChallengeError::oauth_error`], [`VerifyError::oauth_error`]).

use std::error::Error;
use std::fmt;

use crate::challenge::ChallengeMethod;
use crate::verifier::{MAX_VERIFIER_LEN, MIN_VERIFIER_LEN};

/// A code verifier that breaks the grammar of RFC 7636 section 4.1.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifierError {
    /// Fewer than 43 characters.
    TooShort {
        /// The length of the input, in bytes.
        len: usize,
    },
    /// More than 128 characters.
    TooLong {
        /// The length of the input, in bytes.
        len: usize,
    },
    /// A character outside the unreserved set `[A-Za-z0-9-._~]`.
    InvalidCharacter {
        /// Byte offset of the first such character.
        index: usize,
        /// The character.
        ch: char,
    },
}

impl fmt::Display for VerifierError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort { len } => write!(
                f,
                "code verifier has {len} characters, fewer than the {MIN_VERIFIER_LEN} required"
            ),
            Self::TooLong { len } => write!(
                f,
                "code verifier has {len} bytes, more than the {MAX_VERIFIER_LEN} characters allowed"
            ),
            Self::InvalidCharacter { index, ch } => write!(
                f,
                "code verifier has {ch:?} at byte {index}, outside [A-Za-z0-9-._~]"
            ),
        }
    }
}

impl Error for VerifierError {}

/// The operating system's random source failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RandomError {
    inner: getrandom::Error,
}

impl RandomError {
    pub(crate) const fn new(inner: getrandom::Error) -> Self {
        Self { inner }
    }
}

impl fmt::Display for RandomError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "operating system random source failed: {}", self.inner)
    }
}

impl Error for RandomError {}

/// Generating a code verifier of a chosen length failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GenerateError {
    /// The requested length is outside 43..=128.
    InvalidLength {
        /// The requested length.
        len: usize,
    },
    /// The operating system's random source failed.
    Random(RandomError),
}

impl fmt::Display for GenerateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidLength { len } => write!(
                f,
                "code verifier length {len} is outside {MIN_VERIFIER_LEN}..={MAX_VERIFIER_LEN}"
            ),
            Self::Random(err) => err.fmt(f),
        }
    }
}

impl Error for GenerateError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            Self::InvalidLength { .. } => None,
            Self::Random(err) => Some(err),
        }
    }
}

impl From<RandomError> for GenerateError {
    fn from(err: RandomError) -> Self {
        Self::Random(err)
    }
}

/// An authorization request whose PKCE parameters the server must refuse
/// (RFC 7636 section 4.4.1). Answer with [`oauth_error`](Self::oauth_error).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChallengeError {
    /// The server requires PKCE and the request has no `code_challenge`.
    Missing,
    /// A `code_challenge_method` came without a `code_challenge`.
    MethodWithoutChallenge,
    /// `code_challenge_method` is neither `S256` nor `plain` (the names are
    /// case-sensitive).
    UnknownMethod,
    /// The method is `plain`, said or implied by its absence, and the server
    /// has not enabled it.
    PlainNotAllowed,
    /// An `S256` challenge that is not 43 base64url characters, or a `plain`
    /// one that is not 43 to 128 unreserved characters.
    InvalidLength {
        /// The method the challenge was given for.
        method: ChallengeMethod,
        /// Its length in bytes.
        len: usize,
    },
    /// A character outside the method's alphabet.
    InvalidCharacter {
        /// The method the challenge was given for.
        method: ChallengeMethod,
        /// Byte offset of the first such character.
        index: usize,
        /// The character.
        ch: char,
    },
    /// An `S256` challenge whose last character carries bits past the 256 of
    /// a SHA-256 digest: no verifier can ever match it.
    NonCanonical,
}

impl ChallengeError {
    /// The OAuth 2.0 error code to answer with: always `invalid_request`
    /// (RFC 7636 section 4.4.1).
    #[must_use]
    pub const fn oauth_error(&self) -> &'static str {
        "invalid_request"
    }
}

impl fmt::Display for ChallengeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => f.write_str("code_challenge is required"),
            Self::MethodWithoutChallenge => {
                f.write_str("code_challenge_method given without code_challenge")
            }
            Self::UnknownMethod => {
                f.write_str("code_challenge_method must be \"S256\" or \"plain\"")
            }
            Self::PlainNotAllowed => f.write_str(
                "code_challenge_method \"plain\" is not allowed (a missing method means \"plain\")",
            ),
            Self::InvalidLength {
                method: ChallengeMethod::S256,
                len,
            } => write!(f, "S256 code_challenge has {len} bytes, not 43"),
            Self::InvalidLength { method, len } => write!(
                f,
                "{method} code_challenge has {len} bytes, outside {MIN_VERIFIER_LEN}..={MAX_VERIFIER_LEN}"
            ),
            Self::InvalidCharacter { method, index, ch } => write!(
                f,
                "{method} code_challenge has {ch:?} at byte {index}, outside its alphabet"
            ),
            Self::NonCanonical => {
                f.write_str("S256 code_challenge does not encode a 32-octet digest")
            }
        }
    }
}

impl Error for ChallengeError {}

/// A token request whose `code_verifier` does not prove possession of the
/// authorization request's challenge (RFC 7636 section 4.6). Answer with
/// [`oauth_error`](Self::oauth_error) and revoke the code.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifyError {
    /// The code was issued with a challenge and no `code_verifier` came.
    MissingVerifier,
    /// A `code_verifier` came for a code issued without a challenge: an
    /// attempt to downgrade, refused as RFC 9700 section 2.1.1 requires.
    UnexpectedVerifier,
    /// The `code_verifier` breaks the verifier grammar; it is not hashed.
    MalformedVerifier(VerifierError),
    /// The stored challenge uses `plain`, which the server no longer allows.
    PlainNotAllowed,
    /// The verifier does not match the challenge.
    Mismatch,
}

impl VerifyError {
    /// The OAuth 2.0 error code to answer with: always `invalid_grant`
    /// (RFC 7636 section 4.6).
    #[must_use]
    pub const fn oauth_error(&self) -> &'static str {
        "invalid_grant"
    }
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingVerifier => {
                f.write_str("code_verifier is required for a code issued with a code_challenge")
            }
            Self::UnexpectedVerifier => {
                f.write_str("code_verifier given for a code issued without a code_challenge")
            }
            Self::MalformedVerifier(err) => err.fmt(f),
            Self::PlainNotAllowed => f.write_str("code_challenge_method \"plain\" is not allowed"),
            Self::Mismatch => f.write_str("code_verifier does not match the code_challenge"),
        }
    }
}

impl Error for VerifyError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            Self::MalformedVerifier(err) => Some(err),
            _ => None,
        }
    }
}

/// An authorization endpoint URL that the helper cannot build on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthorizationUrlError {
    /// The endpoint is not an absolute URL.
    Parse(url::ParseError),
    /// The endpoint's scheme is neither `https` nor `http`.
    UnsupportedScheme,
    /// The endpoint has a fragment, which RFC 6749 section 3.1 forbids.
    Fragment,
    /// A parameter the helper sets itself was given again, in the endpoint's
    /// query or through [`param`](crate::AuthorizationUrl::param).
    ReservedParameter {
        /// The parameter's name.
        name: String,
    },
}

impl fmt::Display for AuthorizationUrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Parse(err) => write!(f, "authorization endpoint is not a valid URL: {err}"),
            Self::UnsupportedScheme => {
                f.write_str("authorization endpoint must use https (or http)")
            }
            Self::Fragment => f.write_str("authorization endpoint must not have a fragment"),
            Self::ReservedParameter { name } => {
                write!(
                    f,
                    "parameter {name:?} is set by the helper and cannot be given"
                )
            }
        }
    }
}

impl Error for AuthorizationUrlError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            Self::Parse(err) => Some(err),
            _ => None,
        }
    }
}
