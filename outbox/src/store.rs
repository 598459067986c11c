//! What the relay needs from the database holding the outbox.

use std::future::Future;
use std::time::Duration;

use crate::event::Message;

/// The counts an operator watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Backlog {
    /// Events not yet published (including those backing off).
    pub pending: u64,
    /// Events given up on, waiting for an operator.
    pub dead: u64,
    /// Of the pending events, those held behind a dead event of their
    /// aggregate (per-aggregate order): they move once it is requeued or
    /// deleted.
    pub held: u64,
    /// How long the oldest pending event has waited.
    pub oldest_pending: Option<Duration>,
}

/// What one [`OutboxStore::clean_up`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct CleanUp {
    /// How many sent events it deleted.
    pub deleted: u64,
    /// Whether that was a full batch, so that more may be past their
    /// retention: a relay cleans up again at its next turn rather than
    /// after its interval.
    pub full: bool,
}

/// What [`OutboxStore::mark_failed`] did with a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failed {
    /// Pending again, once its backoff has passed.
    BackingOff,
    /// That was its last attempt: dead until an operator requeues it.
    Dead,
    /// Nothing: the claim the attempt came from had ended and the event
    /// was claimed again since (by another relay, after the lease), so the
    /// newer claim settles it.
    Superseded,
}

/// The outbox table, as the relay works it. Implemented for PostgreSQL
/// (feature `postgres`) and SQLite (feature `sqlite`).
///
/// Every settle is fenced by the claim that produced it: a claim stamps its
/// events with a claim id of its own, and `mark_sent` / `mark_failed`
/// change an event only while it still carries that id. A relay that
/// stalled past its lease, while another relay claimed its events again,
/// can no longer undo what the other relay did.
pub trait OutboxStore: Clone + Send + Sync + 'static {
    /// Claims up to a batch of publishable events for the lease: pending,
    /// due, unclaimed, and (when ordered) the first unsent event of their
    /// aggregate.
    fn claim(&self) -> impl Future<Output = Result<Vec<Message>, sqlx::Error>> + Send;

    /// How long a claim lasts: the relay gives up on a publish once its
    /// claim's lease has run out.
    fn lease(&self) -> Duration;

    /// Marks these events sent, in one statement, each only if it is still
    /// under the claim it came from; returns how many were (the others
    /// were [`Superseded`](Failed::Superseded)).
    fn mark_sent(
        &self,
        sent: &[Message],
    ) -> impl Future<Output = Result<usize, sqlx::Error>> + Send;

    /// Hands these events back without spending an attempt (the broker
    /// could not take them: see [`PublishErrorKind::Unavailable`]): pending
    /// again once `delay` has passed, with `error` as their last error,
    /// each only if it is still under the claim it came from; returns how
    /// many were.
    ///
    /// [`PublishErrorKind::Unavailable`]: crate::PublishErrorKind::Unavailable
    fn release(
        &self,
        released: &[Message],
        delay: Duration,
        error: &str,
    ) -> impl Future<Output = Result<usize, sqlx::Error>> + Send;

    /// Records a failed attempt, if the event is still under the claim it
    /// came from: back off, or dead after the last attempt.
    fn mark_failed(
        &self,
        message: &Message,
        error: &str,
    ) -> impl Future<Output = Result<Failed, sqlx::Error>> + Send;

    /// Deletes sent events past their retention, one bounded batch.
    fn clean_up(&self) -> impl Future<Output = Result<CleanUp, sqlx::Error>> + Send;

    /// Pending and dead counts and the oldest pending age.
    fn backlog(&self) -> impl Future<Output = Result<Backlog, sqlx::Error>> + Send;

    /// Waits until new events may be there: woken by the database where it
    /// can, else after the polling interval.
    fn wait_for_work(&self) -> impl Future<Output = ()> + Send;
}

/// An event given up on after its last attempt, as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadEvent {
    /// The event id.
    pub id: uuid::Uuid,
    /// The kind of aggregate it belongs to.
    pub aggregate_type: String,
    /// Which aggregate.
    pub aggregate_id: String,
    /// What happened.
    pub event_type: String,
    /// Attempts spent.
    pub attempts: u32,
    /// The error of its last attempt.
    pub last_error: Option<String>,
    /// When it was written, in milliseconds since the Unix epoch.
    pub created_at_ms: i64,
}

/// The dead events of an outbox, for an operator: list them, put them back
/// in line, or give up on them for good. Implemented for PostgreSQL
/// (feature `postgres`) and SQLite (feature `sqlite`).
///
/// An event is dead after its last attempt was spent on a rejection of the
/// message (a broker that was unavailable spends none). With per-aggregate
/// order, it holds the later events of its aggregate until it is requeued
/// or discarded. Each change is fenced by the event's dead status: an
/// event that is not dead (any more) is left as it is.
pub trait DeadEvents: Send + Sync {
    /// The oldest `limit` dead events, oldest first.
    fn dead_events(
        &self,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<DeadEvent>, sqlx::Error>> + Send;

    /// Puts the dead event `id` back in line, its attempts reset; `false`
    /// if no dead event has this id.
    fn requeue(&self, id: uuid::Uuid) -> impl Future<Output = Result<bool, sqlx::Error>> + Send;

    /// Puts every dead event back in line, attempts reset; returns how
    /// many.
    fn requeue_all(&self) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;

    /// Deletes the dead event `id` for good, releasing the later events of
    /// its aggregate; `false` if no dead event has this id.
    fn discard(&self, id: uuid::Uuid) -> impl Future<Output = Result<bool, sqlx::Error>> + Send;
}

/// An inbox whose transactions a consumer can open: [`PgInbox`](crate::PgInbox)
/// or [`SqliteInbox`](crate::SqliteInbox).
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub trait InboxStore: Clone + Send + Sync + 'static {
    /// The database.
    type Database: sqlx::Database;

    /// Begins a transaction in the inbox's database.
    fn begin(
        &self,
    ) -> impl Future<Output = Result<sqlx::Transaction<'static, Self::Database>, sqlx::Error>> + Send;

    /// Begins a transaction in which no statement runs longer than
    /// `limit`, where the database can bound statements on its side
    /// (PostgreSQL: `statement_timeout`, set with the `BEGIN`, never
    /// longer than one already set; a handler that sets its own in the
    /// transaction lifts the bound): a consumer
    /// that cuts off a handler past its handler timeout gives up on the
    /// handler's statement, which would otherwise run on (a lock wait)
    /// holding what the transaction wrote, so that the next try waited on
    /// it. Just [`begin`](Self::begin) by default.
    fn begin_bounded(
        &self,
        limit: Duration,
    ) -> impl Future<Output = Result<sqlx::Transaction<'static, Self::Database>, sqlx::Error>> + Send
    {
        let _ = limit;
        self.begin()
    }

    /// As the inbox's own `process_all`: for each of `message_ids`, `true`
    /// the first time `consumer` sees it, all recorded in `tx`.
    fn process_all(
        &self,
        tx: &mut <Self::Database as sqlx::Database>::Connection,
        consumer: &str,
        message_ids: &[&str],
    ) -> impl Future<Output = Result<Vec<bool>, sqlx::Error>> + Send;

    /// Commits `tx`, as the inbox's own `commit`: an error, never a
    /// silent rollback, for a transaction a failed statement aborted.
    /// Just the commit by default; an inbox in a database whose aborted
    /// transactions take a `COMMIT` without an error (PostgreSQL) asks
    /// first, as [`PgInbox`](crate::PgInbox) does.
    fn commit(
        &self,
        tx: sqlx::Transaction<'static, Self::Database>,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        tx.commit()
    }

    /// As the inbox's own `forget_older_than`.
    fn forget_older_than(
        &self,
        age: Duration,
        batch: u32,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;

    /// As the inbox's own `forget_records_of`: `consumer`'s records older
    /// than `age`, at most `batch`, and the counts of deliveries handed
    /// back under `counted_as` as old: what a running consumer forgets,
    /// at its start and every minute.
    fn forget_records_of(
        &self,
        consumer: &str,
        counted_as: &str,
        age: Duration,
        batch: u32,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;

    /// As the inbox's own `hand_back`: counts one more delivery of each
    /// of `message_ids` that `consumer` handed back untried. Nothing is
    /// counted by default (every delivery is then a try).
    fn hand_back(
        &self,
        consumer: &str,
        message_ids: &[&str],
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        let _ = (consumer, message_ids);
        std::future::ready(Ok(()))
    }

    /// As the inbox's own `handed_back`: the deliveries of each of
    /// `message_ids` that `consumer` handed back untried. None by default.
    fn handed_back(
        &self,
        consumer: &str,
        message_ids: &[&str],
    ) -> impl Future<Output = Result<std::collections::HashMap<String, u64>, sqlx::Error>> + Send
    {
        let _ = (consumer, message_ids);
        std::future::ready(Ok(std::collections::HashMap::new()))
    }
}
