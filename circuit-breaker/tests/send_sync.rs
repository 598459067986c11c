//! Public types can cross threads, and the services are `Clone` so axum and
//! tonic can use them.

use palisade_circuit_breaker::future::ResponseFuture;
use palisade_circuit_breaker::{
    BoxErrors, BreakerRegistry, CircuitBreaker, CircuitBreakerLayer, CircuitBreakerService, Config,
    ConfigError, ErrorsAsFailures, Metrics, Open, Permit, Transition,
};

const fn send_sync<T: Send + Sync + 'static>() {}
const fn send<T: Send + 'static>() {}
const fn clone<T: Clone>() {}

type Inner = tower::util::BoxCloneSyncService<u32, u32, tower::BoxError>;
type InnerFuture = <Inner as tower::Service<u32>>::Future;
type Service = CircuitBreakerService<Inner, CircuitBreaker, ErrorsAsFailures, BoxErrors>;

#[test]
fn public_types_are_send_sync() {
    const {
        send_sync::<BreakerRegistry<String>>();
        send_sync::<CircuitBreaker>();
        send_sync::<CircuitBreakerLayer>();
        send_sync::<Config>();
        send_sync::<ConfigError>();
        send_sync::<Metrics>();
        send_sync::<Open>();
        send_sync::<Permit>();
        send_sync::<Transition>();
        send_sync::<Service>();
        send::<ResponseFuture<InnerFuture, ErrorsAsFailures, BoxErrors>>();
        clone::<CircuitBreakerLayer>();
        clone::<Service>();
    }
}

#[cfg(feature = "grpc")]
#[test]
fn grpc_types_are_send() {
    const {
        send::<palisade_circuit_breaker::GrpcBody<tonic::body::Body>>();
    }
}

#[cfg(feature = "redis")]
#[test]
fn fleet_types_are_send_sync() {
    use palisade_circuit_breaker::fleet::{Fleet, Member};
    const {
        send_sync::<Fleet>();
        send_sync::<Member>();
    }
}
