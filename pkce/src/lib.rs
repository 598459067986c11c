#![cfg_attr(docsrs, feature(doc_cfg))]
//! PKCE (Proof Key for Code Exchange, RFC 7636) for both sides of the OAuth
//! authorization code flow, made hard to misuse.
//!
//! An authorization code travels through the browser, where it can be
//! stolen. PKCE binds it to a secret only the client that asked for it
//! knows: the client sends a *challenge* derived from a random *verifier*
//! with the authorization request, and must present the verifier itself to
//! redeem the code. RFC 9700 requires it of every client.
//!
//! This crate gives the client its [`CodeVerifier`], [`CodeChallenge`],
//! [`State`] and [`AuthorizationUrl`], and the authorization server its
//! [`ServerPolicy`], which checks what peers leave out:
//!
//! - a verifier's length (43 to 128) and alphabet (`[A-Za-z0-9-._~]`) are
//!   checked before it is hashed;
//! - the comparison runs in constant time;
//! - a verifier presented for a code issued without a challenge, or none
//!   presented for a code issued with one, is refused (downgrade);
//! - `plain` is refused unless the server enables it, including when the
//!   client leaves `code_challenge_method` out (which means `plain`);
//! - a verifier's `Debug` never shows it, and its memory is zeroed on drop.
//!
//! Verifiers, states and nonces come from the operating system's random
//! source. Errors name the OAuth error code to answer with.
//!
//! # The client
//!
//! ```
//! use palisade_pkce::{AuthorizationUrl, CodeChallenge, CodeVerifier, State};
//!
//! // 1. Before redirecting the user: a verifier and a state, kept in the
//! //    session, and the authorization URL carrying their public halves.
//! let verifier = CodeVerifier::generate();
//! let state = State::generate();
//! let url = AuthorizationUrl::new("https://auth.example.com/authorize", "my-app")?
//!     .redirect_uri("https://app.example.com/callback")
//!     .scope("openid orders")
//!     .build(&CodeChallenge::s256(&verifier), &state);
//! assert!(url.as_str().contains("code_challenge_method=S256"));
//!
//! // 2. On the redirect back: check the state before using the code.
//! let returned_state = state.as_str(); // from the callback's query
//! assert!(state.matches(returned_state));
//!
//! // 3. Redeem the code, sending the verifier in the token request:
//! let form = [
//!     ("grant_type", "authorization_code"),
//!     ("code", "the-code-from-the-callback"),
//!     ("redirect_uri", "https://app.example.com/callback"),
//!     ("client_id", "my-app"),
//!     ("code_verifier", verifier.expose_secret()),
//! ];
//! # let _ = form;
//! # Ok::<(), palisade_pkce::AuthorizationUrlError>(())
//! ```
//!
//! # The authorization server
//!
//! ```
//! use palisade_pkce::{ChallengeMethod, CodeChallenge, ServerPolicy, VerifyError};
//!
//! // PKCE required, S256 only: RFC 9700's recommendation.
//! let policy = ServerPolicy::new();
//!
//! // Authorization endpoint: check the parameters as received, and store
//! // the challenge with the code you issue.
//! let challenge = policy
//!     .accept(Some("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"), Some("S256"))?
//!     .expect("PKCE is required, so a challenge is always returned");
//! let (stored_value, stored_method) = (challenge.as_str().to_owned(), challenge.method());
//!
//! // Token endpoint: load the challenge stored with the code, then verify.
//! let stored = CodeChallenge::parse(&stored_value, stored_method)?;
//! policy.verify(Some(&stored), Some("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"))?;
//!
//! // Anything else is `invalid_grant`, and the code must be revoked.
//! let stolen = policy.verify(Some(&stored), Some("guessed-guessed-guessed-guessed-guessed-gue"));
//! assert_eq!(stolen, Err(VerifyError::Mismatch));
//! let downgrade = policy.verify(None, Some("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"));
//! assert_eq!(downgrade, Err(VerifyError::UnexpectedVerifier));
//! # let _ = ChallengeMethod::S256;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Single use of the code, its short lifetime and its binding to the client
//! and redirect URI are the authorization server's job; the
//! `authorization_code` example shows them with this crate's checks.

mod authorization;
mod challenge;
mod encoding;
pub mod error;
mod server;
mod state;
mod verifier;

pub use authorization::AuthorizationUrl;
pub use challenge::{ChallengeMethod, CodeChallenge};
pub use error::{
    AuthorizationUrlError, ChallengeError, GenerateError, RandomError, VerifierError, VerifyError,
};
pub use server::ServerPolicy;
pub use state::{Nonce, State};
pub use url::Url;
pub use verifier::{CodeVerifier, MAX_VERIFIER_LEN, MIN_VERIFIER_LEN};

/// The README's example, compiled and run as a doctest so it stays true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
