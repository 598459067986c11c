//! Where the real servers of the tests are: `REDIS_URL`, `DATABASE_URL`,
//! `NATS_URL` or their defaults, and proxies to them that a test can cut.

use crate::proxy::Proxy;

/// `REDIS_URL`, or `redis://127.0.0.1:6379`.
#[must_use]
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// `DATABASE_URL`, or `postgres://postgres@127.0.0.1:5432/test`.
#[must_use]
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// `NATS_URL`, or `nats://127.0.0.1:4222`.
#[must_use]
pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// A [`Proxy`] to the Redis of [`redis_url`], and the URL through it.
///
/// # Panics
///
/// When the URL's host does not resolve.
pub async fn redis_proxy() -> (Proxy, String) {
    proxy_for(&redis_url(), 6379).await
}

/// A [`Proxy`] to the NATS server of [`nats_url`], and the URL through it.
///
/// # Panics
///
/// When the URL's host does not resolve.
pub async fn nats_proxy() -> (Proxy, String) {
    proxy_for(&nats_url(), 4222).await
}

/// A proxy to the server of `url` (port `default_port` unless it names
/// one), and `url` with the proxy's address for its host and port: its
/// credentials, database and options kept, so that a test's proxied and
/// direct clients reach the same database as the same user.
async fn proxy_for(url: &str, default_port: u16) -> (Proxy, String) {
    let parts = UrlParts::of(url);
    let target = tokio::net::lookup_host(parts.authority(default_port))
        .await
        .ok()
        .and_then(|mut addresses| addresses.next())
        .expect("the server's host resolves");
    let proxy = Proxy::start(target).await;
    let through = parts.with_host(&proxy.address().to_string());
    (proxy, through)
}

/// A server URL cut around its host: `[scheme://][userinfo@]host[/path][?query]`.
#[derive(Debug, PartialEq, Eq)]
struct UrlParts<'a> {
    /// With its `://`, or empty.
    scheme: &'a str,
    /// With its `@`, or empty.
    userinfo: &'a str,
    host: &'a str,
    /// From the `/` or `?` after the host, or empty.
    rest: &'a str,
}

impl<'a> UrlParts<'a> {
    fn of(url: &'a str) -> Self {
        let (scheme, after) = match url.find("://") {
            Some(at) => url.split_at(at + 3),
            None => ("", url),
        };
        let end = after.find(['/', '?']).unwrap_or(after.len());
        let (authority, rest) = after.split_at(end);
        let (userinfo, host) = match authority.rfind('@') {
            Some(at) => authority.split_at(at + 1),
            None => ("", authority),
        };
        Self {
            scheme,
            userinfo,
            host,
            rest,
        }
    }

    /// The host with its port, `default_port` unless it names one (an
    /// IPv6 address is bracketed, colons and all).
    fn authority(&self, default_port: u16) -> String {
        let after_address = self
            .host
            .rsplit_once(']')
            .map_or(self.host, |(_, after)| after);
        if after_address.contains(':') {
            self.host.to_owned()
        } else {
            format!("{}:{default_port}", self.host)
        }
    }

    fn with_host(&self, host: &str) -> String {
        format!("{}{}{host}{}", self.scheme, self.userinfo, self.rest)
    }
}

#[cfg(test)]
mod tests {
    use super::UrlParts;

    #[test]
    fn a_proxied_url_keeps_all_but_its_host() {
        for (url, through) in [
            ("redis://127.0.0.1:6379", "redis://10.0.0.1:1"),
            (
                "redis://:secret@localhost:6379/3",
                "redis://:secret@10.0.0.1:1/3",
            ),
            (
                "postgres://postgres@127.0.0.1:5432/test?sslmode=disable",
                "postgres://postgres@10.0.0.1:1/test?sslmode=disable",
            ),
            (
                "nats://user:p%40ss@nats?x=1",
                "nats://user:p%40ss@10.0.0.1:1?x=1",
            ),
            ("127.0.0.1:4222", "10.0.0.1:1"),
        ] {
            assert_eq!(UrlParts::of(url).with_host("10.0.0.1:1"), through, "{url}");
        }
        assert_eq!(UrlParts::of("redis://a:b@host:1/2").host, "host:1");
        for (url, authority) in [
            ("redis://[::1]/0", "[::1]:6379"),
            ("redis://[::1]:7000", "[::1]:7000"),
            ("redis://localhost", "localhost:6379"),
            ("redis://u:p@localhost:7000/1", "localhost:7000"),
        ] {
            assert_eq!(UrlParts::of(url).authority(6379), authority, "{url}");
        }
    }
}
