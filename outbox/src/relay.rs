//! The relay: claims events, publishes them, marks them sent.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tracing::Instrument;

use crate::availability::{Availability, outage_backoff};
use crate::error::{PublishError, PublishErrorKind};
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
    /// Events the broker rejected, which will be retried.
    pub failed: usize,
    /// Events the broker could not take (it was unavailable): handed back
    /// with their attempts untouched.
    pub unavailable: usize,
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
/// statement. What happens to an event whose publish failed depends on the
/// [`PublishError`]'s kind:
///
/// - the broker **rejected** the message: the event backs off on its own,
///   and after its last attempt is dead, without holding up other
///   aggregates;
/// - the broker was **unavailable** (cannot connect, timeout, no
///   responders, no stream, 503): the event is handed back with its
///   attempts untouched, to wait [`outage_backoff`](Self::outage_backoff)
///   (doubling while the outage lasts), for as long as the outage lasts. The
///   outage is logged once when it starts and once when it ends;
/// - the broker had **no room** ([`Full`](crate::PublishErrorKind::Full):
///   a stream or subject full, its store failing): the broker answered, so
///   a batch refused only so is no outage; the events wait the backoff's
///   cap, their attempts untouched. It is logged once when it starts and
///   once when a batch finds room again.
///
/// With feature `circuit-breaker`, [`circuit_breaker`](Self::circuit_breaker)
/// puts a breaker in front of the publisher: once enough publishes found
/// the broker unavailable it opens, publishes are refused without calling
/// the broker (their events wait as above, or until the breaker lets a
/// probe through if that comes sooner), and a probe tells when the broker
/// is back. A rejection counts as a success there: the broker answered.
///
/// A publish never outlives its claim's lease: one still unacknowledged
/// when the lease ends is given up (as a timeout, the broker's failure),
/// before another relay may claim the event again. And every settle is
/// fenced by the claim that produced it (see [`OutboxStore`]): a relay that
/// stalled past its lease cannot undo another relay's "sent".
#[derive(Debug, Clone)]
pub struct Relay<St, P> {
    store: St,
    publisher: P,
    clean_up_every: Duration,
    outage_backoff: (Duration, Duration),
    availability: Arc<Availability>,
    #[cfg(feature = "circuit-breaker")]
    breaker: Option<palisade_circuit_breaker::CircuitBreaker>,
    #[cfg(feature = "otel")]
    instruments: Option<Arc<crate::otel::Instruments>>,
}

impl<St: OutboxStore, P: Publisher> Relay<St, P> {
    /// A relay from `store` to `publisher`, waiting out an unavailable
    /// broker from 100 ms to 5 s, with no breaker.
    #[must_use]
    pub fn new(store: St, publisher: P) -> Self {
        Self {
            store,
            publisher,
            clean_up_every: Duration::from_secs(60),
            outage_backoff: (Duration::from_millis(100), Duration::from_secs(5)),
            availability: Arc::default(),
            #[cfg(feature = "circuit-breaker")]
            breaker: None,
            #[cfg(feature = "otel")]
            instruments: None,
        }
    }

    /// How often sent events past their retention are deleted when the
    /// last clean-up left none behind (a full batch is followed by the next
    /// at the relay's next turn); every minute by default.
    #[must_use]
    pub const fn clean_up_every(mut self, interval: Duration) -> Self {
        self.clean_up_every = interval;
        self
    }

    /// How long events wait when the broker could not take them: `base`
    /// after the first batch that reached no broker, doubling while the
    /// outage lasts, up to `cap` (or until a breaker that refused them lets
    /// a probe through, if sooner). Their attempts are untouched however
    /// long it lasts. Each from a millisecond to a day, a value outside
    /// taken as the nearer bound: at zero, the events handed back came due
    /// at once, and the relay claimed and published them back to back for
    /// as long as the outage lasted.
    #[must_use]
    pub const fn outage_backoff(mut self, base: Duration, cap: Duration) -> Self {
        let least = Duration::from_millis(1);
        self.outage_backoff = (
            palisade_hints::bounded(base, least, palisade_hints::DAY),
            palisade_hints::bounded(cap, least, palisade_hints::DAY),
        );
        self
    }

    /// Publishes through `breaker` (feature `circuit-breaker`): while it is
    /// open, events are handed back without calling the broker, to wait
    /// the outage backoff or until it lets a probe through. Publishes that find the broker
    /// unavailable count as its failures; every answer of the broker,
    /// rejections included, as its successes.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use palisade_circuit_breaker::{CircuitBreaker, Config, ConfigError};
    /// use palisade_outbox::{OutboxStore, Publisher, Relay};
    ///
    /// fn probing<St: OutboxStore, P: Publisher>(relay: Relay<St, P>) -> Result<Relay<St, P>, ConfigError> {
    ///     // Open once half of the last publishes (5 at least) found the
    ///     // broker down; probe after 1 s, then 2 s, 4 s, ... up to 30 s.
    ///     let breaker = CircuitBreaker::new(
    ///         Config::builder()
    ///             .minimum_calls(5)
    ///             .open_duration(Duration::from_secs(1))
    ///             .open_backoff(2.0, Duration::from_secs(30))
    ///             .build()?,
    ///     );
    ///     Ok(relay.circuit_breaker(breaker))
    /// }
    /// ```
    #[cfg(feature = "circuit-breaker")]
    #[must_use]
    pub fn circuit_breaker(mut self, breaker: palisade_circuit_breaker::CircuitBreaker) -> Self {
        self.breaker = Some(breaker);
        self
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
        self.instruments = Some(Arc::new(crate::otel::Instruments::new(
            meter,
            name.into(),
            &self.availability,
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

    /// Publishes `message` through the breaker, if any, cut at
    /// `lease_ends`.
    async fn publish(
        &self,
        message: &crate::Message,
        lease_ends: tokio::time::Instant,
    ) -> Result<Published, PublishError> {
        #[cfg(feature = "circuit-breaker")]
        let permit = match &self.breaker {
            Some(breaker) => Some(
                breaker
                    .try_acquire(Instant::now())
                    .map_err(PublishError::unavailable)?,
            ),
            None => None,
        };
        let outcome = tokio::time::timeout_at(lease_ends, self.publisher.publish(message))
            .await
            .unwrap_or_else(|_| Err(PublishError::unavailable(LeaseEnded)));
        #[cfg(feature = "circuit-breaker")]
        if let Some(permit) = permit {
            use palisade_circuit_breaker::Outcome;
            // Out of reach, not out of room: a full stream answered.
            let broker_failed = outcome
                .as_ref()
                .is_err_and(|error| error.kind() == PublishErrorKind::Unavailable);
            let recorded = if broker_failed {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            permit.record(recorded, Instant::now());
        }
        outcome
    }

    /// How long events the broker could not take wait: the outage backoff
    /// after `batches` batches in a row reached no broker, or less when a
    /// breaker that refused them lets a probe through sooner.
    fn wait_for_broker(&self, errors: &[PublishError], batches: u32) -> Duration {
        let (base, cap) = self.outage_backoff;
        let backoff = outage_backoff(base, cap, batches);
        #[cfg(feature = "circuit-breaker")]
        let backoff = errors
            .iter()
            .filter_map(|error| std::error::Error::source(error)?.downcast_ref())
            .filter_map(palisade_circuit_breaker::Open::retry_after)
            .max()
            .map_or(backoff, |open| open.min(backoff));
        #[cfg(not(feature = "circuit-breaker"))]
        let _ = errors;
        backoff
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
            let outcomes = join_all(
                claimed
                    .iter()
                    .map(|message| self.publish(message, lease_ends)),
            )
            .await;
            let mut report = BatchReport {
                claimed: claimed.len(),
                ..BatchReport::default()
            };
            let mut sent = Vec::with_capacity(claimed.len());
            let mut failed = Vec::new();
            let (mut unavailable, mut unavailable_errors) = (Vec::new(), Vec::new());
            for (message, outcome) in claimed.into_iter().zip(outcomes) {
                match outcome {
                    Ok(published) => {
                        report.duplicates += usize::from(published == Published::Duplicate);
                        sent.push(message);
                    }
                    Err(error) if error.is_unavailable() => {
                        unavailable.push(message);
                        unavailable_errors.push(error);
                    }
                    Err(error) => failed.push((message, error)),
                }
            }
            report.published = sent.len();
            #[cfg(feature = "otel")]
            let latencies: Vec<i64> = {
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
                sent.iter()
                    .map(|message| now_ms.saturating_sub(message.created_at_ms))
                    .collect()
            };
            // Each count goes into the report as its change is written, and
            // the report is measured whatever stopped the settling: a
            // database error halfway through loses none of what was done.
            let settling = async {
                if !sent.is_empty() {
                    let settled = self.store.mark_sent(&sent).await?;
                    report.superseded += sent.len().saturating_sub(settled);
                }
                report.unavailable = unavailable.len();
                // An outage is a batch that stored or refused nothing while
                // some publish could not reach the broker; a batch the broker
                // only said it had no room for reached it.
                let stored_or_refused = !sent.is_empty() || !failed.is_empty();
                let out_of_reach = unavailable_errors
                    .iter()
                    .find(|error| error.kind() != PublishErrorKind::Full);
                let outage = match out_of_reach {
                    Some(error) if !stored_or_refused => self.availability.unreachable(error),
                    _ => {
                        self.availability.reached();
                        0
                    }
                };
                if !unavailable.is_empty() {
                    // Refused for want of room (a full stream or subject): the
                    // broker is up, and a retry soon is refused again, so they
                    // wait the longest outage wait, and say so. The rest (out
                    // of reach, a breaker's refusal, a timeout) wait as an
                    // outage's batches do.
                    let out_wait = self.wait_for_broker(&unavailable_errors, outage);
                    let (full, out_of_reach): (Vec<_>, Vec<_>) = unavailable
                        .into_iter()
                        .zip(&unavailable_errors)
                        .partition(|(_, error)| error.kind() == PublishErrorKind::Full);
                    for (group, wait, roomless) in [
                        (full, self.outage_backoff.1, true),
                        (out_of_reach, out_wait, false),
                    ] {
                        let (events, errors): (Vec<crate::Message>, Vec<&PublishError>) =
                            group.into_iter().unzip();
                        let Some(error) = errors.first() else {
                            continue;
                        };
                        let settled = self.store.release(&events, wait, &error.to_string()).await?;
                        report.superseded += events.len().saturating_sub(settled);
                        if roomless {
                            self.availability.no_room(events.len(), wait, error);
                        } else {
                            tracing::debug!(
                                target: "palisade_outbox",
                                events = events.len(),
                                wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                                %error,
                                "broker unavailable; events handed back, attempts untouched"
                            );
                        }
                    }
                }
                if stored_or_refused
                    && !unavailable_errors
                        .iter()
                        .any(|error| error.kind() == PublishErrorKind::Full)
                {
                    self.availability.room();
                }
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
                            tracing::warn!(target: "palisade_outbox", id = %message.event.id, %error, "publish rejected; backing off");
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
                Ok::<(), sqlx::Error>(())
            }
            .await;
            #[cfg(feature = "otel")]
            if let Some(instruments) = &self.instruments {
                instruments.settled(&report, &latencies);
            }
            settling?;
            tracing::debug!(
                target: "palisade_outbox",
                published = report.published,
                failed = report.failed,
                unavailable = report.unavailable,
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
    /// interval. Sent events past their retention are deleted a batch at a
    /// time (see [`OutboxConfig::retention`](crate::OutboxConfig::retention)):
    /// at the first turn, then after each [`clean_up_every`](Self::clean_up_every),
    /// and at each turn while the batches deleted are full, so a busy
    /// outbox's clean-up keeps up with what it sends.
    ///
    /// Shutdown is graceful: a batch under way is published and settled
    /// first, so no event is left claimed (and published again after its
    /// lease) by a relay that was asked to stop.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut last_clean_up: Option<Instant> = None;
        let mut more_to_clean = false;
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
            if more_to_clean || last_clean_up.is_none_or(|at| at.elapsed() >= self.clean_up_every) {
                last_clean_up = Some(Instant::now());
                more_to_clean = match self.store.clean_up().await {
                    Ok(done) => {
                        if done.deleted > 0 {
                            tracing::debug!(target: "palisade_outbox", deleted = done.deleted, "sent events cleaned up");
                        }
                        done.full
                    }
                    Err(error) => {
                        tracing::warn!(target: "palisade_outbox", %error, "clean-up failed");
                        false
                    }
                };
            }
        }
    }
}
