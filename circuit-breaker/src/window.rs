//! Sliding windows of call outcomes, lock-free: a ring of the last N calls,
//! or buckets of time that expire whole.
//!
//! The ring's failures and slow calls are packed 21 bits each in one `u64`
//! (the ring holds at most 2^21 - 1 calls, so they cannot overflow). It
//! counts calls by its cursor and touches the packed counts only when a
//! failure or a slow call enters or leaves it, so a success replacing a
//! success costs a load of its slot and its share of a `fetch_add` on the
//! cursor: one per call while the ring fills, one per batch of positions
//! after (see [`positions`](crate::positions)). Under contention a read
//! may include a call whose slot has not yet been subtracted; the error is
//! at most the number of calls being recorded at that instant, and
//! vanishes as they finish.
//!
//! A time bucket has a 64-bit counter each for calls, failures and slow
//! calls, so no rate of calls overflows it; a success costs one
//! `fetch_add`. A bucket reused for a new lap is emptied under a marker
//! epoch, and readers check its epoch before and after reading its
//! counters (a sequence lock), so a read never mixes the previous lap's
//! counts into the current one.

use palisade_hints::share::OwnLine;

use crate::sync::Ordering::{AcqRel, Acquire, Relaxed, Release};
use crate::sync::{AtomicU8, AtomicU64, fence};

use crate::config::SlidingWindow;
use crate::positions;

const FIELD_BITS: u32 = 21;
const FIELD_MASK: u64 = (1 << FIELD_BITS) - 1;

/// Counts over the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Calls recorded.
    pub calls: u64,
    /// Of which failed.
    pub failures: u64,
    /// Of which were slow.
    pub slow: u64,
}

impl Counts {
    /// The ring's packed failures and slow calls, with its `calls`.
    const fn unpack(calls: u64, packed: u64) -> Self {
        Self {
            calls,
            failures: (packed >> FIELD_BITS) & FIELD_MASK,
            slow: (packed >> (2 * FIELD_BITS)) & FIELD_MASK,
        }
    }

    const fn add(&mut self, other: Self) {
        self.calls = self.calls.saturating_add(other.calls);
        self.failures = self.failures.saturating_add(other.failures);
        self.slow = self.slow.saturating_add(other.slow);
    }
}

/// A bucket's epoch while it is being emptied for a new lap.
const EMPTYING: u64 = u64::MAX - 1;
/// A bucket's epoch before its first call.
const UNUSED: u64 = u64::MAX;

/// One bucket of a time window.
#[derive(Debug)]
pub(crate) struct Bucket {
    /// The bucket index (time / bucket length) the counters hold, or
    /// [`UNUSED`], or [`EMPTYING`].
    epoch: AtomicU64,
    calls: AtomicU64,
    failures: AtomicU64,
    slow: AtomicU64,
}

impl Bucket {
    fn new() -> Self {
        Self {
            epoch: AtomicU64::new(UNUSED),
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            slow: AtomicU64::new(0),
        }
    }

    /// Counts a call of `epoch`. A call older than the bucket's lap, or
    /// arriving while the bucket is being emptied, is dropped: the window
    /// is a statistic.
    fn record(&self, epoch: u64, failed: bool, slow: bool) {
        let seen = self.epoch.load(Acquire);
        if seen != epoch {
            if seen == EMPTYING || (seen != UNUSED && seen > epoch) {
                return;
            }
            if self
                .epoch
                .compare_exchange(seen, EMPTYING, Relaxed, Relaxed)
                .is_ok()
            {
                // Readers that see the zeros also see EMPTYING.
                fence(Release);
                self.calls.store(0, Relaxed);
                self.failures.store(0, Relaxed);
                self.slow.store(0, Relaxed);
                self.epoch.store(epoch, Release);
            } else if self.epoch.load(Acquire) != epoch {
                return;
            }
        }
        self.calls.fetch_add(1, Relaxed);
        if failed {
            self.failures.fetch_add(1, Relaxed);
        }
        if slow {
            self.slow.fetch_add(1, Relaxed);
        }
    }

    /// The bucket's counts if the epoch it holds is one of `epochs`,
    /// checked before and after reading the counters.
    fn counts(&self, epochs: std::ops::RangeInclusive<u64>) -> Option<Counts> {
        let epoch = self.epoch.load(Acquire);
        if !epochs.contains(&epoch) {
            return None;
        }
        let counts = Counts {
            calls: self.calls.load(Relaxed),
            failures: self.failures.load(Relaxed),
            slow: self.slow.load(Relaxed),
        };
        fence(Acquire);
        // Moved on to a later lap meanwhile: out of the window, since one
        // index holds one epoch of the window.
        (self.epoch.load(Relaxed) == epoch).then_some(counts)
    }

    fn reset(&self) {
        self.epoch.store(UNUSED, Relaxed);
        self.calls.store(0, Relaxed);
        self.failures.store(0, Relaxed);
        self.slow.store(0, Relaxed);
    }
}

/// A call's failure and slow-call bits in the ring's packed counts.
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
        /// The lap and the positions handed out since the last reset, in
        /// one word (see [`positions`](crate::positions)).
        cursor: OwnLine<AtomicU64>,
        /// The ring and its lap since the last reset, for the threads'
        /// reserved positions.
        lap: AtomicU64,
        /// Failures and slow calls in the ring, packed.
        verdicts: AtomicU64,
    },
    Time {
        bucket_ms: u64,
        /// How many of the latest buckets the window counts: the fewest
        /// that reach back `duration` (all of them, unless rounding the
        /// buckets' length up made fewer enough).
        live: u64,
        buckets: Box<[Bucket]>,
    },
}

impl Window {
    pub(crate) fn new(shape: SlidingWindow) -> Self {
        match shape {
            SlidingWindow::Count(n) => {
                let lap = positions::new_lap();
                Self::Count {
                    slots: (0..n).map(|_| AtomicU8::new(0)).collect(),
                    magic: (u64::MAX / u64::from(n)).wrapping_add(1),
                    cursor: OwnLine(AtomicU64::new(positions::start(lap))),
                    lap: AtomicU64::new(lap),
                    verdicts: AtomicU64::new(0),
                }
            }
            SlidingWindow::Time { duration, buckets } => {
                // Whole milliseconds, rounded up; then only as many of
                // the latest buckets as reach back `duration`, so the
                // window neither falls short of it nor keeps older calls
                // (601 ms in 600 buckets: 301 buckets of 2 ms).
                let duration_ms = duration.as_millis();
                let bucket_ms = duration_ms.div_ceil(u128::from(buckets)).max(1);
                let live = duration_ms
                    .div_ceil(bucket_ms)
                    .clamp(1, u128::from(buckets));
                Self::Time {
                    bucket_ms: u64::try_from(bucket_ms).unwrap_or(u64::MAX),
                    live: u64::try_from(live).unwrap_or(1),
                    buckets: (0..buckets).map(|_| Bucket::new()).collect(),
                }
            }
        }
    }

    /// Records one call at `now_ms` (milliseconds since the breaker
    /// began); for a ring, the calls it held before this one.
    #[inline]
    pub(crate) fn record(&self, now_ms: u64, failed: bool, slow: bool) -> Option<u64> {
        match self {
            Self::Count {
                slots,
                magic,
                cursor,
                lap,
                verdicts: totals,
            } => {
                // The index wraps with the low 32 bits of the position:
                // once every 2^32 calls a few slots are reused early.
                let before = positions::next(cursor, lap, slots.len() as u64);
                let index = fast_mod(before as u32, slots.len() as u32, *magic);
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
                // Release: whoever takes this verdict out of the slot (and
                // subtracts it) sees it added. Acquire: this call sees the
                // addition of the verdict it takes out. (On x86 the swap
                // orders them anyway.)
                let old = if slot.load(Relaxed) == value {
                    value
                } else {
                    slot.swap(value, AcqRel)
                };
                let removed = slot_verdicts(old);
                if removed != 0 {
                    totals.fetch_sub(removed, Relaxed);
                }
                Some(before.min(slots.len() as u64))
            }
            Self::Time {
                bucket_ms, buckets, ..
            } => {
                let epoch = now_ms / bucket_ms;
                buckets[(epoch % buckets.len() as u64) as usize].record(epoch, failed, slow);
                None
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
                let calls = positions::position(cursor.load(Relaxed)).min(slots.len() as u64);
                Counts::unpack(calls, totals.load(Relaxed))
            }
            Self::Time {
                bucket_ms,
                live,
                buckets,
            } => {
                let current = now_ms / bucket_ms;
                let oldest = current.saturating_sub(live - 1);
                let mut sum = Counts::default();
                for bucket in buckets {
                    if let Some(counts) = bucket.counts(oldest..=current) {
                        sum.add(counts);
                    }
                }
                sum
            }
        }
    }

    /// Whether a thread keeps its batches of positions on this ring and
    /// on `other` in one slot.
    #[cfg(test)]
    pub(crate) fn batches_beside(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Count { lap, .. }, Self::Count { lap: other, .. }) => {
                positions::share_a_slot(lap.load(Relaxed), other.load(Relaxed))
            }
            _ => false,
        }
    }

    /// Forgets every call.
    pub(crate) fn reset(&self) {
        match self {
            Self::Count {
                slots,
                cursor,
                lap,
                verdicts: totals,
                ..
            } => {
                let next = positions::new_lap();
                lap.store(next, Relaxed);
                cursor.store(positions::start(next), Relaxed);
                for slot in slots.iter() {
                    let removed = slot_verdicts(slot.swap(0, Acquire));
                    if removed != 0 {
                        totals.fetch_sub(removed, Relaxed);
                    }
                }
            }
            Self::Time { buckets, .. } => {
                for bucket in buckets {
                    bucket.reset();
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

    /// One thread takes a large ring's positions in batches once it is
    /// full: its counts must stay exactly those of its last `len` calls,
    /// through a reset too.
    #[test]
    fn a_large_ring_on_one_thread_keeps_exactly_its_last_calls() {
        for len in [32_u32, 33, 40, 100, 257] {
            let window = Window::new(SlidingWindow::Count(len));
            let mut model = std::collections::VecDeque::new();
            let mut seed = 0x9e37_79b9_7f4a_7c15_u64 ^ u64::from(len);
            for call in 0..5_000 {
                seed = seed
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let (failed, slow) = (
                    (seed >> 33).is_multiple_of(3),
                    (seed >> 40).is_multiple_of(5),
                );
                let _ = window.record(0, failed, slow);
                model.push_back((failed, slow));
                if model.len() > len as usize {
                    model.pop_front();
                }
                let expected = Counts {
                    calls: model.len() as u64,
                    failures: model.iter().filter(|(failed, _)| *failed).count() as u64,
                    slow: model.iter().filter(|(_, slow)| *slow).count() as u64,
                };
                assert_eq!(window.counts(0), expected, "call {call}, ring of {len}");
                if call == 2_500 {
                    window.reset();
                    model.clear();
                }
            }
        }
    }

    /// A new ring of 60 whose batches take the same slot of a thread as
    /// those of `window`.
    fn beside(window: &Window) -> Window {
        std::iter::repeat_with(|| Window::new(SlidingWindow::Count(60)))
            .find(|other| window.batches_beside(other))
            .unwrap_or_else(|| unreachable!("laps come round every slot"))
    }

    /// One thread turning at random between five rings whose batches
    /// take one slot (as many as a slot keeps debts for) keeps each ring
    /// exactly its last calls: a batch left behind is taken back when the
    /// thread comes back to its ring, so every position holds a call of
    /// its own, in order.
    #[test]
    fn rings_sharing_a_slot_on_one_thread_keep_exactly_their_last_calls() {
        let first = Window::new(SlidingWindow::Count(60));
        let rings = [
            beside(&first),
            beside(&first),
            beside(&first),
            beside(&first),
            first,
        ];
        let mut models: [std::collections::VecDeque<(bool, bool)>; 5] = Default::default();
        let mut seed = 0x853c_49e6_748f_ea9b_u64;
        let mut ring = 0;
        for call in 0..20_000 {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            if (seed >> 20).is_multiple_of(4) {
                ring = ((seed >> 30) % 5) as usize;
            }
            let (failed, slow) = (
                (seed >> 33).is_multiple_of(3),
                (seed >> 40).is_multiple_of(5),
            );
            let _ = rings[ring].record(0, failed, slow);
            let model = &mut models[ring];
            model.push_back((failed, slow));
            if model.len() > 60 {
                model.pop_front();
            }
            let expected = Counts {
                calls: model.len() as u64,
                failures: model.iter().filter(|(failed, _)| *failed).count() as u64,
                slow: model.iter().filter(|(_, slow)| *slow).count() as u64,
            };
            assert_eq!(rings[ring].counts(0), expected, "call {call}, ring {ring}");
        }
    }

    /// A thread that turns, run after run, from a ring to another whose
    /// batch takes the same slot leaves the rest of a batch behind each
    /// time, and when its runs are alike, the same positions lap after
    /// lap: here a run of 8 calls reserves 15 positions (batches of 1, 2,
    /// 4 and 8), and 15 divides the ring. In a total outage those
    /// positions must not keep the successes from before it.
    #[test]
    fn positions_left_behind_lap_after_lap_still_count_an_outage() {
        let window = Window::new(SlidingWindow::Count(60));
        let other = beside(&window);
        for _ in 0..60 {
            let _ = window.record(0, false, false);
        }
        for _ in 0..100 {
            for _ in 0..8 {
                let _ = window.record(0, true, false);
            }
            let _ = other.record(0, true, false);
        }
        assert_eq!(
            window.counts(0),
            Counts {
                calls: 60,
                failures: 60,
                slow: 0
            }
        );
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

    /// 1,199 ms in 600 buckets were buckets of 1 ms: the window kept the
    /// last 600 ms, not the last 1,199.
    #[test]
    fn time_buckets_reach_back_the_whole_duration() {
        let window = Window::new(SlidingWindow::Time {
            duration: Duration::from_millis(1_199),
            buckets: 600,
        });
        window.record(10_000, true, false);
        window.record(11_198, true, false);
        assert_eq!(window.counts(11_198).calls, 2);
    }

    /// Buckets rounded up to 2 ms for 601 ms in 600 would reach back
    /// 1,200 ms: only the 301 latest count.
    #[test]
    fn time_buckets_rounded_up_reach_no_further_than_the_duration() {
        let window = Window::new(SlidingWindow::Time {
            duration: Duration::from_millis(601),
            buckets: 600,
        });
        window.record(10_000, true, false);
        assert_eq!(window.counts(10_601).calls, 1);
        assert_eq!(window.counts(10_602).calls, 0);
    }

    #[test]
    fn time_buckets_do_not_overflow_at_2_pow_21_calls() {
        // 35k calls a second for 60 s land in one bucket.
        let window = Window::new(SlidingWindow::Time {
            duration: Duration::from_secs(60),
            buckets: 1,
        });
        let calls = (1u64 << 21) + 5;
        for i in 0..calls {
            window.record(0, i % 2 == 0, false);
        }
        let counts = window.counts(0);
        assert_eq!(counts.calls, calls);
        assert_eq!(counts.failures, calls.div_ceil(2));
        assert_eq!(counts.slow, 0);
    }
}
