//! Rolling counts of good and bad calls in fixed memory: a ring of time
//! buckets, each counter tagged with the bucket it counts.

use std::sync::atomic::{AtomicU64, Ordering};

/// The most calls a bucket counts each millisecond of its length, as a
/// power of two: 2^20, about a billion calls a second. A counter word
/// keeps as many bits for its count as its bucket's length needs for that
/// rate, and the rest for its tag, so tags wrap only after 2^43 to 2^44
/// ms (over 250 years; half that is as far apart as two tags can be told
/// in order) whatever the bucket length.
const CALLS_PER_MS_BITS: u32 = 20;

/// Good and bad calls over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Calls that met the objective.
    pub good: u64,
    /// Calls that did not.
    pub bad: u64,
}

impl Counts {
    /// Every call counted.
    #[must_use]
    pub const fn total(&self) -> u64 {
        self.good.saturating_add(self.bad)
    }

    /// The share of calls that were bad (0 when there were none).
    #[must_use]
    pub fn bad_ratio(&self) -> f64 {
        match self.total() {
            0 => 0.0,
            // Counts far below 2^52: exact as floats.
            #[allow(clippy::cast_precision_loss)]
            total => self.bad as f64 / total as f64,
        }
    }
}

/// One bucket: its good and its bad calls, each a word whose top bits tag
/// the bucket number it counts, so a bucket left from an earlier lap of
/// the ring reads as empty and is restarted by the first call of the new
/// one. No lock, no reset pass.
#[derive(Debug, Default)]
struct Slot {
    good: AtomicU64,
    bad: AtomicU64,
}

/// A ring of buckets of `resolution_ms` each, a power of two of them (a
/// bucket's slot is a mask away, not a division).
#[derive(Debug)]
pub(crate) struct Ring {
    resolution_ms: u64,
    mask: u64,
    /// How a counter word splits into count and tag.
    word: Word,
    slots: Box<[Slot]>,
}

/// The split of a counter word: its low `count_bits` count, the rest tag
/// the bucket number (modulo the tag's width).
#[derive(Debug, Clone, Copy)]
struct Word {
    count_bits: u32,
}

impl Word {
    /// Counts wide enough for 2^20 calls a millisecond of `resolution_ms`.
    const fn for_buckets_of(resolution_ms: u64) -> Self {
        let length_bits = u64::BITS - resolution_ms.saturating_sub(1).leading_zeros();
        let count_bits = CALLS_PER_MS_BITS + length_bits;
        Self {
            // At least 8 bits of tag, whatever the length (a length of
            // 2^36 ms and more is far past any objective's window).
            count_bits: if count_bits > 56 { 56 } else { count_bits },
        }
    }

    const fn tag_mask(self) -> u64 {
        (1 << (u64::BITS - self.count_bits)) - 1
    }

    const fn count_mask(self) -> u64 {
        (1 << self.count_bits) - 1
    }

    const fn tag(self, bucket: u64) -> u64 {
        bucket & self.tag_mask()
    }

    /// The tag of `word`.
    const fn tag_of(self, word: u64) -> u64 {
        word >> self.count_bits
    }

    /// A word counting one call of the bucket tagged `tag`.
    const fn first(self, tag: u64) -> u64 {
        (tag << self.count_bits) | 1
    }

    /// Whether tag `ours` is of a later bucket than tag `theirs` (tags
    /// wrap).
    const fn is_later(self, ours: u64, theirs: u64) -> bool {
        let ahead = ours.wrapping_sub(theirs) & self.tag_mask();
        ahead != 0 && ahead < self.tag_mask() / 2
    }

    /// Adds one to `word` for the bucket tagged `tag`.
    fn bump(self, word: &AtomicU64, tag: u64) {
        let mut seen = word.load(Ordering::Relaxed);
        loop {
            let theirs = self.tag_of(seen);
            if theirs == tag {
                // The tag can change under this add only when the ring
                // has gone a whole lap since the load (minutes at least).
                word.fetch_add(1, Ordering::Relaxed);
                return;
            }
            if !self.is_later(tag, theirs) && seen != 0 {
                // A call from a bucket the ring has already gone past a
                // lap beyond: older than any window, counted nowhere.
                return;
            }
            match word.compare_exchange_weak(
                seen,
                self.first(tag),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(now) => seen = now,
            }
        }
    }

    /// The count `word` holds for the bucket tagged `tag`; 0 if it holds
    /// an other bucket's.
    fn read(self, word: &AtomicU64, tag: u64) -> u64 {
        let word = word.load(Ordering::Relaxed);
        if self.tag_of(word) == tag {
            word & self.count_mask()
        } else {
            0
        }
    }
}

impl Ring {
    /// A ring of at least `len` buckets.
    pub(crate) fn new(resolution_ms: u64, len: usize) -> Self {
        let len = len.next_power_of_two();
        Self {
            resolution_ms,
            mask: len as u64 - 1,
            word: Word::for_buckets_of(resolution_ms),
            slots: (0..len).map(|_| Slot::default()).collect(),
        }
    }

    pub(crate) const fn resolution_ms(&self) -> u64 {
        self.resolution_ms
    }

    /// How many buckets the ring holds.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    fn slot(&self, bucket: u64) -> &Slot {
        // Masked below the length, a `usize`.
        #[allow(clippy::cast_possible_truncation)]
        &self.slots[(bucket & self.mask) as usize]
    }

    /// Counts a call that ended at `at_ms` (milliseconds since the epoch).
    pub(crate) fn record(&self, at_ms: u64, good: bool) {
        let bucket = at_ms / self.resolution_ms;
        let slot = self.slot(bucket);
        let word = self.word;
        word.bump(if good { &slot.good } else { &slot.bad }, word.tag(bucket));
    }

    /// The bucket holding `at_ms`.
    #[cfg(feature = "redis")]
    pub(crate) const fn bucket_of(&self, at_ms: u64) -> u64 {
        at_ms / self.resolution_ms
    }

    /// The calls of bucket `bucket` (none if the ring has gone past it).
    #[cfg(feature = "redis")]
    pub(crate) fn bucket_counts(&self, bucket: u64) -> Counts {
        let (slot, word) = (self.slot(bucket), self.word);
        Counts {
            good: word.read(&slot.good, word.tag(bucket)),
            bad: word.read(&slot.bad, word.tag(bucket)),
        }
    }

    /// The calls of the `buckets` buckets up to the one holding `at_ms`.
    pub(crate) fn counts(&self, at_ms: u64, buckets: usize) -> Counts {
        let last = at_ms / self.resolution_ms;
        let buckets = buckets.min(self.slots.len()) as u64;
        let mut counts = Counts::default();
        for bucket in last.saturating_sub(buckets - 1)..=last {
            let (slot, word) = (self.slot(bucket), self.word);
            counts.good += word.read(&slot.good, word.tag(bucket));
            counts.bad += word.read(&slot.bad, word.tag(bucket));
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn counts_near_the_limit_saturate() {
        let counts = Counts {
            good: u64::MAX,
            bad: 1,
        };
        assert_eq!(counts.total(), u64::MAX);
        assert!(counts.bad_ratio() < 1e-9);
    }

    #[test]
    fn a_bucket_of_an_earlier_lap_reads_empty_and_restarts() {
        let ring = Ring::new(1_000, 4);
        ring.record(500, true);
        ring.record(900, false);
        assert_eq!(ring.counts(900, 1), Counts { good: 1, bad: 1 });
        // Four buckets later the same slot counts a new bucket.
        assert_eq!(ring.counts(4_100, 4), Counts::default());
        ring.record(4_100, true);
        assert_eq!(ring.counts(4_100, 1), Counts { good: 1, bad: 0 });
        // A late call from the old bucket is older than the ring: dropped.
        ring.record(600, true);
        assert_eq!(ring.counts(4_100, 4), Counts { good: 1, bad: 0 });
    }

    #[test]
    fn tags_compare_across_their_wrap() {
        let word = Word::for_buckets_of(1_000);
        assert!(word.is_later(0, word.tag_mask()));
        assert!(word.is_later(5, 3));
        assert!(!word.is_later(3, 5));
        assert!(!word.is_later(3, 3));
    }

    #[test]
    fn counts_are_wide_enough_for_a_billion_calls_a_second() {
        for resolution_ms in [1, 1_000, 1_024, 3_600_000, 48 * 3_600_000] {
            let word = Word::for_buckets_of(resolution_ms);
            assert!(
                word.count_mask() >= resolution_ms * 1_000_000,
                "{resolution_ms} ms"
            );
            let tag_span_ms = (word.tag_mask() + 1).saturating_mul(resolution_ms);
            assert!(
                tag_span_ms >= 1 << 43,
                "{resolution_ms} ms: tags wrap too soon"
            );
        }
    }

    #[test]
    fn a_slot_left_idle_for_a_year_counts_again() {
        // A slot of a one-second ring that no call reached for a year
        // (a service called now and then): its next call counts (24-bit
        // tags, half round since, took it for a late call and dropped it),
        // and an old call is not read as a new one.
        let ring = Ring::new(1_000, 4);
        ring.record(0, true);
        let year_ms = 366 * 86_400_000;
        ring.record(year_ms, true);
        assert_eq!(ring.counts(year_ms, 4), Counts { good: 1, bad: 0 });
        // Where 24-bit tags came round again, 2^24 s on: nothing counted.
        let ring = Ring::new(1_000, 4);
        ring.record(0, false);
        assert_eq!(ring.counts((1 << 24) * 1_000, 1), Counts::default());
    }

    proptest! {
        /// Against a model that keeps every call: the counts of any window
        /// the ring spans are exact at any time after the calls.
        #[test]
        fn counts_match_a_model_that_keeps_every_call(
            calls in proptest::collection::vec((0_u64..60_000, any::<bool>()), 0..300),
            len in 1_usize..20,
            resolution_ms in 1_u64..5_000,
            read_after in 0_u64..10_000,
            buckets in 1_usize..25,
        ) {
            let ring = Ring::new(resolution_ms, len);
            let mut calls = calls;
            calls.sort_unstable();
            for &(at, good) in &calls {
                ring.record(at, good);
            }
            let now = calls.last().map_or(0, |&(at, _)| at) + read_after;
            let last = now / resolution_ms;
            let spanned = buckets.min(len.next_power_of_two()) as u64;
            let first = last.saturating_sub(spanned - 1);
            let mut expected = Counts::default();
            for &(at, good) in &calls {
                let bucket = at / resolution_ms;
                if (first..=last).contains(&bucket) {
                    if good { expected.good += 1 } else { expected.bad += 1 }
                }
            }
            prop_assert_eq!(ring.counts(now, buckets), expected);
        }
    }
}
