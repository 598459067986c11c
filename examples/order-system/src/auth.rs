//! The auth service: the OAuth authorization code flow with PKCE
//! (`palisade-pkce`) for the users and clients of an
//! [`Identity`], and the short-lived bearer
//! tokens the gateway checks.
//!
//! - `GET /authorize` shows a sign-in form for a registered client asking
//!   with one of its exact redirect URIs, PKCE (`S256`) required; an
//!   unknown client or redirect URI gets `400` and no form, no redirect.
//! - `POST /authorize` (the form: the same parameters plus `username` and
//!   `password`) checks the password and redirects to the client's
//!   `redirect_uri` with a code and the client's `state`; a wrong or
//!   missing password gets `401` and no code.
//! - `POST /token` (form) redeems the code with its `code_verifier`: codes
//!   live 60 s, are bound to the client and redirect URI, work once, and are
//!   revoked by a wrong verifier. The answer is a bearer token for 15 min.
//!
//! [`Sessions`] keep codes and tokens, each under the SHA-256 of its value
//! (never the value itself), bounded per user: a user holds at most
//! [`CODES_PER_USER`] pending codes and [`TOKENS_PER_USER`] live tokens,
//! and signing in past that drops the user's oldest, so one user (or one
//! stolen password) minting codes or tokens can fill neither the store nor
//! anyone else's share of it. Codes and tokens are only issued to users of
//! the [`Identity`], so the store holds at most that many per user in all.
//! In memory ([`Sessions::default`], for one gateway) there is a total cap
//! besides: at the cap, expired entries are swept, and if none are, new
//! logins are refused (`temporarily_unavailable`) rather than memory
//! growing. Or in Redis ([`Sessions::redis`], shared by every gateway and
//! by the card processor's admin): each with its lifetime as its TTL, a
//! user's bound kept by one script (one server, not a cluster: it drops a
//! user's oldest entries by name), a code taken with `GETDEL` so that it
//! works once whichever gateway redeems it: Redis 6.2 or later (`GETDEL`
//! came with 6.2; on older servers every sign-in answers 503). Redis down
//! means no sign-in and no token check: `503`, never a token let through
//! unchecked. A token stands for a [`Principal`]: the user and the roles
//! granted at sign-in.
//!
//! What is stored is bounded in size too: a code's client and redirect URI
//! are one of a registered client's, its challenge is PKCE's, and the
//! sign-in parameters are refused past [`MAX_PARAMETER`] bytes each.
//!
//! [`require_bearer`] and [`require_role`] are the checks in front of
//! signed-in and admin routes.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use palisade_pkce::{ChallengeMethod, CodeChallenge, ServerPolicy, State as Secret, Url};
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::identity::{Identity, Principal, Role};

/// How long a code can be redeemed.
pub const CODE_LIFETIME: Duration = Duration::from_secs(60);
/// How long a token is good for.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// How many codes a user may have pending; a new one drops the oldest.
pub const CODES_PER_USER: usize = 8;
/// How many tokens a user may hold; a new one revokes the oldest.
pub const TOKENS_PER_USER: usize = 32;
/// The longest sign-in parameter taken (`client_id`, `redirect_uri`,
/// `state`, `username`, `password`…), in bytes.
pub const MAX_PARAMETER: usize = 1024;
const MAX_CODES: usize = 10_000;
const MAX_TOKENS: usize = 100_000;

/// What the server remembers about a code it issued.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Grant {
    principal: Principal,
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

/// Entries of one kind in process: by digest, and each user's digests in
/// the order they were issued (some perhaps taken or expired since).
#[derive(Debug)]
struct Kept<V> {
    entries: HashMap<String, Expiring<V>>,
    by_user: HashMap<String, VecDeque<String>>,
}

impl<V> Default for Kept<V> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            by_user: HashMap::new(),
        }
    }
}

/// Codes and tokens in process.
#[derive(Debug, Default)]
struct Books {
    codes: Kept<Grant>,
    tokens: Kept<Principal>,
}

/// How many entries of a kind are kept.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    per_user: usize,
    total: usize,
    lifetime: Duration,
    /// Why a new entry is refused at the total.
    full: &'static str,
}

const CODES: Bounds = Bounds {
    per_user: CODES_PER_USER,
    total: MAX_CODES,
    lifetime: CODE_LIFETIME,
    full: "too many logins under way",
};

const TOKENS: Bounds = Bounds {
    per_user: TOKENS_PER_USER,
    total: MAX_TOKENS,
    lifetime: TOKEN_LIFETIME,
    full: "too many sessions",
};

/// Where codes and tokens are kept, each under the SHA-256 of its value.
#[derive(Clone)]
pub struct Sessions(Store);

#[derive(Clone)]
enum Store {
    Memory(Arc<Mutex<Books>>),
    Redis {
        connection: ConnectionManager,
        prefix: Arc<str>,
    },
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Store::Memory(_) => f.write_str("Memory"),
            Store::Redis { prefix, .. } => f.debug_struct("Redis").field("prefix", prefix).finish(),
        }
    }
}

impl Default for Sessions {
    /// In memory: for one gateway.
    fn default() -> Self {
        Self(Store::Memory(Arc::default()))
    }
}

/// The sign-in store did not answer.
fn unavailable(error: &redis::RedisError) -> OAuthError {
    // Every signed-in request's while Redis is away.
    palisade_hints::throttled!(warn, %error, "sign-in store (Redis) failed");
    OAuthError::new(
        "temporarily_unavailable",
        &"the sign-in store is not answering; try again shortly",
    )
}

/// The SHA-256 of a code or token, in hex: what the store keys it by.
#[must_use]
pub fn digest(secret: &str) -> String {
    crate::identity::hex(&sha2::Sha256::digest(secret.as_bytes()))
}

fn from_json<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, OAuthError> {
    serde_json::from_str(json).map_err(|error| OAuthError::new("server_error", &error))
}

fn to_json(value: &impl Serialize) -> Result<String, OAuthError> {
    serde_json::to_string(value).map_err(|error| OAuthError::new("server_error", &error))
}

impl Sessions {
    /// In Redis on `connection`, under `prefix`: every gateway sharing
    /// them signs in and checks the same users.
    #[must_use]
    pub fn redis(connection: ConnectionManager, prefix: &str) -> Self {
        Self(Store::Redis {
            connection,
            prefix: Arc::from(prefix),
        })
    }

    async fn save_code(&self, code: &str, grant: Grant) -> Result<(), OAuthError> {
        let key = digest(code);
        let user = grant.principal.user.clone();
        match &self.0 {
            Store::Memory(books) => remember(
                &mut books.lock().unwrap_or_else(PoisonError::into_inner).codes,
                &user,
                (key, grant),
                CODES,
            ),
            Store::Redis { connection, prefix } => {
                keep_in_redis(
                    connection,
                    prefix,
                    "code",
                    &user,
                    &key,
                    &to_json(&grant)?,
                    CODES,
                )
                .await
            }
        }
    }

    /// The grant of `code`, which is spent whatever happens next; `None`
    /// if unknown, used or expired.
    async fn take_code(&self, code: &str) -> Result<Option<Grant>, OAuthError> {
        let key = digest(code);
        match &self.0 {
            Store::Memory(books) => Ok(books
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .codes
                .entries
                .remove(&key)
                .filter(|grant| grant.expires_at > Instant::now())
                .map(|grant| grant.value)),
            Store::Redis { connection, prefix } => {
                let json: Option<String> = connection
                    .clone()
                    .get_del(format!("{prefix}:code:{key}"))
                    .await
                    .map_err(|error| unavailable(&error))?;
                json.as_deref().map(from_json).transpose()
            }
        }
    }

    async fn save_token(&self, token: &str, principal: Principal) -> Result<(), OAuthError> {
        let key = digest(token);
        let user = principal.user.clone();
        match &self.0 {
            Store::Memory(books) => remember(
                &mut books.lock().unwrap_or_else(PoisonError::into_inner).tokens,
                &user,
                (key, principal),
                TOKENS,
            ),
            Store::Redis { connection, prefix } => {
                let json = to_json(&principal)?;
                keep_in_redis(connection, prefix, "token", &user, &key, &json, TOKENS).await
            }
        }
    }

    /// Who a bearer token stands for, while it is good.
    ///
    /// # Errors
    ///
    /// `temporarily_unavailable` when the store does not answer.
    pub async fn principal(&self, token: &str) -> Result<Option<Principal>, OAuthError> {
        let key = digest(token);
        match &self.0 {
            Store::Memory(books) => {
                let books = books.lock().unwrap_or_else(PoisonError::into_inner);
                Ok(books
                    .tokens
                    .entries
                    .get(&key)
                    .filter(|session| session.expires_at > Instant::now())
                    .map(|session| session.value.clone()))
            }
            Store::Redis { connection, prefix } => {
                let json: Option<String> = connection
                    .clone()
                    .get(format!("{prefix}:token:{key}"))
                    .await
                    .map_err(|error| unavailable(&error))?;
                json.as_deref().map(from_json).transpose()
            }
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
        let status = match self.error {
            "temporarily_unavailable" => StatusCode::SERVICE_UNAVAILABLE,
            "access_denied" => StatusCode::UNAUTHORIZED,
            // The sign-in store holds what this gateway cannot read (a
            // newer one's record): the fault is ours, not the request's.
            "server_error" => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        };
        (status, Json(self)).into_response()
    }
}

/// A token answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenResponse {
    /// The bearer token.
    pub access_token: String,
    /// `Bearer`.
    pub token_type: String,
    /// Seconds it is good for.
    pub expires_in: u64,
}

/// The authorization server: who may sign in ([`Identity`]) and where
/// codes and tokens are kept ([`Sessions`]).
#[derive(Debug, Clone)]
pub struct Auth {
    policy: ServerPolicy,
    identity: Identity,
    sessions: Sessions,
}

/// Keeps `value` under `key` as `user`'s for `bounds.lifetime`, dropping
/// the user's oldest entries beyond `bounds.per_user`, and making room at
/// `bounds.total` by sweeping what expired; refused when there is still
/// none.
fn remember<V>(
    kept: &mut Kept<V>,
    user: &str,
    (key, value): (String, V),
    bounds: Bounds,
) -> Result<(), OAuthError> {
    let now = Instant::now();
    let Kept { entries, by_user } = kept;
    let issued = by_user.entry(user.to_owned()).or_default();
    issued.retain(|digest| entries.get(digest).is_some_and(|e| e.expires_at > now));
    while issued.len() >= bounds.per_user {
        if let Some(oldest) = issued.pop_front() {
            entries.remove(&oldest);
        }
    }
    if entries.len() >= bounds.total {
        entries.retain(|_, entry| entry.expires_at > now);
    }
    if entries.len() >= bounds.total {
        return Err(OAuthError::new("temporarily_unavailable", &bounds.full));
    }
    issued.push_back(key.clone());
    entries.insert(
        key,
        Expiring {
            value,
            expires_at: now + bounds.lifetime,
        },
    );
    Ok(())
}

/// Keeps `ARGV[1]` under `KEYS[1]` for `ARGV[2]` ms, and the user's index
/// of such entries (`KEYS[2]`, each entry by its key) ordered by issue,
/// dropping the oldest beyond `ARGV[3]`. Scores are expiries in
/// microseconds by the server's clock, made strictly increasing per user
/// so that two entries issued in one microsecond keep their order.
const KEEP: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local lifetime = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[3]) + 1
if over > 0 then
  local oldest = redis.call('ZPOPMIN', KEYS[2], over)
  for i = 1, #oldest, 2 do
    redis.call('DEL', oldest[i])
  end
end
local expiry = now + lifetime * 1000
local newest = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
if newest[2] and tonumber(newest[2]) >= expiry then
  expiry = tonumber(newest[2]) + 1
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', lifetime)
redis.call('ZADD', KEYS[2], expiry, KEYS[1])
redis.call('PEXPIRE', KEYS[2], lifetime)
";

/// Keeps `json` as `user`'s `kind` (`code`, `token`) under `digest` in
/// Redis, within `bounds.per_user`.
async fn keep_in_redis(
    connection: &ConnectionManager,
    prefix: &str,
    kind: &str,
    user: &str,
    digest: &str,
    json: &str,
    bounds: Bounds,
) -> Result<(), OAuthError> {
    static SCRIPT: std::sync::LazyLock<redis::Script> =
        std::sync::LazyLock::new(|| redis::Script::new(KEEP));
    SCRIPT
        .key(format!("{prefix}:{kind}:{digest}"))
        .key(format!("{prefix}:{kind}s-of:{user}"))
        .arg(json)
        .arg(u64::try_from(bounds.lifetime.as_millis()).unwrap_or(u64::MAX))
        .arg(bounds.per_user)
        .invoke_async::<()>(&mut connection.clone())
        .await
        .map_err(|error| unavailable(&error))
}

/// Refuses parameters (names or values) longer than [`MAX_PARAMETER`].
fn within_bounds(params: &HashMap<String, String>) -> Result<(), OAuthError> {
    if params
        .iter()
        .any(|(name, value)| name.len().max(value.len()) > MAX_PARAMETER)
    {
        return Err(OAuthError::new(
            "invalid_request",
            &format!("a parameter is longer than {MAX_PARAMETER} bytes"),
        ));
    }
    Ok(())
}

/// A sign-in request a registered client made.
struct CodeRequest<'a> {
    client_id: &'a str,
    redirect_uri: &'a str,
    challenge: Option<CodeChallenge>,
}

impl Auth {
    /// Signs in the users of `identity`, keeping codes and tokens in
    /// `sessions`.
    #[must_use]
    pub fn new(identity: Identity, sessions: Sessions) -> Self {
        Self {
            policy: ServerPolicy::default(),
            identity,
            sessions,
        }
    }

    /// Where codes and tokens are kept.
    #[must_use]
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// Checks that `params` ask for a code for a registered client and one
    /// of its exact redirect URIs, with PKCE. Nothing is redirected
    /// before this holds.
    fn code_request<'a>(
        &self,
        params: &'a HashMap<String, String>,
    ) -> Result<CodeRequest<'a>, OAuthError> {
        within_bounds(params)?;
        let param = |name: &str| params.get(name).map(String::as_str);
        let (Some(client_id), Some(redirect_uri)) = (param("client_id"), param("redirect_uri"))
        else {
            return Err(OAuthError::new(
                "invalid_request",
                &"client_id and redirect_uri are required",
            ));
        };
        if !self.identity.allows_redirect(client_id, redirect_uri) {
            return Err(OAuthError::new(
                "invalid_request",
                &"unknown client, or a redirect_uri not registered for it",
            ));
        }
        if param("response_type") != Some("code") {
            return Err(OAuthError::new(
                "unsupported_response_type",
                &"only `code` is supported",
            ));
        }
        let challenge = self
            .policy
            .accept(param("code_challenge"), param("code_challenge_method"))
            .map_err(|error| OAuthError::new(error.oauth_error(), &error))?;
        Ok(CodeRequest {
            client_id,
            redirect_uri,
            challenge,
        })
    }

    /// `GET /authorize`: the sign-in form for a registered client's
    /// request.
    ///
    /// # Errors
    ///
    /// [`OAuthError`] for an unknown client or redirect URI, or a request
    /// that is not a PKCE code request.
    pub fn sign_in_form(
        &self,
        params: &HashMap<String, String>,
    ) -> Result<Html<String>, OAuthError> {
        self.code_request(params)?;
        Ok(form_page(params, None))
    }

    /// `POST /authorize`: checks `username` and `password`, then the
    /// redirect back to the client, with a code and the client's `state`.
    ///
    /// # Errors
    ///
    /// [`OAuthError`] for an unknown client or redirect URI or a request
    /// that is not a PKCE code request; `access_denied` for a missing or
    /// wrong user name or password; `temporarily_unavailable` when as
    /// many sign-ins wait for a hashing place as may (a 503, answered in
    /// JSON, not with the form).
    pub async fn authorize(&self, params: &HashMap<String, String>) -> Result<Url, OAuthError> {
        let request = self.code_request(params)?;
        let param = |name: &str| params.get(name).map(String::as_str).unwrap_or_default();
        let principal = match (param("username"), param("password")) {
            ("", _) | (_, "") => None,
            (user, password) => self
                .identity
                .verify(user, password)
                .await
                .map_err(|busy| OAuthError::new("temporarily_unavailable", &busy))?,
        }
        .ok_or_else(|| OAuthError::new("access_denied", &"wrong user name or password"))?;
        let mut callback = Url::parse(request.redirect_uri)
            .map_err(|error| OAuthError::new("invalid_request", &error))?;
        let code = Secret::generate().to_string();
        let grant = Grant {
            principal,
            client_id: request.client_id.to_owned(),
            redirect_uri: request.redirect_uri.to_owned(),
            challenge: request
                .challenge
                .map(|c| (c.as_str().to_owned(), c.method().as_str().to_owned())),
        };
        self.sessions.save_code(&code, grant).await?;
        callback.query_pairs_mut().append_pair("code", &code);
        if let Some(state) = params.get("state") {
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
        within_bounds(form)?;
        let field = |name: &str| form.get(name).map(String::as_str);
        if field("grant_type") != Some("authorization_code") {
            return Err(OAuthError::new(
                "unsupported_grant_type",
                &"only authorization_code",
            ));
        }
        let grant = self
            .sessions
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
        let token = Secret::generate().to_string();
        self.sessions.save_token(&token, grant.principal).await?;
        Ok(TokenResponse {
            access_token: token,
            token_type: "Bearer".to_owned(),
            expires_in: TOKEN_LIFETIME.as_secs(),
        })
    }

    /// Who a bearer token stands for, while it is good.
    ///
    /// # Errors
    ///
    /// `temporarily_unavailable` when the store does not answer.
    pub async fn principal(&self, token: &str) -> Result<Option<Principal>, OAuthError> {
        self.sessions.principal(token).await
    }
}

/// The credentials of an `Authorization: Bearer <token>` header; the
/// scheme is case-insensitive (RFC 9110 §11.1).
#[must_use]
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim_start_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Middleware: lets through requests with a good bearer token, with its
/// [`Principal`] in their extensions; `401` otherwise, `503` when the
/// sign-in store does not answer.
pub async fn require_bearer(
    State(sessions): State<Sessions>,
    mut request: Request,
    next: Next,
) -> Response {
    let principal = match bearer_token(request.headers()) {
        Some(token) => sessions.principal(token).await,
        None => Ok(None),
    };
    match principal {
        Ok(Some(principal)) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(unavailable) => unavailable.into_response(),
        Ok(None) => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(serde_json::json!({ "error": "a valid bearer token is required (GET /authorize, POST /token)" })),
        )
            .into_response(),
    }
}

/// Middleware, behind [`require_bearer`]: lets through the users granted
/// `role`; `403` for the others.
pub async fn require_role(role: Role, request: Request, next: Next) -> Response {
    if request
        .extensions()
        .get::<Principal>()
        .is_some_and(|principal| principal.has(role))
    {
        next.run(request).await
    } else {
        (
            StatusCode::FORBIDDEN,
            Json(serde_json::json!({ "error": format!("only a user granted the {role:?} role may do this") })),
        )
            .into_response()
    }
}

/// `text` with HTML's special characters escaped.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// The OAuth parameters the sign-in form carries over to its `POST`.
const CARRIED: [&str; 6] = [
    "response_type",
    "client_id",
    "redirect_uri",
    "code_challenge",
    "code_challenge_method",
    "state",
];

/// The sign-in form for the request in `params`, with `problem` above it.
pub fn form_page(params: &HashMap<String, String>, problem: Option<&str>) -> Html<String> {
    let hidden: String = CARRIED
        .iter()
        .filter_map(|name| {
            params.get(*name).map(|value| {
                format!(
                    r#"<input type="hidden" name="{name}" value="{}">"#,
                    escape(value)
                )
            })
        })
        .collect();
    let user = escape(params.get("login_hint").map_or("", String::as_str));
    let problem = problem.map_or_else(String::new, |p| {
        format!("<p role=\"alert\">{}</p>", escape(p))
    });
    Html(format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in</title></head>
<body><h1>Sign in to the order system</h1>{problem}
<form method="post" action="/authorize">{hidden}
<label>User name <input name="username" value="{user}" autocomplete="username" required></label>
<label>Password <input name="password" type="password" autocomplete="current-password" required></label>
<button type="submit">Sign in</button></form></body></html>
"#
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stored token or code this gateway cannot read is its own fault:
    /// 500, where it answered 400 (the client's request at fault) on every
    /// signed-in route.
    #[test]
    fn a_record_the_store_holds_unreadable_is_a_server_error() {
        let unreadable = from_json::<Principal>("{").unwrap_err();
        assert_eq!(
            unreadable.into_response().status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        let refused = OAuthError::new("invalid_grant", &"code used already");
        assert_eq!(refused.into_response().status(), StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn tokens_and_codes_are_kept_under_their_digest_only() {
        let sessions = Sessions::default();
        let principal = Principal {
            user: "alice".to_owned(),
            roles: Vec::new(),
        };
        sessions
            .save_token("the-token", principal.clone())
            .await
            .unwrap();
        let grant = Grant {
            principal: principal.clone(),
            client_id: "c".to_owned(),
            redirect_uri: "http://localhost/cb".to_owned(),
            challenge: None,
        };
        sessions.save_code("the-code", grant).await.unwrap();
        let Store::Memory(books) = &sessions.0 else {
            unreachable!()
        };
        {
            let books = books.lock().unwrap();
            let keys: Vec<&String> = books
                .tokens
                .entries
                .keys()
                .chain(books.codes.entries.keys())
                .collect();
            assert_eq!(keys, [&digest("the-token"), &digest("the-code")]);
            assert!(keys.iter().all(|key| !key.contains("the-")));
        }
        assert_eq!(
            sessions.principal("the-token").await.unwrap(),
            Some(principal)
        );
        assert_eq!(
            sessions.principal(&digest("the-token")).await.unwrap(),
            None
        );
    }

    fn principal(user: &str) -> Principal {
        Principal {
            user: user.to_owned(),
            roles: Vec::new(),
        }
    }

    fn grant(user: &str) -> Grant {
        Grant {
            principal: principal(user),
            client_id: "c".to_owned(),
            redirect_uri: "http://localhost/cb".to_owned(),
            challenge: None,
        }
    }

    /// mallory mints three times her share of tokens and codes: she keeps
    /// her newest share, and alice still gets hers.
    async fn one_user_keeps_only_her_share(sessions: &Sessions) {
        let run = fastrand::u64(..);
        let tokens: Vec<String> = (0..TOKENS_PER_USER * 3)
            .map(|i| format!("mallory-token-{run}-{i}"))
            .collect();
        for token in &tokens {
            sessions
                .save_token(token, principal("mallory"))
                .await
                .unwrap();
        }
        let mut live = Vec::new();
        for token in &tokens {
            if sessions.principal(token).await.unwrap().is_some() {
                live.push(token);
            }
        }
        let newest: Vec<&String> = tokens[tokens.len() - TOKENS_PER_USER..].iter().collect();
        assert_eq!(live, newest, "the newest {TOKENS_PER_USER} tokens");

        let codes: Vec<String> = (0..CODES_PER_USER * 3)
            .map(|i| format!("mallory-code-{run}-{i}"))
            .collect();
        for code in &codes {
            sessions.save_code(code, grant("mallory")).await.unwrap();
        }
        let mut pending = Vec::new();
        for code in &codes {
            if sessions.take_code(code).await.unwrap().is_some() {
                pending.push(code);
            }
        }
        let newest: Vec<&String> = codes[codes.len() - CODES_PER_USER..].iter().collect();
        assert_eq!(pending, newest, "the newest {CODES_PER_USER} codes");

        let (token, code) = (format!("alice-token-{run}"), format!("alice-code-{run}"));
        sessions
            .save_token(&token, principal("alice"))
            .await
            .unwrap();
        sessions.save_code(&code, grant("alice")).await.unwrap();
        assert_eq!(
            sessions.principal(&token).await.unwrap(),
            Some(principal("alice"))
        );
        assert!(sessions.take_code(&code).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn one_user_minting_tokens_and_codes_keeps_only_her_share_in_memory() {
        one_user_keeps_only_her_share(&Sessions::default()).await;
    }

    #[tokio::test]
    async fn one_user_minting_tokens_and_codes_keeps_only_her_share_in_redis() {
        let client = redis::Client::open(palisade_testkit::servers::redis_url()).unwrap();
        let connection = ConnectionManager::new(client).await.unwrap();
        let prefix = format!("palisade:order-system:test:{}", fastrand::u64(..));
        one_user_keeps_only_her_share(&Sessions::redis(connection, &prefix)).await;
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        let mut headers = HeaderMap::new();
        for (value, token) in [
            ("Bearer abc", Some("abc")),
            ("bearer abc", Some("abc")),
            ("BEARER  abc", Some("abc")),
            ("Basic abc", None),
            ("Bearer", None),
            ("Bearer ", None),
        ] {
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            assert_eq!(bearer_token(&headers), token, "{value}");
        }
    }

    #[test]
    fn the_form_escapes_what_it_carries() {
        let params: HashMap<String, String> =
            [("state".to_owned(), r#""><script>"#.to_owned())].into();
        let Html(page) = form_page(&params, None);
        assert!(page.contains("&quot;&gt;&lt;script&gt;"), "{page}");
        assert!(!page.contains("<script>"));
    }
}
