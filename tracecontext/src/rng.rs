//! A fast, non-cryptographic generator for trace and span ids: wyrand, one
//! state per thread, seeded from the operating system's random source.
//!
//! Ids need to be unique and unpredictable enough to avoid collisions, not
//! secret, so a 64-bit generator with a period of 2^64 per thread serves,
//! at about a nanosecond per id.

use std::cell::Cell;

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    // The OS source; should it fail, the address of a thread-local and the
    // clock still make threads and processes differ.
    getrandom::u64().unwrap_or_else(|_| {
        let local = 0u8;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        now ^ (&raw const local as u64).rotate_left(32) ^ u64::from(std::process::id())
    })
}

/// The next 64 random bits of this thread's generator.
pub(crate) fn next_u64() -> u64 {
    STATE.with(|state| {
        let s = state.get().wrapping_add(0xa076_1d64_78bd_642f);
        state.set(s);
        let t = u128::from(s) * u128::from(s ^ 0xe703_7ed1_a0b4_28db);
        (t as u64) ^ ((t >> 64) as u64)
    })
}
