//! Histogram buckets for latencies measured in seconds.

/// Bucket boundaries, in seconds, for palisade's latency histograms: from
/// 5 ms to 5 minutes.
///
/// A histogram given no boundaries of its own gets the OpenTelemetry SDK's,
/// which are meant for milliseconds (0, 5, 10, 25, … 10 000): a latency
/// recorded in seconds against them falls into the first buckets whatever
/// it is, and every quantile read from them says about 5 s. Pass these to
/// the instrument's builder (`with_boundaries(SECONDS_BOUNDARIES.to_vec())`).
///
/// ```
/// use palisade_hints::SECONDS_BOUNDARIES;
///
/// assert!(SECONDS_BOUNDARIES.is_sorted());
/// assert_eq!(SECONDS_BOUNDARIES.first(), Some(&0.005));
/// assert_eq!(SECONDS_BOUNDARIES.last(), Some(&300.0));
/// ```
pub const SECONDS_BOUNDARIES: [f64; 15] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];
