//! The accuracy run: processes sharing one bucket through Redis admit at
//! most `capacity + rate × elapsed`, and nearly all of it.
//!
//! ```sh
//! cargo run --release -p palisade-token-bucket --features redis --example accuracy -- [processes] [tasks] [seconds] [--leasing]
//! ```
//!
//! Defaults: 4 processes × 32 tasks for 10 s, a bucket of 100 tokens
//! refilled at 1,000 a second. With `--leasing`, each process decides
//! through a `LeasingStore` (default `Leasing`). Uses `REDIS_URL`.

mod fleet;

use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if fleet::child_if_asked().await {
        return Ok(());
    }
    let leasing = std::env::args().any(|arg| arg == "--leasing");
    let mut args = std::env::args()
        .skip(1)
        .filter(|arg| arg != "--leasing")
        .map(|arg| arg.parse::<u32>());
    let run = fleet::Run {
        processes: args.next().transpose()?.unwrap_or(4),
        tasks: args.next().transpose()?.unwrap_or(32),
        duration: Duration::from_secs(args.next().transpose()?.unwrap_or(10).into()),
        capacity: 100,
        rate: 1000.0,
        leasing,
    };
    let exe = std::env::current_exe()?;
    let outcome = tokio::task::spawn_blocking(move || fleet::run_fleet(&exe, &[], &run)).await?;
    let bound = outcome.bound(&run);
    #[allow(clippy::cast_precision_loss)]
    let admitted = outcome.admitted as f64;
    println!(
        "{}{} processes x {} tasks, {:.3} s: {} decisions, {} admitted; bound capacity + rate x elapsed = {bound:.1}; admitted / bound = {:.4}",
        if leasing { "leasing: " } else { "" },
        run.processes,
        run.tasks,
        outcome.span.as_secs_f64(),
        outcome.decisions,
        outcome.admitted,
        admitted / bound
    );
    if admitted > bound {
        return Err("admitted more than the bucket allows".into());
    }
    Ok(())
}
