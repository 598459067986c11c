//! The starter's context, carried to the task a computation runs on.

use std::future::Future;

use tracing::Instrument;

/// `computation`, to run in the context of the caller starting it on
/// whatever task polls it: the caller's tracing span and (feature
/// `tracecontext`) its W3C trace context. A flight's or a background
/// refresh's task began with neither, so the origin a handler calls, and
/// every call it makes in turn, began a trace of its own.
pub(crate) fn in_starters_context<F: Future>(computation: F) -> impl Future<Output = F::Output> {
    #[cfg(feature = "tracecontext")]
    let computation = {
        let context = palisade_tracecontext::TraceContext::current();
        async move {
            match context {
                Some(context) => context.scope(computation).await,
                None => computation.await,
            }
        }
    };
    computation.instrument(tracing::Span::current())
}
