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
///
/// An HTTP date is measured on the server's clock where the response
/// says what its clock read (its `Date`, less its `Age` where a cache
/// held it): the date minus the server's now, whatever this machine's
/// clock says. On `now`, a server whose clock ran 2 minutes ahead asking
/// for 30 s was read as 150 s (a retry gave up on a wait over its cap, a
/// breaker stayed open minutes). Without a `Date`, it is measured from
/// `now`.
///
/// # Example
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use http::HeaderMap;
/// use palisade_hints::http::retry_after;
///
/// let mut headers = HeaderMap::new();
/// headers.insert("retry-after", "Sun, 06 Nov 1994 08:50:27 GMT".parse().unwrap());
/// headers.insert("date", "Sun, 06 Nov 1994 08:49:57 GMT".parse().unwrap());
/// // This machine's clock is an hour behind the server's.
/// let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_797 - 3_600);
/// assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(30)));
/// ```
#[must_use]
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?;
    let servers_now = headers
        .get(http::header::DATE)
        .and_then(|date| httpdate::parse_http_date(date.to_str().ok()?.trim()).ok())
        .map(|date| {
            let age = headers
                .get(http::header::AGE)
                .and_then(|age| age.to_str().ok()?.trim().parse().ok())
                .map_or(Duration::ZERO, Duration::from_secs);
            date.checked_add(age).unwrap_or(date)
        });
    parse_retry_after(value, servers_now.unwrap_or(now))
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

    /// A date is measured on the server's clock, here two minutes ahead
    /// of this machine's: it asked for 30 s, not 150.
    #[test]
    fn a_date_is_measured_from_the_servers_own_now() {
        let servers_now = now() + Duration::from_secs(120);
        let header = |at: SystemTime| HeaderValue::from_str(&httpdate::fmt_http_date(at)).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, header(servers_now + Duration::from_secs(30)));
        assert_eq!(
            retry_after(&headers, now()),
            Some(Duration::from_secs(150)),
            "without its Date, from this machine's now"
        );
        headers.insert(http::header::DATE, header(servers_now));
        assert_eq!(retry_after(&headers, now()), Some(Duration::from_secs(30)));
        // Held 10 s by a cache: 10 s of the wait are over.
        headers.insert(http::header::AGE, HeaderValue::from_static("10"));
        assert_eq!(retry_after(&headers, now()), Some(Duration::from_secs(20)));
        // Seconds are seconds, whatever the clocks.
        headers.insert(RETRY_AFTER, HeaderValue::from_static("5"));
        assert_eq!(retry_after(&headers, now()), Some(Duration::from_secs(5)));
        // A Date that does not parse is no clock.
        headers.insert(RETRY_AFTER, header(now() + Duration::from_secs(30)));
        headers.insert(http::header::DATE, HeaderValue::from_static("yesterday"));
        assert_eq!(retry_after(&headers, now()), Some(Duration::from_secs(30)));
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
