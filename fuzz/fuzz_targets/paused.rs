//! The layer targets' runtime: one thread, its clock paused, so the
//! layers' timers (backoff, open durations, refills) run at once and in
//! the same order on every run of an input.

/// Runs `future` to its end on a fresh paused runtime.
pub fn run<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime")
        .block_on(future)
}
