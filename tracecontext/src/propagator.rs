//! Reading trace context from a carrier and writing it to one: the rules
//! shared by the layers and by message producers and consumers.

use crate::carrier::{Carrier, CarrierMut, TRACEPARENT, TRACESTATE};
use crate::context::TraceContext;
use crate::error::ExtractError;
use crate::ids::TraceFlags;
use crate::traceparent::{TRACEPARENT_LEN, TraceParent};
use crate::tracestate::TraceState;

/// How this service takes part in W3C Trace Context: the rules for
/// continuing a trace, starting one, and writing it out.
///
/// The same value drives [`TraceContextLayer`](crate::TraceContextLayer),
/// [`PropagateLayer`](crate::PropagateLayer) and message carriers, so a
/// service configures it once.
///
/// # Example
///
/// ```
/// use std::collections::HashMap;
/// use palisade_tracecontext::Propagator;
///
/// let propagator = Propagator::new();
///
/// // A consumer continues the trace carried by a message's attributes.
/// let mut attributes = HashMap::from([(
///     "traceparent".to_owned(),
///     "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
/// )]);
/// let context = propagator.continue_or_start(&attributes);
/// assert_eq!(context.trace_id().to_string(), "0af7651916cd43dd8448eb211c80319c");
///
/// // A producer writes its own span as the parent of the next hop.
/// let publish = context.child();
/// propagator.inject(&publish, &mut attributes);
/// assert_eq!(attributes["traceparent"], publish.traceparent().to_string());
/// ```
///
/// # OpenTelemetry
///
/// With the `otel` feature, `Propagator` is also an OpenTelemetry
/// `TextMapPropagator`: install it with
/// `opentelemetry::global::set_text_map_propagator(Propagator::new())`. Its
/// inherent [`extract`](Self::extract) shadows the trait's on a concrete
/// value; call the trait's as `TextMapPropagator::extract(&propagator, ..)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Propagator {
    new_trace_flags: TraceFlags,
    tracestate_limit: Option<usize>,
}

impl Propagator {
    /// Traces we start are sampled and carry the random flag; `tracestate`
    /// is passed on whole.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            new_trace_flags: TraceFlags::SAMPLED.union(TraceFlags::RANDOM),
            tracestate_limit: None,
        }
    }

    /// Whether traces we start set the sampled flag (default `true`).
    #[must_use]
    pub const fn sample_new_traces(mut self, sampled: bool) -> Self {
        self.new_trace_flags = self.new_trace_flags.with_sampled(sampled);
        self
    }

    /// Whether traces we start set the Level 2 random flag (default
    /// `true`: our trace ids are random in all 128 bits). Turn it off only
    /// for Level 1 peers that refuse unknown flags.
    #[must_use]
    pub const fn random_flag(mut self, random: bool) -> Self {
        self.new_trace_flags = if random {
            self.new_trace_flags.union(TraceFlags::RANDOM)
        } else {
            TraceFlags::from_wire(self.new_trace_flags.to_wire() & !TraceFlags::RANDOM.to_wire())
        };
        self
    }

    /// Cuts the `tracestate` we pass on to `max_len` characters (at least
    /// 512, as the specification asks) by removing whole members; see
    /// [`TraceState::truncate`]. No limit by default.
    #[must_use]
    pub const fn tracestate_limit(mut self, max_len: usize) -> Self {
        self.tracestate_limit = Some(max_len);
        self
    }

    /// The flags of traces this propagator starts.
    #[must_use]
    pub const fn new_trace_flags(&self) -> TraceFlags {
        self.new_trace_flags
    }

    /// Reads the remote parent from `carrier`.
    ///
    /// The `traceparent` must appear exactly once and be valid. `tracestate`
    /// is read only then, combining all its lines; an invalid one is
    /// discarded (an empty state is returned with the parent).
    ///
    /// # Errors
    ///
    /// [`ExtractError`] when `traceparent` is missing, repeated or invalid;
    /// the caller should start a new trace and ignore `tracestate`.
    pub fn extract<C: Carrier + ?Sized>(
        &self,
        carrier: &C,
    ) -> Result<(TraceParent, TraceState), ExtractError> {
        let mut lines = carrier.values(TRACEPARENT);
        let first = lines.next().ok_or(ExtractError::Missing)?;
        if lines.next().is_some() {
            return Err(ExtractError::Duplicated);
        }
        let parent = TraceParent::parse(first)?;
        let state = match carrier.header_values(TRACESTATE) {
            Some(lines) => TraceState::parse_header_values(lines),
            None => TraceState::parse_lines(carrier.values(TRACESTATE)),
        };
        let mut state = match state {
            Ok(state) => state,
            Err(err) => {
                tracing::debug!(target: "palisade_tracecontext", %err, "tracestate discarded");
                TraceState::new()
            }
        };
        if let Some(limit) = self.tracestate_limit {
            state.truncate(limit);
        }
        Ok((parent, state))
    }

    /// Continues the trace in `carrier` with a new span of ours, or starts a
    /// new trace when there is none to continue.
    pub fn continue_or_start<C: Carrier + ?Sized>(&self, carrier: &C) -> TraceContext {
        match self.extract(carrier) {
            Ok((parent, state)) => TraceContext::continue_from(parent, state),
            Err(err) => {
                if err != ExtractError::Missing {
                    tracing::debug!(target: "palisade_tracecontext", %err, "traceparent refused, starting a new trace");
                }
                self.start()
            }
        }
    }

    /// Starts a new trace with this propagator's flags.
    #[must_use]
    pub fn start(&self) -> TraceContext {
        TraceContext::new_root(self.new_trace_flags)
    }

    /// Writes `context` to `carrier`: `traceparent` naming its span as the
    /// parent, and `tracestate` when it has members (an empty one is
    /// removed, never written).
    ///
    /// The `tracestate` goes through [`CarrierMut::set_value`]: an
    /// [`http::HeaderMap`] shares the state's bytes, so the only allocation
    /// is the `traceparent`'s value.
    pub fn inject<C: CarrierMut + ?Sized>(&self, context: &TraceContext, carrier: &mut C) {
        // Word-aligned, so `from_utf8` checks it a word at a time.
        let encoded = Aligned(context.traceparent().encode());
        carrier.set(
            TRACEPARENT,
            std::str::from_utf8(&encoded.0).unwrap_or_default(),
        );
        match context.trace_state().as_header_value() {
            Some(state) => carrier.set_value(TRACESTATE, state.clone()),
            None => carrier.remove(TRACESTATE),
        }
    }
}

/// A `traceparent` in a buffer aligned to a machine word.
#[repr(align(8))]
struct Aligned([u8; TRACEPARENT_LEN]);

impl Default for Propagator {
    fn default() -> Self {
        Self::new()
    }
}
