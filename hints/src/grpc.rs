//! gRPC status codes, `grpc-retry-pushback-ms` and `grpc-timeout`.
//!
//! A gRPC call's outcome is its `grpc-status`, in the response headers of a
//! trailers-only response or in the trailers at the end of the body; both
//! are header maps, which is what these functions read. When only the
//! trailers carry it, a [`StatusBody`] takes what waits for it (a permit,
//! an uncounted call) to the body's end.

use std::time::Duration;

use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};

use crate::Refusal;

mod body;

pub use body::{AtEnd, StatusBody};

/// `grpc-status` UNAUTHENTICATED.
const UNAUTHENTICATED: u32 = 16;
/// `grpc-status` PERMISSION_DENIED.
const PERMISSION_DENIED: u32 = 7;
/// `grpc-status` UNIMPLEMENTED.
const UNIMPLEMENTED: u32 = 12;

/// `grpc-status` UNKNOWN.
pub const UNKNOWN: u32 = 2;
/// `grpc-status` DEADLINE_EXCEEDED.
pub const DEADLINE_EXCEEDED: u32 = 4;
/// `grpc-status` RESOURCE_EXHAUSTED.
pub const RESOURCE_EXHAUSTED: u32 = 8;
/// `grpc-status` INTERNAL.
pub const INTERNAL: u32 = 13;
/// `grpc-status` UNAVAILABLE.
pub const UNAVAILABLE: u32 = 14;

/// The codes that say the dependency is unwell rather than that it answered:
/// UNKNOWN, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL and UNAVAILABLE.
pub const DEPENDENCY_FAILURES: [u32; 5] = [
    UNKNOWN,
    DEADLINE_EXCEEDED,
    RESOURCE_EXHAUSTED,
    INTERNAL,
    UNAVAILABLE,
];

/// Whether `code` is one of [`DEPENDENCY_FAILURES`].
#[must_use]
pub fn is_dependency_failure(code: u32) -> bool {
    DEPENDENCY_FAILURES.contains(&code)
}

/// Whether `code`, in `fields` (the headers of a trailers-only answer, or
/// the trailers), is the server pacing its caller: a RESOURCE_EXHAUSTED
/// that names its wait in `grpc-retry-pushback-ms` (a quota, as a palisade
/// rate limiter answers). An answer, as an HTTP 429 is, not the server
/// failing.
#[must_use]
pub fn is_paced(code: u32, fields: &HeaderMap) -> bool {
    code == RESOURCE_EXHAUSTED && pushback(fields).and_then(Pushback::wait).is_some()
}

/// Whether a response's head says the server failed, for HTTP and gRPC
/// alike: a 5xx, or a trailers-only gRPC answer (HTTP 200, as tonic sends
/// a handler's `Err(Status)`) whose `grpc-status` is one of
/// [`DEPENDENCY_FAILURES`], but a caller [paced](is_paced) by its quota.
/// A status that comes only in the trailers is not in the head.
///
/// # Example
///
/// ```
/// use http::{HeaderMap, StatusCode};
/// use palisade_hints::grpc::head_failed;
///
/// let mut headers = HeaderMap::new();
/// assert!(head_failed(StatusCode::BAD_GATEWAY, &headers));
/// headers.insert("grpc-status", "14".parse().unwrap());
/// assert!(head_failed(StatusCode::OK, &headers), "UNAVAILABLE");
/// headers.insert("grpc-status", "5".parse().unwrap());
/// assert!(!head_failed(StatusCode::OK, &headers), "NOT_FOUND is an answer");
/// headers.insert("grpc-status", "8".parse().unwrap());
/// assert!(head_failed(StatusCode::OK, &headers), "RESOURCE_EXHAUSTED");
/// headers.insert("grpc-retry-pushback-ms", "100".parse().unwrap());
/// assert!(!head_failed(StatusCode::OK, &headers), "a quota naming its wait");
/// ```
#[must_use]
pub fn head_failed(status: StatusCode, headers: &HeaderMap) -> bool {
    status.is_server_error() || self::status(headers).is_some_and(|code| failed(code, headers))
}

/// Whether `code`, in `fields` (the headers of a trailers-only answer, or
/// the trailers), says the call failed: one of [`DEPENDENCY_FAILURES`],
/// but a caller [paced](is_paced) by its quota.
#[must_use]
pub fn failed(code: u32, fields: &HeaderMap) -> bool {
    is_dependency_failure(code) && !is_paced(code, fields)
}

/// The `grpc-status` in `fields` (headers or trailers), if it is there and
/// a number.
#[must_use]
pub fn status(fields: &HeaderMap) -> Option<u32> {
    fields
        .get("grpc-status")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The status a gRPC client gives a response whose HTTP status is not 200
/// and which carries no `grpc-status` of its own (a proxy or load balancer
/// answered, not the gRPC server), per gRPC's HTTP-to-gRPC status mapping:
/// 400 is INTERNAL, 401 UNAUTHENTICATED, 403 PERMISSION_DENIED,
/// 404 UNIMPLEMENTED, 429, 502, 503 and 504 UNAVAILABLE, anything else
/// UNKNOWN. A 200 is `None`: its status comes with the trailers.
///
/// # Example
///
/// ```
/// use http::StatusCode;
/// use palisade_hints::grpc::{status_of_http, UNAVAILABLE};
///
/// assert_eq!(status_of_http(StatusCode::SERVICE_UNAVAILABLE), Some(UNAVAILABLE));
/// assert_eq!(status_of_http(StatusCode::TOO_MANY_REQUESTS), Some(UNAVAILABLE));
/// assert_eq!(status_of_http(StatusCode::OK), None);
/// ```
#[must_use]
pub fn status_of_http(status: StatusCode) -> Option<u32> {
    Some(match status.as_u16() {
        200 => return None,
        400 => INTERNAL,
        401 => UNAUTHENTICATED,
        403 => PERMISSION_DENIED,
        404 => UNIMPLEMENTED,
        429 | 502 | 503 | 504 => UNAVAILABLE,
        _ => UNKNOWN,
    })
}

/// The `grpc-status` a response's head settles, if it settles one: its own
/// `grpc-status` header (a trailers-only response), or else, for an HTTP
/// status other than 200, [`status_of_http`]. `None` means the status is
/// still to come, in the trailers.
#[must_use]
pub fn head_status(status: StatusCode, headers: &HeaderMap) -> Option<u32> {
    self::status(headers).or_else(|| status_of_http(status))
}

/// What a gRPC response's head settles of its call: the first phase of a
/// two-phase classifier, the second being the trailers at the end of the
/// body ([`StatusBody`]).
#[derive(Debug, Clone, Copy)]
pub enum Head<'a> {
    /// A palisade layer refused the call itself (an open breaker, an
    /// empty bucket, a shed call): its marker says why.
    Refused(&'a Refusal),
    /// The head carries the call's status: a trailers-only answer's
    /// `grpc-status`, or the one a gRPC client gives an HTTP error that
    /// carries none ([`head_status`]); with the fields it came in.
    Status(u32, &'a HeaderMap),
    /// The status is still to come, in the trailers.
    InTrailers,
}

impl<'a> Head<'a> {
    /// What `response`'s head settles: a [`Refusal`] in its extensions
    /// first, then its status.
    #[must_use]
    pub fn of<B>(response: &'a Response<B>) -> Self {
        if let Some(refusal) = response.extensions().get::<Refusal>() {
            Self::Refused(refusal)
        } else if let Some(code) = head_status(response.status(), response.headers()) {
            Self::Status(code, response.headers())
        } else {
            Self::InTrailers
        }
    }
}

/// Whether a call whose body ended with `trailers` (`None`: it ended
/// without them, or with an error) failed: no `grpc-status`, or one that
/// says the call [failed].
#[must_use]
pub fn ended_failed(trailers: Option<&HeaderMap>) -> bool {
    trailers
        .and_then(|trailers| Some(failed(status(trailers)?, trailers)))
        .unwrap_or(true)
}

/// What a server's `grpc-retry-pushback-ms` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushback {
    /// Retry no sooner than this.
    After(Duration),
    /// A negative or unreadable value: the server asks for no retry at all
    /// (gRPC retry design, A6).
    DoNotRetry,
}

impl Pushback {
    /// The wait, unless the server asked for no retry.
    #[must_use]
    pub const fn wait(self) -> Option<Duration> {
        match self {
            Self::After(wait) => Some(wait),
            Self::DoNotRetry => None,
        }
    }
}

/// The server's `grpc-retry-pushback-ms` in `fields`, if present.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use http::{HeaderMap, HeaderValue, StatusCode};
/// use palisade_hints::grpc::{pushback, Pushback};
///
/// let mut trailers = HeaderMap::new();
/// trailers.insert("grpc-retry-pushback-ms", "250".parse().unwrap());
/// assert_eq!(pushback(&trailers), Some(Pushback::After(Duration::from_millis(250))));
/// trailers.insert("grpc-retry-pushback-ms", "-1".parse().unwrap());
/// assert_eq!(pushback(&trailers), Some(Pushback::DoNotRetry));
/// ```
#[must_use]
pub fn pushback(fields: &HeaderMap) -> Option<Pushback> {
    let value = fields.get("grpc-retry-pushback-ms")?;
    let text = value.to_str().ok().map(str::trim).unwrap_or_default();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Pushback::DoNotRetry);
    }
    let ms = text.parse().unwrap_or(u64::MAX);
    Some(Pushback::After(Duration::from_millis(ms)))
}

/// `grpc-retry-pushback-ms` for a wait, in whole milliseconds rounded up.
#[must_use]
pub fn pushback_value(wait: Duration) -> HeaderValue {
    let ms = wait.as_millis() + u128::from(!wait.subsec_nanos().is_multiple_of(1_000_000));
    HeaderValue::from(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// The time a call's caller gives it, from the request's `grpc-timeout`
/// (gRPC over HTTP/2: at most 8 digits and a unit, `H`, `M`, `S`, `m`,
/// `u` or `n`); `None` when there is none or it is not one.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use http::HeaderMap;
/// use palisade_hints::grpc::{timeout, timeout_value};
///
/// let mut headers = HeaderMap::new();
/// headers.insert("grpc-timeout", "300m".parse().unwrap());
/// assert_eq!(timeout(&headers), Some(Duration::from_millis(300)));
/// assert_eq!(timeout_value(Duration::from_millis(120)), "120000u");
/// ```
#[must_use]
pub fn timeout(fields: &HeaderMap) -> Option<Duration> {
    // Named once: a lookup by `&str` parses the name each time.
    static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
    let text = fields.get(&GRPC_TIMEOUT)?.as_bytes();
    let (&unit, digits) = text.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value = digits
        .iter()
        .fold(0u64, |value, digit| value * 10 + u64::from(digit - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(value * 3600),
        b'M' => Duration::from_secs(value * 60),
        b'S' => Duration::from_secs(value),
        b'm' => Duration::from_millis(value),
        b'u' => Duration::from_micros(value),
        b'n' => Duration::from_nanos(value),
        _ => return None,
    })
}

/// `grpc-timeout` for the time left, in the finest unit whose 8 digits
/// hold it, rounded down (a caller is never told of more time than it
/// has); past what hours hold, the longest value.
#[must_use]
pub fn timeout_value(left: Duration) -> HeaderValue {
    const MOST: u128 = 99_999_999;
    let nanos = left.as_nanos();
    let (value, unit) = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ]
    .into_iter()
    .map(|(per, unit)| (nanos / per, unit))
    .find(|&(value, _)| value <= MOST)
    .unwrap_or((MOST, 'H'));
    HeaderValue::try_from(format!("{value}{unit}")).unwrap_or(HeaderValue::from_static("0n"))
}

/// The trailers-only response a layer answers for a call it refused:
/// `grpc-status` `code` (UNAVAILABLE for an open circuit,
/// RESOURCE_EXHAUSTED for an empty bucket) with `message`
/// (percent-encoded, as `grpc-message` is), `grpc-retry-pushback-ms` when
/// the refusal knows its wait, and the [`Refusal`] in the extensions, so
/// layers further out tell it from the server's own answer. The body is
/// empty: a gRPC client reads the status from these headers.
#[must_use]
pub fn refusal_response<B: Default>(
    code: u32,
    message: &'static str,
    refusal: Refusal,
) -> Response<B> {
    let mut response = trailers_only(code, message);
    if let Some(wait) = refusal.retry_after() {
        response
            .headers_mut()
            .insert("grpc-retry-pushback-ms", pushback_value(wait));
    }
    response.extensions_mut().insert(refusal);
    response
}

/// A trailers-only response: HTTP 200, an empty body, `grpc-status` `code`
/// and `grpc-message` `message` (percent-encoded) in the headers.
#[must_use]
pub fn trailers_only<B: Default>(code: u32, message: &'static str) -> Response<B> {
    let mut response = Response::new(B::default());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from(code));
    headers.insert("grpc-message", HeaderValue::from_static(message));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_response_is_trailers_only_with_its_wait_and_its_marker() {
        let refusal = Refusal::rate_limited(Some(Duration::from_micros(2_500)));
        let response: Response<()> =
            refusal_response(RESOURCE_EXHAUSTED, "rate%20limited", refusal);
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers();
        assert_eq!(headers[CONTENT_TYPE], "application/grpc");
        assert_eq!(status(headers), Some(RESOURCE_EXHAUSTED));
        assert_eq!(headers["grpc-message"], "rate%20limited");
        assert_eq!(
            pushback(headers),
            Some(Pushback::After(Duration::from_millis(3)))
        );
        assert_eq!(response.extensions().get(), Some(&refusal));

        let forced = Refusal::circuit_open(None);
        let response: Response<()> = refusal_response(UNAVAILABLE, "circuit%20open", forced);
        assert!(pushback(response.headers()).is_none());
    }

    fn fields(name: &'static str, value: &'static str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(name, value.parse().unwrap());
        map
    }

    #[test]
    fn a_timeout_is_read_in_each_unit_and_refused_when_malformed() {
        let read = |value| timeout(&fields("grpc-timeout", value));
        assert_eq!(read("2H"), Some(Duration::from_secs(7_200)));
        assert_eq!(read("3M"), Some(Duration::from_secs(180)));
        assert_eq!(read("99999999S"), Some(Duration::from_secs(99_999_999)));
        assert_eq!(read("300m"), Some(Duration::from_millis(300)));
        assert_eq!(read("7u"), Some(Duration::from_micros(7)));
        assert_eq!(read("0n"), Some(Duration::ZERO));
        for malformed in [
            "",
            "S",
            "100",
            "123456789m",
            "1.5S",
            "-1S",
            "10s",
            " 10S",
            "10S ",
        ] {
            assert_eq!(read(malformed), None, "{malformed:?}");
        }
        assert_eq!(timeout(&HeaderMap::new()), None);
    }

    #[test]
    fn a_timeout_is_written_in_the_finest_unit_that_holds_it_rounded_down() {
        let written = |left| timeout_value(left).to_str().unwrap().to_owned();
        assert_eq!(written(Duration::from_nanos(99_999_999)), "99999999n");
        assert_eq!(written(Duration::from_millis(120)), "120000u");
        assert_eq!(written(Duration::from_nanos(100_000_999_999)), "100000m");
        assert_eq!(written(Duration::from_secs(200_000)), "200000S");
        assert_eq!(written(Duration::from_secs(99_999_999 * 60)), "99999999M");
        assert_eq!(written(Duration::from_secs(100_000_000 * 60)), "1666666H");
        assert_eq!(written(Duration::MAX), "99999999H");
        for left in [
            Duration::from_millis(1),
            Duration::from_secs(1),
            Duration::from_secs(86_400),
        ] {
            let value = timeout_value(left);
            let read = timeout(&fields_of("grpc-timeout", value));
            assert_eq!(read, Some(left), "{left:?} round trips");
        }
    }

    fn fields_of(name: &'static str, value: HeaderValue) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(name, value);
        map
    }

    #[test]
    fn status_is_read_when_numeric() {
        assert_eq!(status(&fields("grpc-status", "14")), Some(UNAVAILABLE));
        assert_eq!(status(&fields("grpc-status", " 0")), Some(0));
        assert_eq!(status(&fields("grpc-status", "unavailable")), None);
        assert_eq!(status(&HeaderMap::new()), None);
        assert!(is_dependency_failure(INTERNAL));
        assert!(!is_dependency_failure(5), "NOT_FOUND is an answer");
    }

    #[test]
    fn http_statuses_map_as_grpc_clients_map_them() {
        for code in [429, 502, 503, 504] {
            let status = StatusCode::from_u16(code).unwrap();
            assert_eq!(status_of_http(status), Some(UNAVAILABLE), "{code}");
        }
        assert_eq!(status_of_http(StatusCode::BAD_REQUEST), Some(INTERNAL));
        assert_eq!(status_of_http(StatusCode::UNAUTHORIZED), Some(16));
        assert_eq!(status_of_http(StatusCode::FORBIDDEN), Some(7));
        assert_eq!(status_of_http(StatusCode::NOT_FOUND), Some(12));
        assert_eq!(status_of_http(StatusCode::IM_A_TEAPOT), Some(UNKNOWN));
        assert_eq!(status_of_http(StatusCode::OK), None);
        // The server's own status wins over the HTTP one.
        let own = fields("grpc-status", "5");
        assert_eq!(head_status(StatusCode::SERVICE_UNAVAILABLE, &own), Some(5));
        assert_eq!(head_status(StatusCode::OK, &HeaderMap::new()), None);
        assert_eq!(
            head_status(StatusCode::BAD_GATEWAY, &HeaderMap::new()),
            Some(UNAVAILABLE)
        );
    }

    #[test]
    fn pushback_reads_milliseconds_and_refusals() {
        let read = |v| pushback(&fields("grpc-retry-pushback-ms", v));
        assert_eq!(read("0"), Some(Pushback::After(Duration::ZERO)));
        assert_eq!(
            read("1500"),
            Some(Pushback::After(Duration::from_millis(1500)))
        );
        assert_eq!(
            read("99999999999999999999999"),
            Some(Pushback::After(Duration::from_millis(u64::MAX)))
        );
        for refusal in ["-1", "1.5", "soon", ""] {
            assert_eq!(read(refusal), Some(Pushback::DoNotRetry), "{refusal:?}");
        }
        assert_eq!(pushback(&HeaderMap::new()), None);
        assert_eq!(Pushback::DoNotRetry.wait(), None);
        assert_eq!(pushback_value(Duration::from_micros(1500)), "2");
        assert_eq!(pushback_value(Duration::from_millis(250)), "250");
    }
}
