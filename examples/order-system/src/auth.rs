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
//! (never the value itself): in memory ([`Sessions::default`], for one
//! gateway), bounded: at the cap, expired entries are swept, and if none
//! are, new logins are refused (`temporarily_unavailable`) rather than
//! memory growing. Or in Redis ([`Sessions::redis`], shared by every
//! gateway and by the card processor's admin): each with its lifetime as
//! its TTL, a code taken with `GETDEL` so that it works once whichever
//! gateway redeems it. Redis down means no sign-in and no token check:
//! `503`, never a token let through unchecked. A token stands for a
//! [`Principal`]: the user and the roles granted at sign-in.
//!
//! [`require_bearer`] and [`require_role`] are the checks in front of
//! signed-in and admin routes.

use std::collections::HashMap;
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

/// Codes and tokens in process, by digest.
#[derive(Debug, Default)]
struct Books {
    codes: HashMap<String, Expiring<Grant>>,
    tokens: HashMap<String, Expiring<Principal>>,
}

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
    tracing::warn!(%error, "sign-in store (Redis) failed");
    OAuthError::new(
        "temporarily_unavailable",
        &"the sign-in store is not answering; try again shortly",
    )
}

fn seconds(lifetime: Duration) -> u64 {
    lifetime.as_secs().max(1)
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
        match &self.0 {
            Store::Memory(books) => remember(
                &mut books.lock().unwrap_or_else(PoisonError::into_inner).codes,
                (key, grant),
                MAX_CODES,
                CODE_LIFETIME,
                "too many logins under way",
            ),
            Store::Redis { connection, prefix } => connection
                .clone()
                .set_ex::<_, _, ()>(
                    format!("{prefix}:code:{key}"),
                    to_json(&grant)?,
                    seconds(CODE_LIFETIME),
                )
                .await
                .map_err(|error| unavailable(&error)),
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
        match &self.0 {
            Store::Memory(books) => remember(
                &mut books.lock().unwrap_or_else(PoisonError::into_inner).tokens,
                (key, principal),
                MAX_TOKENS,
                TOKEN_LIFETIME,
                "too many sessions",
            ),
            Store::Redis { connection, prefix } => connection
                .clone()
                .set_ex::<_, _, ()>(
                    format!("{prefix}:token:{key}"),
                    to_json(&principal)?,
                    seconds(TOKEN_LIFETIME),
                )
                .await
                .map_err(|error| unavailable(&error)),
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

/// Keeps `value` under `key` in `map` for `lifetime`, making room (at `cap`) by
/// sweeping what expired; refused with `full` when there is still none.
fn remember<V>(
    map: &mut HashMap<String, Expiring<V>>,
    (key, value): (String, V),
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
        key,
        Expiring {
            value,
            expires_at: now + lifetime,
        },
    );
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
    /// wrong user name or password.
    pub async fn authorize(&self, params: &HashMap<String, String>) -> Result<Url, OAuthError> {
        let request = self.code_request(params)?;
        let param = |name: &str| params.get(name).map(String::as_str).unwrap_or_default();
        let principal = match (param("username"), param("password")) {
            ("", _) | (_, "") => None,
            (user, password) => self.identity.verify(user, password).await,
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
            let keys: Vec<&String> = books.tokens.keys().chain(books.codes.keys()).collect();
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
