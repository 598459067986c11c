#![cfg_attr(docsrs, feature(doc_cfg))]
//! A transactional outbox: events written in the same transaction as the
//! business rows, published by a relay, deduplicated by consumers.
//!
//! "Save the order, then publish the event" loses the event when the
//! process dies in between, and publishes a ghost when the transaction
//! rolls back after the publish. Here the event row is written by the
//! outbox's `enqueue` in the caller's own transaction, so the order and its
//! event commit or roll back together; a [`Relay`] then publishes each
//! event with broker acknowledgement and marks it sent.
//!
//! - Storage: PostgreSQL ([`PgOutbox`], feature `postgres`) for
//!   production, SQLite ([`SqliteOutbox`], feature `sqlite`) for an
//!   embedded service with no server. Each creates its table with
//!   `migrate`.
//! - Several relays can share one outbox: batches are claimed with a lease
//!   (and `FOR UPDATE SKIP LOCKED` in PostgreSQL); a crashed relay's events
//!   are claimed again when its lease ends. A publish is cut when its
//!   lease ends, and every settle is fenced by the claim that produced it,
//!   so a relay that stalled cannot undo what another did since.
//! - Per-aggregate order (on by default): an event is published only after
//!   every earlier event of its aggregate was acknowledged, in commit order.
//!   In PostgreSQL, an event far back in its aggregate's line is set aside
//!   until the events before it move, so a few hot aggregates with a deep
//!   backlog, or a dead event's later ones, cost a claim no more than a few
//!   events each.
//! - An event the broker rejects backs off on its own, and is dead after
//!   its last attempt, without stalling other aggregates; an operator
//!   lists, requeues or discards dead events ([`DeadEvents`]). A broker
//!   that is unavailable spends no attempt: its events wait for as long
//!   as the outage lasts, optionally behind a circuit breaker (feature
//!   `circuit-breaker`).
//! - Relays wake when events commit (PostgreSQL `LISTEN/NOTIFY` with
//!   [`PgOutbox::listen`]; SQLite's commit hook in process) and poll as a
//!   fallback.
//! - Consumers apply each message once with an inbox ([`PgInbox`],
//!   [`SqliteInbox`]) written in the same transaction as the effect.
//! - In process, [`HandoffBroker`] acknowledges a publish only once every
//!   consumer ([`MemoryConsumer`]) applied the event, so the outbox stays
//!   the log and a crash or a stop loses nothing (the embedded default);
//!   [`MemoryBroker`] acknowledges once the event is queued, for tests.
//! - With feature `nats`, [`NatsJetStreamPublisher`] publishes to JetStream
//!   with `Nats-Msg-Id` and the CloudEvents [`Envelope`] as headers.
//! - With feature `otel`, [`Relay::instrument`] reports what the relay did
//!   and the backlog it leaves (see [`otel`]).
//!
//! # Example
//!
//! End to end in one SQLite database: an order and its event in one
//! transaction, a relay to an in-process broker, and a consumer applying
//! it once through its inbox, by hand (see [`HandoffBroker`] for the
//! embedded default, where [`MemoryConsumer`] does it).
//!
//! ```
//! # #[cfg(feature = "sqlite")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use palisade_outbox::{Event, MemoryBroker, OutboxConfig, Relay, SqliteInbox, SqliteOutbox};
//!
//! let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
//! let outbox = SqliteOutbox::new(pool.clone(), OutboxConfig::default());
//! let inbox = SqliteInbox::new(pool.clone(), "inbox")?;
//! outbox.migrate().await?;
//! inbox.migrate().await?;
//!
//! let mut tx = pool.begin().await?;
//! // ... write the order in `tx` ...
//! outbox.enqueue(&mut tx, &Event::new("order", "o-17", "OrderCreated", b"{}".to_vec())).await?;
//! tx.commit().await?;
//!
//! let broker = MemoryBroker::new(1024);
//! let mut deliveries = broker.subscribe();
//! Relay::new(outbox, broker).run_once().await?;
//!
//! let message = deliveries.recv().await.expect("published");
//! let mut tx = pool.begin().await?;
//! if inbox.process_once(&mut tx, "reserve-stock", message.event.id()).await? {
//!     // ... apply the effect in `tx` ...
//! }
//! tx.commit().await?; // then acknowledge
//! # Ok(()) }
//! # #[cfg(not(feature = "sqlite"))]
//! # fn main() {}
//! ```

mod availability;
mod config;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod consume;
mod envelope;
pub mod error;
mod event;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod forget;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod handoff;
#[cfg(all(feature = "nats", any(feature = "postgres", feature = "sqlite")))]
mod jetstream;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "otel")]
pub mod otel;
#[cfg(feature = "postgres")]
mod postgres;
mod publisher;
mod relay;
#[cfg(all(feature = "nats", any(feature = "postgres", feature = "sqlite")))]
mod replay;
#[cfg(all(feature = "nats", any(feature = "postgres", feature = "sqlite")))]
mod roster;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod sql;
#[cfg(feature = "sqlite")]
mod sqlite;
mod store;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod stores;

/// The async-nats whose JetStream context the publisher and consumer
/// take (feature `nats`).
#[cfg(feature = "nats")]
pub use async_nats;
pub use config::OutboxConfig;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub use consume::{BoxError, ConsumerStats, Delivery, Handled, Handler, MemoryConsumer, Transient};
pub use envelope::{Envelope, EnvelopeError};
pub use error::{ConfigError, PublishError, PublishErrorKind};
pub use event::{Event, Message};
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub use handoff::{Handoff, HandoffBroker, Inbound};
#[cfg(all(feature = "nats", any(feature = "postgres", feature = "sqlite")))]
pub use jetstream::{ConsumerConfig, ConsumerSetupError, JetStreamConsumer};
#[cfg(feature = "nats")]
pub use nats::{NatsJetStreamPublisher, StreamSetupError};
/// The OpenTelemetry API this crate records to (feature `otel`): take
/// the `Meter` you hand it from this version.
#[cfg(feature = "otel")]
pub use opentelemetry;
#[cfg(feature = "postgres")]
pub use postgres::{PgInbox, PgOutbox};
pub use publisher::{MemoryBroker, Published, Publisher};
pub use relay::{BatchReport, Relay};
#[cfg(all(feature = "nats", any(feature = "postgres", feature = "sqlite")))]
pub use replay::{Replay, replay};
#[cfg(feature = "sqlite")]
pub use sqlite::{CommitWake, SqliteInbox, SqliteOutbox};
/// The sqlx whose pools, transactions and errors the stores take and
/// give.
pub use sqlx;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub use store::InboxStore;
pub use store::{Backlog, CleanUp, DeadEvent, DeadEvents, Failed, OutboxStore};

/// The README's example, compiled as a doctest so it stays true (it uses
/// PostgreSQL).
#[doc = include_str!("../README.md")]
#[cfg(all(doctest, feature = "postgres"))]
pub struct ReadmeDoctests;
