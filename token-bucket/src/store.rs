//! Where buckets live.

use std::fmt::Debug;
use std::future::Future;

use crate::bucket::{Bucket, Decision};
use crate::error::StoreError;

/// Keeps the state of every key's bucket and decides requests against it.
///
/// Implemented by [`LocalStore`](crate::LocalStore) (in process) and, with
/// feature `redis`, [`RedisStore`](crate::RedisStore) (shared by every
/// instance). A store is cheap to clone; clones share the buckets.
pub trait Store: Clone + Send + Sync + 'static {
    /// The decision, when it comes.
    type Future: Future<Output = Result<Decision, StoreError>> + Send + 'static;

    /// One key's bucket held by a limiter whose every request names that
    /// key ([`key::global`](crate::key::global)), made once by
    /// [`pin`](Self::pin): a [`PinnedBucket`](crate::PinnedBucket) in
    /// process, the key's name in Redis.
    type Pinned: Clone + Debug + Send + Sync + 'static;

    /// Takes `cost` tokens from `key`'s bucket if it holds them.
    ///
    /// A key's state is for one bucket: decided with another, it is read
    /// with the wrong tolerance. A [`RateLimitLayer`](crate::RateLimitLayer)
    /// puts its bucket before each key for that reason; calling a store
    /// directly, keep one bucket a key.
    fn decide(&self, key: &str, bucket: &Bucket, cost: u32) -> Self::Future;

    /// Holds `key`'s bucket for [`decide_pinned`](Self::decide_pinned):
    /// the same bucket as [`decide`](Self::decide) with `key`, found once.
    fn pin(&self, key: &str) -> Self::Pinned;

    /// Takes `cost` tokens from the bucket this store pinned as `pinned`.
    fn decide_pinned(&self, pinned: &Self::Pinned, bucket: &Bucket, cost: u32) -> Self::Future;
}
