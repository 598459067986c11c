//! Public types can cross threads, and the layer's services are `Clone` so
//! axum can use them.

use palisade_coalesce::{Cache, Coalescer, FlightError, SharedError};
use tower::BoxError;

const fn send_sync<T: Send + Sync + 'static>() {}
const fn clone<T: Clone>() {}

#[test]
fn public_types_are_send_sync() {
    const {
        send_sync::<Cache<String, u64, BoxError>>();
        send_sync::<Coalescer<String, u64, BoxError>>();
        send_sync::<FlightError<BoxError>>();
        send_sync::<SharedError>();
        clone::<Cache<String, u64, BoxError>>();
    }
}

#[cfg(feature = "http")]
#[test]
fn http_types_are_send_sync() {
    use palisade_coalesce::http::{CachedResponse, Coalesce, CoalesceLayer};

    type Inner = tower::util::BoxCloneSyncService<
        http::Request<axum::body::Body>,
        http::Response<axum::body::Body>,
        BoxError,
    >;
    const {
        send_sync::<CachedResponse>();
        send_sync::<CoalesceLayer>();
        send_sync::<Coalesce<Inner>>();
        clone::<Coalesce<Inner>>();
    }
}

#[cfg(feature = "redis")]
#[test]
fn redis_types_are_send_sync() {
    const {
        send_sync::<palisade_coalesce::RedisCache<redis::aio::ConnectionManager, BoxError>>();
    }
}
