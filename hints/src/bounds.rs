//! A setting's duration held within what works.

use std::time::Duration;

/// A day: the longest the builders take for a wait (a lease, a backoff, a
/// retry delay) where a longer one only overflowed a deadline or reached a
/// server as a value it refuses.
pub const DAY: Duration = Duration::from_secs(86_400);

/// `value` within `least ..= most`: the nearer bound when it is outside.
/// For the builders' `const fn` setters, where `Duration::clamp` is not
/// available.
///
/// ```
/// use std::time::Duration;
/// use palisade_hints::bounded;
///
/// let (least, most) = (Duration::from_millis(1), Duration::from_secs(60));
/// assert_eq!(bounded(Duration::ZERO, least, most), least);
/// assert_eq!(bounded(Duration::from_secs(5), least, most), Duration::from_secs(5));
/// assert_eq!(bounded(Duration::MAX, least, most), most);
/// ```
#[must_use]
pub const fn bounded(value: Duration, least: Duration, most: Duration) -> Duration {
    if value.as_nanos() < least.as_nanos() {
        least
    } else if value.as_nanos() > most.as_nanos() {
        most
    } else {
        value
    }
}
