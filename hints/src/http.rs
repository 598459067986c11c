//! `Retry-After` (RFC 9110 §10.2.3): how long the server asks the client to
//! wait, as delay-seconds or an HTTP date.

use std::time::{Duration, SystemTime};

use http::header::{HeaderValue, RETRY_AFTER};
use http::{HeaderMap, Response, StatusCode};

use crate::Refusal;

/// The wait a `Retry-After` value asks for, measured from `now` when it is
/// an HTTP date.
///
/// Delay-seconds is one or more digits (surrounding whitespace allowed); a
/// value too large for `u64` seconds saturates rather than being dropped,
/// since the server plainly asked for a very long wait. A date in the past
/// means no wait (`Duration::ZERO`). Anything else (`-1`, `1.5`, `soon`,
/// an empty value, a malformed date) is `None`: no hint.
///
/// # Example
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use http::HeaderValue;
/// use palisade_hints::http::parse_retry_after;
///
/// let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
/// let wait = |v| parse_retry_after(&HeaderValue::from_static(v), now);
/// assert_eq!(wait("120"), Some(Duration::from_secs(120)));
/// assert_eq!(wait("Sun, 06 Nov 1994 08:49:57 GMT"), Some(Duration::from_secs(20)));
/// assert_eq!(wait("soon"), None);
/// ```
#[must_use]
pub fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if text.is_empty() {
        return None;
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        let seconds = text.parse().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(text).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The wait asked for by the first `Retry-After` in `headers`, if any.
#[must_use]
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    parse_retry_after(headers.get(RETRY_AFTER)?, now)
}

/// `Retry-After` for a wait, in whole seconds rounded up and at least 1,
/// so a client never comes back before the wait is over.
#[must_use]
pub fn retry_after_value(wait: Duration) -> HeaderValue {
    let seconds = wait
        .as_secs()
        .saturating_add(u64::from(wait.subsec_nanos() > 0));
    HeaderValue::from(seconds.max(1))
}

/// The response a layer answers for a call it refused: `status` (503 for
/// an open circuit, 429 for an empty bucket) with an empty body,
/// `Retry-After` when the refusal knows its wait, and the [`Refusal`] in
/// the extensions, so layers further out tell it from the dependency's own
/// answer. The layer adds its own fields and extensions.
#[must_use]
pub fn refusal_response<B: Default>(status: StatusCode, refusal: Refusal) -> Response<B> {
    let mut response = Response::new(B::default());
    *response.status_mut() = status;
    if let Some(wait) = refusal.retry_after() {
        response
            .headers_mut()
            .insert(RETRY_AFTER, retry_after_value(wait));
    }
    response.extensions_mut().insert(refusal);
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_refusal_response_carries_its_wait_and_its_marker() {
        let refusal = Refusal::rate_limited(Some(Duration::from_millis(1_500)));
        let response: Response<()> = refusal_response(StatusCode::TOO_MANY_REQUESTS, refusal);
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[RETRY_AFTER], "2");
        assert_eq!(response.extensions().get(), Some(&refusal));

        let forced = Refusal::circuit_open(None);
        let response: Response<()> = refusal_response(StatusCode::SERVICE_UNAVAILABLE, forced);
        assert!(response.headers().get(RETRY_AFTER).is_none());
        assert_eq!(response.extensions().get(), Some(&forced));
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn wait(value: &str) -> Option<Duration> {
        parse_retry_after(&HeaderValue::from_str(value).unwrap(), now())
    }

    #[test]
    fn reads_seconds_and_dates() {
        assert_eq!(wait("120"), Some(Duration::from_secs(120)));
        assert_eq!(wait(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(wait("0"), Some(Duration::ZERO));
        assert_eq!(
            wait("99999999999999999999999"),
            Some(Duration::from_secs(u64::MAX))
        );
        let later = httpdate::fmt_http_date(now() + Duration::from_secs(30));
        assert_eq!(wait(&later), Some(Duration::from_secs(30)));
        let past = httpdate::fmt_http_date(now() - Duration::from_secs(30));
        assert_eq!(wait(&past), Some(Duration::ZERO));
    }

    #[test]
    fn anything_else_is_no_hint() {
        for bad in [
            "-1",
            "1.5",
            "+5",
            "soon",
            "",
            "  ",
            "5 s",
            "Sun, 99 Nov 1994",
        ] {
            assert_eq!(wait(bad), None, "{bad:?}");
        }
        let opaque = HeaderValue::from_bytes(b"\xff12").unwrap();
        assert_eq!(parse_retry_after(&opaque, now()), None);
    }

    #[test]
    fn writes_whole_seconds_rounded_up() {
        assert_eq!(retry_after_value(Duration::from_millis(1)), "1");
        assert_eq!(retry_after_value(Duration::ZERO), "1");
        assert_eq!(retry_after_value(Duration::from_millis(2001)), "3");
        assert_eq!(retry_after_value(Duration::from_secs(60)), "60");
        assert_eq!(
            retry_after_value(Duration::MAX),
            u64::MAX.to_string().as_str()
        );
    }

    proptest! {
        #[test]
        fn seconds_round_trip(seconds in any::<u64>()) {
            prop_assert_eq!(wait(&seconds.to_string()), Some(Duration::from_secs(seconds)));
        }

        #[test]
        fn written_value_never_shortens_the_wait(ms in 0u64..10_000_000) {
            let wait_for = Duration::from_millis(ms);
            let written = retry_after_value(wait_for);
            let read = parse_retry_after(&written, now()).unwrap();
            prop_assert!(read >= wait_for);
            prop_assert!(read < wait_for + Duration::from_secs(2));
        }
    }
}
