//! Public types can cross threads, and the services are `Clone` so axum and
//! tonic can use them.

use palisade_retry::future::ResponseFuture;
use palisade_retry::{
    Backoff, Budget, CloneRequest, Config, ConfigError, DeadlineExceeded, LeakedRetryLayer, Retry,
    RetryBudget, RetryErrors, RetryLayer,
};

const fn send_sync<T: Send + Sync + 'static>() {}
const fn send<T: Send + 'static>() {}
const fn clone<T: Clone>() {}

type Inner = tower::util::BoxCloneSyncService<u32, u32, tower::BoxError>;

#[test]
fn public_types_are_send_sync() {
    const {
        send_sync::<Backoff>();
        send_sync::<Budget>();
        send_sync::<Config>();
        send_sync::<ConfigError>();
        send_sync::<DeadlineExceeded>();
        send_sync::<Retry<Inner>>();
        send_sync::<RetryBudget>();
        send_sync::<RetryLayer>();
        send_sync::<LeakedRetryLayer>();
        send::<ResponseFuture<Inner, RetryErrors, CloneRequest, u32>>();
        clone::<Retry<Inner>>();
        clone::<RetryLayer>();
        clone::<LeakedRetryLayer>();
    }
}

#[cfg(feature = "http")]
#[test]
fn http_types_are_send_sync() {
    use palisade_retry::http::{BufferBody, HttpReplay, ReplayBody, RetryServerErrors};
    type HttpInner = tower::util::BoxCloneSyncService<
        http::Request<ReplayBody<axum::body::Body>>,
        http::Response<()>,
        tower::BoxError,
    >;
    const {
        send::<ReplayBody<axum::body::Body>>();
        send_sync::<Retry<HttpInner, RetryServerErrors, HttpReplay<BufferBody>>>();
        send::<
            ResponseFuture<
                HttpInner,
                RetryServerErrors,
                HttpReplay<BufferBody>,
                http::Request<axum::body::Body>,
            >,
        >();
    }
}
