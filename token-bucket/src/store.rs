//! Where buckets live.

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

    /// Takes `cost` tokens from `key`'s bucket if it holds them.
    fn decide(&self, key: &str, bucket: &Bucket, cost: u32) -> Self::Future;
}
