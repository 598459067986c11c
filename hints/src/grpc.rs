//! gRPC status codes and `grpc-retry-pushback-ms`.
//!
//! A gRPC call's outcome is its `grpc-status`, in the response headers of a
//! trailers-only response or in the trailers at the end of the body; both
//! are header maps, which is what these functions read.

use std::time::Duration;

use http::{HeaderMap, HeaderValue};

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
/// use http::{HeaderMap, HeaderValue};
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

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(name: &'static str, value: &'static str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(name, value.parse().unwrap());
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
