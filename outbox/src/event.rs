//! Events as the application writes them, and as the relay reads them back.

use std::collections::BTreeMap;

use uuid::Uuid;

/// An event to publish once the transaction that writes it commits.
///
/// Its aggregate (type and id) is the ordering key: events of one aggregate
/// are published in the order they were enqueued.
///
/// # Example
///
/// ```
/// use palisade_outbox::Event;
///
/// let event = Event::new("order", "o-17", "OrderCreated", br#"{"total":42}"#.to_vec())
///     .content_type("application/json")
///     .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
///     .header("tenant", "acme");
/// assert_eq!(event.aggregate_id(), "o-17");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub(crate) id: Uuid,
    pub(crate) aggregate_type: String,
    pub(crate) aggregate_id: String,
    pub(crate) event_type: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) headers: BTreeMap<String, String>,
}

impl Event {
    /// An event of `event_type` about the aggregate `aggregate_type` /
    /// `aggregate_id`, with a fresh UUID v7 id (time-ordered).
    ///
    /// With feature `tracecontext`, the current
    /// [`TraceContext`](palisade_tracecontext::TraceContext) (inside a
    /// handler behind `TraceContextLayer`, or a consumer's handler) is
    /// captured as the `traceparent` and `tracestate` headers, so the trace
    /// crosses the broker.
    #[must_use]
    pub fn new(
        aggregate_type: impl Into<String>,
        aggregate_id: impl Into<String>,
        event_type: impl Into<String>,
        payload: impl Into<Vec<u8>>,
    ) -> Self {
        Self {
            id: Uuid::now_v7(),
            aggregate_type: aggregate_type.into(),
            aggregate_id: aggregate_id.into(),
            event_type: event_type.into(),
            payload: payload.into(),
            headers: current_trace(),
        }
    }

    /// Adds a header carried with the message (`traceparent`, a tenant…).
    ///
    /// `content-type`, `traceparent` and `tracestate` fill the CloudEvents
    /// attributes of those names; any other header travels as a
    /// CloudEvents extension attribute (`ce-<name>` on NATS, and in
    /// [`Envelope::extensions`](crate::Envelope::extensions) for the
    /// consumer's handler) named by its ASCII letters and digits,
    /// lowercased: `tenant` as `tenant`, `X-Tenant` as `xtenant`. A name
    /// that leaves nothing, or an attribute the envelope has already (`id`,
    /// `source`, `type`, `subject`, `time`, …), is not carried.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// The payload's media type (`datacontenttype`).
    #[must_use]
    pub fn content_type(self, media_type: impl Into<String>) -> Self {
        self.header("content-type", media_type)
    }

    /// The event's id, also the message id brokers deduplicate by.
    #[must_use]
    pub const fn id(&self) -> Uuid {
        self.id
    }

    /// The aggregate's type.
    #[must_use]
    pub fn aggregate_type(&self) -> &str {
        &self.aggregate_type
    }

    /// The aggregate's id: the ordering key.
    #[must_use]
    pub fn aggregate_id(&self) -> &str {
        &self.aggregate_id
    }

    /// The event's type.
    #[must_use]
    pub fn event_type(&self) -> &str {
        &self.event_type
    }

    /// The payload.
    #[must_use]
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The headers.
    #[must_use]
    pub const fn headers(&self) -> &BTreeMap<String, String> {
        &self.headers
    }

    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    pub(crate) fn headers_json(&self) -> String {
        serde_json::to_string(&self.headers).unwrap_or_else(|_| "{}".to_owned())
    }
}

/// The current trace context as headers (feature `tracecontext`).
fn current_trace() -> BTreeMap<String, String> {
    #[allow(unused_mut)]
    let mut headers = BTreeMap::new();
    #[cfg(feature = "tracecontext")]
    if let Some(context) = palisade_tracecontext::TraceContext::current() {
        palisade_tracecontext::Propagator::new().inject(&context, &mut headers);
    }
    headers
}

/// An event the relay claimed, to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub(crate) seq: i64,
    /// The claim it was handed out under, which fences its settle.
    pub(crate) claim: Uuid,
    /// The event as enqueued.
    pub event: Event,
    /// When it was enqueued, in milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    /// Earlier failed attempts to publish it.
    pub attempts: i32,
}

impl Message {
    /// `event` as a relay hands it to a [`Publisher`](crate::Publisher),
    /// enqueued at `created_at_ms` (milliseconds since the Unix epoch) and
    /// failed `attempts` times before: for testing a publisher of your
    /// own, or driving one without a store. It carries no claim, so
    /// neither of this crate's stores changes anything when settling it.
    ///
    /// ```
    /// use palisade_outbox::{Event, MemoryBroker, Message, Published, Publisher};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let broker = MemoryBroker::new(16);
    /// let event = Event::new("order", "o-1", "OrderPlaced", b"{}".to_vec());
    /// let published = broker.publish(&Message::new(event, 0, 0)).await;
    /// assert!(matches!(published, Ok(Published::Stored)));
    /// # }
    /// ```
    #[must_use]
    pub const fn new(event: Event, created_at_ms: i64, attempts: i32) -> Self {
        Self {
            seq: 0,
            claim: Uuid::nil(),
            event,
            created_at_ms,
            attempts,
        }
    }

    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    pub(crate) fn from_row(
        (seq, claim): (i64, Uuid),
        id: &str,
        aggregate: (String, String),
        event_type: String,
        payload: Vec<u8>,
        headers: &str,
        (created_at_ms, attempts): (i64, i32),
    ) -> Self {
        Self {
            seq,
            claim,
            event: Event {
                id: Uuid::parse_str(id).unwrap_or_default(),
                aggregate_type: aggregate.0,
                aggregate_id: aggregate.1,
                event_type,
                payload,
                headers: serde_json::from_str(headers).unwrap_or_default(),
            },
            created_at_ms,
            attempts,
        }
    }
}
