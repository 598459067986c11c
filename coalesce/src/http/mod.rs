//! The HTTP layer (feature `http`): whole responses served from a
//! [`Cache`], so concurrent identical `GET`s reach the origin once.
//!
//! [`CoalesceLayer`] caches `GET` and `HEAD` responses in a
//! [`ResponseCache`] (in process, or through Redis across processes), keyed
//! by method, host (the URI's authority, else `Host`), path and query, and
//! the request header fields named with [`vary`](CoalesceLayer::vary), as
//! a shared cache must (RFC 9111):
//!
//! - **One user's response never reaches another.** A request with
//!   `Authorization` or `Cookie` goes to the origin on its own unless that
//!   field is one of the layer's [`vary`](CoalesceLayer::vary) fields (then
//!   it is part of the key). A response with `private`, `no-store`,
//!   `no-cache` or `Set-Cookie`, or with a `Vary` naming a field outside the
//!   layer's `vary` (or `Vary: *`), is neither stored nor handed to the
//!   other requests of its flight: each of them asks the origin itself.
//! - **Each caller's own conditions.** The origin is asked without
//!   `If-None-Match` and `If-Modified-Since`; the layer answers each caller's
//!   conditions itself (`304 Not Modified`). Requests with `Range`,
//!   `If-Range`, `If-Match` or `If-Unmodified-Since` go to the origin on
//!   their own, as do those naming their resource (host, path and query)
//!   in more than 8 KiB.
//! - **The origin's lifetime.** `s-maxage` or `max-age` sets it, else
//!   `Expires` less `Date` (an `Expires` that is no date, such as `0`, has
//!   expired: the response is not stored), else the cache's [`Freshness`];
//!   less the `Age` the response already has;
//!   `stale-while-revalidate` and `stale-if-error` open their windows, which
//!   `must-revalidate`, `proxy-revalidate` and `s-maxage` close. Served
//!   responses carry `Age`: the origin's plus the time spent in the cache.
//! - **Writes invalidate.** A request of an unsafe method (`POST`, `PUT`,
//!   `DELETE`…) drops the cached `GET` and `HEAD` responses of its URI
//!   (those keyed with the same `vary` values) unless the origin answers
//!   that it failed (4xx, 5xx): after a 2xx or 3xx, after any error (a
//!   transport's, or a layer's below: a retry there may have sent it
//!   once before a breaker refused it), and when its caller stops waiting
//!   first (a timeout above, a client gone), since the origin may have
//!   applied it. A `GET` of the URI in
//!   the moment between a caller leaving and the origin applying the write
//!   may still store the old representation.
//! - **A server error is an error.** An origin's 500, 502, 503 or 504
//!   (RFC 5861 §4), or its 429 (pacing its callers), leaves the stored
//!   response as it was: it is served while it revalidates, and within
//!   `stale-if-error` in place of the error; a request nothing stored can
//!   answer gets the origin's response. On a
//!   [`RedisCache`](crate::RedisCache), so do the requests waiting for it
//!   in other processes, without calling the origin again.
//! - **So is a refusal from below.** A response a palisade layer beneath
//!   answered for a call it refused (an open breaker's `503`, a rate
//!   limiter's `429`: a [`Refusal`] in its extensions) is the flight's
//!   error too, whatever its status: the stored response stands, and a
//!   request nothing stored can answer gets that response with its
//!   `Refusal`, so the layers above still tell it from the origin's. A
//!   refusal is the refusing process's own: the requests waiting for it in
//!   other processes ask the origin through their own stack. One for the
//!   refused request's own sake (its caller over a rate limit, shed for
//!   its low priority) is that request's alone: the requests waiting for
//!   it in this process ask again, in a flight led by one of them (up to
//!   three such flights, then each on its own); an open circuit answers
//!   them all.
//! - **Credentials stay out of the store.** The varying fields' values
//!   enter the key as a SHA-256 digest, so an `Authorization` or `Cookie`
//!   the layer varies on is not written in a shared store's key names (nor
//!   published in its wake-ups); the method, host, path and query are
//!   written as they are, so keep secrets out of cached URLs.
//! - A request with `Cache-Control: no-cache` goes to the origin, and so
//!   does one with `no-store`, whose response is stored nowhere.
//! - **The scheme is not in the key.** A server's HTTP/1.1 requests carry
//!   none and its HTTP/2 requests do, and both must find, and drop, one
//!   entry. A client's layer reaching one host by both `http` and `https`
//!   shares their responses (a `301` from `http` to `https` would be
//!   served for `https` too): give each scheme a layer of its own.
//!
//! Bodies are kept whole, up to [`max_body`](CoalesceLayer::max_body)
//! bytes (1 MiB by default); a larger response fails its flight with
//! [`ResponseTooLarge`].
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use axum::{Router, routing::get};
//! use palisade_coalesce::http::{CachedResponse, CoalesceLayer};
//! use palisade_coalesce::{Cache, Freshness};
//!
//! let freshness = Freshness::new(Duration::from_secs(10)).stale_while_revalidate(Duration::from_secs(60));
//! let cache: Cache<String, CachedResponse, tower::BoxError> = Cache::new(10_000, freshness);
//! let app: Router = Router::new()
//!     .route("/catalog/trending", get(|| async { "[7, 3, 9]" }))
//!     // A failed flight answers 502 Bad Gateway, so the layer goes on the
//!     // router as it is.
//!     .layer(CoalesceLayer::new(cache).answer_failures());
//! # let _ = app;
//! ```

mod cache_control;
mod response;

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    AGE, AUTHORIZATION, CACHE_CONTROL, CONTENT_LOCATION, COOKIE, DATE, ETAG, EXPIRES, HOST,
    HeaderValue, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE,
    LAST_MODIFIED, PRAGMA, RANGE, SET_COOKIE, VARY,
};
use http::{HeaderMap, HeaderName, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Limited};
use palisade_hints::http::refusal_response;
use palisade_hints::{Refusal, RefusalReason};
use tower::{BoxError, Layer, Service, ServiceExt};

pub use crate::error::SharedError;
pub use cache_control::CacheControl;
pub use response::CachedResponse;

use crate::cache::{Cache, Lookup};
use crate::error::FlightError;
use crate::freshness::Freshness;

/// The default [`max_body`](CoalesceLayer::max_body): 1 MiB.
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;

/// Where [`CoalesceLayer`] keeps responses: the in-process [`Cache`], or
/// with feature `redis` a [`RedisCache`](crate::RedisCache) shared by every
/// process (responses stored in their byte form).
pub trait ResponseCache: Clone + Send + Sync + 'static {
    /// The response for `key`, from the cache or from `fetch` (computed
    /// once for every caller that asks meanwhile).
    fn lookup<F, Fut>(
        &self,
        key: String,
        fetch: F,
    ) -> impl Future<Output = Result<Lookup<CachedResponse>, FlightError<BoxError>>> + Send
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut:
            Future<Output = Result<(CachedResponse, Option<Freshness>), BoxError>> + Send + 'static;

    /// The lifetime of responses that do not say.
    fn default_freshness(&self) -> Freshness;

    /// Drops the response stored under `key`, if any (an unsafe request
    /// changed its resource).
    fn invalidate(&self, key: String) -> impl Future<Output = ()> + Send;
}

impl ResponseCache for Cache<String, CachedResponse, BoxError> {
    fn lookup<F, Fut>(
        &self,
        key: String,
        fetch: F,
    ) -> impl Future<Output = Result<Lookup<CachedResponse>, FlightError<BoxError>>> + Send
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut:
            Future<Output = Result<(CachedResponse, Option<Freshness>), BoxError>> + Send + 'static,
    {
        self.get_with_freshness(key, fetch)
    }

    fn default_freshness(&self) -> Freshness {
        self.freshness()
    }

    fn invalidate(&self, key: String) -> impl Future<Output = ()> + Send {
        Cache::invalidate(self, &key);
        std::future::ready(())
    }
}

#[cfg(feature = "redis")]
impl<C> ResponseCache for crate::RedisCache<C, BoxError>
where
    C: redis::aio::ConnectionLike + Clone + Send + Sync + 'static,
{
    fn lookup<F, Fut>(
        &self,
        key: String,
        fetch: F,
    ) -> impl Future<Output = Result<Lookup<CachedResponse>, FlightError<BoxError>>> + Send
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut:
            Future<Output = Result<(CachedResponse, Option<Freshness>), BoxError>> + Send + 'static,
    {
        let fetch = move || {
            let fetching = fetch();
            async move {
                fetching
                    .await
                    .map(|(response, freshness)| (response.to_bytes(), freshness))
            }
        };
        async move {
            let lookup = self
                .get_sharing(&key, fetch, Some(Unanswered::sharing()))
                .await?;
            let response = CachedResponse::from_bytes(lookup.value).ok_or_else(|| {
                FlightError::Failed(Arc::new(BoxError::from(
                    "a stored response could not be read",
                )))
            })?;
            Ok(Lookup {
                value: response,
                served: lookup.served,
                age: lookup.age,
            })
        }
    }

    fn default_freshness(&self) -> Freshness {
        self.freshness()
    }

    async fn invalidate(&self, key: String) {
        crate::RedisCache::invalidate(self, &key).await;
    }
}

/// Serves `GET` and `HEAD` responses from a [`ResponseCache`], computing
/// each once; see the [module docs](self).
///
/// `F` says what the layer's own failures become (a flight that failed, a
/// body over [`max_body`](Self::max_body), a stored response that cannot
/// be read): errors ([`BoxErrors`], the default, for clients), or `502 Bad
/// Gateway` responses ([`BadGateway`], with
/// [`answer_failures`](Self::answer_failures), for an axum `Router`).
#[derive(Debug, Clone)]
pub struct CoalesceLayer<R = Cache<String, CachedResponse, BoxError>, F = BoxErrors> {
    cache: R,
    vary: Arc<[HeaderName]>,
    max_body: usize,
    failures: F,
}

impl<R: ResponseCache> CoalesceLayer<R> {
    /// A layer serving from `cache` (shared by every service it makes);
    /// its own failures are errors.
    #[must_use]
    pub fn new(cache: R) -> Self {
        Self {
            cache,
            vary: Arc::from([]),
            max_body: DEFAULT_MAX_BODY,
            failures: BoxErrors,
        }
    }

    /// Answers the layer's own failures with `502 Bad Gateway` instead of
    /// an error, the failure in the response's extensions as a
    /// [`SharedError`]; the service then has the inner service's error
    /// type, `Infallible`, so it stacks on an axum `Router` (or a route) as
    /// it is, with no `HandleErrorLayer`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use axum::{Router, routing::get};
    /// use palisade_coalesce::http::{CachedResponse, CoalesceLayer};
    /// use palisade_coalesce::{Cache, Freshness};
    ///
    /// let cache: Cache<String, CachedResponse, tower::BoxError> =
    ///     Cache::new(10_000, Freshness::new(Duration::from_secs(10)));
    /// let app: Router = Router::new()
    ///     .route("/catalog/trending", get(|| async { "[7, 3, 9]" }))
    ///     .layer(CoalesceLayer::new(cache).answer_failures());
    /// # let _ = app;
    /// ```
    #[must_use]
    pub fn answer_failures(self) -> CoalesceLayer<R, BadGateway> {
        CoalesceLayer {
            cache: self.cache,
            vary: self.vary,
            max_body: self.max_body,
            failures: BadGateway,
        }
    }
}

impl<R, F> CoalesceLayer<R, F> {
    /// Request fields whose values tell responses apart (`Accept`,
    /// `Accept-Encoding`, `Authorization` for per-user responses…): part of
    /// the key, so each combination of values is a response of its own.
    ///
    /// Name here the fields the origin's `Vary` names, or its responses are
    /// not stored; name `Authorization` or `Cookie` to cache per-user
    /// responses (per credential), or requests carrying them bypass the
    /// cache.
    #[must_use]
    pub fn vary(mut self, fields: impl IntoIterator<Item = HeaderName>) -> Self {
        self.vary = fields.into_iter().collect();
        self
    }

    /// The largest body kept, in bytes.
    #[must_use]
    pub const fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }
}

#[cfg(feature = "otel")]
impl<F> CoalesceLayer<Cache<String, CachedResponse, BoxError>, F> {
    /// Registers the cache's flight metrics with `meter` as `name`
    /// (feature `otel`), in the builder shape every palisade layer's
    /// `instrument` has; see [`Cache::instrument`].
    #[must_use]
    pub fn instrument(
        self,
        meter: &opentelemetry::metrics::Meter,
        name: impl Into<String>,
    ) -> Self {
        self.cache.instrument(meter, name);
        self
    }
}

#[cfg(all(feature = "otel", feature = "redis"))]
impl<C, F> CoalesceLayer<crate::RedisCache<C, BoxError>, F>
where
    C: redis::aio::ConnectionLike + Clone + Send + Sync + 'static,
{
    /// Registers the cache's flight metrics with `meter` as `name`
    /// (features `otel`, `redis`), in the builder shape every palisade
    /// layer's `instrument` has; see
    /// [`RedisCache::instrument`](crate::RedisCache::instrument).
    #[must_use]
    pub fn instrument(
        self,
        meter: &opentelemetry::metrics::Meter,
        name: impl Into<String>,
    ) -> Self {
        self.cache.instrument(meter, name);
        self
    }
}

impl<S, R: Clone, F: Clone> Layer<S> for CoalesceLayer<R, F> {
    type Service = Coalesce<S, R, F>;

    fn layer(&self, inner: S) -> Self::Service {
        Coalesce {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`CoalesceLayer`].
#[derive(Debug, Clone)]
pub struct Coalesce<S, R = Cache<String, CachedResponse, BoxError>, F = BoxErrors> {
    inner: S,
    layer: CoalesceLayer<R, F>,
}

/// The response future of [`Coalesce`]: a flight's landing involves a map,
/// a task and a channel, beside which one allocation is nothing.
pub type ResponseFuture<B, E = BoxError> =
    Pin<Box<dyn Future<Output = Result<Response<CoalesceBody<B>>, E>> + Send>>;

/// What the layer's own failures become, and the service's error type.
pub trait Failures<B, E>: Clone + Send + Sync + 'static {
    /// The service's error type.
    type Error;

    /// The answer to a request the layer failed (the failure, or the inner
    /// service's error, boxed).
    ///
    /// # Errors
    ///
    /// Whatever this strategy makes of the failure.
    fn failed(&self, failure: BoxError) -> Result<Response<CoalesceBody<B>>, Self::Error>;

    /// The inner service's readiness error, as this service's.
    fn not_ready(&self, error: E) -> Self::Error;
}

/// Failures as [`BoxError`]s: the default, for clients, where the inner
/// service's errors (a connection refused) are the caller's to see.
#[derive(Debug, Clone, Copy, Default)]
pub struct BoxErrors;

impl<B, E: Into<BoxError>> Failures<B, E> for BoxErrors {
    type Error = BoxError;

    fn failed(&self, failure: BoxError) -> Result<Response<CoalesceBody<B>>, BoxError> {
        Err(failure)
    }

    fn not_ready(&self, error: E) -> BoxError {
        error.into()
    }
}

/// Failures as `502 Bad Gateway` with an empty body and the failure in the
/// extensions ([`SharedError`]), for inner services that never fail (an
/// axum `Router`'s routes); made by
/// [`CoalesceLayer::answer_failures`]. A lookup its cache refused
/// ([`FlightError::Refused`]: Redis down, and a failure policy that
/// computes nothing without it) is answered `503 Service Unavailable`,
/// with `Retry-After` and the [`Refusal`] in the extensions, as every
/// palisade layer answers a call it refused.
#[derive(Debug, Clone, Copy, Default)]
pub struct BadGateway;

impl<B> Failures<B, std::convert::Infallible> for BadGateway {
    type Error = std::convert::Infallible;

    fn failed(
        &self,
        failure: BoxError,
    ) -> Result<Response<CoalesceBody<B>>, std::convert::Infallible> {
        if let Some(refusal) = failure.downcast_ref::<Refusal>() {
            tracing::debug!(target: "palisade_coalesce", %refusal, "coalesced request refused; answering 503");
            return Ok(
                refusal_response::<()>(StatusCode::SERVICE_UNAVAILABLE, *refusal)
                    .map(|()| CoalesceBody::cached(Bytes::new())),
            );
        }
        palisade_hints::throttled!(warn, target: "palisade_coalesce", error = %failure, "coalesced request failed; answering 502");
        let mut response = Response::new(CoalesceBody::cached(Bytes::new()));
        *response.status_mut() = StatusCode::BAD_GATEWAY;
        let shared = match failure.downcast::<SharedError>() {
            Ok(shared) => *shared,
            Err(failure) => SharedError(Arc::new(failure)),
        };
        response.extensions_mut().insert(shared);
        Ok(response)
    }

    fn not_ready(&self, error: std::convert::Infallible) -> std::convert::Infallible {
        error
    }
}

impl<S, R, F, ReqBody, ResBody> Service<Request<ReqBody>> for Coalesce<S, R, F>
where
    R: ResponseCache,
    F: Failures<ResBody, S::Error>,
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<CoalesceBody<ResBody>>;
    type Error = F::Error;
    type Future = ResponseFuture<ResBody, F::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), F::Error>> {
        let failures = &self.layer.failures;
        self.inner
            .poll_ready(cx)
            .map_err(|error| failures.not_ready(error))
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let failures = self.layer.failures.clone();
        let answer = self.answer(request);
        Box::pin(async move {
            match answer.await {
                Ok(response) => Ok(response),
                Err(failure) => failures.failed(failure),
            }
        })
    }
}

impl<S, R, F> Coalesce<S, R, F> {
    /// The response to `request`, or the layer's failure.
    fn answer<ReqBody, ResBody>(&mut self, request: Request<ReqBody>) -> ResponseFuture<ResBody>
    where
        R: ResponseCache,
        S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
        S::Future: Send,
        S::Error: Into<BoxError>,
        ReqBody: Send + 'static,
        ResBody: Body<Data = Bytes> + Send + 'static,
        ResBody::Error: Into<BoxError>,
    {
        if !matches!(*request.method(), Method::GET | Method::HEAD) {
            return self.call_uncached(request);
        }
        if bypasses(&request, &self.layer.vary) {
            let response = self.inner.call(request);
            return Box::pin(async move {
                let response = response.await.map_err(Into::into)?;
                Ok(response.map(CoalesceBody::origin))
            });
        }
        let key = key(request.method(), &request, &self.layer.vary);
        let head = request.method() == Method::HEAD;
        let conditions = Conditions::of(request.headers());
        // What readiness took (a concurrency permit, a buffer's slot) is
        // given back: this request may never call the origin, or only
        // after waiting for another's flight (in another process, as long
        // as the wait timeout). The flight's clone is made ready when it
        // calls; kept here, the readied service held the permit it waits
        // for.
        let clone = self.inner.clone();
        drop(std::mem::replace(&mut self.inner, clone));
        let (origin, fallback, cache, vary, max_body) = (
            self.inner.clone(),
            self.inner.clone(),
            self.layer.cache.clone(),
            self.layer.vary.clone(),
            self.layer.max_body,
        );
        let default = cache.default_freshness();
        // The request goes to the origin with whichever caller's closure
        // runs; the others keep theirs, in case the response may not be
        // shared.
        let own = Arc::new(std::sync::Mutex::new(Some(request)));
        Box::pin(async move {
            let (mut key, mut turn, mut origin) = (key, 1, Some(origin));
            let outcome = loop {
                let sent = own.clone();
                let fetch_vary = vary.clone();
                // A clone only for a turn after the first.
                let origin = origin.take().unwrap_or_else(|| fallback.clone());
                let compute = move || {
                    let request = take(&sent);
                    async move {
                        let request = request.ok_or("the request was sent already")?;
                        fetch(origin, request, max_body, default, &fetch_vary).await
                    }
                };
                let outcome = cache.lookup(key, compute).await;
                // A refusal from below for the leader's own sake (its
                // rate limit, its low priority shed) answers the request
                // that was sent, not the others of its flight: a caller
                // whose own request was not sent asks again, in a new
                // flight led by one of them, and after a few turns on its
                // own.
                if outcome.as_ref().is_err_and(refused_below)
                    && let Some(again) = unsent_key(&own, &vary)
                {
                    if turn < REFUSED_TURNS {
                        (key, turn) = (again, turn + 1);
                        continue;
                    }
                    if let Some(request) = take(&own) {
                        let response = fallback.oneshot(request).await.map_err(Into::into)?;
                        return Ok(response.map(CoalesceBody::origin));
                    }
                }
                break outcome;
            };
            let (lookup, refusal) = match outcome {
                Ok(lookup) => (lookup, None),
                Err(error) => match Unanswered::of(&error) {
                    // Nothing stored stood in for it: the answer from
                    // below is the caller's.
                    Some(Unanswered { response, refusal }) => {
                        let lookup = Lookup {
                            value: response.clone(),
                            served: crate::Served::Miss,
                            age: Duration::ZERO,
                        };
                        (lookup, *refusal)
                    }
                    None => return Err(FlightError::into_box_error(error)),
                },
            };
            if !shareable(&lookup.value.headers, &vary)
                && let Some(request) = take(&own)
            {
                // Another caller's response, not for sharing: ask the
                // origin for this caller's own.
                let response = fallback.oneshot(request).await.map_err(Into::into)?;
                return Ok(response.map(CoalesceBody::origin));
            }
            let mut response = respond(lookup, head, &conditions);
            if let Some(refusal) = refusal {
                response.extensions_mut().insert(refusal);
            }
            Ok(response)
        })
    }
}

impl<S, R, F> Coalesce<S, R, F> {
    /// A request of another method: to the origin; an unsafe one drops
    /// the cached `GET` and `HEAD` of its URI unless the origin answers
    /// that it failed (a 4xx or a 5xx).
    fn call_uncached<ReqBody, ResBody>(
        &mut self,
        request: Request<ReqBody>,
    ) -> ResponseFuture<ResBody>
    where
        R: ResponseCache,
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        ResBody: Send + 'static,
    {
        // A resource named too long to key has no cached response to
        // drop (its `GET` goes to the origin on its own).
        let safe = matches!(*request.method(), Method::OPTIONS | Method::TRACE)
            || too_long_to_key(&request);
        let stale = (!safe).then(|| Invalidation {
            cache: self.layer.cache.clone(),
            keys: [Method::GET, Method::HEAD]
                .map(|method| key(&method, &request, &self.layer.vary))
                .into(),
        });
        let response = self.inner.call(request);
        Box::pin(async move {
            // Armed from the moment the request is sent: once the origin
            // may have applied it, only its answer that it failed keeps
            // the cached responses.
            let response = response.await.map_err(Into::into);
            if let Some(stale) = stale {
                match &response {
                    Ok(response) if response.status().is_client_error() => stale.disarm(),
                    Ok(response) if response.status().is_server_error() => stale.disarm(),
                    // Applied, or no answer to tell: a transport that failed
                    // after the origin took the request.
                    _ => stale.run().await,
                }
            }
            Ok(response?.map(CoalesceBody::origin))
        })
    }
}

/// The cached `GET` and `HEAD` of an unsafe request's URI, to be dropped.
///
/// Dropped unfinished (its caller gone before the answer: a timeout above,
/// a client that hung up), it drops them in a task of its own: the origin
/// may have applied the request, and serving the old response until it
/// expires would hide the change from the very caller that made it. A
/// needless invalidation costs one miss.
struct Invalidation<R: ResponseCache> {
    cache: R,
    /// The keys not dropped yet, the one being dropped last.
    keys: Vec<String>,
}

impl<R: ResponseCache> Invalidation<R> {
    async fn run(mut self) {
        // Popped once done: a key cut short is left for the drop.
        while let Some(key) = self.keys.last() {
            self.cache.invalidate(key.clone()).await;
            self.keys.pop();
        }
    }

    /// The origin said the request failed: nothing changed.
    fn disarm(mut self) {
        self.keys.clear();
    }
}

impl<R: ResponseCache> Drop for Invalidation<R> {
    fn drop(&mut self) {
        if self.keys.is_empty() {
            return;
        }
        let (cache, keys) = (self.cache.clone(), std::mem::take(&mut self.keys));
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    for key in keys {
                        cache.invalidate(key).await;
                    }
                });
            }
            Err(_) => tracing::warn!(
                target: "palisade_coalesce",
                keys = keys.len(),
                "an unsafe request was dropped outside a runtime; its URI's cached responses are kept"
            ),
        }
    }
}

/// The request in `slot`, taken.
fn take<T>(slot: &std::sync::Mutex<Option<T>>) -> Option<T> {
    slot.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
}

/// The key of the request in `slot`, if it is still there: the caller's
/// own was not sent.
fn unsent_key<B>(
    slot: &std::sync::Mutex<Option<Request<B>>>,
    vary: &[HeaderName],
) -> Option<String> {
    let unsent = slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    unsent
        .as_ref()
        .map(|request| key(request.method(), request, vary))
}

/// How many flights a caller joins whose leader a layer below refused
/// for that request's own sake before it sends its own request on its
/// own: its first and three more.
const REFUSED_TURNS: usize = 4;

/// Whether a flight failed because a layer below refused its leader's
/// request for that request's own sake (a [`Refusal`] on the response or
/// in the error): its caller over a rate limit, or shed for its low
/// priority. That is the leader's own answer, not the origin's, and
/// another caller's request may well pass. An open circuit or a shared
/// store out of reach refuses every caller alike: that refusal answers the
/// whole flight.
fn refused_below(error: &FlightError<BoxError>) -> bool {
    let refusal = match error {
        FlightError::Failed(failure) => match Unanswered::of(error) {
            Some(unanswered) => unanswered.refusal,
            None => Refusal::find(&***failure).copied(),
        },
        // The cache's own refusal (Redis out of reach) answers everyone.
        FlightError::Refused(_) | FlightError::Panicked(_) | FlightError::Cancelled => None,
    };
    refusal.is_some_and(|refusal| {
        matches!(
            refusal.reason(),
            RefusalReason::RateLimited | RefusalReason::Shed
        )
    })
}

/// The longest host, path and query a request is cached by, in bytes.
const LONGEST_KEYED: usize = 8 * 1024;

/// Whether the request goes to the origin on its own: it asks to skip the
/// cache (`no-cache`) or that its response be stored nowhere (`no-store`),
/// carries credentials the key does not include, asks
/// for part of a response or a condition the layer does not answer, or
/// names its resource in more than [`LONGEST_KEYED`] bytes (a padded
/// `Host` or query made keys of up to a megabyte each, memory the cache's
/// count of entries does not bound, and names in a shared store).
fn bypasses<B>(request: &Request<B>, vary: &[HeaderName]) -> bool {
    let headers = request.headers();
    let personal = |field: &HeaderName| headers.contains_key(field) && !vary.contains(field);
    let control = CacheControl::parse(headers);
    too_long_to_key(request)
        || control.no_cache
        || control.no_store
        || headers
            .get(PRAGMA)
            .is_some_and(|pragma| pragma.as_bytes().eq_ignore_ascii_case(b"no-cache"))
        || personal(&AUTHORIZATION)
        || personal(&COOKIE)
        || [RANGE, IF_RANGE, IF_MATCH, IF_UNMODIFIED_SINCE]
            .iter()
            .any(|field| headers.contains_key(field))
}

/// Whether `request` names its resource (host, path and query) in more
/// than [`LONGEST_KEYED`] bytes.
fn too_long_to_key<B>(request: &Request<B>) -> bool {
    let (host, path) = resource(request);
    host.len() + path.len() > LONGEST_KEYED
}

/// What `request` names its resource by: the host (the URI's authority,
/// else `Host`) and the path and query.
fn resource<B>(request: &Request<B>) -> (&[u8], &str) {
    let uri = request.uri();
    let host = uri.authority().map_or_else(
        || {
            request
                .headers()
                .get(HOST)
                .map_or(&b""[..], HeaderValue::as_bytes)
        },
        |authority| authority.as_str().as_bytes(),
    );
    (host, uri.path_and_query().map_or("/", |path| path.as_str()))
}

/// The cache key of `request` as `method`: the method, the host (the
/// URI's authority, else `Host`, lowercased), the path and query, then a
/// SHA-256 digest of each varying field's values, so that credentials
/// (`Authorization`, `Cookie`) never reach a shared store's key names or
/// its wake-up messages. Field values are escaped, and each ends with a
/// comma, so a comma inside a value, two field lines and no line at all
/// give three keys.
fn key<B>(method: &Method, request: &Request<B>, vary: &[HeaderName]) -> String {
    use sha2::Digest as _;
    use std::fmt::Write as _;
    let mut key = unvaried_key(method, request);
    if vary.is_empty() {
        return key;
    }
    let mut varied = String::new();
    for name in vary {
        varied.push_str(name.as_str());
        varied.push(':');
        for value in request.headers().get_all(name) {
            escape(&mut varied, value.as_bytes());
            varied.push(',');
        }
        varied.push('\n');
    }
    key.push_str("\nvary:");
    for byte in sha2::Sha256::digest(varied.as_bytes()) {
        let _ = write!(key, "{byte:02x}");
    }
    key
}

/// The key's method, host, path and query.
fn unvaried_key<B>(method: &Method, request: &Request<B>) -> String {
    let (host, path) = resource(request);
    let mut key = String::with_capacity(method.as_str().len() + host.len() + path.len() + 2);
    key.push_str(method.as_str());
    key.push(' ');
    escape(&mut key, &host.to_ascii_lowercase());
    key.push_str(path);
    key
}

/// `bytes` into `key`, with every byte outside visible ASCII, and `%`, `,`
/// and `/`, written as `%XX`.
fn escape(key: &mut String, bytes: &[u8]) {
    use std::fmt::Write;
    for &byte in bytes {
        if byte.is_ascii_graphic() && !matches!(byte, b'%' | b',' | b'/') {
            key.push(char::from(byte));
        } else {
            let _ = write!(key, "%{byte:02X}");
        }
    }
}

/// Whether a response may serve requests other than the one that asked
/// for it (RFC 9111 §3, §4.1): not `private`, `no-store` or `no-cache`,
/// no `Set-Cookie`, and a `Vary` naming only fields the key includes.
fn shareable(headers: &HeaderMap, vary: &[HeaderName]) -> bool {
    let directives = CacheControl::parse(headers);
    if directives.private || directives.no_store || directives.no_cache {
        return false;
    }
    if headers.contains_key(SET_COOKIE) {
        return false;
    }
    headers.get_all(VARY).iter().all(|value| {
        value.to_str().is_ok_and(|names| {
            names.split(',').map(str::trim).all(|name| {
                name.is_empty()
                    || (name != "*" && vary.iter().any(|n| n.as_str().eq_ignore_ascii_case(name)))
            })
        })
    })
}

/// The time a field holds, if it holds an HTTP date.
fn http_date(value: Option<&HeaderValue>) -> Option<std::time::SystemTime> {
    value
        .and_then(|value| value.to_str().ok())
        .and_then(|value| httpdate::parse_http_date(value).ok())
}

/// The lifetime a response's `Expires` gives it, counted from its `Date`
/// or else from now (RFC 9111 §4.2.1), if it has an `Expires`: one that
/// is not a date (`0`, say) has expired already (§5.3).
fn expires_lifetime(headers: &HeaderMap) -> Option<Duration> {
    let expires = headers.get(EXPIRES)?;
    let Some(expires) = http_date(Some(expires)) else {
        return Some(Duration::ZERO);
    };
    let date = http_date(headers.get(DATE)).unwrap_or_else(std::time::SystemTime::now);
    Some(expires.duration_since(date).unwrap_or(Duration::ZERO))
}

/// The `Age` a response carries (RFC 9111 §5.1); 0 when absent or not
/// digits. Digits past what a `u64` holds are the longest age (RFC 9111
/// §1.2.2: at least 2^31 seconds), not none: read as 0, a response aged
/// past any lifetime was stored as new.
fn age_of(headers: &HeaderMap) -> Duration {
    let Some(age) = headers.get(AGE).map(|age| age.as_bytes().trim_ascii()) else {
        return Duration::ZERO;
    };
    if age.is_empty() || !age.iter().all(u8::is_ascii_digit) {
        return Duration::ZERO;
    }
    let seconds = std::str::from_utf8(age)
        .ok()
        .and_then(|age| age.parse().ok())
        .unwrap_or(cache_control::MAX_DELTA)
        .min(cache_control::MAX_DELTA);
    Duration::from_secs(seconds)
}

/// A caller's own `If-None-Match` and `If-Modified-Since`, which the
/// layer answers (the origin is asked without them).
struct Conditions {
    if_none_match: Vec<HeaderValue>,
    if_modified_since: Option<HeaderValue>,
}

impl Conditions {
    fn of(headers: &HeaderMap) -> Self {
        Self {
            if_none_match: headers.get_all(IF_NONE_MATCH).iter().cloned().collect(),
            if_modified_since: headers.get(IF_MODIFIED_SINCE).cloned(),
        }
    }

    /// Whether the caller has this response already (RFC 9110 §13.2.2):
    /// `If-None-Match` by weak comparison, else `If-Modified-Since` against
    /// `Last-Modified`; only for a 2xx response.
    fn not_modified(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        if !status.is_success() {
            return false;
        }
        if !self.if_none_match.is_empty() {
            let etag = headers.get(ETAG).and_then(|etag| etag.to_str().ok());
            let weak = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
            return self.if_none_match.iter().any(|value| {
                value.to_str().is_ok_and(|tags| {
                    tags.split(',').any(|tag| {
                        tag.trim() == "*" || etag.is_some_and(|etag| weak(etag) == weak(tag))
                    })
                })
            });
        }
        match (
            http_date(self.if_modified_since.as_ref()),
            http_date(headers.get(LAST_MODIFIED)),
        ) {
            (Some(since), Some(modified)) => modified <= since,
            _ => false,
        }
    }
}

/// The response a caller gets from `lookup`: the whole response, or `304
/// Not Modified` when its conditions say it has it; with `Age`.
fn respond<B>(
    lookup: Lookup<CachedResponse>,
    head: bool,
    conditions: &Conditions,
) -> Response<CoalesceBody<B>> {
    let CachedResponse {
        status,
        mut headers,
        body,
    } = lookup.value;
    let age = age_of(&headers).saturating_add(lookup.age);
    let (status, body) = if conditions.not_modified(status, &headers) {
        // Only the fields a 304 carries (RFC 9110 §15.4.5).
        let mut kept = HeaderMap::new();
        for field in [
            CACHE_CONTROL,
            CONTENT_LOCATION,
            DATE,
            ETAG,
            EXPIRES,
            VARY,
            LAST_MODIFIED,
        ] {
            for value in headers.get_all(&field) {
                kept.append(field.clone(), value.clone());
            }
        }
        headers = kept;
        (StatusCode::NOT_MODIFIED, Bytes::new())
    } else {
        (status, if head { Bytes::new() } else { body })
    };
    headers.insert(AGE, HeaderValue::from(age.as_secs()));
    let mut response = Response::new(CoalesceBody::cached(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// Statuses a shared cache may store by default (RFC 9110 §15.1).
fn storable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Statuses that are the origin failing rather than an answer to store or
/// drop (RFC 5861 §4): 500, 502, 503 and 504; and 429, the origin pacing
/// its callers, which is no reason to drop what it answered before.
fn server_error(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 500 | 502 | 503 | 504)
}

/// A response that is no answer to store or drop, as the flight's error:
/// an origin's server error, or a call a layer below refused. The stored
/// response stands (served while it revalidates, and within
/// `stale-if-error` in place of this), and a caller nothing stored could
/// answer gets this response, with its refusal.
#[derive(Debug)]
struct Unanswered {
    response: CachedResponse,
    /// The [`Refusal`] in the response's extensions, if a layer below
    /// refused the call.
    refusal: Option<Refusal>,
}

impl Unanswered {
    /// The response, when `error` is one.
    fn of(error: &FlightError<BoxError>) -> Option<&Self> {
        match error {
            FlightError::Failed(shared) => shared.downcast_ref::<Self>(),
            _ => None,
        }
    }
}

#[cfg(feature = "redis")]
impl Unanswered {
    /// How a [`RedisCache`](crate::RedisCache)'s waiters in other
    /// processes get the origin's answer when the leading process's flight
    /// failed with it; a refusal from below is the leading process's own,
    /// and a failure to reach the origin may be too: neither is shared,
    /// nor an answer that is `no-store`, `private` or sets a cookie (it
    /// would be written to Redis).
    fn sharing() -> Arc<crate::redis_cache::FailureSharing<BoxError>> {
        static SHARING: std::sync::LazyLock<Arc<crate::redis_cache::FailureSharing<BoxError>>> =
            std::sync::LazyLock::new(|| {
                Arc::new(crate::redis_cache::FailureSharing::new(
                    |error: &BoxError| {
                        let Unanswered { response, refusal } = error.downcast_ref()?;
                        let directives = CacheControl::parse(&response.headers);
                        // Nor one that may not be stored (`no-store`) or
                        // handed to other callers.
                        let unkept = directives.no_store
                            || directives.private
                            || response.headers.contains_key(SET_COOKIE);
                        (refusal.is_none() && !unkept).then(|| response.to_bytes())
                    },
                    |bytes| {
                        let response = CachedResponse::from_bytes(bytes)?;
                        let refusal = None;
                        Some(Box::new(Unanswered { response, refusal }) as BoxError)
                    },
                ))
            });
        SHARING.clone()
    }
}

impl fmt::Display for Unanswered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.refusal {
            Some(refusal) => write!(f, "refused below ({}): {refusal}", self.response.status),
            None => write!(f, "the origin answered {}", self.response.status),
        }
    }
}

impl Error for Unanswered {}

/// The flight's work: ask the origin (without the caller's own
/// conditions), keep the whole response, and say how long it may be kept;
/// a server error or a refusal from below is the flight's error.
async fn fetch<S, ReqBody, ResBody>(
    origin: S,
    mut request: Request<ReqBody>,
    max_body: usize,
    default: Freshness,
    vary: &[HeaderName],
) -> Result<(CachedResponse, Option<Freshness>), BoxError>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    request.headers_mut().remove(IF_NONE_MATCH);
    request.headers_mut().remove(IF_MODIFIED_SINCE);
    let response = origin.oneshot(request).await.map_err(Into::into)?;
    let (parts, body) = response.into_parts();
    let refusal = parts.extensions.get::<Refusal>().copied();
    let body = match Limited::new(body, max_body).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            return Err(Box::new(ResponseTooLarge { max_body }));
        }
        Err(error) => return Err(error),
    };
    if refusal.is_some() || server_error(parts.status) {
        let response = CachedResponse {
            status: parts.status,
            headers: parts.headers,
            body,
        };
        return Err(Box::new(Unanswered { response, refusal }));
    }
    let freshness = if storable(parts.status) && shareable(&parts.headers, vary) {
        // The response is `Age` old already (RFC 9111 §4.2.3).
        let age = age_of(&parts.headers);
        let directives = CacheControl::parse(&parts.headers);
        // An `Expires` is the lifetime when no `max-age` or `s-maxage`
        // says otherwise; the default is for responses that name none.
        let default = match expires_lifetime(&parts.headers) {
            Some(lifetime) if directives.max_age.is_none() && directives.s_maxage.is_none() => {
                default.with_ttl(lifetime)
            }
            _ => default,
        };
        directives.freshness(default).and_then(|freshness| {
            let ttl = freshness.ttl().saturating_sub(age);
            (!ttl.is_zero()).then(|| freshness.with_ttl(ttl))
        })
    } else {
        None
    };
    let response = CachedResponse {
        status: parts.status,
        headers: parts.headers,
        body,
    };
    Ok((response, freshness))
}

/// A response body over the layer's [`max_body`](CoalesceLayer::max_body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseTooLarge {
    max_body: usize,
}

impl fmt::Display for ResponseTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "response body larger than the cache's {} bytes",
            self.max_body
        )
    }
}

impl Error for ResponseTooLarge {}

pin_project_lite::pin_project! {
    /// A body from the cache, or the origin's own when the request went
    /// past the cache.
    pub struct CoalesceBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project_lite::pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Cached { body: Option<Bytes> },
        Origin { #[pin] body: B },
    }
}

impl<B> CoalesceBody<B> {
    const fn cached(body: Bytes) -> Self {
        Self {
            kind: Kind::Cached { body: Some(body) },
        }
    }

    const fn origin(body: B) -> Self {
        Self {
            kind: Kind::Origin { body },
        }
    }
}

impl<B> fmt::Debug for CoalesceBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cached = matches!(self.kind, Kind::Cached { .. });
        f.debug_struct("CoalesceBody")
            .field("cached", &cached)
            .finish()
    }
}

impl<B> Body for CoalesceBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Cached { body } => Poll::Ready(
                body.take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            KindProj::Origin { body } => body.poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Cached { body } => body.as_ref().is_none_or(Bytes::is_empty),
            Kind::Origin { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Cached { body } => {
                SizeHint::with_exact(body.as_ref().map_or(0, |b| b.len() as u64))
            }
            Kind::Origin { body } => body.size_hint(),
        }
    }
}
