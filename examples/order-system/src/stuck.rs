//! Stuck sagas: orders still pending longer than a threshold, counted by
//! the orders service on its own table, so that a saga held up anywhere
//! (a dead event, a consumer giving up, a service down) shows in `/books`
//! and `/metrics` instead of waiting silently.

use std::time::Duration;

use crate::db::{Param, Statements};
use crate::orders::Orders;
use crate::service::SagaService;

/// How long a saga may be pending before it counts as stuck, unless the
/// reader says otherwise: a saga takes milliseconds, and a processor
/// outage that the breaker waits out takes seconds.
pub const STUCK_AFTER: Duration = Duration::from_secs(60);

/// How many of `orders` have been pending for longer than `after`.
///
/// # Errors
///
/// The database's error.
pub async fn count(orders: &Orders, after: Duration) -> Result<u64, sqlx::Error> {
    let after_ms = i64::try_from(after.as_millis()).unwrap_or(i64::MAX);
    let placed_before = orders.db().now_ms().await?.saturating_sub(after_ms);
    let (stuck,): (i64,) = orders
        .db()
        .fetch_one(
            "SELECT count(*) FROM orders WHERE status = 'pending' AND created_ms < $1",
            &[Param::Int(placed_before)],
        )
        .await?;
    Ok(u64::try_from(stuck).unwrap_or(0))
}
