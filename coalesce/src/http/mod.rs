//! The HTTP layer (feature `http`): whole responses served from a
//! [`Cache`], so concurrent identical `GET`s reach the origin once.
//!
//! [`CoalesceLayer`] caches `GET` and `HEAD` responses in a
//! [`ResponseCache`] (in process, or through Redis across processes), keyed by method,
//! URI and the request header fields named with [`vary`](CoalesceLayer::vary).
//! The origin's `Cache-Control` decides: `no-store` and `private` are never
//! stored (though every request waiting on the same flight gets that one
//! response), `s-maxage` or `max-age` sets the lifetime (the cache's
//! [`Freshness`] when absent), and `stale-while-revalidate` and
//! `stale-if-error` open their windows. Served responses carry `Age`. A
//! request with `Cache-Control: no-cache` goes to the origin.
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
//!     .layer(
//!         tower::ServiceBuilder::new()
//!             .layer(axum::error_handling::HandleErrorLayer::new(|_: tower::BoxError| async {
//!                 http::StatusCode::BAD_GATEWAY
//!             }))
//!             .layer(CoalesceLayer::new(cache)),
//!     );
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

use bytes::Bytes;
use http::header::{AGE, HeaderValue, PRAGMA};
use http::{HeaderName, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Limited};
use tower::{BoxError, Layer, Service, ServiceExt};

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
            let lookup = self.get_with_freshness(&key, fetch).await?;
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
}

/// Serves `GET` and `HEAD` responses from a [`ResponseCache`], computing
/// each once; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct CoalesceLayer<R = Cache<String, CachedResponse, BoxError>> {
    cache: R,
    vary: Arc<[HeaderName]>,
    max_body: usize,
}

impl<R: ResponseCache> CoalesceLayer<R> {
    /// A layer serving from `cache` (shared by every service it makes).
    #[must_use]
    pub fn new(cache: R) -> Self {
        Self {
            cache,
            vary: Arc::from([]),
            max_body: DEFAULT_MAX_BODY,
        }
    }

    /// Request fields whose values tell responses apart (`Accept`,
    /// `Accept-Encoding`, `Authorization` for per-user responses…).
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

impl<S, R: Clone> Layer<S> for CoalesceLayer<R> {
    type Service = Coalesce<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        Coalesce {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`CoalesceLayer`].
#[derive(Debug, Clone)]
pub struct Coalesce<S, R = Cache<String, CachedResponse, BoxError>> {
    inner: S,
    layer: CoalesceLayer<R>,
}

/// The response future of [`Coalesce`]: a flight's landing involves a map,
/// a task and a channel, beside which one allocation is nothing.
pub type ResponseFuture<B> =
    Pin<Box<dyn Future<Output = Result<Response<CoalesceBody<B>>, BoxError>> + Send>>;

impl<S, R, ReqBody, ResBody> Service<Request<ReqBody>> for Coalesce<S, R>
where
    R: ResponseCache,
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<CoalesceBody<ResBody>>;
    type Error = BoxError;
    type Future = ResponseFuture<ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let cacheable_method = matches!(*request.method(), Method::GET | Method::HEAD);
        if !cacheable_method || bypasses(&request) {
            let response = self.inner.call(request);
            return Box::pin(async move {
                let response = response.await.map_err(Into::into)?;
                Ok(response.map(CoalesceBody::origin))
            });
        }
        let key = key(&request, &self.layer.vary);
        let head = request.method() == Method::HEAD;
        let (origin, max_body, cache) = (
            self.inner.clone(),
            self.layer.max_body,
            self.layer.cache.clone(),
        );
        let default = cache.default_freshness();
        Box::pin(async move {
            let compute = move || fetch(origin, request, max_body, default);
            let lookup = cache.lookup(key, compute).await.map_err(flight_error)?;
            let CachedResponse {
                status,
                mut headers,
                body,
            } = lookup.value;
            let age = HeaderValue::from(lookup.age.as_secs());
            headers.insert(AGE, age);
            let mut response =
                Response::new(CoalesceBody::cached(if head { Bytes::new() } else { body }));
            *response.status_mut() = status;
            *response.headers_mut() = headers;
            Ok(response)
        })
    }
}

/// Whether the request asks to skip the cache (`no-cache`).
fn bypasses<B>(request: &Request<B>) -> bool {
    CacheControl::parse(request.headers()).no_cache
        || request
            .headers()
            .get(PRAGMA)
            .is_some_and(|pragma| pragma.as_bytes().eq_ignore_ascii_case(b"no-cache"))
}

/// The cache key: method, URI and the varying fields.
fn key<B>(request: &Request<B>, vary: &[HeaderName]) -> String {
    let mut key = format!("{} {}", request.method(), request.uri());
    for name in vary {
        key.push('\n');
        key.push_str(name.as_str());
        key.push(':');
        for value in request.headers().get_all(name) {
            key.push_str(&String::from_utf8_lossy(value.as_bytes()));
            key.push(',');
        }
    }
    key
}

/// Statuses a shared cache may store by default (RFC 9110 §15.1).
fn storable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// The flight's work: ask the origin, keep the whole response, and say how
/// long it may be kept.
async fn fetch<S, ReqBody, ResBody>(
    origin: S,
    request: Request<ReqBody>,
    max_body: usize,
    default: Freshness,
) -> Result<(CachedResponse, Option<Freshness>), BoxError>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    let response = origin.oneshot(request).await.map_err(Into::into)?;
    let (parts, body) = response.into_parts();
    let body = match Limited::new(body, max_body).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            return Err(Box::new(ResponseTooLarge { max_body }));
        }
        Err(error) => return Err(error),
    };
    let freshness = if storable(parts.status) {
        CacheControl::parse(&parts.headers).freshness(default)
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

/// A flight's error, as the service's.
fn flight_error(error: FlightError<BoxError>) -> BoxError {
    match error {
        FlightError::Failed(shared) => Box::new(SharedError(shared)),
        FlightError::Panicked(message) => format!("the origin panicked: {message}").into(),
        FlightError::Cancelled => "the origin call was cancelled".into(),
    }
}

/// One origin error, delivered to every request of its flight.
#[derive(Debug, Clone)]
pub struct SharedError(pub Arc<BoxError>);

impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&**self.0, f)
    }
}

impl Error for SharedError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.0.source()
    }
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
