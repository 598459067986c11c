//! The relay: claims events, publishes them, marks them sent.

use std::future::Future;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tracing::Instrument;

use crate::error::PublishError;
use crate::publisher::{Published, Publisher};
use crate::store::{Failed, OutboxStore};

/// A publish still unacknowledged when its claim's lease ended.
#[derive(Debug)]
struct LeaseEnded;

impl std::fmt::Display for LeaseEnded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no acknowledgement before the claim's lease ended")
    }
}

impl std::error::Error for LeaseEnded {}

/// What one batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchReport {
    /// Events claimed.
    pub claimed: usize,
    /// Events the broker acknowledged (duplicates included).
    pub published: usize,
    /// Of those, acknowledged as duplicates.
    pub duplicates: usize,
    /// Events that failed and will be retried.
    pub failed: usize,
    /// Events that failed their last attempt and are now dead.
    pub dead: usize,
    /// Events whose claim had ended and passed to another relay before
    /// this one settled them: left to the newer claim, unchanged.
    pub superseded: usize,
}

/// Publishes what the outbox holds, with acknowledgement, as long as it
/// runs.
///
/// Several relays may run against one outbox: each claims its own batches.
/// A batch's events are published concurrently and marked sent in one
/// statement; a failed event backs off on its own, and after its last
/// attempt is dead, without holding up other aggregates.
///
/// A publish never outlives its claim's lease: one still unacknowledged
/// when the lease ends is given up as a failed attempt, before another
/// relay may claim the event again. And every settle is fenced by the claim
/// that produced it (see [`OutboxStore`]): a relay that stalled past its
/// lease cannot undo another relay's "sent".
#[derive(Debug, Clone)]
pub struct Relay<St, P> {
    store: St,
    publisher: P,
    clean_up_every: Duration,
    #[cfg(feature = "otel")]
    instruments: Option<std::sync::Arc<crate::otel::Instruments>>,
}

impl<St: OutboxStore, P: Publisher> Relay<St, P> {
    /// A relay from `store` to `publisher`.
    #[must_use]
    pub const fn new(store: St, publisher: P) -> Self {
        Self {
            store,
            publisher,
            clean_up_every: Duration::from_secs(60),
            #[cfg(feature = "otel")]
            instruments: None,
        }
    }

    /// Reports this relay's work with OpenTelemetry (feature `otel`); see
    /// the [`otel`](crate::otel) module for the names. `name` becomes the
    /// `relay` attribute.
    #[cfg(feature = "otel")]
    #[must_use]
    pub fn instrument(
        mut self,
        meter: &opentelemetry::metrics::Meter,
        name: impl Into<String>,
    ) -> Self {
        self.instruments = Some(std::sync::Arc::new(crate::otel::Instruments::new(
            meter,
            name.into(),
        )));
        self
    }

    /// Refreshes the backlog gauges, when instrumented.
    async fn observe_backlog(&self) {
        #[cfg(feature = "otel")]
        if let Some(instruments) = &self.instruments {
            match self.store.backlog().await {
                Ok(backlog) => instruments.saw(&backlog),
                Err(error) => {
                    tracing::warn!(target: "palisade_outbox", %error, "backlog query failed");
                }
            }
        }
    }

    /// Claims, publishes and settles one batch.
    ///
    /// # Errors
    ///
    /// The database's error; claimed events are retried once their lease
    /// expires.
    pub async fn run_once(&self) -> Result<BatchReport, sqlx::Error> {
        // Read before the claim: the lease the database grants ends later.
        let lease_ends = tokio::time::Instant::now() + self.store.lease();
        let claimed = self.store.claim().await?;
        if claimed.is_empty() {
            return Ok(BatchReport::default());
        }
        let span =
            tracing::info_span!(target: "palisade_outbox", "outbox.batch", claimed = claimed.len());
        async {
            let started = Instant::now();
            let outcomes = join_all(claimed.iter().map(|message| {
                tokio::time::timeout_at(lease_ends, self.publisher.publish(message))
            }))
            .await;
            let mut report = BatchReport {
                claimed: claimed.len(),
                ..BatchReport::default()
            };
            let mut sent = Vec::with_capacity(claimed.len());
            let mut failed = Vec::new();
            for (message, outcome) in claimed.into_iter().zip(outcomes) {
                match outcome {
                    Ok(Ok(published)) => {
                        report.duplicates += usize::from(published == Published::Duplicate);
                        sent.push(message);
                    }
                    Ok(Err(error)) => failed.push((message, error)),
                    Err(_) => failed.push((message, PublishError::new(LeaseEnded))),
                }
            }
            report.published = sent.len();
            if !sent.is_empty() {
                let settled = self.store.mark_sent(&sent).await?;
                report.superseded += sent.len().saturating_sub(settled);
            }
            #[cfg(feature = "otel")]
            let latencies: Vec<i64> = {
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
                sent.iter().map(|message| now_ms - message.created_at_ms).collect()
            };
            for (message, error) in failed {
                match self.store.mark_failed(&message, &error.to_string()).await? {
                    Failed::Dead => {
                        report.dead += 1;
                        tracing::error!(
                            target: "palisade_outbox",
                            id = %message.event.id,
                            aggregate = %message.event.aggregate_id,
                            %error,
                            "event dead after its last attempt"
                        );
                    }
                    Failed::BackingOff => {
                        report.failed += 1;
                        tracing::warn!(target: "palisade_outbox", id = %message.event.id, %error, "publish failed; backing off");
                    }
                    Failed::Superseded => report.superseded += 1,
                }
            }
            if report.superseded > 0 {
                tracing::warn!(
                    target: "palisade_outbox",
                    superseded = report.superseded,
                    "claims ended before they were settled; left to the relays that claimed them since"
                );
            }
            #[cfg(feature = "otel")]
            if let Some(instruments) = &self.instruments {
                instruments.settled(&report, &latencies);
            }
            tracing::debug!(
                target: "palisade_outbox",
                published = report.published,
                failed = report.failed,
                elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                "batch settled"
            );
            Ok(report)
        }
        .instrument(span)
        .await
    }

    /// Runs until `shutdown` completes: a full batch is followed at once by
    /// the next; otherwise the relay waits to be woken or for the polling
    /// interval. Sent events past their retention are deleted now and then.
    ///
    /// Shutdown is graceful: a batch under way is published and settled
    /// first, so no event is left claimed (and published again after its
    /// lease) by a relay that was asked to stop.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut last_clean_up = Instant::now();
        let mut last_observed: Option<Instant> = None;
        loop {
            let busy = match self.run_once().await {
                Ok(report) => report.claimed > 0,
                Err(error) => {
                    tracing::warn!(target: "palisade_outbox", %error, "claiming failed; trying again");
                    false
                }
            };
            if busy {
                tokio::select! {
                    biased;
                    () = &mut shutdown => return,
                    () = std::future::ready(()) => {}
                }
            } else {
                tokio::select! {
                    () = &mut shutdown => return,
                    () = self.store.wait_for_work() => {}
                }
            }
            if last_observed.is_none_or(|at| at.elapsed() >= Duration::from_secs(5)) {
                last_observed = Some(Instant::now());
                self.observe_backlog().await;
            }
            if last_clean_up.elapsed() >= self.clean_up_every {
                last_clean_up = Instant::now();
                match self.store.clean_up().await {
                    Ok(deleted) if deleted > 0 => {
                        tracing::debug!(target: "palisade_outbox", deleted, "sent events cleaned up");
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(target: "palisade_outbox", %error, "clean-up failed");
                    }
                }
            }
        }
    }
}
