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

/// Writes `bytes` as lowercase hex into `out`, which is twice as long.
pub(crate) fn encode_hex(bytes: &[u8], out: &mut [u8]) {
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0x0f)];
    }
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
pub(crate) fn decode_hex<const N: usize>(hex: &[u8]) -> Option<[u8; N]> {
    if hex.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    let mut invalid = false;
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let (high, low) = (
            HEX_VALUES[usize::from(pair[0])],
            HEX_VALUES[usize::from(pair[1])],
        );
        invalid |= (high | low) > 0x0f;
        *byte = (high << 4) | (low & 0x0f);
    }
    (!invalid).then_some(out)
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

    #[test]
    fn unknown_flag_bits_are_dropped() {
        assert_eq!(TraceFlags::from_wire(0xff).to_wire(), 0x03);
        assert_eq!(TraceFlags::from_wire(0x09), TraceFlags::SAMPLED);
        assert!(TraceFlags::from_wire(0x02).is_random());
        assert!(!TraceFlags::from_wire(0x02).is_sampled());
    }
}
