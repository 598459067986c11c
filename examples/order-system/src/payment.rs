//! The payment service: charges the card of every order whose stock is
//! reserved, through the card processor over gRPC (with retry, a deadline
//! and a circuit breaker, see [`processor::stack`](crate::processor::stack)).
//!
//! No call to the processor is made inside a database transaction. The
//! handler of `InventoryReserved` records a payment intent in its inbox
//! transaction; [`Payment::charge_intents`] claims the intents that are
//! due, charges them outside any transaction, and records each result (the
//! payment, and `PaymentSucceeded` or `PaymentFailed` in the outbox) in a
//! second transaction, fenced by its claim. A processor that is down, slow
//! or behind an open breaker leaves the intents pending in their turn
//! while the worker backs off; it is no decline. The processor charges once per order id, so an intent
//! charged again after a crash between the call and the record is not a
//! second charge.
//!
//! Payment owns the card numbers: its [`vault`] keeps them encrypted, the
//! gateway tokenizes through it ([`cards`]) before an order is placed, and
//! the saga's events carry the token and the last four digits only. The
//! worker reveals a number to hand it to the processor; a token the vault
//! does not know, or a row that does not decrypt, fails the payment
//! (`PaymentFailed` with the reason `card_unknown` or `card_unreadable`),
//! as does a charge the processor refuses for what it asks
//! (`INVALID_ARGUMENT`, `OUT_OF_RANGE`: `processor_refused`).

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use palisade_outbox::{BoxError, Delivery, Event};
use palisade_tracecontext::{TraceContext, TraceParent, TraceState};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use crate::books::Books;
use crate::card::CardNumber;
use crate::db::{Emit, Param, ServiceDb, Statements, Tx};
use crate::events::{Line, SagaEvent, types};
use crate::processor::{Breaker, Charge, ProcessorClient};
use crate::service::{SagaService, not_consumed};

pub mod cards;
pub mod vault;

use vault::{Vault, VaultError};

/// The card processor's breaker, as payment's records tell: its last
/// state and how many times it opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerHistory {
    /// The last state any replica's breaker moved to (`Closed` if none
    /// ever moved).
    pub state: String,
    /// Transitions to `Open`.
    pub opens: u64,
}

impl BreakerHistory {
    /// Reads the history from payment's database.
    ///
    /// # Errors
    ///
    /// The database's error.
    pub async fn read(db: &ServiceDb) -> Result<Self, sqlx::Error> {
        let (opens, state): (i64, Option<String>) = db
            .fetch_one(
                "SELECT (SELECT count(*) FROM breaker_transitions WHERE to_state = 'Open'), \
                 (SELECT to_state FROM breaker_transitions ORDER BY at_ms DESC LIMIT 1)",
                &[],
            )
            .await?;
        Ok(Self {
            state: state.unwrap_or_else(|| "Closed".to_owned()),
            opens: u64::try_from(opens).unwrap_or(0),
        })
    }
}

/// Intents one round claims, and charges at once.
const BATCH: i64 = 64;

/// Rounds [`Payment::charge_intents`] runs at once: some claim and
/// record while others' calls are out (one alone left the intents
/// waiting for the slowest call of the round before). Four rather than
/// two took the saga's payment step from 36 to 30 ms (mean, 64 orders at a
/// time): an intent committed while every charger is out waits less.
const CHARGERS: usize = 4;

/// How long a claim keeps other workers off its intents: twice the call's
/// deadline ([`CALL_DEADLINE`](crate::processor::CALL_DEADLINE)), so a
/// claim lapses only when its worker died (and should one still record,
/// its claim fences it out).
const CLAIM: Duration = Duration::from_secs(10);

/// How often the worker looks for due intents with no wake-up: intents
/// backed off, or recorded by another replica.
const POLL: Duration = Duration::from_millis(500);

/// The worker's wait after `rounds` rounds in a row charged nothing (the
/// processor down, slow or behind an open breaker): 200 ms doubling up to
/// 2 s (the breaker's open time), with up to a fifth more at random.
fn backoff(rounds: u32) -> Duration {
    let base = Duration::from_millis(200)
        .saturating_mul(1 << (rounds.clamp(1, 5) - 1))
        .min(Duration::from_secs(2));
    base + base.mul_f64(fastrand::f64() / 5.0)
}

/// The payment service.
#[derive(Debug, Clone)]
pub struct Payment {
    db: ServiceDb,
    processor: ProcessorClient,
    vault: Vault,
    /// Wakes [`charge_intents`](Self::charge_intents) once an intent is
    /// committed.
    recorded: Arc<Notify>,
}

/// A claimed intent: the order's line and the trace it belongs to.
struct Intent {
    line: Line,
    trace: Option<TraceContext>,
}

/// What a round of the worker came to: intents claimed, and charged
/// (approved or declined).
struct Round {
    claimed: i64,
    charged: i64,
}

/// What charging an intent came to: the saga's next step and its outbox
/// event (made in the intent's trace), or the failure to back off from.
type Outcome = (Intent, Result<(SagaEvent, Event), BoxError>);

impl Payment {
    /// The service on its database, charging through `processor` the
    /// cards of `vault` (opened on the same database).
    #[must_use]
    pub fn new(db: ServiceDb, processor: ProcessorClient, vault: Vault) -> Self {
        Self {
            db,
            processor,
            vault,
            recorded: Arc::default(),
        }
    }

    /// The card vault.
    #[must_use]
    pub const fn vault(&self) -> &Vault {
        &self.vault
    }

    /// Records every transition of `breaker` until `stopped` completes.
    /// A record that cannot be written is logged and skipped: the history
    /// is for people, the breaker works without it.
    pub async fn record_transitions(&self, breaker: &Breaker, stopped: impl Future<Output = ()>) {
        use tokio::sync::broadcast::error::RecvError;
        let mut transitions = breaker.subscribe();
        tokio::pin!(stopped);
        loop {
            let transition = tokio::select! {
                () = &mut stopped => return,
                transition = transitions.recv() => transition,
            };
            let transition = match transition {
                Ok(transition) => transition,
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "breaker transitions missed");
                    continue;
                }
                Err(RecvError::Closed) => return,
            };
            let (from, to) = (
                format!("{:?}", transition.from),
                format!("{:?}", transition.to),
            );
            let recorded = self
                .db
                .execute(
                    "INSERT INTO breaker_transitions (at_ms, from_state, to_state) VALUES ($1, $2, $3)",
                    &[
                        Param::Int(crate::orders::now_ms()),
                        Param::Text(&from),
                        Param::Text(&to),
                    ],
                )
                .await;
            if let Err(error) = recorded {
                tracing::warn!(%error, "breaker transition not recorded");
            }
        }
    }

    /// Charges the payment intents as they become due, until `stopped`
    /// completes (the charges under way are recorded first). Four rounds
    /// (`CHARGERS`) run at once, so the next intents are claimed while a
    /// round's calls are out. A round's database error is logged and the
    /// round tried again later: the intents stay recorded.
    pub async fn charge_intents(&self, stopped: impl Future<Output = ()>) {
        let (stop, stopping) = watch::channel(false);
        let mut chargers = JoinSet::new();
        for _ in 0..CHARGERS {
            let (payment, stopping) = (self.clone(), stopping.clone());
            chargers.spawn(async move { payment.charge_rounds(stopping).await });
        }
        stopped.await;
        let _ = stop.send(true);
        while chargers.join_next().await.is_some() {}
    }

    /// One charger: rounds after rounds until `stopping` turns true.
    async fn charge_rounds(&self, mut stopping: watch::Receiver<bool>) {
        let mut failed_rounds = 0;
        while !*stopping.borrow() {
            let idle = match self.charge_round().await {
                Ok(round) if round.claimed > 0 && round.charged == 0 => {
                    // Nothing charged: the processor is out, not the
                    // intents; the worker waits, and they keep their turn.
                    failed_rounds += 1;
                    backoff(failed_rounds)
                }
                Ok(round) => {
                    failed_rounds = 0;
                    // A full round: more may be due at once.
                    if round.claimed == BATCH {
                        Duration::ZERO
                    } else {
                        POLL
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "payment intents not charged; trying again");
                    POLL
                }
            };
            tokio::select! {
                biased;
                _ = stopping.wait_for(|stop| *stop) => return,
                () = self.recorded.notified(), if failed_rounds == 0 => {}
                () = tokio::time::sleep(idle) => {}
            }
        }
    }

    /// Claims the due intents, charges them at once, and records what
    /// came of each.
    async fn charge_round(&self) -> Result<Round, BoxError> {
        let claim = uuid::Uuid::now_v7().to_string();
        let intents = self.claim(&claim).await?;
        let claimed = i64::try_from(intents.len()).unwrap_or(BATCH);
        // The round's cards in one read; the vault's database down fails
        // every charge of the round, to be tried again in its turn.
        let tokens: Vec<&str> = intents
            .iter()
            .map(|intent| intent.line.card_token.as_str())
            .collect();
        let numbers = match self.vault.reveal_all(&tokens).await {
            Ok(numbers) => numbers,
            Err(error) => {
                let error = error.to_string();
                let outcomes: Vec<Outcome> = intents
                    .into_iter()
                    .map(|intent| (intent, Err(error.clone().into())))
                    .collect();
                self.record(&claim, &outcomes).await?;
                return Ok(Round {
                    claimed,
                    charged: 0,
                });
            }
        };
        let mut charging = JoinSet::new();
        for intent in intents {
            let processor = self.processor.clone();
            // Several orders may share a card, hence a token.
            let revealed = match numbers.get(&intent.line.card_token) {
                Some(Ok(number)) => Ok(number.clone()),
                Some(Err(VaultError::Unreadable)) => Err(VaultError::Unreadable),
                _ => Err(VaultError::UnknownToken),
            };
            charging.spawn(async move {
                let charging = charge(&processor, revealed, &intent.line);
                let outcome = match intent.trace.clone() {
                    Some(trace) => trace.scope(charging).await,
                    None => charging.await,
                };
                (intent, outcome)
            });
        }
        let mut outcomes = Vec::new();
        while let Some(outcome) = charging.join_next().await {
            outcomes.push(outcome?);
        }
        self.record(&claim, &outcomes).await?;
        let charged = outcomes
            .iter()
            .filter(|(_, outcome)| outcome.is_ok())
            .count();
        Ok(Round {
            claimed,
            charged: i64::try_from(charged).unwrap_or(claimed),
        })
    }

    /// Claims up to [`BATCH`] due intents for [`CLAIM`]: no other worker
    /// takes them meanwhile.
    async fn claim(&self, claim: &str) -> Result<Vec<Intent>, BoxError> {
        let now = self.db.now_ms().await?;
        let lease = i64::try_from(CLAIM.as_millis()).unwrap_or(i64::MAX);
        let rows: Vec<(String, Option<String>)> = self
            .db
            .fetch_all(
                "UPDATE payment_intents SET claim = $1, due_ms = $2 + $3 \
                 WHERE due_ms <= $2 AND order_id IN \
                 (SELECT order_id FROM payment_intents WHERE due_ms <= $2 ORDER BY due_ms LIMIT $4) \
                 RETURNING line, traceparent",
                &[
                    Param::Text(claim),
                    Param::Int(now),
                    Param::Int(lease),
                    Param::Int(BATCH),
                ],
            )
            .await?;
        rows.into_iter()
            .map(|(line, traceparent)| {
                Ok(Intent {
                    line: serde_json::from_str(&line)?,
                    trace: traceparent.as_deref().and_then(stored_context),
                })
            })
            .collect()
    }

    /// Records what came of a round's charges in one transaction, each
    /// fenced by `claim`: an intent charged is settled (its payment and its
    /// event written, the intent gone), one whose call failed is due again
    /// in its turn (the worker backs off). An intent whose claim lapsed is
    /// left to the worker that holds it now.
    ///
    /// The charged intents are settled together: one statement removes
    /// them and one writes their payments. Should a claim have lapsed
    /// (fewer removed than charged), that is rolled back and each is
    /// settled on its own.
    async fn record(&self, claim: &str, outcomes: &[Outcome]) -> Result<(), BoxError> {
        let mut tx = self.db.begin().await?;
        if !self.settle_together(&mut tx, claim, outcomes).await? {
            tx.rollback().await?;
            tx = self.db.begin().await?;
            for (intent, outcome) in outcomes {
                self.settle_one(&mut tx, claim, intent, outcome).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records `outcomes` in `tx` as [`record`](Self::record) says, with
    /// the charged intents settled at once; `false` (and `tx` to be rolled
    /// back) when one of them is no longer `claim`'s.
    async fn settle_together<C: Emit>(
        &self,
        tx: &mut C,
        claim: &str,
        outcomes: &[Outcome],
    ) -> Result<bool, BoxError> {
        let mut charged = Vec::with_capacity(outcomes.len());
        for (intent, outcome) in outcomes {
            match outcome {
                Ok((step, event)) => charged.push((intent, step, event)),
                Err(error) => self.due_again(tx, claim, intent, error).await?,
            }
        }
        if charged.is_empty() {
            return Ok(true);
        }
        // Every intent of the claim left is one charged.
        let settled = tx
            .execute(
                "DELETE FROM payment_intents WHERE claim = $1",
                &[Param::Text(claim)],
            )
            .await?;
        if settled != u64::try_from(charged.len()).unwrap_or(u64::MAX) {
            return Ok(false);
        }
        let mut params = Vec::with_capacity(charged.len() * 4);
        for (intent, step, _) in &charged {
            let (status, reason) = payment_status(step);
            params.extend([
                Param::Text(&intent.line.order_id),
                Param::Int(intent.line.amount_cents),
                Param::Text(status),
                Param::OptionalText(reason),
            ]);
        }
        // An order paid already keeps its payment and gets no second
        // event; the others of the round are recorded all the same.
        let recorded: Vec<(String,)> = tx
            .fetch_all(
                &format!(
                    "INSERT INTO payments (order_id, amount_cents, status, reason) VALUES {} \
                     ON CONFLICT (order_id) DO NOTHING RETURNING order_id",
                    crate::db::placeholders(charged.len(), 4)
                ),
                &params,
            )
            .await?;
        if recorded.len() < charged.len() {
            tracing::warn!(
                paid_already = charged.len() - recorded.len(),
                "intents of orders paid already: their payments stand, no event again"
            );
        }
        // One statement for the round's events too (on SQLite).
        let events: Vec<Event> = charged
            .iter()
            .filter(|(intent, _, _)| {
                recorded
                    .iter()
                    .any(|(order_id,)| *order_id == intent.line.order_id)
            })
            .map(|(_, _, event)| (*event).clone())
            .collect();
        tx.enqueue_all(&events).await?;
        Ok(true)
    }

    /// Records one outcome in `tx`, fenced by `claim`.
    async fn settle_one<C: Emit>(
        &self,
        tx: &mut C,
        claim: &str,
        intent: &Intent,
        outcome: &Result<(SagaEvent, Event), BoxError>,
    ) -> Result<(), BoxError> {
        let (step, event) = match outcome {
            Ok(charged) => charged,
            Err(error) => return self.due_again(tx, claim, intent, error).await,
        };
        let order_id = intent.line.order_id.as_str();
        let settled = tx
            .execute(
                "DELETE FROM payment_intents WHERE order_id = $1 AND claim = $2",
                &[Param::Text(order_id), Param::Text(claim)],
            )
            .await?;
        if settled == 0 {
            return Ok(());
        }
        let (status, reason) = payment_status(step);
        let recorded = tx
            .execute(
                "INSERT INTO payments (order_id, amount_cents, status, reason) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (order_id) DO NOTHING",
                &[
                    Param::Text(order_id),
                    Param::Int(intent.line.amount_cents),
                    Param::Text(status),
                    Param::OptionalText(reason),
                ],
            )
            .await?;
        // An order paid already keeps its payment and gets no second event.
        if recorded == 1 {
            tx.enqueue(event).await?;
        }
        Ok(())
    }

    /// An intent whose charge failed with `error`: due again now (the
    /// worker backs off), fenced by `claim`.
    async fn due_again<C: Tx>(
        &self,
        tx: &mut C,
        claim: &str,
        intent: &Intent,
        error: &BoxError,
    ) -> Result<(), BoxError> {
        let order_id = intent.line.order_id.as_str();
        // Refused for payment's own standing (its credentials, a method
        // the processor lacks) or the processor's state: the charge waits
        // until someone mends it, which no one learns of at debug level.
        let refused = error.downcast_ref::<tonic::Status>().is_some_and(|status| {
            matches!(
                status.code(),
                tonic::Code::Unauthenticated
                    | tonic::Code::PermissionDenied
                    | tonic::Code::Unimplemented
                    | tonic::Code::FailedPrecondition
            )
        });
        if refused {
            palisade_hints::throttled!(warn, order_id, %error, "the card processor refuses payment's calls; every charge waits");
        } else {
            tracing::debug!(order_id, %error, "charge failed; the intent waits");
        }
        let now = self.db.now_ms_in(tx).await?;
        tx.execute(
            "UPDATE payment_intents SET due_ms = $1, attempts = attempts + 1, claim = NULL \
             WHERE order_id = $2 AND claim = $3",
            &[Param::Int(now), Param::Text(order_id), Param::Text(claim)],
        )
        .await?;
        Ok(())
    }
}

/// A payment's status and reason, as `payments` records them.
fn payment_status(step: &SagaEvent) -> (&'static str, Option<&str>) {
    match step {
        SagaEvent::PaymentFailed { reason, .. } => ("failed", Some(reason.as_str())),
        _ => ("succeeded", None),
    }
}

/// Charges `line`'s card, `revealed` from the vault (within the
/// channel's deadline): the saga's next step and its event, in the current
/// trace, or the failure to try again after (the processor down, slow, or
/// behind an open breaker). A card the vault does not have, or cannot
/// open, fails the payment: trying again would not find it; so does a
/// charge the processor refuses for what it asks.
async fn charge(
    processor: &ProcessorClient,
    revealed: Result<CardNumber, VaultError>,
    line: &Line,
) -> Result<(SagaEvent, Event), BoxError> {
    let failed = |reason: &str| SagaEvent::PaymentFailed {
        line: line.clone(),
        reason: reason.to_owned(),
    };
    let step = match revealed {
        Ok(number) => match processor
            .charge(&line.order_id, &number, line.amount_cents)
            .await
        {
            Ok(Charge::Approved) => SagaEvent::PaymentSucceeded(line.clone()),
            Ok(Charge::Declined(reason)) => failed(&reason),
            // The processor refused this request, charging nothing: no
            // later try of it would pass, and waiting for one held the
            // saga for ever.
            Err(status) if refuses_the_charge(status.code()) => {
                tracing::warn!(
                    order_id = %line.order_id,
                    code = ?status.code(),
                    message = status.message(),
                    "the card processor refused the charge; the payment fails"
                );
                failed("processor_refused")
            }
            Err(status) => return Err(status.into()),
        },
        Err(VaultError::UnknownToken) => {
            tracing::warn!(order_id = %line.order_id, "the order's card token is not in the vault");
            failed("card_unknown")
        }
        Err(VaultError::Unreadable) => {
            tracing::error!(
                order_id = %line.order_id,
                "the order's card does not decrypt with the vault's key \
                 (tampered with, or sealed under another key)"
            );
            failed("card_unreadable")
        }
        Err(error) => return Err(error.into()),
    };
    let event = step.to_event();
    Ok((step, event))
}

/// Whether a call that ended with `code` was refused by the processor
/// for what it asked (not for the processor's state, nor for payment's
/// credentials, which a later try may find mended): it charged nothing,
/// and the same request never will.
const fn refuses_the_charge(code: tonic::Code) -> bool {
    // Not FAILED_PRECONDITION: the processor's state (an order charged by
    // an earlier try whose answer was lost, say), which failing the
    // payment would cancel though paid.
    matches!(code, tonic::Code::InvalidArgument | tonic::Code::OutOfRange)
}

/// The trace context an intent keeps, for its charge and the events
/// after: the `traceparent`, then the `tracestate` on a line of its own
/// when it has members (a header value holds no line break). One column,
/// as intents kept only the `traceparent` before and their tables have
/// it; the vendors' state was lost from payment's step on.
fn stored_trace(context: &TraceContext) -> String {
    match context.trace_state().header_value() {
        Some(state) => format!("{}\n{state}", context.traceparent()),
        None => context.traceparent().to_string(),
    }
}

/// The trace [`stored_trace`] kept (or a bare `traceparent`, as intents
/// written before have), continued. An invalid `tracestate` is dropped
/// and the `traceparent` kept, as the specification asks.
fn stored_context(stored: &str) -> Option<TraceContext> {
    let (parent, state) = stored.split_once('\n').unwrap_or((stored, ""));
    let parent = TraceParent::from_str(parent).ok()?;
    let state = TraceState::parse_lines([state.as_bytes()]).unwrap_or_default();
    Some(TraceContext::continue_from(parent, state))
}

impl SagaService for Payment {
    const NAME: &'static str = "payment";
    const TABLES: &'static [&'static str] = &[
        "CREATE TABLE IF NOT EXISTS payments (order_id TEXT PRIMARY KEY, amount_cents BIGINT NOT NULL, \
         status TEXT NOT NULL, reason TEXT)",
        // Charges to make: the order's line (JSON), the trace it belongs to
        // (its `traceparent`, then its `tracestate` on a line of its own:
        // see `stored_trace`), when it is next due (a claim moves it past the claim's lease) and
        // the claim that holds it.
        "CREATE TABLE IF NOT EXISTS payment_intents (order_id TEXT PRIMARY KEY, line TEXT NOT NULL, \
         traceparent TEXT, due_ms BIGINT NOT NULL, attempts BIGINT NOT NULL DEFAULT 0, claim TEXT)",
        // Each round claims the intents due first.
        "CREATE INDEX IF NOT EXISTS payment_intents_due ON payment_intents (due_ms)",
        // Every state change of the card processor's breaker, by every
        // replica: its history survives restarts and is read by the books.
        "CREATE TABLE IF NOT EXISTS breaker_transitions (at_ms BIGINT NOT NULL, from_state TEXT NOT NULL, \
         to_state TEXT NOT NULL)",
        // The card vault.
        vault::TABLE,
    ];
    const CONSUMES: &'static [&'static str] = &[types::INVENTORY_RESERVED];

    fn db(&self) -> &ServiceDb {
        &self.db
    }

    /// The card processor breaker's history, as payment recorded it.
    async fn books(&self, _stuck_after: Duration) -> Result<Books, sqlx::Error> {
        let breaker = BreakerHistory::read(&self.db).await?;
        Ok(Books {
            breaker_state: breaker.state,
            breaker_opens: breaker.opens,
            ..Books::of_outbox(Self::NAME, &self.db).await?
        })
    }

    async fn apply<T: Emit>(&self, tx: &mut T, event: SagaEvent) -> Result<(), BoxError> {
        let SagaEvent::InventoryReserved(line) = event else {
            return Err(not_consumed(Self::NAME, &event));
        };
        // The intent only: the charge is made outside this transaction.
        // Once per order, whatever comes again: an order paid already, or
        // whose intent waits, gets none (a reservation delivered again
        // after its inbox entry was forgotten would charge it twice, and
        // its payment could not be recorded).
        let traceparent = TraceContext::current().map(|context| stored_trace(&context));
        let now = self.db.now_ms_in(tx).await?;
        tx.execute(
            "INSERT INTO payment_intents (order_id, line, traceparent, due_ms) \
             SELECT $1, $2, $3, $4 WHERE NOT EXISTS (SELECT 1 FROM payments WHERE order_id = $1) \
             ON CONFLICT (order_id) DO NOTHING",
            &[
                Param::Text(&line.order_id),
                Param::Text(&serde_json::to_string(&line)?),
                Param::OptionalText(traceparent.as_deref()),
                Param::Int(now),
            ],
        )
        .await?;
        Ok(())
    }

    fn committed(&self, _: &Delivery) {
        self.recorded.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payment::vault::VaultKey;
    use crate::processor::{self as card, ChargeStore, GOOD_CARD, ProcessorServer, Simulator};

    /// A charge the processor refuses for what it asks (a zero amount:
    /// `INVALID_ARGUMENT`) fails the payment, for the compensations to
    /// run: it was tried again for ever, and its saga never ended.
    #[tokio::test]
    async fn a_charge_the_processor_refuses_fails_the_payment() {
        let dir = std::env::temp_dir().join(format!("palisade-refused-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let simulator = Simulator::new(ChargeStore::open_sqlite(&dir).await.unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(ProcessorServer::new(simulator))
                .serve_with_incoming(crate::net::grpc_incoming(listener)),
        );
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .unwrap()
            .connect_lazy();
        let meter = opentelemetry::global::meter("payment-test");
        let (channel, _) = card::stack(channel, card::breaker_config(), &meter);
        let processor = ProcessorClient::new(channel);
        let number = CardNumber::parse(GOOD_CARD).unwrap();

        let mut free = line("o-free");
        free.amount_cents = 0;
        let (step, _) = charge(&processor, Ok(number.clone()), &free).await.unwrap();
        assert!(
            matches!(&step, SagaEvent::PaymentFailed { reason, .. } if reason == "processor_refused"),
            "{step:?}"
        );
        let (step, _) = charge(&processor, Ok(number), &line("o-paid"))
            .await
            .unwrap();
        assert!(matches!(step, SagaEvent::PaymentSucceeded(_)), "{step:?}");
        std::fs::remove_dir_all(dir).ok();
    }

    fn line(order_id: &str) -> Line {
        Line {
            order_id: order_id.to_owned(),
            user_id: "alice".into(),
            sku: "sku-1".to_owned(),
            quantity: 1,
            amount_cents: 1250,
            card_token: "card_0123456789abcdef0123456789abcdef".to_owned(),
            card_last4: "4242".to_owned(),
        }
    }

    fn charged(order_id: &str) -> Outcome {
        let step = SagaEvent::PaymentSucceeded(line(order_id));
        let event = step.to_event();
        (intent(order_id), Ok((step, event)))
    }

    fn intent(order_id: &str) -> Intent {
        Intent {
            line: line(order_id),
            trace: None,
        }
    }

    async fn texts(db: &ServiceDb, sql: &str) -> Vec<String> {
        let rows: Vec<(String,)> = db.fetch_all(sql, &[]).await.unwrap();
        rows.into_iter().map(|(text,)| text).collect()
    }

    /// A stored trace reads back whole; a bare `traceparent` (as intents
    /// written before carry) or one with an invalid `tracestate` keeps its
    /// trace, with no vendor state.
    #[test]
    fn a_stored_trace_reads_back() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let state = TraceState::parse_lines([&b"congo=t61rcWkgMzE"[..]]).unwrap();
        let context = TraceContext::continue_from(TraceParent::from_str(parent).unwrap(), state);
        let read = stored_context(&stored_trace(&context)).unwrap();
        assert_eq!(read.trace_id(), context.trace_id());
        assert_eq!(read.parent_id(), Some(context.span_id()));
        assert_eq!(read.trace_state().header_value(), Some("congo=t61rcWkgMzE"));
        for stored in [parent.to_owned(), format!("{parent}\nnot a member")] {
            let read = stored_context(&stored).unwrap();
            assert_eq!(read.trace_id(), context.trace_id(), "{stored}");
            assert_eq!(read.trace_state().header_value(), None, "{stored}");
        }
        assert!(stored_context("not a traceparent").is_none());
    }

    #[tokio::test]
    async fn a_round_is_settled_at_once_unless_a_claim_lapsed() {
        let (db, dir) = crate::service::scratch_db::<Payment>().await;
        let vault = Vault::open(db.clone(), &VaultKey::generate())
            .await
            .unwrap();
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
        let meter = opentelemetry::global::meter("test");
        let (channel, _) =
            crate::processor::stack(channel, palisade_circuit_breaker::Config::default(), &meter);
        let payment = Payment::new(db.clone(), ProcessorClient::new(channel), vault);
        for (order_id, claim) in [
            ("a", "c1"),
            ("b", "c1"),
            ("c", "c1"),
            ("d", "c2"),
            ("e", "c3"),
        ] {
            db.execute(
                "INSERT INTO payment_intents (order_id, line, due_ms, claim) \
                 VALUES ($1, '{}', 0, $2)",
                &[Param::Text(order_id), Param::Text(claim)],
            )
            .await
            .unwrap();
        }

        // All of c1's: a and b settled together, c due again.
        let failed: Outcome = (intent("c"), Err("the processor is down".into()));
        payment
            .record("c1", &[charged("a"), charged("b"), failed])
            .await
            .unwrap();
        let paid = "SELECT order_id FROM payments ORDER BY order_id";
        assert_eq!(texts(&db, paid).await, ["a", "b"]);
        let waiting = "SELECT order_id || ':' || coalesce(claim, '-') || ':' || attempts \
                       FROM payment_intents ORDER BY order_id";
        assert_eq!(texts(&db, waiting).await, ["c:-:1", "d:c2:0", "e:c3:0"]);

        // c2 claimed d and e, but e's claim lapsed and c3 holds it: d is
        // settled on its own, e left to c3.
        payment
            .record("c2", &[charged("d"), charged("e")])
            .await
            .unwrap();
        assert_eq!(texts(&db, paid).await, ["a", "b", "d"]);
        assert_eq!(texts(&db, waiting).await, ["c:-:1", "e:c3:0"]);
        let events = "SELECT aggregate_id FROM outbox ORDER BY seq";
        assert_eq!(texts(&db, events).await, ["a", "b", "d"]);

        // An intent of an order paid already (a reservation delivered
        // again): its round is recorded, the others' payments and events
        // with it, and the paid order keeps its one payment and event.
        // The round failed on the payment's key, and was claimed again
        // and failed for good, its other orders never paid.
        for order_id in ["a", "f"] {
            db.execute(
                "INSERT INTO payment_intents (order_id, line, due_ms, claim) \
                 VALUES ($1, '{}', 0, 'c4')",
                &[Param::Text(order_id)],
            )
            .await
            .unwrap();
        }
        payment
            .record("c4", &[charged("a"), charged("f")])
            .await
            .unwrap();
        assert_eq!(texts(&db, paid).await, ["a", "b", "d", "f"]);
        assert_eq!(texts(&db, waiting).await, ["c:-:1", "e:c3:0"]);
        assert_eq!(texts(&db, events).await, ["a", "b", "d", "f"]);
        // On its own (a lapsed claim's path) too.
        db.execute(
            "INSERT INTO payment_intents (order_id, line, due_ms, claim) VALUES ('b', '{}', 0, 'c5')",
            &[],
        )
        .await
        .unwrap();
        let mut tx = db.begin().await.unwrap();
        payment
            .settle_one(&mut tx, "c5", &intent("b"), &charged("b").1)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(texts(&db, events).await, ["a", "b", "d", "f"]);

        // A reservation delivered again makes no intent for a paid order,
        // nor a second one for an order whose intent waits.
        for order_id in ["a", "c"] {
            let mut tx = db.begin().await.unwrap();
            payment
                .apply(&mut tx, SagaEvent::InventoryReserved(line(order_id)))
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }
        assert_eq!(texts(&db, waiting).await, ["c:-:1", "e:c3:0"]);
        let _ = std::fs::remove_dir_all(dir);
    }
}
