//! The form of a cached entry in Redis: a fixed header of wall-clock
//! milliseconds, then the value's bytes.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::freshness::WallTimes;

/// Marks the format, so a future layout is never misread.
const MAGIC: &[u8; 4] = b"pce1";
/// The header: the magic and five `u64`s.
const HEADER: usize = 4 + 5 * 8;

/// An entry as stored.
pub(crate) fn encode(times: &WallTimes, value: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER + value.len());
    out.put_slice(MAGIC);
    for ms in [
        times.stored_at,
        times.fresh_until,
        times.stale_until,
        times.usable_on_error_until,
        times.compute_ms,
    ] {
        out.put_u64_le(ms);
    }
    out.put_slice(value);
    out.freeze()
}

/// An entry read back; `None` for anything not in this format (a value
/// another program wrote, a truncated one), which is then treated as a
/// miss.
pub(crate) fn decode(mut stored: Bytes) -> Option<(WallTimes, Bytes)> {
    if stored.len() < HEADER || &stored[..4] != MAGIC {
        return None;
    }
    stored.advance(4);
    let mut next = || stored.get_u64_le();
    let times = WallTimes {
        stored_at: next(),
        fresh_until: next(),
        stale_until: next(),
        usable_on_error_until: next(),
        compute_ms: next(),
    };
    let ordered = times.stored_at <= times.fresh_until
        && times.fresh_until <= times.stale_until
        && times.fresh_until <= times.usable_on_error_until;
    ordered.then_some((times, stored))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn entries_round_trip(
            stored_at in 0u64..1 << 50,
            fresh in 0u64..1 << 30,
            stale in 0u64..1 << 30,
            error in 0u64..1 << 30,
            compute_ms in any::<u64>(),
            value in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let times = WallTimes {
                stored_at,
                fresh_until: stored_at + fresh,
                stale_until: stored_at + fresh + stale,
                usable_on_error_until: stored_at + fresh + error,
                compute_ms,
            };
            let decoded = decode(encode(&times, &value)).unwrap();
            prop_assert_eq!(decoded, (times, Bytes::from(value)));
        }

        #[test]
        fn anything_else_is_refused_without_panicking(stored in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = decode(Bytes::from(stored));
        }
    }
}
