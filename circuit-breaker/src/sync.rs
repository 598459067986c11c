//! The atomics and `Arc` the breaker is built on: loom's when model
//! checking (`RUSTFLAGS="--cfg palisade_loom"`), the standard library's
//! otherwise, and a cache line to keep a value on.

#[cfg(palisade_loom)]
pub(crate) use loom::sync::Arc;
#[cfg(palisade_loom)]
pub(crate) use loom::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering, fence};
#[cfg(not(palisade_loom))]
pub(crate) use std::sync::Arc;
#[cfg(not(palisade_loom))]
pub(crate) use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering, fence};

/// A value alone on its cache line: written by every call, it must not
/// make the readers of its neighbours miss, nor share a line with another
/// such value.
#[derive(Debug, Default)]
#[repr(align(64))]
pub(crate) struct OwnLine<T>(pub(crate) T);

impl<T> std::ops::Deref for OwnLine<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}
