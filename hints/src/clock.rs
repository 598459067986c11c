//! A server's clock, as the processes that share the server read it.
//!
//! Processes that share a server (Redis, a database) and tell each other
//! points in time through it need one clock: each one's own wall clock
//! disagrees with the others' (by seconds on a host whose time service
//! failed) and steps (a time service correcting it, a virtual machine
//! moved). A [`ServerClock`] is the server's time, read now and then (as
//! of halfway through the round trip that asked it), and run on between
//! reads by this process's monotonic clock: processes reading one server
//! agree within their round trips, whatever their wall clocks say.

use std::time::{Duration, Instant};

/// The server's time (Unix milliseconds) as read at one instant of this
/// process, and run on from there by its monotonic clock.
///
/// # Example
///
/// ```
/// use std::time::{Duration, Instant};
/// use palisade_hints::clock::ServerClock;
///
/// // Redis's `TIME`, or a database's clock, asked at `sent`.
/// let sent = Instant::now();
/// let clock = ServerClock::read(1_700_000_000_000, sent, sent + Duration::from_millis(2));
/// let later = clock.read_at() + Duration::from_secs(30);
/// assert_eq!(clock.at(later), 1_700_000_030_000);
/// assert_eq!(clock.instant_of(1_700_000_030_000), Some(later));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerClock {
    read_at: Instant,
    server_ms: u64,
}

impl ServerClock {
    /// The server's time `server_ms`, asked at `sent` and answered at
    /// `answered`: taken as of halfway between.
    #[must_use]
    pub fn read(server_ms: u64, sent: Instant, answered: Instant) -> Self {
        Self {
            read_at: sent + answered.saturating_duration_since(sent) / 2,
            server_ms,
        }
    }

    /// When the server's time was read.
    #[must_use]
    pub const fn read_at(&self) -> Instant {
        self.read_at
    }

    /// The server's time at `instant` (Unix milliseconds).
    #[must_use]
    pub fn at(&self, instant: Instant) -> u64 {
        match instant.checked_duration_since(self.read_at) {
            Some(after) => self.server_ms.saturating_add(millis(after)),
            None => self
                .server_ms
                .saturating_sub(millis(self.read_at.duration_since(instant))),
        }
    }

    /// The instant of this process at which the server's time is
    /// `server_ms`; `None` past what an [`Instant`] can hold.
    #[must_use]
    pub fn instant_of(&self, server_ms: u64) -> Option<Instant> {
        if server_ms >= self.server_ms {
            self.read_at
                .checked_add(Duration::from_millis(server_ms - self.server_ms))
        } else {
            self.read_at
                .checked_sub(Duration::from_millis(self.server_ms - server_ms))
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_is_taken_halfway_through_its_round_trip() {
        let sent = Instant::now();
        let clock = ServerClock::read(10_000, sent, sent + Duration::from_millis(40));
        assert_eq!(clock.read_at(), sent + Duration::from_millis(20));
        assert_eq!(clock.at(sent), 9_980);
        // An answer before its question (clocks never do that): no trip.
        let clock = ServerClock::read(10_000, sent + Duration::from_millis(5), sent);
        assert_eq!(clock.read_at(), sent + Duration::from_millis(5));
    }

    #[test]
    fn times_and_instants_round_trip() {
        let now = Instant::now();
        let clock = ServerClock::read(1_700_000_000_000, now, now);
        for offset in [0, 1, 999, 86_400_000] {
            let later = now + Duration::from_millis(offset);
            assert_eq!(clock.instant_of(clock.at(later)), Some(later));
            let server_ms = 1_700_000_000_000 - offset;
            if let Some(earlier) = clock.instant_of(server_ms) {
                assert_eq!(clock.at(earlier), server_ms);
            }
        }
    }

    #[test]
    fn far_times_saturate_or_are_none() {
        let now = Instant::now();
        let clock = ServerClock::read(u64::MAX - 5, now, now);
        assert_eq!(clock.at(now + Duration::from_secs(1)), u64::MAX);
        let clock = ServerClock::read(5, now, now);
        if let Some(earlier) = now.checked_sub(Duration::from_secs(1)) {
            assert_eq!(clock.at(earlier), 0);
        }
        assert_eq!(
            clock.instant_of(u64::MAX),
            now.checked_add(Duration::from_millis(u64::MAX - 5))
        );
    }
}
