//! The textbook token bucket, kept as plain integers: a reference the
//! stores are checked against (by proptest here, and by the fuzz target
//! `token_bucket_model`, which includes this file).

use std::collections::HashMap;

/// One bucket: its credit in nanoseconds of refill (tokens × interval),
/// refilled by the time passed and capped at capacity × interval.
#[derive(Debug, Clone, Copy)]
struct ModelBucket {
    credit: u64,
    at: u64,
}

/// What the reference says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ModelDecision {
    pub(crate) allowed: bool,
    pub(crate) remaining: u64,
    /// Nanoseconds until the same request fits; `None` if it never can.
    pub(crate) retry_after: Option<u64>,
}

/// Buckets by key, all of one capacity and refill interval.
#[derive(Debug)]
pub(crate) struct Model {
    capacity: u64,
    interval: u64,
    buckets: HashMap<u32, ModelBucket>,
}

impl Model {
    pub(crate) fn new(capacity: u32, interval_ns: u64) -> Self {
        Self {
            capacity: u64::from(capacity),
            interval: interval_ns,
            buckets: HashMap::new(),
        }
    }

    /// Refills `key`'s bucket up to `now` and takes `cost` tokens if it
    /// holds them.
    pub(crate) fn decide(&mut self, key: u32, cost: u32, now: u64) -> ModelDecision {
        let full = self.capacity * self.interval;
        let bucket = self.buckets.entry(key).or_insert(ModelBucket {
            credit: full,
            at: now,
        });
        bucket.credit = (bucket.credit + (now - bucket.at)).min(full);
        bucket.at = now;
        let need = u64::from(cost) * self.interval;
        if bucket.credit >= need {
            bucket.credit -= need;
            ModelDecision {
                allowed: true,
                remaining: bucket.credit / self.interval,
                retry_after: Some(0),
            }
        } else {
            ModelDecision {
                allowed: false,
                remaining: bucket.credit / self.interval,
                retry_after: (need <= full).then(|| need - bucket.credit),
            }
        }
    }
}
