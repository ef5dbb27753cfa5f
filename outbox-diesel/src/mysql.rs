//! MySQL 8 and MariaDB 10.6+: the writer for `diesel::MysqlConnection` (and, with `async`, for
//! `diesel_async::AsyncMysqlConnection`), the schema, and with `async` the relay's
//! [`MysqlStore`].
//!
//! # How it works
//! The same rules as outbox-sqlx, so both adapters can share one outbox:
//! - **Write**: `INSERT … ON DUPLICATE KEY UPDATE next_sequence = LAST_INSERT_ID(next_sequence + n)`
//!   on the aggregate's row locks it until the caller's transaction ends (sequences of one
//!   aggregate follow commit order); `SELECT LAST_INSERT_ID()` reads the new sequence (diesel does
//!   not expose the statement's reply), then one multi-row `INSERT` of the entries.
//! - **Claim**: one short `READ COMMITTED` transaction: lock up to `k` due, unleased aggregates
//!   with `FOR UPDATE SKIP LOCKED`, read each one's first unpublished entries (one `UNION ALL`
//!   of per-aggregate index range reads; MariaDB has no `LATERAL`), then one `UPDATE` marks the
//!   entries and one leases the aggregates.
//! - **Complete**: one short `READ COMMITTED` transaction: lock the batch's aggregates, read which
//!   entries the holder still holds, then one `UPDATE` per status group and one for the
//!   aggregates (values per row through `CASE`).

// The relay-side half (rows, claim SQL) is used only with `async`.
#![cfg_attr(not(feature = "async"), allow(dead_code))]

use std::fmt;
use std::sync::{Arc, OnceLock};

use diesel::MysqlConnection;
use diesel::QueryableByName;
use diesel::RunQueryDsl;
use diesel::connection::SimpleConnection;
use diesel::mysql::Mysql;
use diesel::query_builder::{BoxedSqlQuery, SqlQuery};
use diesel::sql_types::{BigInt, Binary, Datetime, Integer, Nullable, Text};
use outbox_core::{EntryId, Error, ErrorKind, NewEntry, Result, Status, Timestamp};
use time::PrimitiveDateTime;

use crate::config::Tables;
use crate::error::{Db, bad_row, map};
use crate::migration::raw;
use crate::plan::{self, RawEntry};

/// `table!` definitions of the default tables (`outbox`, `outbox_aggregates`), for queries and
/// joins of your own. Ids are `BINARY(16)` (UUID byte order), times `DATETIME(6)` in UTC,
/// headers JSON. For other names, declare the same columns with `#[sql_name = "..."]`. Change
/// rows only through the outbox's functions.
pub mod schema {
    diesel::table! {
        /// The entries: one row per entry.
        outbox (id) {
            /// The entry id: 16 bytes, UUID byte order.
            id -> Binary,
            /// The aggregate's type.
            aggregate_type -> Text,
            /// The aggregate's id.
            aggregate_id -> Text,
            /// Position within the aggregate.
            sequence -> BigInt,
            /// The event type.
            event_type -> Text,
            /// The payload bytes.
            payload -> Binary,
            /// The payload's media type.
            content_type -> Text,
            /// The headers: a JSON array of `[name, value]` pairs.
            headers -> Text,
            /// pending, processing, published, failed or dead.
            status -> Text,
            /// Failed publish attempts.
            attempts -> Integer,
            /// When it was written (UTC).
            created_at -> Datetime,
            /// When it is due (UTC).
            available_at -> Datetime,
            /// When it was published (UTC).
            published_at -> Nullable<Datetime>,
            /// The last publish error.
            last_error -> Nullable<Text>,
            /// The relay batch holding it.
            lease_holder -> Nullable<Text>,
            /// Until when (UTC).
            lease_expires_at -> Nullable<Datetime>,
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
            /// When it is worth visiting (UTC).
            available_at -> Datetime,
            /// The relay batch leasing it.
            lease_holder -> Nullable<Text>,
            /// Until when (UTC).
            lease_expires_at -> Nullable<Datetime>,
        }
    }

    diesel::allow_tables_to_appear_in_same_query!(outbox, outbox_aggregates);
}

const COLUMNS: &str = "id, aggregate_type, aggregate_id, sequence, event_type, payload, content_type, \
     CAST(headers AS CHAR) AS headers, status, attempts, created_at, available_at, published_at, last_error, \
     lease_holder, lease_expires_at";

/// Rows per multi-row insert (10 values each, well under the 65,535 placeholders allowed).
pub(crate) const ROWS_PER_INSERT: usize = 1000;
/// Ids per `IN (...)` list.
pub(crate) const IN_CHUNK: usize = 1000;
/// Aggregates per statement.
pub(crate) const AGG_CHUNK: usize = 200;

pub(crate) fn marks(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// `(aggregate_type = ? AND aggregate_id = ?) OR …` for `n` aggregates.
pub(crate) fn keys_match(n: usize) -> String {
    vec!["(aggregate_type = ? AND aggregate_id = ?)"; n].join(" OR ")
}

/// `CASE WHEN (aggregate_type = ? AND aggregate_id = ?) THEN ? … END` for `n` aggregates.
pub(crate) fn case_by_key(n: usize) -> String {
    format!("CASE {} END", vec!["WHEN (aggregate_type = ? AND aggregate_id = ?) THEN ?"; n].join(" "))
}

/// `CASE id WHEN ? THEN ? … END` for `n` entries.
pub(crate) fn case_by_id(n: usize) -> String {
    format!("CASE id {} END", vec!["WHEN ? THEN ?"; n].join(" "))
}

/// A timestamp as a UTC `DATETIME(6)`.
pub(crate) fn to_dt(t: Timestamp) -> PrimitiveDateTime {
    let d = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.as_micros()) * 1000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    PrimitiveDateTime::new(d.date(), d.time())
}

/// Back from a UTC `DATETIME(6)`.
pub(crate) fn from_dt(t: PrimitiveDateTime) -> Timestamp {
    Timestamp::from_micros(i64::try_from(t.assume_utc().unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX))
}

pub(crate) fn id_bytes(id: &EntryId) -> Vec<u8> {
    id.to_bytes().to_vec()
}

pub(crate) type Query<'a> = BoxedSqlQuery<'a, Mysql, SqlQuery>;

pub(crate) fn query<'a>(sql: impl Into<String>) -> Query<'a> {
    diesel::sql_query(sql.into()).into_boxed()
}

/// A value bound into a dynamically built statement.
pub(crate) enum Value {
    Text(String),
    Int(i64),
    Time(Timestamp),
    Id(EntryId),
}

pub(crate) fn bind_all<'a>(mut q: Query<'a>, values: Vec<Value>) -> Query<'a> {
    for v in values {
        q = match v {
            Value::Text(s) => q.bind::<Text, _>(s),
            Value::Int(i) => q.bind::<BigInt, _>(i),
            Value::Time(t) => q.bind::<Datetime, _>(to_dt(t)),
            Value::Id(id) => q.bind::<Binary, _>(id_bytes(&id)),
        };
    }
    q
}

pub(crate) struct Sql {
    pub(crate) entries: String,
    pub(crate) aggregates: String,
    pub(crate) upsert: String,
    pub(crate) lock_aggregates: String,
}

impl Sql {
    fn new(tables: &Tables) -> Self {
        let entries = tables.render("{entries}", '`', false);
        let aggregates = tables.render("{aggregates}", '`', false);
        Sql {
            upsert: format!(
                "INSERT INTO {aggregates} (aggregate_type, aggregate_id, next_sequence, unpublished, available_at) \
                 VALUES (?, ?, LAST_INSERT_ID(?), ?, ?) ON DUPLICATE KEY UPDATE \
                 next_sequence = LAST_INSERT_ID(next_sequence + ?), unpublished = unpublished + ?, \
                 available_at = LEAST(available_at, ?)"
            ),
            lock_aggregates: format!(
                "SELECT aggregate_type, aggregate_id FROM {aggregates} WHERE available_at <= ? AND unpublished > 0 \
                 AND (lease_expires_at IS NULL OR lease_expires_at <= ?) ORDER BY available_at LIMIT ? \
                 FOR UPDATE SKIP LOCKED"
            ),
            entries,
            aggregates,
        }
    }
}

/// An entry row.
#[derive(QueryableByName)]
pub(crate) struct Row {
    #[diesel(sql_type = Binary)]
    id: Vec<u8>,
    #[diesel(sql_type = Text)]
    aggregate_type: String,
    #[diesel(sql_type = Text)]
    aggregate_id: String,
    #[diesel(sql_type = BigInt)]
    sequence: i64,
    #[diesel(sql_type = Text)]
    event_type: String,
    #[diesel(sql_type = Binary)]
    payload: Vec<u8>,
    #[diesel(sql_type = Text)]
    content_type: String,
    #[diesel(sql_type = Text)]
    headers: String,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Integer)]
    attempts: i32,
    #[diesel(sql_type = Datetime)]
    created_at: PrimitiveDateTime,
    #[diesel(sql_type = Datetime)]
    available_at: PrimitiveDateTime,
    #[diesel(sql_type = Nullable<Datetime>)]
    published_at: Option<PrimitiveDateTime>,
    #[diesel(sql_type = Nullable<Text>)]
    last_error: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    lease_holder: Option<String>,
    #[diesel(sql_type = Nullable<Datetime>)]
    lease_expires_at: Option<PrimitiveDateTime>,
}

pub(crate) fn entry_id(table: &str, bytes: Vec<u8>) -> Result<EntryId> {
    let bytes: [u8; 16] = bytes.try_into().map_err(|_| bad_row(table, "an id is not 16 bytes"))?;
    Ok(EntryId::from_bytes(bytes))
}

impl Row {
    pub(crate) fn into_entry(self, table: &str) -> Result<outbox_core::Entry> {
        RawEntry {
            id: entry_id(table, self.id)?,
            aggregate_type: self.aggregate_type,
            aggregate_id: self.aggregate_id,
            sequence: self.sequence,
            event_type: self.event_type,
            payload: self.payload,
            content_type: self.content_type,
            headers: self.headers,
            status: self.status,
            attempts: self.attempts,
            created_at: from_dt(self.created_at),
            available_at: from_dt(self.available_at),
            published_at: self.published_at.map(from_dt),
            last_error: self.last_error,
            lease_holder: self.lease_holder,
            lease_expires_at: self.lease_expires_at.map(from_dt),
        }
        .into_entry(table)
    }
}

#[derive(QueryableByName)]
pub(crate) struct LastId {
    #[diesel(sql_type = BigInt)]
    pub(crate) n: i64,
}

/// The outbox in MySQL or MariaDB: its tables, its schema, and the writer applications call
/// inside their own diesel transactions. Cheap to clone. The free functions [`enqueue`] and
/// [`enqueue_batch`] use the default tables.
///
/// ```no_run
/// use diesel::{Connection, MysqlConnection};
/// use outbox_core::NewEntry;
/// use outbox_diesel::{Tables, mysql::MysqlOutbox};
///
/// # fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let mut conn = MysqlConnection::establish("mysql://root@127.0.0.1:3306/test")?;
/// let outbox = MysqlOutbox::new(Tables::new("billing_outbox")?);
/// outbox.migrate(&mut conn)?;
/// conn.transaction(|conn| {
///     let entry = NewEntry::builder("invoice", "i-1", "invoice.sent").json("{}").build()?;
///     outbox.enqueue(conn, &entry)?;
///     Ok::<_, Box<dyn std::error::Error>>(())
/// })?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MysqlOutbox {
    tables: Tables,
    pub(crate) sql: Arc<Sql>,
}

impl fmt::Debug for MysqlOutbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MysqlOutbox").field("tables", &self.tables).finish_non_exhaustive()
    }
}

impl Default for MysqlOutbox {
    /// The default tables (`outbox`, `outbox_aggregates`).
    fn default() -> Self {
        MysqlOutbox::new(Tables::default())
    }
}

fn default_outbox() -> &'static MysqlOutbox {
    static DEFAULT: OnceLock<MysqlOutbox> = OnceLock::new();
    DEFAULT.get_or_init(MysqlOutbox::default)
}

/// One aggregate's upsert in a write.
pub(crate) struct Upsert<'a> {
    pub(crate) query: Query<'a>,
    pub(crate) members: Vec<usize>,
}

impl MysqlOutbox {
    /// The outbox in `tables` (already validated; a schema, if set, is ignored: the tables live
    /// in the connection's database).
    pub fn new(tables: Tables) -> Self {
        let sql = Arc::new(Sql::new(&tables));
        MysqlOutbox { tables, sql }
    }

    /// The tables.
    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    /// The schema's SQL for these tables (several statements, idempotent).
    pub fn migration_sql(&self) -> String {
        self.tables.render(raw::MYSQL, '`', false)
    }

    /// Creates the tables and indexes if they are missing (idempotent).
    pub fn migrate(&self, conn: &mut MysqlConnection) -> Result<()> {
        conn.batch_execute(&self.migration_sql()).map_err(|e| self.err("migrate", e))
    }

    /// Writes `entry` with the caller's connection, so it commits or rolls back with the caller's
    /// changes: call it inside `conn.transaction(|conn| ...)`. Never commits. The aggregate's row
    /// stays locked until the transaction ends: sequences follow commit order. A duplicate id
    /// fails with [`ErrorKind::Validation`].
    pub fn enqueue(&self, conn: &mut MysqlConnection, entry: &NewEntry) -> Result<()> {
        self.enqueue_batch(conn, std::slice::from_ref(entry))
    }

    /// Writes many entries with the caller's connection: one upsert per distinct aggregate (in
    /// key order, so concurrent batch writers cannot deadlock on each other), then multi-row
    /// inserts of up to 1,000 entries. Entries of one aggregate get consecutive sequences in
    /// slice order.
    pub fn enqueue_batch(&self, conn: &mut MysqlConnection, entries: &[NewEntry]) -> Result<()> {
        let what = "enqueue";
        let err = |e| self.err(what, e);
        if entries.is_empty() {
            return Ok(());
        }
        let now = Timestamp::now();
        let mut sequence = vec![0i64; entries.len()];
        for upsert in self.upserts(entries, now) {
            upsert.query.execute(conn).map_err(err)?;
            let top: LastId = query("SELECT CAST(LAST_INSERT_ID() AS SIGNED) AS n").get_result(conn).map_err(err)?;
            self.assign(&mut sequence, &upsert.members, top.n)?;
        }
        for q in self.inserts(entries, &sequence, now) {
            q.execute(conn).map_err(err)?;
        }
        Ok(())
    }

    pub(crate) fn upserts<'a>(&self, entries: &[NewEntry], now: Timestamp) -> Vec<Upsert<'a>> {
        plan::group_by_aggregate(entries)
            .into_iter()
            .map(|(key, members)| {
                let n = members.len() as i64;
                let first_due = members.iter().map(|&m| plan::available_at(&entries[m], now)).min().unwrap_or(now);
                let query = bind_all(
                    query(self.sql.upsert.as_str()),
                    vec![
                        Value::Text(key.0),
                        Value::Text(key.1),
                        Value::Int(n),
                        Value::Int(n),
                        Value::Time(first_due),
                        Value::Int(n),
                        Value::Int(n),
                        Value::Time(first_due),
                    ],
                );
                Upsert { query, members }
            })
            .collect()
    }

    pub(crate) fn assign(&self, sequence: &mut [i64], members: &[usize], top: i64) -> Result<()> {
        let n = members.len() as i64;
        if top < n {
            return Err(Error::new(
                ErrorKind::Unexpected,
                format!(
                    "enqueue failed: the server did not report the aggregate's sequence through LAST_INSERT_ID \
                     (got {top}); is this MySQL 8 or MariaDB 10.6+?"
                ),
            ));
        }
        for (i, &m) in members.iter().enumerate() {
            sequence[m] = top - n + 1 + i as i64;
        }
        Ok(())
    }

    pub(crate) fn inserts<'a>(&self, entries: &'a [NewEntry], sequence: &[i64], now: Timestamp) -> Vec<Query<'a>> {
        let row = format!("(?, ?, ?, ?, ?, ?, ?, ?, '{}', 0, ?, ?)", Status::Pending.as_str());
        let created = to_dt(now);
        entries
            .chunks(ROWS_PER_INSERT)
            .enumerate()
            .map(|(chunk_no, chunk)| {
                let sql = format!(
                    "INSERT INTO {} (id, aggregate_type, aggregate_id, sequence, event_type, payload, content_type, \
                     headers, status, attempts, created_at, available_at) VALUES {}",
                    self.sql.entries,
                    vec![row.as_str(); chunk.len()].join(", ")
                );
                let mut q = query(sql);
                for (i, e) in chunk.iter().enumerate() {
                    q = q
                        .bind::<Binary, _>(id_bytes(&e.id()))
                        .bind::<Text, _>(e.aggregate_type())
                        .bind::<Text, _>(e.aggregate_id())
                        .bind::<BigInt, _>(sequence[chunk_no * ROWS_PER_INSERT + i])
                        .bind::<Text, _>(e.event_type())
                        .bind::<Binary, _>(e.payload().as_bytes())
                        .bind::<Text, _>(e.content_type())
                        .bind::<Text, _>(plan::headers_to_json(e.headers()))
                        .bind::<Datetime, _>(created)
                        .bind::<Datetime, _>(to_dt(plan::available_at(e, now)));
                }
                q
            })
            .collect()
    }

    pub(crate) fn err(&self, what: &str, e: diesel::result::Error) -> Error {
        map(Db::Mysql, what, self.tables.name(), e)
    }
}

/// Writes `entry` into the default tables with the caller's connection; see
/// [`MysqlOutbox::enqueue`].
pub fn enqueue(conn: &mut MysqlConnection, entry: &NewEntry) -> Result<()> {
    default_outbox().enqueue(conn, entry)
}

/// Writes `entries` into the default tables; see [`MysqlOutbox::enqueue_batch`].
pub fn enqueue_batch(conn: &mut MysqlConnection, entries: &[NewEntry]) -> Result<()> {
    default_outbox().enqueue_batch(conn, entries)
}

/// Creates the default tables if they are missing; see [`MysqlOutbox::migrate`].
pub fn migrate(conn: &mut MysqlConnection) -> Result<()> {
    default_outbox().migrate(conn)
}

/// The embedded diesel migrations of the default tables, for
/// `MigrationHarness::run_pending_migrations`.
#[cfg(feature = "migrations")]
#[cfg_attr(docsrs, doc(cfg(feature = "migrations")))]
pub const MIGRATIONS: diesel_migrations::EmbeddedMigrations = diesel_migrations::embed_migrations!("migrations/mysql");

#[cfg(feature = "async")]
mod nonblocking;
#[cfg(feature = "async")]
#[cfg_attr(docsrs, doc(cfg(feature = "async")))]
pub use nonblocking::{MysqlStore, enqueue_async, enqueue_batch_async, migrate_async};
