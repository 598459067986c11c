//! HTTP mode (feature `http`): `429 Too Many Requests` with `Retry-After`,
//! and the IETF RateLimit header fields on every answer.
//!
//! [`RateLimitLayer::new_for_http`] answers refused requests itself, so the
//! layer goes straight on an axum `Router` with no `HandleErrorLayer`, and
//! tells clients where they stand on admitted responses too
//! (draft-ietf-httpapi-ratelimit-headers):
//!
//! ```text
//! RateLimit-Policy: "default";q=100;w=60     100 tokens refilled in 60 s
//! RateLimit: "default";r=42;t=35             42 left, full again in 35 s
//! Retry-After: 1                             (on a 429) seconds until it fits
//! ```
//!
//! The policy's window `w` is the time the bucket takes to fill from
//! empty, in whole seconds rounded up (at least 1), and its quota `q` the
//! tokens refilled in that window, so `q / w` is the enforced rate: capacity
//! 100 at 10 a second is `q=100;w=10`, and capacity 5 at 100 a second, full
//! in 50 ms, is `q=100;w=1`. The burst is the capacity, which `r` shows.
//!
//! When the store could not decide and its failure policy answered
//! ([`FailOpen`](crate::FailurePolicy::FailOpen),
//! [`FailClosed`](crate::FailurePolicy::FailClosed)), no bucket was
//! consulted and no RateLimit field is sent (nor the legacy ones): a
//! fail-closed `429` carries only `Retry-After`, the time until the store is
//! tried again. A [`Fallback`](crate::FailurePolicy::Fallback) bucket's
//! decisions are described as its own.
//!
//! Several limiters on one route (per address, then per user) each add
//! their policy and state to the fields, as the draft lists several: name
//! them with [`policy_name`](RateLimitLayer::policy_name) (of two by one
//! name, the item with fewer left is kept, and a warning logged once). The
//! first to write (the innermost, unless a layer between them dropped the
//! response's extensions) replaces any fields the service wrote. A
//! `Retry-After` is the
//! refusing limiter's.
//!
//! [`legacy_headers`](RateLimitLayer::legacy_headers) adds the older
//! `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset`;
//! they hold one limit: of all the limiters a response passed through,
//! the one with the fewest left, once any of them asks for the fields.

use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Response, StatusCode};

use crate::bucket::{Bucket, Decision};
use crate::error::{RateLimited, StoreError};
use crate::key::OneToken;
use crate::layer::RateLimitLayer;
use crate::respond::Respond;
use crate::store::Store;

static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Answers refused requests with `429` and `Retry-After`, a store that
/// cannot decide with `503` (with `Retry-After` when the store says when
/// to ask again, and its `StoreDown` [`Refusal`](palisade_hints::Refusal)
/// in the extensions, so a breaker above does not record it), and puts
/// the RateLimit fields on every
/// response a bucket decided (none when a failure policy answered without
/// one); keeps the inner service's error type.
///
/// A 429's extensions hold the [`RateLimited`] error and its
/// [`Refusal`](palisade_hints::Refusal), so `palisade-retry` further out
/// knows the refusal is local and waits as told.
#[derive(Debug, Clone)]
pub struct TooManyRequests {
    legacy: bool,
    /// The policy's name in the fields.
    policy: Arc<str>,
}

impl Default for TooManyRequests {
    fn default() -> Self {
        Self {
            legacy: false,
            policy: Arc::from("default"),
        }
    }
}

/// What the limiters a response passed through wrote in it, kept in its
/// extensions: the policies named, each with the tokens it had left, and
/// the legacy fields' one limit.
#[derive(Debug, Clone, Default)]
struct Advertised {
    policies: Vec<(Arc<str>, u32)>,
    /// Whether a limiter asked for the legacy fields.
    legacy: bool,
    /// The fewest tokens left of them all: remaining, capacity, and
    /// seconds until full.
    least: Option<(u32, u32, u64)>,
}

/// Whether two limiters of one name were met already (warned once).
static SAME_NAME_WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whole seconds, rounded up.
fn seconds(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

/// The policy's quota and window: the bucket's refill time in whole
/// seconds (at least 1), and the tokens refilled in it, rounded down.
fn quota_and_window(decision: &Decision) -> (u128, u64) {
    let window = seconds(decision.window()).max(1);
    let refill = decision.window().as_nanos().max(1);
    let quota = u128::from(decision.capacity()) * u128::from(window) * 1_000_000_000 / refill;
    (quota, window)
}

impl TooManyRequests {
    fn write<B>(&self, response: &mut Response<B>, decision: &Decision) {
        if !decision.is_from_bucket() {
            return;
        }
        let mut written = response.extensions_mut().remove::<Advertised>();
        let headers = response.headers_mut();
        if written.is_none() {
            // The first limiter's fields replace any the service wrote:
            // one malformed item would have clients ignore them all.
            headers.remove(&RATELIMIT_POLICY);
            headers.remove(&RATELIMIT);
        }
        let advertised = written.get_or_insert_default();
        let (quota, window) = quota_and_window(decision);
        let (remaining, reset) = (decision.remaining(), seconds(decision.reset()));
        let name = &*self.policy;
        let value = |text: String| HeaderValue::try_from(text).expect("digits and ASCII");
        let policy = value(format!("\"{name}\";q={quota};w={window}"));
        let state = value(format!("\"{name}\";r={remaining};t={reset}"));
        // Each policy an item, added to those of the limiters further in;
        // of two by one name (unnamed, say), the one with fewer left.
        let named = advertised
            .policies
            .iter_mut()
            .find(|(other, _)| **other == *name);
        if let Some((_, left)) = named {
            if !SAME_NAME_WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!(target: "palisade_token_bucket", policy = name, "two rate limiters of one policy name on a response: name each (policy_name)");
            }
            if *left > remaining {
                *left = remaining;
                drop_items(headers, &RATELIMIT_POLICY, name);
                drop_items(headers, &RATELIMIT, name);
                headers.append(RATELIMIT_POLICY.clone(), policy);
                headers.append(RATELIMIT.clone(), state);
            }
        } else {
            advertised.policies.push((self.policy.clone(), remaining));
            headers.append(RATELIMIT_POLICY.clone(), policy);
            headers.append(RATELIMIT.clone(), state);
        }
        // The legacy fields hold one limit: the one with the fewest left,
        // whichever limiter asked for them.
        advertised.legacy |= self.legacy;
        if advertised.least.is_none_or(|(left, ..)| remaining < left) {
            advertised.least = Some((remaining, decision.capacity(), reset));
        }
        if let (true, Some((left, capacity, reset))) = (advertised.legacy, advertised.least) {
            headers.insert(X_LIMIT.clone(), HeaderValue::from(capacity));
            headers.insert(X_REMAINING.clone(), HeaderValue::from(left));
            headers.insert(X_RESET.clone(), HeaderValue::from(reset));
        }
        if let Some(written) = written {
            response.extensions_mut().insert(written);
        }
    }
}

/// Removes the items of policy `name` from the field `field`.
fn drop_items(headers: &mut HeaderMap, field: &HeaderName, name: &str) {
    let prefix = format!("\"{name}\";");
    let kept: Vec<HeaderValue> = headers
        .get_all(field)
        .iter()
        .filter(|item| !item.as_bytes().starts_with(prefix.as_bytes()))
        .cloned()
        .collect();
    headers.remove(field);
    for item in kept {
        headers.append(field.clone(), item);
    }
}

impl<B: Default, E> Respond<Response<B>, E> for TooManyRequests {
    type Error = E;

    fn refused(&self, decision: &Decision) -> Result<Response<B>, E> {
        let refused = RateLimited::new(decision);
        let mut response = palisade_hints::http::refusal_response(
            StatusCode::TOO_MANY_REQUESTS,
            refused.refusal(),
        );
        self.write(&mut response, decision);
        response.extensions_mut().insert(refused);
        Ok(response)
    }

    fn store_failed(&self, error: StoreError) -> Result<Response<B>, E> {
        // With every request while the store is away (a `RedisStore` also
        // says once when Redis goes and comes back).
        palisade_hints::throttled!(warn, target: "palisade_token_bucket", %error, "no rate limit decision; answering 503");
        // Marked as the limiter's own refusal, so that a breaker or a
        // retry above does not take it for the service failing.
        Ok(palisade_hints::http::refusal_response(
            StatusCode::SERVICE_UNAVAILABLE,
            error.refusal(),
        ))
    }

    fn error(&self, error: E) -> E {
        error
    }

    fn admitted(&self, response: &mut Response<B>, decision: &Decision) {
        self.write(response, decision);
    }
}

impl<St: Store, K> RateLimitLayer<St, K, OneToken, TooManyRequests> {
    /// A limiter for HTTP services (feature `http`); see the
    /// [module docs](crate::http).
    ///
    /// # Example
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// use axum::{Router, extract::ConnectInfo, routing::get};
    /// use palisade_token_bucket::{Bucket, LocalStore, RateLimitLayer, key};
    ///
    /// # fn main() -> Result<(), palisade_token_bucket::ConfigError> {
    /// let app: Router = Router::new()
    ///     .route("/orders", get(|| async { "ok" }))
    ///     .layer(RateLimitLayer::new_for_http(
    ///         LocalStore::default(),
    ///         Bucket::new(100, 10.0)?,
    ///         key::extension(|ConnectInfo(peer): &ConnectInfo<SocketAddr>| {
    ///             key::address_block(peer.ip())
    ///         }),
    ///     ));
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn new_for_http(store: St, bucket: Bucket, key: K) -> Self {
        RateLimitLayer::new(store, bucket, key).respond_with(TooManyRequests::default())
    }
}

impl<St: Store, K, W> RateLimitLayer<St, K, W, TooManyRequests> {
    /// Names the limiter's policy in the RateLimit fields (`default`
    /// unless named). Name each of several limiters a response passes
    /// through (per address, then per user): each adds its policy and
    /// state to the fields, as the draft lists several, rather than
    /// replace what a limiter further in wrote.
    ///
    /// # Example
    ///
    /// ```
    /// use palisade_token_bucket::{Bucket, LocalStore, RateLimitLayer, key};
    ///
    /// # fn main() -> Result<(), palisade_token_bucket::ConfigError> {
    /// // RateLimit-Policy: "per-address";q=100;w=10
    /// let per_address =
    ///     RateLimitLayer::new_for_http(LocalStore::default(), Bucket::new(100, 10.0)?, key::global("all"))
    ///         .policy_name("per-address")?;
    /// # let _ = per_address;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`ConfigError`](crate::ConfigError) when `name` is empty or holds
    /// anything but printable ASCII other than `"` and `\`.
    pub fn policy_name(mut self, name: &str) -> Result<Self, crate::ConfigError> {
        let printable = |byte: u8| (b' '..=b'~').contains(&byte) && byte != b'"' && byte != b'\\';
        if name.is_empty() || !name.bytes().all(printable) {
            return Err(crate::error::config_error(
                "policy_name",
                "must be non-empty printable ASCII without `\"` or `\\`",
            ));
        }
        self.respond.policy = Arc::from(name);
        Ok(self)
    }

    /// Also writes `X-RateLimit-Limit`, `X-RateLimit-Remaining` and
    /// `X-RateLimit-Reset` (seconds), for clients that read only those.
    #[must_use]
    pub const fn legacy_headers(mut self) -> Self {
        self.respond.legacy = true;
        self
    }
}
