//! Where a ring's calls land: positions handed out by the ring's cursor,
//! one at a time, or a batch at a time to a thread that keeps calling the
//! same ring.
//!
//! A cursor every call moves is a cache line every calling thread writes:
//! two threads sharing a breaker would take turns owning it on every call.
//! So a thread whose calls follow one another on one full ring reserves
//! its next positions with one `fetch_add` (two, then four, up to a
//! quarter of the ring or 64) and takes them one by one with no shared
//! write at all.
//!
//! What it costs the window: a position reserved and not yet taken keeps
//! the verdict the slot had one lap before, so under concurrency the ring
//! is the last `len` calls with up to a batch per calling thread from the
//! lap before. A thread that turns to another ring leaves the rest of its
//! batch behind, which is why batches start at one and double only while
//! a thread stays on one ring. A ring still filling (after its creation or
//! a reset) takes positions one at a time, so its call count is exact, and
//! rings of fewer than 32 calls never batch.

use std::cell::Cell;
// The laps are counted outside the model checker's world.
use std::sync::atomic::AtomicU64 as ProcessCounter;

use crate::sync::AtomicU64;
use crate::sync::Ordering::Relaxed;

/// Rings smaller than this take one position per call.
const SMALLEST_BATCHED: u64 = 32;
/// The largest batch, whatever the ring.
const LARGEST_BATCH: u64 = 64;

/// Identifies a ring and its lap since the last reset, across the process
/// (0 is no ring).
static LAPS: ProcessCounter = ProcessCounter::new(1);

/// A lap no ring has had: for a new ring, and for one just reset (a
/// thread's batch from before the reset is then dropped, not spent in the
/// emptied ring).
pub(crate) fn new_lap() -> u64 {
    LAPS.fetch_add(1, Relaxed)
}

/// The positions this thread reserved: `next..end` in the ring at `lap`,
/// from a batch of `batch`.
#[derive(Debug, Clone, Copy)]
struct Reserved {
    lap: u64,
    next: u64,
    end: u64,
    batch: u64,
}

thread_local! {
    static RESERVED: Cell<Reserved> = const {
        Cell::new(Reserved { lap: 0, next: 0, end: 0, batch: 0 })
    };
}

/// The position of a call in the ring of `len` slots whose cursor is
/// `cursor` and lap `lap`.
pub(crate) fn next(cursor: &AtomicU64, lap: &AtomicU64, len: u64) -> u64 {
    // The model checker explores the cursor's races, one call at a time.
    if cfg!(palisade_loom) || len < SMALLEST_BATCHED {
        return cursor.fetch_add(1, Relaxed);
    }
    let lap = lap.load(Relaxed);
    RESERVED.with(|reserved| {
        let mut held = reserved.get();
        if held.lap == lap && held.next < held.end {
            held.next += 1;
            reserved.set(held);
            return held.next - 1;
        }
        // Only a thread whose last call was on this ring, once the ring is
        // full, takes more than one (a batch of this lap says it is full:
        // the cursor is a line the other threads write).
        let batch = if held.lap == lap && (held.batch > 1 || cursor.load(Relaxed) >= len) {
            held.batch
                .saturating_mul(2)
                .clamp(1, (len / 4).min(LARGEST_BATCH))
        } else {
            1
        };
        let first = cursor.fetch_add(batch, Relaxed);
        reserved.set(Reserved {
            lap,
            next: first + 1,
            end: first + batch,
            batch,
        });
        first
    })
}

#[cfg(all(test, not(palisade_loom)))]
mod tests {
    use super::*;

    #[test]
    fn one_thread_takes_every_position_in_order() {
        let (cursor, lap) = (AtomicU64::new(0), AtomicU64::new(new_lap()));
        for expected in 0..1_000 {
            assert_eq!(next(&cursor, &lap, 100), expected);
        }
        assert!(cursor.load(Relaxed) >= 1_000);
    }

    #[test]
    fn a_filling_ring_counts_one_position_per_call() {
        let (cursor, lap) = (AtomicU64::new(0), AtomicU64::new(new_lap()));
        for _ in 0..100 {
            let _ = next(&cursor, &lap, 100);
        }
        assert_eq!(cursor.load(Relaxed), 100);
    }

    #[test]
    fn turning_between_rings_takes_one_position_at_a_time() {
        let rings: Vec<_> = (0..2)
            .map(|_| (AtomicU64::new(500), AtomicU64::new(new_lap())))
            .collect();
        for round in 0..50 {
            for (cursor, lap) in &rings {
                assert_eq!(next(cursor, lap, 100), 500 + round);
            }
        }
        for (cursor, _) in &rings {
            assert_eq!(cursor.load(Relaxed), 550, "nothing reserved and left");
        }
    }

    #[test]
    fn a_new_lap_drops_the_batch_of_the_last() {
        let (cursor, lap) = (AtomicU64::new(0), AtomicU64::new(new_lap()));
        for _ in 0..150 {
            let _ = next(&cursor, &lap, 100);
        }
        assert!(cursor.load(Relaxed) > 150, "batches once full");
        lap.store(new_lap(), Relaxed);
        cursor.store(0, Relaxed);
        assert_eq!(next(&cursor, &lap, 100), 0);
        assert_eq!(next(&cursor, &lap, 100), 1);
        assert_eq!(cursor.load(Relaxed), 2);
    }

    #[test]
    fn threads_share_out_distinct_positions() {
        let (cursor, lap) = (AtomicU64::new(0), AtomicU64::new(new_lap()));
        let taken: Vec<Vec<u64>> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| (0..5_000).map(|_| next(&cursor, &lap, 100)).collect()))
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let mut all: Vec<u64> = taken.into_iter().flatten().collect();
        all.sort_unstable();
        let count = all.len();
        all.dedup();
        assert_eq!(all.len(), count, "no position taken twice");
        assert!(cursor.load(Relaxed) >= 20_000);
    }
}
