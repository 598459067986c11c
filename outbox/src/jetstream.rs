//! The consumer's side on JetStream (feature `nats` with a database): a
//! durable pull consumer whose handler runs in a transaction with the inbox
//! check, acknowledged after the commit.

use std::collections::VecDeque;
use std::error::Error;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::{self, consumer::pull};
use futures_util::future::Shared;
use futures_util::{FutureExt, StreamExt};

use crate::consume::{
    Applier, BoxError, ConsumerStats, Counters, Delivery, DeliveryPolicy, EventTypes, Handler,
    Retried, pause, retry_delay,
};
use crate::envelope::{Envelope, EnvelopeError};
use crate::error::{ConfigError, config_error};
use crate::forget::{KEEP_RECORDS, forget_old_records};
use crate::roster::{self, Roster};
use crate::store::InboxStore;

/// How a [`JetStreamConsumer`] pulls, retries and gives up.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use palisade_outbox::ConsumerConfig;
///
/// let config = ConsumerConfig::new("ORDERS", "inventory", "orders.dead")?
///     .filter_subject("orders.order.>")
///     .max_deliver(5)
///     .retry_delay(Duration::from_millis(200), Duration::from_secs(30));
/// # Ok::<(), palisade_outbox::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerConfig {
    stream: String,
    durable: String,
    dead_letter_subject: String,
    filter_subject: Option<String>,
    /// The consumer's name in the inbox, when not the durable's.
    inbox_name: Option<String>,
    policy: DeliveryPolicy,
    ack_wait: Duration,
    /// How long the inbox keeps a record, at the least.
    kept: Duration,
    /// The durable this one, made now, starts after.
    after: Option<String>,
}

impl ConsumerConfig {
    /// The durable consumer `durable` on `stream`, which sends messages it
    /// gives up on to `dead_letter_subject` (which a stream must capture).
    /// `durable` is also the consumer's name in the inbox (unless
    /// [`inbox_name`](Self::inbox_name) says another). Defaults: every
    /// subject of the stream, 5 deliveries, retries after 1 s doubling to
    /// 1 min, a 30 s ack wait, records kept a day. A consumer may not read its own dead-letter
    /// subject: when the stream captures it, as the stream that
    /// [`ensure_stream`](crate::NatsJetStreamPublisher::ensure_stream) makes
    /// captures `<prefix>.dead`, give the consumer a
    /// [`filter_subject`](Self::filter_subject) that leaves it out.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when a name is empty, `durable` holds a character
    /// JetStream refuses in consumer names (`.`, `*`, `>`, whitespace), or
    /// `dead_letter_subject` is not one to publish to (an empty token, a
    /// wildcard, whitespace).
    pub fn new(
        stream: &str,
        durable: &str,
        dead_letter_subject: &str,
    ) -> Result<Self, ConfigError> {
        if stream.is_empty() {
            return Err(config_error("stream", "must not be empty"));
        }
        if durable.is_empty()
            || durable
                .chars()
                .any(|c| matches!(c, '.' | '*' | '>') || c.is_whitespace())
        {
            return Err(config_error(
                "durable",
                "must be a non-empty name without `.`, `*`, `>` or whitespace",
            ));
        }
        if dead_letter_subject
            .split('.')
            .any(|token| token.is_empty() || token == "*" || token == ">")
            || dead_letter_subject.contains(char::is_whitespace)
        {
            return Err(config_error(
                "dead_letter_subject",
                "must be a subject to publish to: non-empty tokens, no wildcards or whitespace",
            ));
        }
        Ok(Self {
            stream: stream.to_owned(),
            durable: durable.to_owned(),
            dead_letter_subject: dead_letter_subject.to_owned(),
            filter_subject: None,
            inbox_name: None,
            policy: DeliveryPolicy {
                handler_timeout: DeliveryPolicy::HANDLER_TIMEOUT,
                max_deliver: 5,
                base: Duration::from_secs(1),
                cap: Duration::from_secs(60),
            },
            ack_wait: Duration::from_secs(30),
            kept: KEEP_RECORDS,
            after: None,
        })
    }

    /// How long the inbox keeps the record of a message applied: a day
    /// unless set, and at least
    /// [`inbox_retention`](JetStreamConsumer::inbox_retention) (as long as
    /// JetStream may deliver it again or store it twice). While it runs,
    /// the consumer forgets older records: at its start, then every
    /// minute, 10,000 a statement, batch after batch while they come back
    /// full. `Duration::MAX` keeps them for ever.
    ///
    /// A message that comes again after its record is gone is applied
    /// again: a relay stopped between a publish and marking it sent
    /// publishes it again when a relay next runs, and past the stream's
    /// duplicate window JetStream stores it again. Keep the records as
    /// long as your relays may all be down. The consumer forgets its own
    /// records only (under its [`inbox_name`](Self::inbox_name)), a few
    /// instances of it side by side; the inbox's other consumers keep
    /// theirs.
    #[must_use]
    pub const fn keep_records(mut self, age: Duration) -> Self {
        self.kept = age;
        self
    }

    /// The consumer's name in the inbox (the durable's by default; an
    /// empty name too), under which it records what it applied. (The
    /// deliveries it handed back untried stay counted under the durable's
    /// name: JetStream counts deliveries per durable.)
    ///
    /// JetStream keeps a durable consumer's filter as first made, and a
    /// NATS server before 2.10 cannot edit it: to take another filter, make
    /// a durable under a new name that
    /// [starts after](Self::starting_after) the old one and keeps its inbox
    /// name. A new durable is otherwise delivered the stream from its
    /// start: under the old inbox name it applies nothing the inbox has a
    /// record of, and again what the inbox has forgotten (records older
    /// than [`keep_records`](Self::keep_records)). Two durables running at
    /// once under one inbox name do not apply a message twice; their
    /// retries and dead letters stay their own (one may dead-letter a
    /// message the other applies).
    #[must_use]
    pub fn inbox_name(mut self, name: &str) -> Self {
        self.inbox_name = (!name.is_empty()).then(|| name.to_owned());
        self
    }

    /// Made now, the durable starts after the last message the durable
    /// `earlier` acknowledged, where it starts at the stream's first
    /// otherwise: the way to take another filter under a new durable
    /// without the old one's history (keep the old one's
    /// [`inbox_name`](Self::inbox_name) too). An existing durable is kept
    /// as made; `earlier` must be on the stream when the new durable is
    /// made, or [`JetStreamConsumer::new`] fails.
    ///
    /// Stop `earlier`'s instances first, and delete it once the new one
    /// runs. What `earlier` held unacknowledged is delivered again, and
    /// skipped where the inbox has its record; a message it never
    /// acknowledged for longer than the inbox keeps records (one retried
    /// for days) holds its acknowledgements back, and what came after it
    /// and was forgotten is applied again. Messages before the start on
    /// subjects only the new filter takes are not delivered.
    #[must_use]
    pub fn starting_after(mut self, earlier: &str) -> Self {
        self.after = (!earlier.is_empty()).then(|| earlier.to_owned());
        self
    }

    /// The consumer's name in the inbox.
    fn inbox_consumer(&self) -> &str {
        self.inbox_name.as_deref().unwrap_or(&self.durable)
    }

    /// Only messages on subjects matching `filter`.
    #[must_use]
    pub fn filter_subject(mut self, filter: &str) -> Self {
        self.filter_subject = Some(filter.to_owned());
        self
    }

    /// Deliveries after which a failing message goes to the dead-letter
    /// subject (at least 1). A delivery the consumer handed back untried
    /// (it was stopping while the message waited, tried it only to fail
    /// [`Transient`](crate::Transient)ly, or handed it on to an instance
    /// taking its type: see [`only`](JetStreamConsumer::only)) is not
    /// one: the inbox counts those, and JetStream's count is taken less
    /// them. (While the inbox's database is away they are not counted,
    /// and count as tries.) A handler that never returns, because it
    /// crashes the process, is delivered again for ever: the count is
    /// checked when a try fails.
    #[must_use]
    pub fn max_deliver(mut self, deliveries: u64) -> Self {
        self.policy.max_deliver = deliveries.max(1);
        self
    }

    /// The delay before the second delivery, doubling up to `cap` (each
    /// a day at most: a longer one made no deadline).
    #[must_use]
    pub const fn retry_delay(mut self, base: Duration, cap: Duration) -> Self {
        self.policy = self.policy.delays(base, cap);
        self
    }

    /// The longest the handler may take over one message (and its
    /// `prepare` over one transaction), from a millisecond to a day: past
    /// it the delivery has failed, its transaction rolls back, and it is
    /// delivered again and dead-lettered as any other failure (a handler
    /// that hung held its consumer for ever). A minute unless set; the
    /// consumer keeps the acknowledgements of the messages it is applying
    /// alive meanwhile, so a handler slower than the ack wait is not
    /// delivered again under it.
    #[must_use]
    pub const fn handler_timeout(mut self, timeout: Duration) -> Self {
        self.policy = self.policy.handler_timeout(timeout);
        self
    }

    /// How long JetStream waits for an acknowledgement before delivering
    /// again (a consumer that died mid-message): from a millisecond to a
    /// day, a `wait` outside taken as the nearer bound (`Duration::MAX`
    /// reached JetStream as -1 ns, and overflowed the consumer's own
    /// deadlines).
    #[must_use]
    pub const fn ack_wait(mut self, wait: Duration) -> Self {
        self.ack_wait =
            palisade_hints::bounded(wait, Duration::from_millis(1), DeliveryPolicy::LONGEST);
        self
    }

    /// The longest JetStream may take to deliver a message for the last
    /// time: every retry delay, plus an ack wait for each delivery (a
    /// consumer that died holding it).
    #[must_use]
    pub fn redelivery_horizon(&self) -> Duration {
        crate::config::total_delay(1..self.policy.max_deliver, |attempt| {
            self.delay_after(attempt)
        })
        .saturating_add(
            self.ack_wait
                .saturating_mul(u32::try_from(self.policy.max_deliver).unwrap_or(u32::MAX)),
        )
    }

    fn delay_after(&self, attempt: u64) -> Duration {
        retry_delay(self.policy.base, self.policy.cap, attempt)
    }
}

/// Consumes a JetStream stream into a database, applying each message once.
///
/// For every message, in order: read its CloudEvents [`Envelope`]; begin a
/// transaction; skip it if the inbox has seen its id; run the [`Handler`];
/// commit; then acknowledge. So the effect and the inbox record commit
/// together, and a redelivery (a lost ack, a crash before the ack, a
/// duplicate outside JetStream's window) is acknowledged without being
/// applied again.
///
/// - A handler error rolls back, and the message is tried again in place
///   after a growing delay, before any later message, so the messages of
///   an aggregate are applied in order (its acknowledgement is kept alive
///   meanwhile); after its last try (unless the error is
///   [`Transient`](crate::Transient)) the message is published to the
///   dead-letter subject (headers kept, plus `palisade-error`,
///   `palisade-consumer` and `palisade-deliveries`) and terminated.
/// - A message without a valid envelope goes to the dead-letter subject at
///   once: no retry can fix it.
/// - A handler that panics, that takes longer than
///   [`handler_timeout`](ConsumerConfig::handler_timeout) (a minute by
///   default) over one message, or that went on after a statement of its
///   own failed (on PostgreSQL the transaction can then only roll back,
///   and the consumer asks before it commits), has failed as if it
///   returned the error. The acknowledgements of the batch's messages not
///   yet settled, and of those that arrive meanwhile (applied next), are
///   kept alive while the consumer works on it: JetStream does not
///   deliver them again under it.
/// - A database failure (begin, inbox, commit) is waited out, in place, and
///   never dead-letters: it is not the message's fault.
/// - If the dead-letter publish is not acknowledged, the message is nak'ed
///   instead: nothing is dropped.
/// - Asked to stop while it retries, the consumer naks what it holds
///   (and what arrived meanwhile), for JetStream to deliver again.
///
/// Messages that have already arrived when one is taken (up to
/// [`batch`](Self::batch), 64 by default) are applied in one transaction,
/// in order, and acknowledged after its commit; one whose handler fails is
/// rolled back alone (the others are applied again without it) and settled
/// as above. Run more instances on the same durable consumer to share the
/// work; an aggregate's order then holds within each instance only:
/// JetStream hands an aggregate's later message to another instance while
/// one works on, or retries, its earlier one. Where that order matters,
/// run one instance per durable consumer.
pub struct JetStreamConsumer<I, H> {
    context: jetstream::Context,
    consumer: jetstream::consumer::Consumer<pull::Config>,
    config: ConsumerConfig,
    inbox: I,
    handler: Arc<H>,
    only: EventTypes,
    /// The types the durable's running instances take; `None` when the
    /// account keeps no key-value bucket for it.
    roster: Option<Arc<Roster>>,
    batch: usize,
    counters: Arc<Counters>,
    /// How long the inbox must remember a message: the longer of the
    /// redelivery horizon and the stream's duplicate window.
    retention: Duration,
}

impl<I, H> fmt::Debug for JetStreamConsumer<I, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JetStreamConsumer")
            .field("config", &self.config)
            .field("stats", &self.counters.snapshot())
            .finish_non_exhaustive()
    }
}

/// Where the durable of `config` starts if it is made now: at the stream's
/// first message, or after the last message the durable it starts after
/// acknowledged. Asked only when the durable is not there yet (an existing
/// one is kept as made).
///
/// # Errors
///
/// The durable cannot be read, or the one it starts after is not on the
/// stream or cannot be read.
async fn first_delivery(
    stream: &jetstream::stream::Stream,
    config: &ConsumerConfig,
) -> Result<DeliverPolicy, ConsumerSetupError> {
    let Some(earlier) = config.after.as_deref() else {
        return Ok(DeliverPolicy::All);
    };
    use jetstream::context::ConsumerInfoErrorKind;
    match stream.consumer_info(&config.durable).await {
        Ok(_) => return Ok(DeliverPolicy::All),
        Err(error) if error.kind() == ConsumerInfoErrorKind::NotFound => {}
        // Not known to be missing: made from its start, it would apply the
        // history `earlier` applied.
        Err(error) => {
            return Err(ConsumerSetupError(format!(
                "consumer {} on stream {} cannot be read ({error}), so whether to make it \
                 after consumer {earlier} is not known",
                config.durable, config.stream
            )));
        }
    }
    match stream.consumer_info(earlier).await {
        Ok(info) => {
            let start_sequence = info.ack_floor.stream_sequence + 1;
            tracing::info!(target: "palisade_outbox", consumer = %config.durable, after = earlier, start_sequence, "durable made to start after an earlier one's last acknowledged message");
            Ok(DeliverPolicy::ByStartSequence { start_sequence })
        }
        Err(error) => Err(ConsumerSetupError(format!(
            "consumer {} starts after consumer {earlier}, which cannot be read on stream {} \
             ({error}): keep it until the new one is made (stop its instances first), or \
             make the new one without starting_after, to be delivered the stream from its \
             start",
            config.durable, config.stream
        ))),
    }
}

/// The roster of `config`'s durable, or `None` (warned of) when the
/// account keeps no bucket for it.
async fn open_roster(context: &jetstream::Context, config: &ConsumerConfig) -> Option<Arc<Roster>> {
    match Roster::open(context, &config.stream, &config.durable).await {
        Ok(roster) => Some(Arc::new(roster)),
        Err(why) => {
            tracing::warn!(target: "palisade_outbox", consumer = %config.durable, bucket = roster::BUCKET, %why, "which types the other instances of this durable take cannot be kept: a type this instance does not take is acknowledged unapplied, whoever else takes it");
            None
        }
    }
}

/// How long a message handed back waits before JetStream delivers it
/// again: at once, it went back into the stopping consumer's own pending
/// pull (its subscription not yet gone), where it waited out the ack wait
/// and counted one delivery more. Also the bound on counting the hand-back
/// in the inbox, so that the count is made before the redelivery.
const HANDED_BACK_AFTER: Duration = Duration::from_secs(1);

/// How long a delivery's hand-backs are waited for before JetStream's
/// count is taken whole: a slow database taken for none would count
/// every hand-back as a try, and could dead-letter a message early.
const HANDED_BACK_READ: Duration = Duration::from_secs(5);

/// The pull subscription, and what it delivered ahead of the batch under
/// way: taken in while the batch is applied, kept alive with it, and the
/// next batch's first messages. (Left in the client's buffer, their ack
/// wait ran out under a slow batch and JetStream delivered them again.)
struct Pulled {
    stream: pull::Stream,
    ahead: VecDeque<jetstream::Message>,
    /// When what is under way and ahead is next kept alive: one pace
    /// across batches (a pace of each batch's own, restarted with it,
    /// never came round while batches took less than it, and messages
    /// waiting ahead through a few of them were delivered again).
    keep_alive_at: tokio::time::Instant,
    /// The subscription ended.
    ended: bool,
    /// The pull error since the last message, which may say why it
    /// ended.
    failed: Option<String>,
}

impl Pulled {
    /// Takes in what the subscription has received already.
    fn take_in(&mut self) {
        while !self.ended {
            match self.stream.next().now_or_never() {
                Some(next) => self.take(next),
                None => break,
            }
        }
    }

    /// Takes in what the subscription gave: a message, its end, or a pull
    /// error, which is logged (the stream pulls again).
    fn take<E: fmt::Display>(&mut self, next: Option<Result<jetstream::Message, E>>) {
        match next {
            Some(Ok(message)) => {
                self.failed = None;
                self.ahead.push_back(message);
            }
            Some(Err(error)) => {
                tracing::warn!(target: "palisade_outbox", %error, "pulling messages failed; pulling again");
                self.failed = Some(error.to_string());
            }
            None => self.ended = true,
        }
    }

    /// Why the subscription ended, as `run`'s error.
    fn end(&self) -> BoxError {
        let why = self.failed.as_deref().unwrap_or("no error given");
        format!("the pull subscription ended ({why}): the consumer was deleted, or the connection closed")
            .into()
    }
}

/// The stream or the consumer could not be set up.
#[derive(Debug)]
pub struct ConsumerSetupError(String);

impl fmt::Display for ConsumerSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Error for ConsumerSetupError {}

impl<I, H> JetStreamConsumer<I, H>
where
    I: InboxStore,
    H: Handler<<I::Database as sqlx::Database>::Connection>,
{
    /// Creates (or binds to) the durable pull consumer described by
    /// `config`, applying messages with `handler` and deduplicating them
    /// with `inbox`. A durable made before with another ack wait keeps it
    /// (JetStream creates a durable only once; its ack wait changes only
    /// when the consumer is edited): the consumer works with that one,
    /// and warns. It does not edit the durable itself, which replicas of
    /// another version share.
    ///
    /// # Errors
    ///
    /// [`ConsumerSetupError`] when the stream is missing, no stream
    /// captures the dead-letter subject (a message given up on could not
    /// be stored, and would be delivered again for ever), the consumer
    /// would read its own dead-letter subject (the stream captures it, and
    /// the consumer's filter, if it has one, matches it: what it gives up
    /// on would come back to it, to fail and be sent there again, for
    /// ever), the consumer cannot be created, or it exists with another
    /// filter (JetStream keeps a durable consumer as it was first made).
    pub async fn new(
        context: jetstream::Context,
        mut config: ConsumerConfig,
        inbox: I,
        handler: H,
    ) -> Result<Self, ConsumerSetupError> {
        let mut stream = context.get_stream(&config.stream).await.map_err(|error| {
            ConsumerSetupError(format!("stream {} is not there: {error}", config.stream))
        })?;
        let filter = config
            .filter_subject
            .as_deref()
            .filter(|filter| !filter.is_empty());
        let dead = config.dead_letter_subject.as_str();
        let (captured, window) = {
            let stream_config = &stream
                .info()
                .await
                .map_err(|error| ConsumerSetupError(format!("stream {}: {error}", config.stream)))?
                .config;
            let captured = stream_config
                .subjects
                .iter()
                .find(|subject| matches_subject(subject, dead))
                .cloned();
            (captured, stream_config.duplicate_window)
        };
        // What the consumer gives up on must be stored somewhere: a
        // dead letter no stream takes is refused every time, and its
        // message delivered, failed and offered again for ever.
        if captured.is_none() {
            use jetstream::context::GetStreamByNameErrorKind;
            match context.stream_by_subject(dead).await {
                Ok(_) => {}
                Err(error) if error.kind() == GetStreamByNameErrorKind::NotFound => {
                    return Err(ConsumerSetupError(format!(
                        "no stream of this account captures the dead-letter subject {dead} of \
                         consumer {}: what it gives up on could not be stored, and would be \
                         delivered again for ever; add the subject to a stream",
                        config.durable,
                    )));
                }
                // An account without `$JS.API.STREAM.NAMES` cannot ask:
                // it worked without the check, so it goes on without it.
                Err(error) => {
                    tracing::warn!(target: "palisade_outbox", consumer = %config.durable, subject = dead, %error, "could not ask which stream captures the dead-letter subject (it needs $JS.API.STREAM.NAMES); not checked");
                }
            }
        }
        if let Some(captured) = captured
            && filter.is_none_or(|filter| matches_subject(filter, dead))
        {
            return Err(ConsumerSetupError(format!(
                "consumer {} would read its own dead-letter subject {dead} (stream {} captures \
                 it through {captured}, and the consumer's filter {} lets it through): what it \
                 gives up on would come back to it for ever; filter it (filter_subject) or \
                 dead-letter to a subject it does not read",
                config.durable,
                config.stream,
                filter.unwrap_or("(none)"),
            )));
        }
        // Boxed: two lookups more is a large future to hold in `new`'s.
        let deliver_policy = Box::pin(first_delivery(&stream, &config)).await?;
        let created = stream
            .get_or_create_consumer(
                &config.durable,
                pull::Config {
                    durable_name: Some(config.durable.clone()),
                    filter_subject: config.filter_subject.clone().unwrap_or_default(),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: config.ack_wait,
                    // Redeliveries are counted here, not capped by the
                    // server: the last one goes to the dead-letter subject.
                    max_deliver: -1,
                    deliver_policy,
                    ..pull::Config::default()
                },
            )
            .await;
        let consumer = match created {
            Ok(consumer) => consumer,
            // Made meanwhile by another instance (with a start a moment
            // later than this one's): that one is the durable.
            Err(error) => Box::pin(async {
                let made = stream.get_consumer(&config.durable).await;
                if made.is_ok() {
                    tracing::debug!(target: "palisade_outbox", consumer = %config.durable, %error, "another instance made the durable first; taking it as made");
                }
                made
            })
                .await
                .map_err(|_| {
                    ConsumerSetupError(format!(
                        "consumer {} on stream {}: {error}",
                        config.durable, config.stream
                    ))
                })?,
        };
        // JetStream keeps a durable consumer as it was first made.
        let made = &consumer.cached_info().config;
        let made_filter = [made.filter_subject.as_str()]
            .into_iter()
            .chain(made.filter_subjects.iter().map(String::as_str))
            .filter(|filter| !filter.is_empty())
            .collect::<Vec<_>>();
        if made_filter != filter.into_iter().collect::<Vec<_>>() {
            return Err(ConsumerSetupError(format!(
                "consumer {} on stream {} exists with filter {made_filter:?}, not {:?} as asked: \
                 JetStream keeps the first. Edit its filter (NATS 2.10 or later), or ask for \
                 the one it has, or name a new consumer that starts after this one and keeps \
                 its inbox name (ConsumerConfig::starting_after, inbox_name)",
                config.durable,
                config.stream,
                filter.into_iter().collect::<Vec<_>>(),
            )));
        }
        // Its ack wait too: the consumer paces its "in progress" answers
        // and keeps its inbox records by the wait JetStream redelivers
        // after, not the one asked.
        if made.ack_wait != config.ack_wait {
            tracing::warn!(
                target: "palisade_outbox",
                consumer = %config.durable,
                made = ?made.ack_wait,
                asked = ?config.ack_wait,
                "the consumer exists with another ack wait, which JetStream keeps; working with it (edit the consumer, as `nats consumer edit` does, to change it)"
            );
            config.ack_wait = made.ack_wait;
        }
        let roster = open_roster(&context, &config).await;
        Ok(Self {
            // By the ack wait the durable has.
            retention: config.redelivery_horizon().max(window),
            context,
            consumer,
            config,
            inbox,
            handler: Arc::new(handler),
            only: EventTypes::default(),
            roster,
            batch: 64,
            counters: Arc::default(),
        })
    }

    /// Only messages of these event types reach the handler; a message of
    /// another type is acknowledged without a transaction, unless another
    /// running instance of the durable takes its type (below). On a NATS
    /// server older than 2.10 (one filter subject per consumer), this is
    /// how a service takes a few types from a stream carrying many.
    ///
    /// Instances of one durable may take different types (in a rolling
    /// deploy of a version that takes a new one, say): while it runs,
    /// each instance keeps the types it takes in the key-value bucket
    /// `palisade_consumers` (made when missing, its entries kept 30
    /// seconds past their last write), and a message of a type this
    /// instance does not take but another running instance does is
    /// handed back for JetStream to deliver again (counted in
    /// [`ConsumerStats::handed_on`], and spending none of its tries), not
    /// acknowledged. An instance reads the others' entries when it starts,
    /// before it takes a message (handing back what it does not take
    /// until it could, for a minute at most), and watches them; one that stops removes its
    /// entry, and one whose entry is neither written again nor removed
    /// (it died, or cannot reach the bucket) holds its types a minute or
    /// so past the entry's end.
    ///
    /// What this does not cover: the instances of a version before this
    /// one keep no entry and read none (the deploy that brings this
    /// version in is not protected; the ones after it are); a message of
    /// a type no running instance takes is acknowledged (events of a new
    /// type published before any instance taking it runs); a type's
    /// message handed on reaches its instance a second or more late, after
    /// later messages of its aggregate, perhaps (with several instances,
    /// an aggregate's order holds within each only, as said on
    /// [`JetStreamConsumer`]). An account not allowed key-value buckets
    /// is warned of at start, and its instances acknowledge what they do
    /// not take.
    #[must_use]
    pub fn only<T: Into<String>>(mut self, event_types: impl IntoIterator<Item = T>) -> Self {
        self.only = EventTypes::only(event_types);
        self
    }

    /// Messages applied per transaction at most, when they have arrived
    /// together (at least 1, at most 100,000).
    #[must_use]
    pub fn batch(mut self, messages: usize) -> Self {
        self.batch = crate::config::consumer_batch(messages);
        self
    }

    /// The handler.
    #[must_use]
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// What the consumer has done so far.
    #[must_use]
    pub fn stats(&self) -> ConsumerStats {
        self.counters.snapshot()
    }

    /// The shortest retention of the inbox's records that covers
    /// JetStream: the longer of the redelivery horizon and the stream's
    /// duplicate window.
    ///
    /// It does not cover the producer: a relay that published a batch and
    /// stopped before marking it sent publishes it again when a relay next
    /// claims it, and past the stream's duplicate window (every relay down
    /// that long, or the broker out of reach) JetStream stores it again. Its
    /// records gone by then, the inbox applies it twice. Keep them as long
    /// as your relays may all be down.
    #[must_use]
    pub const fn inbox_retention(&self) -> Duration {
        self.retention
    }

    /// Forgets inbox records of this consumer's database older than `age`,
    /// at most `batch` of them: every consumer's in its table (the running
    /// consumer forgets its own only, see
    /// [`keep_records`](ConsumerConfig::keep_records)). Warns when `age` is shorter than
    /// [`inbox_retention`](Self::inbox_retention): a message redelivered
    /// after its record is gone would be applied again.
    ///
    /// # Errors
    ///
    /// The database's error.
    pub async fn forget_processed(&self, age: Duration, batch: u32) -> Result<u64, sqlx::Error> {
        if age < self.retention {
            tracing::warn!(
                target: "palisade_outbox",
                retention_s = age.as_secs(),
                needed_s = self.retention.as_secs(),
                "inbox retention is shorter than JetStream may redeliver or duplicate: a late message would be applied twice"
            );
        }
        self.inbox.forget_older_than(age, batch).await
    }

    /// Consumes until `shutdown` completes; the messages under way are
    /// finished (committed and acknowledged) first, or, when one is waiting
    /// to be tried again, nak'ed.
    ///
    /// # Errors
    ///
    /// The pull subscription's error, when JetStream refuses it; and its
    /// end before `shutdown` (the durable consumer deleted, the client's
    /// connection closed), once what it delivered is applied: nothing is
    /// consumed after it, which a quiet return would hide.
    ///
    /// Meanwhile the inbox forgets its old records (see
    /// [`keep_records`](ConsumerConfig::keep_records)).
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<(), BoxError> {
        let kept = self.config.kept.max(self.retention);
        // Its records under its inbox name, its hand-backs under its
        // durable's (JetStream counts deliveries per durable).
        let forgetting = forget_old_records(
            &self.inbox,
            self.config.inbox_consumer(),
            &self.config.durable,
            kept,
        );
        tokio::select! {
            biased;
            consumed = Box::pin(self.enlisted(shutdown)) => consumed,
            never = Box::pin(forgetting) => match never {},
        }
    }

    /// [`run`](Self::run), but for forgetting: enlisted in the roster of
    /// the durable's instances where the account keeps one.
    async fn enlisted(&self, shutdown: impl Future<Output = ()>) -> Result<(), BoxError> {
        // Opened again when it could not be at `new`.
        let roster = match &self.roster {
            Some(roster) => Some(Arc::clone(roster)),
            None => Box::pin(open_roster(&self.context, &self.config)).await,
        };
        let Some(roster) = roster else {
            return self.consume(shutdown, None).await;
        };
        // Boxed: a watch is large, and `run`'s future is held whole by
        // its callers.
        let (enlisted, watch) = Box::pin(roster.enlist(&self.only)).await;
        let consumed = tokio::select! {
            consumed = self.consume(shutdown, Some(&roster)) => consumed,
            never = Box::pin(enlisted.keep(&self.only, watch)) => match never {},
        };
        enlisted.leave().await;
        consumed
    }

    /// [`run`](Self::run), the types the durable's instances take read
    /// from `roster` (none: the account keeps no bucket for them).
    async fn consume(
        &self,
        shutdown: impl Future<Output = ()>,
        roster: Option<&Roster>,
    ) -> Result<(), BoxError> {
        let mut shutdown = Box::pin(shutdown).shared();
        let mut pulled = Pulled {
            stream: self.consumer.messages().await?,
            ahead: VecDeque::new(),
            keep_alive_at: tokio::time::Instant::now() + self.keep_alive_every(),
            ended: false,
            failed: None,
        };
        let mut batch = Vec::with_capacity(self.batch);
        loop {
            if pulled.ahead.is_empty() {
                if pulled.ended {
                    return Err(pulled.end());
                }
                let next = tokio::select! {
                    biased;
                    () = &mut shutdown => return Ok(()),
                    next = pulled.stream.next() => next,
                };
                pulled.take(next);
            } else if (&mut shutdown).now_or_never().is_some() {
                break;
            }
            // What has already arrived joins the batch; nothing waits.
            pulled.take_in();
            let taken = pulled.ahead.len().min(self.batch);
            batch.extend(pulled.ahead.drain(..taken));
            let stopped = !self.process(&batch, &shutdown, &mut pulled, roster).await;
            batch.clear();
            if stopped {
                break;
            }
        }
        // What arrived and was not applied goes back (after a second), for
        // another instance to take.
        let ahead: Vec<&jetstream::Message> = pulled.ahead.iter().collect();
        self.hand_back(&ahead).await;
        Ok(())
    }

    /// Applies `messages` in order, as many per transaction as go through,
    /// and settles each with JetStream; `false` when it stopped for
    /// `shutdown`.
    async fn process<S>(
        &self,
        messages: &[jetstream::Message],
        shutdown: &Shared<S>,
        pulled: &mut Pulled,
        roster: Option<&Roster>,
    ) -> bool
    where
        S: Future<Output = ()> + Unpin,
    {
        // The messages to apply, and their deliveries, index for index.
        let mut kept: Vec<&jetstream::Message> = Vec::with_capacity(messages.len());
        let mut deliveries: Vec<Delivery> = Vec::with_capacity(messages.len());
        // Of types another instance takes and this one does not.
        let mut handed_on: Vec<&jetstream::Message> = Vec::new();
        for message in messages {
            let attempt = message
                .info()
                .map_or(1, |info| u64::try_from(info.delivered).unwrap_or(1));
            let envelope = match read_envelope(message) {
                Ok(envelope) => envelope,
                Err(error) => {
                    tracing::error!(target: "palisade_outbox", subject = %message.subject, %error, "not a CloudEvents message; dead-lettered");
                    self.dead_letter(message, attempt, &error.to_string()).await;
                    continue;
                }
            };
            if !self.only.admits(&envelope.event_type) {
                if let Some(roster) = roster
                    && roster.taken(&envelope.event_type)
                {
                    Counters::add(&self.counters.handed_on);
                    handed_on.push(message);
                } else if let Err(error) = message.ack().await {
                    tracing::debug!(target: "palisade_outbox", %error, "ack of a skipped message lost; it will be skipped again");
                }
                continue;
            }
            let delivery = Delivery {
                envelope,
                subject: message.subject.to_string(),
                payload: message.payload.clone(),
                attempt,
            };
            kept.push(message);
            deliveries.push(delivery);
        }
        if !handed_on.is_empty() {
            self.hand_back(&handed_on).await;
        }
        // Kept alive meanwhile: the inbox may take seconds to answer.
        let no_one_settled = AtomicUsize::new(0);
        self.kept_alive(
            &kept,
            &no_one_settled,
            pulled,
            self.untried_deliveries_subtracted(&mut deliveries),
        )
        .await;
        let applier = Applier {
            inbox: &self.inbox,
            consumer: self.config.inbox_consumer(),
            handler: &*self.handler,
            counters: &self.counters,
            policy: self.config.policy,
        };
        // `kept[..settled]` are settled; the rest are kept alive.
        let settled = AtomicUsize::new(0);
        let applying = async {
            let mut at = 0;
            while at < deliveries.len() {
                let applied = applier.apply_batch(&deliveries[at..]).await;
                let (done, failure) = match applied {
                    Ok(outcome) => outcome,
                    Err(error) => {
                        // Waited out in place: naks would let later
                        // messages of an aggregate overtake earlier ones.
                        tracing::warn!(target: "palisade_outbox", %error, "inbox database failed; trying again later");
                        Counters::add(&self.counters.retried);
                        if !pause(applier.policy.base, shutdown).await {
                            settled.store(kept.len(), Ordering::Relaxed);
                            self.hand_back(&kept[at..]).await;
                            return false;
                        }
                        continue;
                    }
                };
                // Acknowledged after the commit: a lost ack means a
                // redelivery, which the inbox turns into a duplicate. (Kept
                // alive no more from now: an in-progress ack after an ack
                // or a nak would hold the message for another ack wait.)
                settled.store(at + done, Ordering::Relaxed);
                for message in &kept[at..at + done] {
                    Self::ack(message).await;
                }
                at += done;
                let Some(error) = failure else { continue };
                let retried = applier
                    .retry_in_place(&mut deliveries[at], error, |delay| pause(delay, shutdown))
                    .await;
                let (message, delivery) = (kept[at], &deliveries[at]);
                settled.store(
                    if matches!(retried, Retried::Stopped { .. }) {
                        kept.len()
                    } else {
                        at + 1
                    },
                    Ordering::Relaxed,
                );
                match retried {
                    Retried::Applied => Self::ack(message).await,
                    Retried::GaveUp(error) => {
                        tracing::error!(target: "palisade_outbox", id = %delivery.envelope.id, attempt = delivery.attempt, %error, "handler failed its last delivery; dead-lettered");
                        self.dead_letter(message, delivery.attempt, &error.to_string())
                            .await;
                    }
                    // Handed back: the messages after it untried, and it
                    // too if its tries failed only transiently (an outage
                    // is no try of the message's).
                    Retried::Stopped { counted } => {
                        let from = if counted {
                            self.release(&kept[at..=at]).await;
                            at + 1
                        } else {
                            at
                        };
                        self.hand_back(&kept[from..]).await;
                        return false;
                    }
                }
                at += 1;
            }
            true
        };
        self.kept_alive(&kept, &settled, pulled, applying).await
    }

    /// Takes from each delivery's attempt (JetStream's count of its
    /// deliveries) those this consumer handed back untried
    /// ([`hand_back`](Self::hand_back)). Only messages delivered before
    /// are looked up; an inbox that cannot answer leaves JetStream's count.
    async fn untried_deliveries_subtracted(&self, deliveries: &mut [Delivery]) {
        let ids: Vec<&str> = deliveries
            .iter()
            .filter(|delivery| delivery.attempt > 1)
            .map(|delivery| delivery.envelope.id.as_str())
            .collect();
        if ids.is_empty() {
            return;
        }
        let read = tokio::time::timeout(
            HANDED_BACK_READ,
            self.inbox.handed_back(&self.config.durable, &ids),
        )
        .await;
        let handed = match read {
            Ok(Ok(handed)) => handed,
            Ok(Err(error)) => {
                tracing::warn!(target: "palisade_outbox", %error, "deliveries handed back not read: each counts as a try");
                return;
            }
            Err(_) => {
                tracing::warn!(target: "palisade_outbox", "deliveries handed back not read in time: each counts as a try");
                return;
            }
        };
        for delivery in deliveries {
            if let Some(&untried) = handed.get(&delivery.envelope.id) {
                delivery.attempt = delivery.attempt.saturating_sub(untried).max(1);
            }
        }
    }

    /// `applying`'s outcome, keeping the acknowledgements of `messages`
    /// from `settled` on alive until it ends, and of what the subscription
    /// delivers meanwhile (taken in at each turn): JetStream would deliver
    /// them again after the ack wait, while the handler still applies them
    /// or one before them is retried in place.
    async fn kept_alive<T>(
        &self,
        messages: &[&jetstream::Message],
        settled: &AtomicUsize,
        pulled: &mut Pulled,
        applying: impl Future<Output = T>,
    ) -> T {
        let every = self.keep_alive_every();
        let mut applying = std::pin::pin!(applying);
        loop {
            tokio::select! {
                biased;
                outcome = &mut applying => return outcome,
                () = tokio::time::sleep_until(pulled.keep_alive_at) => {
                    pulled.keep_alive_at = tokio::time::Instant::now() + every;
                    pulled.take_in();
                    let from = settled.load(Ordering::Relaxed).min(messages.len());
                    for message in messages[from..].iter().copied().chain(&pulled.ahead) {
                        if let Err(error) = message.ack_with(AckKind::Progress).await {
                            tracing::debug!(target: "palisade_outbox", %error, "in-progress ack lost; JetStream may deliver the message again");
                        }
                    }
                }
            }
        }
    }

    /// How often what is under way and ahead is kept alive: every half
    /// ack wait.
    fn keep_alive_every(&self) -> Duration {
        (self.config.ack_wait / 2).max(Duration::from_millis(100))
    }

    async fn ack(message: &jetstream::Message) {
        if let Err(error) = message.ack().await {
            tracing::warn!(target: "palisade_outbox", %error, "ack lost; the redelivery will be a duplicate");
        }
    }

    /// Hands `messages` back to JetStream untried (the consumer stops, its
    /// inbox's database failed under them, or another instance takes
    /// their type), counting each in the
    /// inbox first: JetStream counts a delivery for each, which their next
    /// delivery does not take for a try. (Counted as tries, a few stops
    /// during an outage spent a message's tries, and its first real
    /// failure then dead-lettered it.)
    async fn hand_back(&self, messages: &[&jetstream::Message]) {
        let ids: Vec<String> = messages
            .iter()
            .filter_map(|message| read_envelope(message).ok().map(|envelope| envelope.id))
            .collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        // Bounded: a stop waits on a database that may be what failed.
        let counted = tokio::time::timeout(
            HANDED_BACK_AFTER,
            self.inbox.hand_back(&self.config.durable, &ids),
        )
        .await;
        match counted {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(target: "palisade_outbox", %error, messages = ids.len(), "deliveries handed back not counted: they count as tries");
            }
            Err(_) => {
                tracing::warn!(target: "palisade_outbox", messages = ids.len(), "deliveries handed back not counted in time: they count as tries");
            }
        }
        self.release(messages).await;
    }

    /// Hands `messages` back to JetStream, to be delivered again after
    /// [`HANDED_BACK_AFTER`].
    async fn release(&self, messages: &[&jetstream::Message]) {
        for message in messages {
            if let Err(error) = message
                .ack_with(AckKind::Nak(Some(HANDED_BACK_AFTER)))
                .await
            {
                tracing::warn!(target: "palisade_outbox", %error, "nak lost; JetStream delivers again after the ack wait");
            }
        }
    }

    /// Has `message` delivered again after the delay of `attempt`.
    async fn retry(&self, message: &jetstream::Message, attempt: u64) {
        Counters::add(&self.counters.retried);
        let delay = self.config.delay_after(attempt);
        if let Err(error) = message.ack_with(AckKind::Nak(Some(delay))).await {
            tracing::warn!(target: "palisade_outbox", %error, "nak lost; JetStream delivers again after the ack wait");
        }
    }

    /// Publishes `message` to the dead-letter subject with why, then
    /// terminates it; if the dead letter is not stored, naks instead.
    async fn dead_letter(&self, message: &jetstream::Message, attempt: u64, error: &str) {
        let mut headers = message.headers.clone().unwrap_or_default();
        headers.insert("palisade-error", one_line(error).as_str());
        headers.insert("palisade-consumer", self.config.durable.as_str());
        headers.insert("palisade-deliveries", attempt.to_string().as_str());
        // The original id would be dropped as a duplicate if the stream
        // also captures the dead-letter subject.
        if let Some(id) = message.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")) {
            headers.insert(
                "Nats-Msg-Id",
                format!("{}:dead:{}", id.as_str(), self.config.durable).as_str(),
            );
        }
        let stored = match self
            .context
            .publish_with_headers(
                self.config.dead_letter_subject.clone(),
                headers,
                message.payload.clone(),
            )
            .await
        {
            Ok(ack) => ack.await.map(|_| ()).map_err(BoxError::from),
            Err(error) => Err(error.into()),
        };
        match stored {
            Ok(()) => {
                Counters::add(&self.counters.dead_lettered);
                if let Err(error) = message.ack_with(AckKind::Term).await {
                    tracing::warn!(target: "palisade_outbox", %error, "term lost; the redelivery will be dead-lettered again");
                }
            }
            Err(error) => {
                tracing::error!(target: "palisade_outbox", %error, subject = %self.config.dead_letter_subject, "dead letter not stored; delivering again later");
                self.retry(message, attempt).await;
            }
        }
    }
}

/// Whether the NATS subject `pattern` (`*` a token, a last `>` one token
/// or more) matches the subject `subject`.
fn matches_subject(pattern: &str, subject: &str) -> bool {
    let mut tokens = subject.split('.');
    for wanted in pattern.split('.') {
        match (wanted, tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (wanted, Some(token)) if wanted == token => {}
            _ => return false,
        }
    }
    tokens.next().is_none()
}

pub(crate) fn read_envelope(message: &jetstream::Message) -> Result<Envelope, EnvelopeError> {
    let empty = HeaderMap::new();
    let headers = message.headers.as_ref().unwrap_or(&empty);
    Envelope::from_headers(
        headers
            .iter()
            .filter_map(|(name, values)| Some((name.as_ref(), values.first()?.as_str()))),
    )
}

/// A header value must be one line.
fn one_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{ConsumerConfig, matches_subject};

    /// A consumer that never gives up (`max_deliver(u64::MAX)`) has its
    /// horizon worked out at once: a delay was added for each delivery,
    /// one by one, and the consumer was never built.
    #[test]
    fn the_horizon_of_a_consumer_that_never_gives_up_is_worked_out_at_once() {
        let config = ConsumerConfig::new("S", "c", "S.dead").unwrap();
        // Retries after 1, 2, 4 and 8 s, and an ack wait of 30 s for each
        // of the 5 deliveries.
        assert_eq!(config.redelivery_horizon(), Duration::from_secs(165));
        let forever = config.max_deliver(u64::MAX);
        assert_eq!(forever.redelivery_horizon(), Duration::MAX);
    }

    #[test]
    fn subjects_match_as_nats_matches_them() {
        for (pattern, subject, matches) in [
            ("orders.dead", "orders.dead", true),
            ("orders.>", "orders.dead", true),
            ("orders.>", "orders.dead.inventory", true),
            ("orders.>", "orders", false),
            ("orders.*", "orders.dead", true),
            ("orders.*", "orders.dead.inventory", false),
            ("orders.*.inventory", "orders.dead.inventory", true),
            ("orders.order.>", "orders.dead", false),
            ("*.dead", "orders.dead", true),
            (">", "orders.dead", true),
            ("orders.dead", "orders.dead.x", false),
            ("orders.dead.x", "orders.dead", false),
        ] {
            assert_eq!(
                matches_subject(pattern, subject),
                matches,
                "{pattern} on {subject}"
            );
        }
    }
}
