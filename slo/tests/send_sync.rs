//! Public types can cross threads, and the services are `Clone` so axum and
//! tonic can use them.

use palisade_slo::future::ResponseFuture;
use palisade_slo::{
    BoxErrors, BudgetSignal, ConfigError, ErrorBudget, ErrorsAreBad, KeyedBudgets, Objective,
    Pending, Report, Shed, ShedNothing, Slo, SloLayer,
};

const fn send_sync<T: Send + Sync + 'static>() {}
const fn send<T: Send + 'static>() {}
const fn clone<T: Clone>() {}

type Inner = tower::util::BoxCloneSyncService<u32, u32, tower::BoxError>;
type InnerFuture = <Inner as tower::Service<u32>>::Future;

#[test]
fn public_types_are_send_sync() {
    const {
        send_sync::<BudgetSignal>();
        send_sync::<ConfigError>();
        send_sync::<ErrorBudget>();
        send_sync::<KeyedBudgets>();
        send_sync::<Objective>();
        send_sync::<Pending>();
        send_sync::<Report>();
        send_sync::<Shed>();
        send_sync::<SloLayer>();
        send_sync::<Slo<Inner, ErrorsAreBad, BoxErrors, ShedNothing>>();
        send::<ResponseFuture<InnerFuture, ErrorsAreBad, BoxErrors>>();
        clone::<SloLayer>();
        clone::<Slo<Inner, ErrorsAreBad, BoxErrors, ShedNothing>>();
    }
}

#[cfg(feature = "grpc")]
#[test]
fn grpc_types_are_send_sync() {
    use palisade_slo::{GrpcBody, GrpcStatus, Unavailable};
    const {
        send::<GrpcBody<tonic::body::Body>>();
        send_sync::<SloLayer<GrpcStatus, Unavailable, ShedNothing>>();
    }
}
