//! Dead events, for an operator: the events a service's outbox gave up on
//! after their last attempt, listed and put back in line.
//!
//! An event is dead once the broker rejected it on every attempt (a broker
//! that is unavailable spends none, see `palisade-outbox`); the saga it
//! carries waits, and with per-aggregate order so do the later events of
//! its order. Requeued, it is published again with its attempts reset, and
//! the saga goes on. Both run modes reach them the same way
//! ([`palisade_outbox::DeadEvents`]): through the gateway's
//! `/admin/dead-events/{service}` for the operator role ([`admin`]), or
//! with `order-system dead-events` on a data directory or a PostgreSQL
//! database ([`Location`]).
//!
//! An event the embedded system's consumer gives up on goes back to its
//! producer's outbox as rejected, where it is dead after its last attempt
//! (and listed here); a JetStream consumer that gives up publishes it to
//! its dead-letter subject and keeps no copy here. The books count each
//! give-up either way.
//!
//! # Example
//!
//! ```no_run
//! use palisade_order_system::dead_events::{self, Location, Requeue};
//!
//! # async fn example() -> Result<(), dead_events::Error> {
//! let payment = Location::Data("order-system-data".into()).open("payment").await?;
//! for event in dead_events::list(&payment, 100).await? {
//!     println!("{} {} ({})", event.id, event.event_type, event.last_error.unwrap_or_default());
//! }
//! let requeued = dead_events::requeue(&payment, Requeue::All).await?;
//! println!("{requeued} back in line");
//! # Ok(()) }
//! ```

use std::fmt;
use std::path::PathBuf;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use palisade_outbox::{DeadEvent, DeadEvents};
use serde::{Deserialize, Serialize};
use sqlx::Connection as _;

use crate::db::ServiceDb;
use crate::gateway::{Services, internal, problem};
use crate::serve::DATABASES;

/// A dead event as an operator reads it (the admin API's JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dead {
    /// The event id: what [`Requeue::One`] takes.
    pub id: String,
    /// The kind of aggregate (`order`).
    pub aggregate_type: String,
    /// Which one: the order id.
    pub aggregate_id: String,
    /// What happened (`OrderCreated`, …).
    pub event_type: String,
    /// Attempts spent.
    pub attempts: u32,
    /// Why its last attempt failed.
    pub last_error: Option<String>,
    /// When it was written, in milliseconds since the Unix epoch.
    pub created_at_ms: i64,
}

impl From<DeadEvent> for Dead {
    fn from(event: DeadEvent) -> Self {
        Self {
            id: event.id.to_string(),
            aggregate_type: event.aggregate_type,
            aggregate_id: event.aggregate_id,
            event_type: event.event_type,
            attempts: event.attempts,
            last_error: event.last_error,
            created_at_ms: event.created_at_ms,
        }
    }
}

/// Which dead events to put back in line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requeue {
    /// The one with this id.
    One(uuid::Uuid),
    /// Every one of the service's.
    All,
}

impl Requeue {
    /// An id or all of them, exactly one of the two.
    ///
    /// # Errors
    ///
    /// Both or neither, or an id that is not a UUID, said in words.
    pub fn parse(id: Option<&str>, all: bool) -> Result<Self, String> {
        match (id, all) {
            (Some(id), false) => id
                .parse()
                .map(Self::One)
                .map_err(|error| format!("{id:?} is not an event id: {error}")),
            (None, true) => Ok(Self::All),
            (Some(_), true) => Err("an id or all of them, not both".to_owned()),
            (None, false) => Err("which dead events: an id, or all of them".to_owned()),
        }
    }
}

/// Why a dead-event operation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// No service of this name has an outbox.
    UnknownService(String),
    /// The service runs in a process of its own, whose database this
    /// process does not open.
    Elsewhere(String),
    /// The service's database is not there (nothing ran there yet, or the
    /// location is wrong).
    NoDatabase(String),
    /// [`Requeue::One`]'s id is not a dead event of the service.
    NotDead(uuid::Uuid),
    /// The database failed.
    Database(sqlx::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownService(name) => {
                let names: Vec<&str> = DATABASES.iter().map(|(name, _)| *name).collect();
                write!(f, "no service {name:?}; one of {}", names.join(", "))
            }
            Self::Elsewhere(name) => write!(
                f,
                "{name} runs in a process of its own: `order-system dead-events` \
                 lists and requeues its dead events on its database"
            ),
            Self::NoDatabase(what) => write!(f, "{what}"),
            Self::NotDead(id) => write!(f, "no dead event {id}"),
            Self::Database(error) => write!(f, "database: {error}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Database(error) => Some(error),
            _ => None,
        }
    }
}

impl From<sqlx::Error> for Error {
    fn from(error: sqlx::Error) -> Self {
        Self::Database(error)
    }
}

/// The oldest `limit` dead events of `db`'s outbox, oldest first.
///
/// # Errors
///
/// The database's error.
pub async fn list(db: &ServiceDb, limit: u32) -> Result<Vec<Dead>, Error> {
    let dead = match db {
        ServiceDb::Sqlite { outbox, .. } => DeadEvents::dead_events(outbox, limit).await?,
        ServiceDb::Postgres { outbox, .. } => DeadEvents::dead_events(outbox, limit).await?,
    };
    Ok(dead.into_iter().map(Dead::from).collect())
}

/// Puts `which` of `db`'s dead events back in line, attempts reset;
/// returns how many went back.
///
/// # Errors
///
/// [`Error::NotDead`] for an id that is not a dead event there, or the
/// database's error.
pub async fn requeue(db: &ServiceDb, which: Requeue) -> Result<u64, Error> {
    match db {
        ServiceDb::Sqlite { outbox, .. } => requeue_in(outbox, which).await,
        ServiceDb::Postgres { outbox, .. } => requeue_in(outbox, which).await,
    }
}

async fn requeue_in(outbox: &impl DeadEvents, which: Requeue) -> Result<u64, Error> {
    match which {
        Requeue::One(id) if outbox.requeue(id).await? => Ok(1),
        Requeue::One(id) => Err(Error::NotDead(id)),
        Requeue::All => Ok(outbox.requeue_all().await?),
    }
}

/// Where the services' databases are, for the `dead-events` command.
/// `Debug` shows the URL without its password.
#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    /// The embedded system's data directory (`SERVICE.db` files).
    Data(PathBuf),
    /// A PostgreSQL database, the schemas as `order-system serve` names
    /// them (`NS_SERVICE` in a namespace, else `SERVICE`).
    Postgres {
        /// Its URL.
        url: String,
        /// The namespace; empty: none.
        namespace: String,
    },
}

impl fmt::Debug for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Data(dir) => f.debug_tuple("Data").field(dir).finish(),
            Self::Postgres { url, namespace } => f
                .debug_struct("Postgres")
                .field("url", &crate::db::redact_url(url))
                .field("namespace", namespace)
                .finish(),
        }
    }
}

impl Location {
    /// Opens `service`'s database here, with one connection; one that is
    /// not there is not made.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownService`], [`Error::NoDatabase`], or the database's
    /// error.
    pub async fn open(&self, service: &str) -> Result<ServiceDb, Error> {
        if !DATABASES.iter().any(|(name, _)| *name == service) {
            return Err(Error::UnknownService(service.to_owned()));
        }
        match self {
            Self::Data(dir) => {
                let file = dir.join(format!("{service}.db"));
                if !file.is_file() {
                    return Err(Error::NoDatabase(format!(
                        "no {} (--data names the embedded system's data directory)",
                        file.display()
                    )));
                }
                Ok(ServiceDb::open_sqlite(dir, service, &[]).await?)
            }
            Self::Postgres { url, namespace } => {
                let schema = crate::serve::schema(namespace, service);
                let mut connection = sqlx::PgConnection::connect(url).await?;
                let exists: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
                )
                .bind(&schema)
                .fetch_one(&mut connection)
                .await?;
                let _ = connection.close().await;
                if !exists {
                    return Err(Error::NoDatabase(format!(
                        "no schema {schema} in that database (--namespace names the system's namespace)"
                    )));
                }
                Ok(ServiceDb::open_postgres(url, &schema, &[], 1).await?)
            }
        }
    }
}

/// The gateway's routes, to be put behind the operator role:
///
/// - `GET /admin/dead-events/{service}` (`?limit=N`, 1 to 1,000, default
///   100): `{"service": …, "dead": […]}`, each a [`Dead`], oldest first;
/// - `POST /admin/dead-events/{service}/requeue` with `{"id": "…"}` or
///   `{"all": true}`: `{"service": …, "requeued": N}`; `404` for an id
///   that is not a dead event of the service, `422` for another body.
///
/// `404` for a service without an outbox.
pub fn admin() -> Router<Services> {
    Router::new()
        .route("/admin/dead-events/{service}", get(listed))
        .route("/admin/dead-events/{service}/requeue", post(requeued))
}

/// `GET /admin/dead-events/{service}` parameters.
#[derive(Debug, Deserialize)]
struct ListQuery {
    /// At most this many, oldest first.
    limit: Option<u32>,
}

/// `POST /admin/dead-events/{service}/requeue`'s body: one of the two.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequeueBody {
    /// The dead event's id.
    id: Option<String>,
    /// Every dead event of the service.
    #[serde(default)]
    all: bool,
}

/// `service`'s database, if it has one.
fn database_of<'a>(services: &'a Services, service: &str) -> Option<&'a ServiceDb> {
    services
        .databases()
        .into_iter()
        .find_map(|(name, db)| (name == service).then_some(db))
}

/// The answer for a service without a database in this process.
fn unknown(service: &str) -> Response {
    let error = if DATABASES.iter().any(|(name, _)| *name == service) {
        Error::Elsewhere(service.to_owned())
    } else {
        Error::UnknownService(service.to_owned())
    };
    problem(StatusCode::NOT_FOUND, error.to_string())
}

async fn listed(
    State(services): State<Services>,
    Path(service): Path<String>,
    Query(query): Query<ListQuery>,
) -> Response {
    let Some(db) = database_of(&services, &service) else {
        return unknown(&service);
    };
    match list(db, query.limit.unwrap_or(100).clamp(1, 1_000)).await {
        Ok(dead) => Json(serde_json::json!({ "service": service, "dead": dead })).into_response(),
        Err(error) => internal(&error),
    }
}

async fn requeued(
    State(services): State<Services>,
    Path(service): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Some(db) = database_of(&services, &service) else {
        return unknown(&service);
    };
    let which = serde_json::from_slice::<RequeueBody>(&body)
        .map_err(|error| format!("not a requeue: {error}"))
        .and_then(|body| Requeue::parse(body.id.as_deref(), body.all));
    let which = match which {
        Ok(which) => which,
        Err(problem_text) => {
            return problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("{problem_text} ({{\"id\": \"…\"}} or {{\"all\": true}})"),
            );
        }
    };
    match requeue(db, which).await {
        Ok(requeued) => {
            tracing::warn!(%service, ?which, requeued, "dead events requeued");
            Json(serde_json::json!({ "service": service, "requeued": requeued })).into_response()
        }
        Err(error @ Error::NotDead(_)) => {
            problem(StatusCode::NOT_FOUND, format!("{service}: {error}"))
        }
        Err(error) => internal(&error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_requeue_names_one_id_or_all() {
        let id = uuid::Uuid::now_v7();
        assert_eq!(
            Requeue::parse(Some(&id.to_string()), false),
            Ok(Requeue::One(id))
        );
        assert_eq!(Requeue::parse(None, true), Ok(Requeue::All));
        assert!(Requeue::parse(Some(&id.to_string()), true).is_err());
        assert!(Requeue::parse(None, false).is_err());
        assert!(
            Requeue::parse(Some("17"), false)
                .unwrap_err()
                .contains("not an event id")
        );
    }
}
