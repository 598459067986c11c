//! Which HTTP results are worth another attempt.

use std::error::Error;
use std::io;
use std::time::SystemTime;

use http::{Response, StatusCode};
use palisade_hints::Refusal;
use tower::BoxError;

use crate::classify::{Classify, Verdict, refused};

/// The HTTP default: 502, 503 and 504 are retried (after the `Retry-After`
/// when there is one), 429 only when it carries a `Retry-After`, and
/// transport errors only when they are connect or timeout errors. Every
/// other response, and every other 4xx in particular, is returned.
///
/// A response or error a palisade layer made itself (an open breaker's 503,
/// a rate limiter's 429) carries a [`Refusal`] and is judged by it: an open
/// circuit is never retried.
#[derive(Debug, Clone, Copy, Default)]
pub struct RetryServerErrors;

impl<B> Classify<Response<B>> for RetryServerErrors {
    fn classify(&self, result: &Result<Response<B>, BoxError>) -> Verdict {
        match result {
            Ok(response) => {
                if let Some(refusal) = response.extensions().get::<Refusal>() {
                    return refused(refusal);
                }
                let hint =
                    || palisade_hints::http::retry_after(response.headers(), SystemTime::now());
                match response.status() {
                    StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT => Verdict::Retry,
                    StatusCode::SERVICE_UNAVAILABLE => {
                        hint().map_or(Verdict::Retry, Verdict::RetryAfter)
                    }
                    StatusCode::TOO_MANY_REQUESTS => {
                        hint().map_or(Verdict::Return, Verdict::RetryAfter)
                    }
                    _ => Verdict::Return,
                }
            }
            Err(error) => classify_error(&**error),
        }
    }
}

/// The verdict on a transport error: a local refusal by its marker, a
/// connect or timeout error retried, anything else returned.
pub(crate) fn classify_error(error: &(dyn Error + 'static)) -> Verdict {
    if let Some(refusal) = Refusal::find(error) {
        return refused(refusal);
    }
    if is_connect_or_timeout(error) {
        Verdict::Retry
    } else {
        Verdict::Return
    }
}

/// The verdict on a transport error of a call that must not run twice
/// unless the server surely never got it: a local refusal by its marker,
/// an error that proves the call never left (a refused connection, no
/// route) retried, anything else (a reset, a timeout: the server may
/// have run it) returned.
#[cfg(feature = "grpc")]
pub(crate) fn classify_unsent_error(error: &(dyn Error + 'static)) -> Verdict {
    if let Some(refusal) = Refusal::find(error) {
        return refused(refusal);
    }
    if io_error_of(error, |kind| {
        matches!(
            kind,
            io::ErrorKind::ConnectionRefused
                | io::ErrorKind::AddrNotAvailable
                | io::ErrorKind::HostUnreachable
                | io::ErrorKind::NetworkUnreachable
        )
    }) {
        Verdict::Retry
    } else {
        Verdict::Return
    }
}

/// Whether `error` or any error in its source chain is an I/O error of a
/// kind `of` picks.
fn io_error_of(error: &(dyn Error + 'static), of: impl Fn(io::ErrorKind) -> bool) -> bool {
    in_chain(error, |error| {
        error
            .downcast_ref::<io::Error>()
            .is_some_and(|io| of(io.kind()))
    })
}

/// Whether `error` or any error in its source chain is one `found` picks,
/// looking inside I/O errors too (whose `source` skips the error they
/// wrap).
fn in_chain(error: &(dyn Error + 'static), found: impl Fn(&(dyn Error + 'static)) -> bool) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if found(error) {
            return true;
        }
        next = match error
            .downcast_ref::<io::Error>()
            .and_then(io::Error::get_ref)
        {
            Some(wrapped) => Some(wrapped),
            None => error.source(),
        };
    }
    false
}

/// Whether `error` or any error in its source chain says the connection
/// could not be made or the call timed out: the I/O error kinds of a
/// refused, reset or aborted connection and of a timeout, and the timeout
/// errors of tower and tokio.
pub fn is_connect_or_timeout(error: &(dyn Error + 'static)) -> bool {
    io_error_of(error, |kind| {
        matches!(
            kind,
            io::ErrorKind::ConnectionRefused
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::NotConnected
                | io::ErrorKind::AddrNotAvailable
                | io::ErrorKind::HostUnreachable
                | io::ErrorKind::NetworkUnreachable
                | io::ErrorKind::TimedOut
        )
    }) || in_chain(error, |error| {
        error.is::<tower::timeout::error::Elapsed>() || error.is::<tokio::time::error::Elapsed>()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::RETRY_AFTER;
    use std::time::Duration;

    fn verdict(status: u16, retry_after: Option<&'static str>) -> Verdict {
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        if let Some(value) = retry_after {
            response
                .headers_mut()
                .insert(RETRY_AFTER, value.parse().unwrap());
        }
        RetryServerErrors.classify(&Ok(response))
    }

    #[test]
    fn server_errors_and_hinted_429s_are_retried() {
        assert_eq!(verdict(502, None), Verdict::Retry);
        assert_eq!(verdict(504, None), Verdict::Retry);
        assert_eq!(verdict(503, None), Verdict::Retry);
        assert_eq!(
            verdict(503, Some("2")),
            Verdict::RetryAfter(Duration::from_secs(2))
        );
        assert_eq!(
            verdict(429, Some("1")),
            Verdict::RetryAfter(Duration::from_secs(1))
        );
        assert_eq!(verdict(429, None), Verdict::Return);
        for status in [200, 201, 400, 401, 404, 409, 500, 501] {
            assert_eq!(verdict(status, None), Verdict::Return, "{status}");
        }
    }

    #[test]
    fn a_local_refusal_is_judged_by_its_marker() {
        let mut open = Response::new(());
        *open.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        open.extensions_mut()
            .insert(Refusal::circuit_open(Some(Duration::from_secs(1))));
        assert_eq!(RetryServerErrors.classify(&Ok(open)), Verdict::Refused);
    }

    #[test]
    fn connect_and_timeout_errors_are_retried() {
        let err = |kind| -> BoxError { Box::new(io::Error::from(kind)) };
        let verdict = |error: BoxError| RetryServerErrors.classify(&Err::<Response<()>, _>(error));
        assert_eq!(
            verdict(err(io::ErrorKind::ConnectionRefused)),
            Verdict::Retry
        );
        assert_eq!(verdict(err(io::ErrorKind::TimedOut)), Verdict::Retry);
        assert_eq!(
            verdict(Box::new(tower::timeout::error::Elapsed::new())),
            Verdict::Retry
        );
        assert_eq!(verdict(err(io::ErrorKind::InvalidData)), Verdict::Return);
        assert_eq!(verdict("bad request body".into()), Verdict::Return);
        let wrapped: BoxError = Box::new(io::Error::other(io::Error::from(
            io::ErrorKind::ConnectionReset,
        )));
        assert_eq!(
            verdict(wrapped),
            Verdict::Retry,
            "found in the source chain"
        );
    }
}
