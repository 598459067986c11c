//! Test support shared by palisade's crates, so each helper is written
//! once: reading OpenTelemetry metrics back through the SDK's in-memory
//! exporter (feature `otel`), and a scripted tonic server (feature `grpc`).

#[cfg(feature = "grpc")]
pub mod grpc;
#[cfg(feature = "otel")]
mod metrics;

#[cfg(feature = "otel")]
pub use metrics::MetricsProbe;
