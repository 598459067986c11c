//! Which key a request belongs to, as a stable hash.

/// A key's stable 64-bit hash: the same in every process, build and
/// version, so a fleet routes a key alike.
///
/// It is FNV-1a over the key's bytes, finished with the `splitmix64`
/// mixer so keys that differ in their last byte (`user-1`, `user-2`) land
/// far apart. Keys are told apart by this hash alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyHash(u64);

impl KeyHash {
    /// The hash of `bytes`.
    #[must_use]
    pub const fn of(bytes: &[u8]) -> Self {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut i = 0;
        while i < bytes.len() {
            hash ^= bytes[i] as u64;
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            i += 1;
        }
        Self(mix(hash))
    }

    /// The hash as a number.
    #[must_use]
    pub const fn get(self) -> u64 {
        self.0
    }
}

/// The `splitmix64` finisher: every input bit moves every output bit.
const fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A value that names a key: strings by their UTF-8 bytes, integers by
/// their decimal digits (so `42` and `"42"` are one key).
pub trait AsKey {
    /// Its stable hash.
    fn key_hash(&self) -> KeyHash;
}

impl AsKey for str {
    fn key_hash(&self) -> KeyHash {
        KeyHash::of(self.as_bytes())
    }
}

impl AsKey for String {
    fn key_hash(&self) -> KeyHash {
        KeyHash::of(self.as_bytes())
    }
}

impl<T: AsKey + ?Sized> AsKey for &T {
    fn key_hash(&self) -> KeyHash {
        (**self).key_hash()
    }
}

macro_rules! integer_keys {
    ($($integer:ty),*) => {$(
        impl AsKey for $integer {
            fn key_hash(&self) -> KeyHash {
                // Decimal digits on the stack: no allocation.
                let mut digits = [0_u8; 40];
                let mut at = digits.len();
                let negative = *self < 0 as $integer;
                // Every magnitude of these types fits a `u64`, whose
                // division by ten is a multiplication (a `u128`'s is a
                // library call, most of a routed call's cost).
                let mut rest = u64::try_from((*self as i128).unsigned_abs())
                    .unwrap_or_else(|_| unreachable!("a 64-bit magnitude"));
                loop {
                    at -= 1;
                    // A digit, 0..=9.
                    #[allow(clippy::cast_possible_truncation)]
                    let digit = (rest % 10) as u8;
                    digits[at] = b'0' + digit;
                    rest /= 10;
                    if rest == 0 {
                        break;
                    }
                }
                if negative {
                    at -= 1;
                    digits[at] = b'-';
                }
                KeyHash::of(&digits[at..])
            }
        }
    )*};
}

integer_keys!(u32, u64, i32, i64);

/// Picks the key a request belongs to; `None` for a request that names
/// none, which goes to the fallback cell.
///
/// Implemented for closures `Fn(&Req) -> Option<K>` with `K` an
/// [`AsKey`]: a user id as a number allocates nothing.
///
/// ```
/// use palisade_traffic::{AsKey, Key};
///
/// struct Order { user: u64 }
/// let by_user = |order: &Order| Some(order.user);
/// assert_eq!(by_user.key(&Order { user: 42 }), Some("42".key_hash()));
/// ```
pub trait Key<Req> {
    /// The hash of `request`'s key.
    fn key(&self, request: &Req) -> Option<KeyHash>;
}

impl<Req, F, K> Key<Req> for F
where
    F: Fn(&Req) -> Option<K>,
    K: AsKey,
{
    fn key(&self, request: &Req) -> Option<KeyHash> {
        self(request).map(|key| key.key_hash())
    }
}

/// The key in header `name` of an HTTP request (feature `http`), hashed
/// from its bytes without a copy; a request without it names none.
#[cfg(feature = "http")]
#[must_use]
pub fn header(name: http::HeaderName) -> Header {
    Header(name)
}

/// See [`header`].
#[cfg(feature = "http")]
#[derive(Debug, Clone)]
pub struct Header(http::HeaderName);

#[cfg(feature = "http")]
impl<B> Key<http::Request<B>> for Header {
    fn key(&self, request: &http::Request<B>) -> Option<KeyHash> {
        request
            .headers()
            .get(&self.0)
            .map(|value| KeyHash::of(value.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_fixed_for_good() {
        // Changing these moves every key of every fleet: never. (Worked
        // out apart from this code, from FNV-1a and splitmix64's
        // definitions.)
        assert_eq!(KeyHash::of(b"").get(), 0xf52a_15e9_a9b5_e89b);
        assert_eq!(KeyHash::of(b"user-1").get(), 0xc499_b5f8_a721_df58);
        assert_eq!(42_u64.key_hash().get(), 0xa428_ce54_7116_3b02);
        assert_eq!("user-1".key_hash(), KeyHash::of(b"user-1"));
        assert_eq!(42_u64.key_hash(), "42".key_hash());
        assert_eq!((-7_i64).key_hash(), "-7".key_hash());
        assert_eq!(u64::MAX.key_hash(), "18446744073709551615".key_hash());
        assert_eq!(i64::MIN.key_hash(), "-9223372036854775808".key_hash());
        assert_eq!(i32::MIN.key_hash(), "-2147483648".key_hash());
        assert_ne!("user-1".key_hash(), "user-2".key_hash());
    }
}
