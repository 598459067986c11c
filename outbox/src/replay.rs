//! Reading a stream's history again (feature `nats` with a database): what
//! a read model is built again from.

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

/// Every message of `stream` on subjects matching `filter`, from the first
/// the stream keeps to the last it held when called, in stream order, as
/// deliveries: what a read model is built again from (a projection's
/// rebuild). A message without a valid envelope is left out, with a
/// warning. Nothing is acknowledged or changed: the messages are read
/// through an ephemeral consumer, deleted once the replay ends (or, when
/// it is dropped before its end, by JetStream a minute later).
///
/// The history comes as it is pulled, 512 messages at a time:
/// a stream of any length is replayed in the memory of one pull.
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
/// the replay's items, when a pull fails on the way.
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
            // process die, while reading.
            inactive_threshold: Duration::from_secs(60),
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
        pull: None,
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

/// Where a replay stands: its consumer, the pull under way, and how far
/// it has read.
struct History {
    stream: jetstream::stream::Stream,
    consumer: jetstream::consumer::Consumer<pull::Config>,
    /// The stream's last sequence when the replay began: its end.
    last: u64,
    /// The messages the consumer had when made.
    matching: u64,
    /// The messages read so far.
    read: u64,
    /// The pull under way, and whether it brought anything yet.
    pull: Option<(pull::Batch, bool)>,
}

impl History {
    /// The next delivery of the history, pulling more when a pull is
    /// used up. The history ends at the stream's sequence `last`, once it
    /// read the `matching` messages, or at the first pull that finds
    /// nothing (some may have been removed by the stream's limits since):
    /// it never waits for messages to come.
    async fn next(&mut self) -> Result<Option<Delivery>, BoxError> {
        loop {
            if self.read >= self.matching {
                return Ok(None);
            }
            let (pull, pulled) = match &mut self.pull {
                Some(pull) => pull,
                None => {
                    let batch = self
                        .consumer
                        .fetch()
                        .max_messages(REPLAY_BATCH)
                        .expires(Duration::from_secs(1))
                        .messages()
                        .await?;
                    self.pull.insert((batch, false))
                }
            };
            let Some(message) = pull.next().await else {
                if !*pulled {
                    return Ok(None);
                }
                self.pull = None;
                continue;
            };
            *pulled = true;
            let message = message?;
            self.read += 1;
            let sequence = message.info()?.stream_sequence;
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

    /// Deletes the replay's consumer, now that it has read all it will.
    async fn delete_consumer(&mut self) {
        let name = self.consumer.cached_info().name.clone();
        if let Err(error) = self.stream.delete_consumer(&name).await {
            tracing::debug!(target: "palisade_outbox", %error, "replay's consumer not deleted; it goes once inactive");
        }
    }
}
