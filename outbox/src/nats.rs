//! The NATS JetStream publisher (feature `nats`).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::context::{PublishError as JetStreamError, PublishErrorKind};
use async_nats::jetstream::{self, ErrorCode, stream};

use crate::envelope::Envelope;
use crate::error::PublishError;
use crate::event::{Event, Message};
use crate::publisher::{Published, Publisher};

/// Picks the subject of an event.
type SubjectOf = Arc<dyn Fn(&Event) -> String + Send + Sync>;

/// The `max_bytes` of a subject's stream, once read, and when it was
/// asked for.
type Limit = (Arc<tokio::sync::OnceCell<i64>>, std::time::Instant);

/// Publishes events to a JetStream stream with acknowledgement.
///
/// Each message carries `Nats-Msg-Id` = the event id, so JetStream drops a
/// duplicate (a retry after a lost acknowledgement) within the stream's
/// duplicate window and acknowledges it as such; the CloudEvents envelope,
/// trace context and the event's own headers travel as `ce-` headers
/// ([`Envelope`]). The subject is
/// `<prefix>.<aggregate type>.<event type>` unless set with
/// [`subject`](Self::subject).
///
/// [`ensure_stream`](Self::ensure_stream) checks, before the relay starts,
/// that the stream exists, captures the publisher's subjects, and that its
/// duplicate window covers the relay's retry horizon: otherwise a late
/// retry would be stored twice. An outage
/// spends no attempts and may outlast any window: an event whose publish
/// was stored but whose acknowledgement was lost as the broker went away
/// may be stored again after the outage, which consumers' inboxes drop as
/// long as they keep their records that long
/// (`JetStreamConsumer::inbox_retention`).
///
/// # Example
///
/// ```no_run
/// use palisade_outbox::{NatsJetStreamPublisher, OutboxConfig};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let client = async_nats::connect("nats://127.0.0.1:4222").await?;
/// let publisher = NatsJetStreamPublisher::new(async_nats::jetstream::new(client), "ORDERS", "/orders")
///     .subject_prefix("orders");
/// publisher.ensure_stream(&OutboxConfig::default(), true).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct NatsJetStreamPublisher {
    context: jetstream::Context,
    stream: String,
    source: String,
    prefix: String,
    subject: Option<SubjectOf>,
    /// What `ensure_stream` makes a missing stream with.
    template: stream::Config,
    /// The `max_bytes` of the stream of each subject lately refused as
    /// "store failed", and when it was read.
    limits: Arc<Mutex<HashMap<String, Limit>>>,
}

impl fmt::Debug for NatsJetStreamPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsJetStreamPublisher")
            .field("stream", &self.stream)
            .field("source", &self.source)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// The stream cannot take the relay's events safely.
#[derive(Debug)]
pub struct StreamSetupError(String);

impl fmt::Display for StreamSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StreamSetupError {}

impl NatsJetStreamPublisher {
    /// Publishes to `stream` through `context`, naming `source` as the
    /// CloudEvents source; subjects start with the stream name in
    /// lowercase until [`subject_prefix`](Self::subject_prefix) says
    /// otherwise.
    #[must_use]
    pub fn new(context: jetstream::Context, stream: &str, source: &str) -> Self {
        Self {
            context,
            stream: stream.to_owned(),
            source: source.to_owned(),
            prefix: stream.to_ascii_lowercase(),
            subject: None,
            template: stream::Config::default(),
            limits: Arc::default(),
        }
    }

    /// Makes a missing stream, when [`ensure_stream`](Self::ensure_stream)
    /// is let create it, with `template`'s settings: its limits, replicas,
    /// placement. The stream's name is the publisher's, its
    /// subjects `<prefix>.>` unless the template names some, and its
    /// duplicate window the template's or the relay's retry horizon,
    /// whichever is longer (two minutes at least).
    ///
    /// By default a stream is made with JetStream's defaults: one replica,
    /// on file, and no limits, so it keeps every message for ever. Give a
    /// stream in a cluster its `num_replicas` (one replica is lost with its
    /// server), and the limits your consumers can live with: JetStream
    /// removes a message past `max_age` whether or not every consumer has
    /// applied it, so `max_age` must outlast the longest a consumer may be
    /// down. A stream that exists already is not changed (only its
    /// duplicate window widened).
    ///
    /// Refused at `ensure_stream`, as no outbox can work with them: memory
    /// storage (a restart of NATS loses what was counted delivered), a
    /// retention other than limits (work-queue or interest retention
    /// removes a message once one consumer, or every consumer then known,
    /// took it: another durable, or a replay, finds it gone), `no_ack`
    /// (no publish is acknowledged), a per-subject message limit (a
    /// subject per aggregate type and event type: older events dropped),
    /// subjects capturing none of the publisher's, and a `max_age` shorter
    /// than the duplicate window (JetStream refuses it).
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// use async_nats::jetstream::stream;
    /// use palisade_outbox::{NatsJetStreamPublisher, OutboxConfig};
    ///
    /// # async fn run(context: async_nats::jetstream::Context) -> Result<(), Box<dyn std::error::Error>> {
    /// let publisher = NatsJetStreamPublisher::new(context, "ORDERS", "/orders").creating(stream::Config {
    ///     num_replicas: 3,
    ///     max_age: Duration::from_secs(14 * 24 * 3_600),
    ///     max_bytes: 50 << 30,
    ///     ..stream::Config::default()
    /// });
    /// publisher.ensure_stream(&OutboxConfig::default(), true).await?;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn creating(mut self, template: stream::Config) -> Self {
        self.template = template;
        self
    }

    /// Subjects are `<prefix>.<aggregate type>.<event type>`.
    #[must_use]
    pub fn subject_prefix(mut self, prefix: &str) -> Self {
        prefix.clone_into(&mut self.prefix);
        self
    }

    /// Picks each event's subject with `subject` instead.
    #[must_use]
    pub fn subject(mut self, subject: impl Fn(&Event) -> String + Send + Sync + 'static) -> Self {
        self.subject = Some(Arc::new(subject));
        self
    }

    fn subject_of(&self, event: &Event) -> String {
        match &self.subject {
            Some(subject) => subject(event),
            None => format!(
                "{}.{}.{}",
                self.prefix,
                event.aggregate_type(),
                event.event_type()
            ),
        }
    }

    /// Checks that the stream exists, keeps its messages on file (not in
    /// memory, which a restart of NATS empties), captures subjects under
    /// the publisher's prefix (unless [`subject`](Self::subject) picks
    /// them), and that its duplicate window covers `config`'s retry
    /// horizon; with `create`, creates the stream (on `<prefix>.>`, with
    /// [`creating`](Self::creating)'s settings) or widens its window
    /// instead of failing.
    ///
    /// A stream made here stores every message published under
    /// `<prefix>.>` in the account, a request sent there by another
    /// application included (JetStream even answers it): give the
    /// publisher a prefix no one else publishes under.
    ///
    /// # Errors
    ///
    /// [`StreamSetupError`] saying what is wrong and how to fix it.
    pub async fn ensure_stream(
        &self,
        config: &crate::OutboxConfig,
        create: bool,
    ) -> Result<(), StreamSetupError> {
        let horizon = config.retry_horizon();
        match self.context.get_stream(&self.stream).await {
            Ok(mut existing) => {
                let info = existing.info().await.map_err(|error| {
                    StreamSetupError(format!("stream {}: {error}", self.stream))
                })?;
                // Stored means delivered: in memory, a restart of NATS
                // loses what the relay counted delivered and deleted.
                if info.config.storage == stream::StorageType::Memory {
                    return Err(StreamSetupError(format!(
                        "stream {} keeps its messages in memory: a restart of NATS would lose \
                         events the outbox counts as delivered; give it file storage",
                        self.stream
                    )));
                }
                // A stream that captures none of the publisher's subjects
                // answers no publish: each would find no stream, read as
                // NATS away, and be retried for ever.
                if self.subject.is_none()
                    && !info
                        .config
                        .subjects
                        .iter()
                        .any(|pattern| captures_under(pattern, &self.prefix))
                {
                    return Err(StreamSetupError(format!(
                        "stream {} captures {:?}, none of the publisher's subjects {}.<aggregate>.<type>: \
                         every publish would find no stream; give the publisher the stream's prefix \
                         (subject_prefix), or add {}.> to the stream",
                        self.stream, info.config.subjects, self.prefix, self.prefix
                    )));
                }
                let window = info.config.duplicate_window;
                if window >= horizon {
                    return Ok(());
                }
                if !create {
                    return Err(StreamSetupError(format!(
                        "stream {} keeps message ids for {} s, shorter than the relay's retry horizon of {} s: \
                         a late retry would be stored twice; raise its duplicate_window (or let the \
                         publisher update it)",
                        self.stream,
                        window.as_secs(),
                        horizon.as_secs()
                    )));
                }
                let mut widened = info.config.clone();
                widened.duplicate_window = horizon;
                self.context.update_stream(widened).await.map_err(|error| {
                    StreamSetupError(format!("widening stream {}: {error}", self.stream))
                })?;
                tracing::info!(target: "palisade_outbox", stream = %self.stream, window_s = horizon.as_secs(), "duplicate window widened");
                Ok(())
            }
            Err(_) if create => {
                let made = self.made(horizon)?;
                self.context.create_stream(made).await.map_err(|error| {
                    StreamSetupError(format!("creating stream {}: {error}", self.stream))
                })?;
                Ok(())
            }
            Err(error) => Err(StreamSetupError(format!(
                "stream {} is not there ({error}); create it, or let the publisher create it",
                self.stream
            ))),
        }
    }

    /// The stream `ensure_stream` makes: the template, named and given
    /// its subjects and window here.
    fn made(&self, horizon: Duration) -> Result<stream::Config, StreamSetupError> {
        let mut made = self.template.clone();
        // Stored means delivered (as for a stream that exists).
        if made.storage == stream::StorageType::Memory {
            return Err(StreamSetupError(format!(
                "stream {} would keep its messages in memory: a restart of NATS would lose \
                 events the outbox counts as delivered; give the template file storage",
                self.stream
            )));
        }
        made.name.clone_from(&self.stream);
        if made.subjects.is_empty() {
            made.subjects = vec![format!("{}.>", self.prefix)];
        } else if self.subject.is_none()
            && !made
                .subjects
                .iter()
                .any(|pattern| captures_under(pattern, &self.prefix))
        {
            return Err(StreamSetupError(format!(
                "stream {} would capture {:?}, none of the publisher's subjects {}.<aggregate>.<type>: \
                 add {}.> to the template's subjects, or leave them out",
                self.stream, made.subjects, self.prefix, self.prefix
            )));
        }
        made.duplicate_window = made
            .duplicate_window
            .max(horizon)
            .max(Duration::from_secs(120));
        let refused = |why: String| Err(StreamSetupError(format!("stream {}: {why}", self.stream)));
        if made.retention != stream::RetentionPolicy::Limits {
            return refused(format!(
                "the template's retention {:?} removes a message once taken, before other \
                 durables or a replay read it; give it limits retention",
                made.retention
            ));
        }
        if made.no_ack {
            return refused("the template's no_ack would have no publish acknowledged".to_owned());
        }
        if made.max_messages_per_subject > 0 {
            return refused(format!(
                "the template keeps {} messages a subject, and every event of a type is on one \
                 subject: older events would be dropped; leave max_messages_per_subject out",
                made.max_messages_per_subject
            ));
        }
        if !made.max_age.is_zero() && made.max_age < made.duplicate_window {
            return refused(format!(
                "the template's max_age of {} s is shorter than the stream's duplicate window \
                 of {} s (the template's, the relay's retry horizon, or two minutes: the \
                 longest); keep messages longer",
                made.max_age.as_secs(),
                made.duplicate_window.as_secs()
            ));
        }
        Ok(made)
    }
}

impl Publisher for NatsJetStreamPublisher {
    async fn publish(&self, message: &Message) -> Result<Published, PublishError> {
        let mut headers = HeaderMap::new();
        let id = message.event.id().to_string();
        headers.insert("Nats-Msg-Id", id.as_str());
        // Shared, not copied, with the publish: read again on a failure.
        let subject = async_nats::Subject::from(self.subject_of(&message.event));
        // What the stream stores of it at the least: its subject, header
        // fields and payload (framing and the store's own overhead come on
        // top).
        let mut size =
            subject.len() + "Nats-Msg-Id".len() + id.len() + message.event.payload().len();
        for (name, value) in Envelope::of(message, &self.source).to_headers() {
            size += name.len() + value.len();
            headers.insert(name.as_str(), value.as_str());
        }
        let payload = bytes::Bytes::copy_from_slice(message.event.payload());
        let published = async {
            self.context
                .publish_with_headers(subject.clone(), headers, payload)
                .await?
                .await
        };
        let ack = match published.await {
            Ok(ack) => ack,
            // The same answer says the stream is full and that this
            // message alone is larger than the stream may hold: the one
            // is waited out, the other can never be stored.
            Err(error) if stores_nothing(&error) && self.never_fits(&subject, size).await => {
                return Err(PublishError::rejected(error));
            }
            Err(error) if error.kind() == PublishErrorKind::StreamNotFound => {
                return Err(PublishError::unavailable(Unanswered {
                    subject: subject.to_string(),
                    source: error,
                }));
            }
            Err(error) => return Err(classify(error)),
        };
        Ok(if ack.duplicate {
            Published::Duplicate
        } else {
            Published::Stored
        })
    }
}

impl NatsJetStreamPublisher {
    /// Whether a message on `subject` of at least `size` bytes can never be
    /// stored: the stream that captures `subject` holds fewer bytes than
    /// that (`max_bytes`), even empty. When the stream cannot be read, the
    /// message is taken to fit.
    ///
    /// Read on a "store failed" answer only, and kept a few seconds per
    /// subject (a full stream answers every message of a batch so, and
    /// each asked the stream again), a read that failed or took over a
    /// second as "holds anything".
    async fn never_fits(&self, subject: &str, size: usize) -> bool {
        let now = std::time::Instant::now();
        let read = {
            let mut limits = self.limits.lock().unwrap_or_else(PoisonError::into_inner);
            match limits.get(subject) {
                Some((read, at)) if now.duration_since(*at) < LIMITS_KEPT => Arc::clone(read),
                _ => {
                    if limits.len() >= LIMITS_HELD {
                        limits.clear();
                    }
                    let read = Arc::new(tokio::sync::OnceCell::new());
                    limits.insert(subject.to_owned(), (Arc::clone(&read), now));
                    read
                }
            }
        };
        // One read a subject at a time, not under the lock, and briefly:
        // the publishes refused together wait for the same one, and the
        // stream may answer nothing (a leader being elected) while each
        // publish is cut at its claim's lease. A stream that does not
        // answer is taken to hold anything, for a while too.
        let max_bytes = *read
            .get_or_init(|| async {
                tokio::time::timeout(LIMITS_READ, self.max_bytes_of(subject))
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or(0)
            })
            .await;
        max_bytes > 0 && i64::try_from(size).unwrap_or(i64::MAX) >= max_bytes
    }

    /// The `max_bytes` of the stream that captures `subject`.
    async fn max_bytes_of(&self, subject: &str) -> Option<i64> {
        let name = self.context.stream_by_subject(subject).await.ok()?;
        let stream = self.context.get_stream(name).await.ok()?;
        Some(stream.cached_info().config.max_bytes)
    }
}

/// How long reading a stream's `max_bytes` may take.
const LIMITS_READ: Duration = Duration::from_secs(1);

/// How long a stream's `max_bytes` read for a subject is used.
const LIMITS_KEPT: Duration = Duration::from_secs(10);

/// The most subjects whose stream's `max_bytes` are kept at once.
const LIMITS_HELD: usize = 1_024;

/// Whether JetStream answered a publish with "store failed": the stream
/// is full, its store failed, or the message is larger than the stream.
fn stores_nothing(error: &JetStreamError) -> bool {
    std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<jetstream::Error>())
        .is_some_and(|answer| answer.error_code() == ErrorCode::STREAM_STORE_FAILED)
}

/// Says whether a JetStream publish failed for the broker (waited out, the
/// event's attempts untouched: out of reach, or without room) or for the
/// message (an attempt spent).
fn classify(error: JetStreamError) -> PublishError {
    let source = std::error::Error::source(&error);
    if source
        .and_then(|source| source.downcast_ref::<jetstream::Error>())
        .is_some_and(has_no_room)
    {
        return PublishError::full(error);
    }
    let rejected = match error.kind() {
        // The message itself: too large for the server, or an expectation
        // of the stream it does not meet.
        PublishErrorKind::MaxPayloadExceeded
        | PublishErrorKind::WrongLastMessageId
        | PublishErrorKind::WrongLastSequence => true,
        // No acknowledgement in time (the server gone, or slow), the
        // connection lost, too many acknowledgements outstanding, and no
        // responders on the subject (no stream, or JetStream down).
        PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::MaxAckPending
        | PublishErrorKind::StreamNotFound => false,
        // JetStream's own answer, or the client's: an invalid subject is
        // the message's; anything else (the connection's channel closed,
        // an unreadable acknowledgement) the broker's.
        _ => {
            let source = std::error::Error::source(&error);
            match source.and_then(|source| source.downcast_ref::<jetstream::Error>()) {
                Some(answer) => refuses_message(answer),
                None => {
                    source.is_some_and(|source| source.is::<async_nats::subject::SubjectError>())
                }
            }
        }
    };
    if rejected {
        PublishError::rejected(error)
    } else {
        PublishError::unavailable(error)
    }
}

/// A publish no stream answered (NATS's "no responders"), naming its
/// subject: JetStream is down, or no stream captures the subject, which
/// the relay cannot tell apart and waits out as the broker's.
#[derive(Debug)]
struct Unanswered {
    subject: String,
    source: JetStreamError,
}

impl fmt::Display for Unanswered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no stream answered a publish on {}: JetStream is down, or no stream captures the \
             subject ({})",
            self.subject, self.source
        )
    }
}

impl std::error::Error for Unanswered {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Whether JetStream's error answer to a publish refuses the message
/// itself: too large for the stream, or any other 4xx.
///
/// A stream or account that is full (`maximum messages exceeded` under
/// `DiscardPolicy::New` comes as a 503 "store failed", an account over its
/// resources as a 400) or whose store failed (the same 503: a file store
/// that cannot be opened, a stream closing while its leader changes)
/// cannot take *any* message now: nothing is wrong with this one, so it is
/// waited out like the other 503s ("JetStream not enabled", "temporarily
/// unavailable", a cluster without quorum), and an outage of the store
/// never turns events dead. (A message larger than the whole stream gets
/// the same "store failed": the publisher tells it apart by the stream's
/// `max_bytes`: `NatsJetStreamPublisher::never_fits`.)
fn refuses_message(answer: &jetstream::Error) -> bool {
    match answer.error_code() {
        ErrorCode::STREAM_STORE_FAILED | ErrorCode::ACCOUNT_RESOURCES_EXCEEDED => false,
        ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM => true,
        _ => (400..500).contains(&answer.code()),
    }
}

/// Whether JetStream's answer says it has no room now: a stream, subject
/// or account full, its store failing ("store failed" says both, in
/// words that vary by server version), or the server's own storage spent
/// ("insufficient resources"). The broker is up.
fn has_no_room(answer: &jetstream::Error) -> bool {
    matches!(
        answer.error_code(),
        ErrorCode::STREAM_STORE_FAILED
            | ErrorCode::ACCOUNT_RESOURCES_EXCEEDED
            | ErrorCode::INSUFFICIENT_RESOURCES
    )
}

/// Whether the stream subject `pattern` captures some subject of the
/// publisher's layout under `prefix`: `<prefix>.<aggregate>.<type>`, the
/// type maybe dotted.
fn captures_under(pattern: &str, prefix: &str) -> bool {
    let mut wanted = pattern.split('.');
    for token in prefix.split('.') {
        match wanted.next() {
            Some(">") => return true,
            Some(exact) if exact == "*" || exact == token => {}
            _ => return false,
        }
    }
    // The aggregate and the type: two tokens or more (a type may be
    // dotted, as CloudEvents types often are).
    for _ in 0..2 {
        match wanted.next() {
            Some(">") => return true,
            Some(_) => {}
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PublishErrorKind as Verdict;

    #[test]
    fn a_stream_subject_captures_the_layout_under_a_prefix() {
        for (pattern, prefix, captures) in [
            ("orders.>", "orders", true),
            ("orders.order.>", "orders", true),
            ("orders.*.*", "orders", true),
            ("orders.*", "orders", false),
            ("orders.*.*.*", "orders", true),
            ("orders.order.com.example.>", "orders", true),
            ("payments.>", "pay", false),
            ("a.b.>", "a.b", true),
            ("a.>", "a.b", true),
            ("a.c.>", "a.b", false),
            (">", "anything", true),
        ] {
            assert_eq!(
                captures_under(pattern, prefix),
                captures,
                "{pattern} under {prefix}"
            );
        }
    }

    fn answer(code: u16, err_code: u64, description: &str) -> jetstream::Error {
        serde_json::from_value(serde_json::json!({
            "code": code,
            "err_code": err_code,
            "description": description,
        }))
        .unwrap()
    }

    fn verdict(error: JetStreamError) -> Verdict {
        classify(error).kind()
    }

    /// Checks the verdict on each of JetStream's error `answers` to a
    /// publish (HTTP code, error code, description) is `expected`.
    fn all_answered(answers: &[(u16, u64, &str)], expected: Verdict) {
        for &(code, err_code, description) in answers {
            let error = JetStreamError::with_source(
                PublishErrorKind::Other,
                answer(code, err_code, description),
            );
            assert_eq!(verdict(error), expected, "{description}");
        }
    }

    #[test]
    fn the_broker_out_of_reach_is_unavailable() {
        for kind in [
            PublishErrorKind::TimedOut,
            PublishErrorKind::BrokenPipe,
            PublishErrorKind::MaxAckPending,
            // What no responders (JetStream down, no stream) becomes.
            PublishErrorKind::StreamNotFound,
        ] {
            assert_eq!(
                verdict(JetStreamError::new(kind)),
                Verdict::Unavailable,
                "{kind:?}"
            );
        }
        let closed = JetStreamError::with_source(PublishErrorKind::Other, "channel closed");
        assert_eq!(verdict(closed), Verdict::Unavailable);
    }

    #[test]
    fn jetstream_taking_no_message_now_is_unavailable() {
        all_answered(
            &[
                (503, 10076, "jetstream not enabled"),
                (503, 10008, "jetstream system temporarily unavailable"),
            ],
            Verdict::Unavailable,
        );
        // A full stream, subject or account and a failed store take no
        // message now: nothing is wrong with this one, and the broker is
        // up.
        all_answered(
            &[
                (503, 10077, "maximum messages exceeded"),
                (503, 10077, "maximum messages per subject exceeded"),
                (503, 10077, "error opening msg block file"),
                (400, 10002, "resource limits exceeded for account"),
                (503, 10023, "insufficient resources"),
            ],
            Verdict::Full,
        );
    }

    #[test]
    fn a_message_the_stream_refuses_is_rejected() {
        all_answered(
            &[
                (400, 10054, "message size exceeds maximum allowed"),
                (400, 10999, "a refusal this crate does not know"),
            ],
            Verdict::Rejected,
        );
        for kind in [
            PublishErrorKind::MaxPayloadExceeded,
            PublishErrorKind::WrongLastMessageId,
            PublishErrorKind::WrongLastSequence,
        ] {
            assert_eq!(
                verdict(JetStreamError::new(kind)),
                Verdict::Rejected,
                "{kind:?}"
            );
        }
        let subject = JetStreamError::with_source(
            PublishErrorKind::Other,
            async_nats::subject::SubjectError::InvalidFormat,
        );
        assert_eq!(verdict(subject), Verdict::Rejected);
    }
}
