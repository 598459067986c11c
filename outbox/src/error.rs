//! Error types.

use std::error::Error;
use std::fmt;

pub use palisade_hints::ConfigError;

/// A `ConfigError` of this crate's builders.
pub(crate) const fn config_error(setting: &'static str, problem: &'static str) -> ConfigError {
    ConfigError::new("outbox", setting, problem)
}

/// What a failed publish says: about the broker, or about the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PublishErrorKind {
    /// The broker could not take any message (it cannot be reached, timed
    /// out, has no responders or no stream, is unavailable, or a breaker
    /// in front of it is open): the event is handed back with its attempts
    /// untouched and published once the broker is back, however long that
    /// takes.
    Unavailable,
    /// The broker refused this message (too large for the stream, or
    /// against the stream's rules): the failure spends one of the event's
    /// attempts, and after its last one the event is dead. A stream that is
    /// full takes no message at all: that is [`Full`](Self::Full).
    Rejected,
    /// The broker answered, but has no room for the message now (a stream,
    /// or its subject, full; its store failing): waited out as
    /// [`Unavailable`](Self::Unavailable) is, its attempts untouched, but
    /// the broker is up: a relay's breaker does not count it as the broker
    /// failing, a batch refused only so is no outage, and the events wait
    /// the longest outage wait rather than come straight back.
    Full,
}

/// A publisher could not hand an event to the broker.
///
/// Its [`kind`](Self::kind) decides what the relay does with the event: an
/// [`Unavailable`](PublishErrorKind::Unavailable) broker is waited out, a
/// [`Rejected`](PublishErrorKind::Rejected) message spends an attempt.
///
/// # Example
///
/// ```
/// use palisade_outbox::{PublishError, PublishErrorKind};
///
/// let down = PublishError::unavailable("connection refused");
/// assert_eq!(down.kind(), PublishErrorKind::Unavailable);
/// assert_eq!(down.to_string(), "broker unavailable: connection refused");
/// assert!(!PublishError::rejected("message too large").is_unavailable());
/// ```
#[derive(Debug)]
pub struct PublishError {
    kind: PublishErrorKind,
    source: Box<dyn Error + Send + Sync>,
}

impl PublishError {
    /// The broker could not take any message: wait it out.
    pub fn unavailable(error: impl Into<Box<dyn Error + Send + Sync>>) -> Self {
        Self {
            kind: PublishErrorKind::Unavailable,
            source: error.into(),
        }
    }

    /// The broker has no room for messages now: wait it out
    /// ([`PublishErrorKind::Full`]).
    pub fn full(error: impl Into<Box<dyn Error + Send + Sync>>) -> Self {
        Self {
            kind: PublishErrorKind::Full,
            source: error.into(),
        }
    }

    /// The broker refused this message: it spends an attempt.
    pub fn rejected(error: impl Into<Box<dyn Error + Send + Sync>>) -> Self {
        Self {
            kind: PublishErrorKind::Rejected,
            source: error.into(),
        }
    }

    /// Whether the broker or the message failed.
    #[must_use]
    pub const fn kind(&self) -> PublishErrorKind {
        self.kind
    }

    /// Whether the broker could not take the message now, for want of
    /// reach or of room: the event waits, its attempts untouched.
    #[must_use]
    pub const fn is_unavailable(&self) -> bool {
        matches!(
            self.kind,
            PublishErrorKind::Unavailable | PublishErrorKind::Full
        )
    }
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            PublishErrorKind::Unavailable => write!(f, "broker unavailable: {}", self.source),
            PublishErrorKind::Rejected => write!(f, "message rejected: {}", self.source),
            PublishErrorKind::Full => write!(f, "broker full: {}", self.source),
        }
    }
}

impl Error for PublishError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.source)
    }
}
