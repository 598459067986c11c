//! HTTP mode (feature `http`): 5xx responses count as failures, and an
//! open breaker answers 503 with `Retry-After` itself.
//!
//! axum handlers never fail, so a breaker that only looks at `Err` never
//! sees a 500. In HTTP mode the response status decides, and the service's
//! error type stays the inner service's, so the layer drops into
//! `Router::layer` with no `HandleErrorLayer`.

use std::time::{Duration, SystemTime};

use http::header::{HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};

use crate::breaker::Outcome;
use crate::classify::Classify;
use crate::config::Config;
use crate::error::Open;
use crate::layer::CircuitBreakerLayer;
use crate::rejection::Rejection;

/// Classifies HTTP responses: 5xx and 429 are failures, every other status
/// a success, and a transport error a failure. A `Retry-After` on a 503 or
/// 429 (seconds or an HTTP date) is the dependency's own wait.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerErrorsAsFailures;

impl<B, E> Classify<Response<B>, E> for ServerErrorsAsFailures {
    fn classify(&self, result: &Result<Response<B>, E>) -> Outcome {
        match result {
            Ok(response)
                if response.status().is_server_error()
                    || response.status() == StatusCode::TOO_MANY_REQUESTS =>
            {
                Outcome::Failure
            }
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }

    fn retry_after(&self, result: &Result<Response<B>, E>) -> Option<Duration> {
        let response = result.as_ref().ok()?;
        match response.status() {
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => {
                parse_retry_after(response.headers().get(RETRY_AFTER)?, SystemTime::now())
            }
            _ => None,
        }
    }
}

/// Reads `Retry-After` as delay-seconds or an HTTP date; `None` when it is
/// neither, or a date already past.
fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().ok().map(Duration::from_secs);
    }
    httpdate::parse_http_date(text)
        .ok()?
        .duration_since(now)
        .ok()
}

/// Answers a call refused by an open breaker with `503 Service Unavailable`
/// and `Retry-After` (whole seconds, rounded up), and an empty body.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServiceUnavailable;

impl<B: Default, E> Rejection<Response<B>, E> for ServiceUnavailable {
    type Error = E;

    fn reject(&self, open: Open) -> Result<Response<B>, E> {
        let mut response = Response::new(B::default());
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        if let Some(wait) = open.retry_after() {
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        response.extensions_mut().insert(open);
        Ok(response)
    }

    fn error(&self, error: E) -> E {
        error
    }
}

impl CircuitBreakerLayer<ServerErrorsAsFailures, ServiceUnavailable> {
    /// A breaker for HTTP services (feature `http`): 5xx and 429 responses
    /// and transport errors count as failures, a `Retry-After` on a 503 or
    /// 429 sets the open duration, and an open breaker answers 503 with
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
            .reject_with(ServiceUnavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let value = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(
            parse_retry_after(&value("120"), now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after(&value(" 7 "), now),
            Some(Duration::from_secs(7))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        let later = HeaderValue::from_str(&later).unwrap();
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&HeaderValue::from_str(&past).unwrap(), now),
            None
        );
        for bad in ["-1", "1.5", "soon", ""] {
            assert_eq!(parse_retry_after(&value(bad), now), None, "{bad:?}");
        }
    }
}
