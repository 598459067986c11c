//! What a saga service is, stated once: its name, its tables, the events
//! it consumes and how it applies them ([`SagaService`]). The embedded
//! system ([`embedded`](crate::embedded)) and the per-process mode
//! ([`serve`](crate::serve)) open, subscribe and relay every service
//! through this description and nothing else.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use palisade_outbox::{
    BoxError, ConsumerStats, Delivery, Handled, Handler, JetStreamConsumer, MemoryConsumer,
    PgInbox, SqliteInbox,
};
use sqlx::{PgConnection, SqliteConnection};

use crate::books::Books;
use crate::db::{Emit, Emitting, Outbox, ServiceDb, Tx};
use crate::events::SagaEvent;

/// A step of the saga: a service with a database of its own, applying the
/// events it consumes in the transaction that also writes its next event.
pub trait SagaService: Clone + std::fmt::Debug + Send + Sync + 'static {
    /// Its name: its database (a SQLite file, a PostgreSQL schema), its
    /// durable consumer, its relay.
    const NAME: &'static str;
    /// Its own tables (`CREATE TABLE IF NOT EXISTS`).
    const TABLES: &'static [&'static str];
    /// The event types it consumes: what it subscribes to, and the only
    /// events [`apply`](Self::apply) is given.
    const CONSUMES: &'static [&'static str];

    /// Its database.
    fn db(&self) -> &ServiceDb;

    /// Prepares a transaction for the batch of events it will apply,
    /// before the first (see [`Handler::prepare`]). Nothing by default.
    fn prepare<C: Tx>(&self, tx: &mut C) -> impl Future<Output = Result<(), BoxError>> + Send {
        let _ = tx;
        std::future::ready(Ok(()))
    }

    /// Applies `event`, of one of the [`CONSUMES`](Self::CONSUMES) types,
    /// in `tx`, once [`prepare`](Self::prepare)d; the events it announces
    /// go to the service's outbox through `tx`.
    fn apply<T: Emit>(
        &self,
        tx: &mut T,
        event: SagaEvent,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Called once the transaction that applied `delivery` committed.
    fn committed(&self, delivery: &Delivery) {
        let _ = delivery;
    }

    /// Its books, from its own database: its outbox's backlog by default,
    /// and whatever else it keeps that the invariants are checked against
    /// (orders count sagas pending longer than `stuck_after` as stuck).
    fn books(
        &self,
        stuck_after: Duration,
    ) -> impl Future<Output = Result<Books, sqlx::Error>> + Send {
        let _ = stuck_after;
        Books::of_outbox(Self::NAME, self.db())
    }
}

/// A service as its consumer's handler, with the service's outbox (of
/// the consumer's database, as its type says): each delivery of a type it
/// consumes is applied, any other ignored (and `apply` never sees it).
#[derive(Debug, Clone)]
pub struct Consuming<S, O>(pub S, pub O);

impl<S: SagaService, O: Outbox> Handler<O::Connection> for Consuming<S, O> {
    async fn handle(
        &self,
        tx: &mut O::Connection,
        delivery: &Delivery,
    ) -> Result<Handled, BoxError> {
        if !S::CONSUMES.contains(&delivery.envelope.event_type.as_str()) {
            return Ok(Handled::Ignored);
        }
        let event = SagaEvent::from_delivery(S::NAME, delivery)?;
        let mut emitting = Emitting {
            connection: tx,
            outbox: &self.1,
        };
        self.0.apply(&mut emitting, event).await?;
        Ok(Handled::Applied)
    }

    async fn prepare(&self, tx: &mut O::Connection) -> Result<(), BoxError> {
        self.0.prepare(tx).await
    }

    fn committed(&self, delivery: &Delivery) {
        self.0.committed(delivery);
    }
}

/// How long a consumer's inbox keeps a record at least: a relay that
/// published a batch and was down (past JetStream's duplicate window, or
/// with the embedded broker, any time) before marking it sent publishes
/// it again once back, and a record forgotten by then lets it be applied
/// again.
pub(crate) const INBOX_KEPT: Duration = Duration::from_secs(24 * 3_600);

/// The error of a service given an event it does not consume: the wiring
/// delivers none, so this is a bug, failed loudly rather than ignored.
#[must_use]
pub fn not_consumed(service: &str, event: &SagaEvent) -> BoxError {
    format!("{service} does not consume {}", event.type_name()).into()
}

/// A service's consumer, by the service's name.
type Named = (String, Arc<dyn StatsSource>);

/// The consumers' counters, by service, for the books and `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct Consumers {
    stats: Arc<Mutex<Vec<Named>>>,
}

/// A consumer whose counters can be read: the in-process one (embedded)
/// and the JetStream one (per process).
pub trait StatsSource: Send + Sync + std::fmt::Debug {
    /// The counters.
    fn stats(&self) -> ConsumerStats;
}

impl<H> StatsSource for MemoryConsumer<SqliteInbox, H>
where
    H: Handler<SqliteConnection> + std::fmt::Debug,
{
    fn stats(&self) -> ConsumerStats {
        Self::stats(self)
    }
}

impl<H> StatsSource for JetStreamConsumer<PgInbox, H>
where
    H: Handler<PgConnection> + std::fmt::Debug,
{
    fn stats(&self) -> ConsumerStats {
        Self::stats(self)
    }
}

impl Consumers {
    /// Counts `consumer` as `name`'s.
    pub fn add(&self, name: &str, consumer: Arc<dyn StatsSource>) {
        self.stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((name.to_owned(), consumer));
    }

    /// Each consumer's counters.
    #[must_use]
    pub fn stats(&self) -> Vec<(String, ConsumerStats)> {
        self.stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(name, consumer)| (name.clone(), consumer.stats()))
            .collect()
    }
}

/// `S`'s tables in a SQLite file of a new directory under the system's
/// temporary one, for a unit test: the database, and the directory (for
/// the test to remove).
#[cfg(test)]
pub(crate) async fn scratch_db<S: SagaService>() -> (ServiceDb, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("palisade-{}-{}", S::NAME, fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let db = ServiceDb::open_sqlite(&dir, S::NAME, S::TABLES)
        .await
        .unwrap();
    (db, dir)
}
