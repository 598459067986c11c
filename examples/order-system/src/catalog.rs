//! The catalog: a deliberately slow "trending" query, served to the crowd
//! through `palisade-coalesce`.
//!
//! The query ranks the products by units shipped, reading the inventory's
//! books, and takes [`Catalog::delay`] more (300 ms by default) as a real
//! ranking query would. `GET /catalog/trending` answers with
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
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;

use crate::inventory::Inventory;

/// A product's place in the ranking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trending {
    /// The product.
    pub sku: String,
    /// Units shipped so far.
    pub shipped: i64,
}

/// The catalog service.
#[derive(Debug, Clone)]
pub struct Catalog {
    inventory: Inventory,
    delay: Duration,
    max_age: Duration,
    stale_while_revalidate: Duration,
    queries: Arc<AtomicU64>,
    /// Held by [`hold`](Self::hold): queries wait for it (fault injection:
    /// a query that hangs).
    gate: Arc<RwLock<()>>,
}

impl Catalog {
    /// The catalog over `inventory`'s books: 300 ms a query, answers fresh
    /// for 5 s and served stale for 60 s more while one request refreshes.
    #[must_use]
    pub fn new(inventory: Inventory) -> Self {
        Self {
            inventory,
            delay: Duration::from_millis(300),
            max_age: Duration::from_secs(5),
            stale_while_revalidate: Duration::from_secs(60),
            queries: Arc::default(),
            gate: Arc::default(),
        }
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
        let mut ranking: Vec<Trending> = self
            .inventory
            .stock()
            .await?
            .into_iter()
            .map(|level| Trending {
                sku: level.sku,
                shipped: level.shipped,
            })
            .collect();
        ranking.sort_by(|a, b| b.shipped.cmp(&a.shipped).then_with(|| a.sku.cmp(&b.sku)));
        Ok(ranking)
    }

    /// `GET /catalog/trending`, with its caching instructions.
    pub async fn respond(&self) -> Response {
        match self.trending().await {
            Ok(ranking) => (
                [(
                    header::CACHE_CONTROL,
                    format!(
                        "public, max-age={}, stale-while-revalidate={}",
                        self.max_age.as_secs(),
                        self.stale_while_revalidate.as_secs()
                    ),
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
