//! Arbitrary bytes as `Retry-After` and `grpc-retry-pushback-ms` values:
//! neither parser may panic, and both must agree with the grammar read
//! plainly (digits saturating, else an HTTP date; pushback digits, else a
//! request not to retry).
#![no_main]

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use palisade_hints::grpc::{Pushback, pushback};
use palisade_hints::http::{parse_retry_after, retry_after_value};

/// Digits read as a number, saturating; `None` unless all digits.
fn digits(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.bytes().fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

fuzz_target!(|input: (u32, &[u8])| {
    let (clock, data) = input;
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(clock));
    let text = value.to_str().ok().map(str::trim);

    let expected = text.and_then(|text| match digits(text) {
        Some(seconds) => Some(Duration::from_secs(seconds)),
        None => httpdate::parse_http_date(text)
            .ok()
            .map(|date| date.duration_since(now).unwrap_or(Duration::ZERO)),
    });
    let wait = parse_retry_after(&value, now);
    assert_eq!(wait, expected, "{value:?}");
    if let Some(wait) = wait {
        let written = parse_retry_after(&retry_after_value(wait), now).unwrap();
        assert!(written >= wait, "{wait:?}");
    }

    let mut fields = HeaderMap::new();
    fields.insert("grpc-retry-pushback-ms", value.clone());
    let expected = match text.and_then(digits) {
        Some(ms) => Pushback::After(Duration::from_millis(ms)),
        None => Pushback::DoNotRetry,
    };
    assert_eq!(pushback(&fields), Some(expected), "{value:?}");
});
