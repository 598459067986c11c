//! Which bucket a request draws on, and how many tokens it takes.

/// Picks the bucket a request draws on; `None` lets the request through
/// unlimited (health checks, internal callers).
///
/// Implemented for closures `Fn(&Req) -> Option<String>`; see [`header`]
/// and [`global`] for the common cases. For a client address with axum,
/// read `ConnectInfo` from the extensions:
///
/// ```
/// use std::net::SocketAddr;
/// use axum::extract::ConnectInfo;
///
/// let by_address = |request: &http::Request<axum::body::Body>| {
///     let ConnectInfo(peer) = request.extensions().get::<ConnectInfo<SocketAddr>>()?;
///     Some(palisade_token_bucket::key::address_block(peer.ip()))
/// };
/// # let _ = by_address;
/// ```
///
/// Key by what the client cannot choose: an identity an authentication
/// layer verified (in front of the limiter), or its address block
/// ([`address_block`]). A key the client picks (an API key header read
/// before anyone checked it, a whole IPv6 address in a `/64` it owns) is a
/// fresh bucket each time it picks another: never limited. A key that is a
/// secret (an API key) goes into a shared store as it is: [`hashed`]
/// names its bucket by a hash.
pub trait Key<Req> {
    /// The key of `request`'s bucket.
    fn key(&self, request: &Req) -> Option<String>;

    /// The one key every request names, when it never depends on the
    /// request ([`global`]): the layer then [pins](crate::Store::pin) that
    /// key's bucket on its first request and decides every later one
    /// through it, without asking for the key again or finding its bucket.
    ///
    /// `None`, the default, asks [`key`](Self::key) on each request. A key
    /// that returns `Some` must return the same key every time, and the
    /// same as [`key`](Self::key) does.
    fn fixed(&self) -> Option<&str> {
        None
    }
}

impl<Req, F> Key<Req> for F
where
    F: Fn(&Req) -> Option<String>,
{
    fn key(&self, request: &Req) -> Option<String> {
        self(request)
    }
}

/// The number of tokens a request takes.
///
/// Implemented for closures `Fn(&Req) -> u32`; [`OneToken`] by default.
pub trait Cost<Req> {
    /// Tokens `request` takes (0 takes none but is still checked).
    fn cost(&self, request: &Req) -> u32;
}

impl<Req, F> Cost<Req> for F
where
    F: Fn(&Req) -> u32,
{
    fn cost(&self, request: &Req) -> u32 {
        self(request)
    }
}

/// Every request takes one token.
#[derive(Debug, Clone, Copy, Default)]
pub struct OneToken;

impl<Req> Cost<Req> for OneToken {
    fn cost(&self, _: &Req) -> u32 {
        1
    }
}

/// Every request draws on one bucket, named `key`.
#[derive(Debug, Clone)]
pub struct Global(String);

/// One bucket for all requests.
///
/// The layer finds it once, on its first request, and holds it: with a
/// [`LocalStore`](crate::LocalStore) a decision is then one clock read and
/// one compare-and-swap.
#[must_use]
pub fn global(key: &str) -> Global {
    Global(key.to_owned())
}

impl<Req> Key<Req> for Global {
    fn key(&self, _: &Req) -> Option<String> {
        Some(self.0.clone())
    }

    fn fixed(&self) -> Option<&str> {
        Some(&self.0)
    }
}

/// Two ways to name a bucket: `first`'s key, or for a request it names none
/// for, `fallback`'s; made by [`or`].
#[derive(Debug, Clone)]
pub struct Or<A, B> {
    first: A,
    fallback: B,
}

/// `first`'s key, or `fallback`'s for a request without one: an API key,
/// or else the client's address, so a request that omits the header is
/// still limited.
///
/// The two keys are kept apart (each is tagged with its source), so a
/// client cannot spend another's fallback bucket by sending its key as its
/// own: an API key `10.0.0.2` and the address `10.0.0.2` are two buckets.
/// A request neither names a bucket for is not limited; for one bucket
/// shared by all of those, end with [`global`].
///
/// # Example
///
/// ```
/// # #[cfg(feature = "http")] {
/// use std::net::SocketAddr;
/// use axum::extract::ConnectInfo;
/// use palisade_token_bucket::key::{self, Key};
///
/// // The API key as the authentication layer in front checked it.
/// let by_api_key_or_address = key::or(
///     key::header(http::HeaderName::from_static("x-api-key")),
///     key::extension(|ConnectInfo(peer): &ConnectInfo<SocketAddr>| key::address_block(peer.ip())),
/// );
/// let mut anonymous = http::Request::new(());
/// anonymous
///     .extensions_mut()
///     .insert(ConnectInfo("10.0.0.2:5000".parse::<SocketAddr>().unwrap()));
/// let keyed = http::Request::get("/").header("x-api-key", "10.0.0.2").body(()).unwrap();
/// assert!(by_api_key_or_address.key(&anonymous).is_some());
/// assert_ne!(by_api_key_or_address.key(&anonymous), by_api_key_or_address.key(&keyed));
/// # }
/// ```
#[must_use]
pub const fn or<A, B>(first: A, fallback: B) -> Or<A, B> {
    Or { first, fallback }
}

impl<Req, A: Key<Req>, B: Key<Req>> Key<Req> for Or<A, B> {
    fn key(&self, request: &Req) -> Option<String> {
        let (tag, key) = match self.first.key(request) {
            Some(key) => ("1:", key),
            None => ("2:", self.fallback.key(request)?),
        };
        let mut tagged = String::with_capacity(tag.len() + key.len());
        tagged.push_str(tag);
        tagged.push_str(&key);
        Some(tagged)
    }
}

/// The bucket `key` names, named by a hash of its name: a key that is a
/// secret (an API key) then reaches no store, no Redis key name or
/// command, and no log line; only the first 128 bits of its SHA-256 do, in
/// hex after a `#`. Every process hashes alike, so a fleet shares the
/// bucket. Put it around the whole key, [`or`] and all.
///
/// # Example
///
/// ```
/// # #[cfg(feature = "http")] {
/// use palisade_token_bucket::key::{self, Key};
///
/// let by_api_key = key::hashed(key::header(http::HeaderName::from_static("x-api-key")));
/// let request = http::Request::get("/").header("x-api-key", "sk_live_42").body(()).unwrap();
/// let name = by_api_key.key(&request).unwrap();
/// assert!(!name.contains("sk_live_42"));
/// assert_eq!(name.len(), 33);
/// # }
/// ```
#[must_use]
pub const fn hashed<K>(key: K) -> Hashed<K> {
    Hashed(key)
}

/// A key named by a hash of its name; made by [`hashed`].
#[derive(Debug, Clone)]
pub struct Hashed<K>(K);

impl<Req, K: Key<Req>> Key<Req> for Hashed<K> {
    fn key(&self, request: &Req) -> Option<String> {
        let key = self.0.key(request)?;
        Some(format!("#{}", sha256_hex(&key, 16)))
    }
}

/// The first `bytes` bytes of `text`'s SHA-256, in hex.
pub(crate) fn sha256_hex(text: &str, bytes: usize) -> String {
    use sha2::{Digest, Sha256};
    use std::fmt::Write as _;

    let digest = Sha256::digest(text.as_bytes());
    let mut hex = String::with_capacity(2 * bytes);
    for byte in digest.iter().take(bytes) {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// The block of addresses one client holds, as a bucket's key: an IPv4
/// address whole, an IPv6 address as its `/64` (the smallest network a
/// provider hands out, so a client rotating addresses within it keeps one
/// bucket),
/// an IPv4-mapped IPv6 address as the IPv4 address.
///
/// # Example
///
/// ```
/// # #[cfg(feature = "http")] {
/// use std::net::SocketAddr;
/// use axum::extract::ConnectInfo;
/// use palisade_token_bucket::key::{self, Key};
///
/// let by_address =
///     key::extension(|ConnectInfo(peer): &ConnectInfo<SocketAddr>| key::address_block(peer.ip()));
/// let from = |peer: &str| {
///     let mut request = http::Request::new(());
///     request.extensions_mut().insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
///     by_address.key(&request)
/// };
/// assert_eq!(from("[2001:db8:0:7::1]:5000"), from("[2001:db8:0:7:a:b:c:d]:5001"));
/// assert_eq!(from("[2001:db8:0:7::1]:5000").as_deref(), Some("2001:db8:0:7::/64"));
/// assert_eq!(from("[::ffff:10.0.0.2]:5000").as_deref(), Some("10.0.0.2"));
/// # }
/// ```
#[must_use]
pub fn address_block(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let [a, b, c, d, ..] = v6.segments();
                format!("{a:x}:{b:x}:{c:x}:{d:x}::/64")
            }
        },
    }
}

/// The bucket named by a request header (an API key, a tenant id); a
/// request without the header, or with a value that is not visible ASCII,
/// is not limited by this layer unless a fallback names one ([`or`]).
///
/// The client writes the header: key by it only where its value was
/// verified before the limiter (an authentication layer in front of it
/// that refuses unknown keys) or is set by a proxy you trust. Read before
/// that, each new value is a full bucket, and a client that sends another
/// with each request is never limited.
#[cfg(feature = "http")]
#[derive(Debug, Clone)]
pub struct Header(http::HeaderName);

/// The bucket named by the header `name` (feature `http`).
///
/// # Example
///
/// ```
/// use palisade_token_bucket::key::{Key, header};
///
/// let by_api_key = header(http::HeaderName::from_static("x-api-key"));
/// let request = http::Request::get("/").header("x-api-key", "k-42").body(()).unwrap();
/// assert_eq!(by_api_key.key(&request).as_deref(), Some("k-42"));
/// ```
#[cfg(feature = "http")]
#[must_use]
pub const fn header(name: http::HeaderName) -> Header {
    Header(name)
}

#[cfg(feature = "http")]
impl<B> Key<http::Request<B>> for Header {
    fn key(&self, request: &http::Request<B>) -> Option<String> {
        let value = request.headers().get(&self.0)?.to_str().ok()?;
        Some(value.to_owned())
    }
}

/// The bucket named from a typed request extension (a user id an
/// authentication layer put there, or axum's `ConnectInfo` for the client's
/// address); a request without it is not limited by this layer unless a
/// fallback names one ([`or`]).
#[cfg(feature = "http")]
pub struct Extension<T, F> {
    name: F,
    _type: std::marker::PhantomData<fn(&T)>,
}

/// The bucket named by `name` from the extension `T` (feature `http`).
///
/// # Example
///
/// ```
/// use palisade_token_bucket::key::{Key, extension};
///
/// #[derive(Clone)]
/// struct UserId(u64);
///
/// let by_user = extension(|user: &UserId| user.0.to_string());
/// let mut request = http::Request::new(());
/// request.extensions_mut().insert(UserId(7));
/// assert_eq!(by_user.key(&request).as_deref(), Some("7"));
/// ```
#[cfg(feature = "http")]
pub const fn extension<T, F>(name: F) -> Extension<T, F>
where
    F: Fn(&T) -> String,
{
    Extension {
        name,
        _type: std::marker::PhantomData,
    }
}

#[cfg(feature = "http")]
impl<T, F: Clone> Clone for Extension<T, F> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            _type: std::marker::PhantomData,
        }
    }
}

#[cfg(feature = "http")]
impl<T, F> std::fmt::Debug for Extension<T, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Extension")
            .field("type", &std::any::type_name::<T>())
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "http")]
impl<B, T, F> Key<http::Request<B>> for Extension<T, F>
where
    T: Send + Sync + 'static,
    F: Fn(&T) -> String,
{
    fn key(&self, request: &http::Request<B>) -> Option<String> {
        request.extensions().get::<T>().map(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::address_block;

    #[test]
    fn an_ipv6_client_is_its_block_and_a_mapped_ipv4_its_address() {
        let key = |ip: &str| address_block(ip.parse().unwrap());
        assert_eq!(key("192.0.2.7"), "192.0.2.7");
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(key("2001:db8:1:2:bbbb::9"), key("2001:db8:1:2:aaaa::1"));
        assert_ne!(key("2001:db8:1:3::1"), key("2001:db8:1:2::1"));
    }
}
