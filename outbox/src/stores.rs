//! The outbox and the inbox on an sqlx database, written once for every
//! database: each backend module instantiates these with its pool and
//! connection types and its [`Dialect`](crate::sql::Dialect), and adds what
//! only it has (PostgreSQL's `LISTEN`, SQLite's commit hook).

/// `query` with `event`'s columns bound, in the order of the outbox's
/// inserts.
macro_rules! bind_event {
    ($query:expr, $event:expr) => {
        $query
            .bind($event.id.to_string())
            .bind(&$event.aggregate_type)
            .bind(&$event.aggregate_id)
            .bind(&$event.event_type)
            .bind(&$event.payload)
            .bind($event.headers_json())
    };
}

/// A migration (`migrate`, given how to begin its transaction: `None`
/// for the default), tried again while it gave way on a table others were
/// using (PostgreSQL's `lock_timeout`, see `Dialect::prelude`), for up to
/// [`MIGRATION_PATIENCE`], and once more begun with `again` when the
/// database was busy (SQLite's deferred transaction cannot wait to upgrade
/// a read to a write: see `Dialect::migration_begin`).
pub(crate) async fn again_when_held<T, F, Fut>(
    table: &str,
    again: Option<&'static str>,
    migrate: F,
) -> Result<T, sqlx::Error>
where
    F: Fn(Option<&'static str>) -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(100);
    loop {
        match migrate(None).await {
            Err(error) if again.is_some() && crate::sql::is_busy(&error) => {
                return migrate(again).await;
            }
            Err(error)
                if crate::sql::is_lock_timeout(&error)
                    && started.elapsed() < MIGRATION_PATIENCE =>
            {
                tracing::warn!(
                    target: "palisade_outbox",
                    table,
                    "the migration gave way to transactions using the table; it tries again in {pause:?}"
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            migrated => return migrated,
        }
    }
}

/// How long a migration keeps trying while others hold its table.
const MIGRATION_PATIENCE: Duration = Duration::from_secs(120);

/// A transaction on `pool`, begun with `statement` (SQLite's `BEGIN
/// IMMEDIATE`, a PostgreSQL begin with a statement timeout), or the
/// database's default begin when `None`.
pub(crate) async fn begin<DB: sqlx::Database>(
    pool: &sqlx::Pool<DB>,
    statement: Option<impl Into<std::borrow::Cow<'static, str>>>,
) -> Result<sqlx::Transaction<'static, DB>, sqlx::Error> {
    match statement {
        Some(statement) => pool.begin_with(statement).await,
        None => pool.begin().await,
    }
}

/// Commits a migration that went through; rolls back one that failed,
/// before its error is returned (a dropped transaction's rollback is only
/// queued, and a second try on another connection would meet its locks).
pub(crate) async fn settle_migration<DB: sqlx::Database, T>(
    tx: sqlx::Transaction<'static, DB>,
    migrated: Result<T, sqlx::Error>,
) -> Result<T, sqlx::Error> {
    match migrated {
        Ok(done) => tx.commit().await.map(|()| done),
        Err(error) => {
            // The migration's error is the one to report.
            let _ = tx.rollback().await;
            Err(error)
        }
    }
}

/// A store's `migrate` (documented by the attributes given), with its
/// statements in `self.sql.migration`, on `self.pool`; the backend module
/// has `build_concurrently(pool, migration, late)`, given the places of
/// the indexes missing on a table that was there before.
macro_rules! migration_methods {
    ($(#[$doc:meta])*) => {
        $(#[$doc])*
        ///
        /// # Errors
        ///
        /// The database's error.
        pub async fn migrate(&self) -> Result<(), sqlx::Error> {
            let migration = &self.sql.migration;
            let late = $crate::stores::again_when_held(
                &migration.table,
                migration.begin_again,
                |begin| self.migrate_begun(begin),
            )
            .await?;
            build_concurrently(&self.pool, migration, &late);
            Ok(())
        }

        /// The migration's transaction, begun with `begin` (the database's
        /// default when `None`): the indexes left to build concurrently
        /// (their places in `migration.indexes`).
        async fn migrate_begun(
            &self,
            begin: Option<&'static str>,
        ) -> Result<Vec<usize>, sqlx::Error> {
            let migration = &self.sql.migration;
            let mut tx = $crate::stores::begin(&self.pool, begin).await?;
            let migrated = async {
                for statement in &migration.prelude {
                    sqlx::query(statement).execute(&mut *tx).await?;
                }
                let existed = match &migration.existed {
                    Some(existed) => sqlx::query_scalar(existed).fetch_one(&mut *tx).await?,
                    None => false,
                };
                for statement in &migration.tables {
                    sqlx::query(statement).execute(&mut *tx).await?;
                }
                for (has, add) in &migration.columns {
                    let has: i64 = sqlx::query_scalar(has).fetch_one(&mut *tx).await?;
                    if has == 0 {
                        sqlx::query(add).execute(&mut *tx).await?;
                    }
                }
                let mut late = Vec::new();
                for (at, index) in migration.indexes.iter().enumerate() {
                    match &index.concurrently {
                        Some(concurrently) if existed => {
                            let valid: Option<bool> = sqlx::query_scalar(&concurrently.state)
                                .fetch_optional(&mut *tx)
                                .await?;
                            if valid != Some(true) {
                                late.push(at);
                            }
                        }
                        _ => {
                            sqlx::query(&index.create).execute(&mut *tx).await?;
                        }
                    }
                }
                Ok::<_, sqlx::Error>(late)
            }
            .await;
            $crate::stores::settle_migration(tx, migrated).await
        }
    };
}

/// Defines an outbox type: `$name` over `$pool` whose transactions are
/// `$conn`s. The backend module implements `announce(&self, tx)`: have
/// relays woken (through `self.wake` or the database) once the transaction
/// commits.
macro_rules! sql_outbox {
    ($(#[$doc:meta])* $name:ident, $pool:ty, $conn:ty, $dialect:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name {
            pool: $pool,
            config: std::sync::Arc<$crate::config::OutboxConfig>,
            sql: std::sync::Arc<$crate::sql::OutboxSql>,
            wake: std::sync::Arc<tokio::sync::Notify>,
            /// Every connection of the pool wakes the relays on commit
            /// already (SQLite's `woken_by`): `enqueue` need not announce.
            hooked: bool,
            /// When a claim of this outbox (or a clone) last swept, and
            /// where.
            swept: std::sync::Arc<std::sync::Mutex<$crate::stores::Sweep>>,
        }

        impl $name {
            /// The outbox described by `config`, in the database of `pool`.
            #[must_use]
            pub fn new(pool: $pool, config: $crate::config::OutboxConfig) -> Self {
                Self {
                    sql: std::sync::Arc::new($crate::sql::OutboxSql::new($dialect, &config)),
                    pool,
                    config: std::sync::Arc::new(config),
                    wake: std::sync::Arc::new(tokio::sync::Notify::new()),
                    hooked: false,
                    swept: std::sync::Arc::default(),
                }
            }

            /// The configuration.
            #[must_use]
            pub fn config(&self) -> &$crate::config::OutboxConfig {
                &self.config
            }

            /// Frees set-aside events no longer held (`OutboxSql::sweep`),
            /// looking at up to `aggregates` aggregates from where the
            /// last sweep stopped, if a sweep is due (once per polling
            /// interval among this outbox's clones). Returns where the next
            /// is to go on from, for [`Sweep::done`] once `tx` commits.
            ///
            /// [`Sweep::done`]: $crate::stores::Sweep::done
            async fn sweep(
                &self,
                tx: &mut $conn,
                aggregates: i64,
            ) -> Result<Option<$crate::stores::SweptTo>, sqlx::Error> {
                let Some(sweep) = &self.sql.sweep else {
                    return Ok(None);
                };
                let Some(from) = $crate::stores::Sweep::due(&self.swept, self.config.poll_interval) else {
                    return Ok(None);
                };
                let (looked, last_type, last_id): (i64, Option<String>, Option<String>) =
                    sqlx::query_as(sweep)
                        .bind(from.as_ref().map_or("", |(kind, _)| kind.as_str()))
                        .bind(from.as_ref().map_or("", |(_, id)| id.as_str()))
                        .bind(if from.is_some() { i64::MAX } else { 0 })
                        .bind(aggregates)
                        .fetch_one(&mut *tx)
                        .await?;
                Ok(Some(match (last_type, last_id) {
                    (Some(kind), Some(id)) if looked >= aggregates => Some((kind, id)),
                    _ => None,
                }))
            }

            $crate::stores::migration_methods! {
                /// Creates the table and its indexes if they are missing (and
                /// in PostgreSQL the schema), in one transaction; a table made
                /// by an earlier version gains the columns and indexes it
                /// lacks.
                ///
                /// Upgrading a PostgreSQL table others use: adding a column
                /// waits on the transactions using the table, and every
                /// statement on it waits behind; the migration gives way
                /// half a second past the deadlock timeout (1.5 s by
                /// default: an autovacuum in the way is cancelled first)
                /// and tries again, for up to two minutes. The indexes the
                /// table lacks are then built in the background, after
                /// `migrate` returns, with `CREATE INDEX CONCURRENTLY`:
                /// writers go on meanwhile, and so does the start (a build
                /// waits for every older transaction in the database,
                /// which may be waiting on this process). One process
                /// builds at a time; a build that fails is logged, and
                /// made again at the next start, as is one whose process
                /// ended first (a one-shot migration job: the services'
                /// next start builds them). The builds take a session of
                /// their own (a session lock): behind a pooler in
                /// transaction mode, migrate through a direct connection.
            }

            /// Writes `event` in the caller's transaction (nothing is
            /// written outside it); relays are told once it commits.
            ///
            /// # Errors
            ///
            /// The database's error; the caller's transaction is then to
            /// be rolled back.
            pub async fn enqueue(&self, tx: &mut $conn, event: &$crate::Event) -> Result<(), sqlx::Error> {
                self.enqueue_all(tx, std::slice::from_ref(event)).await
            }

            /// Writes `events`, in order, in the caller's transaction. On
            /// SQLite one statement writes up to 500 of them (a statement
            /// is a round trip to the connection's thread); on PostgreSQL
            /// each takes its aggregate's lock, one at a time.
            ///
            /// # Errors
            ///
            /// As [`enqueue`](Self::enqueue).
            pub async fn enqueue_all(
                &self,
                tx: &mut $conn,
                events: &[$crate::Event],
            ) -> Result<(), sqlx::Error> {
                for chunk in events.chunks($crate::sql::INSERT_ROWS) {
                    // A lone event takes the one-row statement, prepared once.
                    let rows = if chunk.len() > 1 {
                        self.sql.insert_rows(chunk.len())
                    } else {
                        None
                    };
                    match rows {
                        Some(statement) => {
                            let mut query = sqlx::query(&statement);
                            for event in chunk {
                                query = $crate::stores::bind_event!(query, event);
                            }
                            query.execute(&mut *tx).await?;
                        }
                        None => {
                            for event in chunk {
                                $crate::stores::bind_event!(sqlx::query(&self.sql.insert), event)
                                    .execute(&mut *tx)
                                    .await?;
                            }
                        }
                    }
                }
                if self.hooked {
                    return Ok(());
                }
                self.announce(tx).await
            }

            /// The oldest `limit` dead events, oldest first.
            ///
            /// # Errors
            ///
            /// The database's error.
            pub async fn dead_events(&self, limit: u32) -> Result<Vec<$crate::DeadEvent>, sqlx::Error> {
                use sqlx::Row as _;
                let rows = sqlx::query(&self.sql.dead_events)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|row| {
                        let id: &str = row.try_get("id")?;
                        Ok($crate::DeadEvent {
                            id: id.parse().map_err(|error| sqlx::Error::ColumnDecode {
                                index: "id".to_owned(),
                                source: Box::new(error),
                            })?,
                            aggregate_type: row.try_get("aggregate_type")?,
                            aggregate_id: row.try_get("aggregate_id")?,
                            event_type: row.try_get("event_type")?,
                            attempts: u32::try_from(row.try_get::<i32, _>("attempts")?).unwrap_or(0),
                            last_error: row.try_get("last_error")?,
                            created_at_ms: row.try_get("created_at_ms")?,
                        })
                    })
                    .collect()
            }

            /// Puts a dead event back in line, its attempts reset; `false`
            /// if no dead event has this id.
            ///
            /// # Errors
            ///
            /// The database's error.
            pub async fn requeue(&self, id: uuid::Uuid) -> Result<bool, sqlx::Error> {
                let done = sqlx::query(&self.sql.requeue)
                    .bind(id.to_string())
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            /// Puts every dead event back in line, attempts reset; returns
            /// how many.
            ///
            /// # Errors
            ///
            /// The database's error.
            pub async fn requeue_all(&self) -> Result<u64, sqlx::Error> {
                let done = sqlx::query(&self.sql.requeue_all).execute(&self.pool).await?;
                Ok(done.rows_affected())
            }

            /// Deletes a dead event for good (an operator gave up on it),
            /// releasing the later events of its aggregate; `false` if no
            /// dead event has this id.
            ///
            /// # Errors
            ///
            /// The database's error.
            pub async fn discard(&self, id: uuid::Uuid) -> Result<bool, sqlx::Error> {
                let done = sqlx::query(&self.sql.discard)
                    .bind(id.to_string())
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() == 1)
            }
        }

        impl $crate::store::DeadEvents for $name {
            async fn dead_events(&self, limit: u32) -> Result<Vec<$crate::DeadEvent>, sqlx::Error> {
                $name::dead_events(self, limit).await
            }

            async fn requeue(&self, id: uuid::Uuid) -> Result<bool, sqlx::Error> {
                $name::requeue(self, id).await
            }

            async fn requeue_all(&self) -> Result<u64, sqlx::Error> {
                $name::requeue_all(self).await
            }

            async fn discard(&self, id: uuid::Uuid) -> Result<bool, sqlx::Error> {
                $name::discard(self, id).await
            }
        }

        impl $crate::store::OutboxStore for $name {
            async fn claim(&self) -> Result<Vec<$crate::Message>, sqlx::Error> {
                use sqlx::Row as _;
                let claim = uuid::Uuid::now_v7();
                let id = claim.to_string();
                let batch = usize::try_from(self.config.batch_size).unwrap_or(usize::MAX);
                let walk = i64::from(self.config.batch_size);
                let round = |wanted: usize, after: i64| {
                    sqlx::query(&self.sql.claim)
                        .bind(i64::try_from(wanted).unwrap_or(i64::MAX))
                        .bind($crate::stores::millis(self.config.lease))
                        .bind(&id)
                        .bind(walk)
                        .bind(after)
                };
                // The events of a round's rows; how many events it walked,
                // and the last seq.
                let take = |rows: Vec<<$pool as $crate::stores::PoolRow>::Row>,
                            messages: &mut Vec<$crate::Message>|
                 -> Result<(i64, Option<i64>), sqlx::Error> {
                    let mut walked = (0, None);
                    for row in &rows {
                        walked = (row.try_get("walked")?, row.try_get("last")?);
                        let Some(seq) = row.try_get::<Option<i64>, _>("seq")? else {
                            continue;
                        };
                        messages.push($crate::Message::from_row(
                            (seq, claim),
                            row.try_get::<&str, _>("id")?,
                            (row.try_get("aggregate_type")?, row.try_get("aggregate_id")?),
                            row.try_get("event_type")?,
                            row.try_get("payload")?,
                            row.try_get::<&str, _>("headers")?,
                            (row.try_get("created_at_ms")?, row.try_get("attempts")?),
                        ));
                    }
                    Ok(walked)
                };
                // Room as events come: an idle claim (most of them) asks
                // for none, however large the batch may be.
                let mut messages = Vec::new();
                match self.sql.claim_plan {
                    // Each round in a transaction of its own, so that what
                    // it set aside counts for every claim from then on. A
                    // round that walked as far as it may, with the batch not
                    // full, is followed by one walking on from its last
                    // event, until the batch is full or the ready events
                    // end. A claim that has events stops after a few
                    // rounds.
                    Some(plan) => {
                        use sqlx::Connection as _;
                        // One connection for every round, each round in a
                        // transaction of its own.
                        let mut connection = self.pool.acquire().await?;
                        let mut after = 0;
                        for rounds in 1.. {
                            let attempt = async {
                                let mut tx = connection.begin().await?;
                                let swept = if rounds == 1 {
                                    self.sweep(&mut *tx, $crate::stores::SWEEP_AGGREGATES).await?
                                } else {
                                    None
                                };
                                sqlx::query(plan).execute(&mut *tx).await?;
                                let rows = round(batch - messages.len(), after).fetch_all(&mut *tx).await?;
                                let mut claimed = Vec::new();
                                let walked = take(rows, &mut claimed)?;
                                tx.commit().await?;
                                if let Some(to) = swept {
                                    $crate::stores::Sweep::done(&self.swept, to);
                                }
                                Ok::<_, sqlx::Error>((claimed, walked))
                            };
                            let walked = match attempt.await {
                                Ok((claimed, walked)) => {
                                    messages.extend(claimed);
                                    walked
                                }
                                // The events claimed so far are under a
                                // lease: publish them; the next claim meets
                                // the error again.
                                Err(error) if !messages.is_empty() => {
                                    tracing::warn!(target: "palisade_outbox", %error, "a claim's later round failed");
                                    break;
                                }
                                Err(error) => return Err(error),
                            };
                            match walked {
                                (walked, Some(last))
                                    if walked >= walk
                                        && messages.len() < batch
                                        && (rounds < $crate::stores::CLAIM_ROUNDS
                                            || messages.is_empty()) =>
                                {
                                    after = last;
                                }
                                _ => break,
                            }
                        }
                    }
                    None => {
                        take(round(batch, 0).fetch_all(&self.pool).await?, &mut messages)?;
                    }
                }
                messages.sort_by_key(|message| message.seq);
                Ok(messages)
            }

            fn lease(&self) -> std::time::Duration {
                self.config.lease
            }

            async fn mark_sent(&self, sent: &[$crate::Message]) -> Result<usize, sqlx::Error> {
                let mut settled = 0;
                // One statement per claim (a relay's batch is one claim).
                for claim in $crate::stores::claims(sent) {
                    let done = sqlx::query(&self.sql.sent)
                        .bind($crate::stores::seq_list(claim))
                        .bind(claim[0].claim.to_string())
                        .execute(&self.pool)
                        .await?;
                    settled += usize::try_from(done.rows_affected()).unwrap_or(usize::MAX);
                }
                Ok(settled)
            }

            async fn release(
                &self,
                released: &[$crate::Message],
                delay: std::time::Duration,
                error: &str,
            ) -> Result<usize, sqlx::Error> {
                let mut settled = 0;
                for claim in $crate::stores::claims(released) {
                    let done = sqlx::query(&self.sql.release)
                        .bind($crate::stores::seq_list(claim))
                        .bind(claim[0].claim.to_string())
                        .bind($crate::stores::millis(delay))
                        .bind(error)
                        .execute(&self.pool)
                        .await?;
                    settled += usize::try_from(done.rows_affected()).unwrap_or(usize::MAX);
                }
                Ok(settled)
            }

            async fn mark_failed(
                &self,
                message: &$crate::Message,
                error: &str,
            ) -> Result<$crate::Failed, sqlx::Error> {
                let attempt = u32::try_from(message.attempts).unwrap_or(0);
                let dead: Option<bool> = sqlx::query_scalar(&self.sql.failed)
                    .bind(message.seq)
                    .bind(error)
                    .bind($crate::stores::millis(self.config.backoff_after(attempt)))
                    .bind(i32::try_from(self.config.max_attempts).unwrap_or(i32::MAX))
                    .bind(message.claim.to_string())
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(match dead {
                    Some(true) => $crate::Failed::Dead,
                    Some(false) => $crate::Failed::BackingOff,
                    None => $crate::Failed::Superseded,
                })
            }

            async fn clean_up(&self) -> Result<$crate::CleanUp, sqlx::Error> {
                let done = sqlx::query(&self.sql.clean_up)
                    .bind($crate::stores::millis(self.config.retention))
                    .bind(i64::from(self.config.cleanup_batch))
                    .execute(&self.pool)
                    .await?;
                let deleted = done.rows_affected();
                Ok($crate::CleanUp {
                    deleted,
                    full: deleted >= u64::from(self.config.cleanup_batch),
                })
            }

            async fn backlog(&self) -> Result<$crate::Backlog, sqlx::Error> {
                let counts: (i64, i64, Option<i64>, i64) = sqlx::query_as(&self.sql.backlog)
                    .fetch_one(&self.pool)
                    .await?;
                Ok($crate::stores::backlog(counts))
            }

            async fn wait_for_work(&self) {
                tokio::select! {
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(self.config.poll_interval) => {}
                }
            }
        }
    };
}

/// Defines an inbox type: `$name` over `$pool` whose transactions are
/// `$conn`s.
macro_rules! sql_inbox {
    ($(#[$doc:meta])* $name:ident, $db:ty, $pool:ty, $conn:ty, $dialect:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name {
            pool: $pool,
            sql: std::sync::Arc<$crate::sql::InboxSql>,
        }

        impl $name {
            /// The inbox in `table` (`name`, or `schema.name`).
            ///
            /// # Errors
            ///
            /// [`ConfigError`](crate::ConfigError) when `table` is not a
            /// plain identifier.
            pub fn new(pool: $pool, table: &str) -> Result<Self, $crate::ConfigError> {
                $crate::config::OutboxConfig::new(table)?;
                Ok(Self {
                    pool,
                    sql: std::sync::Arc::new($crate::sql::InboxSql::new($dialect, table)),
                })
            }

            $crate::stores::migration_methods! {
                /// Creates the tables and their indexes if they are missing
                /// (and in PostgreSQL the schema), in one transaction. The
                /// indexes a PostgreSQL table made by an earlier version
                /// lacks are built concurrently: see
                /// [`PgOutbox::migrate`](crate::PgOutbox::migrate).
            }

            /// Records that `consumer` processes `message_id` (an outbox
            /// event's UUID, or any CloudEvents `id`) in the caller's
            /// transaction; `true` the first time, `false` for a message
            /// already processed (skip its effect, and acknowledge it).
            ///
            /// # Errors
            ///
            /// The database's error.
            pub async fn process_once(
                &self,
                tx: &mut $conn,
                consumer: &str,
                message_id: impl std::fmt::Display,
            ) -> Result<bool, sqlx::Error> {
                let inserted = sqlx::query(&self.sql.record)
                    .bind(consumer)
                    .bind(message_id.to_string())
                    .execute(&mut *tx)
                    .await?;
                Ok(inserted.rows_affected() == 1)
            }

            /// Records that `consumer` processes each of `message_ids`, in
            /// the caller's transaction and one statement: for each id in
            /// order, `true` where it is seen for the first time (never
            /// recorded, and its first place in the list), `false` for one
            /// already processed. A batch's check costs one round trip
            /// instead of one per message.
            ///
            /// # Errors
            ///
            /// The database's error.
            pub async fn process_all<S: AsRef<str>>(
                &self,
                tx: &mut $conn,
                consumer: &str,
                message_ids: &[S],
            ) -> Result<Vec<bool>, sqlx::Error> {
                if message_ids.is_empty() {
                    return Ok(Vec::new());
                }
                let list = $crate::stores::json_list(message_ids);
                let recorded: Vec<String> = sqlx::query_scalar(&self.sql.record_all)
                    .bind(consumer)
                    .bind(list)
                    .fetch_all(&mut *tx)
                    .await?;
                Ok($crate::stores::first_times(message_ids, recorded))
            }

            /// Commits `tx`, a transaction in which messages were
            /// recorded with their effects, or fails: on PostgreSQL a
            /// statement that failed in it (its error taken for handled
            /// and not returned, say a unique violation read as "already
            /// done") aborted it, and its `COMMIT` would roll back every
            /// effect and record while answering success, so it first
            /// asks, one round trip more. Such a transaction fails with
            /// the database's `25P02` (`in_failed_sql_transaction`) and
            /// is rolled back: return a failed statement's error, or run
            /// the statement in a savepoint (a nested
            /// [`begin`](sqlx::Connection::begin)) when its failure is
            /// expected.
            ///
            /// # Errors
            ///
            /// The database's error.
            pub async fn commit(
                &self,
                mut tx: sqlx::Transaction<'static, $db>,
            ) -> Result<(), sqlx::Error> {
                if let Some(still_open) = self.sql.still_open {
                    sqlx::query(still_open).execute(&mut *tx).await?;
                }
                tx.commit().await
            }

            /// Forgets records older than `age`, at most `batch` of them;
            /// returns how many went. Counts of deliveries handed back
            /// ([`hand_back`](Self::hand_back)) that old go too, all of
            /// them. Keep `age` longer than the broker may
            /// redeliver or duplicate (JetStream: its duplicate window and
            /// the consumer's redelivery horizon): a message redelivered
            /// after its record is gone would be processed again. An age
            /// past a hundred years is taken as a hundred years.
            ///
            /// Every consumer's records go; a running consumer forgets its
            /// own only ([`forget_records_of`](Self::forget_records_of)).
            ///
            /// # Errors
            ///
            /// The database's error, for the records or for the counts
            /// (the records went then); an inbox not migrated since it
            /// had no counts forgets its records and warns.
            pub async fn forget_older_than(
                &self,
                age: std::time::Duration,
                batch: u32,
            ) -> Result<u64, sqlx::Error> {
                self.forget(None, age, batch).await
            }

            /// As [`forget_older_than`](Self::forget_older_than), for the
            /// records of `consumer` and the counts of deliveries handed
            /// back under `counted_as` only (a JetStream consumer counts
            /// them under its durable's name, which its inbox name may
            /// not be), the table's other consumers' kept as long as they
            /// keep them: what a running consumer does (see
            /// `keep_records`). Several instances of one consumer forget
            /// side by side, each taking rows the others have not.
            ///
            /// # Errors
            ///
            /// As [`forget_older_than`](Self::forget_older_than).
            pub async fn forget_records_of(
                &self,
                consumer: &str,
                counted_as: &str,
                age: std::time::Duration,
                batch: u32,
            ) -> Result<u64, sqlx::Error> {
                self.forget(Some((consumer, counted_as)), age, batch).await
            }

            /// Forgets the records (and counts) older than `age` of a
            /// consumer (its records' name, its counts'), or of every
            /// consumer.
            async fn forget(
                &self,
                consumer: Option<(&str, &str)>,
                age: std::time::Duration,
                batch: u32,
            ) -> Result<u64, sqlx::Error> {
                let millis = $crate::stores::millis(age);
                let records = match consumer {
                    Some((consumer, _)) => sqlx::query(&self.sql.forget_of)
                        .bind(millis)
                        .bind(i64::from(batch))
                        .bind(consumer),
                    None => sqlx::query(&self.sql.forget)
                        .bind(millis)
                        .bind(i64::from(batch)),
                };
                let done = records.execute(&self.pool).await?;
                // The counts of deliveries handed back, all of that age at
                // once (a few per stop); an inbox not migrated since it
                // had them forgets its records all the same.
                let counts = match consumer {
                    Some((_, counted_as)) => sqlx::query(&self.sql.forget_handed_back_of)
                        .bind(millis)
                        .bind(counted_as),
                    None => sqlx::query(&self.sql.forget_handed_back).bind(millis),
                };
                match counts.execute(&self.pool).await {
                    Ok(_) => Ok(done.rows_affected()),
                    Err(error) if $crate::stores::is_missing_table(&error) => {
                        tracing::warn!(target: "palisade_outbox", %error, "no counts of deliveries handed back to forget: the inbox is not migrated");
                        Ok(done.rows_affected())
                    }
                    Err(error) => Err(error),
                }
            }

            /// Counts one more delivery of each of `message_ids` that
            /// `consumer` handed back to the broker untried (it was
            /// stopping): the broker counts it a delivery, and a consumer
            /// that takes the broker's count for its tries subtracts it.
            ///
            /// # Errors
            ///
            /// The database's error.
            pub async fn hand_back<S: AsRef<str>>(
                &self,
                consumer: &str,
                message_ids: &[S],
            ) -> Result<(), sqlx::Error> {
                if message_ids.is_empty() {
                    return Ok(());
                }
                sqlx::query(&self.sql.hand_back)
                    .bind(consumer)
                    .bind($crate::stores::json_list(message_ids))
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            /// The deliveries of each of `message_ids` that `consumer`
            /// handed back untried ([`hand_back`](Self::hand_back)), for
            /// those it handed back.
            ///
            /// # Errors
            ///
            /// The database's error.
            pub async fn handed_back<S: AsRef<str>>(
                &self,
                consumer: &str,
                message_ids: &[S],
            ) -> Result<std::collections::HashMap<String, u64>, sqlx::Error> {
                if message_ids.is_empty() {
                    return Ok(std::collections::HashMap::new());
                }
                let rows: Vec<(String, i64)> = sqlx::query_as(&self.sql.handed_back)
                    .bind(consumer)
                    .bind($crate::stores::json_list(message_ids))
                    .fetch_all(&self.pool)
                    .await?;
                Ok(rows
                    .into_iter()
                    .map(|(id, deliveries)| (id, u64::try_from(deliveries).unwrap_or(0)))
                    .collect())
            }
        }

        impl $crate::store::InboxStore for $name {
            type Database = $db;

            async fn begin(&self) -> Result<sqlx::Transaction<'static, $db>, sqlx::Error> {
                self.pool.begin().await
            }

            async fn begin_bounded(
                &self,
                limit: std::time::Duration,
            ) -> Result<sqlx::Transaction<'static, $db>, sqlx::Error> {
                $crate::stores::begin(&self.pool, self.sql.bounded_begin(limit)).await
            }

            async fn process_all(
                &self,
                tx: &mut $conn,
                consumer: &str,
                message_ids: &[&str],
            ) -> Result<Vec<bool>, sqlx::Error> {
                $name::process_all(self, tx, consumer, message_ids).await
            }

            async fn commit(&self, tx: sqlx::Transaction<'static, $db>) -> Result<(), sqlx::Error> {
                $name::commit(self, tx).await
            }

            async fn forget_older_than(
                &self,
                age: std::time::Duration,
                batch: u32,
            ) -> Result<u64, sqlx::Error> {
                $name::forget_older_than(self, age, batch).await
            }

            async fn forget_records_of(
                &self,
                consumer: &str,
                counted_as: &str,
                age: std::time::Duration,
                batch: u32,
            ) -> Result<u64, sqlx::Error> {
                $name::forget_records_of(self, consumer, counted_as, age, batch).await
            }

            async fn hand_back(&self, consumer: &str, message_ids: &[&str]) -> Result<(), sqlx::Error> {
                $name::hand_back(self, consumer, message_ids).await
            }

            async fn handed_back(
                &self,
                consumer: &str,
                message_ids: &[&str],
            ) -> Result<std::collections::HashMap<String, u64>, sqlx::Error> {
                $name::handed_back(self, consumer, message_ids).await
            }
        }
    };
}

pub(crate) use {bind_event, migration_methods, sql_inbox, sql_outbox};

use std::fmt::Write as _;
use std::time::Duration;

use crate::event::Message;
use crate::store::Backlog;

/// The rounds after which a claim that has events stops walking (the next
/// claim walks from the start again, past what this one set aside).
pub(crate) const CLAIM_ROUNDS: usize = 8;

/// How many aggregates with events set aside one sweep looks at.
pub(crate) const SWEEP_AGGREGATES: i64 = 1_000;

/// Where a sweep goes on from: after this aggregate (type, id), or from
/// the start.
pub(crate) type SweptTo = Option<(String, String)>;

/// When an outbox last swept, and where the next sweep goes on from.
#[derive(Debug, Default)]
pub(crate) struct Sweep {
    at: Option<std::time::Instant>,
    from: SweptTo,
}

impl Sweep {
    /// Where to sweep from, if a sweep is due (none in the last
    /// `interval`); the sweep is then counted as made, wherever it stops.
    pub(crate) fn due(sweep: &std::sync::Mutex<Self>, interval: Duration) -> Option<SweptTo> {
        let mut sweep = sweep
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if sweep.at.is_some_and(|at| at.elapsed() < interval) {
            return None;
        }
        sweep.at = Some(std::time::Instant::now());
        Some(sweep.from.clone())
    }

    /// Where the next sweep goes on from, once the one that returned `to`
    /// has committed.
    pub(crate) fn done(sweep: &std::sync::Mutex<Self>, to: SweptTo) {
        sweep
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .from = to;
    }
}

/// The row type of a pool's database.
pub(crate) trait PoolRow {
    type Row: sqlx::Row;
}

impl<DB: sqlx::Database> PoolRow for sqlx::Pool<DB> {
    type Row = DB::Row;
}

/// A duration bound as milliseconds.
pub(crate) fn millis(duration: Duration) -> f64 {
    // PostgreSQL refuses an interval (or a timestamp shifted by one) past
    // a few thousand years as out of range: a retention of
    // `Duration::MAX` ("keep for good") failed every clean-up.
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 86_400);
    duration.min(CENTURY).as_secs_f64() * 1000.0
}

/// Whether the database answered `error` for a table it does not have
/// (PostgreSQL's `undefined_table`, SQLite's "no such table").
pub(crate) fn is_missing_table(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(error) => {
            error.code().as_deref() == Some("42P01") || error.message().starts_with("no such table")
        }
        _ => false,
    }
}

/// `messages` in runs of one claim each, in order.
pub(crate) fn claims(messages: &[Message]) -> impl Iterator<Item = &[Message]> {
    messages.chunk_by(|a, b| a.claim == b.claim)
}

/// The seqs of `messages`, comma-separated, as the `sent` statement takes
/// them.
pub(crate) fn seq_list(messages: &[Message]) -> String {
    let mut list = String::with_capacity(messages.len() * 8);
    for (n, message) in messages.iter().enumerate() {
        if n > 0 {
            list.push(',');
        }
        let _ = write!(list, "{}", message.seq);
    }
    list
}

/// `ids` as a JSON array of strings, as the inbox's `record_all` takes
/// them.
pub(crate) fn json_list<S: AsRef<str>>(ids: &[S]) -> String {
    serde_json::to_string(&ids.iter().map(AsRef::as_ref).collect::<Vec<_>>())
        .unwrap_or_else(|_| unreachable!("a list of strings is JSON"))
}

/// For each of `ids` in order: whether it is among `recorded` (the ids a
/// statement recorded for the first time), counting only its first place
/// in `ids`.
pub(crate) fn first_times<S: AsRef<str>>(ids: &[S], recorded: Vec<String>) -> Vec<bool> {
    let mut recorded: std::collections::HashSet<String> = recorded.into_iter().collect();
    ids.iter().map(|id| recorded.remove(id.as_ref())).collect()
}

/// The backlog statement's row.
pub(crate) fn backlog((pending, dead, oldest_ms, held): (i64, i64, Option<i64>, i64)) -> Backlog {
    Backlog {
        pending: u64::try_from(pending).unwrap_or(0),
        dead: u64::try_from(dead).unwrap_or(0),
        held: u64::try_from(held).unwrap_or(0),
        oldest_pending: oldest_ms.map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0))),
    }
}
