//! Reading a stream's history again (feature `nats` with a database): what
//! a read model is built again from.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use futures_util::stream::{self, BoxStream};
use futures_util::{Stream, StreamExt};

use crate::consume::{BoxError, Delivery};
use crate::jetstream::read_envelope;

/// How many messages a replay pulls at once: what it holds in memory.
const REPLAY_BATCH: usize = 512;

/// How long JetStream keeps a replay's consumer after its last pull.
const INACTIVE: Duration = Duration::from_secs(5 * 60);

/// Every message of `stream` on subjects matching `filter`, from the first
/// the stream keeps to the last it held when called, in stream order, as
/// deliveries: what a read model is built again from (a projection's
/// rebuild). A message without a valid envelope is left out, with a
/// warning. Nothing is acknowledged or changed: the messages are read
/// through an ephemeral consumer, deleted once the replay ends (or, when
/// it is dropped before its end, by JetStream five minutes after its
/// last pull).
///
/// The history comes as it is pulled, 512 messages at a time:
/// a stream of any length is replayed in the memory of one pull. A reader
/// may take its time over each delivery, up to five minutes a pull.
///
/// # Example
///
/// ```no_run
/// use futures_util::TryStreamExt;
///
/// # async fn rebuild(context: async_nats::jetstream::Context) -> Result<(), palisade_outbox::BoxError> {
/// let mut history = palisade_outbox::replay(&context, "ORDERS", "orders.order.Shipped").await?;
/// while let Some(delivery) = history.try_next().await? {
///     // Apply `delivery` to the read model, as its consumer would.
///     # let _ = delivery;
/// }
/// # Ok(())
/// # }
/// ```
///
/// # Errors
///
/// JetStream's, when the stream is missing or its consumer cannot be made;
/// the replay's items, when a pull fails on the way, or messages of the
/// history went missing between pulls (the replay then ends: replay
/// again).
pub async fn replay(
    context: &jetstream::Context,
    stream: &str,
    filter: &str,
) -> Result<Replay, BoxError> {
    let mut stream = context.get_stream(stream).await?;
    // The end of the history: the last message stored now.
    let last = stream.info().await?.state.last_sequence;
    let consumer = stream
        .create_consumer(pull::Config {
            filter_subject: filter.to_owned(),
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ack_policy: jetstream::consumer::AckPolicy::None,
            // Gone on its own should the replay be dropped, or this
            // process die, while reading; kept while its reader works
            // through a pull for minutes.
            inactive_threshold: INACTIVE,
            ..pull::Config::default()
        })
        .await?;
    let matching = consumer.cached_info().num_pending;
    let history = History {
        stream,
        consumer,
        last,
        matching,
        read: 0,
        delivered: 0,
        pulled: VecDeque::new(),
    };
    let deliveries = stream::try_unfold(history, |mut history| async move {
        let next = history.next().await;
        if !matches!(next, Ok(Some(_))) {
            history.delete_consumer().await;
        }
        Ok(next?.map(|delivery| (delivery, history)))
    });
    Ok(Replay {
        deliveries: deliveries.boxed(),
    })
}

/// A stream's history as [`replay`] reads it: a [`Stream`] of deliveries
/// in stream order, ending at the last message the stream held when the
/// replay began. After an error it ends.
#[must_use = "a replay reads nothing until it is polled"]
pub struct Replay {
    deliveries: BoxStream<'static, Result<Delivery, BoxError>>,
}

impl fmt::Debug for Replay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replay").finish_non_exhaustive()
    }
}

impl Stream for Replay {
    type Item = Result<Delivery, BoxError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.deliveries.poll_next_unpin(cx)
    }
}

/// Where a replay stands: its consumer, the messages pulled and not yet
/// handed out, and how far it has read.
struct History {
    stream: jetstream::stream::Stream,
    consumer: jetstream::consumer::Consumer<pull::Config>,
    /// The stream's last sequence when the replay began: its end.
    last: u64,
    /// The messages the consumer had when made.
    matching: u64,
    /// The messages read so far, and the consumer's delivery sequence of
    /// the last: the next must follow it, or messages were lost between.
    read: u64,
    delivered: u64,
    /// The last pull's messages, taken from it whole as it came: a pull
    /// left unread past its expiry ends, and drops what it still holds
    /// (the consumer acknowledges nothing, so they never come again).
    pulled: VecDeque<jetstream::Message>,
}

/// How many pulls in a row may come back empty while the consumer still
/// has messages for the replay, before it fails.
const EMPTY_PULLS: u32 = 3;

/// The pause before the second empty pull, growing by as much before
/// each next.
const EMPTY_PULL_PAUSE: Duration = Duration::from_millis(200);

impl History {
    /// The next delivery of the history, pulling more when the last pull
    /// is used up. The history ends at the stream's sequence `last`, once
    /// it read the `matching` messages, or when the consumer has nothing
    /// more for it (some may have been removed by the stream's limits
    /// since): it never waits for messages to come.
    async fn next(&mut self) -> Result<Option<Delivery>, BoxError> {
        loop {
            if self.read >= self.matching {
                return Ok(None);
            }
            let Some(message) = self.pulled.pop_front() else {
                if !self.pull().await? {
                    return Ok(None);
                }
                continue;
            };
            let info = message.info()?;
            if info.consumer_sequence != self.delivered + 1 {
                return Err(format!(
                    "the replay lost messages: delivery {} came after {}; replay again",
                    info.consumer_sequence, self.delivered
                )
                .into());
            }
            self.delivered = info.consumer_sequence;
            self.read += 1;
            let sequence = info.stream_sequence;
            if sequence > self.last {
                self.matching = 0;
                return Ok(None);
            }
            if sequence == self.last {
                // Nothing after it belongs to the history.
                self.matching = self.read;
            }
            match read_envelope(&message) {
                Ok(envelope) => {
                    return Ok(Some(Delivery {
                        envelope,
                        subject: message.subject.to_string(),
                        payload: message.payload.clone(),
                        attempt: 1,
                    }));
                }
                Err(error) => {
                    tracing::warn!(target: "palisade_outbox", subject = %message.subject, %error, "not a CloudEvents message; left out of the replay");
                }
            }
        }
    }

    /// Pulls the next messages, whole; `false` when the consumer has none
    /// left for the replay.
    async fn pull(&mut self) -> Result<bool, BoxError> {
        for tries in 0..EMPTY_PULLS {
            if tries > 0 {
                // Room for a brief hiccup (a leader elected) to pass.
                tokio::time::sleep(EMPTY_PULL_PAUSE * tries).await;
            }
            let mut batch = self
                .consumer
                .fetch()
                .max_messages(REPLAY_BATCH)
                .expires(Duration::from_secs(1))
                .messages()
                .await?;
            while let Some(message) = batch.next().await {
                self.pulled.push_back(message?);
            }
            if !self.pulled.is_empty() {
                return Ok(true);
            }
            let info = self.consumer.info().await?;
            // Delivered by JetStream, never reached here: a pull cut short
            // on its way (its expiry came first) drops what it had left.
            if info.delivered.consumer_sequence != self.delivered {
                return Err(format!(
                    "the replay lost messages: JetStream delivered {} of them, {} arrived; \
                     replay again",
                    info.delivered.consumer_sequence, self.delivered
                )
                .into());
            }
            if info.num_pending == 0 {
                return Ok(false);
            }
        }
        Err(format!(
            "the replay's last {EMPTY_PULLS} pulls came back empty while its consumer held \
             messages for it; replay again"
        )
        .into())
    }

    /// Deletes the replay's consumer, now that it has read all it will.
    async fn delete_consumer(&mut self) {
        let name = self.consumer.cached_info().name.clone();
        if let Err(error) = self.stream.delete_consumer(&name).await {
            tracing::debug!(target: "palisade_outbox", %error, "replay's consumer not deleted; it goes once inactive");
        }
    }
}
