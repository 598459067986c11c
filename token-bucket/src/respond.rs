//! How the layer answers: what a refusal and a store failure look like,
//! and what an admitted response carries.

use tower::BoxError;

use crate::bucket::Decision;
use crate::error::{RateLimited, StoreError};

/// How a rate-limited service answers, and what its error type is.
///
/// [`BoxErrors`] (the default) fails refused calls with [`RateLimited`];
/// with feature `http`, [`TooManyRequests`](crate::http::TooManyRequests)
/// answers `429` with `Retry-After` and the RateLimit header fields.
pub trait Respond<T, E> {
    /// The service's error type.
    type Error;

    /// The answer to a request its bucket could not pay for.
    ///
    /// # Errors
    ///
    /// Whatever this strategy makes of the refusal.
    fn refused(&self, decision: &Decision) -> Result<T, Self::Error>;

    /// The answer when the store could not decide (and its failure policy
    /// is to propagate).
    ///
    /// # Errors
    ///
    /// Whatever this strategy makes of the store's error.
    fn store_failed(&self, error: StoreError) -> Result<T, Self::Error>;

    /// The inner service's error, as this service's.
    fn error(&self, error: E) -> Self::Error;

    /// Marks an admitted response (with rate-limit headers, in HTTP mode).
    fn admitted(&self, response: &mut T, decision: &Decision);
}

/// Errors as [`BoxError`]: the inner service's, [`RateLimited`], or the
/// [`StoreError`].
#[derive(Debug, Clone, Copy, Default)]
pub struct BoxErrors;

impl<T, E: Into<BoxError>> Respond<T, E> for BoxErrors {
    type Error = BoxError;

    fn refused(&self, decision: &Decision) -> Result<T, BoxError> {
        Err(Box::new(RateLimited::new(decision)))
    }

    fn store_failed(&self, error: StoreError) -> Result<T, BoxError> {
        Err(Box::new(error))
    }

    fn error(&self, error: E) -> BoxError {
        error.into()
    }

    fn admitted(&self, _: &mut T, _: &Decision) {}
}
