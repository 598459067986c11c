//! HTTP mode (feature `http`): 5xx responses count as failures, and an
//! open breaker answers 503 with `Retry-After` itself.
//!
//! axum handlers never fail, so a breaker that only looks at `Err` never
//! sees a 500. In HTTP mode the response status decides, and the service's
//! error type stays the inner service's, so the layer drops into
//! `Router::layer` with no `HandleErrorLayer`.

use std::time::{Duration, SystemTime};

use http::{Response, StatusCode};

use palisade_hints::Refusal;

use crate::breaker::{Outcome, Permit};
use crate::classify::{Classify, Settle, is_refusal, settle_at_once, settle_held_at_once};
use crate::config::Config;
use crate::error::Open;
use crate::layer::CircuitBreakerLayer;
use crate::respond::Respond;

/// Classifies HTTP responses: 5xx and a 429 naming no wait are failures,
/// every other status a success, and a transport error a failure. A
/// `Retry-After` on a 503 (seconds or an HTTP date) is the dependency's
/// own wait: it may make the breaker stay open longer than configured,
/// never shorter. A 429 with a `Retry-After` is neither a success nor a
/// failure: the dependency paces this caller (a quota, as a palisade rate
/// limiter on a server answers) and says when to come back, which a retry
/// above waits out; one client over its quota would otherwise open the
/// breaker for every caller.
///
/// A response or error carrying the [`Refusal`] marker (the 429 of a
/// palisade rate limiter beneath, or its 503 when its store cannot decide,
/// the 503 of another breaker) is neither a
/// success nor a failure: it is ignored, so one client over its own quota
/// cannot open the breaker for everyone.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerErrorsAsFailures;

impl<B, E: 'static> Classify<Response<B>, E> for ServerErrorsAsFailures {
    fn classify(&self, result: &Result<Response<B>, E>) -> Outcome {
        match result {
            Ok(response) if response.extensions().get::<Refusal>().is_some() => Outcome::Ignored,
            Ok(response) if response.status() == StatusCode::TOO_MANY_REQUESTS => {
                // Paced, told when to come back (a quota): an answer.
                let paced =
                    palisade_hints::http::retry_after(response.headers(), SystemTime::now())
                        .is_some();
                if paced {
                    Outcome::Ignored
                } else {
                    Outcome::Failure
                }
            }
            Ok(response) if response.status().is_server_error() => Outcome::Failure,
            Ok(_) => Outcome::Success,
            Err(error) if is_refusal(error) => Outcome::Ignored,
            Err(_) => Outcome::Failure,
        }
    }

    fn retry_after(&self, result: &Result<Response<B>, E>) -> Option<Duration> {
        let response = result.as_ref().ok()?;
        match response.status() {
            StatusCode::SERVICE_UNAVAILABLE => {
                palisade_hints::http::retry_after(response.headers(), SystemTime::now())
            }
            _ => None,
        }
    }
}

impl<B, E: 'static> Settle<Response<B>, E> for ServerErrorsAsFailures {
    type Response = Response<B>;

    fn settle(&self, result: Result<Response<B>, E>, permit: Permit) -> Result<Response<B>, E> {
        settle_at_once(self, result, permit)
    }

    fn settle_held(
        &self,
        result: Result<Response<B>, E>,
        held: &mut Option<Permit>,
    ) -> Result<Response<B>, E> {
        settle_held_at_once(self, result, held)
    }
}

/// Answers a call refused by an open breaker with `503 Service Unavailable`
/// and `Retry-After` (whole seconds, rounded up), and an empty body. The
/// response's extensions hold the [`Open`] error and its
/// [`Refusal`](palisade_hints::Refusal), so a retry layer further out knows
/// the 503 is the breaker's, not the dependency's.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServiceUnavailable;

impl<B: Default, E> Respond<Response<B>, E> for ServiceUnavailable {
    type Error = E;

    fn refused(&self, open: Open) -> Result<Response<B>, E> {
        let mut response =
            palisade_hints::http::refusal_response(StatusCode::SERVICE_UNAVAILABLE, open.refusal());
        response.extensions_mut().insert(open);
        Ok(response)
    }

    fn error(&self, error: E) -> E {
        error
    }
}

impl CircuitBreakerLayer<ServerErrorsAsFailures, ServiceUnavailable> {
    /// A breaker for HTTP services (feature `http`): 5xx responses, 429s
    /// naming no wait and transport errors count as failures (unless a
    /// palisade layer beneath refused the call itself), a `Retry-After` on
    /// a 503 may lengthen the open duration, and an open breaker answers 503 with
    /// `Retry-After` itself, keeping the inner service's error type.
    ///
    /// # Example
    ///
    /// ```
    /// use axum::{Router, routing::get};
    /// use palisade_circuit_breaker::{CircuitBreakerLayer, Config};
    ///
    /// # fn main() -> Result<(), palisade_circuit_breaker::ConfigError> {
    /// let app: Router = Router::new()
    ///     .route("/orders", get(|| async { "ok" }))
    ///     .layer(CircuitBreakerLayer::new_for_http(Config::default()));
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn new_for_http(config: Config) -> Self {
        CircuitBreakerLayer::new(config)
            .classify(ServerErrorsAsFailures)
            .respond_with(ServiceUnavailable)
    }
}

#[cfg(test)]
mod tests {
    use http::header::RETRY_AFTER;

    use super::*;

    #[test]
    fn the_503_carries_the_wait_and_the_refusal_marker() {
        let open = Open::new(Some(Duration::from_millis(2500)));
        let response: Response<String> =
            Respond::<Response<String>, ()>::refused(&ServiceUnavailable, open).unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[RETRY_AFTER], "3");
        assert_eq!(response.extensions().get::<Open>(), Some(&open));
        assert_eq!(
            response.extensions().get::<Refusal>(),
            Some(&Refusal::circuit_open(Some(Duration::from_millis(2500))))
        );
    }
}
