//! A consumer's inbox forgetting its old records while the consumer runs,
//! as the relay deletes its outbox's sent events: no inbox grows for ever.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use crate::store::InboxStore;

/// How long an inbox keeps the record of a message applied, unless its
/// consumer says otherwise.
pub(crate) const KEEP_RECORDS: Duration = Duration::from_secs(24 * 3_600);

/// How many records one statement forgets.
const BATCH: u32 = 10_000;

/// How often a round of forgetting runs.
const EVERY: Duration = Duration::from_secs(60);

/// The pause between two batches of one round.
const BETWEEN_BATCHES: Duration = Duration::from_millis(100);

/// Forgets `consumer`'s records in `inbox` older than `age`, and its
/// counts of deliveries handed back (under `counted_as`) as old, the
/// table's other consumers keeping theirs as long as they keep them: at
/// once, then every minute, for as long as it is polled. `Duration::MAX`
/// keeps them for ever. A round that failed is warned of; the next tries
/// again.
pub(crate) async fn forget_old_records<I: InboxStore>(
    inbox: &I,
    consumer: &str,
    counted_as: &str,
    age: Duration,
) -> Infallible {
    if age == Duration::MAX {
        return std::future::pending().await;
    }
    rounds(consumer, |batch| {
        inbox.forget_records_of(consumer, counted_as, age, batch)
    })
    .await
}

/// Runs a round of `forget` (given the batch, it forgets up to that many)
/// at once and then every [`EVERY`]: batch after batch while they come
/// back full, so that a busy inbox does not outgrow one batch a round.
async fn rounds<F, Fut>(consumer: &str, mut forget: F) -> Infallible
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<u64, sqlx::Error>>,
{
    loop {
        loop {
            match forget(BATCH).await {
                // A breath between batches for the database's other work.
                Ok(forgotten) if forgotten >= u64::from(BATCH) => {
                    tokio::time::sleep(BETWEEN_BATCHES).await;
                }
                Ok(_) => break,
                Err(error) => {
                    tracing::warn!(target: "palisade_outbox", %error, consumer, "old inbox records (or their counts of hand-backs) not forgotten; trying again in a minute");
                    break;
                }
            }
        }
        tokio::time::sleep(EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use super::{BATCH, rounds};

    /// A round forgets batch after batch while they come back full (one
    /// batch a minute fell behind an inbox taking more than that), and
    /// the next comes a minute later, a failed one's too.
    #[tokio::test(start_paused = true)]
    async fn a_round_goes_on_while_its_batches_come_back_full() {
        let calls = Arc::new(AtomicU32::new(0));
        let forgetting = {
            let calls = Arc::clone(&calls);
            tokio::spawn(async move {
                rounds("inventory", |batch| {
                    assert_eq!(batch, BATCH);
                    // Three full batches, what is left, then a failure.
                    let done = calls.fetch_add(1, Ordering::SeqCst);
                    async move {
                        match done {
                            0..3 => Ok(u64::from(batch)),
                            3 => Ok(7),
                            _ => Err(sqlx::Error::PoolTimedOut),
                        }
                    }
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            4,
            "at once, until one came back short"
        );
        tokio::time::sleep(Duration::from_secs(58)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 4, "nothing before a minute");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 5, "a round a minute");
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 6, "after a failed one too");
        forgetting.abort();
    }
}
