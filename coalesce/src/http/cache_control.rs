//! `Cache-Control` (RFC 9111 §5.2), as far as a shared cache in front of
//! one origin needs it.

use std::time::Duration;

use http::HeaderMap;
use http::header::CACHE_CONTROL;

use crate::freshness::Freshness;

/// RFC 9111's ceiling for delta-seconds that overflow.
pub(super) const MAX_DELTA: u64 = 2_147_483_648;

/// The directives of every `Cache-Control` field of a message.
///
/// Names are matched case-insensitively and values may be quoted. An
/// unreadable `max-age` or `s-maxage` counts as 0 (stale at once, as RFC
/// 9111 asks); an unreadable `stale-*` window counts as absent.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use palisade_coalesce::http::CacheControl;
///
/// let mut headers = http::HeaderMap::new();
/// headers.insert("cache-control", "public, max-age=60, stale-while-revalidate=30".parse().unwrap());
/// let directives = CacheControl::parse(&headers);
/// assert_eq!(directives.max_age, Some(Duration::from_secs(60)));
/// assert_eq!(directives.stale_while_revalidate, Some(Duration::from_secs(30)));
/// assert!(!directives.no_store);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(clippy::struct_excessive_bools)]
pub struct CacheControl {
    /// `no-store`: never store the message.
    pub no_store: bool,
    /// `no-cache`: in a request, do not answer from the cache; in a
    /// response, do not reuse it without revalidation (so this cache, which
    /// does not revalidate, does not store it).
    pub no_cache: bool,
    /// `private`: not for a shared cache.
    pub private: bool,
    /// `must-revalidate`: never served stale, not even when the origin
    /// fails.
    pub must_revalidate: bool,
    /// `proxy-revalidate`: `must-revalidate` for shared caches.
    pub proxy_revalidate: bool,
    /// `max-age`.
    pub max_age: Option<Duration>,
    /// `s-maxage`: `max-age` for shared caches, which wins over it.
    pub s_maxage: Option<Duration>,
    /// `stale-while-revalidate` (RFC 5861).
    pub stale_while_revalidate: Option<Duration>,
    /// `stale-if-error` (RFC 5861).
    pub stale_if_error: Option<Duration>,
}

impl CacheControl {
    /// The directives of `headers`' `Cache-Control` fields.
    #[must_use]
    pub fn parse(headers: &HeaderMap) -> Self {
        let mut directives = Self::default();
        for value in headers.get_all(CACHE_CONTROL) {
            let Ok(value) = value.to_str() else {
                continue;
            };
            for directive in value.split(',') {
                let (name, argument) = match directive.split_once('=') {
                    Some((name, argument)) => {
                        (name.trim(), Some(argument.trim().trim_matches('"')))
                    }
                    None => (directive.trim(), None),
                };
                let seconds = || {
                    argument
                        .filter(|a| !a.is_empty() && a.bytes().all(|b| b.is_ascii_digit()))
                        .map(|a| Duration::from_secs(a.parse().unwrap_or(MAX_DELTA).min(MAX_DELTA)))
                };
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => directives.no_store = true,
                    "no-cache" => directives.no_cache = true,
                    "private" => directives.private = true,
                    "must-revalidate" => directives.must_revalidate = true,
                    "proxy-revalidate" => directives.proxy_revalidate = true,
                    "max-age" => directives.max_age = Some(seconds().unwrap_or(Duration::ZERO)),
                    "s-maxage" => directives.s_maxage = Some(seconds().unwrap_or(Duration::ZERO)),
                    "stale-while-revalidate" => directives.stale_while_revalidate = seconds(),
                    "stale-if-error" => directives.stale_if_error = seconds(),
                    _ => {}
                }
            }
        }
        directives
    }

    /// How long a response with these directives may be kept by a shared
    /// cache: `None` when it may not be stored (`no-store`, `private`,
    /// `no-cache`, or a zero lifetime). Unset values come from `default`.
    ///
    /// `must-revalidate`, `proxy-revalidate` and `s-maxage` (which implies
    /// `proxy-revalidate`, RFC 9111 §5.2.2.10) close every stale window,
    /// the default's and the response's own.
    #[must_use]
    pub fn freshness(&self, default: Freshness) -> Option<Freshness> {
        if self.no_store || self.private || self.no_cache {
            return None;
        }
        let ttl = self
            .s_maxage
            .or(self.max_age)
            .unwrap_or_else(|| default.ttl());
        if ttl.is_zero() {
            return None;
        }
        let mut freshness = default.with_ttl(ttl);
        if self.must_revalidate || self.proxy_revalidate || self.s_maxage.is_some() {
            return Some(
                freshness
                    .stale_while_revalidate(Duration::ZERO)
                    .stale_if_error(Duration::ZERO),
            );
        }
        if let Some(window) = self.stale_while_revalidate {
            freshness = freshness.stale_while_revalidate(window);
        }
        if let Some(window) = self.stale_if_error {
            freshness = freshness.stale_if_error(window);
        }
        Some(freshness)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(values: &[&'static str]) -> CacheControl {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(CACHE_CONTROL, value.parse().unwrap());
        }
        CacheControl::parse(&headers)
    }

    #[test]
    fn directives_across_fields_case_and_quotes() {
        let directives = parse(&[
            "Max-Age=\"120\", S-MAXAGE=30",
            "stale-if-error=600,no-cache",
        ]);
        assert_eq!(directives.max_age, Some(Duration::from_secs(120)));
        assert_eq!(directives.s_maxage, Some(Duration::from_secs(30)));
        assert_eq!(directives.stale_if_error, Some(Duration::from_secs(600)));
        assert!(directives.no_cache);
        // A response with `no-cache` is not stored; without it, s-maxage
        // sets the lifetime.
        let reusable = CacheControl {
            no_cache: false,
            ..directives
        };
        let freshness = reusable
            .freshness(Freshness::new(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(
            freshness.ttl(),
            Duration::from_secs(30),
            "s-maxage wins for a shared cache"
        );
    }

    #[test]
    fn revalidation_closes_the_stale_windows() {
        let default = Freshness::new(Duration::from_secs(5))
            .stale_while_revalidate(Duration::from_secs(60))
            .stale_if_error(Duration::from_secs(600));
        let closed = Freshness::new(Duration::from_secs(10))
            .stale_while_revalidate(Duration::ZERO)
            .stale_if_error(Duration::ZERO);
        for directives in [
            "max-age=10, must-revalidate, stale-while-revalidate=30",
            "max-age=10, Proxy-Revalidate",
            "s-maxage=10, stale-if-error=60",
        ] {
            assert_eq!(
                parse(&[directives]).freshness(default),
                Some(closed),
                "{directives}"
            );
        }
        assert_eq!(parse(&["no-cache, max-age=60"]).freshness(default), None);
    }

    #[test]
    fn what_may_not_be_stored() {
        let default = Freshness::new(Duration::from_secs(5));
        assert_eq!(parse(&["no-store, max-age=60"]).freshness(default), None);
        assert_eq!(parse(&["private, max-age=60"]).freshness(default), None);
        assert_eq!(parse(&["max-age=0"]).freshness(default), None);
        assert_eq!(
            parse(&["max-age=soon"]).freshness(default),
            None,
            "unreadable: stale at once"
        );
        assert_eq!(
            parse(&[]).freshness(default),
            Some(default),
            "no directives: the default"
        );
        assert_eq!(
            parse(&["max-age=99999999999999999999"]).max_age,
            Some(Duration::from_secs(MAX_DELTA))
        );
    }
}
