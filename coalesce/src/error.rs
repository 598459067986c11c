//! Error types.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

use palisade_hints::Refusal;

/// Why a coalesced computation gave no value; every waiter gets the same.
#[derive(Debug)]
#[non_exhaustive]
pub enum FlightError<E> {
    /// The computation failed; its error, shared by every waiter.
    Failed(Arc<E>),
    /// The computation panicked, with this message.
    Panicked(Arc<str>),
    /// The computation's task was cancelled from outside (the runtime
    /// shutting down).
    Cancelled,
    /// Nothing was computed: the store shared with other processes
    /// (Redis) does not answer, and the cache's failure policy refuses to
    /// compute without it. The [`Refusal`] (reason
    /// [`StoreDown`](palisade_hints::RefusalReason::StoreDown)) is also
    /// the error's [`source`](Error::source), for layers that look for
    /// one.
    Refused(Refusal),
}

impl<E> Clone for FlightError<E> {
    fn clone(&self) -> Self {
        match self {
            Self::Failed(error) => Self::Failed(error.clone()),
            Self::Panicked(message) => Self::Panicked(message.clone()),
            Self::Cancelled => Self::Cancelled,
            Self::Refused(refusal) => Self::Refused(*refusal),
        }
    }
}

impl<E> FlightError<E> {
    /// The computation's own error, if it failed with one.
    #[must_use]
    pub const fn failure(&self) -> Option<&Arc<E>> {
        match self {
            Self::Failed(error) => Some(error),
            _ => None,
        }
    }
}

impl<E: fmt::Display> fmt::Display for FlightError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Failed(error) => write!(f, "computation failed: {error}"),
            Self::Panicked(message) => write!(f, "computation panicked: {message}"),
            Self::Cancelled => f.write_str("computation cancelled"),
            Self::Refused(refusal) => write!(f, "not computed: {refusal}"),
        }
    }
}

impl<E: Error + 'static> Error for FlightError<E> {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            Self::Failed(error) => Some(&**error),
            Self::Refused(refusal) => Some(refusal),
            _ => None,
        }
    }
}
