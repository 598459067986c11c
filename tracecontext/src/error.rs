//! Why a header was refused.

use std::error::Error;
use std::fmt;

/// A `traceparent` value that breaks the specification; the reason is the
/// first rule broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TraceParentError {
    /// Shorter than the 55 characters of the fixed fields.
    TooShort {
        /// Length after trimming optional whitespace.
        len: usize,
    },
    /// The version is not two lowercase hex digits.
    InvalidVersion,
    /// Version `ff`, which the specification forbids.
    ForbiddenVersion,
    /// Version `00` longer than 55 characters, or a later version whose
    /// extra data does not start with `-`.
    TrailingData,
    /// A `-` is missing between the fields.
    MissingDelimiter,
    /// The trace id is not 32 lowercase hex digits.
    InvalidTraceId,
    /// The trace id is all zeros.
    ZeroTraceId,
    /// The parent id is not 16 lowercase hex digits.
    InvalidParentId,
    /// The parent id is all zeros.
    ZeroParentId,
    /// The flags are not two lowercase hex digits.
    InvalidFlags,
}

impl fmt::Display for TraceParentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort { len } => write!(f, "traceparent has {len} characters, fewer than 55"),
            Self::InvalidVersion => {
                f.write_str("traceparent version is not two lowercase hex digits")
            }
            Self::ForbiddenVersion => f.write_str("traceparent version ff is forbidden"),
            Self::TrailingData => f.write_str("traceparent has data after the flags"),
            Self::MissingDelimiter => f.write_str("traceparent fields are not separated by '-'"),
            Self::InvalidTraceId => f.write_str("trace-id is not 32 lowercase hex digits"),
            Self::ZeroTraceId => f.write_str("trace-id is all zeros"),
            Self::InvalidParentId => f.write_str("parent-id is not 16 lowercase hex digits"),
            Self::ZeroParentId => f.write_str("parent-id is all zeros"),
            Self::InvalidFlags => f.write_str("trace-flags are not two lowercase hex digits"),
        }
    }
}

impl Error for TraceParentError {}

/// A `tracestate` that breaks the specification, and is therefore
/// discarded whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TraceStateError {
    /// More than 32 members.
    TooManyMembers,
    /// A member without `=`.
    MissingEquals,
    /// A key outside the key grammar.
    InvalidKey,
    /// A value outside the value grammar (empty, too long, a forbidden
    /// character, or a trailing space).
    InvalidValue,
}

impl fmt::Display for TraceStateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::TooManyMembers => "tracestate has more than 32 members",
            Self::MissingEquals => "tracestate member has no '='",
            Self::InvalidKey => "tracestate key breaks the key grammar",
            Self::InvalidValue => "tracestate value breaks the value grammar",
        })
    }
}

impl Error for TraceStateError {}

/// Why an incoming trace could not be continued; a new one is started then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExtractError {
    /// No `traceparent`.
    Missing,
    /// More than one `traceparent` line.
    Duplicated,
    /// An invalid `traceparent`.
    Invalid(TraceParentError),
}

impl fmt::Display for ExtractError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => f.write_str("no traceparent"),
            Self::Duplicated => f.write_str("more than one traceparent"),
            Self::Invalid(err) => err.fmt(f),
        }
    }
}

impl Error for ExtractError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            Self::Invalid(err) => Some(err),
            _ => None,
        }
    }
}

impl From<TraceParentError> for ExtractError {
    fn from(err: TraceParentError) -> Self {
        Self::Invalid(err)
    }
}
