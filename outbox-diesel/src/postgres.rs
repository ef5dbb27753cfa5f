//! PostgreSQL: the writer for `diesel::PgConnection` (and, with `async`, for
//! `diesel_async::AsyncPgConnection`), the schema, and with `async` the relay's [`PgStore`].
//!
//! # How it works
//! The same statements as outbox-sqlx, so both adapters can share one outbox:
//! - **Write**: one statement per entry: an upsert of the aggregate's row
//!   (`INSERT … ON CONFLICT … DO UPDATE … RETURNING next_sequence`) feeding the entry's `INSERT`.
//!   The upsert locks the aggregate's row until the caller's transaction ends, so writers of one
//!   aggregate are serialized and sequences follow commit order. The migration's statement-level
//!   trigger sends `NOTIFY <table>` on commit.
//! - **Claim**: one short transaction: lock up to `k` due, unleased aggregates with
//!   `FOR UPDATE SKIP LOCKED`, read each one's first unpublished entries through the partial
//!   index (`LATERAL`), take the due prefix, mark it processing and lease the aggregates.
//! - **Complete**: one short transaction: lock the batch's aggregates, read which entries the
//!   holder still holds, then one statement updates every status group and releases the
//!   aggregates and their unpublished counts.

// The relay-side half (rows, claim SQL) is used only with `async`.
#![cfg_attr(not(feature = "async"), allow(dead_code))]

use std::fmt;
use std::sync::{Arc, OnceLock};

use diesel::PgConnection;
use diesel::QueryableByName;
use diesel::RunQueryDsl;
use diesel::connection::SimpleConnection;
use diesel::pg::Pg;
use diesel::pg::data_types::PgTimestamp;
use diesel::query_builder::{BoxedSqlQuery, SqlQuery};
use diesel::sql_types::{Array, BigInt, Bytea, Integer, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use outbox_core::{EntryId, NewEntry, Result, Status, Timestamp};
use uuid::Uuid;

use crate::config::Tables;
use crate::error::{Db, map};
use crate::migration::raw;
use crate::plan::{self, RawEntry};

/// `table!` definitions of the default tables (`outbox`, `outbox_aggregates`), for queries and
/// joins of your own. For other names, declare the same columns with
/// `diesel::table! { #[sql_name = "billing_outbox"] billing_outbox (id) { ... } }`.
///
/// `status` holds [`Status::as_str`](outbox_core::Status::as_str); `headers` is a JSON array of
/// `[name, value]` pairs. Change rows only through the outbox's functions: the aggregates table
/// keeps counts the relay relies on.
pub mod schema {
    diesel::table! {
        /// The entries: one row per entry.
        outbox (id) {
            /// The entry id (UUID).
            id -> Uuid,
            /// The aggregate's type.
            aggregate_type -> Text,
            /// The aggregate's id.
            aggregate_id -> Text,
            /// Position within the aggregate.
            sequence -> BigInt,
            /// The event type.
            event_type -> Text,
            /// The payload bytes.
            payload -> Bytea,
            /// The payload's media type.
            content_type -> Text,
            /// The headers: a JSON array of `[name, value]` pairs.
            headers -> Jsonb,
            /// pending, processing, published, failed or dead.
            status -> Text,
            /// Failed publish attempts.
            attempts -> Integer,
            /// When it was written.
            created_at -> Timestamptz,
            /// When it is due.
            available_at -> Timestamptz,
            /// When it was published.
            published_at -> Nullable<Timestamptz>,
            /// The last publish error.
            last_error -> Nullable<Text>,
            /// The relay batch holding it.
            lease_holder -> Nullable<Text>,
            /// Until when the batch holds it.
            lease_expires_at -> Nullable<Timestamptz>,
        }
    }

    diesel::table! {
        /// The aggregates: one row per (aggregate type, aggregate id).
        outbox_aggregates (aggregate_type, aggregate_id) {
            /// The aggregate's type.
            aggregate_type -> Text,
            /// The aggregate's id.
            aggregate_id -> Text,
            /// The last sequence given out.
            next_sequence -> BigInt,
            /// How many of its entries are not published.
            unpublished -> BigInt,
            /// When it is worth visiting.
            available_at -> Timestamptz,
            /// The relay batch leasing it.
            lease_holder -> Nullable<Text>,
            /// Until when.
            lease_expires_at -> Nullable<Timestamptz>,
        }
    }

    diesel::allow_tables_to_appear_in_same_query!(outbox, outbox_aggregates);
}

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH: i64 = 946_684_800_000_000;

pub(crate) fn to_pg(t: Timestamp) -> PgTimestamp {
    PgTimestamp(t.as_micros().saturating_sub(PG_EPOCH))
}

pub(crate) fn from_pg(t: PgTimestamp) -> Timestamp {
    Timestamp::from_micros(t.0.saturating_add(PG_EPOCH))
}

pub(crate) fn uuid(id: &EntryId) -> Uuid {
    Uuid::from_u128(id.as_u128())
}

const COLUMNS: &str = "id, aggregate_type, aggregate_id, sequence, event_type, payload, content_type, \
     headers::text AS headers, status, attempts, created_at, available_at, published_at, last_error, lease_holder, \
     lease_expires_at";

/// The SQL of one outbox, rendered once with its validated, quoted names.
pub(crate) struct Sql {
    pub(crate) enqueue: String,
    pub(crate) upsert_aggregates: String,
    pub(crate) insert_entries: String,
    pub(crate) lock_aggregates: String,
    pub(crate) read_heads: String,
    pub(crate) mark_claimed: String,
    pub(crate) lock_for_completion: String,
    pub(crate) held: String,
    pub(crate) complete: String,
    pub(crate) purge: String,
    pub(crate) stats: String,
    pub(crate) requeue_all: String,
    pub(crate) requeue_ids: String,
    pub(crate) requeue_aggregate: String,
    pub(crate) entry: String,
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
        let requeue = |filter: &str| {
            format!(
                "WITH r AS (UPDATE {{entries}} SET status = '{pending}', attempts = 0, available_at = $1, \
                 lease_holder = NULL, lease_expires_at = NULL WHERE status = '{dead}' AND {filter} \
                 RETURNING aggregate_type, aggregate_id), \
                 a AS (UPDATE {{aggregates}} a SET available_at = LEAST(a.available_at, $1) \
                 FROM (SELECT DISTINCT aggregate_type, aggregate_id FROM r) k \
                 WHERE a.aggregate_type = k.aggregate_type AND a.aggregate_id = k.aggregate_id) \
                 SELECT count(*) AS n FROM r"
            )
        };
        let r = |sql: &str| tables.render(sql, '"', true);
        Sql {
            enqueue: r(&format!(
                "WITH agg AS (INSERT INTO {{aggregates}} AS a \
                 (aggregate_type, aggregate_id, next_sequence, unpublished, available_at) VALUES ($2, $3, 1, 1, $9) \
                 ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET next_sequence = a.next_sequence + 1, \
                 unpublished = a.unpublished + 1, available_at = LEAST(a.available_at, EXCLUDED.available_at) \
                 RETURNING next_sequence) \
                 INSERT INTO {{entries}} (id, aggregate_type, aggregate_id, sequence, event_type, payload, \
                 content_type, headers, status, attempts, created_at, available_at) \
                 SELECT $1, $2, $3, agg.next_sequence, $4, $5, $6, $7::jsonb, '{pending}', 0, $8, $9 FROM agg"
            )),
            upsert_aggregates: r("INSERT INTO {aggregates} AS a \
                 (aggregate_type, aggregate_id, next_sequence, unpublished, available_at) \
                 SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $3::int8[], $4::timestamptz[]) \
                 ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE \
                 SET next_sequence = a.next_sequence + EXCLUDED.next_sequence, \
                 unpublished = a.unpublished + EXCLUDED.unpublished, \
                 available_at = LEAST(a.available_at, EXCLUDED.available_at) \
                 RETURNING aggregate_type, aggregate_id, next_sequence"),
            insert_entries: r(&format!(
                "INSERT INTO {{entries}} (id, aggregate_type, aggregate_id, sequence, event_type, payload, \
                 content_type, headers, status, attempts, created_at, available_at) \
                 SELECT u.id, u.t, u.i, u.s, u.ev, u.p, u.ct, u.h::jsonb, '{pending}', 0, $9, u.av \
                 FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::bytea[], $7::text[], \
                 $8::text[], $10::timestamptz[]) AS u(id, t, i, s, ev, p, ct, h, av)"
            )),
            lock_aggregates: r("SELECT aggregate_type, aggregate_id FROM {aggregates} \
                 WHERE available_at <= $1 AND unpublished > 0 \
                 AND (lease_expires_at IS NULL OR lease_expires_at <= $1) \
                 ORDER BY available_at LIMIT $2 FOR UPDATE SKIP LOCKED"),
            read_heads: r(&format!(
                "SELECT e.* FROM unnest($1::text[], $2::text[]) AS k(t, i) CROSS JOIN LATERAL ( \
                 SELECT {COLUMNS} FROM {{entries}} x WHERE x.aggregate_type = k.t AND x.aggregate_id = k.i \
                 AND x.status <> '{published}' AND ($3 OR x.status <> '{dead}') \
                 ORDER BY x.sequence LIMIT $4) e"
            )),
            // `leased_through` is cleared on lease: outbox-sqlx's PostgreSQL store marks its claims
            // there (not on the entries), and a lapsed one of its leases may have left it set.
            mark_claimed: r(&format!(
                "WITH c AS (UPDATE {{entries}} SET status = '{processing}', lease_holder = $1, lease_expires_at = $2 \
                 WHERE id = ANY($3)) \
                 UPDATE {{aggregates}} a SET \
                 lease_holder = CASE WHEN k.at IS NULL THEN $1 ELSE a.lease_holder END, \
                 lease_expires_at = CASE WHEN k.at IS NULL THEN $2 ELSE a.lease_expires_at END, \
                 leased_through = CASE WHEN k.at IS NULL THEN NULL ELSE a.leased_through END, \
                 available_at = COALESCE(k.at, a.available_at) \
                 FROM unnest($4::text[], $5::text[], $6::timestamptz[]) AS k(t, i, at) \
                 WHERE a.aggregate_type = k.t AND a.aggregate_id = k.i"
            )),
            // Key order is byte order (`COLLATE "C"`), as writers sort keys in Rust, whatever the
            // database's collation: the same order everywhere, so no deadlock.
            lock_for_completion: r("SELECT a.aggregate_type FROM {aggregates} a \
                 WHERE (a.aggregate_type, a.aggregate_id) IN (SELECT e.aggregate_type, e.aggregate_id \
                 FROM {entries} e WHERE e.id = ANY($1) AND e.lease_holder = $2) \
                 ORDER BY a.aggregate_type COLLATE \"C\", a.aggregate_id COLLATE \"C\" FOR UPDATE"),
            held: r(&format!(
                "SELECT id, aggregate_type, aggregate_id FROM {{entries}} \
                 WHERE id = ANY($1) AND lease_holder = $2 AND status = '{processing}'"
            )),
            complete: r(&format!(
                "WITH pub AS (UPDATE {{entries}} SET status = '{published}', published_at = $3, \
                 lease_holder = NULL, lease_expires_at = NULL WHERE id = ANY($1) AND lease_holder = $2), \
                 retry AS (UPDATE {{entries}} e SET status = '{failed}', attempts = e.attempts + 1, available_at = r.at, \
                 last_error = r.err, lease_holder = NULL, lease_expires_at = NULL \
                 FROM unnest($4::uuid[], $5::timestamptz[], $6::text[]) AS r(id, at, err) \
                 WHERE e.id = r.id AND e.lease_holder = $2), \
                 dead AS (UPDATE {{entries}} e SET status = '{dead}', attempts = e.attempts + 1, last_error = r.err, \
                 lease_holder = NULL, lease_expires_at = NULL FROM unnest($7::uuid[], $8::text[]) AS r(id, err) \
                 WHERE e.id = r.id AND e.lease_holder = $2), \
                 rel AS (UPDATE {{entries}} SET status = '{pending}', lease_holder = NULL, lease_expires_at = NULL \
                 WHERE id = ANY($9) AND lease_holder = $2) \
                 UPDATE {{aggregates}} a SET unpublished = a.unpublished - k.n, \
                 available_at = CASE WHEN a.unpublished - k.n <= 0 THEN $13 \
                 WHEN a.lease_holder = $2 THEN k.at ELSE a.available_at END, \
                 lease_holder = CASE WHEN a.lease_holder = $2 THEN NULL ELSE a.lease_holder END, \
                 lease_expires_at = CASE WHEN a.lease_holder = $2 THEN NULL ELSE a.lease_expires_at END \
                 FROM unnest($10::text[], $11::text[], $12::int8[], $14::timestamptz[]) AS k(t, i, n, at) \
                 WHERE a.aggregate_type = k.t AND a.aggregate_id = k.i"
            )),
            purge: r(&format!(
                "DELETE FROM {{entries}} WHERE id IN (SELECT id FROM {{entries}} \
                 WHERE status = '{published}' AND published_at < $1 ORDER BY published_at LIMIT $2)"
            )),
            stats: r(&format!(
                "SELECT count(*) FILTER (WHERE status = '{pending}') AS pending, \
                 count(*) FILTER (WHERE status = '{processing}') AS processing, \
                 count(*) FILTER (WHERE status = '{published}') AS published, \
                 count(*) FILTER (WHERE status = '{failed}') AS failed, \
                 count(*) FILTER (WHERE status = '{dead}') AS dead, \
                 min(created_at) FILTER (WHERE status IN ('{pending}', '{processing}', '{failed}')) AS oldest \
                 FROM {{entries}}"
            )),
            requeue_all: r(&requeue("TRUE")),
            requeue_ids: r(&requeue("id = ANY($2)")),
            requeue_aggregate: r(&requeue("aggregate_type = $2 AND aggregate_id = $3")),
            entry: r(&format!("SELECT {COLUMNS} FROM {{entries}} WHERE id = $1")),
        }
    }
}

/// An entry row.
#[derive(QueryableByName)]
pub(crate) struct Row {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = Text)]
    aggregate_type: String,
    #[diesel(sql_type = Text)]
    aggregate_id: String,
    #[diesel(sql_type = BigInt)]
    sequence: i64,
    #[diesel(sql_type = Text)]
    event_type: String,
    #[diesel(sql_type = Bytea)]
    payload: Vec<u8>,
    #[diesel(sql_type = Text)]
    content_type: String,
    #[diesel(sql_type = Text)]
    headers: String,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Integer)]
    attempts: i32,
    #[diesel(sql_type = Timestamptz)]
    created_at: PgTimestamp,
    #[diesel(sql_type = Timestamptz)]
    available_at: PgTimestamp,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    published_at: Option<PgTimestamp>,
    #[diesel(sql_type = Nullable<Text>)]
    last_error: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    lease_holder: Option<String>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    lease_expires_at: Option<PgTimestamp>,
}

impl Row {
    pub(crate) fn into_entry(self, table: &str) -> Result<outbox_core::Entry> {
        RawEntry {
            id: EntryId::from_u128(self.id.as_u128()),
            aggregate_type: self.aggregate_type,
            aggregate_id: self.aggregate_id,
            sequence: self.sequence,
            event_type: self.event_type,
            payload: self.payload,
            content_type: self.content_type,
            headers: self.headers,
            status: self.status,
            attempts: self.attempts,
            created_at: from_pg(self.created_at),
            available_at: from_pg(self.available_at),
            published_at: self.published_at.map(from_pg),
            last_error: self.last_error,
            lease_holder: self.lease_holder,
            lease_expires_at: self.lease_expires_at.map(from_pg),
        }
        .into_entry(table)
    }
}

/// A row of the aggregates upsert.
#[derive(QueryableByName)]
pub(crate) struct SequenceRow {
    #[diesel(sql_type = Text)]
    pub(crate) aggregate_type: String,
    #[diesel(sql_type = Text)]
    pub(crate) aggregate_id: String,
    #[diesel(sql_type = BigInt)]
    pub(crate) next_sequence: i64,
}

type Query<'a> = BoxedSqlQuery<'a, Pg, SqlQuery>;

fn query(sql: &str) -> Query<'static> {
    diesel::sql_query(sql.to_string()).into_boxed()
}

/// The outbox in PostgreSQL: its tables, its schema, and the writer applications call inside
/// their own diesel transactions. Cheap to clone.
///
/// The free functions [`enqueue`] and [`enqueue_batch`] use the default tables.
///
/// ```no_run
/// use diesel::{Connection, PgConnection};
/// use outbox_core::NewEntry;
/// use outbox_diesel::{Tables, postgres::PgOutbox};
///
/// # fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let mut conn = PgConnection::establish("postgres://postgres@127.0.0.1:5432/test")?;
/// let outbox = PgOutbox::new(Tables::new("billing_outbox")?);
/// outbox.migrate(&mut conn)?;
/// conn.transaction(|conn| {
///     let entry = NewEntry::builder("invoice", "i-1", "invoice.sent").json("{}").build()?;
///     outbox.enqueue(conn, &entry)?;
///     Ok::<_, Box<dyn std::error::Error>>(())
/// })?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PgOutbox {
    tables: Tables,
    pub(crate) sql: Arc<Sql>,
}

impl fmt::Debug for PgOutbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgOutbox").field("tables", &self.tables).finish_non_exhaustive()
    }
}

impl Default for PgOutbox {
    /// The default tables (`outbox`, `outbox_aggregates`).
    fn default() -> Self {
        PgOutbox::new(Tables::default())
    }
}

fn default_outbox() -> &'static PgOutbox {
    static DEFAULT: OnceLock<PgOutbox> = OnceLock::new();
    DEFAULT.get_or_init(PgOutbox::default)
}

/// The bound statements of one batch write.
struct Batch<'a> {
    aggregates: Query<'a>,
    groups: Vec<(plan::Key, Vec<usize>)>,
    now: Timestamp,
}

impl PgOutbox {
    /// The outbox in `tables` (already validated).
    pub fn new(tables: Tables) -> Self {
        let sql = Arc::new(Sql::new(&tables));
        PgOutbox { tables, sql }
    }

    /// The tables.
    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    /// The NOTIFY channel the migration's trigger signals on commit: the table's name.
    pub fn channel(&self) -> &str {
        self.tables.name()
    }

    /// The schema's SQL for these tables (several statements, idempotent): apply it with your own
    /// migration tool, or call [`PgOutbox::migrate`].
    pub fn migration_sql(&self) -> String {
        self.tables.render(raw::POSTGRES, '"', true)
    }

    /// Creates the tables, indexes and the notify trigger if they are missing (idempotent).
    pub fn migrate(&self, conn: &mut PgConnection) -> Result<()> {
        conn.batch_execute(&self.migration_sql()).map_err(|e| self.err("migrate", e))
    }

    /// Writes `entry` with the caller's connection, so it commits or rolls back with the caller's
    /// changes: call it inside `conn.transaction(|conn| ...)`. Never commits.
    ///
    /// The entry gets the next sequence of its aggregate; the aggregate's row stays locked until
    /// the transaction ends, so sequences follow commit order. A duplicate id fails with
    /// [`ErrorKind::Validation`](outbox_core::ErrorKind) (and aborts the transaction).
    pub fn enqueue(&self, conn: &mut PgConnection, entry: &NewEntry) -> Result<()> {
        self.enqueue_query(entry, Timestamp::now()).execute(conn).map_err(|e| self.err("enqueue", e))?;
        Ok(())
    }

    /// Writes many entries with the caller's connection in two statements: one upsert of their
    /// aggregates (in key order, so concurrent batch writers cannot deadlock) and one multi-row
    /// insert. Entries of one aggregate get consecutive sequences in slice order.
    pub fn enqueue_batch(&self, conn: &mut PgConnection, entries: &[NewEntry]) -> Result<()> {
        match entries {
            [] => return Ok(()),
            [one] => return self.enqueue(conn, one),
            _ => {}
        }
        let batch = self.batch(entries);
        let rows: Vec<SequenceRow> = batch.aggregates.load(conn).map_err(|e| self.err("enqueue_batch", e))?;
        self.insert_query(entries, &batch.groups, rows, batch.now)
            .execute(conn)
            .map_err(|e| self.err("enqueue_batch", e))?;
        Ok(())
    }

    fn enqueue_query<'a>(&self, entry: &'a NewEntry, now: Timestamp) -> Query<'a> {
        query(&self.sql.enqueue)
            .bind::<SqlUuid, _>(uuid(&entry.id()))
            .bind::<Text, _>(entry.aggregate_type())
            .bind::<Text, _>(entry.aggregate_id())
            .bind::<Text, _>(entry.event_type())
            .bind::<Bytea, _>(entry.payload().as_bytes())
            .bind::<Text, _>(entry.content_type())
            .bind::<Text, _>(plan::headers_to_json(entry.headers()))
            .bind::<Timestamptz, _>(to_pg(now))
            .bind::<Timestamptz, _>(to_pg(plan::available_at(entry, now)))
    }

    fn batch<'a>(&self, entries: &[NewEntry]) -> Batch<'a> {
        let now = Timestamp::now();
        let groups = plan::group_by_aggregate(entries);
        let mut types = Vec::with_capacity(groups.len());
        let mut ids = Vec::with_capacity(groups.len());
        let mut counts = Vec::with_capacity(groups.len());
        let mut avail = Vec::with_capacity(groups.len());
        for ((t, i), members) in &groups {
            types.push(t.clone());
            ids.push(i.clone());
            counts.push(members.len() as i64);
            let first_due = members.iter().map(|&m| plan::available_at(&entries[m], now)).min().unwrap_or(now);
            avail.push(to_pg(first_due));
        }
        let aggregates = query(&self.sql.upsert_aggregates)
            .bind::<Array<Text>, _>(types)
            .bind::<Array<Text>, _>(ids)
            .bind::<Array<BigInt>, _>(counts)
            .bind::<Array<Timestamptz>, _>(avail);
        Batch { aggregates, groups, now }
    }

    fn insert_query<'a>(
        &self,
        entries: &'a [NewEntry],
        groups: &[(plan::Key, Vec<usize>)],
        rows: Vec<SequenceRow>,
        now: Timestamp,
    ) -> Query<'a> {
        let last: std::collections::HashMap<plan::Key, i64> =
            rows.into_iter().map(|r| ((r.aggregate_type, r.aggregate_id), r.next_sequence)).collect();
        let mut sequence = vec![0i64; entries.len()];
        for (key, members) in groups {
            let top = last.get(key).copied().unwrap_or(members.len() as i64);
            let first = top - members.len() as i64 + 1;
            for (n, &m) in members.iter().enumerate() {
                sequence[m] = first + n as i64;
            }
        }
        let ids: Vec<Uuid> = entries.iter().map(|e| uuid(&e.id())).collect();
        let types: Vec<&str> = entries.iter().map(NewEntry::aggregate_type).collect();
        let aggs: Vec<&str> = entries.iter().map(NewEntry::aggregate_id).collect();
        let events: Vec<&str> = entries.iter().map(NewEntry::event_type).collect();
        let payloads: Vec<&[u8]> = entries.iter().map(|e| e.payload().as_bytes()).collect();
        let cts: Vec<&str> = entries.iter().map(NewEntry::content_type).collect();
        let headers: Vec<String> = entries.iter().map(|e| plan::headers_to_json(e.headers())).collect();
        let avail: Vec<PgTimestamp> = entries.iter().map(|e| to_pg(plan::available_at(e, now))).collect();
        query(&self.sql.insert_entries)
            .bind::<Array<SqlUuid>, _>(ids)
            .bind::<Array<Text>, _>(types)
            .bind::<Array<Text>, _>(aggs)
            .bind::<Array<BigInt>, _>(sequence)
            .bind::<Array<Text>, _>(events)
            .bind::<Array<Bytea>, _>(payloads)
            .bind::<Array<Text>, _>(cts)
            .bind::<Array<Text>, _>(headers)
            .bind::<Timestamptz, _>(to_pg(now))
            .bind::<Array<Timestamptz>, _>(avail)
    }

    pub(crate) fn err(&self, what: &str, e: diesel::result::Error) -> outbox_core::Error {
        map(Db::Postgres, what, self.tables.name(), e)
    }
}

/// Writes `entry` into the default tables with the caller's connection; see [`PgOutbox::enqueue`].
///
/// ```no_run
/// use diesel::{Connection, PgConnection};
/// use outbox_core::NewEntry;
///
/// # fn run(conn: &mut PgConnection) -> Result<(), Box<dyn std::error::Error>> {
/// conn.transaction(|conn| {
///     // ... the business change with diesel ...
///     let entry = NewEntry::builder("order", "o-1", "order.placed").json(r#"{"total":42}"#).build()?;
///     outbox_diesel::postgres::enqueue(conn, &entry)?;
///     Ok::<_, Box<dyn std::error::Error>>(())
/// })?; // the entry is visible to relays now, never before
/// # Ok(()) }
/// ```
pub fn enqueue(conn: &mut PgConnection, entry: &NewEntry) -> Result<()> {
    default_outbox().enqueue(conn, entry)
}

/// Writes `entries` into the default tables; see [`PgOutbox::enqueue_batch`].
pub fn enqueue_batch(conn: &mut PgConnection, entries: &[NewEntry]) -> Result<()> {
    default_outbox().enqueue_batch(conn, entries)
}

/// Creates the default tables if they are missing; see [`PgOutbox::migrate`].
pub fn migrate(conn: &mut PgConnection) -> Result<()> {
    default_outbox().migrate(conn)
}

/// The embedded diesel migrations of the default tables, for
/// `MigrationHarness::run_pending_migrations`.
#[cfg(feature = "migrations")]
#[cfg_attr(docsrs, doc(cfg(feature = "migrations")))]
pub const MIGRATIONS: diesel_migrations::EmbeddedMigrations =
    diesel_migrations::embed_migrations!("migrations/postgres");

#[cfg(feature = "async")]
mod nonblocking;
#[cfg(feature = "async")]
#[cfg_attr(docsrs, doc(cfg(feature = "async")))]
pub use nonblocking::{PgStore, enqueue_async, enqueue_batch_async, migrate_async};
