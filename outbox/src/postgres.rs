//! The outbox in PostgreSQL (feature `postgres`).

use std::sync::Arc;

use sqlx::postgres::{PgListener, PgPool};
use sqlx::{PgConnection, Row};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::config::OutboxConfig;
use crate::event::{Event, Message};
use crate::store::{Backlog, OutboxStore};

/// The outbox table in PostgreSQL.
///
/// [`enqueue`](Self::enqueue) writes events in the caller's transaction and
/// sends a `NOTIFY` that PostgreSQL delivers only if it commits. Relays claim
/// batches with `FOR UPDATE SKIP LOCKED` and a lease (`claimed_until`), so
/// several relays share one table, and a crashed relay's events are claimed
/// again when its lease runs out.
///
/// # Example
///
/// ```no_run
/// use palisade_outbox::{Event, OutboxConfig, PgOutbox};
///
/// # async fn run(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// let outbox = PgOutbox::new(pool.clone(), OutboxConfig::new("orders.outbox")?);
/// outbox.migrate().await?;
///
/// let mut tx = pool.begin().await?;
/// sqlx::query("INSERT INTO orders.orders (id, total) VALUES ($1, $2)")
///     .bind("o-17")
///     .bind(42_i64)
///     .execute(&mut *tx)
///     .await?;
/// outbox.enqueue(&mut tx, &Event::new("order", "o-17", "OrderCreated", b"{}".to_vec())).await?;
/// tx.commit().await?; // the order and its event, or neither
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PgOutbox {
    pool: PgPool,
    config: Arc<OutboxConfig>,
    sql: Arc<Sql>,
    wake: Arc<Notify>,
}

/// The statements, with the table name in them.
#[derive(Debug)]
struct Sql {
    channel: String,
    insert: String,
    claim: String,
    sent: String,
    failed: String,
    clean_up: String,
    backlog: String,
    requeue: String,
}

impl Sql {
    fn new(config: &OutboxConfig) -> Self {
        let t = &config.table;
        let order = if config.ordered {
            format!(
                "AND NOT EXISTS (SELECT 1 FROM {t} e WHERE e.aggregate_type = o.aggregate_type \
                 AND e.aggregate_id = o.aggregate_id AND e.seq < o.seq AND e.status <> 'sent')"
            )
        } else {
            String::new()
        };
        Self {
            channel: format!("palisade_outbox_{}", t.replace('.', "_")),
            insert: format!(
                "INSERT INTO {t} (id, aggregate_type, aggregate_id, event_type, payload, headers) \
                 VALUES ($1, $2, $3, $4, $5, $6)"
            ),
            claim: format!(
                "WITH due AS (SELECT o.seq FROM {t} o WHERE o.status = 'pending' \
                 AND o.next_attempt_at <= now() AND (o.claimed_until IS NULL OR o.claimed_until < now()) \
                 {order} ORDER BY o.seq LIMIT $1 FOR UPDATE SKIP LOCKED) \
                 UPDATE {t} SET claimed_until = now() + $2 * interval '1 millisecond' FROM due \
                 WHERE {t}.seq = due.seq RETURNING {t}.seq, {t}.id, {t}.aggregate_type, \
                 {t}.aggregate_id, {t}.event_type, {t}.payload, {t}.headers, \
                 (extract(epoch FROM {t}.created_at) * 1000)::bigint AS created_at_ms, {t}.attempts"
            ),
            sent: format!(
                "UPDATE {t} SET status = 'sent', sent_at = now(), claimed_until = NULL WHERE seq = ANY($1)"
            ),
            failed: format!(
                "UPDATE {t} SET attempts = attempts + 1, last_error = $2, claimed_until = NULL, \
                 next_attempt_at = now() + $3 * interval '1 millisecond', \
                 status = CASE WHEN attempts + 1 >= $4 THEN 'dead' ELSE 'pending' END \
                 WHERE seq = $1 RETURNING status = 'dead'"
            ),
            clean_up: format!(
                "DELETE FROM {t} WHERE seq IN (SELECT seq FROM {t} WHERE status = 'sent' \
                 AND sent_at < now() - $1 * interval '1 millisecond' ORDER BY seq LIMIT $2 \
                 FOR UPDATE SKIP LOCKED)"
            ),
            backlog: format!(
                "SELECT count(*) FILTER (WHERE status = 'pending'), count(*) FILTER (WHERE status = 'dead'), \
                 (extract(epoch FROM now() - min(created_at) FILTER (WHERE status = 'pending')) * 1000)::bigint \
                 FROM {t} WHERE status <> 'sent'"
            ),
            requeue: format!(
                "UPDATE {t} SET status = 'pending', attempts = 0, next_attempt_at = now(), \
                 last_error = NULL WHERE id = $1 AND status = 'dead'"
            ),
        }
    }
}

fn millis(duration: std::time::Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

impl PgOutbox {
    /// The outbox described by `config`, in the database of `pool`.
    #[must_use]
    pub fn new(pool: PgPool, config: OutboxConfig) -> Self {
        Self {
            sql: Arc::new(Sql::new(&config)),
            pool,
            config: Arc::new(config),
            wake: Arc::new(Notify::new()),
        }
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &OutboxConfig {
        &self.config
    }

    /// Creates the schema, table and indexes if they are missing.
    ///
    /// # Errors
    ///
    /// The database's error.
    pub async fn migrate(&self) -> Result<(), sqlx::Error> {
        let t = &self.config.table;
        let mut tx = self.pool.begin().await?;
        // One migration at a time, whatever the number of instances starting.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(t)
            .execute(&mut *tx)
            .await?;
        if let Some((schema, _)) = t.split_once('.') {
            sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                .execute(&mut *tx)
                .await?;
        }
        let index = t.replace('.', "_");
        for statement in [
            format!(
                "CREATE TABLE IF NOT EXISTS {t} (\
                 seq BIGSERIAL PRIMARY KEY, \
                 id TEXT NOT NULL UNIQUE, \
                 aggregate_type TEXT NOT NULL, \
                 aggregate_id TEXT NOT NULL, \
                 event_type TEXT NOT NULL, \
                 payload BYTEA NOT NULL, \
                 headers TEXT NOT NULL, \
                 created_at TIMESTAMPTZ NOT NULL DEFAULT now(), \
                 attempts INT NOT NULL DEFAULT 0, \
                 next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(), \
                 status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'dead')), \
                 last_error TEXT, \
                 claimed_until TIMESTAMPTZ, \
                 sent_at TIMESTAMPTZ)"
            ),
            format!(
                "CREATE INDEX IF NOT EXISTS {index}_unsent ON {t} (aggregate_type, aggregate_id, seq) \
                 WHERE status <> 'sent'"
            ),
            format!("CREATE INDEX IF NOT EXISTS {index}_due ON {t} (seq) WHERE status = 'pending'"),
            format!(
                "CREATE INDEX IF NOT EXISTS {index}_sent ON {t} (sent_at) WHERE status = 'sent'"
            ),
        ] {
            sqlx::query(&statement).execute(&mut *tx).await?;
        }
        tx.commit().await
    }

    /// Writes `event` in the caller's transaction (nothing is written
    /// outside it), and asks PostgreSQL to wake listening relays when it
    /// commits.
    ///
    /// # Errors
    ///
    /// The database's error; the caller's transaction is then to be
    /// rolled back.
    pub async fn enqueue(&self, tx: &mut PgConnection, event: &Event) -> Result<(), sqlx::Error> {
        self.enqueue_all(tx, std::slice::from_ref(event)).await
    }

    /// Writes `events`, in order, in the caller's transaction.
    ///
    /// # Errors
    ///
    /// As [`enqueue`](Self::enqueue).
    pub async fn enqueue_all(
        &self,
        tx: &mut PgConnection,
        events: &[Event],
    ) -> Result<(), sqlx::Error> {
        for event in events {
            sqlx::query(&self.sql.insert)
                .bind(event.id.to_string())
                .bind(&event.aggregate_type)
                .bind(&event.aggregate_id)
                .bind(&event.event_type)
                .bind(&event.payload)
                .bind(event.headers_json())
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(&self.sql.channel)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    /// Puts a dead event back in line; `false` if no dead event has this id.
    ///
    /// # Errors
    ///
    /// The database's error.
    pub async fn requeue(&self, id: Uuid) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(&self.sql.requeue)
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Starts listening for `NOTIFY` from [`enqueue`](Self::enqueue), so
    /// relays wake as soon as events commit instead of at the next poll.
    /// LISTEN needs a session: give the pool direct connections, not a
    /// PgBouncer in transaction mode.
    ///
    /// # Errors
    ///
    /// The error of the first connection; later losses reconnect.
    pub async fn listen(&self) -> Result<(), sqlx::Error> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(&self.sql.channel).await?;
        let wake = Arc::downgrade(&self.wake);
        tokio::spawn(async move {
            loop {
                let received = listener.recv().await;
                let Some(wake) = wake.upgrade() else {
                    return;
                };
                match received {
                    Ok(_) => wake.notify_one(),
                    Err(error) => {
                        tracing::warn!(target: "palisade_outbox", %error, "LISTEN failed; polling until it is back");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Ok(())
    }
}

impl OutboxStore for PgOutbox {
    async fn claim(&self) -> Result<Vec<Message>, sqlx::Error> {
        let rows = sqlx::query(&self.sql.claim)
            .bind(i64::from(self.config.batch_size))
            .bind(millis(self.config.lease))
            .fetch_all(&self.pool)
            .await?;
        let mut messages: Vec<Message> = rows
            .iter()
            .map(|row| {
                Message::from_row(
                    row.get("seq"),
                    row.get::<&str, _>("id"),
                    (row.get("aggregate_type"), row.get("aggregate_id")),
                    row.get("event_type"),
                    row.get("payload"),
                    row.get::<&str, _>("headers"),
                    (row.get("created_at_ms"), row.get("attempts")),
                )
            })
            .collect();
        messages.sort_by_key(|message| message.seq);
        Ok(messages)
    }

    async fn mark_sent(&self, sent: &[Message]) -> Result<(), sqlx::Error> {
        let seqs: Vec<i64> = sent.iter().map(|message| message.seq).collect();
        sqlx::query(&self.sql.sent)
            .bind(seqs)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn mark_failed(&self, message: &Message, error: &str) -> Result<bool, sqlx::Error> {
        let attempt = u32::try_from(message.attempts).unwrap_or(0);
        let dead: bool = sqlx::query_scalar(&self.sql.failed)
            .bind(message.seq)
            .bind(error)
            .bind(millis(self.config.backoff_after(attempt)))
            .bind(i32::try_from(self.config.max_attempts).unwrap_or(i32::MAX))
            .fetch_one(&self.pool)
            .await?;
        Ok(dead)
    }

    async fn clean_up(&self) -> Result<u64, sqlx::Error> {
        let done = sqlx::query(&self.sql.clean_up)
            .bind(millis(self.config.retention))
            .bind(i64::from(self.config.cleanup_batch))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn backlog(&self) -> Result<Backlog, sqlx::Error> {
        let (pending, dead, oldest): (i64, i64, Option<i64>) = sqlx::query_as(&self.sql.backlog)
            .fetch_one(&self.pool)
            .await?;
        Ok(Backlog {
            pending: u64::try_from(pending).unwrap_or(0),
            dead: u64::try_from(dead).unwrap_or(0),
            oldest_pending: oldest
                .map(|ms| std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0))),
        })
    }

    async fn wait_for_work(&self) {
        tokio::select! {
            () = self.wake.notified() => {}
            () = tokio::time::sleep(self.config.poll_interval) => {}
        }
    }
}
