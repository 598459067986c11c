//! Applying messages once: what a consumer's handler sees and returns, the
//! transaction that runs it with the inbox check, and the in-process
//! consumer of [`HandoffBroker`](crate::HandoffBroker) and
//! [`MemoryBroker`](crate::MemoryBroker) subscriptions.

use std::error::Error;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::future::Shared;
use tokio::sync::mpsc;

use crate::envelope::Envelope;
use crate::forget::{KEEP_RECORDS, forget_old_records};
use crate::handoff::Inbound;
use crate::store::InboxStore;

/// A boxed error, as handlers return them.
pub type BoxError = Box<dyn Error + Send + Sync>;

/// A message as the handler sees it: its envelope carries the event's own
/// headers as [`extensions`](Envelope::extensions).
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The CloudEvents envelope: id, type, subject (aggregate id), trace
    /// context.
    pub envelope: Envelope,
    /// The NATS subject it was published on.
    pub subject: String,
    /// The payload.
    pub payload: bytes::Bytes,
    /// Which try this is (1 for the first): the broker's count of the
    /// message's deliveries, less those a consumer handed back untried
    /// (JetStream), and the tries made in place since.
    pub attempt: u64,
}

#[cfg(feature = "tracecontext")]
impl Delivery {
    /// A span of this consumer in the trace the message carries (a new
    /// trace when it carries none, or an invalid one). The consumer runs
    /// the handler with it current, so events the handler enqueues
    /// continue the trace.
    ///
    /// Its `tracestate` is cut to the 512 characters the specification
    /// asks every participant to pass on, whole members removed: a message carrying
    /// 32 members of 256 characters had every event after it carry them
    /// too, into every store and stream the saga passes.
    #[must_use]
    pub fn trace_context(&self) -> palisade_tracecontext::TraceContext {
        let mut carrier = std::collections::BTreeMap::new();
        let fields = [
            (
                palisade_tracecontext::TRACEPARENT,
                &self.envelope.traceparent,
            ),
            (palisade_tracecontext::TRACESTATE, &self.envelope.tracestate),
        ];
        for (name, value) in fields {
            if let Some(value) = value {
                carrier.insert(name.to_owned(), value.clone());
            }
        }
        palisade_tracecontext::Propagator::new()
            .tracestate_limit(palisade_tracecontext::MIN_PROPAGATED_LEN)
            .continue_or_start(&carrier)
    }
}

/// A handler error that is not the message's fault (a dependency down, a
/// circuit open): the consumer tries the message again, with the growing
/// delay, for as long as it takes, and never gives up on it for this.
///
/// # Example
///
/// ```
/// use palisade_outbox::{BoxError, Transient};
///
/// fn from_processor(status: &str) -> BoxError {
///     Box::new(Transient::new(format!("card processor: {status}")))
/// }
/// assert!(palisade_outbox::Transient::is(&*from_processor("UNAVAILABLE")));
/// ```
#[derive(Debug)]
pub struct Transient(BoxError);

impl Transient {
    /// Marks `error` as transient.
    pub fn new(error: impl Into<BoxError>) -> Self {
        Self(error.into())
    }

    /// Whether `error`, or an error it wraps (along its
    /// [`source`](Error::source) chain), is marked transient.
    #[must_use]
    pub fn is(error: &(dyn Error + 'static)) -> bool {
        let mut next = Some(error);
        while let Some(error) = next {
            if error.is::<Self>() {
                return true;
            }
            next = error.source();
        }
        false
    }
}

impl std::fmt::Display for Transient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "transient: {}", self.0)
    }
}

impl Error for Transient {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.0)
    }
}

/// What the handler did with a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// The effect is written in the transaction.
    Applied,
    /// Not for this consumer (an event type it does not know, say from a
    /// newer producer during a rolling deploy): acknowledged, not a
    /// failure.
    Ignored,
}

/// Applies deliveries in the consumer's transaction.
///
/// Return `Err` for a failure worth retrying: the transaction is rolled
/// back, and the message is delivered again after a delay, until its last
/// attempt gives up on it (to the dead-letter subject, on JetStream).
///
/// A panic in [`handle`](Self::handle) or [`prepare`](Self::prepare) is
/// the delivery's failure as well, and so is either taking longer than
/// the consumer's handler timeout (a minute unless set): it is tried again
/// and given up on as any other, and the consumer goes on. A timeout drops
/// the handler's future where it waits, so what it does outside the
/// transaction must bear being cut off (it must bear a crash anyway).
///
/// A statement that fails is the delivery's failure even when its error is
/// not returned: on PostgreSQL it aborts the transaction, so nothing of it
/// can commit. The consumer asks the database before it commits and takes
/// such a delivery for failed, as if the handler had returned the error
/// (the statement's own error is gone by then: return it, or run a
/// statement whose failure is expected in a savepoint).
pub trait Handler<C>: Send + Sync + 'static {
    /// Applies `delivery` in `tx`; the consumer commits it.
    fn handle(
        &self,
        tx: &mut C,
        delivery: &Delivery,
    ) -> impl Future<Output = Result<Handled, BoxError>> + Send;

    /// Called once in each transaction, before the first delivery handed
    /// to [`handle`](Self::handle) in it: the place for what a batch
    /// needs once rather than for each of its deliveries, such as row
    /// locks taken in a fixed order. An error counts as that delivery's.
    /// Nothing by default.
    fn prepare(&self, tx: &mut C) -> impl Future<Output = Result<(), BoxError>> + Send {
        let _ = tx;
        std::future::ready(Ok(()))
    }

    /// Called once the transaction that applied `delivery` has committed
    /// (not for duplicates, ignored deliveries or rolled-back attempts):
    /// the place to tell the rest of the process, now that the effect is
    /// visible to every reader. Nothing by default.
    fn committed(&self, delivery: &Delivery) {
        let _ = delivery;
    }
}

/// The event types a consumer hands to its handler: every type, unless
/// narrowed with `only`.
#[derive(Debug, Clone, Default)]
pub(crate) struct EventTypes(Option<Vec<String>>);

impl EventTypes {
    pub(crate) fn only<T: Into<String>>(event_types: impl IntoIterator<Item = T>) -> Self {
        Self(Some(event_types.into_iter().map(Into::into).collect()))
    }

    pub(crate) fn admits(&self, event_type: &str) -> bool {
        self.0
            .as_ref()
            .is_none_or(|only| only.iter().any(|t| t == event_type))
    }

    /// The types named, or `None` for every type.
    #[cfg(feature = "nats")]
    pub(crate) fn named(&self) -> Option<&[String]> {
        self.0.as_deref()
    }

    /// Whether both admit the same types, in whatever order named.
    pub(crate) fn same_as(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(mine), Some(theirs)) => {
                mine.iter().all(|t| theirs.contains(t)) && theirs.iter().all(|t| mine.contains(t))
            }
            _ => false,
        }
    }
}

/// The consumer's counters since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConsumerStats {
    /// Deliveries applied and committed.
    pub applied: u64,
    /// Deliveries the inbox had already seen: acknowledged, not applied.
    pub duplicates: u64,
    /// Deliveries the handler ignored.
    pub ignored: u64,
    /// Handler or database failures, delivered again later.
    pub retried: u64,
    /// Deliveries given up on (sent to the dead-letter subject, on
    /// JetStream; back to the producer's outbox as rejected, on a
    /// [`HandoffBroker`](crate::HandoffBroker)).
    pub dead_lettered: u64,
    /// Deliveries of a type this instance does not take and another
    /// running instance of its JetStream durable does: handed back, for
    /// JetStream to deliver to another instance.
    pub handed_on: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) applied: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) ignored: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) handed_on: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> ConsumerStats {
        ConsumerStats {
            applied: self.applied.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            ignored: self.ignored.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            handed_on: self.handed_on.load(Ordering::Relaxed),
        }
    }
}

/// Why one message was not acknowledged as applied.
enum Failure {
    /// The database: retry, never dead-letter.
    Database(sqlx::Error),
    /// The handler: retry, then dead-letter.
    Handler(BoxError),
}

/// How a consumer treats a delivery: how long its handler may take over
/// it, how often it is tried and how long between tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DeliveryPolicy {
    pub(crate) handler_timeout: Duration,
    pub(crate) max_deliver: u64,
    pub(crate) base: Duration,
    pub(crate) cap: Duration,
}

impl DeliveryPolicy {
    /// The longest delay between tries, handler timeout and ack wait: a
    /// day.
    pub(crate) const LONGEST: Duration = palisade_hints::DAY;

    /// A handler's time over one delivery, unless set: a minute.
    pub(crate) const HANDLER_TIMEOUT: Duration = Duration::from_secs(60);

    /// Retries after `base`, doubling up to `cap`, each at most
    /// [`LONGEST`](Self::LONGEST).
    pub(crate) const fn delays(mut self, base: Duration, cap: Duration) -> Self {
        self.base = palisade_hints::bounded(base, Duration::ZERO, Self::LONGEST);
        self.cap = palisade_hints::bounded(cap, Duration::ZERO, Self::LONGEST);
        self
    }

    /// A handler's time over one delivery: from a millisecond to
    /// [`LONGEST`](Self::LONGEST).
    pub(crate) const fn handler_timeout(mut self, timeout: Duration) -> Self {
        self.handler_timeout =
            palisade_hints::bounded(timeout, Duration::from_millis(1), Self::LONGEST);
        self
    }
}

/// One consumer applying deliveries: its inbox and its name there, its
/// handler, its counters and its policy.
pub(crate) struct Applier<'a, I, H> {
    pub(crate) inbox: &'a I,
    pub(crate) consumer: &'a str,
    pub(crate) handler: &'a H,
    pub(crate) counters: &'a Counters,
    pub(crate) policy: DeliveryPolicy,
}

impl<'a, I, H> Applier<'a, I, H>
where
    I: InboxStore,
    H: Handler<<I::Database as sqlx::Database>::Connection>,
{
    /// Applies one delivery: the inbox check and the handler in one
    /// transaction of the inbox's database, counted once committed.
    async fn apply(&self, delivery: &Delivery) -> Result<(), Failure> {
        match self.apply_batch(std::slice::from_ref(delivery)).await {
            Ok((_, None)) => Ok(()),
            Ok((_, Some(error))) => Err(Failure::Handler(error)),
            Err(error) => Err(Failure::Database(error)),
        }
    }

    /// Applies `deliveries` in order in one transaction, stopping at the
    /// first the handler fails: returns how many were applied and
    /// committed, and the failure that stopped them, if one did. The whole
    /// batch is counted once committed; a database error applies nothing.
    ///
    /// Failures are rare, so the batch runs without savepoints: when the
    /// handler fails on one, the transaction is rolled back and the
    /// deliveries before it are applied again without it. Handlers may
    /// therefore run twice for those (and more often after a transaction
    /// left aborted, below); what they do outside the transaction must be
    /// idempotent (it must be anyway: a broker redelivers).
    ///
    /// A transaction a failed statement left aborted (PostgreSQL) is the
    /// failure of the delivery whose handler ran that statement and went
    /// on: once one is seen, the deliveries are applied one a transaction,
    /// which finds it.
    pub(crate) async fn apply_batch(
        &self,
        deliveries: &[Delivery],
    ) -> Result<(usize, Option<BoxError>), sqlx::Error> {
        let mut len = deliveries.len();
        let mut failure = None;
        while len > 0 {
            match self.transaction(&deliveries[..len]).await? {
                Ran::Committed => return Ok((len, failure)),
                Ran::Failed { at, error } if at == 0 || !aborted(&*error) => {
                    failure = Some(error);
                    len = at;
                }
                // An earlier delivery's handler went on after a statement
                // failed, so that this one's statements could not run; or
                // one did so and the commit found out. Which one, a
                // transaction each tells.
                // (Boxed: rare, and it would double every caller's future.)
                Ran::Failed { .. } | Ran::Aborted(_) => {
                    return Box::pin(self.one_at_a_time(deliveries)).await;
                }
            }
        }
        Ok((0, failure))
    }

    /// [`apply_batch`](Self::apply_batch) one delivery a transaction.
    async fn one_at_a_time(
        &self,
        deliveries: &[Delivery],
    ) -> Result<(usize, Option<BoxError>), sqlx::Error> {
        for (done, delivery) in deliveries.iter().enumerate() {
            match self.transaction(std::slice::from_ref(delivery)).await {
                Ok(Ran::Committed) => {}
                Ok(Ran::Failed { error, .. }) => return Ok((done, Some(error))),
                Ok(Ran::Aborted(error)) => {
                    return Ok((done, Some(Box::new(LeftAborted(error.into())))));
                }
                Err(error) if done == 0 => return Err(error),
                // What committed is counted: the caller goes on from the
                // rest, and meets the database's error there.
                Err(_) => return Ok((done, None)),
            }
        }
        Ok((deliveries.len(), None))
    }

    /// Applies `deliveries` in one transaction, up to the first the
    /// handler fails.
    async fn transaction(&self, deliveries: &[Delivery]) -> Result<Ran, sqlx::Error> {
        let counters = self.counters;
        let mut tx = self
            .inbox
            .begin_bounded(self.policy.handler_timeout)
            .await?;
        let ids: Vec<&str> = deliveries
            .iter()
            .map(|delivery| delivery.envelope.id.as_str())
            .collect();
        let first_times = self.inbox.process_all(&mut tx, self.consumer, &ids).await?;
        let mut settled: Vec<&AtomicU64> = Vec::with_capacity(deliveries.len());
        let mut prepared = false;
        for (at, (delivery, first_time)) in deliveries.iter().zip(first_times).enumerate() {
            let applied = if first_time {
                self.apply_in(&mut *tx, delivery, &mut prepared).await
            } else {
                Ok(&counters.duplicates)
            };
            match applied {
                Ok(counter) => settled.push(counter),
                // Rolled back as `tx` drops. The first statement refused as
                // its transaction is aborted is the handler's own doing
                // when it is the first delivery's.
                Err(error) if at == 0 && aborted(&*error) => {
                    return Ok(Ran::Failed {
                        at,
                        error: Box::new(LeftAborted(error)),
                    });
                }
                Err(error) => return Ok(Ran::Failed { at, error }),
            }
        }
        match self.inbox.commit(tx).await {
            Ok(()) => {}
            Err(error) if aborted(&error) => return Ok(Ran::Aborted(error)),
            Err(error) => return Err(error),
        }
        for (counter, delivery) in settled.iter().zip(deliveries) {
            Counters::add(counter);
            if std::ptr::eq(*counter, &counters.applied) {
                let told =
                    std::panic::catch_unwind(AssertUnwindSafe(|| self.handler.committed(delivery)));
                if let Err(panic) = told {
                    tracing::error!(target: "palisade_outbox", consumer = self.consumer, id = %delivery.envelope.id, panic = %palisade_hints::panic_message(&*panic), "the handler's `committed` panicked; the delivery is applied all the same");
                }
            }
        }
        Ok(Ran::Committed)
    }

    /// The handler for one delivery seen for the first time, in `tx`
    /// (which it prepares first unless `prepared`): the counter to bump,
    /// or the handler's error (the caller rolls back).
    async fn apply_in(
        &self,
        tx: &mut <I::Database as sqlx::Database>::Connection,
        delivery: &Delivery,
        prepared: &mut bool,
    ) -> Result<&'a AtomicU64, BoxError> {
        let timeout = self.policy.handler_timeout;
        if !*prepared {
            caught(timeout, self.handler.prepare(tx)).await?;
            *prepared = true;
        }
        let handling = self.handler.handle(tx, delivery);
        #[cfg(feature = "tracecontext")]
        let handling = delivery.trace_context().scope(handling);
        Ok(match caught(timeout, handling).await? {
            Handled::Applied => &self.counters.applied,
            Handled::Ignored => &self.counters.ignored,
        })
    }

    /// Tries `delivery` again, alone and in place, after its handler
    /// failed with `error`: after the growing delay, until it is applied,
    /// or its last try fails ([`Transient`] failures spend no try, so
    /// never for one). Nothing after it is applied meanwhile, so
    /// per-aggregate order holds. A database failure is waited out and
    /// does not count as a try. `wait(delay)` sleeps (a JetStream consumer
    /// keeps the message's acknowledgement alive meanwhile) and says
    /// `false` when the consumer is stopping.
    pub(crate) async fn retry_in_place<W, F>(
        &self,
        delivery: &mut Delivery,
        mut error: BoxError,
        mut wait: W,
    ) -> Retried
    where
        W: FnMut(Duration) -> F,
        F: Future<Output = bool>,
    {
        let (consumer, counters, policy) = (self.consumer, self.counters, self.policy);
        // Transient failures are not the message's: they spend none of its
        // tries.
        let mut transient = 0;
        let mut counted = false;
        loop {
            if Transient::is(&*error) {
                transient += 1;
            } else if delivery.attempt.saturating_sub(transient) >= policy.max_deliver {
                return Retried::GaveUp(error);
            } else {
                counted = true;
            }
            tracing::warn!(target: "palisade_outbox", consumer, id = %delivery.envelope.id, attempt = delivery.attempt, %error, "handler failed; trying again later");
            Counters::add(&counters.retried);
            if !wait(retry_delay(policy.base, policy.cap, delivery.attempt)).await {
                return Retried::Stopped { counted };
            }
            delivery.attempt += 1;
            loop {
                match self.apply(delivery).await {
                    Ok(()) => return Retried::Applied,
                    Err(Failure::Handler(again)) => {
                        error = again;
                        break;
                    }
                    // Not the message's fault: this try does not count.
                    Err(Failure::Database(failure)) => {
                        tracing::warn!(target: "palisade_outbox", consumer, id = %delivery.envelope.id, error = %failure, "inbox database failed; trying again later");
                        Counters::add(&counters.retried);
                        if !wait(policy.base).await {
                            return Retried::Stopped { counted };
                        }
                    }
                }
            }
        }
    }
}

/// What became of one transaction over some deliveries.
enum Ran {
    /// Committed, and counted.
    Committed,
    /// The handler failed delivery `at`: rolled back.
    Failed { at: usize, error: BoxError },
    /// The database rolled it back at its commit (a statement failed in
    /// it, and a handler went on).
    Aborted(sqlx::Error),
}

/// Whether `error`, or one it wraps, is the database refusing a statement
/// in a transaction an earlier failed statement aborted (PostgreSQL's
/// `25P02`).
fn aborted(error: &(dyn Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        let code = error
            .downcast_ref::<sqlx::Error>()
            .and_then(sqlx::Error::as_database_error)
            .and_then(sqlx::error::DatabaseError::code);
        if code.as_deref() == Some(IN_FAILED_SQL_TRANSACTION) {
            return true;
        }
        // An error type that hides sqlx's (`anyhow`'s source chain skips
        // it) still shows PostgreSQL's own.
        #[cfg(feature = "postgres")]
        if error
            .downcast_ref::<sqlx::postgres::PgDatabaseError>()
            .is_some_and(|error| error.code() == IN_FAILED_SQL_TRANSACTION)
        {
            return true;
        }
        next = error.source();
    }
    false
}

/// PostgreSQL's SQLSTATE for a statement in an aborted transaction.
const IN_FAILED_SQL_TRANSACTION: &str = "25P02";

/// A delivery whose transaction could only roll back: a statement failed
/// in it and the handler went on as if it had not (on PostgreSQL that
/// aborts the transaction: every later statement is refused, and its
/// `COMMIT` rolls back).
#[derive(Debug)]
struct LeftAborted(BoxError);

impl std::fmt::Display for LeftAborted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "a statement failed in the handler's transaction and the handler went on, so it \
             can only roll back: return the statement's error, or run the statement in a \
             savepoint ({})",
            self.0
        )
    }
}

impl Error for LeftAborted {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.0)
    }
}

/// `handling`'s outcome, a panic in it or its taking longer than
/// `timeout` as its error. The transaction is rolled back as the caller
/// drops it: nothing a panicking or hanging handler left half-done in it
/// survives.
async fn caught<T>(
    timeout: Duration,
    handling: impl Future<Output = Result<T, BoxError>>,
) -> Result<T, BoxError> {
    match tokio::time::timeout(timeout, AssertUnwindSafe(handling).catch_unwind()).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(panic)) => Err(Box::new(Panicked(palisade_hints::panic_message(&*panic)))),
        Err(_) => Err(Box::new(TimedOut(timeout))),
    }
}

/// A handler (or its `prepare`) that panicked: the delivery's failure,
/// tried again and given up on as any other, rather than the end of the
/// consumer, which would leave every later message unapplied.
#[derive(Debug)]
struct Panicked(String);

impl std::fmt::Display for Panicked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the handler panicked: {}", self.0)
    }
}

impl Error for Panicked {}

/// A handler (or its `prepare`) that took longer than the consumer's
/// handler timeout over one delivery: the delivery's failure, rather than
/// a consumer that waits for ever and applies nothing after it.
#[derive(Debug)]
struct TimedOut(Duration);

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the handler took longer than the consumer's handler timeout ({:?}); its \
             transaction is rolled back",
            self.0
        )
    }
}

impl Error for TimedOut {}

/// The delay before delivery `attempt + 1`: `base`, doubling up to `cap`.
pub(crate) fn retry_delay(base: Duration, cap: Duration, attempt: u64) -> Duration {
    let doublings = u32::try_from(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(30);
    base.saturating_mul(1 << doublings).min(cap)
}

/// What became of a delivery retried in place.
pub(crate) enum Retried {
    /// Applied and committed at last.
    Applied,
    /// Its last try failed with this error: give up on it.
    GaveUp(BoxError),
    /// The consumer is stopping: the delivery is not settled; `counted`
    /// when one of its tries failed other than [`Transient`]ly.
    Stopped {
        // Read by the JetStream consumer, which hands back the rest.
        #[cfg_attr(not(feature = "nats"), allow(dead_code))]
        counted: bool,
    },
}

/// Consumes an in-process subscription into a database, applying each
/// message once: the in-process counterpart of `JetStreamConsumer`, for the
/// embedded default. On a [`HandoffBroker`](crate::HandoffBroker)
/// subscription it settles each message once applied, which is what
/// acknowledges the publish.
///
/// Messages are applied in the order published; those that queue up are
/// applied together, one transaction for up to [`batch`](Self::batch) of
/// them. A handler error rolls that message back alone (the messages
/// before it are applied again in a new transaction: what a handler does
/// outside the transaction must be idempotent); it is tried again
/// after a growing delay, before any later message (a handler that panics
/// or takes longer than [`handler_timeout`](Self::handler_timeout) over
/// one message has failed as well), and after
/// `max_deliver` tries it is given up on (logged as an error and counted as
/// dead-lettered) and the next message goes: on a
/// [`HandoffBroker`](crate::HandoffBroker) subscription it goes back to
/// the producer's outbox as rejected ([`Handoff::reject`](crate::Handoff::reject)),
/// where it spends an attempt and, after its last, is dead and kept
/// for an operator; on a [`MemoryBroker`](crate::MemoryBroker)'s, which
/// keeps nothing, it is gone; a [`Transient`] error is
/// tried again until it goes through. A database failure
/// is retried until the database answers, never given up on. Messages whose
/// type is not among [`only`](Self::only) are skipped without a
/// transaction.
///
/// # Example
///
/// On SQLite (run as a doctest with feature `sqlite`):
///
#[cfg_attr(feature = "sqlite", doc = "```")]
#[cfg_attr(not(feature = "sqlite"), doc = "```ignore")]
/// use palisade_outbox::{
///     BoxError, Delivery, Event, Handled, Handler, MemoryBroker, MemoryConsumer, OutboxConfig,
///     Relay, SqliteInbox, SqliteOutbox,
/// };
/// use sqlx::SqliteConnection;
///
/// struct CountOrders;
///
/// impl Handler<SqliteConnection> for CountOrders {
///     async fn handle(&self, tx: &mut SqliteConnection, _: &Delivery) -> Result<Handled, BoxError> {
///         sqlx::query("UPDATE counts SET orders = orders + 1").execute(tx).await?;
///         Ok(Handled::Applied)
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
/// sqlx::query("CREATE TABLE counts (orders INTEGER)").execute(&pool).await?;
/// sqlx::query("INSERT INTO counts VALUES (0)").execute(&pool).await?;
/// let outbox = SqliteOutbox::new(pool.clone(), OutboxConfig::default());
/// let inbox = SqliteInbox::new(pool.clone(), "inbox")?;
/// outbox.migrate().await?;
/// inbox.migrate().await?;
///
/// let broker = MemoryBroker::new(64);
/// let consumer = MemoryConsumer::new("counter", inbox, CountOrders).only(["OrderCreated"]);
/// let subscription = broker.subscribe();
///
/// let mut tx = pool.begin().await?;
/// outbox.enqueue(&mut tx, &Event::new("order", "o-1", "OrderCreated", b"{}".to_vec())).await?;
/// tx.commit().await?;
/// Relay::new(outbox, broker.clone()).run_once().await?;
/// drop(broker); // the subscription ends once the broker is gone
///
/// consumer.run(subscription, std::future::pending()).await;
/// assert_eq!(consumer.stats().applied, 1);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct MemoryConsumer<I, H> {
    name: String,
    inbox: I,
    handler: H,
    counters: Counters,
    only: EventTypes,
    batch: usize,
    policy: DeliveryPolicy,
    /// How long the inbox keeps a record.
    kept: Duration,
}

impl<I, H> MemoryConsumer<I, H>
where
    I: InboxStore,
    H: Handler<<I::Database as sqlx::Database>::Connection>,
{
    /// The consumer `name` (its name in the inbox), applying messages with
    /// `handler`. Defaults: every event type, up to 64 queued messages per
    /// transaction, a minute for the handler over one message, 5 tries,
    /// retries after 100 ms doubling to 5 s, records kept a day.
    #[must_use]
    pub fn new(name: &str, inbox: I, handler: H) -> Self {
        Self {
            name: name.to_owned(),
            inbox,
            handler,
            counters: Counters::default(),
            only: EventTypes::default(),
            batch: 64,
            policy: DeliveryPolicy {
                handler_timeout: DeliveryPolicy::HANDLER_TIMEOUT,
                max_deliver: 5,
                base: Duration::from_millis(100),
                cap: Duration::from_secs(5),
            },
            kept: KEEP_RECORDS,
        }
    }

    /// How long the inbox keeps the record of a message applied (a day
    /// unless set). While it runs, the consumer forgets older records: at
    /// its start, then every minute, 10,000 a statement, batch after batch
    /// while they come back full. `Duration::MAX` keeps them for ever.
    ///
    /// A message that comes again after its record is gone is applied
    /// again: a relay stopped between a publish and marking it sent
    /// publishes it again when a relay next runs, however long after.
    /// The consumer forgets its own records only; the inbox's other
    /// consumers keep theirs.
    #[must_use]
    pub const fn keep_records(mut self, age: Duration) -> Self {
        self.kept = age;
        self
    }

    /// Only these event types reach the handler; others are skipped.
    #[must_use]
    pub fn only<T: Into<String>>(mut self, event_types: impl IntoIterator<Item = T>) -> Self {
        self.only = EventTypes::only(event_types);
        self
    }

    /// Messages applied per transaction at most, when they queue up (at
    /// least 1, at most 100,000). One that fails is rolled back alone and
    /// retried before the next.
    #[must_use]
    pub fn batch(mut self, messages: usize) -> Self {
        self.batch = crate::config::consumer_batch(messages);
        self
    }

    /// Tries before a failing message is given up on (at least 1).
    #[must_use]
    pub fn max_deliver(mut self, tries: u64) -> Self {
        self.policy.max_deliver = tries.max(1);
        self
    }

    /// The delay before the second try, doubling up to `cap` (each a day
    /// at most).
    #[must_use]
    pub const fn retry_delay(mut self, base: Duration, cap: Duration) -> Self {
        self.policy = self.policy.delays(base, cap);
        self
    }

    /// The longest the handler may take over one message (and its
    /// `prepare` over one transaction), from a millisecond to a day: past
    /// it the try has failed, its transaction rolls back, and it is tried
    /// again and given up on as any other failure. A minute unless set.
    #[must_use]
    pub const fn handler_timeout(mut self, timeout: Duration) -> Self {
        self.policy = self.policy.handler_timeout(timeout);
        self
    }

    /// The handler.
    #[must_use]
    pub const fn handler(&self) -> &H {
        &self.handler
    }

    /// What the consumer has done so far.
    #[must_use]
    pub fn stats(&self) -> ConsumerStats {
        self.counters.snapshot()
    }

    /// Consumes `subscription` (of a [`MemoryBroker`](crate::MemoryBroker)
    /// or a [`HandoffBroker`](crate::HandoffBroker)) until `shutdown`
    /// completes or the broker is gone; the messages under way are
    /// finished, and settled, first, but for one waiting to be tried
    /// again (or for the inbox's database to answer), which is left
    /// unsettled with the rest of its batch: a
    /// [`HandoffBroker`](crate::HandoffBroker)'s publisher sends them
    /// again; a [`MemoryBroker`](crate::MemoryBroker)'s, settled when
    /// queued, are lost as its queue is. Each message is settled as
    /// soon as its transaction committed (or it was skipped, or a
    /// duplicate), and rejected as soon as it is given up on, not at the
    /// end of its batch: a [`HandoffBroker`](crate::HandoffBroker)'s
    /// publisher waits for it only until its lease ends. Those still
    /// queued when it stops are left unsettled.
    ///
    /// Meanwhile the inbox forgets its old records (see
    /// [`keep_records`](Self::keep_records)).
    pub async fn run<M: Inbound>(
        &self,
        subscription: mpsc::Receiver<M>,
        shutdown: impl Future<Output = ()>,
    ) {
        let forgetting = forget_old_records(&self.inbox, &self.name, &self.name, self.kept);
        tokio::select! {
            biased;
            () = self.consume(subscription, shutdown) => {}
            never = forgetting => match never {},
        }
    }

    /// [`run`](Self::run), but for forgetting.
    async fn consume<M: Inbound>(
        &self,
        mut subscription: mpsc::Receiver<M>,
        shutdown: impl Future<Output = ()>,
    ) {
        let mut shutdown = Box::pin(shutdown).shared();
        let mut batch = Vec::with_capacity(self.batch);
        loop {
            let first = tokio::select! {
                () = &mut shutdown => return,
                message = subscription.recv() => match message {
                    Some(message) => message,
                    None => return,
                },
            };
            batch.push(Some(first));
            while batch.len() < self.batch {
                match subscription.try_recv() {
                    Ok(message) => batch.push(Some(message)),
                    Err(_) => break,
                }
            }
            let stopped = !self.process(&mut batch, &shutdown).await;
            batch.clear();
            if stopped {
                return;
            }
        }
    }

    /// Applies `messages` in order, as many per transaction as go through;
    /// one that fails is retried on its own before the next. Each is
    /// taken out and settled (or rejected) as soon as it is done with;
    /// one left in was not applied (dropped, its publish fails and the
    /// relay sends it again). `false` when it stopped for `shutdown`
    /// while a message waited to be tried again.
    async fn process<M, S>(&self, messages: &mut [Option<M>], shutdown: &Shared<S>) -> bool
    where
        M: Inbound,
        S: Future<Output = ()> + Unpin,
    {
        let done_with =
            |messages: &mut [Option<M>], place: usize, outcome: Result<(), &BoxError>| {
                if let Some(message) = messages[place].take() {
                    match outcome {
                        Ok(()) => message.settle(),
                        Err(error) => message.reject(format!("consumer {}: {error}", self.name)),
                    }
                }
            };
        let mut places = Vec::with_capacity(messages.len());
        let mut deliveries = Vec::with_capacity(messages.len());
        for place in 0..messages.len() {
            let Some(message) = messages[place].as_ref().map(Inbound::message) else {
                continue;
            };
            if !self.only.admits(message.event.event_type()) {
                done_with(messages, place, Ok(()));
                continue;
            }
            deliveries.push(Delivery {
                envelope: Envelope::of(message, "/palisade-outbox/memory"),
                subject: format!(
                    "{}.{}",
                    message.event.aggregate_type(),
                    message.event.event_type()
                ),
                payload: bytes::Bytes::copy_from_slice(message.event.payload()),
                attempt: 1,
            });
            places.push(place);
        }
        let mut next = 0;
        while next < deliveries.len() {
            let rest = &deliveries[next..];
            match self.applier().apply_batch(rest).await {
                Ok((done, failure)) => {
                    for &place in &places[next..next + done] {
                        done_with(messages, place, Ok(()));
                    }
                    next += done;
                    if let Some(error) = failure {
                        match self.retry(deliveries[next].clone(), error, shutdown).await {
                            Retried::Applied => done_with(messages, places[next], Ok(())),
                            Retried::GaveUp(error) => {
                                done_with(messages, places[next], Err(&error));
                            }
                            Retried::Stopped { .. } => return false,
                        }
                        next += 1;
                    }
                }
                Err(error) => {
                    tracing::warn!(target: "palisade_outbox", consumer = %self.name, %error, "inbox database failed; trying again later");
                    Counters::add(&self.counters.retried);
                    if !pause(self.policy.base, shutdown).await {
                        return false;
                    }
                }
            }
        }
        true
    }

    fn applier(&self) -> Applier<'_, I, H> {
        Applier {
            inbox: &self.inbox,
            consumer: &self.name,
            handler: &self.handler,
            counters: &self.counters,
            policy: self.policy,
        }
    }

    /// Tries `delivery` again in place after its handler failed with
    /// `error`; gives up on it after its last try.
    async fn retry<S>(
        &self,
        mut delivery: Delivery,
        error: BoxError,
        shutdown: &Shared<S>,
    ) -> Retried
    where
        S: Future<Output = ()> + Unpin,
    {
        let sleep = |delay| pause(delay, shutdown);
        let retried = self
            .applier()
            .retry_in_place(&mut delivery, error, sleep)
            .await;
        if let Retried::GaveUp(error) = &retried {
            Counters::add(&self.counters.dead_lettered);
            tracing::error!(target: "palisade_outbox", consumer = %self.name, id = %delivery.envelope.id, attempt = delivery.attempt, %error, "handler failed its last try; given up on");
        }
        retried
    }
}

/// Waits `delay`; `false` when `shutdown` came first.
pub(crate) async fn pause<S>(delay: Duration, shutdown: &Shared<S>) -> bool
where
    S: Future<Output = ()> + Unpin,
{
    tokio::select! {
        biased;
        () = shutdown.clone() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

#[cfg(all(test, feature = "tracecontext"))]
mod tests {
    use palisade_tracecontext::MIN_PROPAGATED_LEN;

    use super::Delivery;
    use crate::Envelope;

    /// A message's `tracestate` reaches the handler's trace cut to 512
    /// characters: it went on whole into every event after it.
    #[test]
    fn a_messages_tracestate_is_passed_on_cut_to_the_specifications_least() {
        let state: Vec<String> = (0..32)
            .map(|n| format!("k{n}={}", "v".repeat(250)))
            .collect();
        let state = state.join(",");
        let envelope = Envelope::from_headers([
            ("ce-specversion", "1.0"),
            ("ce-id", "1"),
            ("ce-source", "/elsewhere"),
            ("ce-type", "Shipped"),
            (
                "ce-traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("ce-tracestate", state.as_str()),
        ])
        .unwrap();
        let delivery = Delivery {
            envelope,
            subject: "orders.order.Shipped".to_owned(),
            payload: bytes::Bytes::new(),
            attempt: 1,
        };
        let context = delivery.trace_context();
        assert_eq!(
            context.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c",
            "the trace continued"
        );
        let kept = context.trace_state().header_value().unwrap_or_default();
        assert!(
            !kept.is_empty() && kept.len() <= MIN_PROPAGATED_LEN,
            "{} characters kept",
            kept.len()
        );
        assert!(kept.starts_with("k0="), "the first members kept: {kept}");
    }
}
