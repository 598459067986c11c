//! The authorization code flow with PKCE, both sides in one process, and the
//! attacks PKCE and a careful authorization server stop.
//!
//! The authorization server here keeps its codes in memory, issues them for
//! one use and a short time, binds them to the client and redirect URI, and
//! revokes a code when a wrong verifier is presented for it.
//!
//! Run with `cargo run -p palisade-pkce --example authorization_code`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use palisade_pkce::{
    AuthorizationUrl, ChallengeMethod, CodeChallenge, CodeVerifier, ServerPolicy, State, Url,
};

const AUTHORIZE: &str = "https://auth.example.com/authorize";
const CLIENT_ID: &str = "orders-web";
const REDIRECT_URI: &str = "https://orders.example.com/callback";
const CODE_LIFETIME: Duration = Duration::from_secs(60);

/// What the server remembers about a code it issued.
#[derive(Debug)]
struct Grant {
    client_id: String,
    redirect_uri: String,
    challenge: Option<CodeChallenge>,
    expires_at: Instant,
}

/// An OAuth error answer: the code and a description for the developer.
#[derive(Debug)]
struct OAuthError {
    error: &'static str,
    description: String,
}

impl OAuthError {
    fn new(error: &'static str, description: &impl ToString) -> Self {
        Self {
            error,
            description: description.to_string(),
        }
    }
}

#[derive(Debug, Default)]
struct AuthorizationServer {
    policy: ServerPolicy,
    grants: HashMap<String, Grant>,
}

impl AuthorizationServer {
    /// `GET /authorize`: the demo user approves at once, and the browser is
    /// sent back to the client with a code.
    fn authorize(&mut self, request: &Url, now: Instant) -> Result<Url, OAuthError> {
        let query: HashMap<_, _> = request.query_pairs().into_owned().collect();
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
        let challenge = self
            .policy
            .accept(param("code_challenge"), param("code_challenge_method"))
            .map_err(|err| OAuthError::new(err.oauth_error(), &err))?;

        // Any 256-bit random URL-safe value makes a good code.
        let code = State::generate().to_string();
        self.grants.insert(
            code.clone(),
            Grant {
                client_id: client_id.to_owned(),
                redirect_uri: redirect_uri.to_owned(),
                challenge,
                expires_at: now + CODE_LIFETIME,
            },
        );
        let mut callback =
            Url::parse(redirect_uri).map_err(|err| OAuthError::new("invalid_request", &err))?;
        callback.query_pairs_mut().append_pair("code", &code);
        if let Some(state) = param("state") {
            callback.query_pairs_mut().append_pair("state", state);
        }
        Ok(callback)
    }

    /// `POST /token`: the code is removed before anything is checked, so it
    /// is spent (or revoked) whatever the outcome.
    fn token(&mut self, form: &[(&str, &str)], now: Instant) -> Result<String, OAuthError> {
        let field = |name: &str| form.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
        let code = field("code").unwrap_or_default();
        let Some(grant) = self.grants.remove(code) else {
            return Err(OAuthError::new(
                "invalid_grant",
                &"unknown, used or revoked code",
            ));
        };
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
            .map_err(|err| OAuthError::new(err.oauth_error(), &err))?;
        Ok(format!("access-token-for-{}", grant.client_id))
    }
}

/// The client's side of one login: what it keeps in the session.
#[derive(Debug)]
struct Login {
    verifier: CodeVerifier,
    state: State,
}

impl Login {
    fn start() -> (Self, Url) {
        let login = Self {
            verifier: CodeVerifier::generate(),
            state: State::generate(),
        };
        let url = AuthorizationUrl::new(AUTHORIZE, CLIENT_ID)
            .and_then(|url| url.param("prompt", "consent"))
            .expect("the endpoint is a valid https URL")
            .redirect_uri(REDIRECT_URI)
            .scope("orders:read orders:write")
            .build(&CodeChallenge::s256(&login.verifier), &login.state);
        (login, url)
    }

    /// Reads the callback, refusing a response to a request it did not make.
    fn code_from(&self, callback: &Url) -> Result<String, &'static str> {
        let query: HashMap<_, _> = callback.query_pairs().into_owned().collect();
        match query.get("state") {
            Some(state) if self.state.matches(state) => {}
            _ => return Err("state does not match: not our request"),
        }
        query.get("code").cloned().ok_or("no code in the callback")
    }

    fn token_request<'a>(&'a self, code: &'a str) -> [(&'a str, &'a str); 5] {
        [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT_URI),
            ("client_id", CLIENT_ID),
            ("code_verifier", self.verifier.expose_secret()),
        ]
    }
}

fn report<T: std::fmt::Debug>(step: &str, outcome: &Result<T, OAuthError>) {
    match outcome {
        Ok(value) => println!("  ok      {step}: {value:?}"),
        Err(err) => println!("  refused {step}: {} ({})", err.error, err.description),
    }
}

fn main() {
    let mut server = AuthorizationServer::default();
    let now = Instant::now();

    println!("An honest login");
    let (login, url) = Login::start();
    println!("  authorization URL: {url}");
    let callback = server.authorize(&url, now).expect("a valid request");
    let code = login.code_from(&callback).expect("our own callback");
    let token = server.token(&login.token_request(&code), now);
    report("token request", &token);
    assert!(token.is_ok());

    println!("The same code again (replay)");
    let replay = server.token(&login.token_request(&code), now);
    report("token request", &replay);
    assert!(replay.is_err());

    println!("A stolen code, redeemed without the verifier");
    let (victim, url) = Login::start();
    let callback = server.authorize(&url, now).expect("a valid request");
    let stolen = victim.code_from(&callback).expect("our own callback");
    let attacker = CodeVerifier::generate();
    let mut form = victim.token_request(&stolen);
    form[4].1 = attacker.expose_secret();
    let theft = server.token(&form, now);
    report("attacker's token request", &theft);
    assert!(theft.is_err());
    let after = server.token(&victim.token_request(&stolen), now);
    report("victim's token request after the code was revoked", &after);
    assert!(after.is_err());

    println!("A downgrade: authorization request without a challenge");
    let mut stripped = url.clone();
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .into_owned()
        .filter(|(k, _)| !k.starts_with("code_challenge"))
        .collect();
    stripped.query_pairs_mut().clear().extend_pairs(kept);
    let downgrade = server.authorize(&stripped, now);
    report("authorization request", &downgrade);
    assert!(downgrade.is_err());

    println!("The plain method");
    let (plain_login, _) = Login::start();
    let plain = AuthorizationUrl::new(AUTHORIZE, CLIENT_ID)
        .expect("the endpoint is a valid https URL")
        .redirect_uri(REDIRECT_URI)
        .build(
            &CodeChallenge::new(&plain_login.verifier, ChallengeMethod::Plain),
            &plain_login.state,
        );
    let refused = server.authorize(&plain, now);
    report("authorization request", &refused);
    assert!(refused.is_err());

    println!("A forged callback (cross-site request forgery)");
    let (login, _) = Login::start();
    let mut forged = Url::parse(REDIRECT_URI).expect("a valid URL");
    forged
        .query_pairs_mut()
        .append_pair("code", "attackers-code")
        .append_pair("state", "guess");
    let csrf = login.code_from(&forged);
    println!("  refused callback: {}", csrf.unwrap_err());

    println!("An expired code");
    let (login, url) = Login::start();
    let callback = server.authorize(&url, now).expect("a valid request");
    let code = login.code_from(&callback).expect("our own callback");
    let late = server.token(&login.token_request(&code), now + CODE_LIFETIME);
    report("token request", &late);
    assert!(late.is_err());

    println!("Every attack was refused.");
}
