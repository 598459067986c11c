//! How a shed call is answered.

use tower::BoxError;

use crate::error::Shed;

/// How the layer's service answers, and what its error type is: what a
/// shed call becomes, and what the inner service's errors become. The
/// same word, with the same methods, as the breaker's and the rate
/// limiter's `Respond`.
///
/// [`BoxErrors`] (the default) fails a shed call with [`Shed`] boxed in a
/// [`BoxError`], downcastable with `err.is::<Shed>()`;
/// [`ServiceUnavailable`](crate::ServiceUnavailable) (feature `http`)
/// answers 503 with `Retry-After`.
pub trait Respond<T, E> {
    /// The service's error type.
    type Error;

    /// The answer to a shed call.
    ///
    /// # Errors
    ///
    /// Whatever this strategy makes of `shed`.
    fn refused(&self, shed: Shed) -> Result<T, Self::Error>;

    /// The inner service's error, as this service's.
    fn error(&self, error: E) -> Self::Error;
}

/// Errors as [`BoxError`]: the inner service's, or [`Shed`].
#[derive(Debug, Clone, Copy, Default)]
pub struct BoxErrors;

impl<T, E: Into<BoxError>> Respond<T, E> for BoxErrors {
    type Error = BoxError;

    fn refused(&self, shed: Shed) -> Result<T, BoxError> {
        Err(Box::new(shed))
    }

    fn error(&self, error: E) -> BoxError {
        error.into()
    }
}
