//! Public types can cross threads: a relay and a consumer run in tasks of
//! their own, their stores and brokers shared with the request handlers.

use palisade_outbox::{
    ConfigError, Envelope, Event, MemoryBroker, Message, OutboxConfig, PublishError,
};

const fn send_sync<T: Send + Sync + 'static>() {}

#[test]
fn public_types_are_send_sync() {
    const {
        send_sync::<ConfigError>();
        send_sync::<Envelope>();
        send_sync::<Event>();
        send_sync::<MemoryBroker>();
        send_sync::<Message>();
        send_sync::<OutboxConfig>();
        send_sync::<PublishError>();
    }
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_types_are_send_sync() {
    use palisade_outbox::{PgInbox, PgOutbox, Relay};
    const {
        send_sync::<PgInbox>();
        send_sync::<PgOutbox>();
        send_sync::<Relay<PgOutbox, MemoryBroker>>();
    }
}

#[cfg(feature = "sqlite")]
#[test]
fn sqlite_types_are_send_sync() {
    use palisade_outbox::{HandoffBroker, Relay, SqliteInbox, SqliteOutbox};
    const {
        send_sync::<HandoffBroker>();
        send_sync::<SqliteInbox>();
        send_sync::<SqliteOutbox>();
        send_sync::<Relay<SqliteOutbox, HandoffBroker>>();
    }
}

#[cfg(feature = "nats")]
#[test]
fn nats_types_are_send_sync() {
    const {
        send_sync::<palisade_outbox::NatsJetStreamPublisher>();
    }
}
