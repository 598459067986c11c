//! OpenTelemetry integration (feature `otel`).
//!
//! - [`Propagator`] implements `TextMapPropagator`, so it can be installed
//!   with `opentelemetry::global::set_text_map_propagator` in place of the
//!   SDK's `TraceContextPropagator`, with this crate's exact parsing.
//! - [`TraceContextLayer`](crate::TraceContextLayer) makes each request's
//!   `tracing` span a child of the remote parent for `tracing-opentelemetry`,
//!   and adopts the ids the OpenTelemetry SDK gives that span, so the ids
//!   propagated downstream are those of exported spans.
//! - [`PropagateLayer`](crate::PropagateLayer) takes the current span's
//!   OpenTelemetry context as the parent when it has one.
//!
//! OpenTelemetry's `TraceState` keeps the 2021 Recommendation's key rule
//! and refuses some Level 2 keys (`foo@@bar`, more than 14 characters after
//! an `@`). A span context holds the members it can; the `tracestate` we
//! received is passed on exactly, unless it was changed through
//! OpenTelemetry on the way.

use std::sync::LazyLock;

use opentelemetry::Context;
use opentelemetry::propagation::text_map_propagator::FieldIter;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{self as otel, TraceContextExt as _};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::carrier::{Carrier, CarrierMut, TRACEPARENT, TRACESTATE};
use crate::context::TraceContext;
use crate::ids::{SpanId, TraceFlags, TraceId};
use crate::propagator::Propagator;
use crate::tracestate::TraceState;

static FIELDS: LazyLock<[String; 2]> =
    LazyLock::new(|| [TRACEPARENT.to_owned(), TRACESTATE.to_owned()]);

/// Reads every line of a field through OpenTelemetry's `Extractor`.
struct ExtractorCarrier<'a>(&'a dyn Extractor);

impl Carrier for ExtractorCarrier<'_> {
    fn values<'a>(&'a self, name: &'static str) -> impl Iterator<Item = &'a [u8]> {
        self.0
            .get_all(name)
            .unwrap_or_default()
            .into_iter()
            .map(str::as_bytes)
    }
}

/// Writes through OpenTelemetry's `Injector`, which only sets fields: it
/// fills a fresh carrier, so there is nothing to remove.
struct InjectorCarrier<'a>(&'a mut dyn Injector);

impl CarrierMut for InjectorCarrier<'_> {
    fn set(&mut self, name: &'static str, value: &str) {
        self.0.set(name, value.to_owned());
    }

    fn remove(&mut self, _name: &'static str) {}
}

/// The `tracestate` extracted into an OpenTelemetry `Context`, exactly as
/// received, with the trace it belongs to.
struct Received {
    trace_id: TraceId,
    flags: TraceFlags,
    state: TraceState,
}

/// What this process received of a trace, to take back what OpenTelemetry
/// drops of it: the trace, its flags and its `tracestate`.
#[derive(Clone, Copy)]
struct Known<'a> {
    trace_id: TraceId,
    flags: TraceFlags,
    state: &'a TraceState,
}

impl TextMapPropagator for Propagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let received = cx.get::<Received>().map(|r| Known {
            trace_id: r.trace_id,
            flags: r.flags,
            state: &r.state,
        });
        if let Some(context) = from_span_context(cx.span().span_context(), received) {
            self.inject(&context, &mut InjectorCarrier(injector));
        }
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        match self.extract(&ExtractorCarrier(extractor)) {
            Ok((parent, state)) => {
                let received = Received {
                    trace_id: parent.trace_id(),
                    flags: parent.flags(),
                    state: state.clone(),
                };
                let context = TraceContext::continue_from(parent, state);
                cx.with_remote_span_context(remote_parent(&context))
                    .with_value(received)
            }
            Err(_) => cx.clone(),
        }
    }

    fn fields(&self) -> FieldIter<'_> {
        FieldIter::new(FIELDS.as_slice())
    }
}

/// The remote parent of `context` as an OpenTelemetry span context.
fn remote_parent(context: &TraceContext) -> otel::SpanContext {
    let parent = context.parent_id().unwrap_or(context.span_id());
    otel::SpanContext::new(
        otel::TraceId::from_bytes(context.trace_id().to_bytes()),
        otel::SpanId::from_bytes(parent.to_bytes()),
        otel::TraceFlags::new(context.flags().to_wire()),
        true,
        otel_trace_state(context.trace_state()),
    )
}

/// `state` as OpenTelemetry can hold it: the members whose keys its older
/// rule refuses are left out, not the whole state.
fn otel_trace_state(state: &TraceState) -> otel::TraceState {
    otel::TraceState::from_key_value(state.iter())
        .or_else(|_| {
            otel::TraceState::from_key_value(
                state
                    .iter()
                    .filter(|&member| otel::TraceState::from_key_value([member]).is_ok()),
            )
        })
        .unwrap_or_default()
}

/// Our view of an OpenTelemetry span: `None` when it is not valid.
///
/// `received` is what this process received of a trace. When it is the
/// span's trace, its random flag is kept (it says how the trace id was
/// made, so it travels with the id: the SDK gives a span it does not
/// sample no flags at all), and when the span's state is what
/// OpenTelemetry made of the received one, unchanged, the received state
/// is taken whole, with the members OpenTelemetry could not hold.
fn from_span_context(
    span: &otel::SpanContext,
    received: Option<Known<'_>>,
) -> Option<TraceContext> {
    if !span.is_valid() {
        return None;
    }
    let held = span.trace_state();
    let mut flags = TraceFlags::from_wire(span.trace_flags().to_u8());
    let mut state = None;
    if let Some(known) =
        received.filter(|known| known.trace_id.to_bytes() == span.trace_id().to_bytes())
    {
        if known.flags.is_random() {
            flags = flags.union(TraceFlags::RANDOM);
        }
        if known.state.iter().eq(held) || otel_trace_state(known.state) == *held {
            state = Some(known.state.clone());
        }
    }
    let state = state
        .unwrap_or_else(|| TraceState::parse_lines([held.header().as_bytes()]).unwrap_or_default());
    Some(TraceContext::from_parts(
        TraceId::from_bytes(span.trace_id().to_bytes())?,
        SpanId::from_bytes(span.span_id().to_bytes())?,
        None,
        flags,
        state,
    ))
}

/// Links the request's `tracing` span to the remote parent and takes the ids
/// the OpenTelemetry SDK gave it. Without a `tracing-opentelemetry` layer,
/// nothing changes.
pub(crate) fn bridge_server_span(span: &tracing::Span, context: &mut TraceContext) {
    if context.parent_id().is_some()
        && span
            .set_parent(Context::new().with_remote_span_context(remote_parent(context)))
            .is_err()
    {
        return;
    }
    let otel_context = span.context();
    let exported = otel_context.span();
    let exported = exported.span_context();
    if let (Some(trace_id), Some(span_id)) = (
        TraceId::from_bytes(exported.trace_id().to_bytes()),
        SpanId::from_bytes(exported.span_id().to_bytes()),
    ) {
        // A continued trace keeps the flags it came with; a new one takes
        // the SDK's sampling decision.
        let flags = if context.parent_id().is_some() {
            context.flags()
        } else {
            context
                .flags()
                .with_sampled(exported.trace_flags().is_sampled())
        };
        context.adopt(trace_id, span_id, flags);
    }
}

/// The current `tracing` span's OpenTelemetry span, as a parent for an
/// outgoing call, when `tracing-opentelemetry` tracks it.
pub(crate) fn current_span_context() -> Option<TraceContext> {
    let current = tracing::Span::current().context();
    let span = current.span();
    let ours = TraceContext::current();
    let received = ours.as_ref().map(|ours| Known {
        trace_id: ours.trace_id(),
        flags: ours.flags(),
        state: ours.trace_state(),
    });
    from_span_context(span.span_context(), received)
}
