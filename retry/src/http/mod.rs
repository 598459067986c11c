//! HTTP mode (feature `http`): which responses and errors are retried,
//! which requests may be retried at all, and bodies that can be sent again.
//!
//! [`RetryLayer::new_for_http`] retries 502, 503 and 504 (after the
//! `Retry-After` when there is one), 429 only with a `Retry-After`, and
//! connect and timeout errors; never another 4xx, never an open breaker's
//! own 503 ([`RetryServerErrors`]). Only requests the [`Idempotency`] gate
//! allows are retried: `GET`, `HEAD`, `OPTIONS`, `PUT`, `DELETE`, `TRACE`,
//! and any request with an `Idempotency-Key`.
//!
//! Requests whose body is `Clone` are cloned for each attempt. For bodies
//! that are not (`axum::body::Body`, hyper's `Incoming`, tonic's body),
//! [`RetryLayer::buffer_bodies`] records the body as the first attempt
//! streams it, up to a cap, and replays it from there ([`ReplayBody`]); a
//! body over the cap is sent once and the request is not retried.
//!
//! # Example
//!
//! A hyper client retrying through an axum-style body:
//!
//! ```
//! use palisade_retry::{Config, RetryLayer};
//! use palisade_retry::http::ReplayBody;
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use tower::ServiceBuilder;
//!
//! # fn main() -> Result<(), palisade_retry::ConfigError> {
//! let client = Client::builder(TokioExecutor::new())
//!     .build_http::<ReplayBody<axum::body::Body>>();
//! let client = ServiceBuilder::new()
//!     .layer(RetryLayer::new_for_http(Config::default()).buffer_bodies(64 * 1024))
//!     .service(client);
//! # let _ = client;
//! # Ok(()) }
//! ```

mod answer;
mod body;
mod classify;
mod idempotency;
mod replay;

pub use answer::{AnswerFailures, AnswerFailuresLayer, AnsweredFuture, RetryFailure};
pub use body::ReplayBody;
#[cfg(feature = "grpc")]
pub(crate) use classify::classify_unsent_error;
pub use classify::{RetryServerErrors, is_connect_or_timeout};
pub use idempotency::Idempotency;
#[cfg(feature = "tonic")]
pub use replay::TonicBody;
pub use replay::{
    BufferBody, BufferInto, CloneBody, DEFAULT_BODY_CAP, HttpReplay, RecordedRequest,
};

use crate::config::Config;
use crate::layer::RetryLayer;

impl RetryLayer {
    /// A retry layer for HTTP clients (feature `http`): see the
    /// [module docs](crate::http). Request bodies must be `Clone`; call
    /// [`buffer_bodies`](RetryLayer::buffer_bodies) for those that are not.
    ///
    /// # Example
    ///
    /// ```
    /// use palisade_retry::{Config, RetryLayer};
    /// use tower::{BoxError, ServiceBuilder, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), BoxError> {
    /// let origin = service_fn(|request: http::Request<String>| async move {
    ///     Ok::<_, BoxError>(http::Response::new(request.into_body()))
    /// });
    /// let client = ServiceBuilder::new()
    ///     .layer(RetryLayer::new_for_http(Config::default()))
    ///     .service(origin);
    /// let response = client.oneshot(http::Request::new("hello".to_owned())).await?;
    /// assert_eq!(response.body(), "hello");
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn new_for_http(config: Config) -> RetryLayer<RetryServerErrors, HttpReplay<CloneBody>> {
        Self::new(config)
            .classify(RetryServerErrors)
            .replay(HttpReplay {
                gate: Idempotency::default(),
                keep: CloneBody,
            })
    }
}

impl<C, K> RetryLayer<C, HttpReplay<K>> {
    /// Replaces the idempotency gate: which requests may be retried.
    #[must_use]
    pub fn idempotency(mut self, gate: Idempotency) -> Self {
        self.replay.gate = gate;
        self
    }

    /// Records request bodies up to `cap` bytes as they are sent, so bodies
    /// that are not `Clone` can be replayed; the inner service then
    /// receives `Request<ReplayBody<B>>`. A body announcing more than `cap`
    /// bytes, or sending more, is sent once and not retried.
    #[must_use]
    pub fn buffer_bodies(self, cap: usize) -> RetryLayer<C, HttpReplay<BufferBody>> {
        let gate = self.replay.gate.clone();
        self.replay(HttpReplay {
            gate,
            keep: BufferBody { cap },
        })
    }

    /// As [`buffer_bodies`](Self::buffer_bodies), with each attempt's body
    /// wrapped by `into`, so the inner service receives the body type it
    /// takes: `axum::body::Body::new` in front of an axum `Router`, with no
    /// `map_request` between.
    #[must_use]
    pub fn buffer_bodies_into<F>(
        self,
        cap: usize,
        into: F,
    ) -> RetryLayer<C, HttpReplay<BufferInto<F>>> {
        let gate = self.replay.gate.clone();
        self.replay(HttpReplay {
            gate,
            keep: BufferInto { cap, into },
        })
    }
}
