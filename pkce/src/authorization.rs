//! Building the authorization request URL (RFC 6749 section 4.1.1 with the
//! RFC 7636 parameters).

use url::Url;

use crate::challenge::CodeChallenge;
use crate::error::AuthorizationUrlError;
use crate::state::State;

/// Parameters the builder sets itself; giving them again is refused, so a
/// URL never carries two values for one of them.
const RESERVED: [&str; 7] = [
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
];

/// Builds an authorization request URL for the authorization code flow with
/// PKCE: `response_type=code`, `client_id`, optional `redirect_uri`,
/// `scope` and extra parameters, then `code_challenge`,
/// `code_challenge_method` and `state`.
///
/// Values are form-urlencoded (RFC 6749 appendix B), so spaces in a scope
/// become `+` and reserved characters in a redirect URI are escaped. A query
/// already on the endpoint is kept, as RFC 6749 section 3.1 requires.
///
/// # Example
///
/// ```
/// use palisade_pkce::{AuthorizationUrl, CodeChallenge, CodeVerifier, State};
///
/// let verifier = CodeVerifier::generate();
/// let state = State::generate();
/// let url = AuthorizationUrl::new("https://auth.example.com/authorize?tenant=acme", "my-app")?
///     .redirect_uri("https://app.example.com/callback?from=login")
///     .scope("openid profile")
///     .build(&CodeChallenge::s256(&verifier), &state);
///
/// let query = url.query().unwrap();
/// assert!(query.starts_with("tenant=acme&response_type=code&client_id=my-app"));
/// assert!(query.contains("redirect_uri=https%3A%2F%2Fapp.example.com%2Fcallback%3Ffrom%3Dlogin"));
/// assert!(query.contains("scope=openid+profile"));
/// assert!(query.contains("code_challenge_method=S256"));
/// # Ok::<(), palisade_pkce::AuthorizationUrlError>(())
/// ```
#[derive(Debug, Clone)]
pub struct AuthorizationUrl {
    endpoint: Url,
    client_id: String,
    redirect_uri: Option<String>,
    scope: Option<String>,
    extra: Vec<(String, String)>,
}

impl AuthorizationUrl {
    /// Starts a request to the authorization `endpoint` for `client_id`.
    ///
    /// # Errors
    ///
    /// [`AuthorizationUrlError`] when the endpoint is not an absolute
    /// `https` or `http` URL, has a fragment, or already carries one of the
    /// parameters the builder sets.
    pub fn new(endpoint: &str, client_id: &str) -> Result<Self, AuthorizationUrlError> {
        let endpoint = Url::parse(endpoint).map_err(AuthorizationUrlError::Parse)?;
        if !matches!(endpoint.scheme(), "https" | "http") {
            return Err(AuthorizationUrlError::UnsupportedScheme);
        }
        if endpoint.fragment().is_some() {
            return Err(AuthorizationUrlError::Fragment);
        }
        if let Some((name, _)) = endpoint
            .query_pairs()
            .find(|(name, _)| RESERVED.contains(&name.as_ref()))
        {
            return Err(AuthorizationUrlError::ReservedParameter {
                name: name.into_owned(),
            });
        }
        Ok(Self {
            endpoint,
            client_id: client_id.to_owned(),
            redirect_uri: None,
            scope: None,
            extra: Vec::new(),
        })
    }

    /// Sets `redirect_uri`.
    #[must_use]
    pub fn redirect_uri(mut self, uri: &str) -> Self {
        self.redirect_uri = Some(uri.to_owned());
        self
    }

    /// Sets `scope`, space-separated scope tokens.
    #[must_use]
    pub fn scope(mut self, scope: &str) -> Self {
        self.scope = Some(scope.to_owned());
        self
    }

    /// Adds another parameter, such as `nonce`, `prompt` or
    /// `login_hint`.
    ///
    /// # Errors
    ///
    /// [`AuthorizationUrlError::ReservedParameter`] for a parameter the
    /// builder sets itself.
    pub fn param(mut self, name: &str, value: &str) -> Result<Self, AuthorizationUrlError> {
        if RESERVED.contains(&name) {
            return Err(AuthorizationUrlError::ReservedParameter {
                name: name.to_owned(),
            });
        }
        self.extra.push((name.to_owned(), value.to_owned()));
        Ok(self)
    }

    /// The authorization request URL for `challenge` and `state`.
    #[must_use]
    pub fn build(&self, challenge: &CodeChallenge, state: &State) -> Url {
        let mut url = self.endpoint.clone();
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("response_type", "code")
                .append_pair("client_id", &self.client_id);
            if let Some(uri) = &self.redirect_uri {
                query.append_pair("redirect_uri", uri);
            }
            if let Some(scope) = &self.scope {
                query.append_pair("scope", scope);
            }
            for (name, value) in &self.extra {
                query.append_pair(name, value);
            }
            query
                .append_pair("code_challenge", challenge.as_str())
                .append_pair("code_challenge_method", challenge.method().as_str())
                .append_pair("state", state.as_str());
        }
        url
    }
}
