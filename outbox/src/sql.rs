//! The outbox's and the inbox's statements, in each database's dialect.
//!
//! Times are the database's own (`now()` in PostgreSQL, `julianday('now')`
//! in SQLite), never a relay's clock; durations are bound as milliseconds.

use crate::config::OutboxConfig;

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

    /// The column type of a point in time.
    const fn time_type(self) -> &'static str {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres => "TIMESTAMPTZ",
            #[cfg(feature = "sqlite")]
            Self::Sqlite => "INTEGER",
        }
    }

    /// `table` (maybe `schema.name`) and the name of its index `suffix`, as
    /// `CREATE INDEX` wants them.
    fn index(self, table: &str, suffix: &str) -> (String, String) {
        match (self, table.split_once('.')) {
            // SQLite: the index is named in the table's (attached) database
            // and the table without it.
            #[cfg(feature = "sqlite")]
            (Self::Sqlite, Some((schema, name))) => {
                (format!("{schema}.{name}_{suffix}"), name.to_owned())
            }
            _ => (
                format!("{}_{suffix}", table.replace('.', "_")),
                table.to_owned(),
            ),
        }
    }

    /// PostgreSQL fills the outbox's pages only half, so a claim (which
    /// changes no indexed column) writes each row's new version on its own
    /// page: a HOT update, which touches none of the table's four indexes.
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
    /// analyzed, 9 ms a claim against 167 ms.
    const fn claim_plan(self) -> Option<&'static str> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres => Some(
                "SELECT set_config('enable_bitmapscan', 'off', true), set_config('enable_sort', 'off', true)",
            ),
            #[cfg(feature = "sqlite")]
            Self::Sqlite => None,
        }
    }

    /// Statements run before creating the tables: PostgreSQL makes the
    /// schema (one instance at a time); SQLite's `schema` is an attached
    /// database, there already.
    fn prelude(self, table: &str) -> Vec<String> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres => {
                let mut prelude =
                    vec![format!("SELECT pg_advisory_xact_lock(hashtext('{table}'))")];
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

/// The outbox's statements, with its table in them.
#[derive(Debug)]
pub(crate) struct OutboxSql {
    pub(crate) migrate: Vec<String>,
    /// Whether the table has its `claim_id` column (1) or was made before
    /// it (0), and the statement that adds it.
    pub(crate) has_claim_id: String,
    pub(crate) add_claim_id: String,
    pub(crate) insert: String,
    pub(crate) claim: String,
    /// Planner settings the claim runs under, in its own transaction.
    pub(crate) claim_plan: Option<&'static str>,
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
        let mut migrate = dialect.prelude(t);
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
             sent_at {time})"
        ));
        migrate.extend(dialect.room_for_claims(t));
        for (suffix, columns, filter) in [
            (
                "unsent",
                "aggregate_type, aggregate_id, seq",
                "status <> 'sent'",
            ),
            ("due", "seq", "status = 'pending'"),
            ("sent", "sent_at", "status = 'sent'"),
        ] {
            let (index, on) = dialect.index(t, suffix);
            migrate.push(format!(
                "CREATE INDEX IF NOT EXISTS {index} ON {on} ({columns}) WHERE {filter}"
            ));
        }

        // Per-aggregate order: only the first unsent event of an aggregate
        // is publishable.
        let order = if config.ordered {
            format!(
                "AND NOT EXISTS (SELECT 1 FROM {t} e WHERE e.aggregate_type = o.aggregate_type \
                 AND e.aggregate_id = o.aggregate_id AND e.seq < o.seq AND e.status <> 'sent')"
            )
        } else {
            String::new()
        };
        // PostgreSQL lets several relays claim side by side; SQLite has one
        // writer at a time, so the statement alone is the claim.
        let skip_locked = match dialect {
            #[cfg(feature = "postgres")]
            Dialect::Postgres => "FOR UPDATE SKIP LOCKED",
            #[cfg(feature = "sqlite")]
            Dialect::Sqlite => "",
        };
        // `$1` is a comma-separated list of seqs. Every settle is fenced by
        // the claim that produced it: it changes a row only while the row
        // still carries that claim's id.
        let requeue = format!(
            "UPDATE {t} SET status = 'pending', attempts = 0, next_attempt_at = {now}, \
             last_error = NULL WHERE status = 'dead'"
        );
        let seqs = match dialect {
            #[cfg(feature = "postgres")]
            Dialect::Postgres => "seq = ANY(string_to_array($1, ',')::bigint[])".to_owned(),
            #[cfg(feature = "sqlite")]
            Dialect::Sqlite => "seq IN (SELECT value FROM json_each('[' || $1 || ']'))".to_owned(),
        };
        Self {
            migrate,
            has_claim_id: match dialect {
                #[cfg(feature = "postgres")]
                Dialect::Postgres => format!(
                    "SELECT count(*) FROM pg_attribute WHERE attrelid = '{t}'::regclass \
                     AND attname = 'claim_id' AND NOT attisdropped"
                ),
                #[cfg(feature = "sqlite")]
                Dialect::Sqlite => {
                    let (schema, name) = t.split_once('.').unwrap_or(("main", t));
                    format!(
                        "SELECT count(*) FROM pragma_table_info('{name}', '{schema}') \
                         WHERE name = 'claim_id'"
                    )
                }
            },
            add_claim_id: format!("ALTER TABLE {t} ADD COLUMN claim_id TEXT"),
            insert: match dialect {
                // A transaction-scoped lock per aggregate: a second
                // transaction writing the same aggregate waits for the first
                // to end before it takes its `seq`, so `seq` order is commit
                // order within an aggregate. The same statement asks PostgreSQL to wake the listening
                // relays once the transaction commits: no round trip of
                // its own.
                #[cfg(feature = "postgres")]
                Dialect::Postgres => format!(
                    "WITH aggregate AS (SELECT pg_advisory_xact_lock(hashtextextended($2 || '/' || $3, 0))), \
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
            claim_plan: dialect.claim_plan(),
            claim: format!(
                "UPDATE {t} SET claimed_until = {lease}, claim_id = $3 WHERE seq IN (SELECT o.seq FROM {t} o \
                 WHERE o.status = 'pending' AND o.next_attempt_at <= {now} \
                 AND (o.claimed_until IS NULL OR o.claimed_until < {now}) {order} \
                 ORDER BY o.seq LIMIT $1 {skip_locked}) \
                 RETURNING seq, id, aggregate_type, aggregate_id, event_type, payload, headers, \
                 {created} AS created_at_ms, attempts",
                lease = dialect.shifted('+', "$2"),
                created = dialect.epoch_ms("created_at"),
            ),
            sent: format!(
                "UPDATE {t} SET status = 'sent', sent_at = {now}, claimed_until = NULL, claim_id = NULL \
                 WHERE {seqs} AND claim_id = $2"
            ),
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
            discard: format!("DELETE FROM {t} WHERE id = $1 AND status = 'dead'"),
        }
    }
}

/// The inbox's statements.
#[derive(Debug)]
pub(crate) struct InboxSql {
    pub(crate) migrate: Vec<String>,
    pub(crate) record: String,
    /// Records a JSON array of message ids (`$2`) at once, returning
    /// those not recorded before.
    pub(crate) record_all: String,
    pub(crate) forget: String,
}

impl InboxSql {
    pub(crate) fn new(dialect: Dialect, table: &str) -> Self {
        let mut migrate = dialect.prelude(table);
        migrate.push(format!(
            "CREATE TABLE IF NOT EXISTS {table} (consumer TEXT NOT NULL, message_id TEXT NOT NULL, \
             processed_at {time} NOT NULL DEFAULT ({now}), PRIMARY KEY (consumer, message_id))",
            time = dialect.time_type(),
            now = dialect.now(),
        ));
        let (index, on) = dialect.index(table, "processed");
        migrate.push(format!(
            "CREATE INDEX IF NOT EXISTS {index} ON {on} (processed_at)"
        ));
        Self {
            migrate,
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
        }
    }
}
