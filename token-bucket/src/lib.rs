#![cfg_attr(docsrs, feature(doc_cfg))]
//! A token-bucket rate limiter for tower, shared through Redis or kept in
//! process.
//!
//! Every API gateway settles on the token bucket: each key (a user, an API
//! key, a client address) has a bucket of `capacity` tokens refilled at
//! `rate` tokens a second; a request takes one token (or its cost), and
//! when the bucket is empty it is refused with the time to wait.
//!
//! The core is a [`Bucket`] and a [`Store`] of buckets, with no tower in
//! it:
//!
//! - [`LocalStore`]: in process, one atomic word per key updated by
//!   compare-and-swap under a shard's read lock (decisions never wait for
//!   each other), bounded in memory, in keys and in bytes, however many
//!   keys arrive and however long they are.
//! - [`RedisStore`] (feature `redis`): shared by every instance of a
//!   service. Each decision is one Lua script run with `EVALSHA`, timed by
//!   Redis's own clock; keys expire once their bucket is full again and
//!   stay in one Redis Cluster slot; when Redis fails or is slow an
//!   explicit [`FailurePolicy`] applies within a per-call timeout.
//! - [`LeasingStore`] (feature `redis`): a [`RedisStore`] that takes a
//!   hot key's tokens a batch at a time and spends them in process, so
//!   most decisions cost no round trip; the fleet may admit at most one
//!   lease per process more than the bucket over an interval, a bound set
//!   by [`Leasing::max_share`].
//!
//! In a tower stack it is a [`RateLimitLayer`]. The buckets live in the
//! store, so every clone axum or tonic makes of the service draws on the
//! same ones (tower's own `RateLimit` keeps its window per clone and does
//! not limit under axum). `poll_ready` delegates; a refused request is
//! answered from `call` without reaching the inner service.
//!
//! ```
//! use palisade_token_bucket::{Bucket, LocalStore, RateLimitLayer, RateLimited};
//! use tower::{BoxError, ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! // 2 requests at once per user, then one every 500 ms.
//! let limit = RateLimitLayer::new(
//!     LocalStore::default(),
//!     Bucket::new(2, 2.0)?,
//!     |(user, _): &(String, u32)| Some(user.clone()),
//! );
//! let service = ServiceBuilder::new()
//!     .layer(limit)
//!     .service(service_fn(|(_, order): (String, u32)| async move { Ok::<_, BoxError>(order) }));
//! let call = |order| service.clone().oneshot(("alice".to_owned(), order));
//! call(1).await?;
//! call(2).await?;
//! let refused = call(3).await.unwrap_err();
//! let limited = refused.downcast_ref::<RateLimited>().expect("refused by the limiter");
//! assert!(limited.retry_after().unwrap().as_millis() <= 500);
//! # Ok(()) }
//! ```
//!
//! # Feature flags
//!
//! - `redis`: [`RedisStore`], [`LeasingStore`] and [`FailurePolicy`], generic over any
//!   `redis::aio::ConnectionLike + Clone` (a `ConnectionManager` or a
//!   cluster connection, which reconnect by themselves).
//! - `http`: [`RateLimitLayer::new_for_http`] answers `429` with
//!   `Retry-After` and the IETF `RateLimit-Policy` / `RateLimit` fields
//!   (on admitted responses too), optionally the legacy `X-RateLimit-*`;
//!   [`key::header`] picks buckets by a header.
//! - `grpc` (implies `http`): [`RateLimitLayer::new_for_grpc`] answers a
//!   trailers-only `RESOURCE_EXHAUSTED` with `grpc-retry-pushback-ms`, on a
//!   tonic `Server` or in front of a `Channel`.
//! - `otel`: [`RateLimitLayer::instrument`] counts decisions by result,
//!   and `RedisStore::instrument` counts Redis errors and fallback
//!   decisions and reports the degraded state; see [`otel`].
//!
//! Every refusal carries a [`palisade_hints::Refusal`], so
//! `palisade-retry` knows it was refused locally and retries only after the
//! wait it names.

mod bucket;
pub mod error;
mod events;
pub mod future;
#[cfg(feature = "grpc")]
pub mod grpc;
#[cfg(feature = "http")]
pub mod http;
pub mod key;
mod layer;
#[cfg(feature = "redis")]
mod leasing;
mod local;
#[cfg(feature = "otel")]
pub mod otel;
#[cfg(feature = "redis")]
mod redis_store;
mod respond;
mod service;
mod store;

pub use bucket::{Bucket, Decision, MAX_CAPACITY};
pub use error::{ConfigError, RateLimited, StoreError};
pub use layer::RateLimitLayer;
#[cfg(feature = "redis")]
pub use leasing::{LeaseDecision, LeasedKey, Leasing, LeasingStore};
pub use local::{Clock, LocalStore, MAX_KEY_BYTES, PinnedBucket};
/// The OpenTelemetry API this crate records to (feature `otel`): take
/// the `Meter` you hand it from this version.
#[cfg(feature = "otel")]
pub use opentelemetry;
pub use palisade_hints::{Refusal, RefusalReason};
#[cfg(feature = "redis")]
pub use redis_store::{FailurePolicy, RedisStore};
pub use respond::{BoxErrors, Respond};
pub use service::RateLimit;
pub use store::Store;

/// The README's example, compiled and run as a doctest so it stays true
/// (it uses the HTTP mode).
#[doc = include_str!("../README.md")]
#[cfg(all(doctest, feature = "http"))]
pub struct ReadmeDoctests;
