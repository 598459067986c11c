//! What a caught panic says, for the layers that turn a panic in a user's
//! code (a coalesced computation, a consumer's handler) into an error
//! rather than let it take down the task that serves everyone else.

use std::any::Any;

/// The message of a panic caught with
/// [`catch_unwind`](std::panic::catch_unwind): its `&str` or `String`
/// payload, as `panic!` makes it, or `"a non-string panic"`.
///
/// # Example
///
/// ```
/// let caught = std::panic::catch_unwind(|| panic!("row {} is gone", 7)).unwrap_err();
/// assert_eq!(palisade_hints::panic_message(&*caught), "row 7 is gone");
/// ```
#[must_use]
pub fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|message| (*message).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic".to_owned())
}
