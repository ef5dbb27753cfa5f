//! diesel-async: the writer for `AsyncMysqlConnection` and the relay's [`MysqlStore`].

use std::collections::HashMap;
use std::fmt;

use diesel::QueryableByName;
use diesel::sql_types::{Binary, Nullable, Text};
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::{
    AnsiTransactionManager, AsyncMysqlConnection, RunQueryDsl, SimpleAsyncConnection, TransactionManager,
};
use outbox_core::{
    ClaimRequest, Completion, DeadPolicy, Entry, EntryId, Maintenance, NewEntry, Requeue, Result, Stats, Status, Store,
    Timestamp,
};
use time::PrimitiveDateTime;

use super::{
    AGG_CHUNK, COLUMNS, IN_CHUNK, LastId, MysqlOutbox, Row, Value, bind_all, case_by_id, case_by_key, default_outbox,
    entry_id, from_dt, keys_match, marks, query,
};
use crate::error::{Db, unavailable};
use crate::plan::{self, Key, NEVER};

impl MysqlOutbox {
    /// [`MysqlOutbox::enqueue`] for a diesel-async connection: call it inside
    /// `conn.transaction(async |conn| ...)`.
    #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
    pub async fn enqueue_async(&self, conn: &mut AsyncMysqlConnection, entry: &NewEntry) -> Result<()> {
        self.enqueue_batch_async(conn, std::slice::from_ref(entry)).await
    }

    /// [`MysqlOutbox::enqueue_batch`] for a diesel-async connection.
    #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
    pub async fn enqueue_batch_async(&self, conn: &mut AsyncMysqlConnection, entries: &[NewEntry]) -> Result<()> {
        let what = "enqueue";
        let err = |e| self.err(what, e);
        if entries.is_empty() {
            return Ok(());
        }
        let now = Timestamp::now();
        let mut sequence = vec![0i64; entries.len()];
        for upsert in self.upserts(entries, now) {
            upsert.query.execute(conn).await.map_err(err)?;
            let top: LastId =
                query("SELECT CAST(LAST_INSERT_ID() AS SIGNED) AS n").get_result(conn).await.map_err(err)?;
            self.assign(&mut sequence, &upsert.members, top.n)?;
        }
        for q in self.inserts(entries, &sequence, now) {
            q.execute(conn).await.map_err(err)?;
        }
        Ok(())
    }

    /// [`MysqlOutbox::migrate`] for a diesel-async connection.
    #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
    pub async fn migrate_async(&self, conn: &mut AsyncMysqlConnection) -> Result<()> {
        conn.batch_execute(&self.migration_sql()).await.map_err(|e| self.err("migrate", e))
    }

    /// A store over `pool` for relays and operators.
    #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
    pub fn store(&self, pool: Pool<AsyncMysqlConnection>) -> MysqlStore {
        MysqlStore { pool, outbox: self.clone() }
    }
}

/// Writes `entry` into the default tables with a diesel-async connection; see
/// [`MysqlOutbox::enqueue`].
pub async fn enqueue_async(conn: &mut AsyncMysqlConnection, entry: &NewEntry) -> Result<()> {
    default_outbox().enqueue_async(conn, entry).await
}

/// Writes `entries` into the default tables with a diesel-async connection; see
/// [`MysqlOutbox::enqueue_batch`].
pub async fn enqueue_batch_async(conn: &mut AsyncMysqlConnection, entries: &[NewEntry]) -> Result<()> {
    default_outbox().enqueue_batch_async(conn, entries).await
}

/// Creates the default tables with a diesel-async connection; see [`MysqlOutbox::migrate`].
pub async fn migrate_async(conn: &mut AsyncMysqlConnection) -> Result<()> {
    default_outbox().migrate_async(conn).await
}

/// The relay's side of a MySQL/MariaDB outbox on diesel-async: [`Store`] and [`Maintenance`]
/// over a deadpool of `AsyncMysqlConnection`s. Cheap to clone (clones share the pool).
///
/// ```no_run
/// use diesel_async::AsyncMysqlConnection;
/// use diesel_async::pooled_connection::AsyncDieselConnectionManager;
/// use diesel_async::pooled_connection::deadpool::Pool;
/// use outbox_core::{NoopPublisher, Relay, RelayConfig};
/// use outbox_diesel::mysql::MysqlStore;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = AsyncDieselConnectionManager::<AsyncMysqlConnection>::new("mysql://root@127.0.0.1/test");
/// let relay = Relay::new(MysqlStore::new(Pool::builder(manager).build()?), NoopPublisher, RelayConfig::default())?;
/// relay.run_once().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MysqlStore {
    pool: Pool<AsyncMysqlConnection>,
    outbox: MysqlOutbox,
}

impl fmt::Debug for MysqlStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MysqlStore").field("tables", self.outbox.tables()).finish_non_exhaustive()
    }
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
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pending: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    processing: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    published: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    failed: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    dead: i64,
    #[diesel(sql_type = Nullable<diesel::sql_types::Datetime>)]
    oldest: Option<PrimitiveDateTime>,
}

impl MysqlStore {
    /// A store for the default tables over `pool`.
    pub fn new(pool: Pool<AsyncMysqlConnection>) -> Self {
        MysqlOutbox::default().store(pool)
    }

    /// The pool.
    pub fn pool(&self) -> &Pool<AsyncMysqlConnection> {
        &self.pool
    }

    /// The outbox (tables and writer).
    pub fn outbox(&self) -> &MysqlOutbox {
        &self.outbox
    }

    async fn conn(&self, what: &str) -> Result<Object<AsyncMysqlConnection>> {
        self.pool.get().await.map_err(|e| unavailable(Db::Mysql, what, e))
    }

    /// Runs `body` in a `READ COMMITTED` transaction on a pooled connection: commits on `Ok`,
    /// rolls back on `Err`. `READ COMMITTED` keeps InnoDB from taking gap locks that would block
    /// writers, and lets each statement see what committed before the locks were taken.
    async fn in_transaction<R>(
        &self,
        what: &str,
        body: impl AsyncFnOnce(&mut AsyncMysqlConnection) -> Result<R>,
    ) -> Result<R> {
        let mut conn = self.conn(what).await?;
        let conn: &mut AsyncMysqlConnection = &mut conn;
        conn.batch_execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
            .await
            .map_err(|e| self.outbox.err(what, e))?;
        AnsiTransactionManager::begin_transaction(conn).await.map_err(|e| self.outbox.err(what, e))?;
        match body(conn).await {
            Ok(r) => {
                AnsiTransactionManager::commit_transaction(conn).await.map_err(|e| self.outbox.err(what, e))?;
                Ok(r)
            }
            Err(e) => {
                // The body's error is the one that matters; a failed rollback leaves the
                // connection broken and the pool discards it on recycle.
                let _ = AnsiTransactionManager::rollback_transaction(conn).await;
                Err(e)
            }
        }
    }

    async fn claim_in(&self, conn: &mut AsyncMysqlConnection, request: &ClaimRequest<'_>) -> Result<Vec<Entry>> {
        let what = "claiming entries";
        let err = |e| self.outbox.err(what, e);
        let sql = &self.outbox.sql;
        let table = self.outbox.tables().name();
        let k = plan::aggregates_for(request);
        let locked: Vec<KeyRow> = bind_all(
            query(sql.lock_aggregates.as_str()),
            vec![Value::Time(request.now), Value::Time(request.now), Value::Int(k as i64)],
        )
        .load(conn)
        .await
        .map_err(err)?;
        if locked.is_empty() {
            return Ok(Vec::new());
        }
        let locked: Vec<Key> = locked.into_iter().map(|r| (r.aggregate_type, r.aggregate_id)).collect();
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
            let mut values = Vec::with_capacity(group.len() * 3);
            for (t, i) in group {
                values.extend([
                    Value::Text(t.clone()),
                    Value::Text(i.clone()),
                    Value::Int(request.max_per_aggregate as i64),
                ]);
            }
            let loaded: Vec<Row> = bind_all(query(vec![arm.as_str(); group.len()].join(" UNION ALL ")), values)
                .load(conn)
                .await
                .map_err(err)?;
            for row in loaded {
                rows.push(row.into_entry(table)?);
            }
        }
        let plan = plan::plan_claim(request, &locked, rows)?;
        for chunk in plan.claimed.chunks(IN_CHUNK) {
            let text = format!(
                "UPDATE {} SET status = '{}', lease_holder = ?, lease_expires_at = ? WHERE id IN ({})",
                sql.entries,
                Status::Processing.as_str(),
                marks(chunk.len())
            );
            let mut values = vec![Value::Text(request.holder.to_string()), Value::Time(request.lease_until)];
            values.extend(chunk.iter().map(|e| Value::Id(e.id)));
            bind_all(query(text), values).execute(conn).await.map_err(err)?;
        }
        for chunk in plan.leased.chunks(AGG_CHUNK) {
            let text = format!(
                "UPDATE {} SET lease_holder = ?, lease_expires_at = ? WHERE {}",
                sql.aggregates,
                keys_match(chunk.len())
            );
            let mut values = vec![Value::Text(request.holder.to_string()), Value::Time(request.lease_until)];
            for (t, i) in chunk {
                values.extend([Value::Text(t.clone()), Value::Text(i.clone())]);
            }
            bind_all(query(text), values).execute(conn).await.map_err(err)?;
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
                values.extend([Value::Text(t.clone()), Value::Text(i.clone()), Value::Time(*at)]);
            }
            for ((t, i), _) in chunk {
                values.extend([Value::Text(t.clone()), Value::Text(i.clone())]);
            }
            bind_all(query(text), values).execute(conn).await.map_err(err)?;
        }
        Ok(plan.claimed)
    }

    async fn complete_in(&self, conn: &mut AsyncMysqlConnection, completion: &Completion) -> Result<()> {
        let what = "completing a batch";
        let err = |e| self.outbox.err(what, e);
        let sql = &self.outbox.sql;
        let table = self.outbox.tables().name();
        let holder = completion.holder.as_str();
        let all = plan::completion_ids(completion);
        let held_sql = |n: usize, extra: &str| {
            format!(
                "SELECT id, aggregate_type, aggregate_id FROM {} WHERE id IN ({}) AND lease_holder = ?{extra}",
                sql.entries,
                marks(n)
            )
        };
        // 1. Which aggregates the holder's entries belong to; 2. lock those (claims and writers of
        // these aggregates wait); 3. which entries the holder still holds, now stable.
        let mut keys: Vec<Key> = Vec::new();
        for chunk in all.chunks(IN_CHUNK) {
            let mut values: Vec<Value> = chunk.iter().map(|id| Value::Id(*id)).collect();
            values.push(Value::Text(holder.to_string()));
            let rows: Vec<HeldRow> =
                bind_all(query(held_sql(chunk.len(), "")), values).load(conn).await.map_err(err)?;
            keys.extend(rows.into_iter().map(|r| (r.aggregate_type, r.aggregate_id)));
        }
        keys.sort();
        keys.dedup();
        if keys.is_empty() {
            return Ok(());
        }
        for chunk in keys.chunks(AGG_CHUNK) {
            let text = format!(
                "SELECT aggregate_type, aggregate_id FROM {} WHERE {} ORDER BY aggregate_type, aggregate_id FOR UPDATE",
                sql.aggregates,
                keys_match(chunk.len())
            );
            let mut values = Vec::new();
            for (t, i) in chunk {
                values.extend([Value::Text(t.clone()), Value::Text(i.clone())]);
            }
            let _: Vec<KeyRow> = bind_all(query(text), values).load(conn).await.map_err(err)?;
        }
        let mut held: HashMap<EntryId, Key> = HashMap::with_capacity(all.len());
        for chunk in all.chunks(IN_CHUNK) {
            let mut values: Vec<Value> = chunk.iter().map(|id| Value::Id(*id)).collect();
            values.push(Value::Text(holder.to_string()));
            let text = held_sql(chunk.len(), &format!(" AND status = '{}'", Status::Processing.as_str()));
            let rows: Vec<HeldRow> = bind_all(query(text), values).load(conn).await.map_err(err)?;
            for r in rows {
                held.insert(entry_id(table, r.id)?, (r.aggregate_type, r.aggregate_id));
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
            values.extend(chunk.iter().map(|id| Value::Id(*id)));
            values.push(Value::Text(holder.to_string()));
            bind_all(query(text), values).execute(conn).await.map_err(err)?;
        }
        for chunk in plan.released.chunks(IN_CHUNK) {
            let text = format!(
                "UPDATE {} SET status = '{}', lease_holder = NULL, lease_expires_at = NULL \
                 WHERE id IN ({}) AND lease_holder = ?",
                sql.entries,
                Status::Pending.as_str(),
                marks(chunk.len())
            );
            let mut values: Vec<Value> = chunk.iter().map(|id| Value::Id(*id)).collect();
            values.push(Value::Text(holder.to_string()));
            bind_all(query(text), values).execute(conn).await.map_err(err)?;
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
                values.extend([Value::Id(r.id), Value::Time(r.at)]);
            }
            for r in chunk {
                values.extend([Value::Id(r.id), Value::Text(r.error.clone())]);
            }
            values.extend(chunk.iter().map(|r| Value::Id(r.id)));
            values.push(Value::Text(holder.to_string()));
            bind_all(query(text), values).execute(conn).await.map_err(err)?;
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
                values.extend([Value::Id(d.id), Value::Text(d.error.clone())]);
            }
            values.extend(chunk.iter().map(|d| Value::Id(d.id)));
            values.push(Value::Text(holder.to_string()));
            bind_all(query(text), values).execute(conn).await.map_err(err)?;
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
                values.extend([Value::Text(a.key.0.clone()), Value::Text(a.key.1.clone()), Value::Int(a.published)]);
            }
            values.extend([Value::Time(NEVER), Value::Text(holder.to_string())]);
            for a in chunk {
                values.extend([
                    Value::Text(a.key.0.clone()),
                    Value::Text(a.key.1.clone()),
                    Value::Time(a.available_at),
                ]);
            }
            values.extend([Value::Text(holder.to_string()), Value::Text(holder.to_string())]);
            for a in chunk {
                values.extend([Value::Text(a.key.0.clone()), Value::Text(a.key.1.clone())]);
            }
            bind_all(query(text), values).execute(conn).await.map_err(err)?;
        }
        Ok(())
    }

    async fn requeue_in(&self, conn: &mut AsyncMysqlConnection, which: Requeue<'_>, now: Timestamp) -> Result<u64> {
        let what = "requeuing dead entries";
        let err = |e| self.outbox.err(what, e);
        let sql = &self.outbox.sql;
        let table = self.outbox.tables().name();
        // Lock the dead entries first, so exactly those are requeued and their aggregates woken.
        let select = format!(
            "SELECT id, aggregate_type, aggregate_id FROM {} WHERE status = '{}'",
            sql.entries,
            Status::Dead.as_str()
        );
        let mut rows: Vec<HeldRow> = Vec::new();
        match which {
            Requeue::All => rows = query(format!("{select} FOR UPDATE")).load(conn).await.map_err(err)?,
            Requeue::Ids(ids) => {
                for chunk in ids.chunks(IN_CHUNK) {
                    let text = format!("{select} AND id IN ({}) FOR UPDATE", marks(chunk.len()));
                    let values = chunk.iter().map(|id| Value::Id(*id)).collect();
                    rows.extend(bind_all(query(text), values).load::<HeldRow>(conn).await.map_err(err)?);
                }
            }
            Requeue::Aggregate { aggregate_type, aggregate_id } => {
                let text = format!("{select} AND aggregate_type = ? AND aggregate_id = ? FOR UPDATE");
                let values = vec![Value::Text(aggregate_type.to_string()), Value::Text(aggregate_id.to_string())];
                rows = bind_all(query(text), values).load(conn).await.map_err(err)?;
            }
        }
        let mut ids = Vec::with_capacity(rows.len());
        let mut keys: Vec<Key> = Vec::with_capacity(rows.len());
        for r in rows {
            ids.push(entry_id(table, r.id)?);
            keys.push((r.aggregate_type, r.aggregate_id));
        }
        let mut count = 0;
        for chunk in ids.chunks(IN_CHUNK) {
            let text = format!(
                "UPDATE {} SET status = '{}', attempts = 0, available_at = ?, lease_holder = NULL, \
                 lease_expires_at = NULL WHERE id IN ({})",
                sql.entries,
                Status::Pending.as_str(),
                marks(chunk.len())
            );
            let mut values = vec![Value::Time(now)];
            values.extend(chunk.iter().map(|id| Value::Id(*id)));
            count += bind_all(query(text), values).execute(conn).await.map_err(err)? as u64;
        }
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
                values.extend([Value::Text(t.clone()), Value::Text(i.clone())]);
            }
            bind_all(query(text), values).execute(conn).await.map_err(err)?;
        }
        Ok(count)
    }
}

impl Store for MysqlStore {
    async fn claim(&self, request: &ClaimRequest<'_>) -> Result<Vec<Entry>> {
        self.in_transaction("claiming entries", async |conn| self.claim_in(conn, request).await).await
    }

    async fn complete(&self, completion: &Completion) -> Result<()> {
        if completion.is_empty() {
            return Ok(());
        }
        self.in_transaction("completing a batch", async |conn| self.complete_in(conn, completion).await).await
    }
}

impl Maintenance for MysqlStore {
    async fn purge_published(&self, before: Timestamp, limit: usize) -> Result<u64> {
        let what = "purging published entries";
        let text = format!(
            "DELETE FROM {} WHERE status = '{}' AND published_at < ? ORDER BY published_at LIMIT ?",
            self.outbox.sql.entries,
            Status::Published.as_str()
        );
        let mut conn = self.conn(what).await?;
        let n = bind_all(query(text), vec![Value::Time(before), Value::Int(i64::try_from(limit).unwrap_or(i64::MAX))])
            .execute(&mut conn)
            .await
            .map_err(|e| self.outbox.err(what, e))?;
        Ok(n as u64)
    }

    async fn stats(&self, now: Timestamp) -> Result<Stats> {
        let what = "reading stats";
        let count = |s: Status| format!("CAST(count(CASE WHEN status = '{}' THEN 1 END) AS SIGNED)", s.as_str());
        let text = format!(
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
            self.outbox.sql.entries
        );
        let mut conn = self.conn(what).await?;
        let row: StatsRow = query(text).get_result(&mut conn).await.map_err(|e| self.outbox.err(what, e))?;
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(Stats {
            pending: n(row.pending),
            processing: n(row.processing),
            published: n(row.published),
            failed: n(row.failed),
            dead: n(row.dead),
            oldest_unpublished_age: row.oldest.map(|o| now.saturating_duration_since(from_dt(o))),
        })
    }

    async fn requeue_dead(&self, which: Requeue<'_>, now: Timestamp) -> Result<u64> {
        self.in_transaction("requeuing dead entries", async |conn| self.requeue_in(conn, which, now).await).await
    }

    async fn entry(&self, id: EntryId) -> Result<Option<Entry>> {
        let what = "reading an entry";
        let mut conn = self.conn(what).await?;
        let rows: Vec<Row> = bind_all(
            query(format!("SELECT {COLUMNS} FROM {} WHERE id = ?", self.outbox.sql.entries)),
            vec![Value::Id(id)],
        )
        .load(&mut conn)
        .await
        .map_err(|e| self.outbox.err(what, e))?;
        rows.into_iter().next().map(|r| r.into_entry(self.outbox.tables().name())).transpose()
    }
}
