//! The card processor, reached by gRPC: a simulator that declines some
//! cards and can be made slow or unavailable, and the client payment calls
//! it with (trace context, retry, circuit breaker).
//!
//! The wire contract is `proto/card_processor.proto`; its messages, client
//! and server ([`wire`]) are generated at build time by protox and tonic's
//! code generator (`build.rs`), so no `protoc` is needed.
//!
//! The simulator declines cards ending in `0002` (`insufficient_funds`) and
//! approves the others; a charge is idempotent per order id, kept durably in
//! a [`ChargeStore`] of its own (so the same order asked again after the
//! processor's restart gets the same answer, charged once). Its [`Faults`]
//! make it answer `UNAVAILABLE`, or slowly, on demand.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use palisade_circuit_breaker::CircuitBreakerLayer;
use palisade_retry::RetryLayer;
use palisade_tracecontext::PropagateLayer;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};
use tonic::transport::Channel;

use crate::card::CardNumber;
use crate::db::{Param, Pool, Statements, Tx};
use crate::group_commit::{GroupCommit, Unwritten};

/// The card that is always declined.
pub const DECLINED_CARD: &str = "4000000000000002";
/// A card that is always approved.
pub const GOOD_CARD: &str = "4242424242424242";

/// The code generated from `proto/card_processor.proto`.
#[allow(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    unused_qualifications,
    clippy::all,
    clippy::pedantic
)]
pub mod wire {
    tonic::include_proto!("palisade.processor.v1");
}

pub use wire::{ChargeReply, ChargeRequest};

/// The simulator as a tonic service.
pub type ProcessorServer = wire::card_processor_server::CardProcessorServer<Simulator>;

/// Its `Debug` shows the card's last four digits only.
impl std::fmt::Debug for ChargeRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let digits = self.card.len();
        f.debug_struct("ChargeRequest")
            .field("order_id", &self.order_id)
            .field(
                "card",
                &format_args!(
                    "…{}",
                    self.card.get(digits.saturating_sub(4)..).unwrap_or("")
                ),
            )
            .field("amount_cents", &self.amount_cents)
            .finish()
    }
}

/// The processor's answer, as payment reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Charge {
    /// The card was charged.
    Approved,
    /// The card was not charged, and why.
    Declined(String),
}

/// What the simulator is made to do wrong (fault injection).
#[derive(Debug, Default)]
pub struct Faults {
    unavailable: AtomicBool,
    delay_ms: AtomicU64,
}

/// The faults as set, for the admin endpoint.
///
/// A field it does not know is refused: a misspelt one read as "no fault"
/// would end an outage the operator meant to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSettings {
    /// Every charge answers `UNAVAILABLE`.
    #[serde(default)]
    pub unavailable: bool,
    /// Milliseconds added to every charge.
    #[serde(default)]
    pub delay_ms: u64,
}

impl FaultSettings {
    /// Reads the settings a `PUT /admin/processor` body asks for.
    ///
    /// # Errors
    ///
    /// What is wrong with the body: not JSON of this shape (a field it
    /// does not know included), or a delay over a minute.
    pub fn from_json(body: &[u8]) -> Result<Self, String> {
        let settings: Self = serde_json::from_slice(body)
            .map_err(|error| format!("not processor faults: {error}"))?;
        if settings.delay_ms > 60_000 {
            return Err("delay_ms must be at most 60000".to_owned());
        }
        Ok(settings)
    }
}

impl Faults {
    /// The faults now.
    #[must_use]
    pub fn settings(&self) -> FaultSettings {
        FaultSettings {
            unavailable: self.unavailable.load(Ordering::SeqCst),
            delay_ms: self.delay_ms.load(Ordering::SeqCst),
        }
    }

    /// Sets every fault at once.
    pub fn apply(&self, settings: FaultSettings) {
        self.set_unavailable(settings.unavailable);
        self.set_delay(Duration::from_millis(settings.delay_ms));
    }

    /// Answer every charge `UNAVAILABLE` (`true`) or serve again.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.unavailable.store(unavailable, Ordering::SeqCst);
    }

    /// Take `delay` more over every charge.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms.store(
            u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }
}

/// The card processor's own record of its charges: what it answered each
/// order (the idempotency record, one row per order id) and the money it
/// moved (the ledger, one row per capture). A SQLite file in the embedded
/// system, a PostgreSQL schema of its own on real infrastructure; no other
/// service reads it (they ask the processor, see [`Ledger`]).
#[derive(Debug, Clone)]
pub enum ChargeStore {
    /// A SQLite file.
    Sqlite(SqlitePool),
    /// A PostgreSQL schema (the pool's `search_path`).
    Postgres(PgPool),
}

impl Statements for ChargeStore {
    fn pool(&self) -> Pool<'_> {
        match self {
            Self::Sqlite(pool) => Pool::Sqlite(pool),
            Self::Postgres(pool) => Pool::Postgres(pool),
        }
    }
}

/// The store's tables: the answer given to each order, and the ledger,
/// which has no key of its own so that a second capture for one order
/// would show (see [`Ledger::charged_twice`]).
const CHARGE_TABLES: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS charges (order_id TEXT PRIMARY KEY, amount_cents BIGINT NOT NULL, \
     decline_reason TEXT)",
    "CREATE TABLE IF NOT EXISTS ledger (order_id TEXT NOT NULL, amount_cents BIGINT NOT NULL)",
];

/// What the processor's ledger shows: the books' check that no order was
/// charged twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Ledger {
    /// Captures, all time.
    pub charges: u64,
    /// Orders captured more than once.
    pub charged_twice: u64,
}

/// What the processor tells its operators (`GET /admin/processor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Report {
    /// The faults injected now.
    pub faults: FaultSettings,
    /// Charges seen since it started, `UNAVAILABLE` answers included.
    pub calls: u64,
    /// Its ledger's totals.
    pub ledger: Ledger,
}

impl ChargeStore {
    /// Opens (creating if needed) `dir/processor.db`.
    ///
    /// # Errors
    ///
    /// The database's error.
    pub async fn open_sqlite(dir: &Path) -> Result<Self, sqlx::Error> {
        let options = SqliteConnectOptions::new()
            .filename(dir.join("processor.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // As the services' files (`ServiceDb`): consistent after a
            // crash, the last commits lost only on a power cut. FULL would
            // sync every charge's commit, one at a time.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .test_before_acquire(false)
            .connect_with(options)
            .await?;
        Self::Sqlite(pool).migrated().await
    }

    /// Opens the schema `schema` (a name [`is_identifier`] accepts) of
    /// the PostgreSQL database at `url`, creating it if needed.
    ///
    /// [`is_identifier`]: crate::db::is_identifier
    ///
    /// # Errors
    ///
    /// The database's error, or a configuration error for a bad schema
    /// name.
    pub async fn open_postgres(url: &str, schema: &str) -> Result<Self, sqlx::Error> {
        if !crate::db::is_identifier(schema) {
            return Err(sqlx::Error::Configuration(
                format!("{schema:?} is not a schema name (lowercase letters, digits and `_`)")
                    .into(),
            ));
        }
        let options: PgConnectOptions = url.parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(options.options([("search_path", schema)]))
            .await?;
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .execute(&pool)
            .await?;
        Self::Postgres(pool).migrated().await
    }

    async fn migrated(self) -> Result<Self, sqlx::Error> {
        for table in CHARGE_TABLES {
            self.execute(table, &[]).await?;
        }
        Ok(self)
    }

    /// Records `charges` in one transaction, each once per order id: the
    /// first time, its answer is recorded (and captured in the ledger when
    /// approved); every time, the answer recorded first comes back (in
    /// `charges`' order; `None` for approved, else the decline reason).
    async fn charge_all(
        &self,
        charges: &[ChargeRecord],
    ) -> Result<Vec<Option<String>>, sqlx::Error> {
        match self {
            Self::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                let answers = charge_in(&mut *tx, charges).await?;
                tx.commit().await?;
                Ok(answers)
            }
            Self::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let answers = charge_in(&mut *tx, charges).await?;
                tx.commit().await?;
                Ok(answers)
            }
        }
    }

    /// The ledger's totals.
    ///
    /// # Errors
    ///
    /// The database's error.
    pub async fn ledger(&self) -> Result<Ledger, sqlx::Error> {
        let (charges, twice): (i64, i64) = self
            .fetch_one(
                "SELECT (SELECT count(*) FROM ledger), \
                 (SELECT count(*) FROM (SELECT order_id FROM ledger GROUP BY order_id \
                  HAVING count(*) > 1) AS twice)",
                &[],
            )
            .await?;
        Ok(Ledger {
            charges: u64::try_from(charges).unwrap_or(0),
            charged_twice: u64::try_from(twice).unwrap_or(0),
        })
    }
}

/// Charges one statement records at most (three parameters each, far
/// below either database's limit).
const CHARGES_PER_STATEMENT: usize = 500;

/// Records `charges` in `tx` (see [`ChargeStore::charge_all`]) set by set:
/// one insert of the group's orders, one of their captures, and one read
/// of the answers recorded before, whatever the group's size (a statement
/// per charge made the group's turn, which the calls queue for, grow with
/// it).
async fn charge_in<C: Tx>(
    tx: &mut C,
    charges: &[ChargeRecord],
) -> Result<Vec<Option<String>>, sqlx::Error> {
    // An order asked twice in one group is recorded from its first call.
    let mut seen = HashSet::with_capacity(charges.len());
    let candidates: Vec<&ChargeRecord> = charges
        .iter()
        .filter(|charge| seen.insert(charge.order_id.as_str()))
        .collect();
    let mut recorded: HashMap<String, Option<String>> = HashMap::with_capacity(charges.len());
    for chunk in candidates.chunks(CHARGES_PER_STATEMENT) {
        let mut params = Vec::with_capacity(chunk.len() * 3);
        for charge in chunk {
            params.extend([
                Param::Text(&charge.order_id),
                Param::Int(charge.amount_cents),
                Param::OptionalText(charge.reason.as_deref()),
            ]);
        }
        let first: Vec<(String,)> = tx
            .fetch_all(
                &format!(
                    "INSERT INTO charges (order_id, amount_cents, decline_reason) VALUES {} \
                     ON CONFLICT (order_id) DO NOTHING RETURNING order_id",
                    crate::db::placeholders(chunk.len(), 3)
                ),
                &params,
            )
            .await?;
        let first: HashSet<String> = first.into_iter().map(|(order_id,)| order_id).collect();
        let captured: Vec<&&ChargeRecord> = chunk
            .iter()
            .filter(|charge| charge.reason.is_none() && first.contains(&charge.order_id))
            .collect();
        if !captured.is_empty() {
            let mut params = Vec::with_capacity(captured.len() * 2);
            for charge in &captured {
                params.extend([
                    Param::Text(&charge.order_id),
                    Param::Int(charge.amount_cents),
                ]);
            }
            tx.execute(
                &format!(
                    "INSERT INTO ledger (order_id, amount_cents) VALUES {}",
                    crate::db::placeholders(captured.len(), 2)
                ),
                &params,
            )
            .await?;
        }
        for charge in chunk {
            if first.contains(&charge.order_id) {
                recorded.insert(charge.order_id.clone(), charge.reason.clone());
            }
        }
    }
    // The orders recorded before this group: their first answer stands.
    let earlier: Vec<&str> = candidates
        .iter()
        .filter(|charge| !recorded.contains_key(&charge.order_id))
        .map(|charge| charge.order_id.as_str())
        .collect();
    for chunk in earlier.chunks(CHARGES_PER_STATEMENT) {
        let params: Vec<Param<'_>> = chunk.iter().map(|order_id| Param::Text(order_id)).collect();
        let rows: Vec<(String, Option<String>)> = tx
            .fetch_all(
                &format!(
                    "SELECT order_id, decline_reason FROM charges WHERE order_id IN {}",
                    crate::db::placeholders(1, chunk.len())
                ),
                &params,
            )
            .await?;
        recorded.extend(rows);
    }
    charges
        .iter()
        .map(|charge| {
            recorded
                .get(&charge.order_id)
                .cloned()
                .ok_or(sqlx::Error::RowNotFound)
        })
        .collect()
}

/// Records `order_id`'s charge in `store` with the charges recorded
/// alongside, and answers what was recorded for it first.
async fn record(
    recording: &Recording,
    store: &ChargeStore,
    order_id: String,
    amount_cents: i64,
    answer: Charge,
) -> Result<Charge, Unwritten> {
    let charge = ChargeRecord {
        order_id,
        amount_cents,
        reason: match answer {
            Charge::Approved => None,
            Charge::Declined(reason) => Some(reason),
        },
    };
    let recorded = recording
        .write(charge, |group| {
            let store = store.clone();
            async move { store.charge_all(&group).await }
        })
        .await?;
    Ok(recorded.map_or(Charge::Approved, Charge::Declined))
}

/// What `/admin/processor` shows: the simulator's own report (faults,
/// calls, ledger), and the breaker in front of it when payment runs in the
/// same process.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AdminStatus {
    /// What the processor reports.
    #[serde(flatten)]
    pub processor: Report,
    /// Payment's breaker's state (`Closed`, `Open`, …), when payment runs
    /// in the same process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker_state: Option<String>,
}

/// `GET /admin/processor` (the [`AdminStatus`]) and `PUT /admin/processor`
/// (sets the injected [`FaultSettings`], `422` for settings out of range),
/// for `simulator` and, when payment runs in the same process, its
/// `breaker`. Mount it behind the operator check: the embedded gateway and
/// the processor's own process both do.
pub fn admin<S: Clone + Send + Sync + 'static>(
    simulator: Simulator,
    breaker: Option<Breaker>,
) -> axum::Router<S> {
    axum::Router::new()
        .route(
            "/admin/processor",
            axum::routing::get(admin_status).put(set_faults),
        )
        .with_state(Admin { simulator, breaker })
}

/// What the admin routes hold.
#[derive(Clone)]
struct Admin {
    simulator: Simulator,
    breaker: Option<Breaker>,
}

async fn admin_status(State(admin): State<Admin>) -> Response {
    match admin.simulator.report().await {
        Ok(report) => axum::Json(AdminStatus {
            processor: report,
            breaker_state: admin
                .breaker
                .map(|breaker| format!("{:?}", breaker.state())),
        })
        .into_response(),
        Err(error) => crate::gateway::problem(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the ledger: {error}"),
        ),
    }
}

async fn set_faults(State(admin): State<Admin>, body: Bytes) -> Response {
    match FaultSettings::from_json(&body) {
        Ok(settings) => {
            admin.simulator.faults().apply(settings);
            tracing::warn!(?settings, "card processor faults set");
            admin_status(State(admin)).await
        }
        Err(problem) => crate::gateway::problem(StatusCode::UNPROCESSABLE_ENTITY, problem),
    }
}

/// A charge's answer, to be recorded with others ([`GroupCommit`]).
struct ChargeRecord {
    order_id: String,
    amount_cents: i64,
    /// `None` to approve, else the decline reason.
    reason: Option<String>,
}

/// Group commit of the charges' records: a round of concurrent calls
/// costs a commit, not one each. Each answers what was recorded first for
/// its order (`None` for approved, else the decline reason).
type Recording = GroupCommit<ChargeRecord, Option<String>>;

/// The simulated processor: its charges (kept in its [`ChargeStore`]) and
/// its faults.
#[derive(Debug, Clone)]
pub struct Simulator {
    charges: ChargeStore,
    recording: Arc<Recording>,
    faults: Arc<Faults>,
    calls: Arc<AtomicU64>,
}

impl Simulator {
    /// The processor keeping its charges in `charges`, with no faults.
    #[must_use]
    pub fn new(charges: ChargeStore) -> Self {
        Self {
            charges,
            recording: Arc::default(),
            faults: Arc::default(),
            calls: Arc::default(),
        }
    }

    /// The faults to inject.
    #[must_use]
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Charges seen, `UNAVAILABLE` answers included.
    #[must_use]
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Its faults, calls and ledger.
    ///
    /// # Errors
    ///
    /// The charge store's error.
    pub async fn report(&self) -> Result<Report, sqlx::Error> {
        Ok(Report {
            faults: self.faults.settings(),
            calls: self.calls(),
            ledger: self.charges.ledger().await?,
        })
    }

    /// Answers one charge.
    async fn answer(&self, request: ChargeRequest) -> Result<ChargeReply, tonic::Status> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let delay = self.faults.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if self.faults.unavailable.load(Ordering::SeqCst) {
            return Err(tonic::Status::unavailable("the card processor is down"));
        }
        if request.order_id.is_empty() || request.amount_cents <= 0 {
            return Err(tonic::Status::invalid_argument(
                "an order id and a positive amount are required",
            ));
        }
        let answer = if request.card.ends_with("0002") {
            Charge::Declined("insufficient_funds".to_owned())
        } else {
            Charge::Approved
        };
        let answer = record(
            &self.recording,
            &self.charges,
            request.order_id,
            request.amount_cents,
            answer,
        )
        .await
        .map_err(|error| {
            tracing::error!(%error, "charge not recorded");
            tonic::Status::unavailable("the card processor cannot record charges")
        })?;
        Ok(match answer {
            Charge::Approved => ChargeReply {
                approved: true,
                decline_reason: String::new(),
            },
            Charge::Declined(reason) => ChargeReply {
                approved: false,
                decline_reason: reason,
            },
        })
    }
}

#[tonic::async_trait]
impl wire::card_processor_server::CardProcessor for Simulator {
    async fn charge(
        &self,
        request: tonic::Request<ChargeRequest>,
    ) -> Result<tonic::Response<ChargeReply>, tonic::Status> {
        self.answer(request.into_inner())
            .await
            .map(tonic::Response::new)
    }
}

/// Payment's channel to the processor: trace context on every call, then
/// retries (UNAVAILABLE, with a budget, within [`CALL_DEADLINE`]), then a
/// circuit breaker (gRPC classification, slow calls counted) over a
/// per-attempt timeout ([`ATTEMPT_TIMEOUT`]), so each attempt counts, a
/// stalled processor fails each attempt in bounded time, and an open
/// breaker is never retried. Each layer is its crate's tonic preset: the
/// stack takes and gives tonic's bodies, with nothing between the layers.
pub type ProcessorChannel = palisade_tracecontext::Propagate<
    palisade_retry::Retry<
        palisade_circuit_breaker::CircuitBreakerService<
            tower::timeout::Timeout<Channel>,
            Breaker,
            palisade_circuit_breaker::GrpcStatus,
            palisade_circuit_breaker::Unavailable,
        >,
        palisade_retry::grpc::RetryUnavailable,
        palisade_retry::http::HttpReplay<palisade_retry::http::TonicBody>,
    >,
>;

/// The breaker of payment's channel, to watch.
pub type Breaker = palisade_circuit_breaker::CircuitBreaker;

/// The name payment's breaker and retries report as, and the name its
/// replicas share the breaker by.
pub const BREAKER: &str = "card-processor";

/// How long one attempt of a charge may take before it fails (and counts
/// as a failure, and a slow call, for the breaker).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a charge may take, all attempts and the waits between them.
pub const CALL_DEADLINE: Duration = Duration::from_secs(5);

/// The breaker payment uses by default: open after 10 calls with half of
/// the last 20 failing or taking a second or more (a stalled processor),
/// for 2 s (growing with repeated opens, with jitter), so a demo outage
/// shows it open and then recover.
#[must_use]
pub fn breaker_config() -> palisade_circuit_breaker::Config {
    palisade_circuit_breaker::Config::builder()
        .minimum_calls(10)
        .slow_calls(Duration::from_secs(1), 0.5)
        .open_duration(Duration::from_secs(2))
        .build()
        .unwrap_or_else(|_| unreachable!("a valid breaker config"))
}

/// Builds payment's channel to the processor at `channel`, with a breaker
/// of `config`; the breaker and the retries report to `meter` as
/// `card-processor`.
#[must_use]
pub fn stack(
    channel: Channel,
    config: palisade_circuit_breaker::Config,
    meter: &opentelemetry::metrics::Meter,
) -> (ProcessorChannel, Breaker) {
    let breaker = CircuitBreakerLayer::new_for_grpc(config).instrument(meter, BREAKER);
    let handle = breaker.breaker().clone();
    let retries = palisade_retry::Config::builder()
        .deadline(CALL_DEADLINE)
        .build()
        .unwrap_or_else(|_| unreachable!("a valid retry config"));
    let service = tower::ServiceBuilder::new()
        .layer(PropagateLayer::new())
        .layer(RetryLayer::new_for_tonic(retries).instrument(meter, BREAKER))
        .layer(breaker)
        // Under the breaker, so that an attempt cut short is recorded as
        // a failure (above it, it would count only as a slow call).
        .timeout(ATTEMPT_TIMEOUT)
        .service(channel);
    (service, handle)
}

/// Payment's client of the processor.
#[derive(Debug, Clone)]
pub struct ProcessorClient {
    client: wire::card_processor_client::CardProcessorClient<ProcessorChannel>,
}

impl ProcessorClient {
    /// A client over `channel`.
    #[must_use]
    pub fn new(channel: ProcessorChannel) -> Self {
        Self {
            client: wire::card_processor_client::CardProcessorClient::new(channel),
        }
    }

    /// Charges `amount_cents` to `card` for `order_id` (the number goes
    /// to the processor, the one party past payment that needs it).
    ///
    /// # Errors
    ///
    /// The call's status: the last attempt's once retries are spent
    /// (`UNAVAILABLE`, or `UNKNOWN` for an attempt past
    /// [`ATTEMPT_TIMEOUT`], which tonic does not know), `UNAVAILABLE` while
    /// the breaker is open, `DEADLINE_EXCEEDED` past the deadline.
    pub async fn charge(
        &self,
        order_id: &str,
        card: &CardNumber,
        amount_cents: i64,
    ) -> Result<Charge, tonic::Status> {
        let reply = self
            .client
            .clone()
            .charge(ChargeRequest {
                order_id: order_id.to_owned(),
                card: card.expose().to_owned(),
                amount_cents,
            })
            .await?
            .into_inner();
        Ok(if reply.approved {
            Charge::Approved
        } else {
            Charge::Declined(reply.decline_reason)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn a_charge_request_shows_the_last_four_digits_only() {
        let request = ChargeRequest {
            order_id: "o-1".to_owned(),
            card: GOOD_CARD.to_owned(),
            amount_cents: 1250,
        };
        let shown = format!("{request:?}");
        assert_eq!(
            shown,
            r#"ChargeRequest { order_id: "o-1", card: …4242, amount_cents: 1250 }"#
        );
    }

    /// Many concurrent charges share commits, and each order keeps the
    /// answer recorded first and is captured once, whichever call's turn
    /// recorded it: on both stores (a group's charges are written set by
    /// set, orders asked twice in one group among them).
    async fn charges_committed_together_keep_one_answer_per_order(store: ChargeStore) {
        let recording = Arc::new(Recording::default());
        let mut calls = tokio::task::JoinSet::new();
        for call in 0..200_u32 {
            let (store, recording) = (store.clone(), recording.clone());
            calls.spawn(async move {
                let order = call % 20;
                // Each order's calls disagree; the first recorded wins.
                let answer = if call % 3 == 0 {
                    Charge::Declined("insufficient_funds".to_owned())
                } else {
                    Charge::Approved
                };
                let recorded = record(&recording, &store, format!("o-{order}"), 100, answer)
                    .await
                    .unwrap();
                (order, recorded)
            });
        }
        let mut answers: HashMap<u32, Charge> = HashMap::new();
        while let Some(joined) = calls.join_next().await {
            let (order, recorded) = joined.unwrap();
            let first = answers.entry(order).or_insert_with(|| recorded.clone());
            assert_eq!(*first, recorded, "order o-{order} answered two ways");
        }
        assert_eq!(answers.len(), 20);
        let approved = answers.values().filter(|a| **a == Charge::Approved).count();
        let ledger = store.ledger().await.unwrap();
        assert_eq!(ledger.charges, u64::try_from(approved).unwrap());
        assert_eq!(ledger.charged_twice, 0);
    }

    fn pending(order_id: &str, reason: Option<&str>) -> ChargeRecord {
        ChargeRecord {
            order_id: order_id.to_owned(),
            amount_cents: 100,
            reason: reason.map(str::to_owned),
        }
    }

    /// One group, written set by set: an order asked twice in it keeps
    /// its first call's answer, and orders recorded by an earlier group
    /// (two, so the read of earlier answers lists several) keep theirs.
    #[tokio::test]
    async fn a_group_answers_repeated_and_earlier_orders_with_their_first_answer() {
        let dir = std::env::temp_dir().join(format!("palisade-charges-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let store = ChargeStore::open_sqlite(&dir).await.unwrap();
        let earlier = [
            pending("o-1", Some("insufficient_funds")),
            pending("o-2", None),
        ];
        assert_eq!(
            store.charge_all(&earlier).await.unwrap(),
            [Some("insufficient_funds".to_owned()), None]
        );
        let group = [
            pending("o-3", None),
            pending("o-1", None),
            pending("o-3", Some("insufficient_funds")),
            pending("o-2", Some("insufficient_funds")),
            pending("o-4", Some("insufficient_funds")),
        ];
        assert_eq!(
            store.charge_all(&group).await.unwrap(),
            [
                None,
                Some("insufficient_funds".to_owned()),
                None,
                None,
                Some("insufficient_funds".to_owned()),
            ]
        );
        // Captured: o-2 and o-3, once each.
        let ledger = store.ledger().await.unwrap();
        assert_eq!((ledger.charges, ledger.charged_twice), (2, 0));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_charges_committed_together_keep_one_answer_per_order_in_sqlite() {
        let dir = std::env::temp_dir().join(format!("palisade-charges-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        charges_committed_together_keep_one_answer_per_order(
            ChargeStore::open_sqlite(&dir).await.unwrap(),
        )
        .await;
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_charges_committed_together_keep_one_answer_per_order_in_postgres() {
        let schema = format!("charges_{}", fastrand::u64(..));
        let url = "postgres://postgres@127.0.0.1:5432/test";
        let store = ChargeStore::open_postgres(url, &schema).await.unwrap();
        charges_committed_together_keep_one_answer_per_order(store.clone()).await;
        store
            .execute(&format!("DROP SCHEMA {schema} CASCADE"), &[])
            .await
            .unwrap();
    }
}
