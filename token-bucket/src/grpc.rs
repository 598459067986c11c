//! gRPC mode (feature `grpc`): a refused call is a trailers-only
//! `RESOURCE_EXHAUSTED` with `grpc-retry-pushback-ms`.
//!
//! [`RateLimitLayer::new_for_grpc`] answers refused calls itself, as a gRPC
//! server would, so a tonic client sees `Code::ResourceExhausted` (not the
//! `UNKNOWN` or `UNAVAILABLE` it makes of a transport error or an HTTP
//! 429) and the wait in the status's metadata:
//!
//! ```text
//! grpc-status: 8                         RESOURCE_EXHAUSTED
//! grpc-message: rate%20limited
//! grpc-retry-pushback-ms: 500            (when the call can ever fit)
//! ```
//!
//! The response's extensions hold the [`RateLimited`] error and its
//! [`Refusal`](palisade_hints::Refusal), so layers further out in the same
//! process read the refusal right: `palisade-retry` retries it only after
//! the pushback, and a `palisade-circuit-breaker` in gRPC mode does not
//! count it as the server failing. A store that cannot decide (and whose
//! failure policy is to propagate) answers a trailers-only `UNAVAILABLE`,
//! its `StoreDown` refusal in the extensions (a breaker above does not
//! record it) and `grpc-retry-pushback-ms` when the store says when to
//! ask again.
//! The service's error type stays the inner service's, so the layer stacks
//! on a tonic `Server` or `Channel` as it is.

use http::Response;
use palisade_hints::grpc::{RESOURCE_EXHAUSTED, UNAVAILABLE, refusal_response};

use crate::bucket::{Bucket, Decision};
use crate::error::{RateLimited, StoreError};
use crate::key::OneToken;
use crate::layer::RateLimitLayer;
use crate::respond::Respond;
use crate::store::Store;

/// Answers refused calls with a trailers-only `RESOURCE_EXHAUSTED` and the
/// wait as `grpc-retry-pushback-ms`, and a store that cannot decide with
/// `UNAVAILABLE`; keeps the inner service's error type. See the
/// [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct ResourceExhausted;

impl<B: Default, E> Respond<Response<B>, E> for ResourceExhausted {
    type Error = E;

    fn refused(&self, decision: &Decision) -> Result<Response<B>, E> {
        let refused = RateLimited::new(decision);
        let mut response =
            refusal_response(RESOURCE_EXHAUSTED, "rate%20limited", refused.refusal());
        response.extensions_mut().insert(refused);
        Ok(response)
    }

    fn store_failed(&self, error: StoreError) -> Result<Response<B>, E> {
        // With every request while the store is away (a `RedisStore` also
        // says once when Redis goes and comes back).
        palisade_hints::throttled!(warn, target: "palisade_token_bucket", %error, "no rate limit decision; answering UNAVAILABLE");
        // Marked as the limiter's own refusal, so that a breaker or a
        // retry above does not take it for the service failing.
        Ok(refusal_response(
            UNAVAILABLE,
            "rate%20limit%20store%20unavailable",
            error.refusal(),
        ))
    }

    fn error(&self, error: E) -> E {
        error
    }

    fn admitted(&self, _: &mut Response<B>, _: &Decision) {}
}

impl<St: Store, K> RateLimitLayer<St, K, OneToken, ResourceExhausted> {
    /// A limiter for gRPC services and clients (feature `grpc`); see the
    /// [module docs](crate::grpc).
    ///
    /// # Example
    ///
    /// A tonic server that lets each client address (an IPv6 client's
    /// `/64`) make 100 calls at once and 10 a second:
    ///
    /// ```
    /// use palisade_token_bucket::{Bucket, LocalStore, RateLimitLayer, key};
    /// use tonic::transport::Server;
    ///
    /// # fn main() -> Result<(), palisade_token_bucket::ConfigError> {
    /// let (_, health) = tonic_health::server::health_reporter();
    /// let server = Server::builder()
    ///     .layer(RateLimitLayer::new_for_grpc(
    ///         LocalStore::default(),
    ///         Bucket::new(100, 10.0)?,
    ///         |request: &http::Request<tonic::body::Body>| {
    ///             request
    ///                 .extensions()
    ///                 .get::<tonic::transport::server::TcpConnectInfo>()
    ///                 .and_then(|info| info.remote_addr())
    ///                 .map(|address| key::address_block(address.ip()))
    ///         },
    ///     ))
    ///     .add_service(health);
    /// # drop(server);
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn new_for_grpc(store: St, bucket: Bucket, key: K) -> Self {
        RateLimitLayer::new(store, bucket, key).respond_with(ResourceExhausted)
    }
}
