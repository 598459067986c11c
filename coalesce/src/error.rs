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

/// The error type of services and `?`: what
/// [`into_box_error`](FlightError::into_box_error) makes.
type BoxError = Box<dyn Error + Send + Sync>;

impl FlightError<BoxError> {
    /// The flight's error as a `BoxError` (`tower::BoxError`), for a
    /// cache whose computations fail with one: `FlightError<BoxError>` is
    /// no [`Error`] itself (a boxed error is not), so `?` cannot take it
    /// into a `BoxError` as it is. A failure becomes a [`SharedError`]
    /// (the computation's error as its source, found by whatever walks
    /// the chain), a refusal its [`Refusal`], a panic or a cancellation an
    /// error saying so.
    ///
    /// ```
    /// use palisade_coalesce::{Cache, FlightError};
    /// use tower::BoxError;
    ///
    /// async fn price(cache: &Cache<String, u64, BoxError>) -> Result<u64, BoxError> {
    ///     let lookup = cache
    ///         .get_with("sku-1".to_owned(), || async { Ok::<_, BoxError>(42) })
    ///         .await
    ///         .map_err(FlightError::into_box_error)?;
    ///     Ok(lookup.value)
    /// }
    /// ```
    #[must_use]
    pub fn into_box_error(self) -> BoxError {
        match self {
            Self::Failed(shared) => Box::new(SharedError(shared)),
            Self::Panicked(message) => format!("the origin panicked: {message}").into(),
            Self::Cancelled => "the origin call was cancelled".into(),
            Self::Refused(refusal) => Box::new(refusal),
        }
    }
}

/// One computation's error, delivered to every caller of its flight. It
/// reads as the computation's error, and has it as its
/// [`source`](Error::source), so whatever walks the chain (a retry's
/// classifier looking for a timeout) finds it; a report of the whole chain
/// names it twice.
#[derive(Debug, Clone)]
pub struct SharedError(pub Arc<BoxError>);

impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&**self.0, f)
    }
}

impl Error for SharedError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&**self.0)
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_flights_error_as_a_box_error_keeps_what_it_says() {
        let timeout: BoxError = Box::new(std::io::Error::from(std::io::ErrorKind::TimedOut));
        let failed = FlightError::Failed(Arc::new(timeout)).into_box_error();
        let shared = failed.downcast_ref::<SharedError>().expect("a SharedError");
        let source = shared.source().expect("the computation's error");
        assert_eq!(
            source
                .downcast_ref::<std::io::Error>()
                .map(std::io::Error::kind),
            Some(std::io::ErrorKind::TimedOut)
        );
        let refusal = Refusal::store_down(Some(Duration::from_secs(1)));
        let refused = FlightError::<BoxError>::Refused(refusal).into_box_error();
        assert_eq!(Refusal::find(&*refused), Some(&refusal));
        let panicked = FlightError::<BoxError>::Panicked(Arc::from("boom")).into_box_error();
        assert!(panicked.to_string().contains("boom"));
    }
}
