//! The form of a cached entry in Redis: a fixed header (the write that
//! stored it and its [`Lifetime`]), then the value's bytes. The header
//! holds no instant: Redis counts the entry's age down in its expiry.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::freshness::Lifetime;

/// Marks the format, so a future layout is never misread (and an entry of
/// the first, which held wall-clock instants, is a miss).
const MAGIC: &[u8; 4] = b"pce2";
/// The header: the magic, the write (a `u128`) and four `u64`s.
const HEADER: usize = 4 + 16 + 4 * 8;

/// An entry as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decoded {
    /// The write that stored it (its lock token), which tells one write
    /// from another.
    pub(crate) write: u128,
    pub(crate) lifetime: Lifetime,
    pub(crate) value: Bytes,
}

/// An entry as stored.
pub(crate) fn encode(write: u128, lifetime: &Lifetime, value: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER + value.len());
    out.put_slice(MAGIC);
    out.put_u128_le(write);
    for ms in [
        lifetime.fresh_ms,
        lifetime.stale_ms,
        lifetime.usable_on_error_ms,
        lifetime.compute_ms,
    ] {
        out.put_u64_le(ms);
    }
    out.put_slice(value);
    out.freeze()
}

/// An entry read back; `None` for anything not in this format (a value
/// another program wrote, a truncated one), which is then treated as a
/// miss.
pub(crate) fn decode(mut stored: Bytes) -> Option<Decoded> {
    if stored.len() < HEADER || &stored[..4] != MAGIC {
        return None;
    }
    stored.advance(4);
    let write = stored.get_u128_le();
    let mut next = || stored.get_u64_le();
    let lifetime = Lifetime {
        fresh_ms: next(),
        stale_ms: next(),
        usable_on_error_ms: next(),
        compute_ms: next(),
    };
    lifetime.is_ordered().then_some(Decoded {
        write,
        lifetime,
        value: stored,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn entries_round_trip(
            write in any::<u128>(),
            fresh_ms in 0u64..1 << 50,
            stale in 0u64..1 << 30,
            error in 0u64..1 << 30,
            compute_ms in any::<u64>(),
            value in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let lifetime = Lifetime {
                fresh_ms,
                stale_ms: fresh_ms + stale,
                usable_on_error_ms: fresh_ms + error,
                compute_ms,
            };
            let decoded = decode(encode(write, &lifetime, &value)).unwrap();
            prop_assert_eq!(decoded, Decoded { write, lifetime, value: Bytes::from(value) });
        }

        #[test]
        fn anything_else_is_refused_without_panicking(stored in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = decode(Bytes::from(stored));
        }
    }
}
