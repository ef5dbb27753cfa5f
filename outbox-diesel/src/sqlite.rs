//! SQLite: the writer for `diesel::SqliteConnection`, the schema, and the relay's
//! [`SqliteStore`].
//!
//! SQLite has one writer at a time, so claims and completions are `BEGIN IMMEDIATE`
//! transactions (diesel's `immediate_transaction`): they take the write lock first, so a claim
//! never sees a state another claim is changing. The rules (aggregate leases, per-aggregate
//! prefixes, parking) are the same as on the server databases and in outbox-sqlx.
//!
//! diesel's SQLite connection is synchronous: [`SqliteStore`] runs every call on tokio's blocking
//! thread pool (`spawn_blocking`) over its own connection, so the runtime's workers never wait
//! on SQLite. Application transactions that write entries should be immediate too
//! (`conn.immediate_transaction(|conn| ...)`): a deferred transaction that reads before it writes
//! can fail with `database is locked` (a retryable `Conflict`) when a relay committed in between.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use diesel::connection::SimpleConnection;
use diesel::query_builder::{BoxedSqlQuery, SqlQuery};
use diesel::sql_types::{BigInt, Binary, Nullable, Text};
use diesel::sqlite::Sqlite;
use diesel::{Connection, QueryableByName, RunQueryDsl, SqliteConnection};
use outbox_core::{
    ClaimRequest, Completion, DeadPolicy, Entry, EntryId, Error, ErrorKind, Maintenance, NewEntry, Requeue, Result,
    Stats, Status, Store, Timestamp,
};

use crate::config::Tables;
use crate::error::{Db, bad_row, map};
use crate::migration::raw;
use crate::plan::{self, Key, NEVER, RawEntry};

/// `table!` definitions of the default tables (`outbox`, `outbox_aggregates`), for queries and
/// joins of your own. Ids are 16-byte BLOBs (UUID byte order), times INTEGER microseconds since
/// the Unix epoch (UTC), headers JSON text. For other names, declare the same columns with
/// `#[sql_name = "..."]`. Change rows only through the outbox's functions.
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
            attempts -> BigInt,
            /// When it was written (µs since the epoch).
            created_at -> BigInt,
            /// When it is due (µs since the epoch).
            available_at -> BigInt,
            /// When it was published (µs since the epoch).
            published_at -> Nullable<BigInt>,
            /// The last publish error.
            last_error -> Nullable<Text>,
            /// The relay batch holding it.
            lease_holder -> Nullable<Text>,
            /// Until when (µs since the epoch).
            lease_expires_at -> Nullable<BigInt>,
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
            /// When it is worth visiting (µs since the epoch).
            available_at -> BigInt,
            /// The relay batch leasing it.
            lease_holder -> Nullable<Text>,
            /// Until when (µs since the epoch).
            lease_expires_at -> Nullable<BigInt>,
        }
    }

    diesel::allow_tables_to_appear_in_same_query!(outbox, outbox_aggregates);
}

const COLUMNS: &str = "id, aggregate_type, aggregate_id, sequence, event_type, payload, content_type, headers, \
     status, attempts, created_at, available_at, published_at, last_error, lease_holder, lease_expires_at";

/// Rows per multi-row insert (SQLite allows 32,766 bound values; entries take 10 each).
const ROWS_PER_INSERT: usize = 1000;
/// Values per `IN (...)` list.
const IN_CHUNK: usize = 500;
/// Arms per `UNION ALL` (SQLite allows 500).
const ARMS: usize = 100;

fn marks(n: usize) -> String {
    vec!["?"; n].join(", ")
}

type Query<'a> = BoxedSqlQuery<'a, Sqlite, SqlQuery>;

fn query<'a>(sql: impl Into<String>) -> Query<'a> {
    diesel::sql_query(sql.into()).into_boxed()
}

fn id_bytes(id: &EntryId) -> Vec<u8> {
    id.to_bytes().to_vec()
}

struct Sql {
    entries: String,
    aggregates: String,
    upsert: String,
    lock_aggregates: String,
}

impl Sql {
    fn new(tables: &Tables) -> Self {
        let entries = tables.render("{entries}", '"', false);
        let aggregates = tables.render("{aggregates}", '"', false);
        Sql {
            upsert: format!(
                "INSERT INTO {aggregates} (aggregate_type, aggregate_id, next_sequence, unpublished, available_at) \
                 VALUES (?, ?, ?, ?, ?) ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET \
                 next_sequence = next_sequence + excluded.next_sequence, \
                 unpublished = unpublished + excluded.unpublished, \
                 available_at = MIN(available_at, excluded.available_at) RETURNING next_sequence"
            ),
            lock_aggregates: format!(
                "SELECT aggregate_type, aggregate_id FROM {aggregates} WHERE available_at <= ?1 AND unpublished > 0 \
                 AND (lease_expires_at IS NULL OR lease_expires_at <= ?1) ORDER BY available_at LIMIT ?2"
            ),
            entries,
            aggregates,
        }
    }
}

#[derive(QueryableByName)]
struct Row {
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
    #[diesel(sql_type = BigInt)]
    attempts: i64,
    #[diesel(sql_type = BigInt)]
    created_at: i64,
    #[diesel(sql_type = BigInt)]
    available_at: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    published_at: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    last_error: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    lease_holder: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    lease_expires_at: Option<i64>,
}

fn entry_id(table: &str, bytes: Vec<u8>) -> Result<EntryId> {
    let bytes: [u8; 16] = bytes.try_into().map_err(|_| bad_row(table, "an id is not 16 bytes"))?;
    Ok(EntryId::from_bytes(bytes))
}

impl Row {
    fn into_entry(self, table: &str) -> Result<Entry> {
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
            attempts: i32::try_from(self.attempts).unwrap_or(i32::MAX),
            created_at: Timestamp::from_micros(self.created_at),
            available_at: Timestamp::from_micros(self.available_at),
            published_at: self.published_at.map(Timestamp::from_micros),
            last_error: self.last_error,
            lease_holder: self.lease_holder,
            lease_expires_at: self.lease_expires_at.map(Timestamp::from_micros),
        }
        .into_entry(table)
    }
}

#[derive(QueryableByName)]
struct SeqRow {
    #[diesel(sql_type = BigInt)]
    next_sequence: i64,
}

#[derive(QueryableByName)]
struct KeyRow {
    #[diesel(sql_type = Text)]
    aggregate_type: String,
    #[diesel(sql_type = Text)]
    aggregate_id: String,
}

#[derive(QueryableByName)]
struct HeldRow {
    #[diesel(sql_type = Binary)]
    id: Vec<u8>,
    #[diesel(sql_type = Text)]
    aggregate_type: String,
    #[diesel(sql_type = Text)]
    aggregate_id: String,
}

#[derive(QueryableByName)]
struct StatsRow {
    #[diesel(sql_type = BigInt)]
    pending: i64,
    #[diesel(sql_type = BigInt)]
    processing: i64,
    #[diesel(sql_type = BigInt)]
    published: i64,
    #[diesel(sql_type = BigInt)]
    failed: i64,
    #[diesel(sql_type = BigInt)]
    dead: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    oldest: Option<i64>,
}

/// The outbox in SQLite: its tables, its schema, and the writer applications call inside their
/// own diesel transactions. Cheap to clone. The free functions [`enqueue`] and
/// [`enqueue_batch`] use the default tables.
///
/// ```no_run
/// use diesel::{Connection, SqliteConnection};
/// use outbox_core::NewEntry;
/// use outbox_diesel::{Tables, sqlite::SqliteOutbox};
///
/// # fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let mut conn = SqliteConnection::establish("app.db")?;
/// let outbox = SqliteOutbox::new(Tables::new("billing_outbox")?);
/// outbox.migrate(&mut conn)?;
/// conn.immediate_transaction(|conn| {
///     let entry = NewEntry::builder("invoice", "i-1", "invoice.sent").json("{}").build()?;
///     outbox.enqueue(conn, &entry)?;
///     Ok::<_, Box<dyn std::error::Error>>(())
/// })?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SqliteOutbox {
    tables: Tables,
    sql: Arc<Sql>,
}

impl fmt::Debug for SqliteOutbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteOutbox").field("tables", &self.tables).finish_non_exhaustive()
    }
}

impl Default for SqliteOutbox {
    /// The default tables (`outbox`, `outbox_aggregates`).
    fn default() -> Self {
        SqliteOutbox::new(Tables::default())
    }
}

fn default_outbox() -> &'static SqliteOutbox {
    static DEFAULT: OnceLock<SqliteOutbox> = OnceLock::new();
    DEFAULT.get_or_init(SqliteOutbox::default)
}

impl SqliteOutbox {
    /// The outbox in `tables` (already validated; a schema, if set, is ignored).
    pub fn new(tables: Tables) -> Self {
        let sql = Arc::new(Sql::new(&tables));
        SqliteOutbox { tables, sql }
    }

    /// The tables.
    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    /// The schema's SQL for these tables (several statements, idempotent).
    pub fn migration_sql(&self) -> String {
        self.tables.render(raw::SQLITE, '"', false)
    }

    /// Creates the tables and indexes if they are missing (idempotent).
    pub fn migrate(&self, conn: &mut SqliteConnection) -> Result<()> {
        conn.batch_execute(&self.migration_sql()).map_err(|e| self.err("migrate", e))
    }

    /// Writes `entry` with the caller's connection, so it commits or rolls back with the caller's
    /// changes: call it inside `conn.immediate_transaction(|conn| ...)`. Never commits. A
    /// duplicate id fails with [`ErrorKind::Validation`].
    pub fn enqueue(&self, conn: &mut SqliteConnection, entry: &NewEntry) -> Result<()> {
        self.enqueue_batch(conn, std::slice::from_ref(entry))
    }

    /// Writes many entries with the caller's connection: one upsert per distinct aggregate, then
    /// multi-row inserts of up to 1,000 entries. Entries of one aggregate get consecutive
    /// sequences in slice order.
    pub fn enqueue_batch(&self, conn: &mut SqliteConnection, entries: &[NewEntry]) -> Result<()> {
        let what = "enqueue";
        let err = |e| self.err(what, e);
        if entries.is_empty() {
            return Ok(());
        }
        let now = Timestamp::now();
        let mut sequence = vec![0i64; entries.len()];
        for (key, members) in plan::group_by_aggregate(entries) {
            let n = members.len() as i64;
            let first_due = members.iter().map(|&m| plan::available_at(&entries[m], now)).min().unwrap_or(now);
            let top: SeqRow = query(self.sql.upsert.as_str())
                .bind::<Text, _>(key.0)
                .bind::<Text, _>(key.1)
                .bind::<BigInt, _>(n)
                .bind::<BigInt, _>(n)
                .bind::<BigInt, _>(first_due.as_micros())
                .get_result(conn)
                .map_err(err)?;
            for (i, &m) in members.iter().enumerate() {
                sequence[m] = top.next_sequence - n + 1 + i as i64;
            }
        }
        let row = format!("(?, ?, ?, ?, ?, ?, ?, ?, '{}', 0, ?, ?)", Status::Pending.as_str());
        for (chunk_no, chunk) in entries.chunks(ROWS_PER_INSERT).enumerate() {
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
                    .bind::<BigInt, _>(now.as_micros())
                    .bind::<BigInt, _>(plan::available_at(e, now).as_micros());
            }
            q.execute(conn).map_err(err)?;
        }
        Ok(())
    }

    fn err(&self, what: &str, e: diesel::result::Error) -> Error {
        map(Db::Sqlite, what, self.tables.name(), e)
    }

    /// A store over its own connection to `database_url` (a file path or `file:` URL), opened
    /// with a 5 s busy timeout and WAL journaling so relays and writers can share the file.
    pub fn open_store(&self, database_url: &str) -> Result<SqliteStore> {
        let mut conn = SqliteConnection::establish(database_url).map_err(|e| {
            Error::new(ErrorKind::Unavailable, format!("opening the SQLite database `{database_url}` failed"))
                .with_source(e)
        })?;
        conn.batch_execute("PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
            .map_err(|e| self.err("opening the store", e))?;
        Ok(self.store(conn))
    }

    /// A store over `conn` (configure its busy timeout yourself, e.g. `PRAGMA busy_timeout = 5000`).
    pub fn store(&self, conn: SqliteConnection) -> SqliteStore {
        SqliteStore { conn: Arc::new(Mutex::new(conn)), outbox: self.clone() }
    }
}

/// Writes `entry` into the default tables with the caller's connection; see
/// [`SqliteOutbox::enqueue`].
pub fn enqueue(conn: &mut SqliteConnection, entry: &NewEntry) -> Result<()> {
    default_outbox().enqueue(conn, entry)
}

/// Writes `entries` into the default tables; see [`SqliteOutbox::enqueue_batch`].
pub fn enqueue_batch(conn: &mut SqliteConnection, entries: &[NewEntry]) -> Result<()> {
    default_outbox().enqueue_batch(conn, entries)
}

/// Creates the default tables if they are missing; see [`SqliteOutbox::migrate`].
pub fn migrate(conn: &mut SqliteConnection) -> Result<()> {
    default_outbox().migrate(conn)
}

/// The embedded diesel migrations of the default tables, for
/// `MigrationHarness::run_pending_migrations`.
#[cfg(feature = "migrations")]
#[cfg_attr(docsrs, doc(cfg(feature = "migrations")))]
pub const MIGRATIONS: diesel_migrations::EmbeddedMigrations = diesel_migrations::embed_migrations!("migrations/sqlite");

/// The relay's side of a SQLite outbox: [`Store`] and [`Maintenance`] over one diesel
/// connection, used on tokio's blocking pool. Cheap to clone (clones share the connection).
///
/// ```no_run
/// use outbox_core::{NoopPublisher, Relay, RelayConfig};
/// use outbox_diesel::sqlite::SqliteOutbox;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let store = SqliteOutbox::default().open_store("app.db")?;
/// let relay = Relay::new(store, NoopPublisher, RelayConfig::default())?;
/// relay.run_once().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<SqliteConnection>>,
    outbox: SqliteOutbox,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore").field("tables", &self.outbox.tables).finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// A store for the default tables over its own connection to `database_url`; see
    /// [`SqliteOutbox::open_store`].
    pub fn open(database_url: &str) -> Result<Self> {
        SqliteOutbox::default().open_store(database_url)
    }

    /// The outbox (tables and writer).
    pub fn outbox(&self) -> &SqliteOutbox {
        &self.outbox
    }

    /// Runs `f` with the connection on tokio's blocking pool.
    async fn blocking<R: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&SqliteOutbox, &mut SqliteConnection) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let conn = self.conn.clone();
        let outbox = self.outbox.clone();
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock leaves no half-done change behind: every change runs
            // in a transaction that diesel rolls back when the closure unwinds.
            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&outbox, &mut conn)
        })
        .await
        .map_err(|e| {
            Error::new(ErrorKind::Unexpected, format!("{what} failed: the blocking task died")).with_source(e)
        })?
    }
}

/// `UPDATE entries SET <set> WHERE id IN (...) [AND lease_holder = ?]`, in chunks; `bind` binds
/// the `SET` clause's values first.
fn update_ids(
    conn: &mut SqliteConnection,
    outbox: &SqliteOutbox,
    set: &str,
    bind: &dyn Fn(Query<'static>) -> Query<'static>,
    ids: &[EntryId],
    holder: Option<&str>,
) -> diesel::QueryResult<()> {
    for chunk in ids.chunks(IN_CHUNK) {
        let sql = format!(
            "UPDATE {} SET {set} WHERE id IN ({}){}",
            outbox.sql.entries,
            marks(chunk.len()),
            if holder.is_some() { " AND lease_holder = ?" } else { "" }
        );
        let mut q = bind(query(sql));
        for id in chunk {
            q = q.bind::<Binary, _>(id_bytes(id));
        }
        if let Some(h) = holder {
            q = q.bind::<Text, _>(h.to_string());
        }
        q.execute(conn)?;
    }
    Ok(())
}

fn claim_in(outbox: &SqliteOutbox, conn: &mut SqliteConnection, request: &ClaimRequest<'_>) -> Result<Vec<Entry>> {
    let what = "claiming entries";
    let err = |e| outbox.err(what, e);
    let sql = &outbox.sql;
    let table = outbox.tables.name();
    let k = plan::aggregates_for(request);
    let locked: Vec<KeyRow> = query(sql.lock_aggregates.as_str())
        .bind::<BigInt, _>(request.now.as_micros())
        .bind::<BigInt, _>(k as i64)
        .load(conn)
        .map_err(err)?;
    if locked.is_empty() {
        return Ok(Vec::new());
    }
    let locked: Vec<Key> = locked.into_iter().map(|r| (r.aggregate_type, r.aggregate_id)).collect();
    let dead_filter = if request.on_dead == DeadPolicy::Block {
        String::new()
    } else {
        format!(" AND status <> '{}'", Status::Dead.as_str())
    };
    let arm = format!(
        "SELECT * FROM (SELECT {COLUMNS} FROM {} WHERE aggregate_type = ? AND aggregate_id = ? \
         AND status <> '{}'{dead_filter} ORDER BY sequence LIMIT ?)",
        sql.entries,
        Status::Published.as_str(),
    );
    let mut rows = Vec::new();
    for group in locked.chunks(ARMS) {
        let mut q = query(vec![arm.as_str(); group.len()].join(" UNION ALL "));
        for (t, i) in group {
            q = q
                .bind::<Text, _>(t.clone())
                .bind::<Text, _>(i.clone())
                .bind::<BigInt, _>(request.max_per_aggregate as i64);
        }
        let loaded: Vec<Row> = q.load(conn).map_err(err)?;
        for row in loaded {
            rows.push(row.into_entry(table)?);
        }
    }
    let plan = plan::plan_claim(request, &locked, rows)?;
    let ids: Vec<EntryId> = plan.claimed.iter().map(|e| e.id).collect();
    let until = request.lease_until.as_micros();
    let holder = request.holder.to_string();
    let set = format!("status = '{}', lease_holder = ?, lease_expires_at = ?", Status::Processing.as_str());
    let h = holder.clone();
    update_ids(conn, outbox, &set, &move |q| q.bind::<Text, _>(h.clone()).bind::<BigInt, _>(until), &ids, None)
        .map_err(err)?;
    let lease = format!(
        "UPDATE {} SET lease_holder = ?, lease_expires_at = ? WHERE aggregate_type = ? AND aggregate_id = ?",
        sql.aggregates
    );
    for (t, i) in &plan.leased {
        query(lease.as_str())
            .bind::<Text, _>(holder.clone())
            .bind::<BigInt, _>(until)
            .bind::<Text, _>(t.clone())
            .bind::<Text, _>(i.clone())
            .execute(conn)
            .map_err(err)?;
    }
    let park = format!("UPDATE {} SET available_at = ? WHERE aggregate_type = ? AND aggregate_id = ?", sql.aggregates);
    for ((t, i), at) in &plan.parked {
        query(park.as_str())
            .bind::<BigInt, _>(at.as_micros())
            .bind::<Text, _>(t.clone())
            .bind::<Text, _>(i.clone())
            .execute(conn)
            .map_err(err)?;
    }
    Ok(plan.claimed)
}

fn complete_in(outbox: &SqliteOutbox, conn: &mut SqliteConnection, completion: &Completion) -> Result<()> {
    let what = "completing a batch";
    let err = |e| outbox.err(what, e);
    let sql = &outbox.sql;
    let table = outbox.tables.name();
    let all = plan::completion_ids(completion);
    let mut held: HashMap<EntryId, Key> = HashMap::with_capacity(all.len());
    for chunk in all.chunks(IN_CHUNK) {
        let text = format!(
            "SELECT id, aggregate_type, aggregate_id FROM {} WHERE id IN ({}) AND lease_holder = ? AND status = '{}'",
            sql.entries,
            marks(chunk.len()),
            Status::Processing.as_str()
        );
        let mut q = query(text);
        for id in chunk {
            q = q.bind::<Binary, _>(id_bytes(id));
        }
        let rows: Vec<HeldRow> = q.bind::<Text, _>(completion.holder.clone()).load(conn).map_err(err)?;
        for r in rows {
            held.insert(entry_id(table, r.id)?, (r.aggregate_type, r.aggregate_id));
        }
    }
    if held.is_empty() {
        return Ok(());
    }
    let plan = plan::plan_completion(completion, &held);
    let holder = Some(completion.holder.as_str());
    let now = completion.now.as_micros();
    let set = format!(
        "status = '{}', published_at = ?, lease_holder = NULL, lease_expires_at = NULL",
        Status::Published.as_str()
    );
    update_ids(conn, outbox, &set, &move |q| q.bind::<BigInt, _>(now), &plan.published, holder).map_err(err)?;
    let set = format!("status = '{}', lease_holder = NULL, lease_expires_at = NULL", Status::Pending.as_str());
    update_ids(conn, outbox, &set, &|q| q, &plan.released, holder).map_err(err)?;
    let retry = format!(
        "UPDATE {} SET status = '{}', attempts = attempts + 1, available_at = ?, last_error = ?, \
         lease_holder = NULL, lease_expires_at = NULL WHERE id = ? AND lease_holder = ?",
        sql.entries,
        Status::Failed.as_str()
    );
    for r in &plan.retry {
        query(retry.as_str())
            .bind::<BigInt, _>(r.at.as_micros())
            .bind::<Text, _>(r.error.clone())
            .bind::<Binary, _>(id_bytes(&r.id))
            .bind::<Text, _>(completion.holder.clone())
            .execute(conn)
            .map_err(err)?;
    }
    let dead = format!(
        "UPDATE {} SET status = '{}', attempts = attempts + 1, last_error = ?, \
         lease_holder = NULL, lease_expires_at = NULL WHERE id = ? AND lease_holder = ?",
        sql.entries,
        Status::Dead.as_str()
    );
    for d in &plan.dead {
        query(dead.as_str())
            .bind::<Text, _>(d.error.clone())
            .bind::<Binary, _>(id_bytes(&d.id))
            .bind::<Text, _>(completion.holder.clone())
            .execute(conn)
            .map_err(err)?;
    }
    let release = format!(
        "UPDATE {} SET unpublished = unpublished - ?1, \
         available_at = CASE WHEN unpublished - ?1 <= 0 THEN ?2 WHEN lease_holder = ?3 THEN ?4 ELSE available_at END, \
         lease_expires_at = CASE WHEN lease_holder = ?3 THEN NULL ELSE lease_expires_at END, \
         lease_holder = CASE WHEN lease_holder = ?3 THEN NULL ELSE lease_holder END \
         WHERE aggregate_type = ?5 AND aggregate_id = ?6",
        sql.aggregates
    );
    for a in &plan.aggregates {
        query(release.as_str())
            .bind::<BigInt, _>(a.published)
            .bind::<BigInt, _>(NEVER.as_micros())
            .bind::<Text, _>(completion.holder.clone())
            .bind::<BigInt, _>(a.available_at.as_micros())
            .bind::<Text, _>(a.key.0.clone())
            .bind::<Text, _>(a.key.1.clone())
            .execute(conn)
            .map_err(err)?;
    }
    Ok(())
}

/// Runs `body` in an immediate transaction, mapping diesel's own failures.
fn immediate<R>(
    outbox: &SqliteOutbox,
    conn: &mut SqliteConnection,
    what: &str,
    body: impl FnOnce(&mut SqliteConnection) -> Result<R>,
) -> Result<R> {
    enum Fail {
        Outbox(Error),
        Diesel(diesel::result::Error),
    }
    impl From<diesel::result::Error> for Fail {
        fn from(e: diesel::result::Error) -> Self {
            Fail::Diesel(e)
        }
    }
    conn.immediate_transaction(|conn| body(conn).map_err(Fail::Outbox)).map_err(|e| match e {
        Fail::Outbox(e) => e,
        Fail::Diesel(e) => outbox.err(what, e),
    })
}

impl Store for SqliteStore {
    async fn claim(&self, request: &ClaimRequest<'_>) -> Result<Vec<Entry>> {
        let what = "claiming entries";
        let holder = request.holder.to_string();
        let (now, lease_until, max_entries, max_per_aggregate, on_dead) =
            (request.now, request.lease_until, request.max_entries, request.max_per_aggregate, request.on_dead);
        self.blocking(what, move |outbox, conn| {
            let request = ClaimRequest { holder: &holder, now, lease_until, max_entries, max_per_aggregate, on_dead };
            immediate(outbox, conn, what, |conn| claim_in(outbox, conn, &request))
        })
        .await
    }

    async fn complete(&self, completion: &Completion) -> Result<()> {
        if completion.is_empty() {
            return Ok(());
        }
        let what = "completing a batch";
        let completion = completion.clone();
        self.blocking(what, move |outbox, conn| {
            immediate(outbox, conn, what, |conn| complete_in(outbox, conn, &completion))
        })
        .await
    }
}

impl Maintenance for SqliteStore {
    async fn purge_published(&self, before: Timestamp, limit: usize) -> Result<u64> {
        let what = "purging published entries";
        self.blocking(what, move |outbox, conn| {
            let sql = format!(
                "DELETE FROM {0} WHERE id IN (SELECT id FROM {0} WHERE status = '{1}' AND published_at < ? \
                 ORDER BY published_at LIMIT ?)",
                outbox.sql.entries,
                Status::Published.as_str()
            );
            let n = query(sql)
                .bind::<BigInt, _>(before.as_micros())
                .bind::<BigInt, _>(i64::try_from(limit).unwrap_or(i64::MAX))
                .execute(conn)
                .map_err(|e| outbox.err(what, e))?;
            Ok(n as u64)
        })
        .await
    }

    async fn stats(&self, now: Timestamp) -> Result<Stats> {
        let what = "reading stats";
        self.blocking(what, move |outbox, conn| {
            let count = |s: Status| format!("count(CASE WHEN status = '{}' THEN 1 END)", s.as_str());
            let sql = format!(
                "SELECT {} AS pending, {} AS processing, {} AS published, {} AS failed, {} AS dead, \
                 min(CASE WHEN status IN ('{}', '{}', '{}') THEN created_at END) AS oldest FROM {}",
                count(Status::Pending),
                count(Status::Processing),
                count(Status::Published),
                count(Status::Failed),
                count(Status::Dead),
                Status::Pending.as_str(),
                Status::Processing.as_str(),
                Status::Failed.as_str(),
                outbox.sql.entries
            );
            let row: StatsRow = query(sql).get_result(conn).map_err(|e| outbox.err(what, e))?;
            let n = |v: i64| u64::try_from(v).unwrap_or(0);
            Ok(Stats {
                pending: n(row.pending),
                processing: n(row.processing),
                published: n(row.published),
                failed: n(row.failed),
                dead: n(row.dead),
                oldest_unpublished_age: row.oldest.map(|o| now.saturating_duration_since(Timestamp::from_micros(o))),
            })
        })
        .await
    }

    async fn requeue_dead(&self, which: Requeue<'_>, now: Timestamp) -> Result<u64> {
        let what = "requeuing dead entries";
        enum Which {
            All,
            Ids(Vec<EntryId>),
            Aggregate(String, String),
        }
        let which = match which {
            Requeue::All => Which::All,
            Requeue::Ids(ids) => Which::Ids(ids.to_vec()),
            Requeue::Aggregate { aggregate_type, aggregate_id } => {
                Which::Aggregate(aggregate_type.to_string(), aggregate_id.to_string())
            }
        };
        self.blocking(what, move |outbox, conn| {
            immediate(outbox, conn, what, |conn| {
                let err = |e| outbox.err(what, e);
                let set = format!(
                    "UPDATE {} SET status = '{}', attempts = 0, available_at = ?, lease_holder = NULL, \
                     lease_expires_at = NULL WHERE status = '{}'",
                    outbox.sql.entries,
                    Status::Pending.as_str(),
                    Status::Dead.as_str()
                );
                let returning = " RETURNING aggregate_type, aggregate_id";
                let mut touched: Vec<(String, String)> = Vec::new();
                let mut collect =
                    |rows: Vec<KeyRow>| touched.extend(rows.into_iter().map(|r| (r.aggregate_type, r.aggregate_id)));
                match &which {
                    Which::All => collect(
                        query(format!("{set}{returning}"))
                            .bind::<BigInt, _>(now.as_micros())
                            .load(conn)
                            .map_err(err)?,
                    ),
                    Which::Ids(ids) => {
                        for chunk in ids.chunks(IN_CHUNK) {
                            let mut q = query(format!("{set} AND id IN ({}){returning}", marks(chunk.len())))
                                .bind::<BigInt, _>(now.as_micros());
                            for id in chunk {
                                q = q.bind::<Binary, _>(id_bytes(id));
                            }
                            collect(q.load(conn).map_err(err)?);
                        }
                    }
                    Which::Aggregate(t, i) => collect(
                        query(format!("{set} AND aggregate_type = ? AND aggregate_id = ?{returning}"))
                            .bind::<BigInt, _>(now.as_micros())
                            .bind::<Text, _>(t.clone())
                            .bind::<Text, _>(i.clone())
                            .load(conn)
                            .map_err(err)?,
                    ),
                }
                let count = touched.len() as u64;
                touched.sort();
                touched.dedup();
                let wake = format!(
                    "UPDATE {} SET available_at = MIN(available_at, ?) WHERE aggregate_type = ? AND aggregate_id = ?",
                    outbox.sql.aggregates
                );
                for (t, i) in touched {
                    query(wake.as_str())
                        .bind::<BigInt, _>(now.as_micros())
                        .bind::<Text, _>(t)
                        .bind::<Text, _>(i)
                        .execute(conn)
                        .map_err(err)?;
                }
                Ok(count)
            })
        })
        .await
    }

    async fn entry(&self, id: EntryId) -> Result<Option<Entry>> {
        let what = "reading an entry";
        self.blocking(what, move |outbox, conn| {
            let rows: Vec<Row> = query(format!("SELECT {COLUMNS} FROM {} WHERE id = ?", outbox.sql.entries))
                .bind::<Binary, _>(id_bytes(&id))
                .load(conn)
                .map_err(|e| outbox.err(what, e))?;
            rows.into_iter().next().map(|r| r.into_entry(outbox.tables.name())).transpose()
        })
        .await
    }
}
