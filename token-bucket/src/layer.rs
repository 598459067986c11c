//! The tower layer.

use std::sync::{Arc, OnceLock};

use tower::Layer;

use crate::bucket::Bucket;
use crate::events::Events;
use crate::key::OneToken;
use crate::respond::BoxErrors;
use crate::service::RateLimit;
use crate::store::Store;

/// Limits requests per key with token buckets in a [`Store`](crate::Store).
///
/// The store holds the buckets, so every service this layer makes (axum
/// makes one per connection) and every clone of those draws on the same
/// buckets: the limit holds however axum or tonic clone the service, and
/// across instances with a Redis store.
///
/// `K` picks each request's bucket ([`Key`](crate::key::Key)), `W` its cost
/// ([`Cost`](crate::key::Cost), one token by default) and `R` how refusals
/// look ([`Respond`](crate::Respond)).
#[derive(Clone)]
pub struct RateLimitLayer<St: Store, K, W = OneToken, R = BoxErrors> {
    pub(crate) store: St,
    pub(crate) bucket: Bucket,
    pub(crate) key: K,
    pub(crate) cost: W,
    pub(crate) respond: R,
    pub(crate) events: Events,
    /// What the layer puts before every key it hands the store: its
    /// bucket, so that layers with other buckets on one store (two
    /// `RedisStore`s with the default prefix, one `LocalStore` cloned)
    /// keep state of their own for a key they share.
    pub(crate) tag: Arc<str>,
    /// The bucket of a [fixed](crate::key::Key::fixed) key, pinned on the
    /// first request and shared by every service the layer makes.
    pub(crate) pinned: Arc<OnceLock<St::Pinned>>,
}

/// Its bucket; not its store, key, cost or answers, which may be closures
/// or hold connections.
impl<St: Store, K, W, R> std::fmt::Debug for RateLimitLayer<St, K, W, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

impl<St: Store, K> RateLimitLayer<St, K> {
    /// Limits each key to `bucket` in `store`; refusals are
    /// [`RateLimited`](crate::RateLimited) errors.
    ///
    /// The store keeps a key's state under the key and the bucket
    /// (`<capacity>/<interval in ns>:<key>`): layers with other buckets
    /// keep apart on one store, so a per-second and a per-day limit on
    /// one user may share a Redis prefix (layers with equal buckets and
    /// keys share their state, as two instances of a service must). A
    /// change of bucket therefore starts its keys full, and during a
    /// rolling deploy that changes it the old and the new bucket are both
    /// enforced. [`store_key`](Self::store_key) names the state a key has
    /// in the store, for an operator reading it there.
    #[must_use]
    pub fn new(store: St, bucket: Bucket, key: K) -> Self {
        Self {
            store,
            tag: Arc::from(bucket.tag()),
            bucket,
            key,
            cost: OneToken,
            respond: BoxErrors,
            events: Events::tracing_only(),
            pinned: Arc::default(),
        }
    }
}

impl<St: Store, K, W, R> RateLimitLayer<St, K, W, R> {
    /// Charges each request `cost` tokens instead of one.
    #[must_use]
    pub fn cost<W2>(self, cost: W2) -> RateLimitLayer<St, K, W2, R> {
        RateLimitLayer {
            store: self.store,
            bucket: self.bucket,
            key: self.key,
            cost,
            respond: self.respond,
            events: self.events,
            tag: self.tag,
            pinned: self.pinned,
        }
    }

    /// Answers with `respond`.
    #[must_use]
    pub fn respond_with<R2>(self, respond: R2) -> RateLimitLayer<St, K, W, R2> {
        RateLimitLayer {
            store: self.store,
            bucket: self.bucket,
            key: self.key,
            cost: self.cost,
            respond,
            events: self.events,
            tag: self.tag,
            pinned: self.pinned,
        }
    }

    /// The store.
    #[must_use]
    pub const fn store(&self) -> &St {
        &self.store
    }

    /// The bucket each key gets.
    #[must_use]
    pub const fn bucket(&self) -> &Bucket {
        &self.bucket
    }

    /// The key under which the store keeps `key`'s state for this layer:
    /// `key` with the layer's bucket before it.
    ///
    /// ```
    /// use palisade_token_bucket::{Bucket, LocalStore, RateLimitLayer, key};
    ///
    /// let layer = RateLimitLayer::new(LocalStore::default(), Bucket::new(10, 2.0)?, key::global("all"));
    /// assert_eq!(layer.store_key("alice"), "10/500000000:alice");
    /// # Ok::<(), palisade_token_bucket::ConfigError>(())
    /// ```
    #[must_use]
    pub fn store_key(&self, key: &str) -> String {
        crate::service::tagged(&self.tag, key)
    }
}

impl<S, St: Store, K: Clone, W: Clone, R: Clone> Layer<S> for RateLimitLayer<St, K, W, R> {
    type Service = RateLimit<S, St, K, W, R>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(inner, self.clone())
    }
}
