//! The starter's context, carried to the task a computation runs on.

use std::future::Future;

use tracing::Instrument;

/// `computation`, to run in the context of the caller starting it on
/// whatever task polls it: (feature `tracecontext`) the caller's W3C
/// trace context, and a span of its own that follows from the caller's.
/// A flight's or a background refresh's task began with neither, so the
/// origin a handler calls, and every call it makes in turn, began a trace
/// of its own.
///
/// The span follows from the caller's rather than inside it: a background
/// refresh outlives the request that started it, and a span is not
/// closed (its duration not ended) while one inside it is open.
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
    let span =
        tracing::debug_span!(target: "palisade_coalesce", parent: None, "coalesced computation");
    span.follows_from(tracing::Span::current());
    computation.instrument(span)
}
