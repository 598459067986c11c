//! Arbitrary bytes into the HTTP layer's two parsers: a stored response
//! read back, and Cache-Control. Neither may panic; a response that reads
//! back must write out to the same bytes, and a parsed Cache-Control must
//! give a lifetime only when storing is allowed.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use palisade_coalesce::Freshness;
use palisade_coalesce::http::{CacheControl, CachedResponse};

fuzz_target!(|input: (&[u8], &[u8])| {
    let (stored, field) = input;
    if let Some(response) = CachedResponse::from_bytes(bytes::Bytes::copy_from_slice(stored)) {
        let again =
            CachedResponse::from_bytes(response.to_bytes()).expect("its own bytes read back");
        assert_eq!(again, response);
    }
    if let Ok(value) = http::HeaderValue::from_bytes(field) {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::CACHE_CONTROL, value);
        let directives = CacheControl::parse(&headers);
        let freshness = directives.freshness(Freshness::new(Duration::from_secs(10)));
        if directives.no_store || directives.private || directives.no_cache {
            assert!(freshness.is_none());
        }
        if let Some(freshness) = freshness {
            assert!(!freshness.ttl().is_zero());
        }
    }
});
