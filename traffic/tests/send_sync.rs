//! Public types can cross threads, and the services are `Clone` so axum and
//! tonic can use them.

use palisade_traffic::{
    Canary, CanaryError, CanaryEvent, CanaryPlan, CanarySplit, CellError, CellRouter, Cells,
    Pending, SplitFuture,
};

const fn send_sync<T: Send + Sync + 'static>() {}
const fn send<T: Send + 'static>() {}
const fn clone<T: Clone>() {}

type Inner = tower::util::BoxCloneSyncService<u64, u64, tower::BoxError>;
type ByUser = fn(&u64) -> Option<u64>;

#[test]
fn public_types_are_send_sync() {
    const {
        send_sync::<Canary>();
        send_sync::<CanaryError>();
        send_sync::<CanaryEvent>();
        send_sync::<CanaryPlan>();
        send_sync::<CellError>();
        send_sync::<Cells<Inner>>();
        send_sync::<CellRouter<Inner, ByUser>>();
        send_sync::<CanarySplit<Inner, Inner, ByUser>>();
        send_sync::<Pending>();
        send::<SplitFuture<Inner, Inner, u64, palisade_traffic::ErrorsAsFailures>>();
        clone::<CellRouter<Inner, ByUser>>();
        clone::<CanarySplit<Inner, Inner, ByUser>>();
    }
}

#[cfg(feature = "grpc")]
#[test]
fn grpc_types_are_send() {
    const {
        send::<palisade_traffic::GrpcBody<tonic::body::Body>>();
    }
}
