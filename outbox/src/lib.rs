//! A transactional outbox: events written in the same transaction as the
//! business rows, published by a relay, deduplicated by consumers.
//!
//! "Save the order, then publish the event" loses the event when the
//! process dies in between, and publishes a ghost when the transaction
//! rolls back after the publish. Here the event row is written by
//! [`PgOutbox::enqueue`] in the caller's own transaction, so the order and
//! its event commit or roll back together; a [`Relay`] then publishes each
//! event with broker acknowledgement and marks it sent.
//!
//! - Several relays can share one outbox: batches are claimed with
//!   `FOR UPDATE SKIP LOCKED` and a lease; a crashed relay's events are
//!   claimed again when its lease ends.
//! - Per-aggregate order (on by default): an event is published only after
//!   every earlier event of its aggregate was acknowledged.
//! - A failing event backs off on its own, and is dead after its last
//!   attempt, without stalling other aggregates.
//! - Relays wake on `LISTEN/NOTIFY` ([`PgOutbox::listen`]) and poll as a
//!   fallback.
//! - Consumers apply each message once with an [`Inbox`] written in the
//!   same transaction as the effect.
//! - With feature `nats`, [`NatsJetStreamPublisher`] publishes to JetStream
//!   with `Nats-Msg-Id` and the CloudEvents [`Envelope`] as headers.
//! - With feature `otel`, [`Relay::instrument`] reports what the relay did
//!   and the backlog it leaves (see [`otel`]).

mod config;
mod envelope;
pub mod error;
mod event;
#[cfg(feature = "postgres")]
mod inbox;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "otel")]
pub mod otel;
#[cfg(feature = "postgres")]
mod postgres;
mod publisher;
mod relay;
mod store;

pub use config::OutboxConfig;
pub use envelope::{Envelope, EnvelopeError};
pub use error::{ConfigError, PublishError};
pub use event::{Event, Message};
#[cfg(feature = "postgres")]
pub use inbox::Inbox;
#[cfg(feature = "nats")]
pub use nats::{NatsJetStreamPublisher, StreamSetupError};
#[cfg(feature = "postgres")]
pub use postgres::PgOutbox;
pub use publisher::{MemoryBroker, Published, Publisher};
pub use relay::{BatchReport, Relay};
pub use store::{Backlog, OutboxStore};

/// The README's example, compiled as a doctest so it stays true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
