//! How an open breaker answers a call.

use tower::BoxError;

use crate::error::Open;

/// How a breaker's service answers, and what its error type is: what a
/// call an open breaker refused becomes, and what the inner service's
/// errors become. The same word, with the same methods, as
/// `palisade-token-bucket`'s `Respond`.
///
/// [`BoxErrors`] (the default) fails the call with [`Open`] boxed in a
/// [`BoxError`], downcastable with `err.is::<Open>()`;
/// [`ServiceUnavailable`](crate::ServiceUnavailable) (feature `http`)
/// answers 503, and [`Unavailable`](crate::Unavailable) (feature `grpc`) a
/// trailers-only `UNAVAILABLE`.
pub trait Respond<T, E> {
    /// The service's error type.
    type Error;

    /// The answer to a call refused by an open breaker.
    ///
    /// # Errors
    ///
    /// Whatever this strategy makes of `open`.
    fn refused(&self, open: Open) -> Result<T, Self::Error>;

    /// The inner service's error, as this service's.
    fn error(&self, error: E) -> Self::Error;
}

/// Errors as [`BoxError`]: the inner service's, or [`Open`].
#[derive(Debug, Clone, Copy, Default)]
pub struct BoxErrors;

impl<T, E: Into<BoxError>> Respond<T, E> for BoxErrors {
    type Error = BoxError;

    fn refused(&self, open: Open) -> Result<T, BoxError> {
        Err(Box::new(open))
    }

    fn error(&self, error: E) -> BoxError {
        error.into()
    }
}
