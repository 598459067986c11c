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
