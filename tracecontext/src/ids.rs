//! Trace and span identifiers and trace flags, with their lowercase-hex
//! encoding.

use std::fmt;

use crate::rng;

/// A 16-octet trace id; never all zeros.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceId([u8; 16]);

/// An 8-octet span id (a `parent-id` on the wire); never all zeros.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpanId([u8; 8]);

macro_rules! id_type {
    ($name:ident, $len:literal, $what:literal) => {
        impl $name {
            #[doc = concat!("Makes a ", $what, " from its octets; `None` when they are all zero,")]
            /// which the specification reserves as invalid.
            #[must_use]
            pub const fn from_bytes(bytes: [u8; $len]) -> Option<Self> {
                let mut i = 0;
                while i < $len {
                    if bytes[i] != 0 {
                        return Some(Self(bytes));
                    }
                    i += 1;
                }
                None
            }

            #[doc = concat!("The ", $what, "'s octets.")]
            #[must_use]
            pub const fn to_bytes(self) -> [u8; $len] {
                self.0
            }

            #[doc = concat!("Parses a ", $what, " from exactly ", stringify!($len), " octets in lowercase hex.")]
            /// Uppercase, other lengths and all zeros are refused.
            #[must_use]
            pub fn from_hex(hex: &str) -> Option<Self> {
                decode_hex::<$len>(hex.as_bytes()).and_then(Self::from_bytes)
            }
        }

        impl fmt::Display for $name {
            /// Lowercase hex, as on the wire.
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut buf = [0u8; $len * 2];
                encode_hex(&self.0, &mut buf);
                // The buffer holds only ASCII hex digits.
                f.write_str(std::str::from_utf8(&buf).unwrap_or_default())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self)
            }
        }
    };
}

id_type!(TraceId, 16, "trace id");
id_type!(SpanId, 8, "span id");

impl TraceId {
    /// A new random trace id from the fast thread-local generator. All 128
    /// bits are random, so traces started with it may set
    /// [`TraceFlags::RANDOM`].
    #[must_use]
    pub fn random() -> Self {
        loop {
            let (hi, lo) = (rng::next_u64(), rng::next_u64());
            let mut bytes = [0u8; 16];
            bytes[..8].copy_from_slice(&hi.to_be_bytes());
            bytes[8..].copy_from_slice(&lo.to_be_bytes());
            if let Some(id) = Self::from_bytes(bytes) {
                return id;
            }
        }
    }
}

impl SpanId {
    /// A new random span id from the fast thread-local generator.
    #[must_use]
    pub fn random() -> Self {
        loop {
            if let Some(id) = Self::from_bytes(rng::next_u64().to_be_bytes()) {
                return id;
            }
        }
    }
}

/// The `trace-flags` field: the sampled bit (`0x01`) and the Level 2 random
/// bit (`0x02`). Other bits are not defined and are never propagated.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TraceFlags(u8);

impl TraceFlags {
    /// No flag set.
    pub const NONE: Self = Self(0);
    /// The caller may have recorded its part of the trace.
    pub const SAMPLED: Self = Self(0x01);
    /// The trace id's rightmost 7 octets were chosen at random (Trace
    /// Context Level 2).
    pub const RANDOM: Self = Self(0x02);
    /// The bits this version of the specification defines.
    const KNOWN: u8 = 0x03;

    /// Flags from the wire octet, keeping only the defined bits.
    #[must_use]
    pub const fn from_wire(octet: u8) -> Self {
        Self(octet & Self::KNOWN)
    }

    /// The octet as written on the wire.
    #[must_use]
    pub const fn to_wire(self) -> u8 {
        self.0
    }

    /// Whether the sampled bit is set.
    #[must_use]
    pub const fn is_sampled(self) -> bool {
        self.0 & Self::SAMPLED.0 != 0
    }

    /// Whether the random bit is set.
    #[must_use]
    pub const fn is_random(self) -> bool {
        self.0 & Self::RANDOM.0 != 0
    }

    /// These flags with `other`'s bits set as well.
    #[must_use]
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// These flags with the sampled bit set to `sampled`.
    #[must_use]
    pub const fn with_sampled(self, sampled: bool) -> Self {
        if sampled {
            Self(self.0 | Self::SAMPLED.0)
        } else {
            Self(self.0 & !Self::SAMPLED.0)
        }
    }
}

impl fmt::Debug for TraceFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TraceFlags({:02x}: sampled={}, random={})",
            self.0,
            self.is_sampled(),
            self.is_random()
        )
    }
}

impl fmt::Display for TraceFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}", self.0)
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// One in every byte of a `u64`, and the high bit of every byte: the
/// constants of the eight-bytes-at-a-time ("SWAR") hex routines below.
const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = ONES * 0x80;

/// Writes `bytes` as lowercase hex into `out`, which is twice as long.
/// Inlined, so the fixed lengths of ids unroll it.
#[inline]
pub(crate) fn encode_hex(bytes: &[u8], out: &mut [u8]) {
    let mut bytes = bytes.chunks_exact(4);
    let mut out = out.chunks_exact_mut(8);
    for (four, eight) in (&mut bytes).zip(&mut out) {
        let four: [u8; 4] = four.try_into().unwrap_or_default();
        eight.copy_from_slice(&encode_4(four));
    }
    for (pair, byte) in out
        .into_remainder()
        .chunks_exact_mut(2)
        .zip(bytes.remainder())
    {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0x0f)];
    }
}

/// Four bytes as eight lowercase hex digits, all at once in a `u64`.
const fn encode_4(bytes: [u8; 4]) -> [u8; 8] {
    // Each byte into the low half of its own 16-bit lane, ...
    let x = u32::from_be_bytes(bytes) as u64;
    let x = (x | (x << 16)) & 0x0000_ffff_0000_ffff;
    let x = (x | (x << 8)) & 0x00ff_00ff_00ff_00ff;
    // ... then its high nibble into the lane's high byte: one nibble a byte.
    let nibbles = ((x << 4) & 0x0f00_0f00_0f00_0f00) | (x & 0x000f_000f_000f_000f);
    // A nibble over 9 sets the high bit of `nibble + 0x76`; it is a letter.
    let letters = ((nibbles + ONES * 0x76) & HIGH) >> 7;
    (nibbles + ONES * b'0' as u64 + letters * (b'a' - b'0' - 10) as u64).to_be_bytes()
}

/// The value of each byte as a lowercase hex digit; `INVALID` (above any
/// digit's value) for any other byte.
const INVALID: u8 = 0xff;
static HEX_VALUES: [u8; 256] = hex_values();

const fn hex_values() -> [u8; 256] {
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < 16 {
        table[HEX[i] as usize] = i as u8;
        i += 1;
    }
    table
}

/// Decodes exactly `N * 2` lowercase hex digits. The length is checked
/// first, and each digit on its own: no sign, no uppercase, no padding.
/// Inlined, so the fixed lengths of ids unroll it.
#[inline]
pub(crate) fn decode_hex<const N: usize>(hex: &[u8]) -> Option<[u8; N]> {
    if hex.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    let mut eights = hex.chunks_exact(8);
    let mut fours = out.chunks_exact_mut(4);
    let mut invalid = false;
    for (eight, four) in (&mut eights).zip(&mut fours) {
        let eight: [u8; 8] = eight.try_into().unwrap_or_default();
        match decode_8(eight) {
            Some(decoded) => four.copy_from_slice(&decoded),
            None => invalid = true,
        }
    }
    for (byte, pair) in fours
        .into_remainder()
        .iter_mut()
        .zip(eights.remainder().chunks_exact(2))
    {
        let (high, low) = (
            HEX_VALUES[usize::from(pair[0])],
            HEX_VALUES[usize::from(pair[1])],
        );
        invalid |= (high | low) > 0x0f;
        *byte = (high << 4) | (low & 0x0f);
    }
    (!invalid).then_some(out)
}

/// Eight lowercase hex digits as four bytes, all at once in a `u64`; `None`
/// when any byte is not one of `0-9a-f`.
fn decode_8(hex: [u8; 8]) -> Option<[u8; 4]> {
    let x = u64::from_be_bytes(hex);
    // For bytes under 0x80 (checked below), adding `0x80 - lo` sets a
    // byte's high bit exactly when it is at least `lo`, with no carry into
    // the next byte; adding `0x7f - hi`, when it is above `hi`.
    let at_least = |lo: u8| x.wrapping_add(ONES * (0x80 - lo) as u64) & HIGH;
    let above = |hi: u8| x.wrapping_add(ONES * (0x7f - hi) as u64) & HIGH;
    let digits = at_least(b'0') & !above(b'9');
    let letters = at_least(b'a') & !above(b'f');
    if x & HIGH != 0 || digits | letters != HIGH {
        return None;
    }
    // `0`-`9` are 0x30-0x39 and `a`-`f` 0x61-0x66: the low nibble, plus 9
    // for a letter.
    let nibbles = (x & (ONES * 0x0f)) + (letters >> 7) * 9;
    // Each pair of nibbles into one byte, then the four bytes together.
    let x = (nibbles | (nibbles >> 4)) & 0x00ff_00ff_00ff_00ff;
    let x = (x | (x >> 8)) & 0x0000_ffff_0000_ffff;
    let x = (x | (x >> 16)) & 0xffff_ffff;
    Some((x as u32).to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        let id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        assert_eq!(id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let span = SpanId::from_hex("00f067aa0ba902b7").unwrap();
        assert_eq!(span.to_string(), "00f067aa0ba902b7");
        assert_eq!(format!("{span:?}"), "SpanId(00f067aa0ba902b7)");
    }

    #[test]
    fn hex_refuses_what_from_str_radix_would_take() {
        for bad in [
            "+bf92f3577b34da6",
            "00F067AA0BA902B7",
            "00f067aa0ba902b",
            "00f067aa0ba902b70",
            " 0f067aa0ba902b7",
            "0000000000000000",
        ] {
            assert_eq!(SpanId::from_hex(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn random_ids_are_never_zero_and_differ() {
        let a = TraceId::random();
        let b = TraceId::random();
        assert_ne!(a, b);
        assert_ne!(SpanId::random(), SpanId::random());
    }

    /// The eight-at-a-time routines agree with the table, digit by digit:
    /// every byte value in every position of a chunk.
    #[test]
    fn swar_hex_agrees_with_the_table() {
        for byte in 0..=255u8 {
            let mut hex = *b"0123abcd";
            for position in 0..8 {
                let saved = hex[position];
                hex[position] = byte;
                let table = hex
                    .iter()
                    .all(|&b| HEX_VALUES[usize::from(b)] <= 0x0f)
                    .then(|| {
                        let mut out = [0u8; 4];
                        for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
                            *o = (HEX_VALUES[usize::from(pair[0])] << 4)
                                | HEX_VALUES[usize::from(pair[1])];
                        }
                        out
                    });
                assert_eq!(decode_8(hex), table, "{hex:?}");
                hex[position] = saved;
            }
            let bytes = [byte, !byte, byte ^ 0x5a, byte.wrapping_mul(7)];
            let mut table = [0u8; 8];
            for (pair, b) in table.chunks_exact_mut(2).zip(bytes) {
                pair[0] = HEX[usize::from(b >> 4)];
                pair[1] = HEX[usize::from(b & 0x0f)];
            }
            assert_eq!(encode_4(bytes), table);
            assert_eq!(decode_8(table), Some(bytes));
        }
    }

    #[test]
    fn unknown_flag_bits_are_dropped() {
        assert_eq!(TraceFlags::from_wire(0xff).to_wire(), 0x03);
        assert_eq!(TraceFlags::from_wire(0x09), TraceFlags::SAMPLED);
        assert!(TraceFlags::from_wire(0x02).is_random());
        assert!(!TraceFlags::from_wire(0x02).is_sampled());
    }
}
