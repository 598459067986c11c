//! The load command: places orders through the gateway, waits for every
//! saga to end, prints a summary and checks the books.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tower::BoxError;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use palisade_pkce::{AuthorizationUrl, CodeChallenge, CodeVerifier, State, Url};

use crate::auth::TokenResponse;
use crate::books::Books;
use crate::card::CardNumber;
use crate::catalog::PRODUCTS;
use crate::identity::{CLI_CLIENT_ID, CLI_REDIRECT_URI, Credential, Credentials, Role};
use crate::orders::{NewOrder, Order};
use crate::processor::{DECLINED_CARD, GOOD_CARD, Ledger, Report};

mod progress;

pub use progress::Progress;

/// How long a saga may take before the run counts it unfinished: long
/// enough for a service killed mid-message to be redelivered it.
pub const SAGA_DEADLINE: Duration = Duration::from_secs(120);

/// How long the books may take to settle after the last saga ended.
pub const SETTLE_DEADLINE: Duration = Duration::from_secs(60);

/// What to send.
#[derive(Debug, Clone)]
pub struct LoadSettings {
    /// The gateway's base URL, e.g. `http://127.0.0.1:8080`.
    pub gateway: String,
    /// The gateway's admin URL, where the books are read, e.g.
    /// `http://127.0.0.1:8081`.
    pub admin: String,
    /// Orders to place.
    pub orders: usize,
    /// Orders in flight at once.
    pub concurrency: usize,
    /// The share of orders paid with a card the processor declines.
    pub decline_rate: f64,
    /// How progress is shown on standard error.
    pub progress: Progress,
    /// Who signs in: each worker as one of the users granted no role
    /// (taken in turn), the outage as the first user granted
    /// [`Role::Operator`].
    pub credentials: Credentials,
    /// Makes the card processor (every cell's) unavailable for this long,
    /// once a quarter of the orders are placed (through
    /// `/admin/processor`, as an operator).
    pub processor_outage: Option<Duration>,
    /// Where the card processor's faults are set, when it runs as a
    /// service of its own (its HTTP base URL); by default through the
    /// gateway.
    pub processor_admin: Option<String>,
}

/// What happened.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Orders placed.
    pub placed: usize,
    /// Confirmed.
    pub confirmed: usize,
    /// Cancelled, by reason.
    pub cancelled: BTreeMap<String, usize>,
    /// Not finished when the run ended.
    pub unfinished: usize,
    /// Placements refused by the rate limit (429) and tried again.
    pub rate_limited: usize,
    /// Saga latencies as the client saw them (from sending the order to
    /// learning how it ended), sorted.
    pub saga: Vec<Duration>,
    /// From the first placement to the last saga's end.
    pub elapsed: Duration,
    /// The books after the run.
    pub books: Option<Books>,
    /// The card processor's ledger after the run, read through its API as
    /// the operator (`None`: no operator among the credentials).
    pub ledger: Option<Ledger>,
    /// Invariants that did not hold.
    pub violations: Vec<String>,
}

impl Summary {
    /// Sagas completed per second.
    #[must_use]
    pub fn orders_per_second(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let done = (self.placed - self.unfinished) as f64;
        done / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    /// The `p` quantile of saga latency, in milliseconds.
    #[must_use]
    pub fn saga_percentile(&self, p: f64) -> f64 {
        if self.saga.is_empty() {
            return 0.0;
        }
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let index = ((self.saga.len() - 1) as f64 * p).round() as usize;
        self.saga[index].as_secs_f64() * 1000.0
    }

    /// The summary as a table.
    #[must_use]
    pub fn table(&self) -> String {
        let mut rows: Vec<(String, String)> = vec![
            ("orders placed".into(), self.placed.to_string()),
            ("confirmed".into(), self.confirmed.to_string()),
        ];
        for (reason, count) in &self.cancelled {
            rows.push((format!("cancelled: {reason}"), count.to_string()));
        }
        rows.push(("unfinished".into(), self.unfinished.to_string()));
        rows.push((
            "429s (rate limited, retried)".into(),
            self.rate_limited.to_string(),
        ));
        if let Some(books) = &self.books {
            rows.push((
                "compensations run (all time)".into(),
                books.compensations.to_string(),
            ));
            let duplicates: u64 = books.consumers.iter().map(|c| c.2).sum();
            rows.push((
                "breaker opens (all time)".into(),
                books.breaker_opens.to_string(),
            ));
            rows.push((
                "duplicates dropped by inboxes".into(),
                duplicates.to_string(),
            ));
        }
        rows.push((
            "card charges / charged twice".into(),
            self.ledger.map_or_else(
                || "not checked (no operator)".to_owned(),
                |ledger| format!("{} / {}", ledger.charges, ledger.charged_twice),
            ),
        ));
        rows.push((
            "saga latency p50 / p95 / p99".into(),
            format!(
                "{:.1} / {:.1} / {:.1} ms",
                self.saga_percentile(0.5),
                self.saga_percentile(0.95),
                self.saga_percentile(0.99)
            ),
        ));
        rows.push((
            "orders/s end to end".into(),
            format!("{:.0}", self.orders_per_second()),
        ));
        rows.push((
            "invariants".into(),
            if self.violations.is_empty() {
                "all hold".into()
            } else {
                format!("{} violated", self.violations.len())
            },
        ));
        let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
        let mut table = String::new();
        for (name, value) in rows {
            table.push_str(&format!("{name:<width$}  {value}\n"));
        }
        for violation in &self.violations {
            table.push_str(&format!("  violated: {violation}\n"));
        }
        table
    }
}

/// An HTTP client of the gateway, signed in or not.
#[derive(Clone)]
pub struct Gateway {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    /// `Bearer <token>` once signed in.
    authorization: Option<String>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("base", &self.base)
            .field("signed_in", &self.authorization.is_some())
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// A client of the gateway at `base` (`http://host:port`).
    #[must_use]
    pub fn new(base: &str) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build(crate::net::http_connector()),
            base: base.trim_end_matches('/').to_owned(),
            authorization: None,
        }
    }

    /// A client of the gateway at `base` whose connections come from the
    /// address `local`: another client, as the gateway's limits by address
    /// see it (on loopback, any of `127.0.0.0/8`).
    #[must_use]
    pub fn from_address(base: &str, local: IpAddr) -> Self {
        let mut connector = crate::net::http_connector();
        connector.set_local_address(Some(local));
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            ..Self::new(base)
        }
    }

    /// Sends a request to `path` with `headers` (and the bearer token once
    /// signed in); the whole response.
    ///
    /// # Errors
    ///
    /// The gateway could not be reached.
    pub async fn exchange(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<http::Response<Bytes>, BoxError> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(authorization) = &self.authorization {
            request = request.header(http::header::AUTHORIZATION, authorization);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = self.client.request(request.body(Full::new(body))?).await?;
        let (parts, body) = response.into_parts();
        Ok(http::Response::from_parts(
            parts,
            body.collect().await?.to_bytes(),
        ))
    }

    /// As [`exchange`](Self::exchange), the status and body.
    ///
    /// # Errors
    ///
    /// The gateway could not be reached.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), BoxError> {
        let response = self.exchange(method, path, headers, body).await?;
        Ok((response.status(), response.into_body()))
    }

    /// `GET path` of each of `servers` at once, each given `within` to
    /// answer: each one's status and body, or why it gave none.
    pub async fn get_each(
        servers: &[Self],
        path: &'static str,
        within: Duration,
    ) -> Vec<(Self, Result<(StatusCode, Bytes), BoxError>)> {
        let mut gets = tokio::task::JoinSet::new();
        for server in servers {
            let server = server.clone();
            gets.spawn(async move {
                let got =
                    tokio::time::timeout(within, server.send(Method::GET, path, &[], Bytes::new()))
                        .await
                        .unwrap_or_else(|_| Err(format!("no answer within {within:?}").into()));
                (server, got)
            });
        }
        let mut answers = Vec::with_capacity(servers.len());
        while let Some(answer) = gets.join_next().await {
            match answer {
                Ok(answer) => answers.push(answer),
                Err(error) => tracing::warn!(%error, "a GET {path} task failed"),
            }
        }
        answers
    }

    /// The `Authorization` header value once signed in (`Bearer …`).
    #[must_use]
    pub fn authorization(&self) -> Option<&str> {
        self.authorization.as_deref()
    }

    /// This client, sending `authorization` (another client's, see
    /// [`authorization`](Self::authorization)) with every request: a
    /// token used on another server that accepts it.
    #[must_use]
    pub fn with_authorization(mut self, authorization: Option<&str>) -> Self {
        self.authorization = authorization.map(str::to_owned);
        self
    }

    /// Signs in as `credential`'s user through the sign-in form and the
    /// authorization code flow with PKCE, as a browser-less client would
    /// (the CLI client, [`CLI_CLIENT_ID`]).
    ///
    /// A `503` (the sign-in store busy) is tried again, from the start,
    /// after a short wait, and a `429` (the address's sign-in limit) after
    /// its `Retry-After`.
    ///
    /// # Errors
    ///
    /// The login was refused or the gateway could not be reached.
    pub async fn sign_in(&mut self, credential: &Credential) -> Result<(), BoxError> {
        for attempt in 0..6 {
            match self.sign_in_once(credential, attempt).await? {
                None => return Ok(()),
                Some(wait) => tokio::time::sleep(wait).await,
            }
        }
        Err(format!(
            "{} could not sign in: the gateway answered 503 or 429 six times",
            credential.name
        )
        .into())
    }

    /// One sign-in; how long to wait before the next when the gateway
    /// answered `503` or `429`.
    async fn sign_in_once(
        &mut self,
        credential: &Credential,
        attempt: u32,
    ) -> Result<Option<Duration>, BoxError> {
        let verifier = CodeVerifier::generate();
        let state = State::generate();
        let url = AuthorizationUrl::new(&format!("{}/authorize", self.base), CLI_CLIENT_ID)?
            .redirect_uri(CLI_REDIRECT_URI)
            .build(&CodeChallenge::s256(&verifier), &state);
        let form = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(url.query_pairs())
            .append_pair("username", &credential.name)
            .append_pair("password", &credential.password)
            .finish();
        let redirect = self
            .exchange(
                Method::POST,
                "/authorize",
                &[("content-type", "application/x-www-form-urlencoded")],
                Bytes::from(form),
            )
            .await?;
        if let Some(wait) = again_after(&redirect, attempt) {
            return Ok(Some(wait));
        }
        let location = redirect
            .headers()
            .get(http::header::LOCATION)
            .and_then(|value| value.to_str().ok())
            .ok_or_else(|| match redirect.status() {
                StatusCode::UNAUTHORIZED => {
                    format!(
                        "{} may not sign in: wrong user name or password",
                        credential.name
                    )
                }
                status => format!(
                    "POST /authorize: {status}: {}",
                    String::from_utf8_lossy(redirect.body())
                ),
            })?;
        let callback = Url::parse(location)?;
        let query: std::collections::HashMap<_, _> = callback.query_pairs().into_owned().collect();
        if !query
            .get("state")
            .is_some_and(|returned| state.matches(returned))
        {
            return Err("the callback's state is not ours".into());
        }
        let code = query.get("code").ok_or("no code in the callback")?;
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "authorization_code")
            .append_pair("code", code)
            .append_pair("redirect_uri", CLI_REDIRECT_URI)
            .append_pair("client_id", CLI_CLIENT_ID)
            .append_pair("code_verifier", verifier.expose_secret())
            .finish();
        let reply = self
            .exchange(
                Method::POST,
                "/token",
                &[("content-type", "application/x-www-form-urlencoded")],
                Bytes::from(form),
            )
            .await?;
        if let Some(wait) = again_after(&reply, attempt) {
            return Ok(Some(wait));
        }
        let (status, body) = (reply.status(), reply.into_body());
        if !status.is_success() {
            return Err(
                format!("POST /token: {status}: {}", String::from_utf8_lossy(&body)).into(),
            );
        }
        let token: TokenResponse = serde_json::from_slice(&body)?;
        self.authorization = Some(format!("Bearer {}", token.access_token));
        Ok(None)
    }

    /// Sends the request and returns the body of a success; anything else
    /// is an error saying what was asked and what came back.
    async fn send_ok(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Bytes, BoxError> {
        let (status, reply) = self.send(method.clone(), path, headers, body).await?;
        if !status.is_success() {
            return Err(format!(
                "{method} {path}: {status}: {}",
                String::from_utf8_lossy(&reply)
            )
            .into());
        }
        Ok(reply)
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, BoxError> {
        let body = self.send_ok(Method::GET, path, &[], Bytes::new()).await?;
        Ok(serde_json::from_slice(&body)?)
    }

    /// Turns the outage of the card processors at `paths` (see
    /// [`processor_paths`]) on or off (signed in as an operator).
    async fn set_processors_unavailable(
        &self,
        paths: &[String],
        unavailable: bool,
    ) -> Result<(), BoxError> {
        let body = Bytes::from(serde_json::to_vec(&crate::processor::FaultSettings {
            unavailable,
            delay_ms: 0,
        })?);
        for path in paths {
            self.send_ok(
                Method::PUT,
                path,
                &[("content-type", "application/json")],
                body.clone(),
            )
            .await?;
        }
        Ok(())
    }

    /// Order `id` once its saga ended, or as it stands at `deadline`.
    async fn wait_for_end(&self, id: &str, deadline: Instant) -> Result<Order, BoxError> {
        loop {
            let order: Order = self.get(&format!("/orders/{id}?wait_ms=30000")).await?;
            if order.status != "pending" || Instant::now() >= deadline {
                return Ok(order);
            }
        }
    }

    /// Places `order` under a fresh idempotency key. A 503 (the service
    /// busy) is tried again after a short wait and a 429 after its
    /// `Retry-After`, with the same key, so the gateway places it once
    /// whatever happens; `rate_limited` counts the 429s.
    async fn place(&self, order: &NewOrder, rate_limited: &AtomicUsize) -> Result<Order, BoxError> {
        let key = uuid::Uuid::now_v7().to_string();
        let body = Bytes::from(serde_json::to_vec(order)?);
        let headers = [
            ("idempotency-key", key.as_str()),
            ("content-type", "application/json"),
        ];
        for attempt in 0..10 {
            let reply = self
                .exchange(Method::POST, "/orders", &headers, body.clone())
                .await?;
            let status = reply.status();
            if status.is_success() {
                return Ok(serde_json::from_slice(reply.body())?);
            }
            if status == StatusCode::TOO_MANY_REQUESTS {
                rate_limited.fetch_add(1, Ordering::Relaxed);
            }
            let wait = again_after(&reply, attempt).unwrap_or(Duration::MAX);
            if wait == Duration::MAX || attempt == 9 {
                return Err(format!(
                    "POST /orders: {status}: {}",
                    String::from_utf8_lossy(reply.body())
                )
                .into());
            }
            tokio::time::sleep(wait).await;
        }
        unreachable!("the last attempt returns")
    }
}

/// The loopback address of the load's `worker`th client: `127.1.0.1`,
/// `127.1.0.2`, … (200 to the third byte).
fn worker_address(worker: usize) -> IpAddr {
    let [third, fourth] =
        [worker / 200, worker % 200 + 1].map(|byte| u8::try_from(byte).unwrap_or(u8::MAX));
    IpAddr::V4(Ipv4Addr::new(127, 1, third, fourth))
}

/// The longest `Retry-After` the client waits out: a server asking for
/// more is answered with its error.
const LONGEST_WAIT: Duration = Duration::from_secs(60);

/// Sign-ins a load makes at once: well within what the gateway lets wait
/// for its hashing (16 a core) on one core.
const SIGN_INS_AT_ONCE: usize = 8;

/// How long to wait before sending a request again after `reply` (the
/// `attempt`th, from 0): a `429`'s `Retry-After`, in seconds or as a date
/// (1 s without one, or with one that cannot be read), up to
/// [`LONGEST_WAIT`]; a short backoff for a `503` (the service busy);
/// `None` for any other answer, and for a wait past the longest (a huge
/// `Retry-After` slept for good).
fn again_after(reply: &http::Response<Bytes>, attempt: u32) -> Option<Duration> {
    match reply.status() {
        StatusCode::TOO_MANY_REQUESTS => {
            let asked =
                palisade_hints::http::retry_after(reply.headers(), std::time::SystemTime::now())
                    .unwrap_or(Duration::from_secs(1));
            (asked <= LONGEST_WAIT).then_some(asked)
        }
        StatusCode::SERVICE_UNAVAILABLE => Some(Duration::from_millis(50 << attempt.min(6))),
        _ => None,
    }
}

fn random_order(decline_rate: f64) -> NewOrder {
    let sku = if fastrand::f64() < 0.03 {
        "sku-rare"
    } else {
        PRODUCTS[fastrand::usize(..PRODUCTS.len() - 1)]
    };
    NewOrder {
        sku: sku.to_owned(),
        quantity: fastrand::i64(1..=3),
        card: CardNumber::parse(if fastrand::f64() < decline_rate {
            DECLINED_CARD
        } else {
            GOOD_CARD
        })
        .unwrap_or_else(|_| unreachable!("the processor's test cards are card numbers")),
    }
}

/// Places the orders, `concurrency` sagas at a time (each worker places
/// an order and waits for its saga to end before the next), then waits for
/// the outboxes to drain and reads the books.
///
/// # Errors
///
/// The gateway could not be reached or answered wrongly.
pub async fn run(settings: &LoadSettings) -> Result<Summary, BoxError> {
    let gateway = Gateway::new(&settings.gateway);
    let users: Vec<Credential> = settings
        .credentials
        .without_roles()
        .into_iter()
        .cloned()
        .collect();
    if users.is_empty() {
        return Err("the credentials name no user without a role to place orders as".into());
    }
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let rate_limited = Arc::new(AtomicUsize::new(0));
    let meter = settings.progress.start(settings.orders);
    let mut workers = tokio::task::JoinSet::new();
    // On IPv4 loopback, each worker is a client of its own address, as the
    // users of a real gateway are: the gateway limits by address too.
    let on_loopback = Url::parse(&settings.gateway)
        .is_ok_and(|url| matches!(url.host(), Some(url::Host::Ipv4(ip)) if ip.is_loopback()));
    // A few sign-ins at once: the gateway refuses a crowd of them with a
    // 503 rather than queue it behind its hashing (one a core at once).
    let signing_in = Arc::new(tokio::sync::Semaphore::new(SIGN_INS_AT_ONCE));
    for worker in 0..settings.concurrency.clamp(1, settings.orders.max(1)) {
        let mut gateway = if on_loopback {
            Gateway::from_address(&settings.gateway, worker_address(worker))
        } else {
            gateway.clone()
        };
        let (next, rate_limited) = (next.clone(), rate_limited.clone());
        let user = users[worker % users.len()].clone();
        let (total, decline_rate, meter) = (settings.orders, settings.decline_rate, meter.clone());
        let signing_in = signing_in.clone();
        workers.spawn(async move {
            // Each worker signs in once, as a user of its own (while there
            // are enough), with its own rate limit.
            let turn = signing_in
                .acquire()
                .await
                .unwrap_or_else(|_| unreachable!("the sign-ins' semaphore is never closed"));
            gateway.sign_in(&user).await?;
            drop(turn);
            let mut ended = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let sent = Instant::now();
                let order = gateway
                    .place(&random_order(decline_rate), &rate_limited)
                    .await?;
                let order = gateway
                    .wait_for_end(&order.id, sent + SAGA_DEADLINE)
                    .await?;
                ended.push((order, sent.elapsed()));
                meter.ended();
            }
            Ok::<_, BoxError>(ended)
        });
    }
    // The operator, at the processor's admin: for the outage, and to read
    // the processor's ledger at the end.
    let operator = match settings.credentials.with_role(Role::Operator) {
        Some(credential) => {
            let mut operator = gateway.clone();
            operator.sign_in(credential).await?;
            Some(match &settings.processor_admin {
                Some(url) => Gateway::new(url).with_authorization(operator.authorization()),
                None => operator,
            })
        }
        None => None,
    };
    let admin = Gateway::new(&settings.admin);
    let outage = match settings.processor_outage {
        Some(length) => {
            let operator = operator
                .clone()
                .ok_or("a processor outage needs the credentials of an operator")?;
            // Every cell's processor goes down.
            let cells = admin.get::<Books>("/books").await?.cells;
            let paths = processor_paths(&cells, settings.processor_admin.is_some());
            let (next, quarter) = (next.clone(), settings.orders / 4);
            Some(tokio::spawn(async move {
                while next.load(Ordering::Relaxed) < quarter {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                operator.set_processors_unavailable(&paths, true).await?;
                tokio::time::sleep(length).await;
                operator.set_processors_unavailable(&paths, false).await
            }))
        }
        None => None,
    };
    let mut summary = Summary::default();
    while let Some(ended) = workers.join_next().await {
        for (order, latency) in ended?? {
            summary.placed += 1;
            match order.status.as_str() {
                "confirmed" => summary.confirmed += 1,
                "cancelled" => {
                    *summary
                        .cancelled
                        .entry(order.reason.unwrap_or_default())
                        .or_default() += 1;
                }
                _ => summary.unfinished += 1,
            }
            summary.saga.push(latency);
        }
    }
    if let Some(outage) = outage {
        outage.await??;
    }
    summary.elapsed = started.elapsed();
    summary.rate_limited = rate_limited.load(Ordering::Relaxed);
    summary.saga.sort_unstable();
    meter.finish();

    // The sagas ended, but the last events may still be on their way:
    // out of an outbox, or to a second consumer (inventory ships the stock
    // of a confirmed order on the same event that confirmed it, perhaps
    // after a redelivery). The books must balance once the system is
    // quiet; what still does not after a minute is a violation.
    let deadline = Instant::now() + SETTLE_DEADLINE;
    let (books, violations) = loop {
        let books: Books = admin.get("/books").await?;
        let unsent: u64 = books.outboxes.iter().map(|(_, pending, _)| pending).sum();
        let violations = books.violations(true);
        if (unsent == 0 && violations.is_empty()) || Instant::now() > deadline {
            break (books, violations);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    summary.violations = violations;
    // No order charged twice: the processor's own ledger, through its API
    // (its data is its own); with several cells, each cell's processor's.
    if let Some(operator) = &operator {
        let mut ledger = Ledger::default();
        for path in processor_paths(&books.cells, settings.processor_admin.is_some()) {
            let cell = operator.get::<Report>(&path).await.map_err(|error| {
                format!(
                    "the card processor's ledger ({path}): {error} (on real infrastructure, \
                     --processor-admin says where its admin is)"
                )
            })?;
            ledger.charges += cell.ledger.charges;
            ledger.charged_twice += cell.ledger.charged_twice;
        }
        if ledger.charged_twice != 0 {
            summary.violations.push(format!(
                "{} orders charged twice by the card processor",
                ledger.charged_twice
            ));
        }
        summary.ledger = Some(ledger);
    }
    if summary.unfinished > 0 {
        summary.violations.push(format!(
            "{} orders of this run had not ended after {} s",
            summary.unfinished,
            SAGA_DEADLINE.as_secs()
        ));
    }
    summary.books = Some(books);
    let _ = std::io::stderr().flush();
    Ok(summary)
}
/// The card processors' admin paths on the admin listener: one per cell
/// of `cells` (the books' cells), or the one processor's when there are
/// no cells or its admin is its own (`own_admin`: `--processor-admin`, one
/// processor's, whatever the books say).
fn processor_paths(cells: &[String], own_admin: bool) -> Vec<String> {
    if cells.is_empty() || own_admin {
        return vec!["/admin/processor".to_owned()];
    }
    cells
        .iter()
        .map(|cell| format!("/admin/processor?cell={cell}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limited(retry_after: &str) -> http::Response<Bytes> {
        http::Response::builder()
            .status(StatusCode::TOO_MANY_REQUESTS)
            .header(http::header::RETRY_AFTER, retry_after)
            .body(Bytes::new())
            .unwrap()
    }

    /// A `Retry-After` is read in seconds or as a date, and one longer
    /// than the client waits ends the retries: a huge one was slept for
    /// good, and a date taken for 1 s.
    #[test]
    fn retry_after_is_read_either_way_and_bounded() {
        assert_eq!(again_after(&limited("3"), 0), Some(Duration::from_secs(3)));
        let soon = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(30));
        let wait = again_after(&limited(&soon), 0).unwrap();
        assert!(
            wait > Duration::from_secs(20) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        assert_eq!(again_after(&limited("18446744073709551615"), 0), None);
        assert_eq!(again_after(&limited("3600"), 0), None);
        assert_eq!(
            again_after(&limited("soon"), 0),
            Some(Duration::from_secs(1))
        );
    }
}
