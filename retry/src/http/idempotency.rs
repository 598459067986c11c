//! Which HTTP requests may be sent more than once.

use http::{HeaderName, Method, Request};

/// The idempotency gate: which requests may be retried at all.
///
/// By default the methods RFC 9110 defines as idempotent (`GET`, `HEAD`,
/// `OPTIONS`, `PUT`, `DELETE`, and `TRACE`) and any request carrying an
/// `Idempotency-Key` header, which asks the server to deduplicate it.
/// Everything else (a `POST` or `PATCH` without a key) is sent once.
///
/// # Example
///
/// ```
/// use http::{Method, Request};
/// use palisade_retry::http::Idempotency;
///
/// let gate = Idempotency::default();
/// assert!(gate.allows(&Request::get("/orders/7").body(()).unwrap()));
/// assert!(!gate.allows(&Request::post("/orders").body(()).unwrap()));
/// let keyed = Request::post("/orders").header("idempotency-key", "k-1").body(()).unwrap();
/// assert!(gate.allows(&keyed));
/// assert!(Idempotency::default().also(Method::PATCH).allows(
///     &Request::patch("/orders/7").body(()).unwrap()
/// ));
/// ```
#[derive(Debug, Clone)]
pub struct Idempotency {
    methods: Vec<Method>,
    key: Option<HeaderName>,
    any: bool,
}

impl Default for Idempotency {
    fn default() -> Self {
        Self {
            methods: vec![
                Method::GET,
                Method::HEAD,
                Method::OPTIONS,
                Method::PUT,
                Method::DELETE,
                Method::TRACE,
            ],
            key: Some(HeaderName::from_static("idempotency-key")),
            any: false,
        }
    }
}

impl Idempotency {
    /// Every request may be retried, whatever its method: for protocols
    /// where the server tells retryable failures apart (gRPC's
    /// `UNAVAILABLE` means the call was not processed).
    #[must_use]
    pub fn any_method() -> Self {
        Self {
            any: true,
            ..Self::default()
        }
    }

    /// Also retries requests with `method`.
    #[must_use]
    pub fn also(mut self, method: Method) -> Self {
        if !self.methods.contains(&method) {
            self.methods.push(method);
        }
        self
    }

    /// The header whose presence makes any request retryable
    /// (`Idempotency-Key` by default); `None` for no such header.
    #[must_use]
    pub fn key_header(mut self, name: Option<HeaderName>) -> Self {
        self.key = name;
        self
    }

    /// Whether `request` may be sent more than once.
    #[must_use]
    pub fn allows<B>(&self, request: &Request<B>) -> bool {
        self.any
            || self.methods.contains(request.method())
            || self
                .key
                .as_ref()
                .is_some_and(|key| request.headers().contains_key(key))
    }
}
