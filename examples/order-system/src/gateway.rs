//! The gateway: the HTTP API clients use, in front of the services.
//!
//! Requests go through W3C trace context (`TraceContextLayer`), then their
//! client address's token bucket, the sign-in routes through a tighter one
//! besides; signed-in routes then through the bearer check
//! ([`auth::require_bearer`]), then a token bucket per signed-in user,
//! keyed by the user the token stands for (`RateLimitLayer`s, 429 with
//! `Retry-After` beyond; see [`limits`]), then to the user's cell
//! ([`cells_router`]; one cell unless the embedded system runs several).
//!
//! - `GET`/`POST /authorize`, `POST /token`: the auth service's sign-in
//!   form and PKCE login (see [`auth`]); no token needed.
//! - `POST /orders` with an `Idempotency-Key` header and a JSON
//!   [`NewOrder`] (its card checked, then tokenized by payment's vault,
//!   [`payment::cards`](crate::payment::cards); 503 when payment cannot
//!   take it): 201 with the order, or 200 with the order first placed
//!   under that key by the same user within the key's window (see
//!   [`orders`](crate::orders)); 422 when the key was used for another
//!   order, 409 while a request with the key is being placed. Refusals on
//!   the orders routes are RFC 9457 problem details
//!   (`application/problem+json`).
//! - `GET /orders/{id}`: the order and where its saga stands; with
//!   `?wait_ms=N`, once its saga ended (or after N ms).
//! - `GET /orders`: the user's orders, newest first (`?limit=N`, at most
//!   100; `?before=ID` for the next page), from the order history, a read
//!   model a moment behind (see [`history`](crate::history)).
//! - `GET /catalog/trending`: the products by units shipped, a slow query
//!   served through `CoalesceLayer` (see [`catalog`](crate::catalog)); no
//!   token needed, and nothing a client adds reaches the cache.
//! - `GET /healthz`.
//! - `GET`/`PUT /admin/processor`: the card processor's injected faults
//!   (`{"unavailable": true, "delay_ms": 200}`), for users granted
//!   [`Role::Operator`] only. With several cells, this and the dead
//!   events' routes act on the cell named by `?cell=NAME`, or on the
//!   operator's own.
//! - `GET /admin/dead-events/{service}`, `POST
//!   /admin/dead-events/{service}/requeue`: the service's dead events,
//!   listed and put back in line ([`dead_events::admin`]), for
//!   [`Role::Operator`] only.
//!
//! On the admin listener ([`admin_router`]), loopback by default and never
//! the public address, since each reads whole tables:
//!
//! - `GET /books`: every service's books and the invariants they must keep,
//!   with the sagas pending past a threshold (`?stuck_after_ms=N`, by
//!   default [`STUCK_AFTER`]): those of the services in this process and
//!   those its peers give (see [`books`](crate::books)); with several
//!   cells, every cell's added up ([`cells_books_route`]).
//! - `GET /metrics`: the same books in the Prometheus text format (the
//!   same `?stuck_after_ms`), and the palisade crates' own OpenTelemetry
//!   metrics (breaker, retry, rate limit, relays, catalog cache).
//! - `GET /healthz`.
//!
//! An order's events continue the trace of the request that placed it.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Extension, Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use palisade_coalesce::http::{CachedResponse, CoalesceLayer, ResponseCache};
use palisade_coalesce::{Cache, Freshness};
use palisade_slo::{AtOnce, ErrorBudget, Objective, SloLayer};
use palisade_traffic::{CellRouter, Cells};

use crate::objectives::{GivenUp, Judged, Objectives, SagaRead, SagasEndInTime};
use palisade_token_bucket::{LocalStore, RateLimitLayer, key};
use palisade_tracecontext::{MIN_PROPAGATED_LEN, Propagator, TraceContextLayer};
use serde::{Deserialize, Serialize};

use crate::auth;
use crate::catalog::PRODUCTS;
use crate::db::ServiceDb;
use crate::dead_events;
use crate::identity::{Principal, Role};
use crate::inventory::Inventory;
use crate::limits::{self, Limited, Limits};
use crate::load::Gateway;
use crate::orders::{NewOrder, Orders, PlaceError, Placement};
use crate::payment::Payment;
use crate::service::{Consumers, SagaService};
use crate::shipping::Shipping;
use crate::stuck::STUCK_AFTER;

/// The services behind the gateway.
#[derive(Debug, Clone)]
pub struct Services {
    /// The crates' own metrics.
    pub telemetry: crate::telemetry::Telemetry,
    /// The card processor simulator (its faults can be set), when it runs
    /// in this process.
    pub processor: Option<crate::processor::Simulator>,
    /// The circuit breaker of payment's channel to the processor, when
    /// payment runs in this process.
    pub breaker: Option<crate::processor::Breaker>,
    /// Auth.
    pub auth: auth::Auth,
    /// The catalog.
    pub catalog: crate::catalog::Catalog,
    /// Each user's order history.
    pub history: crate::history::History,
    /// Orders.
    pub orders: Orders,
    /// The saga's other steps, when they run in this process (embedded);
    /// `None` when they run in processes of their own.
    pub steps: Option<Steps>,
    /// Where card numbers become tokens before an order is placed.
    pub cards: crate::payment::cards::Tokenizer,
    /// The consumers' counters.
    pub consumers: Consumers,
    /// The processes whose books (`GET /books`) and metrics (`GET
    /// /metrics`, on the dashboard) this one adds to its own: per process,
    /// every other one.
    pub peers: Vec<Gateway>,
}

/// The saga's steps after the order, in the gateway's process.
#[derive(Debug, Clone)]
pub struct Steps {
    /// Inventory.
    pub inventory: Inventory,
    /// Payment.
    pub payment: Payment,
    /// Shipping.
    pub shipping: Shipping,
}

impl Services {
    /// The databases of the services in this process that have an outbox,
    /// by the service's name.
    #[must_use]
    pub fn databases(&self) -> Vec<(&'static str, &ServiceDb)> {
        let mut databases = vec![(Orders::NAME, self.orders.db())];
        if let Some(steps) = &self.steps {
            databases.extend([
                (Inventory::NAME, steps.inventory.db()),
                (Payment::NAME, steps.payment.db()),
                (Shipping::NAME, steps.shipping.db()),
            ]);
        }
        databases
    }
}

/// Where the gateway keeps what its replicas share: the token buckets
/// and the catalog's cached answers.
#[derive(Debug, Clone)]
pub struct Shared<St, R> {
    /// The rate limiter's buckets and their stores (see
    /// [`limits`]).
    pub limits: Limited<St>,
    /// The cache in front of `GET /catalog/trending`.
    pub trending: R,
    /// What the gateway promises (see [`objectives`](crate::objectives)).
    pub objectives: Objectives,
}

impl Shared<LocalStore, Cache<String, CachedResponse, tower::BoxError>> {
    /// In process: for one gateway (the embedded default). The cache
    /// reports to `meter`.
    #[must_use]
    pub fn local(limits: Limits, meter: &opentelemetry::metrics::Meter) -> Self {
        let trending = Cache::new(16, Freshness::new(std::time::Duration::from_secs(5)));
        trending.instrument(meter, "trending");
        Self {
            limits: limits.stored(|_, _| LocalStore::default()),
            trending,
            objectives: Objectives::default(),
        }
    }
}

/// The admin listener's routes: `GET /books` and `GET /metrics` (reads
/// of every table, for operators and scrapers, never on the public
/// address; the peers' books added), `GET /dashboard` (the live page
/// drawn from `/metrics`, the peers' added), and `GET /healthz`.
pub fn admin_router(services: Services) -> Router {
    admin_routes(services.clone()).merge(books_route(services))
}

/// The admin listener's routes but `GET /books`: see [`admin_router`].
pub fn admin_routes(services: Services) -> Router {
    let meter = services.telemetry.meter();
    crate::metrics::observe_consumers(&meter, &services.consumers);
    let books_read = crate::metrics::observe_books(&meter);
    let dashboard = crate::dashboard::routes(services.clone(), books_read.clone());
    Router::new()
        .route(
            "/metrics",
            get(move |services, query| metrics(services, query, books_read)),
        )
        .route("/healthz", get(healthz))
        .with_state(services)
        .merge(dashboard)
}

/// `GET /books` of `services`.
pub fn books_route(services: Services) -> Router {
    Router::new()
        .route("/books", get(books))
        .with_state(services)
}

/// `GET /books` of every cell added up (`(name, services)`, the first
/// cell's names as they are, the others' outboxes and consumers as
/// `NAME/service`).
pub fn cells_books_route(cells: Vec<(String, Services)>) -> Router {
    Router::new()
        .route("/books", get(cells_books))
        .with_state(Arc::<[(String, Services)]>::from(cells))
}

async fn healthz() -> &'static str {
    "ok"
}

/// The largest sign-in form taken (`413` beyond).
const SIGN_IN_BODY: usize = 16 * 1024;

/// The gateway's routes, limiting and caching through `shared`; the rate
/// limiter and the error budgets of its
/// [`objectives`](crate::objectives) (`palisade_slo_*`) report to
/// `meter`.
///
/// # Panics
///
/// When one of `shared`'s objectives is invalid.
pub fn router<St, R>(
    services: Services,
    shared: Shared<St, R>,
    meter: &opentelemetry::metrics::Meter,
) -> Router
where
    St: palisade_token_bucket::Store,
    R: ResponseCache,
{
    cells_router(vec![("a".to_owned(), services)], shared, meter)
        .unwrap_or_else(|error| unreachable!("one cell named once: {error}"))
        .0
}

/// The gateway's routes in front of `cells` (each cell's name and
/// services), as [`router`] for one: sign-in, the catalog and health are
/// the first cell's (whose auth and catalog every cell shares); the
/// signed-in routes (`/orders…`, `/admin/…`) go to the cell of the user
/// the bearer token stands for ([`palisade_traffic::CellRouter`], by a
/// hash of the user's id), so a cell that fails touches only its own
/// users. Also returns the routing table, to read or change who goes
/// where.
///
/// # Errors
///
/// No cell, or two of one name.
///
/// # Panics
///
/// When one of `shared`'s objectives is invalid.
pub fn cells_router<St, R>(
    cells: Vec<(String, Services)>,
    shared: Shared<St, R>,
    meter: &opentelemetry::metrics::Meter,
) -> Result<(Router, Cells<Router>), palisade_traffic::CellError>
where
    St: palisade_token_bucket::Store,
    R: ResponseCache,
{
    let Some((_, front)) = cells.first() else {
        return Err(palisade_traffic::CellError::Empty);
    };
    let front = front.clone();
    let Limited {
        per_address,
        sign_in,
        per_user,
        buckets,
    } = shared.limits;
    // One budget per objective, whichever cell answers.
    let budget = |objective: &Objective, name: &str| {
        let budget = ErrorBudget::new(objective.clone())
            .unwrap_or_else(|error| panic!("the {name} objective: {error}"));
        budget.instrument(meter, name);
        budget
    };
    let objectives = &shared.objectives;
    let orders = SloLayer::new_for_http(budget(&objectives.orders, "orders"));
    let judge = SagasEndInTime {
        within: objectives.saga_within,
        judged: Judged::default(),
    };
    let sagas_budget = budget(&objectives.sagas, "sagas");
    let given_up = GivenUp::new(sagas_budget.clone(), judge.clone());
    let sagas = SloLayer::new_for_http(sagas_budget).classify(AtOnce(judge));
    // A cell's signed-in routes, behind the bearer check (the request
    // carries its `Principal`); every cell counts into the same budgets.
    let cell_routes = |services: Services| -> Router {
        Router::new()
            .route("/orders", post(place).layer(orders.clone()).get(history))
            .route("/orders/{id}", get(order).layer(sagas.clone()))
            .merge(cell_admin(&services))
            .with_state(services)
            .layer(Extension(given_up.clone()))
    };
    let names: Arc<[String]> = cells.iter().map(|(name, _)| name.clone()).collect();
    let cells = Cells::new(
        cells
            .into_iter()
            .map(|(name, services)| (name, cell_routes(services))),
    )?;
    // An operator names a cell with `?cell=NAME`: its key is pinned there.
    for name in names.iter() {
        cells.pin(chosen_key(name), name)?;
    }
    let to_cell = tower::ServiceBuilder::new()
        .map_request(for_the_cell)
        .service(CellRouter::new_for_http(
            cells.clone(),
            |request: &axum::extract::Request| {
                let extensions = request.extensions();
                match extensions.get::<ChosenCell>() {
                    Some(ChosenCell(name)) => Some(chosen_key(name)),
                    None => extensions
                        .get::<Principal>()
                        .map(|principal| principal.user.clone()),
                }
            },
        ));
    let to_chosen_cell = tower::ServiceBuilder::new()
        .layer(middleware::from_fn_with_state(names, choose_cell))
        .service(to_cell.clone());
    // Layers added later run first: the bearer check, then the user's
    // bucket (keyed by who the token stands for, never by the header),
    // then the user's cell.
    let signed_in = Router::new()
        .route_service("/orders", to_cell.clone())
        .route_service("/orders/{id}", to_cell.clone())
        .route_service("/admin/processor", to_chosen_cell.clone())
        .route_service("/admin/dead-events/{service}", to_chosen_cell.clone())
        .route_service("/admin/dead-events/{service}/requeue", to_chosen_cell)
        .route_layer(
            RateLimitLayer::new_for_http(
                per_user,
                buckets.per_user,
                key::extension(|principal: &Principal| principal.user.clone()),
            )
            .policy_name("per-user")
            .unwrap_or_else(|error| unreachable!("a policy name of ours: {error}"))
            .instrument(meter, "per-user"),
        )
        .route_layer(middleware::from_fn_with_state(
            front.auth.sessions().clone(),
            auth::require_bearer,
        ));
    let sign_in = Router::new()
        .route("/authorize", get(sign_in_form).post(authorize))
        .route("/token", post(token))
        .layer(axum::extract::DefaultBodyLimit::max(SIGN_IN_BODY))
        .route_layer(
            RateLimitLayer::new_for_http(sign_in, buckets.sign_in, limits::client_address())
                .policy_name("sign-in")
                .unwrap_or_else(|error| unreachable!("a policy name of ours: {error}"))
                .instrument(meter, "sign-in"),
        );
    // The ranking is the same for everyone: cached whole, computed once
    // per crowd; what the origin says (max-age, stale-while-revalidate)
    // decides how long. A failed flight answers 502.
    let catalog = Router::new()
        .route("/catalog/trending", get(trending))
        // On the route only: a layer on the router would wrap its 404
        // fallback too, and cache an unknown path's answer as the ranking.
        .route_layer(
            tower::ServiceBuilder::new()
                .map_request(for_the_crowd)
                .layer(CoalesceLayer::new(shared.trending).answer_failures()),
        );
    // Every request draws on its address's bucket first, before a token
    // is looked up.
    let router = Router::new()
        .route("/healthz", get(healthz))
        .merge(sign_in)
        .merge(catalog)
        .with_state(front)
        .merge(signed_in)
        .layer(
            RateLimitLayer::new_for_http(
                per_address,
                buckets.per_address,
                limits::client_address(),
            )
            .policy_name("per-address")
            .unwrap_or_else(|error| unreachable!("a policy name of ours: {error}"))
            .instrument(meter, "per-address"),
        )
        // A client's `tracestate` is cut to the specification's 512
        // characters: whole, 32 members of 512 went into every event of
        // the saga, kept in the stream for good.
        .layer(
            TraceContextLayer::new()
                .propagator(Propagator::new().tracestate_limit(MIN_PROPAGATED_LEN)),
        );
    Ok((router, cells))
}

/// A signed-in request as its cell's router takes it: with the
/// [`Principal`] the bearer check found and the trace context, and
/// nothing else the gateway's router put in (the cell's router matches
/// the path again, and the path's parameters from both would clash).
fn for_the_cell(mut request: axum::extract::Request) -> axum::extract::Request {
    let extensions = request.extensions_mut();
    let principal = extensions.remove::<Principal>();
    let trace = extensions.remove::<palisade_tracecontext::TraceContext>();
    let chosen = extensions.remove::<ChosenCell>();
    extensions.clear();
    if let Some(principal) = principal {
        extensions.insert(principal);
    }
    if let Some(trace) = trace {
        extensions.insert(trace);
    }
    if let Some(chosen) = chosen {
        extensions.insert(chosen);
    }
    request
}

/// The cell an operator's `/admin/…` request names (`?cell=NAME`).
#[derive(Debug, Clone)]
struct ChosenCell(String);

/// The routing table's key pinned to cell `name`.
fn chosen_key(name: &str) -> String {
    format!("cell:{name}")
}

/// Middleware on the operators' routes: `?cell=NAME` sends the request to
/// that cell (`404` for a cell the system does not have); without it, the
/// request goes to the operator's own cell, as every signed-in request.
async fn choose_cell(
    State(names): State<Arc<[String]>>,
    mut request: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    let chosen = request.uri().query().and_then(|query| {
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(name, _)| name == "cell")
            .map(|(_, cell)| cell.into_owned())
    });
    if let Some(cell) = chosen {
        if !names.contains(&cell) {
            return problem(
                StatusCode::NOT_FOUND,
                format!("no cell {cell:?}; the cells are {}", names.join(", ")),
            );
        }
        request.extensions_mut().insert(ChosenCell(cell));
    }
    next.run(request).await
}

/// The operators' routes over a cell's processor and dead events.
fn cell_admin(services: &Services) -> Router<Services> {
    let processor = match &services.processor {
        Some(simulator) => crate::processor::admin(simulator.clone(), services.breaker.clone()),
        None => Router::new().route("/admin/processor", any(processor_elsewhere)),
    };
    Router::new()
        .merge(processor)
        .merge(dead_events::admin())
        .route_layer(middleware::from_fn(|request, next| {
            auth::require_role(Role::Operator, request, next)
        }))
}

async fn sign_in_form(
    State(services): State<Services>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    match services.auth.sign_in_form(&query) {
        Ok(form) => form.into_response(),
        Err(error) => error.into_response(),
    }
}

/// The form's `POST`: the redirect with a code, or the form again (`401`)
/// for a wrong password.
async fn authorize(
    State(services): State<Services>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    match services.auth.authorize(&form).await {
        Ok(callback) => (
            StatusCode::FOUND,
            [(header::LOCATION, callback.to_string())],
        )
            .into_response(),
        Err(error) if error.error == "access_denied" => (
            StatusCode::UNAUTHORIZED,
            auth::form_page(&form, Some(&error.error_description)),
        )
            .into_response(),
        Err(error) => error.into_response(),
    }
}

async fn token(
    State(services): State<Services>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    match services.auth.token(&form).await {
        Ok(token) => ([(header::CACHE_CONTROL, "no-store")], Json(token)).into_response(),
        Err(error) => error.into_response(),
    }
}

/// A problem, as JSON with the status it goes with.
pub(crate) fn problem(status: StatusCode, detail: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": detail.into() }))).into_response()
}

pub(crate) fn internal(error: &dyn std::error::Error) -> Response {
    // Every request's while a store is down: one line every few seconds,
    // the rest at debug.
    palisade_hints::throttled!(error, %error, "request failed");
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "the service could not complete the request; try again",
    )
}

/// An RFC 9457 problem detail, answered as `application/problem+json`.
#[derive(Debug, Serialize)]
struct Problem {
    /// What kind of problem: a URI, `about:blank` when the status says
    /// it all.
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'static str,
    #[serde(serialize_with = "status_code")]
    status: StatusCode,
    detail: String,
    /// The `Idempotency-Key` the problem is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<String>,
}

fn status_code<S: serde::Serializer>(status: &StatusCode, to: S) -> Result<S::Ok, S::Error> {
    to.serialize_u16(status.as_u16())
}

impl Problem {
    /// A problem its status describes (`about:blank`).
    fn status(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            kind: "about:blank",
            title: status.canonical_reason().unwrap_or("Error"),
            status,
            detail: detail.into(),
            idempotency_key: None,
        }
    }

    /// `key` was used for another order (422,
    /// draft-ietf-httpapi-idempotency-key-header-07 section 2.7).
    fn key_reused(key: &str) -> Self {
        Self {
            kind: "tag:palisade.example,2026:idempotency-key-reused",
            title: "Idempotency-Key is already used",
            status: StatusCode::UNPROCESSABLE_ENTITY,
            detail: format!(
                "the Idempotency-Key {key:?} was used for a different order; \
                 a new order needs a new key"
            ),
            idempotency_key: Some(key.to_owned()),
        }
    }

    /// A request with `key` is being placed (409, the same section).
    fn key_in_progress(key: &str) -> Self {
        Self {
            kind: "tag:palisade.example,2026:idempotency-key-in-progress",
            title: "A request is outstanding for this Idempotency-Key",
            status: StatusCode::CONFLICT,
            detail: format!(
                "a request with the Idempotency-Key {key:?} is being processed; \
                 send it again once that one is answered"
            ),
            idempotency_key: Some(key.to_owned()),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        (
            self.status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            Json(self),
        )
            .into_response()
    }
}

/// The order in `body`, checked; its card read as a [`CardNumber`]
/// (12 to 19 digits passing the Luhn check; a refusal names the field
/// and never quotes the number).
///
/// [`CardNumber`]: crate::card::CardNumber
fn new_order(body: &[u8]) -> Result<NewOrder, Problem> {
    let invalid = |detail: String| Problem::status(StatusCode::UNPROCESSABLE_ENTITY, detail);
    let order: NewOrder =
        serde_json::from_slice(body).map_err(|error| invalid(format!("not an order: {error}")))?;
    if !(1..=100).contains(&order.quantity) {
        return Err(invalid("quantity must be 1 to 100".to_owned()));
    }
    if !PRODUCTS.contains(&order.sku.as_str()) {
        return Err(invalid(format!("unknown sku {:?}", order.sku)));
    }
    Ok(order)
}

/// A request's `Idempotency-Key`: a structured field string (RFC 8941,
/// `"…"` with `\"` and `\\` escaped) as the draft has it, or the bare
/// value as earlier clients send it (`"k"` and `k` are one key); 1 to 128
/// characters.
fn idempotency_key(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("idempotency-key")?.to_str().ok()?;
    let key = match value.strip_prefix('"') {
        Some(quoted) => sf_string(quoted)?,
        None => value.to_owned(),
    };
    (!key.is_empty() && key.len() <= 128).then_some(key)
}

/// An RFC 8941 string after its opening quote, unescaped; `None` unless
/// it is well formed and ends at its closing quote.
fn sf_string(quoted: &str) -> Option<String> {
    let mut string = String::with_capacity(quoted.len());
    let mut chars = quoted.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next()? {
                escaped @ ('"' | '\\') => string.push(escaped),
                _ => return None,
            },
            '"' => return chars.as_str().is_empty().then_some(string),
            ' '..='~' => string.push(c),
            _ => return None,
        }
    }
    None
}

async fn place(
    State(services): State<Services>,
    Extension(Principal { user, .. }): Extension<Principal>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Some(key) = idempotency_key(&headers) else {
        return Problem::status(
            StatusCode::BAD_REQUEST,
            "an Idempotency-Key header (a string of 1 to 128 visible characters) is required",
        )
        .into_response();
    };
    let key = key.as_str();
    let order = match new_order(&body) {
        Ok(order) => order,
        Err(problem) => return problem.into_response(),
    };
    // Past this point the order carries the vault's token, never the
    // number; nothing is stored when payment cannot take the card.
    let card = match services.cards.tokenize(&order.card).await {
        Ok(card) => card,
        Err(error) => {
            // Once an interval: every order fails this way while the
            // vault is away.
            palisade_hints::throttled!(error, %error, "card not tokenized; no order placed");
            // Not "no order was placed": a request sent again after its
            // answer was lost may have placed one, which this one could
            // not be checked against; a new key would place a second.
            return Problem::status(
                StatusCode::SERVICE_UNAVAILABLE,
                "payment could not take the card, so this request placed no order; \
                 try again with the same Idempotency-Key",
            )
            .into_response();
        }
    };
    match services
        .orders
        .place(&user, key, &order.tokenized(card))
        .await
    {
        Ok(Placement::Created(order)) => {
            tracing::debug!(order_id = %order.id, trace_id = crate::events::current_trace_id(), "order placed");
            (StatusCode::CREATED, Json(order)).into_response()
        }
        Ok(Placement::Replayed(order)) => (StatusCode::OK, Json(order)).into_response(),
        Err(PlaceError::KeyReused) => Problem::key_reused(key).into_response(),
        Err(PlaceError::InProgress) => Problem::key_in_progress(key).into_response(),
        Err(PlaceError::Database(error)) => internal(&error),
    }
}

/// `GET /orders/{id}` parameters.
#[derive(Debug, Deserialize)]
struct OrderQuery {
    /// Wait up to this many milliseconds (at most 30,000) for the saga to
    /// end before answering.
    wait_ms: Option<u64>,
}

/// `GET /orders` parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    /// The most orders to answer with (1 to 100; 20 by default).
    limit: Option<i64>,
    /// Only orders placed before this one (the next page).
    before: Option<String>,
}

/// The order `text` names (a UUID, which the orders service writes
/// lowercase with hyphens), or `None` for text that names none. Only such ids reach
/// a database: a NUL byte, which PostgreSQL refuses in text, answered 503
/// and counted against the objectives.
fn order_id(text: &str) -> Option<uuid::Uuid> {
    uuid::Uuid::try_parse(text).ok()
}

/// `GET /orders`: the signed-in user's orders, newest first, from the
/// history read model.
async fn history(
    State(services): State<Services>,
    Extension(Principal { user, .. }): Extension<Principal>,
    Query(query): Query<HistoryQuery>,
) -> Response {
    let limit = query.limit.unwrap_or(20);
    if !(1..=crate::history::MAX_PAGE).contains(&limit) {
        return problem(
            StatusCode::BAD_REQUEST,
            format!("limit must be from 1 to {}", crate::history::MAX_PAGE),
        );
    }
    let before = match query.before.as_deref().map(order_id) {
        None => None,
        Some(Some(before)) => Some(before.to_string()),
        Some(None) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "before must be an order's id, as the orders listed give it",
            );
        }
    };
    let page = services
        .history
        .of_user(&user, before.as_deref(), limit)
        .await;
    match page {
        Ok(orders) => Json(serde_json::json!({ "orders": orders })).into_response(),
        Err(error) => internal(&error),
    }
}

async fn order(
    State(services): State<Services>,
    Extension(Principal { user, .. }): Extension<Principal>,
    Extension(given_up): Extension<GivenUp>,
    Path(id): Path<String>,
    Query(query): Query<OrderQuery>,
) -> Response {
    let Some(order_id) = order_id(&id) else {
        return Problem::status(StatusCode::NOT_FOUND, format!("no order {id}")).into_response();
    };
    let known = order_id.to_string();
    let wait = std::time::Duration::from_millis(query.wait_ms.unwrap_or(0).min(30_000));
    let started = tokio::time::Instant::now();
    // A wait for a saga of the user's, seen pending, is judged should
    // its client give up on it (dropped here).
    let mut waiting = None;
    let ended = services
        .orders
        .wait_for_end_seen(&user, &known, wait, || {
            waiting = Some(given_up.waiting(order_id, started));
        })
        .await;
    if let Some(waiting) = waiting {
        waiting.answered();
    }
    match ended {
        Ok(Some(order)) => {
            let read = SagaRead {
                order: order_id,
                // As long as it waited, not as long as it asked to: a wait
                // a stopping server ended early proves no saga late.
                waited: started.elapsed(),
                took: order
                    .saga_ms
                    .map(|ms| std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0))),
            };
            let mut response = Json(order).into_response();
            if !wait.is_zero() {
                response.extensions_mut().insert(read);
            }
            response
        }
        Ok(None) => {
            Problem::status(StatusCode::NOT_FOUND, format!("no order {id}")).into_response()
        }
        Err(error) => internal(&error),
    }
}

/// `/admin/processor` when the card processor runs in a process of its
/// own.
async fn processor_elsewhere() -> Response {
    problem(
        StatusCode::NOT_FOUND,
        "the card processor runs as a service of its own: use its /admin/processor",
    )
}

async fn trending(State(services): State<Services>) -> Response {
    services.catalog.respond().await
}

/// `GET /catalog/trending` as the cache in front of it sees it: the path
/// alone, and of the headers only the conditions the cache answers for
/// each caller itself (`If-None-Match`, `If-Modified-Since`).
///
/// The route uses nothing else, and everything else would send a request
/// to the slow query on its own: another query string or `Host` is another
/// key, and `Cache-Control: no-cache`, `Pragma`, credentials, `Range` or
/// the other conditions bypass the cache. Normalised here, a client
/// cannot buy one query per request.
fn for_the_crowd(mut request: axum::extract::Request) -> axum::extract::Request {
    *request.uri_mut() = http::Uri::from_static("/catalog/trending");
    let mut kept = HeaderMap::new();
    for name in [header::IF_NONE_MATCH, header::IF_MODIFIED_SINCE] {
        for value in request.headers().get_all(&name) {
            kept.append(name.clone(), value.clone());
        }
    }
    *request.headers_mut() = kept;
    request
}

/// `GET /books` and `GET /metrics` parameters.
#[derive(Debug, Deserialize)]
struct BooksQuery {
    /// Count an order as stuck once pending for longer than this many
    /// milliseconds (by default [`STUCK_AFTER`]).
    stuck_after_ms: Option<u64>,
}

impl BooksQuery {
    fn stuck_after(&self) -> std::time::Duration {
        self.stuck_after_ms
            .map_or(STUCK_AFTER, std::time::Duration::from_millis)
    }

    async fn read(&self, services: &Services) -> crate::books::Books {
        crate::books::read_books_stuck_after(services, self.stuck_after()).await
    }
}

async fn metrics(
    State(services): State<Services>,
    Query(query): Query<BooksQuery>,
    books_read: crate::metrics::BooksSlot,
) -> Response {
    let books = query.read(&services).await;
    (
        [(header::CONTENT_TYPE, crate::telemetry::CONTENT_TYPE)],
        services.telemetry.render_with(&books_read, books).await,
    )
        .into_response()
}

async fn cells_books(
    State(cells): State<Arc<[(String, Services)]>>,
    Query(query): Query<BooksQuery>,
) -> Response {
    Json(crate::books::read_cells_books_stuck_after(&cells, query.stuck_after()).await)
        .into_response()
}

async fn books(State(services): State<Services>, Query(query): Query<BooksQuery>) -> Response {
    Json(query.read(&services).await).into_response()
}
