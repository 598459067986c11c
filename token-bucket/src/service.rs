//! The rate-limited service.

use std::task::{Context, Poll};

use tower::Service;

use crate::future::ResponseFuture;
use crate::key::{Cost, Key};
use crate::layer::RateLimitLayer;
use crate::respond::Respond;
use crate::store::Store;

/// A service whose requests draw tokens from their key's bucket; made by
/// [`RateLimitLayer`].
///
/// `poll_ready` delegates to the inner service. `call` asks the store; an
/// admitted request goes to the service that was polled ready, and a
/// refused one is answered without calling it.
#[derive(Clone)]
pub struct RateLimit<S, St: Store, K, W, R> {
    inner: S,
    layer: RateLimitLayer<St, K, W, R>,
}

impl<S: std::fmt::Debug, St: Store, K, W, R> std::fmt::Debug for RateLimit<S, St, K, W, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<S, St: Store, K, W, R> RateLimit<S, St, K, W, R> {
    pub(crate) const fn new(inner: S, layer: RateLimitLayer<St, K, W, R>) -> Self {
        Self { inner, layer }
    }

    /// The inner service.
    pub const fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub const fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, St, K, W, R, Req> Service<Req> for RateLimit<S, St, K, W, R>
where
    S: Service<Req> + Clone,
    St: Store,
    K: Key<Req>,
    W: Cost<Req>,
    R: Respond<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = R::Error;
    type Future = ResponseFuture<S, St, R, Req>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let respond = &self.layer.respond;
        self.inner
            .poll_ready(cx)
            .map_err(|error| respond.error(error))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let layer = &self.layer;
        let decision = if let Some(key) = layer.key.fixed() {
            let pinned = layer
                .pinned
                .get_or_init(|| layer.store.pin(&tagged(&layer.tag, key)));
            let cost = layer.cost.cost(&request);
            layer.store.decide_pinned(pinned, &layer.bucket, cost)
        } else {
            let Some(key) = layer.key.key(&request) else {
                return ResponseFuture::unlimited(
                    self.inner.call(request),
                    layer.respond.clone(),
                    layer.events.clone(),
                );
            };
            let cost = layer.cost.cost(&request);
            layer
                .store
                .decide(&tagged(&layer.tag, &key), &layer.bucket, cost)
        };
        // The service polled ready answers once the store has decided.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::deciding(
            decision,
            ready,
            request,
            layer.respond.clone(),
            layer.events.clone(),
        )
    }
}

/// `key` after the layer's `tag`, as the store keeps it.
pub(crate) fn tagged(tag: &str, key: &str) -> String {
    let mut tagged = String::with_capacity(tag.len() + key.len());
    tagged.push_str(tag);
    tagged.push_str(key);
    tagged
}
