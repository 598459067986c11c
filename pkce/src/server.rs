//! The authorization server's half: accepting a challenge at the
//! authorization endpoint and checking the verifier at the token endpoint.

use crate::challenge::{ChallengeMethod, CodeChallenge};
use crate::error::{ChallengeError, VerifyError};
use crate::verifier::check_verifier_grammar;

/// What an authorization server accepts, and the two checks it makes.
///
/// The default is the one RFC 9700 (OAuth 2.0 Security Best Current
/// Practice) recommends: PKCE required on every authorization request, and
/// `S256` the only method. Loosen it only for clients that cannot do better.
///
/// | check | where | refuses |
/// |---|---|---|
/// | [`accept`](Self::accept) | authorization endpoint | a missing challenge (unless [`require_pkce(false)`](Self::require_pkce)), an unknown method, `plain` (unless [`allow_plain`](Self::allow_plain)), a malformed challenge |
/// | [`verify`](Self::verify) | token endpoint | a missing verifier, a verifier for a code issued without a challenge (downgrade), a malformed verifier (before hashing), a mismatch |
///
/// # Example
///
/// ```
/// use palisade_pkce::{ChallengeError, ServerPolicy, VerifyError};
///
/// let policy = ServerPolicy::new();
///
/// // Authorization endpoint: the request's `code_challenge` and
/// // `code_challenge_method`, as received.
/// let challenge = policy.accept(
///     Some("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"),
///     Some("S256"),
/// )?;
/// // ... store `challenge` with the authorization code ...
///
/// // Token endpoint: the request's `code_verifier`, as received.
/// policy.verify(
///     challenge.as_ref(),
///     Some("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
/// )?;
///
/// // A wrong verifier is refused; the server answers `invalid_grant` and
/// // revokes the code.
/// let err = policy
///     .verify(challenge.as_ref(), Some("wrong-verifier-wrong-verifier-wrong-verifier"))
///     .unwrap_err();
/// assert_eq!(err, VerifyError::Mismatch);
/// assert_eq!(err.oauth_error(), "invalid_grant");
///
/// // No challenge at all: refused, as PKCE is required.
/// assert_eq!(policy.accept(None, None), Err(ChallengeError::Missing));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerPolicy {
    require_pkce: bool,
    allow_plain: bool,
}

impl ServerPolicy {
    /// PKCE required, `S256` only.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            require_pkce: true,
            allow_plain: false,
        }
    }

    /// Whether an authorization request without `code_challenge` is refused
    /// (default `true`).
    ///
    /// Even when it is not required, a code issued without a challenge is
    /// never redeemed with a verifier, and one issued with a challenge is
    /// never redeemed without one.
    #[must_use]
    pub const fn require_pkce(mut self, require: bool) -> Self {
        self.require_pkce = require;
        self
    }

    /// Whether the `plain` method is accepted (default `false`).
    ///
    /// When it is not, `plain` is refused at the authorization endpoint and
    /// a code stored with a `plain` challenge is refused at the token
    /// endpoint, so turning it off takes effect at once.
    #[must_use]
    pub const fn allow_plain(mut self, allow: bool) -> Self {
        self.allow_plain = allow;
        self
    }

    /// Checks the PKCE parameters of an authorization request, given as
    /// received (`None` for an absent parameter). Returns the challenge to
    /// store with the authorization code, or `None` when the request has no
    /// challenge and the policy does not require one.
    ///
    /// A request without `code_challenge_method` uses `plain`, as RFC 7636
    /// section 4.3 says, and is refused unless `plain` is allowed.
    ///
    /// # Errors
    ///
    /// [`ChallengeError`]; answer with its
    /// [`oauth_error`](ChallengeError::oauth_error), `invalid_request`.
    pub fn accept(
        &self,
        code_challenge: Option<&str>,
        code_challenge_method: Option<&str>,
    ) -> Result<Option<CodeChallenge>, ChallengeError> {
        let Some(value) = code_challenge else {
            return match (code_challenge_method, self.require_pkce) {
                (Some(_), _) => Err(ChallengeError::MethodWithoutChallenge),
                (None, true) => Err(ChallengeError::Missing),
                (None, false) => Ok(None),
            };
        };
        let method = match code_challenge_method {
            Some(name) => name.parse()?,
            None => ChallengeMethod::Plain,
        };
        self.check_method(method)
            .map_err(|()| ChallengeError::PlainNotAllowed)?;
        CodeChallenge::parse(value, method).map(Some)
    }

    /// Checks the `code_verifier` of a token request against the challenge
    /// stored with its authorization code (`None` when the code was issued
    /// without one). A code issued without a challenge is redeemed only
    /// without a verifier, and only while PKCE is not required, so turning
    /// [`require_pkce`](Self::require_pkce) on takes effect at once. The
    /// verifier's grammar is checked before it is hashed,
    /// and the comparison runs in constant time.
    ///
    /// # Errors
    ///
    /// [`VerifyError`]; answer with its
    /// [`oauth_error`](VerifyError::oauth_error), `invalid_grant`, and
    /// revoke the authorization code.
    pub fn verify(
        &self,
        stored: Option<&CodeChallenge>,
        code_verifier: Option<&str>,
    ) -> Result<(), VerifyError> {
        let (challenge, verifier) = match (stored, code_verifier) {
            (Some(challenge), Some(verifier)) => (challenge, verifier),
            (None, None) if !self.require_pkce => return Ok(()),
            (None, Some(_)) => return Err(VerifyError::UnexpectedVerifier),
            (Some(_) | None, None) => return Err(VerifyError::MissingVerifier),
        };
        self.check_method(challenge.method())
            .map_err(|()| VerifyError::PlainNotAllowed)?;
        check_verifier_grammar(verifier).map_err(VerifyError::MalformedVerifier)?;
        if challenge.is_derived_from(verifier) {
            Ok(())
        } else {
            Err(VerifyError::Mismatch)
        }
    }

    fn check_method(&self, method: ChallengeMethod) -> Result<(), ()> {
        match method {
            ChallengeMethod::Plain if !self.allow_plain => Err(()),
            _ => Ok(()),
        }
    }
}

impl Default for ServerPolicy {
    fn default() -> Self {
        Self::new()
    }
}
