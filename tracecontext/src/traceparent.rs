//! The `traceparent` header: version, trace id, parent id and flags.

use std::fmt;
use std::str::FromStr;

use crate::error::TraceParentError;
use crate::ids::{SpanId, TraceFlags, TraceId, decode_hex, encode_hex};

/// Length of a version `00` header, and of the fixed part of any version.
pub(crate) const TRACEPARENT_LEN: usize = 55;

/// A parsed `traceparent` header.
///
/// Parsing is exact to the W3C Trace Context specification (Level 2):
///
/// - version `00` is exactly 55 characters:
///   `00-<32 hex>-<16 hex>-<2 hex>`, all hex lowercase;
/// - version `ff` is invalid;
/// - a higher version is at least 55 characters, its first four fields are
///   read at the same offsets, and what follows the flags must start with
///   `-`;
/// - the trace id and the parent id must not be all zeros;
/// - lengths are checked before any field is decoded.
///
/// Flags keep only the sampled and random bits. A header is always written
/// as version `00`.
///
/// # Example
///
/// ```
/// use palisade_tracecontext::TraceParent;
///
/// let parent: TraceParent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".parse()?;
/// assert_eq!(parent.trace_id().to_string(), "0af7651916cd43dd8448eb211c80319c");
/// assert!(parent.flags().is_sampled());
///
/// // A future version is read by its first four fields, and written as 00.
/// let future: TraceParent =
///     "cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-more".parse()?;
/// assert_eq!(future.to_string(), "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
///
/// assert!("00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01".parse::<TraceParent>().is_err());
/// # Ok::<(), palisade_tracecontext::TraceParentError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    trace_id: TraceId,
    parent_id: SpanId,
    flags: TraceFlags,
}

impl TraceParent {
    /// A `traceparent` for `parent_id` in trace `trace_id`.
    #[must_use]
    pub const fn new(trace_id: TraceId, parent_id: SpanId, flags: TraceFlags) -> Self {
        Self {
            trace_id,
            parent_id,
            flags,
        }
    }

    /// Parses a header value. Surrounding spaces and tabs (HTTP's optional
    /// whitespace) are ignored.
    ///
    /// # Errors
    ///
    /// [`TraceParentError`] naming the first rule the value breaks.
    pub fn parse(value: &[u8]) -> Result<Self, TraceParentError> {
        let value = trim_ows(value);
        if value.len() < TRACEPARENT_LEN {
            return Err(TraceParentError::TooShort { len: value.len() });
        }
        let version = decode_hex::<1>(&value[0..2]).ok_or(TraceParentError::InvalidVersion)?[0];
        if version == 0xff {
            return Err(TraceParentError::ForbiddenVersion);
        }
        if version == 0 && value.len() != TRACEPARENT_LEN {
            return Err(TraceParentError::TrailingData);
        }
        if version > 0 && value.len() > TRACEPARENT_LEN && value[TRACEPARENT_LEN] != b'-' {
            return Err(TraceParentError::TrailingData);
        }
        if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return Err(TraceParentError::MissingDelimiter);
        }
        let trace_id = decode_hex::<16>(&value[3..35]).ok_or(TraceParentError::InvalidTraceId)?;
        let trace_id = TraceId::from_bytes(trace_id).ok_or(TraceParentError::ZeroTraceId)?;
        let parent_id = decode_hex::<8>(&value[36..52]).ok_or(TraceParentError::InvalidParentId)?;
        let parent_id = SpanId::from_bytes(parent_id).ok_or(TraceParentError::ZeroParentId)?;
        let flags = decode_hex::<1>(&value[53..55]).ok_or(TraceParentError::InvalidFlags)?[0];
        Ok(Self {
            trace_id,
            parent_id,
            flags: TraceFlags::from_wire(flags),
        })
    }

    /// The trace id.
    #[must_use]
    pub const fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    /// The id of the caller's span.
    #[must_use]
    pub const fn parent_id(&self) -> SpanId {
        self.parent_id
    }

    /// The flags, reduced to the defined bits.
    #[must_use]
    pub const fn flags(&self) -> TraceFlags {
        self.flags
    }

    /// The header value as version `00`, in a stack buffer.
    #[must_use]
    pub fn encode(&self) -> [u8; TRACEPARENT_LEN] {
        let mut out = [0u8; TRACEPARENT_LEN];
        out[0..3].copy_from_slice(b"00-");
        encode_hex(&self.trace_id.to_bytes(), &mut out[3..35]);
        out[35] = b'-';
        encode_hex(&self.parent_id.to_bytes(), &mut out[36..52]);
        out[52] = b'-';
        encode_hex(&[self.flags.to_wire()], &mut out[53..55]);
        out
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let encoded = self.encode();
        f.write_str(std::str::from_utf8(&encoded).unwrap_or_default())
    }
}

impl FromStr for TraceParent {
    type Err = TraceParentError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s.as_bytes())
    }
}

/// Strips HTTP's optional whitespace (spaces and tabs) from both ends.
pub(crate) fn trim_ows(value: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    if !value.first().is_some_and(is_ows) && !value.last().is_some_and(is_ows) {
        return value;
    }
    let start = value.iter().position(|b| !is_ows(b)).unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    &value[start..end]
}
