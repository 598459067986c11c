//! The auth service: the OAuth authorization code flow with PKCE
//! (`palisade-pkce`), and the short-lived bearer tokens the gateway checks.
//!
//! - `GET /authorize` approves the demo user at once (the user is named by
//!   `login_hint`, `demo` by default) and redirects to the client's
//!   `redirect_uri` with a code and the client's `state`. PKCE with `S256`
//!   is required.
//! - `POST /token` (form) redeems the code with its `code_verifier`: codes
//!   live 60 s, are bound to the client and redirect URI, work once, and are
//!   revoked by a wrong verifier. The answer is a bearer token for 15 min.
//!
//! Codes and tokens live in memory, bounded: at the cap, expired entries
//! are swept, and if none are, new logins are refused
//! (`temporarily_unavailable`) rather than memory growing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use palisade_pkce::{CodeChallenge, ServerPolicy, State, Url};
use serde::Serialize;

/// How long a code can be redeemed.
pub const CODE_LIFETIME: Duration = Duration::from_secs(60);
/// How long a token is good for.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(15 * 60);
const MAX_CODES: usize = 10_000;
const MAX_TOKENS: usize = 100_000;

/// What the server remembers about a code it issued.
#[derive(Debug)]
struct Grant {
    user: String,
    client_id: String,
    redirect_uri: String,
    challenge: Option<CodeChallenge>,
    expires_at: Instant,
}

/// A user signed in with a token.
#[derive(Debug)]
struct Session {
    user: String,
    expires_at: Instant,
}

#[derive(Debug, Default)]
struct Books {
    codes: HashMap<String, Grant>,
    tokens: HashMap<String, Session>,
}

/// An OAuth error answer (RFC 6749 §5.2): `400` with `error` and
/// `error_description`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OAuthError {
    /// The OAuth error code.
    pub error: &'static str,
    /// For the developer.
    pub error_description: String,
}

impl OAuthError {
    fn new(error: &'static str, description: &impl ToString) -> Self {
        Self {
            error,
            error_description: description.to_string(),
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let status = if self.error == "temporarily_unavailable" {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::BAD_REQUEST
        };
        (status, Json(self)).into_response()
    }
}

/// A token answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct TokenResponse {
    /// The bearer token.
    pub access_token: String,
    /// `Bearer`.
    pub token_type: String,
    /// Seconds it is good for.
    pub expires_in: u64,
}

/// The authorization server.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    policy: ServerPolicy,
    books: Arc<Mutex<Books>>,
}

/// Makes room in `map` (at `cap`) by sweeping expired entries; `false`
/// when there is still none.
fn room<V>(map: &mut HashMap<String, V>, cap: usize, expired: impl Fn(&V) -> bool) -> bool {
    if map.len() >= cap {
        map.retain(|_, value| !expired(value));
    }
    map.len() < cap
}

impl Auth {
    /// `GET /authorize`: the redirect back to the client, with a code.
    ///
    /// # Errors
    ///
    /// [`OAuthError`] for a request that is not a PKCE code request.
    pub fn authorize(&self, query: &HashMap<String, String>) -> Result<Url, OAuthError> {
        let param = |name: &str| query.get(name).map(String::as_str);
        if param("response_type") != Some("code") {
            return Err(OAuthError::new(
                "unsupported_response_type",
                &"only `code` is supported",
            ));
        }
        let (Some(client_id), Some(redirect_uri)) = (param("client_id"), param("redirect_uri"))
        else {
            return Err(OAuthError::new(
                "invalid_request",
                &"client_id and redirect_uri are required",
            ));
        };
        let mut callback =
            Url::parse(redirect_uri).map_err(|error| OAuthError::new("invalid_request", &error))?;
        let challenge = self
            .policy
            .accept(param("code_challenge"), param("code_challenge_method"))
            .map_err(|error| OAuthError::new(error.oauth_error(), &error))?;
        let user = param("login_hint").unwrap_or("demo");
        if user.is_empty() || user.len() > 64 {
            return Err(OAuthError::new(
                "invalid_request",
                &"login_hint must be 1 to 64 characters",
            ));
        }
        let code = State::generate().to_string();
        let now = Instant::now();
        {
            let mut books = self.books.lock().unwrap_or_else(PoisonError::into_inner);
            if !room(&mut books.codes, MAX_CODES, |grant| grant.expires_at <= now) {
                return Err(OAuthError::new(
                    "temporarily_unavailable",
                    &"too many logins under way",
                ));
            }
            books.codes.insert(
                code.clone(),
                Grant {
                    user: user.to_owned(),
                    client_id: client_id.to_owned(),
                    redirect_uri: redirect_uri.to_owned(),
                    challenge,
                    expires_at: now + CODE_LIFETIME,
                },
            );
        }
        callback.query_pairs_mut().append_pair("code", &code);
        if let Some(state) = param("state") {
            callback.query_pairs_mut().append_pair("state", state);
        }
        Ok(callback)
    }

    /// `POST /token`: a bearer token for a code and its verifier. The code
    /// is spent (or revoked) whatever the outcome.
    ///
    /// # Errors
    ///
    /// [`OAuthError`]: `invalid_grant` for an unknown, used, expired or
    /// misbound code or a wrong verifier.
    pub fn token(&self, form: &HashMap<String, String>) -> Result<TokenResponse, OAuthError> {
        let field = |name: &str| form.get(name).map(String::as_str);
        if field("grant_type") != Some("authorization_code") {
            return Err(OAuthError::new(
                "unsupported_grant_type",
                &"only authorization_code",
            ));
        }
        let now = Instant::now();
        let grant = self
            .books
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .codes
            .remove(field("code").unwrap_or_default())
            .ok_or_else(|| OAuthError::new("invalid_grant", &"unknown, used or revoked code"))?;
        if now >= grant.expires_at {
            return Err(OAuthError::new("invalid_grant", &"code expired"));
        }
        if field("client_id") != Some(grant.client_id.as_str())
            || field("redirect_uri") != Some(grant.redirect_uri.as_str())
        {
            return Err(OAuthError::new(
                "invalid_grant",
                &"code issued to another client or redirect URI",
            ));
        }
        self.policy
            .verify(grant.challenge.as_ref(), field("code_verifier"))
            .map_err(|error| OAuthError::new(error.oauth_error(), &error))?;
        let token = State::generate().to_string();
        let mut books = self.books.lock().unwrap_or_else(PoisonError::into_inner);
        if !room(&mut books.tokens, MAX_TOKENS, |session| {
            session.expires_at <= now
        }) {
            return Err(OAuthError::new(
                "temporarily_unavailable",
                &"too many sessions",
            ));
        }
        books.tokens.insert(
            token.clone(),
            Session {
                user: grant.user,
                expires_at: now + TOKEN_LIFETIME,
            },
        );
        Ok(TokenResponse {
            access_token: token,
            token_type: "Bearer".to_owned(),
            expires_in: TOKEN_LIFETIME.as_secs(),
        })
    }

    /// The user a bearer token belongs to, while it is good.
    #[must_use]
    pub fn user(&self, token: &str) -> Option<String> {
        let books = self.books.lock().unwrap_or_else(PoisonError::into_inner);
        let session = books.tokens.get(token)?;
        (session.expires_at > Instant::now()).then(|| session.user.clone())
    }
}
