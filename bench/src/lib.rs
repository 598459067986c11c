//! What every benchmark in `benches/` shares: the no-op service the layers
//! wrap, and a way to run a call's future to completion without a runtime.

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::pin::pin;
use std::task::{Context, Poll, Waker};

/// The wrapped service: answers its request at once.
///
/// # Errors
///
/// Never.
pub fn noop(request: u64) -> Ready<Result<u64, Infallible>> {
    ready(Ok(request))
}

/// Polls a future to completion on this thread with a no-op waker; the
/// benchmarked futures are ready at once, so no runtime is involved.
pub fn complete<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        std::hint::spin_loop();
    }
}

/// The `p` quantile (0 to 1, nearest rank) of `sorted` durations, in
/// milliseconds, as the run-by-script examples report them.
///
/// # Panics
///
/// When `sorted` is empty.
#[must_use]
pub fn percentile_ms(sorted: &[std::time::Duration], p: f64) -> f64 {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}
