//! Test support shared by palisade's crates, so each helper is written
//! once: reading OpenTelemetry metrics back through the SDK's in-memory
//! exporter (feature `otel`), a scripted tonic server (feature `grpc`), and a
//! TCP proxy that takes a server away mid-test (feature `net`), and a local
//! Redis Cluster (feature `redis-cluster`).

#[cfg(feature = "grpc")]
pub mod grpc;
#[cfg(feature = "otel")]
mod metrics;
#[cfg(feature = "net")]
pub mod proxy;
#[cfg(feature = "redis-cluster")]
pub mod redis_cluster;
#[cfg(feature = "net")]
pub mod servers;

#[cfg(feature = "otel")]
pub use metrics::{Buckets, MetricsProbe};
