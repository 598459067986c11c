//! Redis key names that keep one caller's keys in one Redis Cluster slot,
//! whatever the caller's key holds (feature `redis`).
//!
//! Cluster hashes a key by its hash tag, what lies between its first `{`
//! and the first `}` after it, so every key of one decision (a bucket and
//! its lease, a cached value and its lock) is named `{prefix:key}…` and
//! lands in one slot. A caller's key holding a `}` ends the tag early:
//! `{prefix:}a}` and `{prefix:}b}` hash alike, and a client that picks its
//! keys (a header value, a path) puts the load of all of them on one
//! shard. Such a key, or one too long to keep in memory as it is, is named
//! by its hash instead.

use std::fmt::Write as _;

use sha2::{Digest, Sha256};

/// How long a hashed name's part after the prefix is: `#` and 64 hex
/// digits.
const HASHED_LEN: usize = 65;

/// The hash-tagged name of `key`'s state under `prefix` (which holds no
/// `}`): `{prefix:key}`, or `{prefix:#<SHA-256 of key, in hex>}` when
/// `key` holds a `}`, is longer than `longest` bytes, or could spell a
/// hashed name itself (`#` and 64 more bytes). The hash is the same in
/// every process, so a fleet shares the state.
///
/// ```
/// use palisade_hints::hash_tag::tagged;
///
/// assert_eq!(tagged("limits", "alice", 64), "{limits:alice}");
/// let odd = tagged("limits", "}alice", 64);
/// assert!(odd.starts_with("{limits:#") && odd.ends_with('}') && odd.len() == 74);
/// assert_ne!(odd, tagged("limits", "}bob", 64));
/// ```
#[must_use]
pub fn tagged(prefix: &str, key: &str, longest: usize) -> String {
    let spells_a_hash = key.len() == HASHED_LEN && key.starts_with('#');
    if key.len() <= longest && !key.contains('}') && !spells_a_hash {
        return format!("{{{prefix}:{key}}}");
    }
    let mut name = String::with_capacity(prefix.len() + 68);
    let _ = write!(name, "{{{prefix}:#");
    for byte in Sha256::digest(key.as_bytes()) {
        let _ = write!(name, "{byte:02x}");
    }
    name.push('}');
    name
}

#[cfg(test)]
mod tests {
    use super::tagged;

    /// A key that would end the hash tag early, one that spells a hashed
    /// name, or a long one, is named by its hash: one slot for the whole
    /// name, a fixed length.
    #[test]
    fn a_key_holding_a_brace_or_too_long_is_named_by_its_hash() {
        assert_eq!(tagged("p", "a{b", 64), "{p:a{b}");
        let spelled = format!("#{}", "a".repeat(64));
        for key in ["}", "a}b", spelled.as_str(), &"x".repeat(65)] {
            let name = tagged("p", key, 64);
            let tag = &name[1..name.find('}').unwrap()];
            assert_eq!(tag.len(), 2 + 1 + 64, "{name}");
            assert!(tag.starts_with("p:#"), "{name}");
            assert_eq!(name.len(), tag.len() + 2, "the tag is the whole name");
        }
        assert_eq!(
            tagged("p", &"x".repeat(64), 64),
            format!("{{p:{}}}", "x".repeat(64))
        );
        assert_ne!(tagged("p", "}a", 64), tagged("p", "}b", 64));
        // A `#` key of another length (`key::hashed`'s) is kept as it is.
        assert_eq!(tagged("p", "#abc", 64), "{p:#abc}");
    }
}
