//! Sliding windows of call outcomes, lock-free: a ring of the last N calls,
//! or buckets of time that expire whole.
//!
//! Counts are packed 21 bits each in one `u64` (calls, failures, slow
//! calls), so recording is one or two atomic additions and reading is one
//! load per bucket. Under contention a read may include a call whose slot
//! has not yet been subtracted; the error is at most the number of calls
//! being recorded at that instant, and vanishes as they finish.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};

use crate::config::SlidingWindow;

const FIELD_BITS: u32 = 21;
const FIELD_MASK: u64 = (1 << FIELD_BITS) - 1;

/// Counts over the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Calls recorded.
    pub calls: u32,
    /// Of which failed.
    pub failures: u32,
    /// Of which were slow.
    pub slow: u32,
}

impl Counts {
    const fn unpack(packed: u64) -> Self {
        Self {
            calls: (packed & FIELD_MASK) as u32,
            failures: ((packed >> FIELD_BITS) & FIELD_MASK) as u32,
            slow: ((packed >> (2 * FIELD_BITS)) & FIELD_MASK) as u32,
        }
    }

    fn add(&mut self, other: Self) {
        self.calls += other.calls;
        self.failures += other.failures;
        self.slow += other.slow;
    }
}

/// One call's contribution to the packed counts.
const fn contribution(failed: bool, slow: bool) -> u64 {
    1 | ((failed as u64) << FIELD_BITS) | ((slow as u64) << (2 * FIELD_BITS))
}

/// A ring slot: 0 when empty, else bit 0 set, bit 1 failed, bit 2 slow.
const fn slot_value(failed: bool, slow: bool) -> u8 {
    1 | ((failed as u8) << 1) | ((slow as u8) << 2)
}

const fn slot_contribution(slot: u8) -> u64 {
    contribution(slot & 2 != 0, slot & 4 != 0)
}

#[derive(Debug)]
pub(crate) enum Window {
    Count {
        slots: Box<[AtomicU8]>,
        cursor: AtomicU64,
        totals: AtomicU64,
    },
    Time {
        bucket_ms: u64,
        /// The bucket index (time / bucket length) each bucket holds;
        /// `u64::MAX` when empty.
        epochs: Box<[AtomicU64]>,
        counts: Box<[AtomicU64]>,
    },
}

impl Window {
    pub(crate) fn new(shape: SlidingWindow) -> Self {
        match shape {
            SlidingWindow::Count(n) => Self::Count {
                slots: (0..n).map(|_| AtomicU8::new(0)).collect(),
                cursor: AtomicU64::new(0),
                totals: AtomicU64::new(0),
            },
            SlidingWindow::Time { duration, buckets } => {
                let bucket_ms = u64::try_from(duration.as_millis() / u128::from(buckets))
                    .unwrap_or(u64::MAX)
                    .max(1);
                Self::Time {
                    bucket_ms,
                    epochs: (0..buckets).map(|_| AtomicU64::new(u64::MAX)).collect(),
                    counts: (0..buckets).map(|_| AtomicU64::new(0)).collect(),
                }
            }
        }
    }

    /// Records one call at `now_ms` (milliseconds since the breaker began).
    pub(crate) fn record(&self, now_ms: u64, failed: bool, slow: bool) {
        match self {
            Self::Count {
                slots,
                cursor,
                totals,
            } => {
                let len = slots.len() as u64;
                let index = (cursor.fetch_add(1, Relaxed) % len) as usize;
                // Add before subtracting, so no field ever goes below zero.
                totals.fetch_add(contribution(failed, slow), Relaxed);
                let old = slots[index].swap(slot_value(failed, slow), Relaxed);
                if old != 0 {
                    totals.fetch_sub(slot_contribution(old), Relaxed);
                }
            }
            Self::Time {
                bucket_ms,
                epochs,
                counts,
            } => {
                let epoch = now_ms / bucket_ms;
                let index = (epoch % epochs.len() as u64) as usize;
                let seen = epochs[index].load(Relaxed);
                if seen != epoch
                    && (seen == u64::MAX || seen < epoch)
                    && epochs[index]
                        .compare_exchange(seen, epoch, Relaxed, Relaxed)
                        .is_ok()
                {
                    // This thread moved the bucket to the new epoch: it
                    // empties it. A call recorded by another thread in
                    // between may be lost; the window is a statistic.
                    counts[index].store(0, Relaxed);
                }
                if epochs[index].load(Relaxed) == epoch {
                    counts[index].fetch_add(contribution(failed, slow), Relaxed);
                }
            }
        }
    }

    /// The counts over the window at `now_ms`.
    pub(crate) fn counts(&self, now_ms: u64) -> Counts {
        match self {
            Self::Count { totals, .. } => Counts::unpack(totals.load(Relaxed)),
            Self::Time {
                bucket_ms,
                epochs,
                counts,
            } => {
                let current = now_ms / bucket_ms;
                let oldest = current.saturating_sub(epochs.len() as u64 - 1);
                let mut sum = Counts::default();
                for (epoch, count) in epochs.iter().zip(counts.iter()) {
                    let epoch = epoch.load(Relaxed);
                    if (oldest..=current).contains(&epoch) {
                        sum.add(Counts::unpack(count.load(Relaxed)));
                    }
                }
                sum
            }
        }
    }

    /// Forgets every call.
    pub(crate) fn reset(&self) {
        match self {
            Self::Count { slots, totals, .. } => {
                for slot in slots.iter() {
                    let old = slot.swap(0, Relaxed);
                    if old != 0 {
                        totals.fetch_sub(slot_contribution(old), Relaxed);
                    }
                }
            }
            Self::Time { epochs, counts, .. } => {
                for (epoch, count) in epochs.iter().zip(counts.iter()) {
                    epoch.store(u64::MAX, Relaxed);
                    count.store(0, Relaxed);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_ring_keeps_the_last_n_calls() {
        let window = Window::new(SlidingWindow::Count(3));
        for failed in [true, true, false, false] {
            window.record(0, failed, false);
        }
        assert_eq!(
            window.counts(0),
            Counts {
                calls: 3,
                failures: 1,
                slow: 0
            }
        );
        window.record(0, false, true);
        assert_eq!(
            window.counts(0),
            Counts {
                calls: 3,
                failures: 0,
                slow: 1
            }
        );
        window.reset();
        assert_eq!(window.counts(0), Counts::default());
    }

    #[test]
    fn buckets_expire_whole() {
        let window = Window::new(SlidingWindow::Time {
            duration: Duration::from_secs(3),
            buckets: 3,
        });
        window.record(0, true, false);
        window.record(1_500, false, false);
        window.record(2_999, false, true);
        assert_eq!(
            window.counts(2_999),
            Counts {
                calls: 3,
                failures: 1,
                slow: 1
            }
        );
        // At 3.0 s the first bucket (0..1 s) has left the window.
        assert_eq!(
            window.counts(3_000),
            Counts {
                calls: 2,
                failures: 0,
                slow: 1
            }
        );
        window.record(3_000, true, false);
        assert_eq!(
            window.counts(3_500),
            Counts {
                calls: 3,
                failures: 1,
                slow: 1
            }
        );
        assert_eq!(window.counts(10_000), Counts::default());
    }
}
