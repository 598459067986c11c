//! Public types can cross threads, and the services are `Clone` so axum and
//! tonic can use them.

use palisade_token_bucket::future::ResponseFuture;
use palisade_token_bucket::key::{Global, OneToken};
use palisade_token_bucket::{
    BoxErrors, Bucket, ConfigError, Decision, LocalStore, RateLimit, RateLimitLayer, RateLimited,
    StoreError,
};

const fn send_sync<T: Send + Sync + 'static>() {}
const fn clone<T: Clone>() {}

type Inner = tower::util::BoxCloneSyncService<u32, u32, tower::BoxError>;
type Service = RateLimit<Inner, LocalStore, Global, OneToken, BoxErrors>;

#[test]
fn public_types_are_send_sync() {
    const {
        send_sync::<Bucket>();
        send_sync::<ConfigError>();
        send_sync::<Decision>();
        send_sync::<LocalStore>();
        send_sync::<RateLimitLayer<LocalStore, Global>>();
        send_sync::<RateLimited>();
        send_sync::<StoreError>();
        send_sync::<Service>();
        clone::<Service>();
    }
    fn send<T: Send>() {}
    send::<ResponseFuture<Inner, LocalStore, BoxErrors, u32>>();
}

#[cfg(feature = "redis")]
#[test]
fn the_redis_store_is_send_sync() {
    const {
        send_sync::<palisade_token_bucket::RedisStore<redis::aio::ConnectionManager>>();
        send_sync::<palisade_token_bucket::FailurePolicy>();
    }
}
