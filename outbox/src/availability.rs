//! The broker's availability as a relay sees it: an outage is logged once
//! when it starts and once when it ends, and read by the
//! `palisade.outbox.broker_available` gauge (feature `otel`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::error::PublishError;

/// An outage under way.
#[derive(Debug, Clone, Copy)]
struct Outage {
    since: Instant,
    /// Batches in a row that reached no broker.
    batches: u32,
}

/// Whether the broker took the relay's last batch, and since when it has
/// not.
#[derive(Debug)]
pub(crate) struct Availability {
    available: AtomicBool,
    outage: Mutex<Option<Outage>>,
    /// Whether the broker's last answer on a batch was that it had no
    /// room for some of it.
    roomless: AtomicBool,
}

impl Default for Availability {
    fn default() -> Self {
        Self {
            available: AtomicBool::new(true),
            outage: Mutex::new(None),
            roomless: AtomicBool::new(false),
        }
    }
}

impl Availability {
    /// The broker had no room for `events` of a batch, answering `error`:
    /// said once, when it starts (each batch after at debug), and once
    /// when a batch finds room again ([`room`](Self::room)).
    pub(crate) fn no_room(&self, events: usize, wait: Duration, error: &PublishError) {
        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        if self.roomless.swap(true, Ordering::Relaxed) {
            tracing::debug!(target: "palisade_outbox", events, wait_ms, %error, "the broker still has no room for some events; they wait");
        } else {
            tracing::warn!(target: "palisade_outbox", events, wait_ms, %error, "the broker has no room for some events; they wait, their attempts untouched, until it has");
        }
    }

    /// A batch the broker answered found room for all it was not refused
    /// for other reasons.
    pub(crate) fn room(&self) {
        if self.roomless.swap(false, Ordering::Relaxed) {
            tracing::info!(target: "palisade_outbox", "the broker has room again");
        }
    }

    /// A batch reached the broker (it stored or refused a message): an
    /// outage under way is over.
    pub(crate) fn reached(&self) {
        let ended = {
            let mut outage = self.outage.lock().unwrap_or_else(PoisonError::into_inner);
            // Under the lock, as `unreachable` stores `false`: stored after
            // it, a relay's clone starting the next outage meanwhile would
            // be read as available for that whole outage.
            let ended = outage.take();
            if ended.is_some() {
                self.available.store(true, Ordering::Relaxed);
            }
            ended
        };
        if let Some(outage) = ended {
            tracing::info!(
                target: "palisade_outbox",
                down_for_ms = u64::try_from(outage.since.elapsed().as_millis()).unwrap_or(u64::MAX),
                batches = outage.batches,
                "broker available again; the events that waited are published"
            );
        }
    }

    /// A batch reached no broker, failing with `error` (among others):
    /// returns how many batches in a row have not, this one included.
    pub(crate) fn unreachable(&self, error: &PublishError) -> u32 {
        let mut outage = self.outage.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(outage) = outage.as_mut() {
            outage.batches = outage.batches.saturating_add(1);
            return outage.batches;
        }
        *outage = Some(Outage {
            since: Instant::now(),
            batches: 1,
        });
        self.available.store(false, Ordering::Relaxed);
        tracing::warn!(
            target: "palisade_outbox",
            %error,
            "broker unavailable; events wait, their attempts untouched, until it is back"
        );
        1
    }

    /// Whether the last batch reached the broker.
    #[cfg(feature = "otel")]
    pub(crate) fn is_available(&self) -> bool {
        self.available.load(Ordering::Relaxed)
    }
}

/// The wait after `batches` batches in a row reached no broker: `base`,
/// doubling, up to `cap`.
pub(crate) fn outage_backoff(base: Duration, cap: Duration, batches: u32) -> Duration {
    base.saturating_mul(1 << batches.saturating_sub(1).min(30))
        .min(cap)
}
