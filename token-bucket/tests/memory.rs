//! The in-process store's memory is bounded in bytes, not only in keys: a
//! client sending an 8 KiB API key must not make its entry 8 KiB.
//!
//! One test in this binary, so the process's resident memory is its own.
#![cfg(target_os = "linux")]

use std::time::Duration;

use palisade_token_bucket::{Bucket, LocalStore};

/// The process's resident memory, in bytes.
fn resident() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[test]
fn long_keys_are_bounded_in_bytes_not_only_in_count() {
    const KEYS: usize = 4000;
    const KEY_BYTES: usize = 16 * 1024;
    let store = LocalStore::new(2 * KEYS);
    let bucket = Bucket::new(10, 1.0).unwrap();
    let mut key = vec![b'k'; KEY_BYTES];
    let before = resident();
    for i in 0..KEYS {
        // A distinct 16 KiB key each time, made in one reused buffer.
        key[..16].copy_from_slice(format!("{i:016}").as_bytes());
        let key = std::str::from_utf8(&key).unwrap();
        let _ = store.decide_at(key, &bucket, 1, Duration::ZERO);
    }
    assert_eq!(store.len(), KEYS, "every key remembered");
    let grown = resident().saturating_sub(before);
    // Kept whole, 4000 keys of 16 KiB would be 64 MiB.
    assert!(
        grown < 8 * 1024 * 1024,
        "{} KiB for {} keys",
        grown / 1024,
        store.len()
    );
}
