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
/// one), and `url`'s scheme with the proxy's address.
async fn proxy_for(url: &str, default_port: u16) -> (Proxy, String) {
    let (scheme, rest) = url.split_once("://").unwrap_or(("tcp", url));
    let authority = rest.split('/').next().unwrap_or_default();
    let authority = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let authority = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:{default_port}")
    };
    let target = tokio::net::lookup_host(authority)
        .await
        .ok()
        .and_then(|mut addresses| addresses.next())
        .expect("the server's host resolves");
    let proxy = Proxy::start(target).await;
    let through = format!("{scheme}://{}", proxy.address());
    (proxy, through)
}
