//! Where the real servers of the tests are: `REDIS_URL` or its default.

use crate::proxy::Proxy;

/// `REDIS_URL`, or `redis://127.0.0.1:6379`.
#[must_use]
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A [`Proxy`] to the Redis of [`redis_url`], and the URL through it.
///
/// # Panics
///
/// When the URL's host does not resolve.
pub async fn redis_proxy() -> (Proxy, String) {
    let url = redis_url();
    let authority = url
        .split_once("://")
        .map_or(url.as_str(), |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or_default();
    let authority = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let authority = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:6379")
    };
    let target = tokio::net::lookup_host(authority)
        .await
        .ok()
        .and_then(|mut addresses| addresses.next())
        .expect("the Redis host resolves");
    let proxy = Proxy::start(target).await;
    let through = format!("redis://{}", proxy.address());
    (proxy, through)
}
