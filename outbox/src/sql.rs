//! The outbox's and the inbox's statements, in each database's dialect.
//!
//! Times are the database's own (`now()` in PostgreSQL, `julianday('now')`
//! in SQLite), never a relay's clock; durations are bound as milliseconds.

use std::time::Duration;

use crate::config::OutboxConfig;

/// `name` as PostgreSQL keeps it whole: a name longer than its 63 bytes
/// (which it cuts, silently for an index, so that the indexes of a long
/// table name were one and the rest never made; with an error for a
/// `NOTIFY` channel, failing every write) is cut shorter and ends with a
/// hash of the whole name.
#[cfg(feature = "postgres")]
pub(crate) fn identifier(name: &str) -> String {
    const LONGEST: usize = 63;
    const HASHED: usize = LONGEST - 17;
    if name.len() <= LONGEST {
        return name.to_owned();
    }
    // FNV-1a: the same in every process and version.
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let cut = (0..=HASHED)
        .rev()
        .find(|&at| name.is_char_boundary(at))
        .unwrap_or(0);
    format!("{}_{hash:016x}", &name[..cut])
}

/// The most events one statement writes (six values each: SQLite takes
/// up to 32,766 in a statement).
pub(crate) const INSERT_ROWS: usize = 500;

/// How many unsent events of its aggregate an event waits behind before a
/// claim sets it aside (see `OutboxSql::claim`).
const SET_ASIDE_BEHIND: u32 = 4;

/// How long past PostgreSQL's deadlock timeout (when an autovacuum in the
/// way is cancelled) a migration waits on a table others are using before
/// it gives way, to try again.
#[cfg(feature = "postgres")]
pub(crate) const MIGRATION_LOCK_WAIT: Duration = Duration::from_millis(500);

/// How a store's tables are made, and brought up to this version from an
/// earlier one's, in one transaction.
#[derive(Debug)]
pub(crate) struct Migration {
    /// The table indexed.
    pub(crate) table: String,
    /// How the migration's second try begins, after the database was busy.
    pub(crate) begin_again: Option<&'static str>,
    /// The migration's locks and the schema (see `Dialect::prelude`).
    pub(crate) prelude: Vec<String>,
    /// Whether the indexed table is there already (see
    /// `Dialect::existed`).
    pub(crate) existed: Option<String>,
    /// The tables.
    pub(crate) tables: Vec<String>,
    /// Columns added since the table was first made: for each, whether the
    /// table has it (1) or not (0), and the statement that adds it.
    pub(crate) columns: Vec<(String, String)>,
    /// The indexes, once the table has every column.
    pub(crate) indexes: Vec<IndexSql>,
}

/// An index a migration makes.
#[derive(Debug)]
pub(crate) struct IndexSql {
    /// Makes it, if missing, in the migration's transaction (on a table
    /// the transaction makes, in PostgreSQL).
    pub(crate) create: String,
    /// How it is built on a table that was there before (PostgreSQL).
    pub(crate) concurrently: Option<ConcurrentIndex>,
}

/// An index built without holding up the table's writers (PostgreSQL's
/// `CREATE INDEX CONCURRENTLY`), out of any transaction.
#[derive(Debug)]
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) struct ConcurrentIndex {
    /// Its qualified name, for the log.
    pub(crate) name: String,
    /// Whether it is valid: no row when missing, `false` while it is
    /// being built or when a build was cut off.
    pub(crate) state: String,
    /// Whether a build of it is under way (someone else's: an operator's
    /// own `CREATE INDEX CONCURRENTLY`), one row.
    pub(crate) building: String,
    pub(crate) build: String,
    /// Drops it, to build it again after a build cut off.
    pub(crate) drop: String,
}

/// The SQL dialect of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    #[cfg(feature = "postgres")]
    Postgres,
    #[cfg(feature = "sqlite")]
    Sqlite,
}

impl Dialect {
    /// The rows `id` of the JSON array of strings `param`.
    fn json_texts(self, param: &str) -> String {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres => format!("jsonb_array_elements_text({param}::jsonb) AS ids (id)"),
            #[cfg(feature = "sqlite")]
            Self::Sqlite => format!("(SELECT value AS id FROM json_each({param}))"),
        }
    }

    /// The current time as a column value.
    const fn now(self) -> &'static str {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres => "now()",
            // Milliseconds since the Unix epoch, as an integer.
            #[cfg(feature = "sqlite")]
            Self::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
        }
    }

    /// `now` plus (`sign` = "+") or minus the milliseconds bound at `param`.
    fn shifted(self, sign: char, param: &str) -> String {
        let now = self.now();
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres => format!("({now} {sign} {param} * interval '1 millisecond')"),
            #[cfg(feature = "sqlite")]
            Self::Sqlite => format!("({now} {sign} CAST({param} AS INTEGER))"),
        }
    }

    /// A time column as milliseconds since the Unix epoch.
    fn epoch_ms(self, column: &str) -> String {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres => format!("(extract(epoch FROM {column}) * 1000)::bigint"),
            #[cfg(feature = "sqlite")]
            Self::Sqlite => column.to_owned(),
        }
    }

    /// The statement that begins a transaction in which no statement
    /// runs longer than `limit`, where the database can bound one on its
    /// side: PostgreSQL's `statement_timeout`, set for the transaction in
    /// the same round trip as its `BEGIN`, and only ever tightened (a
    /// shorter one set for the role or the database stands). (A statement
    /// whose client gave up on it runs on there: a lock wait would hold
    /// what the transaction wrote until the lock came.) SQLite runs
    /// statements in process, and waits for locks no longer than its busy
    /// timeout.
    fn bounded_begin(self, limit: Duration) -> Option<String> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres => {
                let ms = limit.as_millis().clamp(1, i32::MAX as u128);
                Some(format!(
                    "BEGIN; SELECT set_config('statement_timeout', CASE WHEN setting::bigint \
                     BETWEEN 1 AND {ms} THEN setting ELSE '{ms}' END, true) FROM pg_settings \
                     WHERE name = 'statement_timeout'"
                ))
            }
            #[cfg(feature = "sqlite")]
            Self::Sqlite => {
                let _ = limit;
                None
            }
        }
    }

    /// A statement that fails in an aborted transaction, where one can be
    /// aborted and still take `COMMIT` without an error: PostgreSQL's (a
    /// failed statement aborts the transaction, and its `COMMIT` then
    /// answers `ROLLBACK`, which sqlx takes for success). In SQLite most
    /// failures leave the transaction as it was, and the few that roll it
    /// back (a full disk, `RAISE(ROLLBACK)`) end it, so that its `COMMIT`
    /// fails by itself.
    const fn still_open(self) -> Option<&'static str> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres => Some("SELECT 1"),
            #[cfg(feature = "sqlite")]
            Self::Sqlite => None,
        }
    }

    /// How a migration that found the database busy begins its second
    /// try, where the default will not do. SQLite's deferred `BEGIN` reads
    /// first (does the table exist, has it the column) and then writes:
    /// taking the write lock then fails at once when another connection
    /// holds it or wrote since (the busy timeout is not waited on), so a
    /// migration with something to add beside a running relay failed with
    /// "database is locked". `IMMEDIATE` takes the write lock first,
    /// waiting out the busy timeout (asked for by such a second try
    /// only).
    const fn migration_begin(self) -> Option<&'static str> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres => None,
            #[cfg(feature = "sqlite")]
            Self::Sqlite => Some("BEGIN IMMEDIATE"),
        }
    }

    /// The column type of a point in time.
    const fn time_type(self) -> &'static str {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres => "TIMESTAMPTZ",
            #[cfg(feature = "sqlite")]
            Self::Sqlite => "INTEGER",
        }
    }

    /// What a subquery picking rows to change ends with so that several
    /// writers pick apart: PostgreSQL lets several relays claim and clean
    /// up (and consumers forget) side by side; SQLite has one writer at a
    /// time.
    const fn skip_locked(self) -> &'static str {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres => "FOR UPDATE SKIP LOCKED",
            #[cfg(feature = "sqlite")]
            Self::Sqlite => "",
        }
    }

    /// `table` (maybe `schema.name`) and the name of its index `suffix`, as
    /// `CREATE INDEX` wants them.
    fn index_names(self, table: &str, suffix: &str) -> (String, String) {
        match (self, table.split_once('.')) {
            // SQLite: the index is named in the table's (attached) database
            // and the table without it.
            #[cfg(feature = "sqlite")]
            (Self::Sqlite, Some((schema, name))) => {
                (format!("{schema}.{name}_{suffix}"), name.to_owned())
            }
            #[cfg(feature = "sqlite")]
            (Self::Sqlite, None) => (format!("{table}_{suffix}"), table.to_owned()),
            #[cfg(feature = "postgres")]
            (Self::Postgres, _) => (
                identifier(&format!("{}_{suffix}", table.replace('.', "_"))),
                table.to_owned(),
            ),
        }
    }

    /// The table beside `table` (in its schema) named `table`'s name and
    /// `suffix`: in PostgreSQL within its 63 bytes (a longer name, cut to
    /// `table`'s own, was `table`).
    fn beside(self, table: &str, suffix: &str) -> String {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres => match table.split_once('.') {
                Some((schema, name)) => {
                    format!("{schema}.{}", identifier(&format!("{name}_{suffix}")))
                }
                None => identifier(&format!("{table}_{suffix}")),
            },
            #[cfg(feature = "sqlite")]
            Self::Sqlite => format!("{table}_{suffix}"),
        }
    }

    /// `table`'s index `suffix` on `definition` (its columns, and filter),
    /// made in the migration's transaction on a table that transaction
    /// makes (and on any SQLite table). On a PostgreSQL table made before,
    /// the migration only asks the table's indexes whether it is there and
    /// valid (those of this table: a name looked up on the search path
    /// could find another schema's), and builds it after the transaction,
    /// concurrently: `CREATE INDEX IF NOT EXISTS` takes a share lock on
    /// the table even when the index exists, so every start waited for the
    /// transactions writing the table, and held up every later write
    /// meanwhile.
    fn index(self, table: &str, suffix: &str, definition: &str) -> IndexSql {
        let (index, on) = self.index_names(table, suffix);
        let create = format!("CREATE INDEX IF NOT EXISTS {index} ON {on} {definition}");
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres => {
                let state = format!(
                    "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
                     WHERE i.indrelid = '{table}'::regclass AND c.relname = '{index}'"
                );
                let qualified = match table.split_once('.') {
                    Some((schema, _)) => format!("{schema}.{index}"),
                    None => index.clone(),
                };
                IndexSql {
                    create,
                    concurrently: Some(ConcurrentIndex {
                        build: format!(
                            "CREATE INDEX CONCURRENTLY IF NOT EXISTS {index} ON {on} {definition}"
                        ),
                        drop: format!("DROP INDEX CONCURRENTLY IF EXISTS {qualified}"),
                        building: format!(
                            "SELECT EXISTS (SELECT 1 FROM pg_stat_progress_create_index \
                             WHERE index_relid = to_regclass('{qualified}'))"
                        ),
                        name: qualified,
                        state,
                    }),
                }
            }
            #[cfg(feature = "sqlite")]
            Self::Sqlite => IndexSql {
                create,
                concurrently: None,
            },
        }
    }

    /// PostgreSQL fills the outbox's pages only half, so a claim (which
    /// changes no indexed column) writes each row's new version on its own
    /// page: a HOT update, which touches none of the table's indexes.
    /// 500-event claims over 50,000 pending events took 5.6 ms instead of
    /// 11.5 ms. A table made before gets the room on its new pages. The
    /// table is altered only when it lacks the setting, so a start against
    /// a table already set up takes no lock on it and needs no ownership.
    fn room_for_claims(self, table: &str) -> Option<String> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres => Some(format!(
                "DO $$ BEGIN \
                 IF NOT EXISTS (SELECT 1 FROM pg_class WHERE oid = '{table}'::regclass \
                 AND 'fillfactor=50' = ANY (reloptions)) THEN \
                 ALTER TABLE {table} SET (fillfactor = 50); \
                 END IF; END $$"
            )),
            #[cfg(feature = "sqlite")]
            Self::Sqlite => {
                let _ = table;
                None
            }
        }
    }

    /// The planner settings a claim runs under. PostgreSQL plans the claim
    /// from statistics that, on a working outbox, say pending events are
    /// rare: when a backlog builds up (a broker outage, a burst) it then
    /// reads every pending event and sorts them (a bitmap scan) to claim a
    /// batch, just when claims should be quick. Walking the pending index
    /// in `seq` order stops at the batch: over 50,000 pending events never
    /// analyzed, 9 ms a claim against 167 ms. The few claimed events are
    /// still sorted (a sort PostgreSQL now costs as a last resort), and a
    /// plan that costly would be compiled (JIT) on every claim: 170 ms for
    /// a claim of two events, so the claim runs without JIT.
    const fn claim_plan(self) -> Option<&'static str> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres => Some(
                "SELECT set_config('enable_bitmapscan', 'off', true), set_config('enable_sort', 'off', true), \
                 set_config('jit', 'off', true)",
            ),
            #[cfg(feature = "sqlite")]
            Self::Sqlite => None,
        }
    }

    /// Whether a claim sets aside the events it finds held behind their
    /// aggregate's first unsent event (the `blocked` column), so that later
    /// claims walk past none of them. PostgreSQL's claims run beside each
    /// other and beside settles, so their walk over a backlog held behind a
    /// few aggregates is what such a backlog costs; SQLite's backlogs are
    /// one process's, and its statements cannot modify rows from a `WITH`.
    const fn sets_held_aside(self) -> bool {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres => true,
            #[cfg(feature = "sqlite")]
            Self::Sqlite => false,
        }
    }

    /// Whether `table` has `column` (1) or not (0): tables made by an
    /// earlier version lack the columns added since.
    fn has_column(self, table: &str, column: &str) -> String {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres => format!(
                "SELECT count(*) FROM pg_attribute WHERE attrelid = '{table}'::regclass \
                 AND attname = '{column}' AND NOT attisdropped"
            ),
            #[cfg(feature = "sqlite")]
            Self::Sqlite => {
                let (schema, name) = table.split_once('.').unwrap_or(("main", table));
                format!(
                    "SELECT count(*) FROM pragma_table_info('{name}', '{schema}') \
                     WHERE name = '{column}'"
                )
            }
        }
    }

    /// Whether `table` is there (PostgreSQL: the indexes such a table
    /// lacks are built after the migration's transaction, concurrently);
    /// `None` where every index is made in the transaction.
    fn existed(self, table: &str) -> Option<String> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres => Some(format!("SELECT to_regclass('{table}') IS NOT NULL")),
            #[cfg(feature = "sqlite")]
            Self::Sqlite => {
                let _ = table;
                None
            }
        }
    }

    /// Statements run before creating the tables: PostgreSQL takes the
    /// migration's locks, bounds its waits on the table, and makes the
    /// schema, one migration of the schema's tables at a time (two
    /// tables' migrations making one new schema at once failed the second
    /// with a duplicate key); SQLite's `schema` is an attached database,
    /// there already.
    fn prelude(self, table: &str) -> Vec<String> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres => {
                // The table's lock first, as earlier versions take it, so
                // that they and this one take turns in a rolling upgrade.
                let mut prelude =
                    vec![format!("SELECT pg_advisory_xact_lock(hashtext('{table}'))")];
                if let Some((schema, _)) = table.split_once('.') {
                    prelude.push(format!(
                        "SELECT pg_advisory_xact_lock(hashtext('palisade_outbox:{schema}'))"
                    ));
                }
                // Adding a column waits for every transaction using the
                // table, and every statement on the table waits behind it:
                // a long transaction held up all the table's writers (and
                // readers) for as long as it lasted. Waiting on the table
                // gives way, and the migration tries again
                // (`stores::again_when_held`): half a second past the
                // deadlock timeout, when PostgreSQL cancels an autovacuum
                // in the way (one that gave way sooner never got past a
                // table autovacuum was working on).
                prelude.push(format!(
                    "SELECT set_config('lock_timeout', (extract(epoch FROM \
                     current_setting('deadlock_timeout')::interval) * 1000 + {})::bigint::text, true)",
                    MIGRATION_LOCK_WAIT.as_millis()
                ));
                if let Some((schema, _)) = table.split_once('.') {
                    prelude.push(format!("CREATE SCHEMA IF NOT EXISTS {schema}"));
                }
                prelude
            }
            #[cfg(feature = "sqlite")]
            Self::Sqlite => {
                let _ = table;
                Vec::new()
            }
        }
    }
}

/// Whether `error` is SQLite's "database is locked" (`SQLITE_BUSY`, and
/// its extended codes such as a stale snapshot's).
/// Another database's error is never that (a PostgreSQL SQLSTATE such as
/// `42501` would read as one by its number).
pub(crate) fn is_busy(error: &sqlx::Error) -> bool {
    #[cfg(feature = "sqlite")]
    if let sqlx::Error::Database(error) = error
        && error
            .try_downcast_ref::<sqlx::sqlite::SqliteError>()
            .is_some()
    {
        return error
            .code()
            .and_then(|code| code.parse::<i32>().ok())
            .is_some_and(|code| code & 0xff == 5);
    }
    let _ = error;
    false
}

/// Whether `error` is PostgreSQL giving up a wait on a lock
/// (`lock_not_available`, after `lock_timeout`).
pub(crate) fn is_lock_timeout(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(error) if error.code().as_deref() == Some("55P03"))
}

/// The outbox's statements, with its table in them.
#[derive(Debug)]
pub(crate) struct OutboxSql {
    pub(crate) migration: std::sync::Arc<Migration>,
    /// Writes one event: `$1` to `$6` its id, aggregate type and id, event
    /// type, payload and headers.
    pub(crate) insert: String,
    /// Where one statement may write several events: the statement up to
    /// its `VALUES` (see [`insert_rows`](Self::insert_rows)).
    insert_values: Option<String>,
    /// One round of a claim: `$1` events at most, `$2` the lease in
    /// milliseconds, `$3` the claim id, `$4` how many ready events to walk,
    /// `$5` the seq after which to walk. Returns the claimed events, each
    /// row also holding `walked` (how many events the round walked) and
    /// `last` (the last seq it walked). In PostgreSQL a round that claimed
    /// nothing returns one row: NULL event columns, `walked` and `last`.
    /// In SQLite one round is the whole claim, and `walked` is 0.
    pub(crate) claim: String,
    /// Planner settings the claim runs under, in its own transaction.
    pub(crate) claim_plan: Option<&'static str>,
    /// Frees the set-aside events no longer held behind an unsent event.
    /// A settle frees the next one of its aggregate, but it does not see
    /// an event a claim is setting aside in a transaction not yet
    /// committed; if every event before it is settled that way, nothing
    /// frees it but this (see `claim`).
    pub(crate) sweep: Option<String>,
    pub(crate) sent: String,
    pub(crate) release: String,
    pub(crate) failed: String,
    pub(crate) clean_up: String,
    pub(crate) backlog: String,
    pub(crate) dead_events: String,
    pub(crate) requeue: String,
    pub(crate) requeue_all: String,
    pub(crate) discard: String,
}

impl OutboxSql {
    /// The statement writing `events` events (2 to [`INSERT_ROWS`]) at
    /// once, their columns bound in [`insert`](Self::insert)'s order, one
    /// event after another; `None` where each event takes a statement of
    /// its own.
    pub(crate) fn insert_rows(&self, events: usize) -> Option<String> {
        let prefix = self.insert_values.as_deref()?;
        const ROW: &str = "(?, ?, ?, ?, ?, ?)";
        let mut statement = String::with_capacity(prefix.len() + events * (ROW.len() + 2));
        statement.push_str(prefix);
        for event in 0..events {
            if event > 0 {
                statement.push_str(", ");
            }
            statement.push_str(ROW);
        }
        Some(statement)
    }

    pub(crate) fn new(dialect: Dialect, config: &OutboxConfig) -> Self {
        let t = &config.table;
        let now = dialect.now();
        let time = dialect.time_type();
        let (seq, payload) = match dialect {
            #[cfg(feature = "postgres")]
            Dialect::Postgres => ("BIGSERIAL PRIMARY KEY", "BYTEA"),
            #[cfg(feature = "sqlite")]
            Dialect::Sqlite => ("INTEGER PRIMARY KEY AUTOINCREMENT", "BLOB"),
        };
        // Claims set aside (block) the events they find held behind their
        // aggregate's first unsent event; the pending events a claim walks
        // are the others.
        let sets_aside = dialect.sets_held_aside();
        let blocks = sets_aside && config.ordered;
        let mut migrate = Vec::new();
        migrate.push(format!(
            "CREATE TABLE IF NOT EXISTS {t} (\
             seq {seq}, \
             id TEXT NOT NULL UNIQUE, \
             aggregate_type TEXT NOT NULL, \
             aggregate_id TEXT NOT NULL, \
             event_type TEXT NOT NULL, \
             payload {payload} NOT NULL, \
             headers TEXT NOT NULL, \
             created_at {time} NOT NULL DEFAULT ({now}), \
             attempts INT NOT NULL DEFAULT 0, \
             next_attempt_at {time} NOT NULL DEFAULT ({now}), \
             status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'dead')), \
             last_error TEXT, \
             claimed_until {time}, \
             claim_id TEXT, \
             sent_at {time}{blocked})",
            blocked = if sets_aside {
                ", blocked BOOLEAN NOT NULL DEFAULT false"
            } else {
                ""
            },
        ));
        migrate.extend(dialect.room_for_claims(t));
        let mut columns = vec![(
            dialect.has_column(t, "claim_id"),
            format!("ALTER TABLE {t} ADD COLUMN claim_id TEXT"),
        )];
        if sets_aside {
            columns.push((
                dialect.has_column(t, "blocked"),
                format!("ALTER TABLE {t} ADD COLUMN blocked BOOLEAN NOT NULL DEFAULT false"),
            ));
        }
        let unsent = (
            "unsent",
            "aggregate_type, aggregate_id, seq",
            "status <> 'sent'",
        );
        let sent = ("sent", "sent_at", "status = 'sent'");
        let mut indexes = Vec::new();
        // Claims walk `ready`: the pending events not set aside. A table
        // made before it keeps its `due` index (every pending event), which
        // relays of earlier versions walk; it can be dropped once none runs.
        let on_every = if sets_aside {
            vec![
                unsent,
                ("ready", "seq", "status = 'pending' AND NOT blocked"),
                sent,
                (
                    "blocked",
                    "aggregate_type, aggregate_id, seq",
                    "blocked AND status = 'pending'",
                ),
            ]
        } else {
            vec![unsent, ("due", "seq", "status = 'pending'"), sent]
        };
        for (suffix, columns, filter) in on_every {
            indexes.push(dialect.index(t, suffix, &format!("({columns}) WHERE {filter}")));
        }

        // Per-aggregate order: only the first unsent event of an aggregate
        // is publishable.
        let earlier_unsent = format!(
            "EXISTS (SELECT 1 FROM {t} e WHERE e.aggregate_type = o.aggregate_type \
             AND e.aggregate_id = o.aggregate_id AND e.seq < o.seq AND e.status <> 'sent')"
        );
        // `$1` is a comma-separated list of seqs. Every settle is fenced by
        // the claim that produced it: it changes a row only while the row
        // still carries that claim's id.
        let requeue = format!(
            "UPDATE {t} SET status = 'pending', attempts = 0, next_attempt_at = {now}, \
             last_error = NULL{unblocked} WHERE status = 'dead'",
            // An event set aside and then dead (by an earlier version's
            // relay, which claimed set-aside events) comes back in line.
            unblocked = if sets_aside { ", blocked = false" } else { "" },
        );
        let seqs = match dialect {
            #[cfg(feature = "postgres")]
            Dialect::Postgres => "seq = ANY(string_to_array($1, ',')::bigint[])".to_owned(),
            #[cfg(feature = "sqlite")]
            Dialect::Sqlite => "seq IN (SELECT value FROM json_each('[' || $1 || ']'))".to_owned(),
        };
        let skip_locked = dialect.skip_locked();
        let lease = dialect.shifted('+', "$2");
        let claimed = format!(
            "RETURNING seq, id, aggregate_type, aggregate_id, event_type, payload, headers, \
             {created} AS created_at_ms, attempts",
            created = dialect.epoch_ms("created_at"),
        );
        let publishable = |o: &str| {
            format!(
                "{o}.status = 'pending' AND {o}.next_attempt_at <= {now} \
                 AND ({o}.claimed_until IS NULL OR {o}.claimed_until < {now})"
            )
        };
        // A settle that takes events out of line (`statement`) frees the
        // first set-aside event of each of their aggregates, which moves up
        // to the front of its line; it is counted as the rows it settled.
        // The look-up is made only when the outbox has events set aside at
        // all: asked in the `blocked` index's order, so that PostgreSQL
        // reads the index, not the table (8 ms over 50,000 events).
        let set_aside = "b.blocked AND b.status = 'pending'";
        let freeing_next = |statement: String| {
            if !blocks {
                return statement;
            }
            format!(
                "WITH settled AS ({statement} RETURNING aggregate_type, aggregate_id), \
                 free AS (UPDATE {t} SET blocked = false WHERE seq IN (SELECT (SELECT b.seq \
                 FROM {t} b WHERE b.aggregate_type = s.aggregate_type \
                 AND b.aggregate_id = s.aggregate_id AND {set_aside} ORDER BY b.seq LIMIT 1) \
                 FROM settled s WHERE (SELECT seq FROM {t} b WHERE {set_aside} \
                 ORDER BY aggregate_type, aggregate_id, seq LIMIT 1) IS NOT NULL)) \
                 SELECT 1 FROM settled"
            )
        };
        let mark_sent = format!(
            "UPDATE {t} SET status = 'sent', sent_at = {now}, claimed_until = NULL, claim_id = NULL \
             WHERE {seqs} AND claim_id = $2"
        );
        let discard = format!("DELETE FROM {t} WHERE id = $1 AND status = 'dead'");
        Self {
            migration: std::sync::Arc::new(Migration {
                table: t.clone(),
                begin_again: dialect.migration_begin(),
                prelude: dialect.prelude(t),
                existed: dialect.existed(t),
                tables: migrate,
                columns,
                indexes,
            }),
            insert: match dialect {
                // A transaction-scoped lock per aggregate of this table: a
                // second transaction writing the same aggregate here waits
                // for the first to end before it takes its `seq`, so `seq`
                // order is commit order within an aggregate. (The table's
                // oid is in the key, whatever name found it: outboxes of
                // other tables in the database, other services' with the
                // same aggregate ids, neither wait on nor deadlock with
                // it.) The same statement asks
                // PostgreSQL to wake the listening relays once the
                // transaction commits: no round trip of its own.
                #[cfg(feature = "postgres")]
                Dialect::Postgres => format!(
                    "WITH aggregate AS (SELECT pg_advisory_xact_lock(hashtextextended('{t}'::regclass::oid::text || '/' || $2 || '/' || $3, 0))), \
                     wake AS (SELECT pg_notify('{channel}', '')) \
                     INSERT INTO {t} (id, aggregate_type, aggregate_id, event_type, payload, headers) \
                     SELECT $1, $2, $3, $4, $5, $6 FROM aggregate, wake",
                    channel = config.notify_channel()
                ),
                // One writer at a time: `seq` order is commit order.
                #[cfg(feature = "sqlite")]
                Dialect::Sqlite => format!(
                    "INSERT INTO {t} (id, aggregate_type, aggregate_id, event_type, payload, headers) \
                     VALUES ($1, $2, $3, $4, $5, $6)"
                ),
            },
            // SQLite takes the rows of several events in one statement,
            // inserted in the order listed: still one writer, so `seq`
            // order is commit order, and that order within the statement.
            // PostgreSQL's insert takes its aggregate's lock first, one
            // event at a time.
            insert_values: match dialect {
                #[cfg(feature = "postgres")]
                Dialect::Postgres => None,
                #[cfg(feature = "sqlite")]
                Dialect::Sqlite => Some(format!(
                    "INSERT INTO {t} (id, aggregate_type, aggregate_id, event_type, payload, headers) VALUES "
                )),
            },
            claim_plan: dialect.claim_plan(),
            claim: if sets_aside {
                // A round walks `$4` ready events past seq `$5`, in `seq`
                // order, and counts the unsent events before each in its
                // aggregate, up to `SET_ASIDE_BEHIND`:
                // - none: the event is claimed, unless another claim holds
                //   it or took it since (`SKIP LOCKED` on the claimed events
                //   alone: a walk that locked every event it read would
                //   keep another relay from the next events of its own
                //   aggregates);
                // - fewer than `SET_ASIDE_BEHIND`: it is near the front of
                //   its line, and stays, walked again until it is claimed;
                // - that many: it is set aside, and no claim walks it again
                //   until settles free it.
                // A claim's walk then costs its batch and a few events per
                // aggregate in flight, dead or backing off, not the backlog
                // behind them; and an event a little behind one in flight
                // (another relay's, say) costs a probe, not the two writes
                // of setting it aside and freeing it.
                let ahead = if config.ordered {
                    format!(
                        "(SELECT count(*) FROM (SELECT FROM {t} e \
                         WHERE e.aggregate_type = o.aggregate_type \
                         AND e.aggregate_id = o.aggregate_id AND e.seq < o.seq \
                         AND e.status <> 'sent' LIMIT {SET_ASIDE_BEHIND}) before)"
                    )
                } else {
                    "0".to_owned()
                };
                format!(
                    "WITH walk AS (SELECT o.seq, {ahead} AS ahead FROM {t} o \
                     WHERE {ready} AND NOT o.blocked AND o.seq > $5 ORDER BY o.seq LIMIT $4), \
                     aside AS (UPDATE {t} SET blocked = true WHERE seq IN (SELECT a.seq \
                     FROM {t} a WHERE a.seq = ANY (ARRAY(SELECT seq FROM walk \
                     WHERE ahead >= {SET_ASIDE_BEHIND})) AND {pending} {skip_locked})), \
                     claimed AS (UPDATE {t} SET claimed_until = {lease}, claim_id = $3 \
                     WHERE seq IN (SELECT c.seq FROM {t} c WHERE c.seq = ANY (ARRAY(SELECT seq \
                     FROM walk WHERE ahead = 0)) AND {claimable} AND NOT c.blocked \
                     LIMIT $1 {skip_locked}) \
                     {claimed}) \
                     SELECT claimed.*, w.walked, w.last \
                     FROM (SELECT count(*) AS walked, max(seq) AS last FROM walk) w \
                     LEFT JOIN claimed ON true",
                    ready = publishable("o"),
                    // Still so when locked: another relay may have changed
                    // the event since the walk read it.
                    pending = publishable("a"),
                    claimable = publishable("c"),
                )
            } else {
                let order = if config.ordered {
                    format!("AND NOT {earlier_unsent}")
                } else {
                    String::new()
                };
                // One writer at a time: the statement alone is the claim.
                // It walks as far as it must to fill its batch.
                format!(
                    "UPDATE {t} SET claimed_until = {lease}, claim_id = $3 WHERE seq IN \
                     (SELECT o.seq FROM {t} o WHERE {publishable} {order} AND o.seq > $5 \
                     ORDER BY o.seq LIMIT min($1, $4) {skip_locked}) \
                     {claimed}, 0 AS walked, NULL AS last",
                    publishable = publishable("o"),
                )
            },
            // `$1`, `$2`, `$3`: where the last sweep stopped (after aggregate
            // type `$1`, id `$2`, with `$3` the largest seq, or '', '' and 0
            // from the start); `$4`: how many aggregates to look at.
            // Returns how many it looked at, and the last (type and id, in
            // the index's order, which is the database's collation).
            sweep: sets_aside.then(|| {
                let after = "(b.aggregate_type, b.aggregate_id, b.seq) > ($1, $2, $3)";
                if config.ordered {
                    // An aggregate's first set-aside event is the only one
                    // that can have nothing unsent before it: found one per
                    // aggregate, each by a probe of the `blocked` index past
                    // the aggregate before (a skip scan), not by reading
                    // every set-aside event.
                    format!(
                        "WITH RECURSIVE firsts AS ((SELECT b.aggregate_type, b.aggregate_id, \
                         b.seq, 1::bigint AS n FROM {t} b WHERE {set_aside} AND {after} \
                         ORDER BY b.aggregate_type, b.aggregate_id, b.seq LIMIT 1) \
                         UNION ALL SELECT n.aggregate_type, n.aggregate_id, n.seq, f.n + 1 \
                         FROM firsts f, LATERAL (SELECT b.aggregate_type, b.aggregate_id, b.seq \
                         FROM {t} b WHERE {set_aside} \
                         AND (b.aggregate_type, b.aggregate_id) > (f.aggregate_type, f.aggregate_id) \
                         ORDER BY b.aggregate_type, b.aggregate_id, b.seq LIMIT 1) n \
                         WHERE f.n < $4), \
                         freed AS (UPDATE {t} o SET blocked = false FROM firsts f \
                         WHERE o.seq = f.seq AND NOT {earlier_unsent}) \
                         SELECT (SELECT count(*) FROM firsts), last.aggregate_type, \
                         last.aggregate_id FROM (SELECT) one LEFT JOIN (SELECT aggregate_type, \
                         aggregate_id FROM firsts ORDER BY n DESC LIMIT 1) last ON true"
                    )
                } else {
                    // Unordered, no event waits for another: events set
                    // aside while the outbox was ordered are all freed, and
                    // leave the index, so each sweep starts from the start.
                    format!(
                        "WITH freed AS (UPDATE {t} SET blocked = false WHERE seq IN \
                         (SELECT b.seq FROM {t} b WHERE {set_aside} AND {after} \
                         ORDER BY b.aggregate_type, b.aggregate_id, b.seq LIMIT $4) RETURNING 1) \
                         SELECT count(*), NULL::text, NULL::text FROM freed"
                    )
                }
            }),
            sent: freeing_next(mark_sent),
            // Attempts untouched: the broker failed, not the event.
            release: format!(
                "UPDATE {t} SET last_error = $4, claimed_until = NULL, claim_id = NULL, \
                 next_attempt_at = {delay} WHERE {seqs} AND claim_id = $2",
                delay = dialect.shifted('+', "$3"),
            ),
            failed: format!(
                "UPDATE {t} SET attempts = attempts + 1, last_error = $2, claimed_until = NULL, \
                 claim_id = NULL, next_attempt_at = {backoff}, \
                 status = CASE WHEN attempts + 1 >= $4 THEN 'dead' ELSE 'pending' END \
                 WHERE seq = $1 AND claim_id = $5 RETURNING status = 'dead'",
                backoff = dialect.shifted('+', "$3"),
            ),
            clean_up: format!(
                "DELETE FROM {t} WHERE seq IN (SELECT seq FROM {t} WHERE status = 'sent' \
                 AND sent_at < {cutoff} ORDER BY seq LIMIT $2 {skip_locked})",
                cutoff = dialect.shifted('-', "$1"),
            ),
            backlog: format!(
                "SELECT count(*) FILTER (WHERE status = 'pending'), \
                 count(*) FILTER (WHERE status = 'dead'), \
                 {now_ms} - min({created}) FILTER (WHERE status = 'pending'), \
                 {held} \
                 FROM {t} o WHERE status <> 'sent'",
                now_ms = dialect.epoch_ms(now),
                created = dialect.epoch_ms("o.created_at"),
                // Held: pending events after their aggregate's first dead
                // one. Joined from the dead events' first seqs, which are
                // few, so it is one pass over the pending events; a search
                // for a dead predecessor of each pending event made the
                // count quadratic in an aggregate's backlog.
                held = if config.ordered {
                    format!(
                        "(SELECT count(*) FROM {t} p JOIN (SELECT aggregate_type, aggregate_id, \
                         min(seq) AS seq FROM {t} WHERE status = 'dead' \
                         GROUP BY aggregate_type, aggregate_id) d \
                         ON p.aggregate_type = d.aggregate_type AND p.aggregate_id = d.aggregate_id \
                         AND p.seq > d.seq WHERE p.status = 'pending')"
                    )
                } else {
                    "0".to_owned()
                },
            ),
            dead_events: format!(
                "SELECT id, aggregate_type, aggregate_id, event_type, attempts, last_error, \
                 {created} AS created_at_ms FROM {t} WHERE status = 'dead' ORDER BY seq LIMIT $1",
                created = dialect.epoch_ms("created_at"),
            ),
            requeue: format!("{requeue} AND id = $1"),
            requeue_all: requeue,
            discard: freeing_next(discard),
        }
    }
}

/// The inbox's statements.
#[derive(Debug)]
pub(crate) struct InboxSql {
    pub(crate) migration: std::sync::Arc<Migration>,
    pub(crate) record: String,
    /// Records a JSON array of message ids (`$2`) at once, returning
    /// those not recorded before.
    pub(crate) record_all: String,
    pub(crate) forget: String,
    /// Forgets consumer `$3`'s records older than `$1` ms, `$2` at most.
    pub(crate) forget_of: String,
    /// Counts one more delivery handed back untried for each of a JSON
    /// array of message ids (`$2`) of consumer `$1`.
    pub(crate) hand_back: String,
    /// The deliveries handed back untried of a JSON array of message ids
    /// (`$2`) of consumer `$1`, as (id, count) rows.
    pub(crate) handed_back: String,
    /// Forgets the counts of deliveries handed back older than `$1` ms.
    pub(crate) forget_handed_back: String,
    /// Forgets consumer `$2`'s counts of deliveries handed back older than
    /// `$1` ms.
    pub(crate) forget_handed_back_of: String,
    /// A statement that fails in a transaction a failed statement left
    /// aborted, where the database keeps such a state (PostgreSQL: its
    /// `COMMIT` rolls back and answers success all the same).
    pub(crate) still_open: Option<&'static str>,
    dialect: Dialect,
}

impl InboxSql {
    pub(crate) fn new(dialect: Dialect, table: &str) -> Self {
        let mut migrate = Vec::new();
        migrate.push(format!(
            "CREATE TABLE IF NOT EXISTS {table} (consumer TEXT NOT NULL, message_id TEXT NOT NULL, \
             processed_at {time} NOT NULL DEFAULT ({now}), PRIMARY KEY (consumer, message_id))",
            time = dialect.time_type(),
            now = dialect.now(),
        ));
        let indexes = vec![
            dialect.index(table, "processed", "(processed_at)"),
            // Each consumer forgets its own records, oldest first.
            dialect.index(table, "consumer_processed", "(consumer, processed_at)"),
        ];
        // Deliveries a consumer handed back to the broker untried (it was
        // stopping): the broker counts them as deliveries, the consumer's
        // tries do not.
        let handed = dialect.beside(table, "handed_back");
        migrate.push(format!(
            "CREATE TABLE IF NOT EXISTS {handed} (consumer TEXT NOT NULL, message_id TEXT NOT NULL, \
             deliveries BIGINT NOT NULL, handed_back_at {time} NOT NULL DEFAULT ({now}), \
             PRIMARY KEY (consumer, message_id))",
            time = dialect.time_type(),
            now = dialect.now(),
        ));
        Self {
            migration: std::sync::Arc::new(Migration {
                table: table.to_owned(),
                begin_again: dialect.migration_begin(),
                prelude: dialect.prelude(table),
                existed: dialect.existed(table),
                tables: migrate,
                columns: Vec::new(),
                indexes,
            }),
            // Grouped: PostgreSQL refuses an upsert that meets one row
            // twice (an id twice in the list).
            hand_back: format!(
                "INSERT INTO {handed} AS h (consumer, message_id, deliveries) \
                 SELECT $1, id, count(*) FROM {ids} WHERE true GROUP BY id \
                 ON CONFLICT (consumer, message_id) DO UPDATE \
                 SET deliveries = h.deliveries + excluded.deliveries, handed_back_at = {now}",
                ids = dialect.json_texts("$2"),
                now = dialect.now(),
            ),
            handed_back: format!(
                "SELECT message_id, deliveries FROM {handed} \
                 WHERE consumer = $1 AND message_id IN (SELECT id FROM {ids})",
                ids = dialect.json_texts("$2"),
            ),
            forget_handed_back: format!(
                "DELETE FROM {handed} WHERE handed_back_at < {cutoff}",
                cutoff = dialect.shifted('-', "$1"),
            ),
            forget_handed_back_of: format!(
                "DELETE FROM {handed} WHERE consumer = $2 AND handed_back_at < {cutoff}",
                cutoff = dialect.shifted('-', "$1"),
            ),
            record: format!(
                "INSERT INTO {table} (consumer, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING"
            ),
            // SQLite needs the `WHERE` to read `ON CONFLICT` as the
            // upsert's, not a join's.
            record_all: format!(
                "INSERT INTO {table} (consumer, message_id) SELECT $1, id FROM {ids} WHERE true \
                 ON CONFLICT DO NOTHING RETURNING message_id",
                ids = dialect.json_texts("$2"),
            ),
            forget: format!(
                "DELETE FROM {table} WHERE (consumer, message_id) IN (SELECT consumer, message_id \
                 FROM {table} WHERE processed_at < {cutoff} ORDER BY processed_at LIMIT $2)",
                cutoff = dialect.shifted('-', "$1"),
            ),
            forget_of: format!(
                "DELETE FROM {table} WHERE (consumer, message_id) IN (SELECT consumer, message_id \
                 FROM {table} WHERE consumer = $3 AND processed_at < {cutoff} \
                 ORDER BY processed_at LIMIT $2 {skip_locked})",
                cutoff = dialect.shifted('-', "$1"),
                skip_locked = dialect.skip_locked(),
            ),
            still_open: dialect.still_open(),
            dialect,
        }
    }

    /// The statement that begins a transaction in which no statement runs
    /// longer than `limit`, where the database can bound one.
    pub(crate) fn bounded_begin(&self, limit: Duration) -> Option<String> {
        self.dialect.bounded_begin(limit)
    }
}
