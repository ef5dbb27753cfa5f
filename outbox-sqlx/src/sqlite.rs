//! SQLite: [`SqliteOutbox`] (schema and writer) and [`SqliteStore`] (the relay's store).
//!
//! SQLite has one writer at a time, so claims and completions are plain `BEGIN IMMEDIATE`
//! transactions: they take the write lock first, so a claim never sees a state another claim is
//! changing. The rules (aggregate leases, per-aggregate prefixes, parking) are the same as on
//! the server databases. Wake-ups: polling with the relay's idle back-off; in one process, call
//! [`Wakeup::wake`](outbox_core::Wakeup::wake) after committing for instant delivery.
//!
//! Application transactions that write entries should start with `BEGIN IMMEDIATE` too
//! (`pool.begin_with("BEGIN IMMEDIATE")`): a deferred transaction that reads before it writes
//! can fail with `SQLITE_BUSY` (mapped to a retryable `Conflict`) when a relay committed in
//! between. For an in-memory database (`sqlite::memory:`) use a pool with a single connection
//! that never expires, shared by the writer and the store.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use outbox_core::{
    ClaimRequest, Completion, DeadPolicy, Entry, EntryId, Error, Lease, Maintenance, NewEntry, Requeue, Result, Stats,
    Status, Store, Timestamp,
};
use sqlx::sqlite::{SqliteConnection, SqlitePool, SqliteRow};
use sqlx::{Connection, Row};

use crate::ClaimOptions;
use crate::config::Tables;
use crate::error::{Db, map};
use crate::plan::{self, Key, NEVER};
use crate::schema::{self, Migration};

const COLUMNS: &str = "id, aggregate_type, aggregate_id, sequence, event_type, payload, content_type, headers, \
     status, attempts, created_at, available_at, published_at, last_error, lease_holder, lease_expires_at";

/// Rows per multi-row statement (SQLite allows 32,766 bound values; entries take 12 each).
const ROWS_PER_INSERT: usize = 1000;
/// Values per `IN (...)` list.
const IN_CHUNK: usize = 500;
/// Arms per `UNION ALL` (SQLite allows 500).
const ARMS: usize = 100;

fn marks(n: usize) -> String {
    vec!["?"; n].join(", ")
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

/// The outbox in SQLite: its tables, its schema, and the writer applications call inside their
/// own transactions. Cheap to clone.
///
/// ```no_run
/// use outbox_core::NewEntry;
/// use outbox_sqlx::{SqliteOutbox, Tables};
/// use sqlx::Connection;
///
/// # async fn run(pool: sqlx::SqlitePool) -> Result<(), Box<dyn std::error::Error>> {
/// let outbox = SqliteOutbox::new(Tables::new("outbox")?);
/// outbox.migrate(&pool).await?;
///
/// let mut conn = pool.acquire().await?;
/// let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
/// let entry = NewEntry::builder("order", "o-1", "order.placed").json("{}").build()?;
/// outbox.enqueue(&mut *tx, &entry).await?;
/// tx.commit().await?;
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

    /// The migrations for these tables, rendered, in order.
    pub fn migrations(&self) -> Vec<Migration> {
        schema::render(&self.tables, schema::raw::SQLITE, '"', false)
    }

    /// Creates the tables and indexes if they are missing (idempotent).
    pub async fn migrate(&self, pool: &SqlitePool) -> Result<()> {
        let mut conn = pool.acquire().await.map_err(|e| self.err("migrate", e))?;
        for m in self.migrations() {
            sqlx::raw_sql(&m.sql).execute(&mut *conn).await.map_err(|e| self.err("migrate", e))?;
        }
        Ok(())
    }

    /// Writes `entry` with the caller's connection (pass `&mut *tx` for a `sqlx::Transaction`),
    /// so it commits or rolls back with the caller's changes. Never commits. The aggregate's row
    /// is upserted for the next sequence; SQLite's single writer orders writers by commit.
    pub async fn enqueue(&self, conn: &mut SqliteConnection, entry: &NewEntry) -> Result<()> {
        self.enqueue_batch(conn, std::slice::from_ref(entry)).await
    }

    /// Writes many entries with the caller's connection: one upsert per distinct aggregate, then
    /// multi-row inserts of up to 1,000 entries. Entries of one aggregate get consecutive
    /// sequences in slice order.
    pub async fn enqueue_batch(&self, conn: &mut SqliteConnection, entries: &[NewEntry]) -> Result<()> {
        let what = "enqueue";
        if entries.is_empty() {
            return Ok(());
        }
        let now = Timestamp::now();
        let mut sequence = vec![0i64; entries.len()];
        for (key, members) in plan::group_by_aggregate(entries) {
            let n = members.len() as i64;
            let first_due = members.iter().map(|&m| plan::available_at(&entries[m], now)).min().unwrap_or(now);
            let top: i64 = sqlx::query_scalar(&self.sql.upsert)
                .bind(&key.0)
                .bind(&key.1)
                .bind(n)
                .bind(n)
                .bind(first_due.as_micros())
                .fetch_one(&mut *conn)
                .await
                .map_err(|e| self.err(what, e))?;
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
                    .bind(now.as_micros())
                    .bind(plan::available_at(e, now).as_micros());
            }
            q.execute(&mut *conn).await.map_err(|e| self.err(what, e))?;
        }
        Ok(())
    }

    /// A store over `pool` for relays and operators.
    pub fn store(&self, pool: SqlitePool) -> SqliteStore {
        SqliteStore::new(pool, self.clone())
    }

    fn err(&self, what: &str, e: sqlx::Error) -> Error {
        map(Db::Sqlite, what, self.tables.name(), e)
    }
}

/// The relay's side of a SQLite outbox: [`Store`] and [`Maintenance`] over a pool.
/// Cheap to clone (clones share the pool).
///
/// SQLite has one writer at a time, so a store queues its own writing transactions (claims,
/// completions, requeues: a relay claims its next batch while the last one completes) on an
/// async lock shared by its clones, instead of having them wait in SQLite's busy handler, which
/// polls with sleeps of up to 100 ms.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    outbox: SqliteOutbox,
    options: ClaimOptions,
    writer: Arc<tokio::sync::Mutex<()>>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore").field("tables", &self.outbox.tables).field("options", &self.options).finish()
    }
}

fn decode(table: &str, row: &SqliteRow) -> std::result::Result<Entry, Error> {
    let err = |e: sqlx::Error| map(Db::Sqlite, "reading an entry", table, e);
    let id: Vec<u8> = row.try_get(0).map_err(err)?;
    let id: [u8; 16] = id.try_into().map_err(|_| crate::error::bad_row(table, "an id is not 16 bytes"))?;
    let payload: Vec<u8> = row.try_get(5).map_err(err)?;
    let headers: String = row.try_get(7).map_err(err)?;
    let status: String = row.try_get(8).map_err(err)?;
    let attempts: i64 = row.try_get(9).map_err(err)?;
    let published_at: Option<i64> = row.try_get(12).map_err(err)?;
    let holder: Option<String> = row.try_get(14).map_err(err)?;
    let expires: Option<i64> = row.try_get(15).map_err(err)?;
    Ok(Entry {
        id: EntryId::from_bytes(id),
        aggregate_type: row.try_get(1).map_err(err)?,
        aggregate_id: row.try_get(2).map_err(err)?,
        sequence: row.try_get(3).map_err(err)?,
        event_type: row.try_get(4).map_err(err)?,
        payload: payload.into(),
        content_type: row.try_get(6).map_err(err)?,
        headers: plan::headers_from_json(table, &headers)?,
        status: plan::status(table, &status)?,
        attempts: u32::try_from(attempts).unwrap_or(0),
        created_at: Timestamp::from_micros(row.try_get(10).map_err(err)?),
        available_at: Timestamp::from_micros(row.try_get(11).map_err(err)?),
        published_at: published_at.map(Timestamp::from_micros),
        last_error: row.try_get(13).map_err(err)?,
        lease: match (holder, expires) {
            (Some(holder), Some(expires)) => Some(Lease { holder, expires_at: Timestamp::from_micros(expires) }),
            _ => None,
        },
    })
}

fn id_bytes(id: &EntryId) -> Vec<u8> {
    id.to_bytes().to_vec()
}

impl SqliteStore {
    /// A store for `outbox` over `pool`, with default [`ClaimOptions`].
    pub fn new(pool: SqlitePool, outbox: SqliteOutbox) -> Self {
        SqliteStore { pool, outbox, options: ClaimOptions::default(), writer: Arc::default() }
    }

    /// Uses `options` for claims.
    pub fn with_options(mut self, options: ClaimOptions) -> Self {
        self.options = options;
        self
    }

    /// The pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The outbox (tables and writer).
    pub fn outbox(&self) -> &SqliteOutbox {
        &self.outbox
    }

    fn err(&self, what: &str, e: sqlx::Error) -> Error {
        self.outbox.err(what, e)
    }

    /// Updates the entries `ids` with `set` (a `SET` clause whose `?` come first), in chunks.
    async fn update_ids(
        &self,
        conn: &mut SqliteConnection,
        set: &str,
        binds: &[SqlValue<'_>],
        ids: &[EntryId],
        holder: Option<&str>,
    ) -> std::result::Result<(), sqlx::Error> {
        for chunk in ids.chunks(IN_CHUNK) {
            let sql = format!(
                "UPDATE {} SET {set} WHERE id IN ({}){}",
                self.outbox.sql.entries,
                marks(chunk.len()),
                if holder.is_some() { " AND lease_holder = ?" } else { "" }
            );
            let mut q = sqlx::query(&sql);
            for b in binds {
                q = match b {
                    SqlValue::Text(s) => q.bind(*s),
                    SqlValue::Int(i) => q.bind(*i),
                };
            }
            for id in chunk {
                q = q.bind(id_bytes(id));
            }
            if let Some(h) = holder {
                q = q.bind(h);
            }
            q.execute(&mut *conn).await?;
        }
        Ok(())
    }
}

enum SqlValue<'a> {
    Text(&'a str),
    Int(i64),
}

impl Store for SqliteStore {
    async fn claim(&self, request: &ClaimRequest<'_>) -> Result<Vec<Entry>> {
        let what = "claiming entries";
        let sql = &self.outbox.sql;
        let table = self.outbox.tables.name();
        let k = plan::aggregates_for(self.options.aggregates_per_claim, request);
        let _writing = self.writer.lock().await;
        let mut conn = self.pool.acquire().await.map_err(|e| self.err(what, e))?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(|e| self.err(what, e))?;
        let locked: Vec<(String, String)> = sqlx::query_as(&sql.lock_aggregates)
            .bind(request.now.as_micros())
            .bind(k as i64)
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| self.err(what, e))?;
        if locked.is_empty() {
            tx.rollback().await.map_err(|e| self.err(what, e))?;
            return Ok(Vec::new());
        }
        let include_dead = request.on_dead == DeadPolicy::Block;
        let mut rows = Vec::new();
        for group in locked.chunks(ARMS) {
            let arm = format!(
                "SELECT * FROM (SELECT {COLUMNS} FROM {} WHERE aggregate_type = ? AND aggregate_id = ? \
                 AND status <> '{}'{} ORDER BY sequence LIMIT ?)",
                sql.entries,
                Status::Published.as_str(),
                if include_dead { String::new() } else { format!(" AND status <> '{}'", Status::Dead.as_str()) },
            );
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
        let ids: Vec<EntryId> = plan.claimed.iter().map(|e| e.id).collect();
        let until = request.lease_until.as_micros();
        self.update_ids(
            &mut tx,
            &format!("status = '{}', lease_holder = ?, lease_expires_at = ?", Status::Processing.as_str()),
            &[SqlValue::Text(request.holder), SqlValue::Int(until)],
            &ids,
            None,
        )
        .await
        .map_err(|e| self.err(what, e))?;
        let lease = format!(
            "UPDATE {} SET lease_holder = ?, lease_expires_at = ? WHERE aggregate_type = ? AND aggregate_id = ?",
            sql.aggregates
        );
        for (t, i) in &plan.leased {
            sqlx::query(&lease)
                .bind(request.holder)
                .bind(until)
                .bind(t)
                .bind(i)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.err(what, e))?;
        }
        let park =
            format!("UPDATE {} SET available_at = ? WHERE aggregate_type = ? AND aggregate_id = ?", sql.aggregates);
        for ((t, i), at) in &plan.parked {
            sqlx::query(&park)
                .bind(at.as_micros())
                .bind(t)
                .bind(i)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.err(what, e))?;
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
        let all: Vec<EntryId> = completion
            .published
            .iter()
            .chain(completion.retry.iter().map(|r| &r.id))
            .chain(completion.dead.iter().map(|d| &d.id))
            .chain(&completion.released)
            .copied()
            .collect();
        let _writing = self.writer.lock().await;
        let mut conn = self.pool.acquire().await.map_err(|e| self.err(what, e))?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(|e| self.err(what, e))?;
        let mut held: HashMap<EntryId, Key> = HashMap::with_capacity(all.len());
        for chunk in all.chunks(IN_CHUNK) {
            let text = format!(
                "SELECT id, aggregate_type, aggregate_id FROM {} WHERE id IN ({}) AND lease_holder = ? AND status = '{}'",
                sql.entries,
                marks(chunk.len()),
                Status::Processing.as_str()
            );
            let mut q = sqlx::query_as::<_, (Vec<u8>, String, String)>(&text);
            for id in chunk {
                q = q.bind(id_bytes(id));
            }
            for (id, t, i) in q.bind(&completion.holder).fetch_all(&mut *tx).await.map_err(|e| self.err(what, e))? {
                if let Ok(id) = <[u8; 16]>::try_from(id) {
                    held.insert(EntryId::from_bytes(id), (t, i));
                }
            }
        }
        if held.is_empty() {
            tx.rollback().await.map_err(|e| self.err(what, e))?;
            return Ok(());
        }
        let plan = plan::plan_completion(completion, &held);
        let holder = Some(completion.holder.as_str());
        self.update_ids(
            &mut tx,
            &format!(
                "status = '{}', published_at = ?, lease_holder = NULL, lease_expires_at = NULL",
                Status::Published.as_str()
            ),
            &[SqlValue::Int(completion.now.as_micros())],
            &plan.published,
            holder,
        )
        .await
        .map_err(|e| self.err(what, e))?;
        self.update_ids(
            &mut tx,
            &format!("status = '{}', lease_holder = NULL, lease_expires_at = NULL", Status::Pending.as_str()),
            &[],
            &plan.released,
            holder,
        )
        .await
        .map_err(|e| self.err(what, e))?;
        let retry = format!(
            "UPDATE {} SET status = '{}', attempts = attempts + 1, available_at = ?, last_error = ?, \
             lease_holder = NULL, lease_expires_at = NULL WHERE id = ? AND lease_holder = ?",
            sql.entries,
            Status::Failed.as_str()
        );
        for r in &plan.retry {
            sqlx::query(&retry)
                .bind(r.at.as_micros())
                .bind(&r.error)
                .bind(id_bytes(&r.id))
                .bind(&completion.holder)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.err(what, e))?;
        }
        let dead = format!(
            "UPDATE {} SET status = '{}', attempts = attempts + 1, last_error = ?, \
             lease_holder = NULL, lease_expires_at = NULL WHERE id = ? AND lease_holder = ?",
            sql.entries,
            Status::Dead.as_str()
        );
        for d in &plan.dead {
            sqlx::query(&dead)
                .bind(&d.error)
                .bind(id_bytes(&d.id))
                .bind(&completion.holder)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.err(what, e))?;
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
            sqlx::query(&release)
                .bind(a.published)
                .bind(NEVER.as_micros())
                .bind(&completion.holder)
                .bind(a.available_at.as_micros())
                .bind(&a.key.0)
                .bind(&a.key.1)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.err(what, e))?;
        }
        tx.commit().await.map_err(|e| self.err(what, e))?;
        Ok(())
    }
}

impl Maintenance for SqliteStore {
    async fn purge_published(&self, before: Timestamp, limit: usize) -> Result<u64> {
        let sql = format!(
            "DELETE FROM {0} WHERE id IN (SELECT id FROM {0} WHERE status = '{1}' AND published_at < ? \
             ORDER BY published_at LIMIT ?)",
            self.outbox.sql.entries,
            Status::Published.as_str()
        );
        let done = sqlx::query(&sql)
            .bind(before.as_micros())
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
        let (pending, processing, published, failed, dead, oldest): (i64, i64, i64, i64, i64, Option<i64>) =
            sqlx::query_as(&sql).fetch_one(&self.pool).await.map_err(|e| self.err("reading stats", e))?;
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(Stats {
            pending: n(pending),
            processing: n(processing),
            published: n(published),
            failed: n(failed),
            dead: n(dead),
            oldest_unpublished_age: oldest.map(|o| now.saturating_duration_since(Timestamp::from_micros(o))),
        })
    }

    async fn requeue_dead(&self, which: Requeue<'_>, now: Timestamp) -> Result<u64> {
        let what = "requeuing dead entries";
        let sql = &self.outbox.sql;
        let _writing = self.writer.lock().await;
        let mut conn = self.pool.acquire().await.map_err(|e| self.err(what, e))?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(|e| self.err(what, e))?;
        let set = format!(
            "UPDATE {} SET status = '{}', attempts = 0, available_at = ?, lease_holder = NULL, lease_expires_at = NULL \
             WHERE status = '{}'",
            sql.entries,
            Status::Pending.as_str(),
            Status::Dead.as_str()
        );
        let mut touched: Vec<(String, String)> = Vec::new();
        match which {
            Requeue::All => {
                touched.extend(
                    sqlx::query_as(&format!("{set} RETURNING aggregate_type, aggregate_id"))
                        .bind(now.as_micros())
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(|e| self.err(what, e))?,
                );
            }
            Requeue::Ids(ids) => {
                for chunk in ids.chunks(IN_CHUNK) {
                    let text =
                        format!("{set} AND id IN ({}) RETURNING aggregate_type, aggregate_id", marks(chunk.len()));
                    let mut q = sqlx::query_as(&text).bind(now.as_micros());
                    for id in chunk {
                        q = q.bind(id_bytes(id));
                    }
                    let rows: Vec<(String, String)> = q.fetch_all(&mut *tx).await.map_err(|e| self.err(what, e))?;
                    touched.extend(rows);
                }
            }
            Requeue::Aggregate { aggregate_type, aggregate_id } => {
                touched.extend(
                    sqlx::query_as(&format!(
                        "{set} AND aggregate_type = ? AND aggregate_id = ? RETURNING aggregate_type, aggregate_id"
                    ))
                    .bind(now.as_micros())
                    .bind(aggregate_type)
                    .bind(aggregate_id)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(|e| self.err(what, e))?,
                );
            }
        }
        let count = touched.len() as u64;
        touched.sort();
        touched.dedup();
        let wake = format!(
            "UPDATE {} SET available_at = MIN(available_at, ?) WHERE aggregate_type = ? AND aggregate_id = ?",
            sql.aggregates
        );
        for (t, i) in &touched {
            sqlx::query(&wake)
                .bind(now.as_micros())
                .bind(t)
                .bind(i)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.err(what, e))?;
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
