//! How an open breaker answers a call.

use tower::BoxError;

use crate::error::Open;

/// How an open breaker answers, and what its service's error type is.
///
/// [`BoxErrors`] (the default) fails the call with [`Open`] boxed in a
/// [`BoxError`], downcastable with `err.is::<Open>()`.
pub trait Rejection<T, E> {
    /// The service's error type.
    type Error;

    /// The answer to a call refused by an open breaker.
    ///
    /// # Errors
    ///
    /// Whatever this strategy makes of `open`.
    fn reject(&self, open: Open) -> Result<T, Self::Error>;

    /// The inner service's error, as this service's.
    fn error(&self, error: E) -> Self::Error;
}

/// Errors as [`BoxError`]: the inner service's, or [`Open`].
#[derive(Debug, Clone, Copy, Default)]
pub struct BoxErrors;

impl<T, E: Into<BoxError>> Rejection<T, E> for BoxErrors {
    type Error = BoxError;

    fn reject(&self, open: Open) -> Result<T, BoxError> {
        Err(Box::new(open))
    }

    fn error(&self, error: E) -> BoxError {
        error.into()
    }
}
