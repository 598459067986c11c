//! Side-by-side benchmarks of palisade crates against their peers.
//!
//! The benchmarks live in `benches/`, one file per palisade crate, each
//! timing palisade and the peer on the same inputs in the same run. Run
//! them with `scripts/bench -p palisade-bench`, which prints the medians
//! and the peer-to-palisade ratio of every case.
