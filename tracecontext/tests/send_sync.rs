//! Public types can cross threads, and the layers' services are `Clone` so
//! axum and tonic can use them.

use palisade_tracecontext::server::future::ResponseFuture;
use palisade_tracecontext::{
    ExtractError, Propagate, PropagateLayer, Propagator, SpanId, TraceContext, TraceContextLayer,
    TraceContextService, TraceFlags, TraceId, TraceParent, TraceParentError, TraceState,
    TraceStateError,
};

const fn send_sync<T: Send + Sync + 'static>() {}
const fn clone<T: Clone>() {}

type Inner = tower::util::BoxCloneSyncService<http::Request<()>, http::Response<()>, ()>;
type Fut = std::future::Ready<Result<http::Response<()>, ()>>;

#[test]
fn public_types_are_send_sync() {
    const {
        send_sync::<ExtractError>();
        send_sync::<Propagate<Inner>>();
        send_sync::<PropagateLayer>();
        send_sync::<Propagator>();
        send_sync::<ResponseFuture<Fut>>();
        send_sync::<SpanId>();
        send_sync::<TraceContext>();
        send_sync::<TraceContextLayer>();
        send_sync::<TraceContextService<Inner>>();
        send_sync::<TraceFlags>();
        send_sync::<TraceId>();
        send_sync::<TraceParent>();
        send_sync::<TraceParentError>();
        send_sync::<TraceState>();
        send_sync::<TraceStateError>();
        clone::<Propagate<Inner>>();
        clone::<TraceContextService<Inner>>();
    }
}
