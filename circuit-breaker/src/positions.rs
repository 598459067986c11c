//! Where a ring's calls land: positions handed out by the ring's cursor,
//! one at a time, or a batch at a time to a thread that keeps coming back
//! to the ring.
//!
//! A cursor every call moves is a cache line every calling thread writes:
//! two threads sharing a breaker would take turns owning it on every call.
//! So a thread whose calls keep coming back to one full ring reserves
//! its next positions with one compare-and-swap on the cursor (two, then
//! four, up to a quarter of the ring or 64) and takes them one by one
//! with no shared write at all.
//!
//! What it costs the window: a position reserved and not yet taken keeps
//! the verdict its slot had before, so under concurrency the ring is the
//! last `len` calls with up to a batch per calling thread and ring
//! replaced by older ones (a lap older, or more if the thread then paused
//! or called other rings while the others went round); and a thread that
//! comes back to its batch late writes over newer verdicts. A batch is
//! taken only from a full ring of the lap the thread last saw there, lap
//! and position checked in one compare-and-swap, so a reset never gains
//! calls nobody made.
//!
//! A thread keeps its batches in 16 batch slots, a ring's chosen by its
//! lap, so a thread calling a few rings in turn (a keyed layer's breakers)
//! keeps a batch on each. A ring that takes a batch slot from another
//! leaves that ring's batch behind, and the batch slot keeps it, owed:
//! when the thread comes back to that ring, its calls take the positions
//! left behind that the window still holds (those whose ring slot the
//! cursor has not handed on, in the same lap) before any new one. Left
//! unwritten, a thread whose runs on a ring kept ending alike would leave
//! the same positions behind lap after lap, and they would keep their
//! verdicts for good: in an outage, the successes from before it.
//!
//! A batch slot keeps the last four batches left behind in it, so one
//! thread's calls on a ring fill its positions in order while it turns
//! among up to five rings (laps: a ring reset since counts again) whose
//! batches share a batch slot. A ring's debt is lost when four other
//! batches are left in its batch slot after it before the thread comes
//! back, or when the thread never comes back; the cursor hands those
//! positions' ring slots on within a lap, and only a thread turning in
//! step among six or more rings of one batch slot could leave the same
//! positions behind lap after lap, a known limit. Batches start at one
//! and double only while a thread keeps coming back to a ring. A ring
//! still filling (after its creation or a reset) takes positions one at a
//! time, so its call count is exact, and rings of fewer than 32 calls
//! never batch.

use std::cell::Cell;
// The laps are counted outside the model checker's world.
use std::sync::atomic::AtomicU64 as ProcessCounter;

use crate::sync::AtomicU64;
use crate::sync::Ordering::Relaxed;

/// Rings smaller than this take one position per call.
const SMALLEST_BATCHED: u64 = 32;
/// The largest batch, whatever the ring.
const LARGEST_BATCH: u64 = 64;
/// The rings a thread keeps a batch on at once.
const SLOTS: usize = 16;
/// A cursor word is the ring's lap (its low 16 bits, on top) and the next
/// position (48 bits: a ring would need years of calls at millions a
/// second to run them out).
const POSITION_BITS: u32 = 48;
const POSITION_MASK: u64 = (1 << POSITION_BITS) - 1;

/// Identifies a ring and its lap since the last reset, across the process
/// (0 is no ring).
static LAPS: ProcessCounter = ProcessCounter::new(1);

/// A lap no ring has had: for a new ring, and for one just reset (a
/// thread's batch from before the reset is then dropped, not spent in the
/// emptied ring).
pub(crate) fn new_lap() -> u64 {
    LAPS.fetch_add(1, Relaxed)
}

/// The cursor word of a ring starting lap `lap`: position 0. A reset is
/// one store of it, so no thread sees the new position with the old lap
/// or the reverse.
pub(crate) const fn start(lap: u64) -> u64 {
    lap << POSITION_BITS
}

/// The position in cursor word `word`.
pub(crate) const fn position(word: u64) -> u64 {
    word & POSITION_MASK
}

/// Whether cursor word `word` is of lap `lap`.
const fn of_lap(word: u64, lap: u64) -> bool {
    word >> POSITION_BITS == lap & (u64::MAX >> POSITION_BITS)
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

impl Reserved {
    const NOTHING: Self = Self {
        lap: 0,
        next: 0,
        end: 0,
        batch: 0,
    };

    /// One position taken alone on the ring of `lap`, none reserved.
    const fn one(lap: u64) -> Self {
        Self {
            lap,
            next: 0,
            end: 0,
            batch: 1,
        }
    }

    const fn is_unfinished(&self) -> bool {
        self.next < self.end
    }
}

/// The batches a thread keeps owing in each batch slot.
const OWED: usize = 4;

/// A thread's batch slots: in each, its batch on a ring, and the batches
/// it left behind there when another ring took the batch slot, most
/// recent first. (Two arrays, so a call finds its batch at a shift of its
/// batch slot's number.)
struct Slots {
    reserved: [Cell<Reserved>; SLOTS],
    owed: [[Cell<Reserved>; OWED]; SLOTS],
}

thread_local! {
    static SLOTS_OF_THREAD: Slots = const {
        Slots {
            reserved: [const { Cell::new(Reserved::NOTHING) }; SLOTS],
            owed: [const { [const { Cell::new(Reserved::NOTHING) }; OWED] }; SLOTS],
        }
    };
}

/// The position of a call in the ring of `len` slots whose cursor word is
/// `cursor` and lap `lap`.
#[inline]
pub(crate) fn next(cursor: &AtomicU64, lap: &AtomicU64, len: u64) -> u64 {
    // The model checker explores the cursor's races, one call at a time.
    if cfg!(palisade_loom) || len < SMALLEST_BATCHED {
        return position(cursor.fetch_add(1, Relaxed));
    }
    let lap = lap.load(Relaxed);
    SLOTS_OF_THREAD.with(|slots| {
        // Laps are numbered in turn, so rings made one after another (a
        // keyed registry's first keys) take different slots; rings reset
        // since, or made among others, may share one.
        let at = (lap % SLOTS as u64) as usize;
        let reserved = &slots.reserved[at];
        let mut held = reserved.get();
        if held.lap == lap && held.is_unfinished() {
            held.next += 1;
            reserved.set(held);
            return held.next - 1;
        }
        next_unreserved(cursor, slots, at, lap, len)
    })
}

/// The position of a call on the ring of `lap` whose thread holds no
/// position reserved there, in its batch slot `at`: a new batch, a batch
/// it left behind, or one position. Out of line, so the call path keeps
/// only the look at the batch (and keeps it in registers: what the batch
/// slot holds is read again here).
#[inline(never)]
fn next_unreserved(cursor: &AtomicU64, slots: &Slots, at: usize, lap: u64, len: u64) -> u64 {
    let reserved = &slots.reserved[at];
    let held = reserved.get();
    if held.lap == lap {
        if let Some(first) = take_batch(cursor, reserved, held, len) {
            return first;
        }
    } else if let Some(first) = turn(cursor, reserved, &slots.owed[at], held, lap, len) {
        return first;
    }
    reserved.set(Reserved::one(lap));
    position(cursor.fetch_add(1, Relaxed))
}

/// Reserves the next batch of positions on the ring of `held`'s lap for
/// a thread whose last call was on it, and takes the first; none when
/// the ring is not full, or is being reset, or its cursor moved under.
///
/// Only a full ring of this very lap gives a batch: lap and position are
/// checked and moved in one compare-and-swap, so a batch is never taken
/// from a ring being reset (its positions would count as calls nobody
/// made).
fn take_batch(
    cursor: &AtomicU64,
    reserved: &Cell<Reserved>,
    held: Reserved,
    len: u64,
) -> Option<u64> {
    let seen = cursor.load(Relaxed);
    let first = position(seen);
    if !of_lap(seen, held.lap) || first < len {
        return None;
    }
    let batch = held
        .batch
        .saturating_mul(2)
        .clamp(2, (len / 4).min(LARGEST_BATCH));
    cursor
        .compare_exchange(seen, seen + batch, Relaxed, Relaxed)
        .ok()?;
    reserved.set(Reserved {
        lap: held.lap,
        next: first + 1,
        end: first + batch,
        batch,
    });
    Some(first)
}

/// A call on the ring of `lap` taking a batch slot whose last call,
/// `held`, was on another ring. That ring's unfinished batch is left
/// behind, owed until the thread comes back to it (the batch slot keeps
/// the last [`OWED`]), and the batch this ring was owed, if any, is the
/// call's again: it takes its first position still in the window, and
/// its calls take the rest. None when this ring is owed nothing the
/// window still holds.
///
/// A position is still in the window while the cursor has not handed on
/// its ring slot (its position plus `len`), and only in the lap it was
/// reserved in: a ring reset since is owed nothing.
fn turn(
    cursor: &AtomicU64,
    reserved: &Cell<Reserved>,
    owed: &[Cell<Reserved>; OWED],
    held: Reserved,
    lap: u64,
    len: u64,
) -> Option<u64> {
    let debt = owed
        .iter()
        .find(|debt| debt.get().lap == lap)
        .map(|debt| debt.replace(Reserved::NOTHING));
    if held.is_unfinished() {
        // The oldest debt, or a paid one, makes room.
        let free = owed
            .iter()
            .position(|debt| debt.get().lap == 0)
            .unwrap_or(OWED - 1);
        for at in (1..=free).rev() {
            owed[at].set(owed[at - 1].get());
        }
        owed[0].set(held);
    }
    let debt = debt?;
    let seen = cursor.load(Relaxed);
    if !of_lap(seen, lap) {
        return None;
    }
    let first = debt.next.max(position(seen).saturating_sub(len));
    (first < debt.end).then(|| {
        reserved.set(Reserved {
            next: first + 1,
            ..debt
        });
        first
    })
}

/// Whether a thread keeps its batches on the rings of laps `a` and `b`
/// in one slot.
#[cfg(test)]
pub(crate) const fn share_a_slot(a: u64, b: u64) -> bool {
    a % SLOTS as u64 == b % SLOTS as u64
}

#[cfg(all(test, not(palisade_loom)))]
mod tests {
    use super::*;

    /// A ring's cursor word and lap, at `position`.
    fn ring(at: u64) -> (AtomicU64, AtomicU64) {
        let lap = new_lap();
        (AtomicU64::new(start(lap) + at), AtomicU64::new(lap))
    }

    fn at(cursor: &AtomicU64) -> u64 {
        position(cursor.load(Relaxed))
    }

    /// The position of a call in a ring of 100.
    fn take(cursor: &AtomicU64, lap: &AtomicU64) -> u64 {
        next(cursor, lap, 100)
    }

    #[test]
    fn one_thread_takes_every_position_in_order() {
        let (cursor, lap) = ring(0);
        for expected in 0..1_000 {
            assert_eq!(take(&cursor, &lap), expected);
        }
        assert!(at(&cursor) >= 1_000);
    }

    #[test]
    fn a_filling_ring_counts_one_position_per_call() {
        let (cursor, lap) = ring(0);
        for _ in 0..100 {
            let _ = take(&cursor, &lap);
        }
        assert_eq!(at(&cursor), 100);
    }

    /// A ring's cursor word and lap, at `position`, whose slot is
    /// `apart` slots on from the slot of the ring of `lap`: a new lap
    /// (skipping those that fall elsewhere), no other ring's.
    fn ring_after(lap: &AtomicU64, apart: u64, at: u64) -> (AtomicU64, AtomicU64) {
        let wanted = lap.load(Relaxed) + apart;
        let lap = std::iter::repeat_with(new_lap)
            .find(|&lap| share_a_slot(lap, wanted))
            .unwrap_or_default();
        (AtomicU64::new(start(lap) + at), AtomicU64::new(lap))
    }

    #[test]
    fn turning_between_rings_keeps_a_batch_on_each() {
        let first = ring(500);
        let rings = [ring_after(&first.1, 1, 500), first];
        for round in 0..50 {
            for (cursor, lap) in &rings {
                assert_eq!(take(cursor, lap), 500 + round);
            }
        }
        for (cursor, _) in &rings {
            assert!(at(cursor) > 550, "batches reserved");
            assert!(at(cursor) <= 550 + 25, "no more than a quarter ahead");
        }
    }

    #[test]
    fn rings_turning_in_one_slot_take_one_position_at_a_time() {
        let first = ring(500);
        let rings = [ring_after(&first.1, SLOTS as u64, 500), first];
        for round in 0..50 {
            for (cursor, lap) in &rings {
                assert_eq!(take(cursor, lap), 500 + round);
            }
        }
        for (cursor, _) in &rings {
            assert_eq!(at(cursor), 550, "nothing reserved and left");
        }
    }

    /// Four calls on a full ring at 500 (one, a batch of two, the first
    /// of a batch of four) leave 504..507 reserved; a ring in the same
    /// slot then takes it. The cursors of the first ring and of that one.
    fn left_behind_by_a_turn() -> ((AtomicU64, AtomicU64), (AtomicU64, AtomicU64)) {
        let first = ring(500);
        let other = ring_after(&first.1, SLOTS as u64, 500);
        for expected in 500..504 {
            assert_eq!(take(&first.0, &first.1), expected);
        }
        assert_eq!(at(&first.0), 507);
        assert_eq!(take(&other.0, &other.1), 500);
        (first, other)
    }

    #[test]
    fn a_thread_back_on_a_ring_takes_the_positions_it_left_behind() {
        let (first, _other) = left_behind_by_a_turn();
        for expected in 504..507 {
            assert_eq!(take(&first.0, &first.1), expected);
        }
        assert_eq!(at(&first.0), 507, "no position taken from the cursor");
        assert_eq!(take(&first.0, &first.1), 507, "then a batch");
        assert!(at(&first.0) > 508);
    }

    #[test]
    fn a_slot_owes_several_rings_at_once() {
        let (first, other) = left_behind_by_a_turn();
        // The second ring leaves a batch behind too (one call, then the
        // first of a batch of two), and a third turns the slot again.
        assert_eq!(take(&other.0, &other.1), 501);
        let third = ring_after(&first.1, 2 * SLOTS as u64, 500);
        assert_eq!(take(&third.0, &third.1), 500);
        assert_eq!(take(&first.0, &first.1), 504);
        assert_eq!(take(&other.0, &other.1), 502);
        assert_eq!(at(&other.0), 503);
    }

    #[test]
    fn positions_left_behind_whose_slots_were_handed_on_are_not_taken_back() {
        let (first, _other) = left_behind_by_a_turn();
        // Other threads take 98 positions: the cursor has handed on the
        // slot of 504 (as 604), not yet that of 505.
        first.0.fetch_add(98, Relaxed);
        assert_eq!(take(&first.0, &first.1), 505);
        assert_eq!(take(&first.0, &first.1), 506);
        assert_eq!(at(&first.0), 605);
    }

    #[test]
    fn a_ring_reset_since_is_owed_nothing() {
        let (first, _other) = left_behind_by_a_turn();
        // A new lap in the same slot, so a debt of the old one would be
        // in sight.
        let (_, new) = ring_after(&first.1, SLOTS as u64, 0);
        let new = new.load(Relaxed);
        first.1.store(new, Relaxed);
        first.0.store(start(new), Relaxed);
        assert_eq!(take(&first.0, &first.1), 0);
        assert_eq!(at(&first.0), 1);
    }

    #[test]
    fn a_call_that_read_the_lap_before_a_reset_is_owed_nothing() {
        let (first, _other) = left_behind_by_a_turn();
        // The ring is reset under a call that still reads the old lap.
        first.0.store(start(new_lap()), Relaxed);
        assert_eq!(take(&first.0, &first.1), 0);
        assert_eq!(at(&first.0), 1, "one position, counted");
    }

    #[test]
    fn a_new_lap_drops_the_batch_of_the_last() {
        let (cursor, lap) = ring(0);
        for _ in 0..150 {
            let _ = take(&cursor, &lap);
        }
        assert!(at(&cursor) > 150, "batches once full");
        let new = new_lap();
        lap.store(new, Relaxed);
        cursor.store(start(new), Relaxed);
        assert_eq!(take(&cursor, &lap), 0);
        assert_eq!(take(&cursor, &lap), 1);
        assert_eq!(at(&cursor), 2);
    }

    #[test]
    fn a_ring_reset_under_a_thread_that_saw_the_old_lap_gives_it_no_batch() {
        let (cursor, lap) = ring(0);
        // Full, and this thread's batch spent: its next call would take
        // a batch.
        while at(&cursor) < 200 {
            let _ = take(&cursor, &lap);
        }
        while take(&cursor, &lap) + 1 < at(&cursor) {}
        // The ring is reset, and this thread still reads the old lap.
        cursor.store(start(new_lap()), Relaxed);
        let _ = take(&cursor, &lap);
        assert_eq!(at(&cursor), 1, "one position, counted, no batch");
    }

    #[test]
    fn threads_turning_between_rings_of_one_slot_share_out_distinct_positions() {
        let first = ring(0);
        let other = ring_after(&first.1, SLOTS as u64, 0);
        let rings = [&first, &other];
        let taken: Vec<Vec<(usize, u64)>> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..4_u64)
                .map(|thread| {
                    scope.spawn(move || {
                        (0..20_000_u64)
                            .map(|call| {
                                let at = usize::from(call.is_multiple_of(thread + 3));
                                (at, take(&rings[at].0, &rings[at].1))
                            })
                            .collect()
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let mut all: Vec<(usize, u64)> = taken.into_iter().flatten().collect();
        all.sort_unstable();
        let count = all.len();
        all.dedup();
        assert_eq!(all.len(), count, "no position taken twice");
        for (at, (cursor, _)) in rings.iter().enumerate() {
            assert!(
                all.iter()
                    .all(|&(ring, position)| ring != at || position < self::at(cursor))
            );
        }
    }

    #[test]
    fn threads_share_out_distinct_positions() {
        let (cursor, lap) = ring(0);
        let taken: Vec<Vec<u64>> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| (0..5_000).map(|_| take(&cursor, &lap)).collect()))
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let mut all: Vec<u64> = taken.into_iter().flatten().collect();
        all.sort_unstable();
        let count = all.len();
        all.dedup();
        assert_eq!(all.len(), count, "no position taken twice");
        assert!(at(&cursor) >= 20_000);
    }
}
