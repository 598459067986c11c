//! The palisade order system: every pattern of palisade composed into one
//! saga.
//!
//! An order goes `OrderCreated → InventoryReserved → PaymentSucceeded →
//! ShippingScheduled → OrderConfirmed`; a declined card runs the
//! compensation `PaymentFailed → InventoryReleased → OrderCancelled`, and
//! missing stock `InventoryRejected → OrderCancelled`. Each step is one
//! local transaction writing the service's rows and its outbox event
//! ([`palisade_outbox`]); each service applies the events it consumes once,
//! through its inbox, in the same transaction as the effect. Each service
//! says once what it is (its name, tables, the events it consumes and its
//! step) as a [`service::SagaService`].
//!
//! [`embedded::System`] runs every service in one process on SQLite files
//! and the in-process broker; [`serve::serve`] runs one service as a process
//! of its own on PostgreSQL, NATS JetStream and Redis. The services' code is
//! the same in both ([`db`]). [`load::run`] places orders through the
//! gateway and checks the books afterwards.

pub mod auth;
pub mod books;
pub mod card;
pub mod catalog;
pub mod dashboard;
pub mod db;
pub mod dead_events;
pub mod embedded;
pub mod events;
pub mod gateway;
mod group_commit;
pub mod history;
pub mod identity;
pub mod inventory;
pub mod limits;
pub mod load;
pub mod metrics;
pub mod net;
pub mod objectives;
pub mod orders;
pub mod payment;
mod private_file;
pub mod processor;
pub mod read_model;
pub mod serve;
pub mod service;
pub mod shipping;
pub mod stuck;
pub mod telemetry;
