//! MySQL 8 and MariaDB 10.6+: [`MySqlOutbox`] (schema and writer) and [`MySqlStore`] (the
//! relay's store).
//!
//! # How it works
//! - **Write**: `INSERT … ON DUPLICATE KEY UPDATE next_sequence = LAST_INSERT_ID(next_sequence + n)`
//!   on the aggregate's row returns the new sequence in the statement's reply (no extra round
//!   trip) and locks the row until the caller's transaction ends, so sequences of one aggregate
//!   follow commit order. Then one multi-row `INSERT` of the entries.
//! - **Claim**: one short `READ COMMITTED` transaction: read up to `3k` due, unleased candidate
//!   aggregates without locking, lock `k` of them by primary key with `FOR UPDATE SKIP LOCKED`
//!   (re-checking they are still due and unleased), read each one's first unpublished entries
//!   (one `UNION ALL` statement of per-aggregate index range reads: `published_at IS NULL ORDER
//!   BY sequence LIMIT m`; MariaDB has no `LATERAL`), then one `UPDATE` marks the entries and
//!   one leases the aggregates.
//! - **Complete**: one short `READ COMMITTED` transaction: read the batch's aggregates without
//!   locking, lock them by primary key in key order, read which entries the holder still holds,
//!   then one `UPDATE` per status group and one for the aggregates (values per row through
//!   `CASE`).
//!
//! Claims and completions lock aggregate rows only through the primary key: a lock taken through
//! the `available_at` index, or through `IN (SELECT …) FOR UPDATE`, made relays wait on (and
//! deadlock with) each other.
//!
//! `READ COMMITTED` (set per transaction, the pool's default is untouched) keeps InnoDB from
//! taking gap locks that would block writers, and lets each statement see what committed before
//! the locks were taken. Wake-ups: polling with the relay's idle back-off.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use outbox_core::BoxFuture;
use outbox_core::{
    ClaimRequest, Completion, DeadPolicy, Entry, EntryId, Error, Lease, Maintenance, NewEntry, Requeue, Result, Stats,
    Status, Store, Timestamp,
};
use sqlx::mysql::{MySql, MySqlConnection, MySqlPool, MySqlRow};
use sqlx::pool::PoolConnection;
use sqlx::{Connection, Row, Transaction};
use time::PrimitiveDateTime;

use crate::ClaimOptions;
use crate::config::Tables;
use crate::convert::{from_naive, to_naive};
use crate::error::{Db, map};
use crate::plan::{self, Key, NEVER};
use crate::schema::{self, Migration};

const COLUMNS: &str = "id, aggregate_type, aggregate_id, sequence, event_type, payload, content_type, \
     CAST(headers AS CHAR), status, attempts, created_at, available_at, published_at, last_error, lease_holder, \
     lease_expires_at";

/// Rows per multi-row insert (12 values each, well under the 65,535 placeholders allowed).
const ROWS_PER_INSERT: usize = 1000;
/// Ids per `IN (...)` list.
const IN_CHUNK: usize = 1000;
/// Aggregates per statement.
const AGG_CHUNK: usize = 200;

/// A claim reads this many candidate aggregates per aggregate it wants to lock (other relays may
/// hold the first ones).
const CANDIDATES_PER_LOCK: usize = 3;

fn marks(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// `(aggregate_type = ? AND aggregate_id = ?) OR …` for `n` aggregates.
fn keys_match(n: usize) -> String {
    vec!["(aggregate_type = ? AND aggregate_id = ?)"; n].join(" OR ")
}

/// `CASE WHEN (aggregate_type = ? AND aggregate_id = ?) THEN ? … END` for `n` aggregates.
fn case_by_key(n: usize) -> String {
    format!("CASE {} END", vec!["WHEN (aggregate_type = ? AND aggregate_id = ?) THEN ?"; n].join(" "))
}

/// `CASE id WHEN ? THEN ? … END` for `n` entries.
fn case_by_id(n: usize) -> String {
    format!("CASE id {} END", vec!["WHEN ? THEN ?"; n].join(" "))
}

struct Sql {
    entries: String,
    aggregates: String,
    upsert: String,
    /// Due, unleased aggregates, read without locking (see [`MySqlStore::lock_candidates`]).
    candidates: String,
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
            candidates: format!(
                "SELECT aggregate_type, aggregate_id FROM {aggregates} WHERE available_at <= ? AND unpublished > 0 \
                 AND (lease_expires_at IS NULL OR lease_expires_at <= ?) ORDER BY available_at LIMIT ?"
            ),
            entries,
            aggregates,
        }
    }
}

/// The outbox in MySQL or MariaDB: its tables, its schema, and the writer applications call
/// inside their own transactions. Cheap to clone.
///
/// ```no_run
/// use outbox_core::NewEntry;
/// use outbox_sqlx::{MySqlOutbox, Tables};
///
/// # async fn run(pool: sqlx::MySqlPool) -> Result<(), Box<dyn std::error::Error>> {
/// let outbox = MySqlOutbox::new(Tables::new("outbox")?);
/// outbox.migrate(&pool).await?;
///
/// let mut tx = pool.begin().await?;
/// let entry = NewEntry::builder("order", "o-1", "order.placed").json("{}").build()?;
/// outbox.enqueue(&mut *tx, &entry).await?;
/// tx.commit().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MySqlOutbox {
    tables: Tables,
    sql: Arc<Sql>,
}

impl fmt::Debug for MySqlOutbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MySqlOutbox").field("tables", &self.tables).finish_non_exhaustive()
    }
}

impl MySqlOutbox {
    /// The outbox in `tables` (already validated; a schema, if set, is ignored: the tables live
    /// in the connection's database).
    pub fn new(tables: Tables) -> Self {
        let sql = Arc::new(Sql::new(&tables));
        MySqlOutbox { tables, sql }
    }

    /// The tables.
    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    /// The migrations for these tables, rendered, in order.
    pub fn migrations(&self) -> Vec<Migration> {
        schema::render(&self.tables, schema::raw::MYSQL, '`', false)
    }

    /// Creates the tables and indexes if they are missing (idempotent), one statement at a time.
    pub async fn migrate(&self, pool: &MySqlPool) -> Result<()> {
        let mut conn = pool.acquire().await.map_err(|e| self.err("migrate", e))?;
        for m in self.migrations() {
            for statement in schema::statements(&m.sql) {
                sqlx::raw_sql(&statement).execute(&mut *conn).await.map_err(|e| self.err("migrate", e))?;
            }
        }
        Ok(())
    }

    /// Writes `entry` with the caller's connection (pass `&mut *tx` for a `sqlx::Transaction`),
    /// so it commits or rolls back with the caller's changes. Never commits. The aggregate's row
    /// stays locked until the transaction ends: sequences follow commit order.
    pub async fn enqueue(&self, conn: &mut MySqlConnection, entry: &NewEntry) -> Result<()> {
        self.enqueue_batch(conn, std::slice::from_ref(entry)).await
    }

    /// Writes many entries with the caller's connection: one upsert per distinct aggregate (in
    /// key order, so concurrent batch writers cannot deadlock on each other), then multi-row
    /// inserts of up to 1,000 entries. Entries of one aggregate get consecutive sequences in
    /// slice order.
    pub async fn enqueue_batch(&self, conn: &mut MySqlConnection, entries: &[NewEntry]) -> Result<()> {
        let what = "enqueue";
        if entries.is_empty() {
            return Ok(());
        }
        let now = Timestamp::now();
        let mut sequence = vec![0i64; entries.len()];
        for (key, members) in plan::group_by_aggregate(entries) {
            let n = members.len() as i64;
            let first_due = members.iter().map(|&m| plan::available_at(&entries[m], now)).min().unwrap_or(now);
            let done = sqlx::query(&self.sql.upsert)
                .bind(&key.0)
                .bind(&key.1)
                .bind(n)
                .bind(n)
                .bind(to_naive(first_due))
                .bind(n)
                .bind(n)
                .bind(to_naive(first_due))
                .execute(&mut *conn)
                .await
                .map_err(|e| self.err(what, e))?;
            let top = i64::try_from(done.last_insert_id()).unwrap_or(0);
            if top < n {
                return Err(Error::new(
                    outbox_core::ErrorKind::Unexpected,
                    format!(
                        "enqueue failed: the server did not report the aggregate's sequence through \
                         LAST_INSERT_ID (got {top}); is this MySQL 8 or MariaDB 10.6+?"
                    ),
                ));
            }
            for (i, &m) in members.iter().enumerate() {
                sequence[m] = top - n + 1 + i as i64;
            }
        }
        for (chunk_no, chunk) in entries.chunks(ROWS_PER_INSERT).enumerate() {
            let row = format!("(?, ?, ?, ?, ?, ?, ?, ?, '{}', 0, ?, ?)", Status::Pending.as_str());
            let sql = format!(
                "INSERT INTO {} (id, aggregate_type, aggregate_id, sequence, event_type, payload, content_type, \
                 headers, status, attempts, created_at, available_at) VALUES {}",
                self.sql.entries,
                vec![row.as_str(); chunk.len()].join(", ")
            );
            let mut q = sqlx::query(&sql);
            for (i, e) in chunk.iter().enumerate() {
                q = q
                    .bind(e.id().to_bytes().to_vec())
                    .bind(e.aggregate_type())
                    .bind(e.aggregate_id())
                    .bind(sequence[chunk_no * ROWS_PER_INSERT + i])
                    .bind(e.event_type())
                    .bind(e.payload().as_bytes())
                    .bind(e.content_type())
                    .bind(plan::headers_to_json(e.headers()))
                    .bind(to_naive(now))
                    .bind(to_naive(plan::available_at(e, now)));
            }
            q.execute(&mut *conn).await.map_err(|e| self.err(what, e))?;
        }
        Ok(())
    }

    /// A store over `pool` for relays and operators.
    pub fn store(&self, pool: MySqlPool) -> MySqlStore {
        MySqlStore::new(pool, self.clone())
    }

    fn err(&self, what: &str, e: sqlx::Error) -> Error {
        map(Db::MySql, what, self.tables.name(), e)
    }
}

/// The relay's side of a MySQL/MariaDB outbox: [`Store`] and [`Maintenance`] over a pool.
/// Cheap to clone (clones share the pool).
#[derive(Clone)]
pub struct MySqlStore {
    pool: MySqlPool,
    outbox: MySqlOutbox,
    options: ClaimOptions,
}

impl fmt::Debug for MySqlStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MySqlStore").field("tables", &self.outbox.tables).field("options", &self.options).finish()
    }
}

/// A text column. The schema's binary collation (`utf8mb4_bin`, for byte-exact keys) makes the
/// server describe text columns as binary, so read bytes when the driver refuses a `String`.
fn text(row: &MySqlRow, i: usize) -> std::result::Result<String, sqlx::Error> {
    match row.try_get::<Option<String>, _>(i) {
        Ok(s) => s.ok_or(sqlx::Error::ColumnDecode { index: i.to_string(), source: "unexpected NULL".into() }),
        Err(_) => {
            let bytes: Vec<u8> = row.try_get(i)?;
            String::from_utf8(bytes).map_err(|e| sqlx::Error::ColumnDecode { index: i.to_string(), source: e.into() })
        }
    }
}

/// A nullable text column (see [`text`]).
fn opt_text(row: &MySqlRow, i: usize) -> std::result::Result<Option<String>, sqlx::Error> {
    match row.try_get::<Option<String>, _>(i) {
        Ok(s) => Ok(s),
        Err(_) => {
            let bytes: Option<Vec<u8>> = row.try_get(i)?;
            bytes
                .map(String::from_utf8)
                .transpose()
                .map_err(|e| sqlx::Error::ColumnDecode { index: i.to_string(), source: e.into() })
        }
    }
}

/// An aggregate key at columns `i`, `i + 1`.
fn key(row: &MySqlRow, i: usize) -> std::result::Result<Key, sqlx::Error> {
    Ok((text(row, i)?, text(row, i + 1)?))
}

fn decode(table: &str, row: &MySqlRow) -> std::result::Result<Entry, Error> {
    let err = |e: sqlx::Error| map(Db::MySql, "reading an entry", table, e);
    let id: Vec<u8> = row.try_get(0).map_err(err)?;
    let id: [u8; 16] = id.try_into().map_err(|_| crate::error::bad_row(table, "an id is not 16 bytes"))?;
    let payload: Vec<u8> = row.try_get(5).map_err(err)?;
    let headers = text(row, 7).map_err(err)?;
    let status = text(row, 8).map_err(err)?;
    let attempts: i32 = row.try_get(9).map_err(err)?;
    let published_at: Option<PrimitiveDateTime> = row.try_get(12).map_err(err)?;
    let holder = opt_text(row, 14).map_err(err)?;
    let expires: Option<PrimitiveDateTime> = row.try_get(15).map_err(err)?;
    Ok(Entry {
        id: EntryId::from_bytes(id),
        aggregate_type: text(row, 1).map_err(err)?,
        aggregate_id: text(row, 2).map_err(err)?,
        sequence: row.try_get(3).map_err(err)?,
        event_type: text(row, 4).map_err(err)?,
        payload: payload.into(),
        content_type: text(row, 6).map_err(err)?,
        headers: plan::headers_from_json(table, &headers)?,
        status: plan::status(table, &status)?,
        attempts: u32::try_from(attempts).unwrap_or(0),
        created_at: from_naive(row.try_get(10).map_err(err)?),
        available_at: from_naive(row.try_get(11).map_err(err)?),
        published_at: published_at.map(from_naive),
        last_error: opt_text(row, 13).map_err(err)?,
        lease: match (holder, expires) {
            (Some(holder), Some(expires)) => Some(Lease { holder, expires_at: from_naive(expires) }),
            _ => None,
        },
    })
}

fn id_bytes(id: &EntryId) -> Vec<u8> {
    id.to_bytes().to_vec()
}

/// A value bound into a dynamically built statement.
enum Value<'a> {
    Text(&'a str),
    Int(i64),
    Time(Timestamp),
    Id(&'a EntryId),
}

fn bind_all<'q>(
    mut q: sqlx::query::Query<'q, MySql, sqlx::mysql::MySqlArguments>,
    values: &'q [Value<'q>],
) -> sqlx::query::Query<'q, MySql, sqlx::mysql::MySqlArguments> {
    for v in values {
        q = match v {
            Value::Text(s) => q.bind(*s),
            Value::Int(i) => q.bind(*i),
            Value::Time(t) => q.bind(to_naive(*t)),
            Value::Id(id) => q.bind(id_bytes(id)),
        };
    }
    q
}

impl MySqlStore {
    /// Locks up to `k` due, unleased aggregates, without waiting for anyone. Candidates are read
    /// first without locks (through the `available_at` index), then locked by primary key with
    /// `SKIP LOCKED` (re-checking that they are still due and unleased): a claim never holds a
    /// lock on the `available_at` index while it waits for a row, which is what made claims and
    /// completions (primary key first, then that index) deadlock. It reads more candidates than it
    /// locks, since other relays may hold the first ones.
    async fn lock_candidates(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::MySql>,
        request: &ClaimRequest<'_>,
        k: usize,
    ) -> std::result::Result<Vec<Key>, sqlx::Error> {
        let sql = &self.outbox.sql;
        let now = to_naive(request.now);
        let wanted = k.saturating_mul(CANDIDATES_PER_LOCK).min(AGG_CHUNK.max(k));
        let candidates: Vec<Key> = sqlx::query(&sql.candidates)
            .bind(now)
            .bind(now)
            .bind(wanted as i64)
            .fetch_all(&mut **tx)
            .await?
            .iter()
            .map(|r| key(r, 0))
            .collect::<std::result::Result<_, _>>()?;
        let mut locked: Vec<Key> = Vec::with_capacity(k);
        for chunk in candidates.chunks(AGG_CHUNK) {
            if locked.len() >= k {
                break;
            }
            let text = format!(
                "SELECT aggregate_type, aggregate_id FROM {} WHERE ({}) AND available_at <= ? AND unpublished > 0 \
                 AND (lease_expires_at IS NULL OR lease_expires_at <= ?) FOR UPDATE SKIP LOCKED",
                sql.aggregates,
                keys_match(chunk.len())
            );
            let mut q = sqlx::query(&text);
            for (t, i) in chunk {
                q = q.bind(t).bind(i);
            }
            let got: std::collections::HashSet<Key> = q
                .bind(now)
                .bind(now)
                .fetch_all(&mut **tx)
                .await?
                .iter()
                .map(|r| key(r, 0))
                .collect::<std::result::Result<_, _>>()?;
            // In the candidates' order (longest waiting first), at most k.
            locked.extend(chunk.iter().filter(|c| got.contains(*c)).take(k - locked.len()).cloned());
        }
        Ok(locked)
    }

    /// A store for `outbox` over `pool`, with default [`ClaimOptions`].
    pub fn new(pool: MySqlPool, outbox: MySqlOutbox) -> Self {
        MySqlStore { pool, outbox, options: ClaimOptions::default() }
    }

    /// Uses `options` for claims.
    pub fn with_options(mut self, options: ClaimOptions) -> Self {
        self.options = options;
        self
    }

    /// The pool.
    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// The outbox (tables and writer).
    pub fn outbox(&self) -> &MySqlOutbox {
        &self.outbox
    }

    fn err(&self, what: &str, e: sqlx::Error) -> Error {
        self.outbox.err(what, e)
    }

    /// A connection whose next transaction runs at `READ COMMITTED`.
    fn read_committed(&self) -> BoxFuture<'_, std::result::Result<PoolConnection<MySql>, sqlx::Error>> {
        Box::pin(async move {
            let mut conn = self.pool.acquire().await?;
            sqlx::query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED").execute(&mut *conn).await?;
            Ok(conn)
        })
    }

    fn execute<'a>(
        tx: &'a mut Transaction<'_, MySql>,
        sql: &'a str,
        values: &'a [Value<'a>],
    ) -> BoxFuture<'a, std::result::Result<u64, sqlx::Error>> {
        Box::pin(async move { Ok(bind_all(sqlx::query(sql), values).execute(&mut **tx).await?.rows_affected()) })
    }
}

impl Store for MySqlStore {
    async fn claim(&self, request: &ClaimRequest<'_>) -> Result<Vec<Entry>> {
        let what = "claiming entries";
        let sql = &self.outbox.sql;
        let table = self.outbox.tables.name();
        let k = plan::aggregates_for(self.options.aggregates_per_claim, request);
        let mut conn = self.read_committed().await.map_err(|e| self.err(what, e))?;
        let mut tx = conn.begin().await.map_err(|e| self.err(what, e))?;
        let locked = self.lock_candidates(&mut tx, request, k).await.map_err(|e| self.err(what, e))?;
        if locked.is_empty() {
            tx.rollback().await.map_err(|e| self.err(what, e))?;
            return Ok(Vec::new());
        }
        let skip_dead = if request.on_dead == DeadPolicy::Block {
            String::new()
        } else {
            format!(" AND status <> '{}'", Status::Dead.as_str())
        };
        let arm = format!(
            "(SELECT {COLUMNS} FROM {} WHERE aggregate_type = ? AND aggregate_id = ? AND published_at IS NULL{skip_dead} \
             ORDER BY sequence LIMIT ?)",
            sql.entries
        );
        let mut rows = Vec::new();
        for group in locked.chunks(AGG_CHUNK) {
            let text = vec![arm.as_str(); group.len()].join(" UNION ALL ");
            let mut q = sqlx::query(&text);
            for (t, i) in group {
                q = q.bind(t).bind(i).bind(request.max_per_aggregate as i64);
            }
            for row in q.fetch_all(&mut *tx).await.map_err(|e| self.err(what, e))? {
                rows.push(decode(table, &row)?);
            }
        }
        let plan = plan::plan_claim(request, &locked, rows, false)?;
        for chunk in plan.claimed.chunks(IN_CHUNK) {
            let text = format!(
                "UPDATE {} SET status = '{}', lease_holder = ?, lease_expires_at = ? WHERE id IN ({})",
                sql.entries,
                Status::Processing.as_str(),
                marks(chunk.len())
            );
            let mut values = vec![Value::Text(request.holder), Value::Time(request.lease_until)];
            values.extend(chunk.iter().map(|e| Value::Id(&e.id)));
            Self::execute(&mut tx, &text, &values).await.map_err(|e| self.err(what, e))?;
        }
        for chunk in plan.leased.chunks(AGG_CHUNK) {
            let text = format!(
                "UPDATE {} SET lease_holder = ?, lease_expires_at = ? WHERE {}",
                sql.aggregates,
                keys_match(chunk.len())
            );
            let mut values = vec![Value::Text(request.holder), Value::Time(request.lease_until)];
            for (t, i) in chunk {
                values.push(Value::Text(t));
                values.push(Value::Text(i));
            }
            Self::execute(&mut tx, &text, &values).await.map_err(|e| self.err(what, e))?;
        }
        for chunk in plan.parked.chunks(AGG_CHUNK) {
            let text = format!(
                "UPDATE {} SET available_at = {} WHERE {}",
                sql.aggregates,
                case_by_key(chunk.len()),
                keys_match(chunk.len())
            );
            let mut values = Vec::new();
            for ((t, i), at) in chunk {
                values.extend([Value::Text(t), Value::Text(i), Value::Time(*at)]);
            }
            for ((t, i), _) in chunk {
                values.extend([Value::Text(t), Value::Text(i)]);
            }
            Self::execute(&mut tx, &text, &values).await.map_err(|e| self.err(what, e))?;
        }
        tx.commit().await.map_err(|e| self.err(what, e))?;
        Ok(plan.claimed)
    }

    async fn complete(&self, completion: &Completion) -> Result<()> {
        if completion.is_empty() {
            return Ok(());
        }
        let what = "completing a batch";
        let sql = &self.outbox.sql;
        let holder = completion.holder.as_str();
        let all: Vec<EntryId> = completion
            .published
            .iter()
            .chain(completion.retry.iter().map(|r| &r.id))
            .chain(completion.dead.iter().map(|d| &d.id))
            .chain(&completion.released)
            .copied()
            .collect();
        let mut conn = self.read_committed().await.map_err(|e| self.err(what, e))?;
        let mut tx = conn.begin().await.map_err(|e| self.err(what, e))?;
        // 1. Lock the aggregates of the holder's entries (claims and writers of these aggregates
        // now wait); 2. read which entries the holder still holds: every change to them takes
        // their aggregate's lock first, so this set is stable until commit.
        let held_sql = |n: usize, extra: &str| {
            format!(
                "SELECT id, aggregate_type, aggregate_id FROM {} WHERE id IN ({}) AND lease_holder = ?{extra}",
                sql.entries,
                marks(n)
            )
        };
        // The aggregates of the holder's entries, read without locks, then locked by primary key
        // in key order. Locking them with one `… WHERE (key) IN (SELECT …) FOR UPDATE` made a
        // second relay add nothing (1.00 × one relay in mysql_drain; 1.50 × this way): InnoDB
        // evidently locked rows beyond the batch's, so completions waited on other relays.
        let mut keys: std::collections::BTreeSet<Key> = std::collections::BTreeSet::new();
        for chunk in all.chunks(IN_CHUNK) {
            let text = format!(
                "SELECT DISTINCT aggregate_type, aggregate_id FROM {} WHERE id IN ({}) AND lease_holder = ?",
                sql.entries,
                marks(chunk.len())
            );
            let mut q = sqlx::query(&text);
            for id in chunk {
                q = q.bind(id_bytes(id));
            }
            for row in q.bind(holder).fetch_all(&mut *tx).await.map_err(|e| self.err(what, e))? {
                keys.insert(key(&row, 0).map_err(|e| self.err(what, e))?);
            }
        }
        if keys.is_empty() {
            // The holder holds nothing any more (its lease lapsed and others took over).
            tx.rollback().await.map_err(|e| self.err(what, e))?;
            return Ok(());
        }
        let keys: Vec<Key> = keys.into_iter().collect();
        for chunk in keys.chunks(AGG_CHUNK) {
            let text = format!(
                "SELECT aggregate_type FROM {} WHERE {} ORDER BY aggregate_type, aggregate_id FOR UPDATE",
                sql.aggregates,
                keys_match(chunk.len())
            );
            let mut q = sqlx::query(&text);
            for (t, i) in chunk {
                q = q.bind(t).bind(i);
            }
            q.fetch_all(&mut *tx).await.map_err(|e| self.err(what, e))?;
        }
        let mut held: HashMap<EntryId, Key> = HashMap::with_capacity(all.len());
        for chunk in all.chunks(IN_CHUNK) {
            let text = held_sql(chunk.len(), &format!(" AND status = '{}'", Status::Processing.as_str()));
            let mut q = sqlx::query(&text);
            for id in chunk {
                q = q.bind(id_bytes(id));
            }
            for row in q.bind(holder).fetch_all(&mut *tx).await.map_err(|e| self.err(what, e))? {
                let id: Vec<u8> = row.try_get(0).map_err(|e| self.err(what, e))?;
                if let Ok(id) = <[u8; 16]>::try_from(id) {
                    held.insert(EntryId::from_bytes(id), key(&row, 1).map_err(|e| self.err(what, e))?);
                }
            }
        }
        let plan = plan::plan_completion(completion, &held);
        for chunk in plan.published.chunks(IN_CHUNK) {
            let text = format!(
                "UPDATE {} SET status = '{}', published_at = ?, lease_holder = NULL, lease_expires_at = NULL \
                 WHERE id IN ({}) AND lease_holder = ?",
                sql.entries,
                Status::Published.as_str(),
                marks(chunk.len())
            );
            let mut values = vec![Value::Time(completion.now)];
            values.extend(chunk.iter().map(Value::Id));
            values.push(Value::Text(holder));
            Self::execute(&mut tx, &text, &values).await.map_err(|e| self.err(what, e))?;
        }
        for chunk in plan.released.chunks(IN_CHUNK) {
            let text = format!(
                "UPDATE {} SET status = '{}', lease_holder = NULL, lease_expires_at = NULL \
                 WHERE id IN ({}) AND lease_holder = ?",
                sql.entries,
                Status::Pending.as_str(),
                marks(chunk.len())
            );
            let mut values: Vec<Value<'_>> = chunk.iter().map(Value::Id).collect();
            values.push(Value::Text(holder));
            Self::execute(&mut tx, &text, &values).await.map_err(|e| self.err(what, e))?;
        }
        for chunk in plan.retry.chunks(AGG_CHUNK) {
            let text = format!(
                "UPDATE {} SET status = '{}', attempts = attempts + 1, available_at = {}, last_error = {}, \
                 lease_holder = NULL, lease_expires_at = NULL WHERE id IN ({}) AND lease_holder = ?",
                sql.entries,
                Status::Failed.as_str(),
                case_by_id(chunk.len()),
                case_by_id(chunk.len()),
                marks(chunk.len())
            );
            let mut values = Vec::new();
            for r in chunk {
                values.extend([Value::Id(&r.id), Value::Time(r.at)]);
            }
            for r in chunk {
                values.extend([Value::Id(&r.id), Value::Text(&r.error)]);
            }
            values.extend(chunk.iter().map(|r| Value::Id(&r.id)));
            values.push(Value::Text(holder));
            Self::execute(&mut tx, &text, &values).await.map_err(|e| self.err(what, e))?;
        }
        for chunk in plan.dead.chunks(AGG_CHUNK) {
            let text = format!(
                "UPDATE {} SET status = '{}', attempts = attempts + 1, last_error = {}, \
                 lease_holder = NULL, lease_expires_at = NULL WHERE id IN ({}) AND lease_holder = ?",
                sql.entries,
                Status::Dead.as_str(),
                case_by_id(chunk.len()),
                marks(chunk.len())
            );
            let mut values = Vec::new();
            for d in chunk {
                values.extend([Value::Id(&d.id), Value::Text(&d.error)]);
            }
            values.extend(chunk.iter().map(|d| Value::Id(&d.id)));
            values.push(Value::Text(holder));
            Self::execute(&mut tx, &text, &values).await.map_err(|e| self.err(what, e))?;
        }
        // MySQL evaluates single-table SET assignments left to right with the new values: the
        // count first, then `available_at` from the new count, the lease holder last.
        for chunk in plan.aggregates.chunks(AGG_CHUNK) {
            let text = format!(
                "UPDATE {} SET unpublished = unpublished - {}, \
                 available_at = CASE WHEN unpublished <= 0 THEN ? WHEN lease_holder = ? THEN {} ELSE available_at END, \
                 lease_expires_at = CASE WHEN lease_holder = ? THEN NULL ELSE lease_expires_at END, \
                 lease_holder = CASE WHEN lease_holder = ? THEN NULL ELSE lease_holder END WHERE {}",
                sql.aggregates,
                case_by_key(chunk.len()),
                case_by_key(chunk.len()),
                keys_match(chunk.len())
            );
            let mut values = Vec::new();
            for a in chunk {
                values.extend([Value::Text(&a.key.0), Value::Text(&a.key.1), Value::Int(a.published)]);
            }
            values.extend([Value::Time(NEVER), Value::Text(holder)]);
            for a in chunk {
                values.extend([Value::Text(&a.key.0), Value::Text(&a.key.1), Value::Time(a.available_at)]);
            }
            values.extend([Value::Text(holder), Value::Text(holder)]);
            for a in chunk {
                values.extend([Value::Text(&a.key.0), Value::Text(&a.key.1)]);
            }
            Self::execute(&mut tx, &text, &values).await.map_err(|e| self.err(what, e))?;
        }
        tx.commit().await.map_err(|e| self.err(what, e))?;
        Ok(())
    }
}

impl Maintenance for MySqlStore {
    async fn purge_published(&self, before: Timestamp, limit: usize) -> Result<u64> {
        let sql = format!(
            "DELETE FROM {} WHERE status = '{}' AND published_at < ? ORDER BY published_at LIMIT ?",
            self.outbox.sql.entries,
            Status::Published.as_str()
        );
        let done = sqlx::query(&sql)
            .bind(to_naive(before))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .execute(&self.pool)
            .await
            .map_err(|e| self.err("purging published entries", e))?;
        Ok(done.rows_affected())
    }

    async fn stats(&self, now: Timestamp) -> Result<Stats> {
        let count = |s: Status| format!("count(CASE WHEN status = '{}' THEN 1 END)", s.as_str());
        let sql = format!(
            "SELECT {}, {}, {}, {}, {}, min(CASE WHEN status IN ('{}', '{}', '{}') THEN created_at END) FROM {}",
            count(Status::Pending),
            count(Status::Processing),
            count(Status::Published),
            count(Status::Failed),
            count(Status::Dead),
            Status::Pending.as_str(),
            Status::Processing.as_str(),
            Status::Failed.as_str(),
            self.outbox.sql.entries
        );
        let (pending, processing, published, failed, dead, oldest): (
            i64,
            i64,
            i64,
            i64,
            i64,
            Option<PrimitiveDateTime>,
        ) = sqlx::query_as(&sql).fetch_one(&self.pool).await.map_err(|e| self.err("reading stats", e))?;
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(Stats {
            pending: n(pending),
            processing: n(processing),
            published: n(published),
            failed: n(failed),
            dead: n(dead),
            oldest_unpublished_age: oldest.map(|o| now.saturating_duration_since(from_naive(o))),
        })
    }

    async fn requeue_dead(&self, which: Requeue<'_>, now: Timestamp) -> Result<u64> {
        let what = "requeuing dead entries";
        let sql = &self.outbox.sql;
        let mut conn = self.read_committed().await.map_err(|e| self.err(what, e))?;
        let mut tx = conn.begin().await.map_err(|e| self.err(what, e))?;
        // Lock the dead entries first, so exactly those are requeued and their aggregates woken.
        let select = format!(
            "SELECT id, aggregate_type, aggregate_id FROM {} WHERE status = '{}'",
            sql.entries,
            Status::Dead.as_str()
        );
        let mut rows: Vec<MySqlRow> = Vec::new();
        match which {
            Requeue::All => {
                rows = sqlx::query(&format!("{select} FOR UPDATE"))
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(|e| self.err(what, e))?;
            }
            Requeue::Ids(ids) => {
                for chunk in ids.chunks(IN_CHUNK) {
                    let text = format!("{select} AND id IN ({}) FOR UPDATE", marks(chunk.len()));
                    let mut q = sqlx::query(&text);
                    for id in chunk {
                        q = q.bind(id_bytes(id));
                    }
                    rows.extend(q.fetch_all(&mut *tx).await.map_err(|e| self.err(what, e))?);
                }
            }
            Requeue::Aggregate { aggregate_type, aggregate_id } => {
                rows = sqlx::query(&format!("{select} AND aggregate_type = ? AND aggregate_id = ? FOR UPDATE"))
                    .bind(aggregate_type)
                    .bind(aggregate_id)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(|e| self.err(what, e))?;
            }
        }
        let mut dead: Vec<(Vec<u8>, String, String)> = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: Vec<u8> = row.try_get(0).map_err(|e| self.err(what, e))?;
            let (t, i) = key(row, 1).map_err(|e| self.err(what, e))?;
            dead.push((id, t, i));
        }
        let mut count = 0;
        for chunk in dead.chunks(IN_CHUNK) {
            let text = format!(
                "UPDATE {} SET status = '{}', attempts = 0, available_at = ?, lease_holder = NULL, \
                 lease_expires_at = NULL WHERE id IN ({})",
                sql.entries,
                Status::Pending.as_str(),
                marks(chunk.len())
            );
            let mut q = sqlx::query(&text).bind(to_naive(now));
            for (id, _, _) in chunk {
                q = q.bind(id.as_slice());
            }
            count += q.execute(&mut *tx).await.map_err(|e| self.err(what, e))?.rows_affected();
        }
        let mut keys: Vec<(&str, &str)> = dead.iter().map(|(_, t, i)| (t.as_str(), i.as_str())).collect();
        keys.sort_unstable();
        keys.dedup();
        for chunk in keys.chunks(AGG_CHUNK) {
            let text = format!(
                "UPDATE {} SET available_at = LEAST(available_at, ?) WHERE {}",
                sql.aggregates,
                keys_match(chunk.len())
            );
            let mut values = vec![Value::Time(now)];
            for (t, i) in chunk {
                values.extend([Value::Text(t), Value::Text(i)]);
            }
            Self::execute(&mut tx, &text, &values).await.map_err(|e| self.err(what, e))?;
        }
        tx.commit().await.map_err(|e| self.err(what, e))?;
        Ok(count)
    }

    async fn entry(&self, id: EntryId) -> Result<Option<Entry>> {
        let sql = format!("SELECT {COLUMNS} FROM {} WHERE id = ?", self.outbox.sql.entries);
        let row = sqlx::query(&sql)
            .bind(id_bytes(&id))
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err("reading an entry", e))?;
        row.map(|r| decode(self.outbox.tables.name(), &r)).transpose()
    }
}
