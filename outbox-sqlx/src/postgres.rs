//! PostgreSQL: [`PgOutbox`] (schema and writer) and [`PgStore`] (the relay's store, with
//! LISTEN/NOTIFY wake-ups).
//!
//! # How it works
//! - **Write**: one statement per entry: an upsert of the aggregate's row
//!   (`INSERT … ON CONFLICT … DO UPDATE … RETURNING next_sequence`) feeding the entry's `INSERT`.
//!   The upsert locks the aggregate's row until the caller's transaction ends, so writers of one
//!   aggregate are serialized and sequences follow commit order.
//! - **Wake-ups** ([`NotifyMode`]): by default a statement-level trigger sends `NOTIFY <table>`,
//!   which PostgreSQL delivers on commit only; PostgreSQL serializes the commits of notifying
//!   transactions, so busy writers use [`NotifyMode::AfterCommit`] instead: the enqueue statement
//!   turns the trigger off for its transaction and [`PgOutbox::commit`] sends the `NOTIFY` after
//!   the commit, from a connection of its own. [`PgStore::listen`] wakes a relay on either.
//! - **Claim**: two statements, each its own transaction. (1) Lease up to `k` due, unleased
//!   aggregates (`FOR UPDATE SKIP LOCKED`, so relays never wait on each other; `k` adapts to how
//!   many entries recent claims found per aggregate). (2) With a fresh snapshot, read each leased
//!   aggregate's first `max_per_aggregate` unpublished entries through the partial index
//!   (`LATERAL`), take the due prefix (in SQL), note on the aggregate row how far its lease goes
//!   (`leased_through`; the lease statement set it to the last sequence written, so an aggregate
//!   whose entries were all taken is not written again), and release and park the aggregates
//!   with nothing to take. Entries are not written: an entry is processing while its
//!   aggregate's lease covers its sequence, so a claim writes rows per aggregate, not per entry.
//! - **Complete**: one statement: write each entry once (published, failed with its next
//!   attempt, or dead; released entries need no write) if its aggregate's lease is still the
//!   holder's and covers it, then lock those aggregates in key order (as writers lock them:
//!   byte order, `COLLATE "C"`, whatever the database's collation),
//!   lower their unpublished counts by what was published and release the holder's leases.
//!
//! A claim's second statement runs after the first has committed, so it sees every completion
//! that committed before the lease was taken, whatever the server's default isolation.
//! Entries written by the per-entry protocol of outbox-diesel and outbox-seaorm (status
//! `processing` with a lease on the entry) are understood: relays of the three adapters can share
//! one outbox.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use outbox_core::{
    ClaimRequest, Completion, DeadPolicy, Entry, EntryId, Error, Event, Lease, Maintenance, NewEntry, Requeue, Result,
    Stats, Status, Store, Timestamp, Wakeup,
};
use sqlx::Row;
use sqlx::postgres::{PgConnection, PgListener, PgPool, PgPoolOptions, PgRow};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::ClaimOptions;
use crate::config::Tables;
use crate::convert::{from_datetime, to_datetime};
use crate::error::{Db, map};
use crate::plan::{self, Key, NEVER};
use crate::schema::{self, Migration};

const COLUMNS: &str = "id, aggregate_type, aggregate_id, sequence, event_type, payload, content_type, headers::text, \
     status, attempts, created_at, available_at, published_at, last_error, lease_holder, lease_expires_at";

/// [`COLUMNS`] of the claim's `taken` rows (alias `e`).
const TAKEN: &str = "e.id, e.aggregate_type, e.aggregate_id, e.sequence, e.event_type, e.payload, e.content_type, \
     e.headers, e.status, e.attempts, e.created_at, e.available_at, e.published_at, e.last_error, e.lease_holder, \
     e.lease_expires_at";

/// Joined into an inserting statement: turns the migration's notify trigger off until the
/// transaction ends (the trigger reads `outbox.notify`), for [`NotifyMode::AfterCommit`].
const QUIET: &str = ", (SELECT set_config('outbox.notify', 'off', true)) AS quiet";

/// The SQL of one outbox, rendered once with its validated, quoted names.
struct Sql {
    enqueue: String,
    upsert_aggregates: String,
    insert_entries: String,
    /// `enqueue` and `insert_entries` turning the notify trigger off for their transaction.
    enqueue_quiet: String,
    insert_entries_quiet: String,
    lease: String,
    take: String,
    complete: String,
    purge: String,
    stats: String,
    requeue_all: String,
    requeue_ids: String,
    requeue_aggregate: String,
    entry: String,
}

impl Sql {
    fn new(tables: &Tables) -> Self {
        let (pending, processing, published, failed, dead) = (
            Status::Pending.as_str(),
            Status::Processing.as_str(),
            Status::Published.as_str(),
            Status::Failed.as_str(),
            Status::Dead.as_str(),
        );
        // Statuses an entry can have while a relay processes it: outbox-sqlx leaves the entry's
        // own status as it was (pending, failed); other protocols write processing.
        let open = format!("('{pending}', '{failed}', '{processing}')");
        // Entry `e` is processing under the lease of its aggregate `a` (joined).
        let leased = format!("(e.status IN {open} AND a.lease_holder IS NOT NULL AND e.sequence <= a.leased_through)");
        let requeue = |filter: &str| {
            format!(
                "WITH r AS (UPDATE {{entries}} SET status = '{pending}', attempts = 0, available_at = $1, \
                 lease_holder = NULL, lease_expires_at = NULL WHERE status = '{dead}' AND {filter} \
                 RETURNING aggregate_type, aggregate_id), \
                 a AS (UPDATE {{aggregates}} a SET available_at = LEAST(a.available_at, $1) \
                 FROM (SELECT DISTINCT aggregate_type, aggregate_id FROM r) k \
                 WHERE a.aggregate_type = k.aggregate_type AND a.aggregate_id = k.aggregate_id) \
                 SELECT count(*) FROM r"
            )
        };
        let enqueue = |quiet: &str| {
            format!(
                "WITH agg AS (INSERT INTO {{aggregates}} AS a \
                 (aggregate_type, aggregate_id, next_sequence, unpublished, available_at) VALUES ($2, $3, 1, 1, $9) \
                 ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET next_sequence = a.next_sequence + 1, \
                 unpublished = a.unpublished + 1, available_at = LEAST(a.available_at, EXCLUDED.available_at) \
                 RETURNING next_sequence) \
                 INSERT INTO {{entries}} (id, aggregate_type, aggregate_id, sequence, event_type, payload, \
                 content_type, headers, status, attempts, created_at, available_at) \
                 SELECT $1, $2, $3, agg.next_sequence, $4, $5, $6, $7::jsonb, '{pending}', 0, $8, $9 FROM agg{quiet}"
            )
        };
        let insert_entries = |quiet: &str| {
            format!(
                "INSERT INTO {{entries}} (id, aggregate_type, aggregate_id, sequence, event_type, payload, \
                 content_type, headers, status, attempts, created_at, available_at) \
                 SELECT u.id, u.t, u.i, u.s, u.ev, u.p, u.ct, u.h::jsonb, '{pending}', 0, $9, u.av \
                 FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::bytea[], $7::text[], \
                 $8::text[], $10::timestamptz[]) AS u(id, t, i, s, ev, p, ct, h, av){quiet}"
            )
        };
        let r = |sql: &str| tables.render(sql, '"', true);
        Sql {
            enqueue: r(&enqueue("")),
            enqueue_quiet: r(&enqueue(QUIET)),
            upsert_aggregates: r("INSERT INTO {aggregates} AS a \
                 (aggregate_type, aggregate_id, next_sequence, unpublished, available_at) \
                 SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $3::int8[], $4::timestamptz[]) \
                 ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE \
                 SET next_sequence = a.next_sequence + EXCLUDED.next_sequence, \
                 unpublished = a.unpublished + EXCLUDED.unpublished, \
                 available_at = LEAST(a.available_at, EXCLUDED.available_at) \
                 RETURNING aggregate_type, aggregate_id, next_sequence"),
            insert_entries: r(&insert_entries("")),
            insert_entries_quiet: r(&insert_entries(QUIET)),
            // The locked rows are updated through their `ctid`s (one TID scan): joined by key or
            // ctid, the planner may hash the whole aggregates table instead.
            // `leased_through` starts at the last sequence written: when the claim then takes all
            // of an aggregate's entries (the common case when aggregates have few), it need not
            // write the row again.
            lease: r(
                "UPDATE {aggregates} SET lease_holder = $1, lease_expires_at = $2, leased_through = next_sequence \
                 WHERE ctid = ANY(ARRAY(SELECT ctid FROM {aggregates} \
                 WHERE available_at <= $3 AND unpublished > 0 \
                 AND (lease_expires_at IS NULL OR lease_expires_at <= $3) \
                 ORDER BY available_at LIMIT $4 FOR UPDATE SKIP LOCKED)) \
                 RETURNING aggregate_type, aggregate_id, available_at",
            ),
            take: r(&format!(
                // $1/$2 the leased aggregates in visiting order, $3 now, $4 whether dead entries
                // block, $5 entries per aggregate, $6 entries in all, $7 the holder, $8 NEVER.
                // `lk` locks the aggregates the holder leases, in key order as writers lock them
                // (the lateral visits the keys in order; byte order, as writers sort keys in Rust,
                // whatever the database's collation). `heads`: each one's first unpublished
                // entries (one all-NULL row if it has none); `ok` stays true along its due prefix;
                // `took` keeps the first $6 due rows. `verdict` per aggregate: how far the lease
                // goes (written only if not what the lease statement set), or when to visit it
                // again. An entry another protocol marked `processing` under a lapsed lease is the
                // new lease's now: `adopt` clears that mark, so the old holder's late completion
                // (which matches on it) finds nothing. Every join is a lateral or an index probe:
                // no CTE is joined to another (their row estimates are guesses, and a nested loop
                // over two of them is quadratic).
                "WITH k AS (SELECT t, i, ord FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(t, i, ord)), \
                 lk AS MATERIALIZED (SELECT k.ord, k.t, k.i FROM (SELECT t, i, ord FROM k ORDER BY t COLLATE \"C\", i COLLATE \"C\") k \
                 CROSS JOIN LATERAL (SELECT 1 FROM {{aggregates}} WHERE aggregate_type = k.t AND aggregate_id = k.i \
                 AND lease_holder = $7 FOR UPDATE) a), \
                 heads AS (SELECT lk.ord, lk.t, lk.i, e.*, COALESCE(bool_and(e.status <> '{dead}' \
                 AND (e.status = '{processing}' OR e.available_at <= $3)) OVER w, false) AS ok, row_number() OVER w AS rn \
                 FROM lk LEFT JOIN LATERAL (SELECT {COLUMNS} FROM {{entries}} x \
                 WHERE x.aggregate_type = lk.t AND x.aggregate_id = lk.i AND x.status <> '{published}' \
                 AND ($4 OR x.status <> '{dead}') ORDER BY x.sequence LIMIT $5) e ON true \
                 WINDOW w AS (PARTITION BY lk.ord ORDER BY e.sequence)), \
                 marked AS MATERIALIZED (SELECT h.*, h.ok AND count(*) FILTER (WHERE h.ok) \
                 OVER (ORDER BY h.ord, h.sequence ROWS UNBOUNDED PRECEDING) <= $6 AS took FROM heads h), \
                 verdict AS (SELECT t, i, max(sequence) FILTER (WHERE took) AS through, \
                 CASE WHEN bool_or(took) OR bool_or(rn = 1 AND ok) THEN NULL \
                 WHEN bool_or(rn = 1 AND (id IS NULL OR status = '{dead}')) THEN $8 \
                 ELSE max(available_at) FILTER (WHERE rn = 1) END AS park FROM marked GROUP BY t, i), \
                 upd AS (UPDATE {{aggregates}} a SET leased_through = v.through, \
                 lease_holder = CASE WHEN v.through IS NULL THEN NULL ELSE a.lease_holder END, \
                 lease_expires_at = CASE WHEN v.through IS NULL THEN NULL ELSE a.lease_expires_at END, \
                 available_at = COALESCE(v.park, a.available_at) \
                 FROM verdict v WHERE a.aggregate_type = v.t AND a.aggregate_id = v.i \
                 AND (v.through IS NULL OR v.through IS DISTINCT FROM a.leased_through)), \
                 adopt AS (UPDATE {{entries}} x SET status = '{pending}', lease_holder = NULL, lease_expires_at = NULL \
                 FROM marked m WHERE x.id = m.id AND m.took AND m.status = '{processing}' AND x.status = '{processing}') \
                 SELECT {TAKEN} FROM marked e WHERE e.took ORDER BY e.ord, e.sequence"
            )),
            complete: r(&format!(
                // $1 ids, $2 fates (p published, r retry, d dead, x released), $3 retry times,
                // $4 errors, $5 holder, $6 now, $7 NEVER. `upd` writes each entry once, if it is
                // in the leased prefix of an aggregate the holder still leases (a probe of the
                // aggregate's row per entry; `OFFSET 0` keeps it a probe). Released entries need
                // no write (unless another protocol marked them processing); `rel` finds their
                // aggregates. `lk` then locks the aggregates in key (byte) order, as writers do,
                // and the last statement lowers each one's unpublished count by what was
                // published and, if the holder still leases it, releases it. No CTE is joined to
                // another (their row estimates are guesses; a nested loop over two is quadratic).
                "WITH c AS MATERIALIZED (SELECT * FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::text[]) \
                 AS c(id, fate, at, err)), \
                 upd AS (UPDATE {{entries}} e SET \
                 status = CASE c.fate WHEN 'p' THEN '{published}' WHEN 'r' THEN '{failed}' WHEN 'd' THEN '{dead}' \
                 ELSE '{pending}' END, \
                 published_at = CASE WHEN c.fate = 'p' THEN $6 ELSE e.published_at END, \
                 attempts = e.attempts + CASE WHEN c.fate IN ('r', 'd') THEN 1 ELSE 0 END, \
                 available_at = CASE WHEN c.fate = 'r' THEN c.at ELSE e.available_at END, \
                 last_error = CASE WHEN c.fate IN ('r', 'd') THEN c.err ELSE e.last_error END, \
                 lease_holder = NULL, lease_expires_at = NULL \
                 FROM c WHERE e.id = c.id AND e.status IN {open} AND (c.fate <> 'x' OR e.status = '{processing}') \
                 AND EXISTS (SELECT 1 FROM {{aggregates}} a WHERE a.aggregate_type = e.aggregate_type \
                 AND a.aggregate_id = e.aggregate_id AND a.lease_holder = $5 AND e.sequence <= a.leased_through \
                 OFFSET 0) \
                 RETURNING e.aggregate_type AS t, e.aggregate_id AS i, c.fate, c.at), \
                 rel AS (SELECT x.aggregate_type AS t, x.aggregate_id AS i FROM c JOIN {{entries}} x ON x.id = c.id \
                 WHERE c.fate = 'x'), \
                 g AS (SELECT t, i, sum(p) AS n, min(at) AS at FROM ( \
                 SELECT t, i, CASE WHEN fate = 'p' THEN 1 ELSE 0 END AS p, at FROM upd \
                 UNION ALL SELECT t, i, 0, NULL FROM rel) x GROUP BY t, i), \
                 lk AS (SELECT g.* FROM (SELECT t, i, n, at FROM g ORDER BY t COLLATE \"C\", i COLLATE \"C\") g CROSS JOIN LATERAL ( \
                 SELECT 1 FROM {{aggregates}} WHERE aggregate_type = g.t AND aggregate_id = g.i FOR UPDATE) a) \
                 UPDATE {{aggregates}} a SET unpublished = a.unpublished - lk.n, \
                 available_at = CASE WHEN a.unpublished - lk.n <= 0 THEN $7 \
                 WHEN a.lease_holder = $5 THEN COALESCE(lk.at, $6) ELSE a.available_at END, \
                 lease_holder = CASE WHEN a.lease_holder = $5 THEN NULL ELSE a.lease_holder END, \
                 lease_expires_at = CASE WHEN a.lease_holder = $5 THEN NULL ELSE a.lease_expires_at END, \
                 leased_through = CASE WHEN a.lease_holder = $5 THEN NULL ELSE a.leased_through END \
                 FROM lk WHERE a.aggregate_type = lk.t AND a.aggregate_id = lk.i"
            )),
            purge: r(&format!(
                "DELETE FROM {{entries}} WHERE id IN (SELECT id FROM {{entries}} \
                 WHERE status = '{published}' AND published_at < $1 ORDER BY published_at LIMIT $2)"
            )),
            stats: r(&format!(
                "SELECT count(*) FILTER (WHERE s = '{pending}'), count(*) FILTER (WHERE s = '{processing}'), \
                 count(*) FILTER (WHERE s = '{published}'), count(*) FILTER (WHERE s = '{failed}'), \
                 count(*) FILTER (WHERE s = '{dead}'), \
                 min(created_at) FILTER (WHERE s IN ('{pending}', '{processing}', '{failed}')) \
                 FROM (SELECT CASE WHEN {leased} THEN '{processing}' ELSE e.status END AS s, e.created_at \
                 FROM {{entries}} e LEFT JOIN {{aggregates}} a \
                 ON a.aggregate_type = e.aggregate_type AND a.aggregate_id = e.aggregate_id) x"
            )),
            requeue_all: r(&requeue("TRUE")),
            requeue_ids: r(&requeue("id = ANY($2)")),
            requeue_aggregate: r(&requeue("aggregate_type = $2 AND aggregate_id = $3")),
            entry: r(&format!(
                "SELECT e.id, e.aggregate_type, e.aggregate_id, e.sequence, e.event_type, e.payload, e.content_type, \
                 e.headers::text, CASE WHEN {leased} THEN '{processing}' ELSE e.status END, e.attempts, e.created_at, \
                 e.available_at, e.published_at, e.last_error, \
                 CASE WHEN {leased} THEN a.lease_holder ELSE e.lease_holder END, \
                 CASE WHEN {leased} THEN a.lease_expires_at ELSE e.lease_expires_at END \
                 FROM {{entries}} e LEFT JOIN {{aggregates}} a \
                 ON a.aggregate_type = e.aggregate_type AND a.aggregate_id = e.aggregate_id WHERE e.id = $1"
            )),
        }
    }
}

/// The outbox in PostgreSQL: its tables, its schema, and the writer applications call inside
/// their own transactions. Cheap to clone.
///
/// ```no_run
/// use outbox_core::NewEntry;
/// use outbox_sqlx::{PgOutbox, Tables};
///
/// # async fn run(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// let outbox = PgOutbox::new(Tables::new("outbox")?);
/// outbox.migrate(&pool).await?;
///
/// let mut tx = pool.begin().await?;
/// sqlx::query("INSERT INTO orders (id) VALUES ($1)").bind("o-1").execute(&mut *tx).await?;
/// let entry = NewEntry::builder("order", "o-1", "order.placed").json(r#"{"total":42}"#).build()?;
/// outbox.enqueue(&mut *tx, &entry).await?;
/// tx.commit().await?; // the entry is visible to relays now, never before
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PgOutbox {
    tables: Tables,
    sql: Arc<Sql>,
    notifier: Option<Arc<Notifier>>,
}

impl fmt::Debug for PgOutbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgOutbox")
            .field("tables", &self.tables)
            .field("notify", &self.notify_mode())
            .finish_non_exhaustive()
    }
}

/// How a commit that wrote entries wakes the relays listening ([`PgStore::listen`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotifyMode {
    /// The migration's trigger sends `NOTIFY` inside the writer's transaction; PostgreSQL
    /// delivers it on commit only. Nothing to call. PostgreSQL serializes the commits of
    /// notifying transactions (they take a database-wide lock through their commit), so concurrent
    /// writers stop sharing WAL flushes: fine up to a few hundred commits per second.
    Trigger,
    /// [`PgOutbox::enqueue`] turns the trigger off for its transaction and the application
    /// commits with [`PgOutbox::commit`] (or calls [`PgOutbox::notify`] after its own commit),
    /// which sends one `NOTIFY` from a connection of the outbox's own, outside the writer's
    /// transaction (`synchronous_commit = off`; bursts coalesce). Writers' commits stay
    /// concurrent. A commit made without either still publishes, a relay poll interval later.
    AfterCommit,
}

/// The after-commit `NOTIFY` sender: a task started on first use, with one connection of its
/// own; signals arriving while it sends coalesce into one more `NOTIFY`.
struct Notifier {
    signal: tokio::sync::mpsc::Sender<()>,
    start: std::sync::Mutex<Option<(tokio::sync::mpsc::Receiver<()>, PgPool, String)>>,
}

impl Notifier {
    fn new(pool: &PgPool, channel: &str) -> Self {
        let options = pool.connect_options().as_ref().clone().options([("synchronous_commit", "off")]);
        let own = PgPoolOptions::new().max_connections(1).connect_lazy_with(options);
        let (signal, rx) = tokio::sync::mpsc::channel(1);
        Notifier { signal, start: std::sync::Mutex::new(Some((rx, own, channel.to_string()))) }
    }

    fn notify(&self) {
        let start = self.start.lock().map(|mut s| s.take()).unwrap_or(None);
        if let Some((mut rx, pool, channel)) = start {
            // Outside a runtime there is no task to run it; relays still poll.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    // Ends when every clone of the outbox is gone (the sender with them).
                    while rx.recv().await.is_some() {
                        // A failure costs a wake-up, not an entry: relays poll meanwhile.
                        let _ = sqlx::query("SELECT pg_notify($1, '')").bind(&channel).execute(&pool).await;
                    }
                    pool.close().await;
                });
            }
        }
        // Full: a NOTIFY is already due and will cover this commit too.
        let _ = self.signal.try_send(());
    }
}

impl PgOutbox {
    /// The outbox in `tables` (already validated), waking relays with [`NotifyMode::Trigger`].
    pub fn new(tables: Tables) -> Self {
        let sql = Arc::new(Sql::new(&tables));
        PgOutbox { tables, sql, notifier: None }
    }

    /// Switches to [`NotifyMode::AfterCommit`]: `NOTIFY`s go out after commit from a connection
    /// opened with `pool`'s options (not taken from `pool`). Commit with [`PgOutbox::commit`].
    ///
    /// ```no_run
    /// # use outbox_core::NewEntry;
    /// # use outbox_sqlx::{PgOutbox, Tables};
    /// # async fn run(pool: sqlx::PgPool, entry: NewEntry) -> Result<(), Box<dyn std::error::Error>> {
    /// let outbox = PgOutbox::new(Tables::new("outbox")?).notify_after_commit(&pool);
    /// let mut tx = pool.begin().await?;
    /// outbox.enqueue(&mut *tx, &entry).await?;
    /// outbox.commit(tx).await?; // commits, then wakes listening relays
    /// # Ok(()) }
    /// ```
    pub fn notify_after_commit(mut self, pool: &PgPool) -> Self {
        self.notifier = Some(Arc::new(Notifier::new(pool, self.tables.name())));
        self
    }

    /// How commits wake relays.
    pub fn notify_mode(&self) -> NotifyMode {
        if self.notifier.is_some() { NotifyMode::AfterCommit } else { NotifyMode::Trigger }
    }

    /// Commits `tx`, then (under [`NotifyMode::AfterCommit`]) wakes listening relays. Under
    /// [`NotifyMode::Trigger`] it is `tx.commit()`.
    pub async fn commit(&self, tx: sqlx::Transaction<'_, sqlx::Postgres>) -> Result<()> {
        tx.commit().await.map_err(|e| self.err("committing", e))?;
        self.notify();
        Ok(())
    }

    /// Wakes listening relays now, under [`NotifyMode::AfterCommit`]: call it after committing
    /// entries some other way than [`PgOutbox::commit`]. Returns at once (the `NOTIFY` is sent by a
    /// background task; needs a tokio runtime). Does nothing under [`NotifyMode::Trigger`].
    pub fn notify(&self) {
        if let Some(n) = &self.notifier {
            n.notify();
        }
    }

    /// The tables.
    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    /// The NOTIFY channel relays listen on: the table's name.
    pub fn channel(&self) -> &str {
        self.tables.name()
    }

    /// The migrations for these tables, rendered, in order: run them with your own tool, or call
    /// [`PgOutbox::migrate`].
    pub fn migrations(&self) -> Vec<Migration> {
        schema::render(&self.tables, schema::raw::POSTGRES, '"', true)
    }

    /// Creates the tables, indexes and the notify trigger if they are missing (idempotent).
    pub async fn migrate(&self, pool: &PgPool) -> Result<()> {
        let mut conn = pool.acquire().await.map_err(|e| self.err("migrate", e))?;
        for m in self.migrations() {
            sqlx::raw_sql(&m.sql).execute(&mut *conn).await.map_err(|e| self.err("migrate", e))?;
        }
        Ok(())
    }

    /// Writes `entry` with the caller's connection (pass `&mut *tx` for a `sqlx::Transaction`), so it commits or rolls back with the caller's changes. Never commits.
    ///
    /// The entry gets the next sequence of its aggregate. The aggregate's row stays locked until
    /// the transaction ends, so writers of one aggregate are serialized and sequences follow
    /// commit order. A duplicate id fails with [`ErrorKind::Validation`](outbox_core::ErrorKind)
    /// (and, as any failed statement in PostgreSQL, aborts the transaction).
    pub async fn enqueue(&self, conn: &mut PgConnection, entry: &NewEntry) -> Result<()> {
        let now = Timestamp::now();
        let sql = if self.notifier.is_some() { &self.sql.enqueue_quiet } else { &self.sql.enqueue };
        sqlx::query(sql)
            .bind(Uuid::from_u128(entry.id().as_u128()))
            .bind(entry.aggregate_type())
            .bind(entry.aggregate_id())
            .bind(entry.event_type())
            .bind(entry.payload().as_bytes())
            .bind(entry.content_type())
            .bind(plan::headers_to_json(entry.headers()))
            .bind(to_datetime(now))
            .bind(to_datetime(plan::available_at(entry, now)))
            .execute(conn)
            .await
            .map_err(|e| self.err("enqueue", e))?;
        Ok(())
    }

    /// Writes many entries with the caller's connection in two statements: one upsert of their
    /// aggregates (in key order, so concurrent batch writers cannot deadlock) and one multi-row
    /// insert. Entries of one aggregate get consecutive sequences in slice order.
    pub async fn enqueue_batch(&self, conn: &mut PgConnection, entries: &[NewEntry]) -> Result<()> {
        match entries {
            [] => return Ok(()),
            [one] => return self.enqueue(conn, one).await,
            _ => {}
        }
        let now = Timestamp::now();
        let groups = plan::group_by_aggregate(entries);
        let mut types = Vec::with_capacity(groups.len());
        let mut ids = Vec::with_capacity(groups.len());
        let mut counts = Vec::with_capacity(groups.len());
        let mut avail = Vec::with_capacity(groups.len());
        for ((t, i), members) in &groups {
            types.push(t.as_str());
            ids.push(i.as_str());
            counts.push(members.len() as i64);
            let first_due = members.iter().map(|&m| plan::available_at(&entries[m], now)).min().unwrap_or(now);
            avail.push(to_datetime(first_due));
        }
        let rows = sqlx::query(&self.sql.upsert_aggregates)
            .bind(&types)
            .bind(&ids)
            .bind(&counts)
            .bind(&avail)
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| self.err("enqueue_batch", e))?;
        let mut last: HashMap<Key, i64> = HashMap::with_capacity(rows.len());
        for row in rows {
            let key: Key = (
                row.try_get(0).map_err(|e| self.err("enqueue_batch", e))?,
                row.try_get(1).map_err(|e| self.err("enqueue_batch", e))?,
            );
            last.insert(key, row.try_get(2).map_err(|e| self.err("enqueue_batch", e))?);
        }
        let mut sequence = vec![0i64; entries.len()];
        for (key, members) in &groups {
            let top = last.get(key).copied().unwrap_or(members.len() as i64);
            let first = top - members.len() as i64 + 1;
            for (n, &m) in members.iter().enumerate() {
                sequence[m] = first + n as i64;
            }
        }
        let n = entries.len();
        let (mut e_ids, mut e_types, mut e_aggs, mut e_events) =
            (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        let (mut e_payloads, mut e_cts, mut e_headers, mut e_avail) =
            (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        for e in entries {
            e_ids.push(Uuid::from_u128(e.id().as_u128()));
            e_types.push(e.aggregate_type());
            e_aggs.push(e.aggregate_id());
            e_events.push(e.event_type());
            e_payloads.push(e.payload().as_bytes());
            e_cts.push(e.content_type());
            e_headers.push(plan::headers_to_json(e.headers()));
            e_avail.push(to_datetime(plan::available_at(e, now)));
        }
        let sql = if self.notifier.is_some() { &self.sql.insert_entries_quiet } else { &self.sql.insert_entries };
        sqlx::query(sql)
            .bind(&e_ids)
            .bind(&e_types)
            .bind(&e_aggs)
            .bind(&sequence)
            .bind(&e_events)
            .bind(&e_payloads)
            .bind(&e_cts)
            .bind(&e_headers)
            .bind(to_datetime(now))
            .bind(&e_avail)
            .execute(&mut *conn)
            .await
            .map_err(|e| self.err("enqueue_batch", e))?;
        Ok(())
    }

    /// A store over `pool` for relays and operators.
    pub fn store(&self, pool: PgPool) -> PgStore {
        PgStore::new(pool, self.clone())
    }

    fn err(&self, what: &str, e: sqlx::Error) -> Error {
        map(Db::Postgres, what, self.tables.name(), e)
    }
}

/// The relay's side of a PostgreSQL outbox: [`Store`] and [`Maintenance`] over a pool.
/// Cheap to clone (clones share the pool).
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    outbox: PgOutbox,
    options: ClaimOptions,
    density: Arc<plan::Density>,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore").field("tables", &self.outbox.tables).field("options", &self.options).finish()
    }
}

fn decode(table: &str, row: &PgRow) -> std::result::Result<Entry, Error> {
    let err = |e: sqlx::Error| map(Db::Postgres, "reading an entry", table, e);
    let id: Uuid = row.try_get(0).map_err(err)?;
    let payload: Vec<u8> = row.try_get(5).map_err(err)?;
    let headers: String = row.try_get(7).map_err(err)?;
    let status: String = row.try_get(8).map_err(err)?;
    let attempts: i32 = row.try_get(9).map_err(err)?;
    let published_at: Option<OffsetDateTime> = row.try_get(12).map_err(err)?;
    let holder: Option<String> = row.try_get(14).map_err(err)?;
    let expires: Option<OffsetDateTime> = row.try_get(15).map_err(err)?;
    Ok(Entry {
        id: EntryId::from_u128(id.as_u128()),
        aggregate_type: row.try_get(1).map_err(err)?,
        aggregate_id: row.try_get(2).map_err(err)?,
        sequence: row.try_get(3).map_err(err)?,
        event_type: row.try_get(4).map_err(err)?,
        payload: payload.into(),
        content_type: row.try_get(6).map_err(err)?,
        headers: plan::headers_from_json(table, &headers)?,
        status: plan::status(table, &status)?,
        attempts: u32::try_from(attempts).unwrap_or(0),
        created_at: from_datetime(row.try_get(10).map_err(err)?),
        available_at: from_datetime(row.try_get(11).map_err(err)?),
        published_at: published_at.map(from_datetime),
        last_error: row.try_get(13).map_err(err)?,
        lease: match (holder, expires) {
            (Some(holder), Some(expires)) => Some(Lease { holder, expires_at: from_datetime(expires) }),
            _ => None,
        },
    })
}

impl PgStore {
    /// A store for `outbox` over `pool`, with default [`ClaimOptions`].
    pub fn new(pool: PgPool, outbox: PgOutbox) -> Self {
        PgStore { pool, outbox, options: ClaimOptions::default(), density: Arc::default() }
    }

    /// Uses `options` for claims.
    pub fn with_options(mut self, options: ClaimOptions) -> Self {
        self.options = options;
        self
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The outbox (tables and writer).
    pub fn outbox(&self) -> &PgOutbox {
        &self.outbox
    }

    fn err(&self, what: &str, e: sqlx::Error) -> Error {
        self.outbox.err(what, e)
    }

    /// Starts a task that `LISTEN`s on the outbox's channel and calls [`Wakeup::wake`] for each
    /// commit that wrote entries, so the relay publishes within milliseconds instead of a poll
    /// interval later. Pass the relay's handle ([`outbox_core::Relay::wakeup`]).
    ///
    /// The task holds one connection of its own (opened with the pool's options, not taken from
    /// the pool). When the connection drops it wakes the relay (notifications may have been missed;
    /// the relay keeps polling meanwhile) and listens again with back-off (100 ms doubling to
    /// 5 s). It stops when the returned [`Listener`] is dropped or stopped.
    ///
    /// # Panics
    /// Outside a tokio runtime (it spawns a task there, as `tokio::spawn` does).
    pub fn listen(&self, wakeup: Wakeup) -> Listener {
        // A pool of one connection of its own, so listening never takes a connection the relay
        // or the application needs.
        let pool =
            PgPoolOptions::new().max_connections(1).connect_lazy_with(self.pool.connect_options().as_ref().clone());
        let channel = self.outbox.channel().to_string();
        let task = tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                match PgListener::connect_with(&pool).await {
                    Ok(mut listener) => {
                        if listener.listen(&channel).await.is_ok() {
                            backoff = Duration::from_millis(100);
                            // Anything committed while we were not listening is picked up now.
                            wakeup.wake();
                            loop {
                                match listener.try_recv().await {
                                    Ok(Some(_)) => wakeup.wake(),
                                    // The connection dropped and was re-established (LISTEN
                                    // again); notifications in between may be lost: poll once.
                                    Ok(None) => wakeup.wake(),
                                    Err(_) => break,
                                }
                            }
                        }
                    }
                    Err(sqlx::Error::PoolClosed) => return,
                    Err(_) => {}
                }
                // Cannot listen (server down?): the relay keeps polling; try again later.
                wakeup.wake();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
        Listener { task }
    }
}

/// The LISTEN task of [`PgStore::listen`]; stops when dropped.
#[derive(Debug)]
pub struct Listener {
    task: tokio::task::JoinHandle<()>,
}

impl Listener {
    /// Stops listening.
    pub fn stop(self) {}

    /// Whether the task is still running (it ends only when stopped or the pool is closed).
    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Store for PgStore {
    async fn claim(&self, request: &ClaimRequest<'_>) -> Result<Vec<Entry>> {
        let what = "claiming entries";
        let sql = &self.outbox.sql;
        let table = self.outbox.tables.name();
        let k = self.density.aggregates_for(self.options.aggregates_per_claim, request);
        let now = to_datetime(request.now);
        // 1. Lease up to k due, unleased aggregates (committed at once: SKIP LOCKED never waits).
        let mut leased: Vec<(String, String, OffsetDateTime)> = sqlx::query_as(&sql.lease)
            .bind(request.holder)
            .bind(to_datetime(request.lease_until))
            .bind(now)
            .bind(k as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(what, e))?;
        if leased.is_empty() {
            return Ok(Vec::new());
        }
        // Visit the longest-waiting aggregates first, as the lease query chose them.
        leased.sort_by_key(|a| a.2);
        let (types, ids): (Vec<&str>, Vec<&str>) = leased.iter().map(|(t, i, _)| (t.as_str(), i.as_str())).unzip();
        // 2. A fresh snapshot (it sees every completion that committed before step 1 locked the
        //    aggregates): take each aggregate's due prefix, note it on the aggregate
        //    (`leased_through`), release and park the aggregates with nothing to take.
        let rows = sqlx::query(&sql.take)
            .bind(&types)
            .bind(&ids)
            .bind(now)
            .bind(request.on_dead == DeadPolicy::Block)
            .bind(request.max_per_aggregate as i64)
            .bind(i64::try_from(request.max_entries).unwrap_or(i64::MAX))
            .bind(request.holder)
            .bind(to_datetime(NEVER))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(what, e))?;
        let lease = Lease { holder: request.holder.to_string(), expires_at: request.lease_until };
        let entries = rows
            .iter()
            .map(|row| {
                let mut entry = decode(table, row)?;
                // Stored pending or failed (or processing under a lapsed lease of another
                // protocol): processing now, under this lease.
                let from = if entry.status == Status::Processing {
                    entry.status.apply(Event::LeaseExpired)?
                } else {
                    entry.status
                };
                entry.status = from.apply(Event::Claim)?;
                entry.lease = Some(lease.clone());
                Ok(entry)
            })
            .collect::<Result<Vec<Entry>>>()?;
        // Rows come grouped by aggregate.
        let aggregates = entries
            .windows(2)
            .filter(|w| (&w[0].aggregate_type, &w[0].aggregate_id) != (&w[1].aggregate_type, &w[1].aggregate_id))
            .count()
            + usize::from(!entries.is_empty());
        self.density.observe(entries.len(), aggregates);
        Ok(entries)
    }

    async fn complete(&self, completion: &Completion) -> Result<()> {
        if completion.is_empty() {
            return Ok(());
        }
        let n = completion.len();
        let (mut ids, mut fates, mut at, mut errors) =
            (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        let mut push = |id: &EntryId, fate: &'static str, when: Option<Timestamp>, error: Option<&str>| {
            ids.push(Uuid::from_u128(id.as_u128()));
            fates.push(fate);
            at.push(when.map(to_datetime));
            errors.push(error.map(str::to_owned));
        };
        for id in &completion.published {
            push(id, "p", None, None);
        }
        for r in &completion.retry {
            push(&r.id, "r", Some(r.at), Some(&r.error));
        }
        for d in &completion.dead {
            push(&d.id, "d", None, Some(&d.error));
        }
        for id in &completion.released {
            push(id, "x", None, None);
        }
        // One statement: entries of aggregates the holder no longer leases are left alone, and
        // the aggregates' counts come from the rows it actually changed.
        sqlx::query(&self.outbox.sql.complete)
            .bind(&ids)
            .bind(&fates)
            .bind(&at)
            .bind(&errors)
            .bind(&completion.holder)
            .bind(to_datetime(completion.now))
            .bind(to_datetime(NEVER))
            .execute(&self.pool)
            .await
            .map_err(|e| self.err("completing a batch", e))?;
        Ok(())
    }
}

impl Maintenance for PgStore {
    async fn purge_published(&self, before: Timestamp, limit: usize) -> Result<u64> {
        let done = sqlx::query(&self.outbox.sql.purge)
            .bind(to_datetime(before))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .execute(&self.pool)
            .await
            .map_err(|e| self.err("purging published entries", e))?;
        Ok(done.rows_affected())
    }

    async fn stats(&self, now: Timestamp) -> Result<Stats> {
        let (pending, processing, published, failed, dead, oldest): (i64, i64, i64, i64, i64, Option<OffsetDateTime>) =
            sqlx::query_as(&self.outbox.sql.stats)
                .fetch_one(&self.pool)
                .await
                .map_err(|e| self.err("reading stats", e))?;
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        Ok(Stats {
            pending: count(pending),
            processing: count(processing),
            published: count(published),
            failed: count(failed),
            dead: count(dead),
            oldest_unpublished_age: oldest.map(|o| now.saturating_duration_since(from_datetime(o))),
        })
    }

    async fn requeue_dead(&self, which: Requeue<'_>, now: Timestamp) -> Result<u64> {
        let sql = &self.outbox.sql;
        let now = to_datetime(now);
        let query = match which {
            Requeue::All => sqlx::query_scalar(&sql.requeue_all).bind(now),
            Requeue::Ids(ids) => sqlx::query_scalar(&sql.requeue_ids)
                .bind(now)
                .bind(ids.iter().map(|id| Uuid::from_u128(id.as_u128())).collect::<Vec<_>>()),
            Requeue::Aggregate { aggregate_type, aggregate_id } => {
                sqlx::query_scalar(&sql.requeue_aggregate).bind(now).bind(aggregate_type).bind(aggregate_id)
            }
        };
        let n: i64 = query.fetch_one(&self.pool).await.map_err(|e| self.err("requeuing dead entries", e))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn entry(&self, id: EntryId) -> Result<Option<Entry>> {
        let row = sqlx::query(&self.outbox.sql.entry)
            .bind(Uuid::from_u128(id.as_u128()))
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err("reading an entry", e))?;
        row.map(|r| decode(self.outbox.tables.name(), &r)).transpose()
    }
}
