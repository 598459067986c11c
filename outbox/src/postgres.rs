//! The outbox and the inbox in PostgreSQL (feature `postgres`).

use std::sync::{Arc, Weak};

use sqlx::PgConnection;
use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::Notify;

use crate::sql::{Dialect, Migration};
use crate::stores::{sql_inbox, sql_outbox};

sql_outbox! {
    /// The outbox table in PostgreSQL.
    ///
    /// [`enqueue`](Self::enqueue) writes events in the caller's transaction
    /// and sends a `NOTIFY` that PostgreSQL delivers only if it commits.
    /// Relays claim batches with `FOR UPDATE SKIP LOCKED` and a lease
    /// (`claimed_until`), so several relays share one table, and a crashed
    /// relay's events are claimed again when its lease runs out.
    ///
    /// Per-aggregate order is commit order: `enqueue` takes a
    /// transaction-scoped advisory lock on the event's aggregate in this
    /// table, so a second transaction writing the same aggregate to it
    /// waits for the first to commit or roll back. Two transactions that
    /// each write two aggregates in opposite orders can deadlock;
    /// PostgreSQL then aborts one of them. Outboxes of other tables (other
    /// services' in the same database) take locks of their own.
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
    PgOutbox, PgPool, PgConnection, Dialect::Postgres
}

sql_inbox! {
    /// Remembers which messages each consumer has processed, in the
    /// consumer's own PostgreSQL database.
    ///
    /// A broker delivers at least once: after a redelivery, or a duplicate
    /// the broker's window did not catch, a consumer sees a message again.
    /// [`process_once`](Self::process_once) records the message in the same
    /// transaction as its effect, so the effect and the record commit or
    /// roll back together, and the second delivery finds the record and
    /// does nothing.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use palisade_outbox::PgInbox;
    ///
    /// # async fn run(pool: sqlx::PgPool, message_id: uuid::Uuid) -> Result<(), Box<dyn std::error::Error>> {
    /// let inbox = PgInbox::new(pool.clone(), "inventory.inbox")?;
    /// inbox.migrate().await?;
    /// let mut tx = pool.begin().await?;
    /// if inbox.process_once(&mut tx, "reserve-stock", message_id).await? {
    ///     // ... apply the effect in `tx` ...
    /// }
    /// tx.commit().await?; // then acknowledge the message
    /// # Ok(()) }
    /// ```
    PgInbox, sqlx::Postgres, PgPool, PgConnection, Dialect::Postgres
}

impl PgOutbox {
    /// Nothing to add: the insert itself has PostgreSQL wake the listening
    /// relays once the transaction commits (a `pg_notify` in the same
    /// statement, so enqueueing costs one round trip, not two).
    #[allow(clippy::unused_async)]
    async fn announce(&self, _: &mut PgConnection) -> Result<(), sqlx::Error> {
        Ok(())
    }

    /// Starts listening for `NOTIFY` from [`enqueue`](Self::enqueue), so
    /// relays wake as soon as events commit instead of at the next poll.
    /// LISTEN needs a session: give the pool direct connections, not a
    /// PgBouncer in transaction mode.
    ///
    /// It ends, giving its connection back (or closing it), when the
    /// outbox and its clones are dropped or its pool closed (within a
    /// second).
    ///
    /// # Errors
    ///
    /// The error of the first connection; later losses reconnect.
    pub async fn listen(&self) -> Result<(), sqlx::Error> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(&self.config.notify_channel()).await?;
        let wake = Arc::downgrade(&self.wake);
        let pool = self.pool.clone();
        tokio::spawn(async move {
            loop {
                let received = tokio::select! {
                    received = listener.recv() => received,
                    // Looked for, not only found at the next NOTIFY (which
                    // may never come): the outbox dropped, or its pool
                    // closed (the listener's own close event is missed
                    // when the pool closes just as its wait begins).
                    () = unneeded(&pool, &wake) => return,
                };
                let Some(wake) = wake.upgrade() else {
                    return;
                };
                match received {
                    Ok(_) => wake.notify_one(),
                    Err(sqlx::Error::PoolClosed) => return,
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

/// Completes once `pool` is closed or the outbox `wake` belongs to is
/// dropped, looking every second.
async fn unneeded(pool: &PgPool, wake: &Weak<Notify>) {
    while !pool.is_closed() && wake.strong_count() > 0 {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// Builds in the background the indexes (`late`, their places in
/// `migration.indexes`) that a table made by an earlier version lacks, or
/// holds invalid (a build cut off), without holding up its writers: see
/// [`build_late`].
fn build_concurrently(pool: &PgPool, migration: &Arc<Migration>, late: &[usize]) {
    if late.is_empty() {
        return;
    }
    let (pool, migration, late) = (pool.clone(), Arc::clone(migration), late.to_vec());
    tokio::spawn(async move {
        let table = &migration.table;
        match build_late(&pool, &migration, &late).await {
            Ok(()) => {}
            Err(error) => tracing::warn!(
                target: "palisade_outbox",
                table,
                %error,
                "building the indexes the table lacks failed; the next start builds them"
            ),
        }
    });
}

/// Drops an invalid index (`drop`), giving way after a second spent
/// waiting on its table: someone's build of it holds the table.
async fn drop_invalid(session: &mut PgConnection, drop: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT set_config('lock_timeout', '1s', false)")
        .execute(&mut *session)
        .await?;
    let dropped = sqlx::query(drop).execute(&mut *session).await.map(|_| ());
    sqlx::query("SELECT set_config('lock_timeout', '0', false)")
        .execute(&mut *session)
        .await?;
    dropped
}

/// `CREATE INDEX CONCURRENTLY`, one index at a time, on a session of its
/// own that no timeout of the pool's cuts short. One process builds at a
/// time: it holds a session lock the others only try for, so a process
/// starting meanwhile leaves the builds to it. An invalid index that is
/// being built (by someone else: an operator's own build) is left to that
/// build; one that is not is dropped and built again. The session is
/// closed afterwards, and its lock with it, whatever happened; dropped
/// mid-build (its runtime stopping), the server finishes the build on its
/// own.
async fn build_late(
    pool: &PgPool,
    migration: &Migration,
    late: &[usize],
) -> Result<(), sqlx::Error> {
    let table = &migration.table;
    let mut session = pool.acquire().await?.detach();
    let built = async {
        sqlx::query(
            "SELECT set_config('statement_timeout', '0', false), \
             set_config('lock_timeout', '0', false)",
        )
        .execute(&mut session)
        .await?;
        let builder: bool = sqlx::query_scalar(
            "SELECT pg_try_advisory_lock(hashtext('palisade_outbox_build:' || $1))",
        )
        .bind(table)
        .fetch_one(&mut session)
        .await?;
        if !builder {
            tracing::info!(
                target: "palisade_outbox",
                table,
                "another process builds the indexes the table lacks"
            );
            return Ok(());
        }
        for index in late.iter().filter_map(|&at| migration.indexes.get(at)?.concurrently.as_ref()) {
            let valid: Option<bool> = sqlx::query_scalar(&index.state)
                .fetch_optional(&mut session)
                .await?;
            match valid {
                Some(true) => continue,
                Some(false) => {
                    let building: bool = sqlx::query_scalar(&index.building)
                        .fetch_one(&mut session)
                        .await?;
                    // A build under another role does not show to this
                    // one without `pg_read_all_stats`: a drop that waits
                    // on the table (a build holds it) gives way too.
                    let dropped = if building {
                        false
                    } else {
                        match drop_invalid(&mut session, &index.drop).await {
                            Err(error) if crate::sql::is_lock_timeout(&error) => false,
                            dropped => dropped.map(|()| true)?,
                        }
                    };
                    if !dropped {
                        tracing::info!(
                            target: "palisade_outbox",
                            table,
                            index = %index.name,
                            "an index the table lacks is being built already; it is left to that build"
                        );
                        continue;
                    }
                }
                None => {}
            }
            tracing::info!(
                target: "palisade_outbox",
                table,
                index = %index.name,
                "building an index the table lacks, concurrently: writers go on meanwhile"
            );
            sqlx::query(&index.build).execute(&mut session).await?;
            tracing::info!(target: "palisade_outbox", table, index = %index.name, "index built");
        }
        Ok(())
    }
    .await;
    let _ = sqlx::Connection::close(session).await;
    built
}

#[cfg(test)]
mod tests {
    use sqlx::Row;
    use sqlx::postgres::PgRow;

    use crate::{Event, OutboxConfig, PgOutbox};

    /// An outbox of its own on the local server, in a schema `drop`
    /// removes.
    struct Fixture {
        pool: sqlx::PgPool,
        schema: String,
        outbox: PgOutbox,
    }

    impl Fixture {
        async fn new(name: &str, configure: impl FnOnce(OutboxConfig) -> OutboxConfig) -> Self {
            let pool = sqlx::PgPool::connect(&palisade_testkit::servers::database_url())
                .await
                .expect("a reachable PostgreSQL (run scripts/services)");
            let schema = format!("outbox_{name}_{}", fastrand::u64(..));
            let config = OutboxConfig::new(&format!("{schema}.outbox")).unwrap();
            let outbox = PgOutbox::new(pool.clone(), configure(config));
            outbox.migrate().await.unwrap();
            Self {
                pool,
                schema,
                outbox,
            }
        }

        /// Commits `events` events, one after another over `aggregates`
        /// aggregates.
        async fn enqueue_over(&self, events: u32, aggregates: u32) {
            let events: Vec<Event> = (0..events)
                .map(|n| {
                    Event::new(
                        "order",
                        format!("o-{}", n % aggregates),
                        "Placed",
                        b"{}".to_vec(),
                    )
                })
                .collect();
            let mut tx = self.pool.begin().await.unwrap();
            self.outbox.enqueue_all(&mut tx, &events).await.unwrap();
            tx.commit().await.unwrap();
        }

        async fn drop(self) {
            sqlx::query(&format!("DROP SCHEMA {} CASCADE", self.schema))
                .execute(&self.pool)
                .await
                .unwrap();
        }
    }

    /// The lines of an `EXPLAIN`'s answer, as one text.
    fn plan(explained: &[PgRow]) -> String {
        let lines: Vec<String> = explained.iter().map(|row| row.get(0)).collect();
        lines.join("\n")
    }

    /// The outbox's pages are kept half empty, set once: a later start
    /// leaves the table's catalog row alone (altering it on every start
    /// would make every session re-plan its statements on the table).
    #[tokio::test]
    async fn migrate_sets_the_fillfactor_once() {
        let fixture = Fixture::new("fill", |config| config).await;
        let table = format!("{}.outbox", fixture.schema);
        let catalog_row = || {
            sqlx::query_as::<_, (String, Vec<String>)>(
                "SELECT xmin::text, reloptions FROM pg_class WHERE oid = $1::regclass",
            )
            .bind(&table)
            .fetch_one(&fixture.pool)
        };
        let (version, options) = catalog_row().await.unwrap();
        assert_eq!(options, ["fillfactor=50"]);
        fixture.outbox.migrate().await.unwrap();
        assert_eq!(catalog_row().await.unwrap().0, version, "altered again");
        fixture.drop().await;
    }

    /// The backlog is counted in passes over the unsent events, never an
    /// index probe per pending event: the count of events held behind a
    /// dead one used to look for a dead predecessor of each pending event
    /// (a correlated subplan), 520 ms over 50,000 pending events against
    /// 30 ms, and a dashboard reads the backlog every second.
    #[tokio::test]
    async fn the_backlog_is_counted_without_a_probe_per_event() {
        let fixture = Fixture::new("backlog", |config| config).await;
        let explained = sqlx::query(&format!("EXPLAIN {}", fixture.outbox.sql.backlog))
            .fetch_all(&fixture.pool)
            .await
            .unwrap();
        let plan = plan(&explained);
        assert!(!plan.contains("SubPlan"), "{plan}");
        fixture.drop().await;
    }

    /// `EXPLAIN` of one claim round over `outbox`, under the claim's
    /// planner settings (`ANALYZE`d inside a transaction rolled back).
    async fn explain_claim(fixture: &Fixture, analyze: bool) -> String {
        let mut tx = fixture.pool.begin().await.unwrap();
        let settings = fixture
            .outbox
            .sql
            .claim_plan
            .expect("PostgreSQL claims under settings");
        sqlx::query(settings).execute(&mut *tx).await.unwrap();
        let batch = i64::from(fixture.outbox.config.batch_size);
        let explained = sqlx::query(&format!(
            "EXPLAIN {}{}",
            if analyze { "(ANALYZE) " } else { "" },
            fixture.outbox.sql.claim
        ))
        .bind(batch)
        .bind(30_000.0_f64)
        .bind("claim")
        .bind(batch)
        .bind(0_i64)
        .fetch_all(&mut *tx)
        .await
        .unwrap();
        tx.rollback().await.unwrap();
        plan(&explained)
    }

    /// A backlog PostgreSQL's statistics never saw (a table never
    /// analyzed, as on an outbox that is usually near empty) is claimed by
    /// walking the ready index in `seq` order, stopping at the batch:
    /// without the claim's planner settings, PostgreSQL 15 reads and sorts
    /// every pending event for each claim (a bitmap scan), 167 ms against
    /// 9 ms over 50,000 events. The one sort left is of the walked events.
    #[tokio::test]
    async fn a_backlog_the_statistics_never_saw_is_claimed_in_index_order() {
        let fixture = Fixture::new("plan", |config| config.batch_size(500)).await;
        let outbox = &fixture.outbox;
        fixture.enqueue_over(20_000, 1000).await;

        let plan = explain_claim(&fixture, false).await;
        assert!(!plan.contains("Bitmap"), "{plan}");
        assert!(
            plan.lines()
                .filter(|line| line.contains("Sort Key"))
                .all(|line| line.contains("walk")),
            "{plan}"
        );
        assert!(
            plan.contains(&format!("Index Scan using {}_outbox_ready", fixture.schema)),
            "{plan}"
        );

        // And the claim itself takes the first 500, in order.
        let claimed = crate::store::OutboxStore::claim(outbox).await.unwrap();
        let seqs: Vec<i64> = claimed.iter().map(|message| message.seq).collect();
        assert_eq!(seqs, (1..=500).collect::<Vec<_>>());
        fixture.drop().await;
    }

    /// How many events the plan's scan of the ready index read: those it
    /// kept and those its filter removed.
    fn walked(plan: &str, schema: &str) -> u64 {
        let mut lines = plan
            .lines()
            .skip_while(|line| !line.contains(&format!("{schema}_outbox_ready")));
        let scan = lines
            .next()
            .unwrap_or_else(|| panic!("no walk of the ready index: {plan}"));
        let number = |text: &str| -> u64 {
            let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().unwrap()
        };
        let kept = number(scan.rsplit("rows=").next().unwrap());
        let removed = lines
            .take_while(|line| !line.contains("->"))
            .find_map(|line| line.split("Rows Removed by Filter: ").nth(1))
            .map_or(0, number);
        kept + removed
    }

    /// 20,000 events over 10 aggregates: a hot few with a deep backlog.
    /// Once the events held behind the 10 in flight are set aside, but for
    /// the three next in line of each, a claim walks those 40 alone, not the
    /// backlog (it walked all 19,990, one probe each, before: 291 events/s
    /// over 10 aggregates); each settle brings the next event of its
    /// aggregate back into line.
    #[tokio::test]
    async fn a_claim_walks_the_events_in_flight_not_the_backlog_behind_them() {
        use crate::store::OutboxStore as _;
        let fixture = Fixture::new("hot", |config| config.batch_size(500)).await;
        let outbox = &fixture.outbox;
        fixture.enqueue_over(20_000, 10).await;

        let heads = outbox.claim().await.unwrap();
        assert_eq!(heads.len(), 10);
        assert!(outbox.claim().await.unwrap().is_empty());
        let plan = explain_claim(&fixture, true).await;
        assert_eq!(walked(&plan, &fixture.schema), 40, "{plan}");

        assert_eq!(outbox.mark_sent(&heads).await.unwrap(), 10);
        let next = outbox.claim().await.unwrap();
        let seqs: Vec<i64> = next.iter().map(|message| message.seq).collect();
        assert_eq!(seqs, (11..=20).collect::<Vec<_>>());
        let plan = explain_claim(&fixture, true).await;
        assert_eq!(walked(&plan, &fixture.schema), 40, "{plan}");
        fixture.drop().await;
    }

    /// The race the sweep is for. A claim reads `a/5` with four unsent
    /// events before it and sets it aside, but commits only after all four
    /// were sent: their settles saw nothing set aside, so freed nothing,
    /// and `a/5` is set aside at the front of its line. Within the polling
    /// interval nothing frees it; the next sweep (here, a new outbox's
    /// first claim) does.
    #[tokio::test]
    async fn an_event_set_aside_while_its_line_was_settled_is_freed_by_the_next_sweep() {
        use crate::store::OutboxStore as _;
        let an_hour = std::time::Duration::from_secs(3600);
        let fixture = Fixture::new("race", |config| config.poll_interval(an_hour)).await;
        let (pool, outbox) = (&fixture.pool, &fixture.outbox);
        let enqueue = |numbers: std::ops::RangeInclusive<u8>| async move {
            let events: Vec<Event> = numbers
                .map(|n| Event::new("order", "a", "Placed", vec![n]))
                .collect();
            let mut tx = pool.begin().await.unwrap();
            outbox.enqueue_all(&mut tx, &events).await.unwrap();
            tx.commit().await.unwrap();
        };
        let seqs = |claimed: &[crate::Message]| -> Vec<i64> {
            claimed.iter().map(|message| message.seq).collect()
        };

        // This outbox's first claim sweeps, and takes a/1; a/2 to a/4 are
        // near the front of the line. a/5 comes after.
        enqueue(1..=4).await;
        let mut claimed = outbox.claim().await.unwrap();
        assert_eq!(seqs(&claimed), [1]);
        enqueue(5..=5).await;
        let mut slow = pool.begin().await.unwrap();
        let round = sqlx::query(&outbox.sql.claim)
            .bind(100_i64)
            .bind(30_000.0_f64)
            .bind("slow")
            .bind(100_i64)
            .bind(0_i64)
            .fetch_all(&mut *slow)
            .await
            .unwrap();
        assert!(
            round[0].get::<Option<i64>, _>("seq").is_none(),
            "it claims nothing"
        );
        for next in 2..=4 {
            assert_eq!(outbox.mark_sent(&claimed).await.unwrap(), 1);
            claimed = outbox.claim().await.unwrap();
            assert_eq!(seqs(&claimed), [next]);
        }
        assert_eq!(outbox.mark_sent(&claimed).await.unwrap(), 1);
        slow.commit().await.unwrap();

        assert!(outbox.claim().await.unwrap().is_empty(), "no sweep yet");
        let blocked: bool = sqlx::query_scalar(&format!(
            "SELECT blocked FROM {}.outbox WHERE seq = 5",
            fixture.schema
        ))
        .fetch_one(pool)
        .await
        .unwrap();
        assert!(blocked);
        let another = PgOutbox::new(pool.clone(), outbox.config().clone());
        assert_eq!(seqs(&another.claim().await.unwrap()), [5]);
        fixture.drop().await;
    }

    /// A sweep looks at a bounded number of aggregates (here 2) from where
    /// the last stopped, and from the start once one reached the end.
    #[tokio::test]
    async fn each_sweep_goes_on_where_the_last_stopped() {
        let fixture = Fixture::new("sweeps", |config| {
            config.poll_interval(std::time::Duration::ZERO)
        })
        .await;
        let (pool, outbox) = (&fixture.pool, &fixture.outbox);
        let events: Vec<Event> = ["a", "b", "c"]
            .into_iter()
            .flat_map(|line| [1, 2].map(|n| Event::new("order", line, "Placed", vec![n])))
            .collect();
        let mut tx = pool.begin().await.unwrap();
        outbox.enqueue_all(&mut tx, &events).await.unwrap();
        tx.commit().await.unwrap();
        // Every event set aside: each line's first has nothing before it.
        let table = format!("{}.outbox", fixture.schema);
        sqlx::query(&format!("UPDATE {table} SET blocked = true"))
            .execute(pool)
            .await
            .unwrap();
        let sweep = || async {
            let mut tx = pool.begin().await.unwrap();
            let to = outbox.sweep(&mut tx, 2).await.unwrap().expect("due");
            tx.commit().await.unwrap();
            crate::stores::Sweep::done(&outbox.swept, to.clone());
            let set_aside: i64 =
                sqlx::query_scalar(&format!("SELECT count(*) FROM {table} WHERE blocked"))
                    .fetch_one(pool)
                    .await
                    .unwrap();
            (to, set_aside)
        };
        let after_b = Some(("order".to_owned(), "b".to_owned()));
        assert_eq!(sweep().await, (after_b.clone(), 4), "a/1 and b/1 freed");
        assert_eq!(sweep().await, (None, 3), "c/1 freed, the end reached");
        assert_eq!(sweep().await, (after_b, 3), "a/2 and b/2 stay, held");
        fixture.drop().await;
    }
}
