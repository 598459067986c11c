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
//! Codes and tokens live in memory ([`Auth::default`], for one gateway),
//! bounded: at the cap, expired entries are swept, and if none are, new
//! logins are refused (`temporarily_unavailable`) rather than memory
//! growing. Or in Redis ([`Auth::redis`], shared by every gateway): each
//! with its lifetime as its TTL, a code taken with `GETDEL` so that it
//! works once whichever gateway redeems it. Redis down means no sign-in
//! and no token check: `503`, never a token let through unchecked.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use palisade_pkce::{ChallengeMethod, CodeChallenge, ServerPolicy, State, Url};
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

/// How long a code can be redeemed.
pub const CODE_LIFETIME: Duration = Duration::from_secs(60);
/// How long a token is good for.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(15 * 60);
const MAX_CODES: usize = 10_000;
const MAX_TOKENS: usize = 100_000;

/// What the server remembers about a code it issued.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Grant {
    user: String,
    client_id: String,
    redirect_uri: String,
    /// The challenge and its method (`S256`), if PKCE was used.
    challenge: Option<(String, String)>,
}

impl Grant {
    fn challenge(&self) -> Result<Option<CodeChallenge>, OAuthError> {
        self.challenge
            .as_ref()
            .map(|(value, method)| {
                let method: ChallengeMethod = method
                    .parse()
                    .map_err(|error| OAuthError::new("invalid_grant", &error))?;
                CodeChallenge::parse(value, method)
                    .map_err(|error| OAuthError::new("invalid_grant", &error))
            })
            .transpose()
    }
}

/// Something with an expiry, in memory.
#[derive(Debug)]
struct Expiring<T> {
    value: T,
    expires_at: Instant,
}

/// Codes and tokens in process.
#[derive(Debug, Default)]
struct Books {
    codes: HashMap<String, Expiring<Grant>>,
    tokens: HashMap<String, Expiring<String>>,
}

/// Where codes and tokens are kept.
#[derive(Clone)]
enum Store {
    Memory(Arc<Mutex<Books>>),
    Redis {
        connection: ConnectionManager,
        prefix: Arc<str>,
    },
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Memory(_) => f.write_str("Memory"),
            Self::Redis { prefix, .. } => f.debug_struct("Redis").field("prefix", prefix).finish(),
        }
    }
}

impl Default for Store {
    fn default() -> Self {
        Self::Memory(Arc::default())
    }
}

/// The sign-in store did not answer.
fn unavailable(error: &redis::RedisError) -> OAuthError {
    tracing::warn!(%error, "sign-in store (Redis) failed");
    OAuthError::new(
        "temporarily_unavailable",
        &"the sign-in store is not answering; try again shortly",
    )
}

fn seconds(lifetime: Duration) -> u64 {
    lifetime.as_secs().max(1)
}

impl Store {
    async fn save_code(&self, code: &str, grant: Grant) -> Result<(), OAuthError> {
        match self {
            Self::Memory(books) => remember(
                &mut books.lock().unwrap_or_else(PoisonError::into_inner).codes,
                (code, grant),
                MAX_CODES,
                CODE_LIFETIME,
                "too many logins under way",
            ),
            Self::Redis { connection, prefix } => {
                let json = serde_json::to_string(&grant)
                    .map_err(|error| OAuthError::new("server_error", &error))?;
                connection
                    .clone()
                    .set_ex::<_, _, ()>(
                        format!("{prefix}:code:{code}"),
                        json,
                        seconds(CODE_LIFETIME),
                    )
                    .await
                    .map_err(|error| unavailable(&error))
            }
        }
    }

    /// The grant of `code`, which is spent whatever happens next; `None`
    /// if unknown, used or expired.
    async fn take_code(&self, code: &str) -> Result<Option<Grant>, OAuthError> {
        match self {
            Self::Memory(books) => Ok(books
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .codes
                .remove(code)
                .filter(|grant| grant.expires_at > Instant::now())
                .map(|grant| grant.value)),
            Self::Redis { connection, prefix } => {
                let json: Option<String> = connection
                    .clone()
                    .get_del(format!("{prefix}:code:{code}"))
                    .await
                    .map_err(|error| unavailable(&error))?;
                json.map(|json| {
                    serde_json::from_str(&json)
                        .map_err(|error| OAuthError::new("server_error", &error))
                })
                .transpose()
            }
        }
    }

    async fn save_token(&self, token: &str, user: String) -> Result<(), OAuthError> {
        match self {
            Self::Memory(books) => remember(
                &mut books.lock().unwrap_or_else(PoisonError::into_inner).tokens,
                (token, user),
                MAX_TOKENS,
                TOKEN_LIFETIME,
                "too many sessions",
            ),
            Self::Redis { connection, prefix } => connection
                .clone()
                .set_ex::<_, _, ()>(
                    format!("{prefix}:token:{token}"),
                    user,
                    seconds(TOKEN_LIFETIME),
                )
                .await
                .map_err(|error| unavailable(&error)),
        }
    }

    async fn user(&self, token: &str) -> Result<Option<String>, OAuthError> {
        match self {
            Self::Memory(books) => {
                let books = books.lock().unwrap_or_else(PoisonError::into_inner);
                Ok(books
                    .tokens
                    .get(token)
                    .filter(|session| session.expires_at > Instant::now())
                    .map(|session| session.value.clone()))
            }
            Self::Redis { connection, prefix } => connection
                .clone()
                .get(format!("{prefix}:token:{token}"))
                .await
                .map_err(|error| unavailable(&error)),
        }
    }
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
    store: Store,
}

/// Keeps `value` under `key` in `map` for `lifetime`, making room (at `cap`) by
/// sweeping what expired; refused with `full` when there is still none.
fn remember<V>(
    map: &mut HashMap<String, Expiring<V>>,
    (key, value): (&str, V),
    cap: usize,
    lifetime: Duration,
    full: &'static str,
) -> Result<(), OAuthError> {
    let now = Instant::now();
    if map.len() >= cap {
        map.retain(|_, entry| entry.expires_at > now);
    }
    if map.len() >= cap {
        return Err(OAuthError::new("temporarily_unavailable", &full));
    }
    map.insert(
        key.to_owned(),
        Expiring {
            value,
            expires_at: now + lifetime,
        },
    );
    Ok(())
}

impl Auth {
    /// Codes and tokens in Redis on `connection`, under `prefix`: every
    /// gateway sharing them signs in and checks the same users.
    #[must_use]
    pub fn redis(connection: ConnectionManager, prefix: &str) -> Self {
        Self {
            policy: ServerPolicy::default(),
            store: Store::Redis {
                connection,
                prefix: Arc::from(prefix),
            },
        }
    }

    /// `GET /authorize`: the redirect back to the client, with a code.
    ///
    /// # Errors
    ///
    /// [`OAuthError`] for a request that is not a PKCE code request.
    pub async fn authorize(&self, query: &HashMap<String, String>) -> Result<Url, OAuthError> {
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
        let grant = Grant {
            user: user.to_owned(),
            client_id: client_id.to_owned(),
            redirect_uri: redirect_uri.to_owned(),
            challenge: challenge.map(|c| (c.as_str().to_owned(), c.method().as_str().to_owned())),
        };
        self.store.save_code(&code, grant).await?;
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
    pub async fn token(&self, form: &HashMap<String, String>) -> Result<TokenResponse, OAuthError> {
        let field = |name: &str| form.get(name).map(String::as_str);
        if field("grant_type") != Some("authorization_code") {
            return Err(OAuthError::new(
                "unsupported_grant_type",
                &"only authorization_code",
            ));
        }
        let grant = self
            .store
            .take_code(field("code").unwrap_or_default())
            .await?
            .ok_or_else(|| {
                OAuthError::new("invalid_grant", &"unknown, used, expired or revoked code")
            })?;
        if field("client_id") != Some(grant.client_id.as_str())
            || field("redirect_uri") != Some(grant.redirect_uri.as_str())
        {
            return Err(OAuthError::new(
                "invalid_grant",
                &"code issued to another client or redirect URI",
            ));
        }
        self.policy
            .verify(grant.challenge()?.as_ref(), field("code_verifier"))
            .map_err(|error| OAuthError::new(error.oauth_error(), &error))?;
        let token = State::generate().to_string();
        self.store.save_token(&token, grant.user).await?;
        Ok(TokenResponse {
            access_token: token,
            token_type: "Bearer".to_owned(),
            expires_in: TOKEN_LIFETIME.as_secs(),
        })
    }

    /// The user a bearer token belongs to, while it is good.
    ///
    /// # Errors
    ///
    /// `temporarily_unavailable` when the store does not answer.
    pub async fn user(&self, token: &str) -> Result<Option<String>, OAuthError> {
        self.store.user(token).await
    }
}
