//! gRPC mode (feature `grpc`): `UNAVAILABLE` is retried, and
//! `RESOURCE_EXHAUSTED` when the server says when, honouring
//! `grpc-retry-pushback-ms`.
//!
//! Only a trailers-only response can be retried: once a response has
//! headers and messages, the call is committed and its status arrives with
//! the trailers, after the caller has the response (gRPC's own retry design
//! draws the same line). That is how servers answer `UNAVAILABLE`. A
//! response from a proxy without any `grpc-status` is mapped as gRPC clients
//! map it: HTTP 429, 502 and 503 are `UNAVAILABLE`, and retried (504 too
//! in gRPC's mapping, but see below).
//!
//! Every gRPC request is a `POST`, so the idempotency gate is open, and
//! only what says the server did not process the call is retried:
//! `UNAVAILABLE` from the server, or a transport error that proves the
//! call never left (a refused connection, no route). A reset connection,
//! a timeout, or a proxy's 504 (its upstream timed out) are returned: the
//! server may have run the call, and a method that must not run twice
//! would. Message bodies are recorded up to [`DEFAULT_BODY_CAP`] and
//! replayed.
//!
//! A request's `grpc-timeout` is the caller's time for the whole call,
//! retries included (gRPC's own retry design): each attempt after the
//! first tells the server the time left, and none starts, nor is waited
//! for, once it would be up (the last answer goes back). Both presets
//! (and [`buffer_bodies`](crate::RetryLayer::buffer_bodies) and
//! [`buffer_bodies_into`](crate::RetryLayer::buffer_bodies_into) in HTTP
//! mode) do this; a layer that clones `Clone` bodies sends the first
//! attempt's value again. The time left is written as the attempt is
//! made, before its service is ready: a wait for readiness (behind a
//! concurrency limit) is not taken from it, though an attempt whose time
//! ran out during that wait is not sent. [`Config::deadline`] bounds the retries as well, on the
//! client's side.
//!
//! # Presets
//!
//! - [`RetryLayer::new_for_tonic`] (feature `tonic`): takes and passes on
//!   tonic's own body, so it goes straight in front of a tonic `Channel`
//!   (or a breaker over one) and a generated client takes the stack as it
//!   is; see its example.
//! - [`RetryLayer::new_for_grpc`]: the same for other gRPC stacks; its
//!   inner service receives a [`ReplayBody`](crate::http::ReplayBody).

use http::Response;
use palisade_hints::Refusal;
use palisade_hints::grpc::{self, Pushback};
use tower::BoxError;

use crate::classify::{Classify, Verdict, refused};
use crate::config::Config;
use crate::http::{BufferBody, DEFAULT_BODY_CAP, HttpReplay, Idempotency, classify_unsent_error};
use crate::layer::RetryLayer;

/// The gRPC default: `UNAVAILABLE` is retried (after the pushback when
/// there is one), `RESOURCE_EXHAUSTED` only with a pushback, and a negative
/// or unreadable pushback means no retry; transport errors only when the
/// call surely never left (a refused connection, no route), not a reset or
/// a timeout; an open breaker's own `UNAVAILABLE` is not.
///
/// A response without a `grpc-status` of its own (a proxy or load balancer
/// answered) is read as gRPC clients read it
/// ([`palisade_hints::grpc::head_status`]): 429, 502 and 503 are
/// `UNAVAILABLE` and retried; a 504 (the proxy's upstream timed out, and
/// may have run the call) and other statuses are answers.
#[derive(Debug, Clone, Copy, Default)]
pub struct RetryUnavailable;

impl<B> Classify<Response<B>> for RetryUnavailable {
    fn classify(&self, result: &Result<Response<B>, BoxError>) -> Verdict {
        let response = match result {
            Ok(response) => response,
            Err(error) => return classify_unsent_error(&**error),
        };
        if let Some(refusal) = response.extensions().get::<Refusal>() {
            return refused(refusal);
        }
        let headers = response.headers();
        if response.status() == http::StatusCode::GATEWAY_TIMEOUT && grpc::status(headers).is_none()
        {
            return Verdict::Return;
        }
        match (
            grpc::head_status(response.status(), headers),
            grpc::pushback(headers),
        ) {
            (Some(grpc::UNAVAILABLE), None) => Verdict::Retry,
            (Some(grpc::UNAVAILABLE | grpc::RESOURCE_EXHAUSTED), Some(Pushback::After(wait))) => {
                Verdict::RetryAfter(wait)
            }
            _ => Verdict::Return,
        }
    }
}

impl RetryLayer {
    /// A retry layer for gRPC clients (feature `grpc`): see the
    /// [module docs](crate::grpc).
    #[must_use]
    pub fn new_for_grpc(config: Config) -> RetryLayer<RetryUnavailable, HttpReplay<BufferBody>> {
        Self::new(config)
            .classify(RetryUnavailable)
            .replay(HttpReplay {
                gate: Idempotency::any_method(),
                keep: BufferBody {
                    cap: DEFAULT_BODY_CAP,
                },
            })
    }

    /// A retry layer for tonic clients (feature `tonic`): as
    /// [`new_for_grpc`](Self::new_for_grpc), taking and passing on tonic's
    /// own body, so it stacks in front of a `Channel` (or a breaker over
    /// one) with nothing between, and a generated client takes the stack
    /// as it is.
    ///
    /// # Example
    ///
    /// ```
    /// use palisade_retry::{Config, RetryLayer};
    /// use tower::ServiceBuilder;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:50051").connect_lazy();
    /// let channel = ServiceBuilder::new()
    ///     .layer(RetryLayer::new_for_tonic(Config::default()))
    ///     .service(channel);
    /// let health = tonic_health::pb::health_client::HealthClient::new(channel);
    /// # let _ = health;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "tonic")]
    #[must_use]
    pub fn new_for_tonic(
        config: Config,
    ) -> RetryLayer<RetryUnavailable, HttpReplay<crate::http::TonicBody>> {
        Self::new(config)
            .classify(RetryUnavailable)
            .replay(HttpReplay {
                gate: Idempotency::any_method(),
                keep: crate::http::TonicBody {
                    cap: DEFAULT_BODY_CAP,
                },
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn verdict(status: &'static str, pushback: Option<&'static str>) -> Verdict {
        let mut response = Response::new(());
        response
            .headers_mut()
            .insert("grpc-status", status.parse().unwrap());
        if let Some(ms) = pushback {
            response
                .headers_mut()
                .insert("grpc-retry-pushback-ms", ms.parse().unwrap());
        }
        RetryUnavailable.classify(&Ok(response))
    }

    #[test]
    fn unavailable_and_pushed_back_exhaustion_are_retried() {
        let ms = Duration::from_millis;
        assert_eq!(verdict("14", None), Verdict::Retry);
        assert_eq!(verdict("14", Some("120")), Verdict::RetryAfter(ms(120)));
        assert_eq!(verdict("14", Some("-1")), Verdict::Return);
        assert_eq!(verdict("8", Some("300")), Verdict::RetryAfter(ms(300)));
        assert_eq!(verdict("8", None), Verdict::Return);
        for other in ["0", "2", "4", "5", "13"] {
            assert_eq!(verdict(other, None), Verdict::Return, "{other}");
        }
    }

    #[test]
    fn http_429_502_503_without_grpc_status_are_retried_and_504_is_not() {
        let verdict = |status: u16, pushback: Option<&'static str>| {
            let mut response = Response::new(());
            *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
            if let Some(ms) = pushback {
                response
                    .headers_mut()
                    .insert("grpc-retry-pushback-ms", ms.parse().unwrap());
            }
            RetryUnavailable.classify(&Ok(response))
        };
        // A proxy or load balancer answered, not the gRPC server; its 504
        // says its upstream timed out, and may have run the call.
        for status in [429, 502, 503] {
            assert_eq!(verdict(status, None), Verdict::Retry, "{status}");
        }
        assert_eq!(verdict(504, None), Verdict::Return);
        assert_eq!(
            verdict(503, Some("40")),
            Verdict::RetryAfter(Duration::from_millis(40))
        );
        // INTERNAL, UNIMPLEMENTED, UNKNOWN: answers, not retried.
        for status in [400, 404, 500] {
            assert_eq!(verdict(status, None), Verdict::Return, "{status}");
        }
        // A 200's status is still to come, in the trailers.
        assert_eq!(verdict(200, None), Verdict::Return);
    }

    /// Every gRPC call passes the idempotency gate, so a transport error
    /// is retried only when the call surely never left. (A timeout or a
    /// reset was retried, and a method that must not run twice ran twice.)
    #[test]
    fn only_transport_errors_of_calls_never_sent_are_retried() {
        use std::io;
        let verdict = |error: BoxError| RetryUnavailable.classify(&Err::<Response<()>, _>(error));
        let io = |kind: io::ErrorKind| -> BoxError { Box::new(io::Error::from(kind)) };
        assert_eq!(
            verdict(io(io::ErrorKind::ConnectionRefused)),
            Verdict::Retry
        );
        for kind in [
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::ConnectionAborted,
            io::ErrorKind::TimedOut,
        ] {
            assert_eq!(verdict(io(kind)), Verdict::Return, "{kind:?}");
        }
        assert_eq!(
            verdict(Box::new(tower::timeout::error::Elapsed::new())),
            Verdict::Return
        );
    }
}
