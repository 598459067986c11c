//! The local store against the reference token bucket under arbitrary
//! (key, cost, time) sequences: every decision, remaining count and wait
//! must match.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use palisade_token_bucket::{Bucket, LocalStore};

#[path = "../../token-bucket/tests/support/model.rs"]
mod model;

/// Rates whose refill interval is a whole number of nanoseconds.
const RATES: [f64; 8] = [1.0, 2.0, 5.0, 8.0, 10.0, 100.0, 1000.0, 0.5];

fuzz_target!(|input: (u8, u8, Vec<(u8, u8, u32)>)| {
    let (capacity, rate, steps) = input;
    let capacity = u32::from(capacity % 50) + 1;
    let bucket = Bucket::new(capacity, RATES[usize::from(rate) % RATES.len()]).unwrap();
    let interval = u64::try_from(bucket.interval().as_nanos()).unwrap();
    let mut model = model::Model::new(capacity, interval);
    // Room for every key: the overflow bucket (shared by keys past the
    // bound) is a different model, tested in token-bucket/tests/local.rs.
    let store = LocalStore::new(1024);
    let mut now = 0u64;
    for (key, cost, advance_us) in steps {
        now += u64::from(advance_us) * 1000;
        let key = u32::from(key % 8);
        let cost = u32::from(cost % 60);
        let expected = model.decide(key, cost, now);
        // Odd keys are longer than the store keeps as they are: hashed.
        let name = if key % 2 == 1 {
            format!("{key}:{}", "x".repeat(palisade_token_bucket::MAX_KEY_BYTES))
        } else {
            key.to_string()
        };
        let got = store.decide_at(&name, &bucket, cost, Duration::from_nanos(now));
        assert_eq!(
            got.is_allowed(),
            expected.allowed,
            "key {key} cost {cost} at {now}"
        );
        assert_eq!(u64::from(got.remaining()), expected.remaining);
        let wait = expected
            .retry_after
            .map_or(Duration::MAX, Duration::from_nanos);
        assert_eq!(got.retry_after(), wait);
    }
});
