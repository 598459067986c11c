//! The atomics the breaker is built on: loom's when model
//! checking (`RUSTFLAGS="--cfg palisade_loom"`), the standard library's
//! otherwise.

#[cfg(palisade_loom)]
pub(crate) use loom::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering, fence};
#[cfg(not(palisade_loom))]
pub(crate) use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering, fence};
