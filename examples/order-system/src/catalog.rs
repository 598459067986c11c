//! The catalog: the products ranked by units shipped, a read model of the
//! saga's events (CQRS), served to the crowd through `palisade-coalesce`.
//!
//! The ranking is a projection. The catalog consumes `ShippingScheduled`
//! into a table of its own (`trending`, in the catalog's database) and
//! reads no other service's data. It can be built again from the stream
//! ([`read_model::rebuild`](crate::read_model::rebuild), `order-system
//! rebuild-catalog`), and its lag, from an event's creation to its place in
//! the ranking, is the `palisade_read_model_lag_seconds` histogram.
//!
//! The ranking query takes [`Catalog::delay`] more (300 ms by default), as
//! a real ranking query would. `GET /catalog/trending` answers with
//! `Cache-Control: public, max-age=…, stale-while-revalidate=…`; the
//! gateway's `CoalesceLayer` runs the query once for every request that
//! arrives while it runs, and serves the stale ranking while one request
//! refreshes it, so a crowd at expiry costs one query.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use opentelemetry::metrics::Meter;
use palisade_outbox::{BoxError, Delivery};
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;

use crate::db::{Emit, Param, ServiceDb, Statements, Tx};
use crate::events::{SagaEvent, types};
use crate::read_model::{Lag, ReadModel};
use crate::service::{SagaService, not_consumed};

/// The products on sale: the catalog's own list, which the gateway
/// checks orders against. Inventory stocks each of them
/// ([`STARTING_STOCK`](crate::inventory::STARTING_STOCK)); `sku-rare`, last,
/// runs out.
pub const PRODUCTS: &[&str] = &["sku-1", "sku-2", "sku-3", "sku-4", "sku-rare"];

/// A product's place in the ranking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Trending {
    /// The product.
    pub sku: String,
    /// Units shipped so far.
    pub shipped: i64,
}

/// The catalog service.
#[derive(Debug, Clone)]
pub struct Catalog {
    db: ServiceDb,
    delay: Duration,
    max_age: Duration,
    stale_while_revalidate: Duration,
    queries: Arc<AtomicU64>,
    /// Held by [`hold`](Self::hold): queries wait for it (fault injection:
    /// a query that hangs).
    gate: Arc<RwLock<()>>,
    lag: Lag,
}

impl Catalog {
    /// The catalog in its database `db` (opened with [`TABLES`](SagaService::TABLES)):
    /// 300 ms a query, answers fresh for 5 s and served stale for 60 s
    /// more while one request refreshes.
    #[must_use]
    pub fn new(db: ServiceDb) -> Self {
        Self {
            db,
            delay: Duration::from_millis(300),
            max_age: Duration::from_secs(5),
            stale_while_revalidate: Duration::from_secs(60),
            queries: Arc::default(),
            gate: Arc::default(),
            lag: Lag::default(),
        }
    }

    /// Measures the ranking's [`Lag`] with `meter`
    /// (`read_model="catalog"`).
    #[must_use]
    pub fn instrument(mut self, meter: &Meter) -> Self {
        self.lag = Lag::instrument(meter);
        self
    }

    /// How long answers stay fresh, and how long after that they are
    /// served stale while one request refreshes them.
    #[must_use]
    pub const fn freshness(mut self, max_age: Duration, stale_while_revalidate: Duration) -> Self {
        self.max_age = max_age;
        self.stale_while_revalidate = stale_while_revalidate;
        self
    }

    /// The query's extra time.
    #[must_use]
    pub const fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Queries run so far.
    #[must_use]
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    /// Makes queries hang until the returned guard is dropped.
    pub async fn hold(&self) -> tokio::sync::OwnedRwLockWriteGuard<()> {
        self.gate.clone().write_owned().await
    }

    /// Runs the ranking query.
    ///
    /// # Errors
    ///
    /// The database's error.
    pub async fn trending(&self) -> Result<Vec<Trending>, sqlx::Error> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        let _open = self.gate.read().await;
        tokio::time::sleep(self.delay).await;
        self.db
            .fetch_all(
                "SELECT sku, shipped FROM trending ORDER BY shipped DESC, sku",
                &[],
            )
            .await
    }

    /// `GET /catalog/trending`, with its caching instructions.
    pub async fn respond(&self) -> Response {
        match self.trending().await {
            Ok(ranking) => (
                [(
                    header::CACHE_CONTROL,
                    cache_control(self.max_age, self.stale_while_revalidate),
                )],
                Json(ranking),
            )
                .into_response(),
            Err(error) => {
                tracing::error!(%error, "trending query failed");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(header::CACHE_CONTROL, "no-store")],
                )
                    .into_response()
            }
        }
    }
}

impl SagaService for Catalog {
    const NAME: &'static str = "catalog";
    const TABLES: &'static [&'static str] =
        &["CREATE TABLE IF NOT EXISTS trending (sku TEXT PRIMARY KEY, shipped BIGINT NOT NULL)"];
    const CONSUMES: &'static [&'static str] = &[types::SHIPPING_SCHEDULED];

    fn db(&self) -> &ServiceDb {
        &self.db
    }

    /// Replicas applying batches upsert the same products in any order:
    /// they take turns rather than deadlock. (After the inbox, as the
    /// rebuild locks them.)
    async fn prepare<C: Tx>(&self, tx: &mut C) -> Result<(), BoxError> {
        tx.lock_tables(&["trending"]).await?;
        Ok(())
    }

    async fn apply<T: Emit>(&self, tx: &mut T, event: SagaEvent) -> Result<(), BoxError> {
        match event {
            SagaEvent::ShippingScheduled(line) => {
                tx.execute(
                    "INSERT INTO trending (sku, shipped) VALUES ($1, $2) ON CONFLICT (sku) \
                     DO UPDATE SET shipped = trending.shipped + excluded.shipped",
                    &[Param::Text(&line.sku), Param::Int(line.quantity)],
                )
                .await?;
                Ok(())
            }
            other => Err(not_consumed(Self::NAME, &other)),
        }
    }

    fn committed(&self, delivery: &Delivery) {
        self.lag.committed(Self::NAME, delivery);
    }
}

impl ReadModel for Catalog {
    const PROJECTED: &'static [&'static str] = &["trending"];
}

/// The ranking's `Cache-Control`, in whole seconds rounded up (a
/// freshness under a second written as `max-age=0` was never cached), at
/// most 2^31 (RFC 9111's ceiling for delta-seconds).
fn cache_control(max_age: Duration, stale_while_revalidate: Duration) -> String {
    let seconds = |span: Duration| {
        span.as_secs()
            .saturating_add(u64::from(span.subsec_nanos() > 0))
            .min(1 << 31)
    };
    format!(
        "public, max-age={}, stale-while-revalidate={}",
        seconds(max_age),
        seconds(stale_while_revalidate)
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{PRODUCTS, cache_control};
    use crate::inventory::STARTING_STOCK;

    /// A freshness under a second is a second, not `max-age=0` (which the
    /// cache takes for "do not store").
    #[test]
    fn the_caching_instructions_round_up_to_whole_seconds() {
        assert_eq!(
            cache_control(Duration::from_millis(500), Duration::from_millis(1_500)),
            "public, max-age=1, stale-while-revalidate=2"
        );
        assert_eq!(
            cache_control(Duration::from_secs(5), Duration::from_secs(60)),
            "public, max-age=5, stale-while-revalidate=60"
        );
        assert_eq!(
            cache_control(Duration::MAX, Duration::MAX),
            "public, max-age=2147483648, stale-while-revalidate=2147483648"
        );
    }

    #[test]
    fn every_product_on_sale_is_stocked_and_nothing_else_is() {
        let stocked: Vec<&str> = STARTING_STOCK.iter().map(|(sku, _)| *sku).collect();
        assert_eq!(stocked, PRODUCTS);
    }
}
