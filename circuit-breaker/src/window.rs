//! Sliding windows of call outcomes, lock-free: a ring of the last N calls,
//! or buckets of time that expire whole.
//!
//! Counts are packed 21 bits each in one `u64` (calls, failures, slow
//! calls). The ring counts calls by its cursor and touches the packed
//! counts only when a failure or a slow call enters or leaves it, so a
//! success replacing a success costs one `fetch_add` and one `swap`. Under
//! contention a read may include a call whose slot has not yet been
//! subtracted; the error is at most the number of calls being recorded at
//! that instant, and vanishes as they finish.

use crate::sync::Ordering::Relaxed;
use crate::sync::{AtomicU8, AtomicU64};

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
    1 | verdicts(failed, slow)
}

/// The failure and slow-call part of a contribution.
const fn verdicts(failed: bool, slow: bool) -> u64 {
    ((failed as u64) << FIELD_BITS) | ((slow as u64) << (2 * FIELD_BITS))
}

/// A ring slot: 0 when empty, else bit 0 set, bit 1 failed, bit 2 slow.
const fn slot_value(failed: bool, slow: bool) -> u8 {
    1 | ((failed as u8) << 1) | ((slow as u8) << 2)
}

const fn slot_verdicts(slot: u8) -> u64 {
    verdicts(slot & 2 != 0, slot & 4 != 0)
}

/// `n % len` by multiplication (Lemire's fastmod), without a division on
/// every call; `magic` is `u64::MAX / len + 1`, wrapping (0 for 1).
const fn fast_mod(n: u32, len: u32, magic: u64) -> usize {
    let low = magic.wrapping_mul(n as u64);
    ((low as u128 * len as u128) >> 64) as usize
}

#[derive(Debug)]
pub(crate) enum Window {
    Count {
        slots: Box<[AtomicU8]>,
        /// `u64::MAX / slots.len() + 1`, for [`fast_mod`].
        magic: u64,
        /// Calls recorded since the last reset.
        cursor: AtomicU64,
        /// Failures and slow calls in the ring, packed.
        verdicts: AtomicU64,
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
                magic: (u64::MAX / u64::from(n)).wrapping_add(1),
                cursor: AtomicU64::new(0),
                verdicts: AtomicU64::new(0),
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
                magic,
                cursor,
                verdicts: totals,
            } => {
                // The index wraps with the low 32 bits of the cursor: once
                // every 2^32 calls a few slots are reused early.
                let position = cursor.fetch_add(1, Relaxed) as u32;
                let index = fast_mod(position, slots.len() as u32, *magic);
                // Add before subtracting, so no field ever goes below zero.
                let added = verdicts(failed, slow);
                if added != 0 {
                    totals.fetch_add(added, Relaxed);
                }
                // A slot that already holds this verdict (the steady state:
                // success after success) needs no write, and a load costs
                // far less than a swap. A writer racing for the same slot
                // (`len` calls apart) then simply lands after this one.
                let value = slot_value(failed, slow);
                let slot = &slots[index];
                let old = if slot.load(Relaxed) == value {
                    value
                } else {
                    slot.swap(value, Relaxed)
                };
                let removed = slot_verdicts(old);
                if removed != 0 {
                    totals.fetch_sub(removed, Relaxed);
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
            Self::Count {
                slots,
                cursor,
                verdicts: totals,
                ..
            } => {
                let mut counts = Counts::unpack(totals.load(Relaxed));
                counts.calls = cursor.load(Relaxed).min(slots.len() as u64) as u32;
                counts
            }
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
            Self::Count {
                slots,
                cursor,
                verdicts: totals,
                ..
            } => {
                cursor.store(0, Relaxed);
                for slot in slots.iter() {
                    let removed = slot_verdicts(slot.swap(0, Relaxed));
                    if removed != 0 {
                        totals.fetch_sub(removed, Relaxed);
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
    fn fast_mod_is_modulo() {
        for len in [1u32, 2, 3, 7, 20, 1000, (1 << 21) - 1] {
            let magic = (u64::MAX / u64::from(len)).wrapping_add(1);
            for n in (0..5000).chain([u32::MAX - 1, u32::MAX]) {
                assert_eq!(fast_mod(n, len, magic), (n % len) as usize, "{n} % {len}");
            }
        }
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
