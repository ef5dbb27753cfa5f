//! diesel-async: the writer for `AsyncPgConnection` and the relay's [`PgStore`].

use std::collections::HashMap;
use std::fmt;

use diesel::QueryableByName;
use diesel::pg::data_types::PgTimestamp;
use diesel::sql_types::{Array, BigInt, Bool, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::{AnsiTransactionManager, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection, TransactionManager};
use outbox_core::{
    ClaimRequest, Completion, DeadPolicy, Entry, EntryId, Maintenance, NewEntry, Requeue, Result, Stats, Store,
    Timestamp,
};
use uuid::Uuid;

use super::{PgOutbox, Row, SequenceRow, default_outbox, from_pg, query, to_pg, uuid};
use crate::error::{Db, unavailable};
use crate::plan::{self, Key, NEVER};

impl PgOutbox {
    /// [`PgOutbox::enqueue`] for a diesel-async connection: call it inside
    /// `conn.transaction(async |conn| ...)` (or between `begin`/`commit` of your own).
    #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
    pub async fn enqueue_async(&self, conn: &mut AsyncPgConnection, entry: &NewEntry) -> Result<()> {
        self.enqueue_query(entry, Timestamp::now()).execute(conn).await.map_err(|e| self.err("enqueue", e))?;
        Ok(())
    }

    /// [`PgOutbox::enqueue_batch`] for a diesel-async connection.
    #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
    pub async fn enqueue_batch_async(&self, conn: &mut AsyncPgConnection, entries: &[NewEntry]) -> Result<()> {
        match entries {
            [] => return Ok(()),
            [one] => return self.enqueue_async(conn, one).await,
            _ => {}
        }
        let batch = self.batch(entries);
        let rows: Vec<SequenceRow> = batch.aggregates.load(conn).await.map_err(|e| self.err("enqueue_batch", e))?;
        self.insert_query(entries, &batch.groups, rows, batch.now)
            .execute(conn)
            .await
            .map_err(|e| self.err("enqueue_batch", e))?;
        Ok(())
    }

    /// [`PgOutbox::migrate`] for a diesel-async connection.
    #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
    pub async fn migrate_async(&self, conn: &mut AsyncPgConnection) -> Result<()> {
        conn.batch_execute(&self.migration_sql()).await.map_err(|e| self.err("migrate", e))
    }

    /// A store over `pool` for relays and operators.
    #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
    pub fn store(&self, pool: Pool<AsyncPgConnection>) -> PgStore {
        PgStore { pool, outbox: self.clone() }
    }
}

/// Writes `entry` into the default tables with a diesel-async connection; see
/// [`PgOutbox::enqueue`].
///
/// ```no_run
/// use diesel_async::{AsyncConnection, AsyncPgConnection};
/// use outbox_core::NewEntry;
///
/// # async fn run(conn: &mut AsyncPgConnection) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let entry = NewEntry::builder("order", "o-1", "order.placed").json("{}").build()?;
/// conn.transaction(async |conn| {
///     // ... the business change with diesel-async ...
///     outbox_diesel::postgres::enqueue_async(conn, &entry).await?;
///     // The closure's error type must come from diesel's errors and from the outbox's.
///     Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
/// })
/// .await?;
/// # Ok(()) }
/// ```
pub async fn enqueue_async(conn: &mut AsyncPgConnection, entry: &NewEntry) -> Result<()> {
    default_outbox().enqueue_async(conn, entry).await
}

/// Writes `entries` into the default tables with a diesel-async connection; see
/// [`PgOutbox::enqueue_batch`].
pub async fn enqueue_batch_async(conn: &mut AsyncPgConnection, entries: &[NewEntry]) -> Result<()> {
    default_outbox().enqueue_batch_async(conn, entries).await
}

/// Creates the default tables with a diesel-async connection; see [`PgOutbox::migrate`].
pub async fn migrate_async(conn: &mut AsyncPgConnection) -> Result<()> {
    default_outbox().migrate_async(conn).await
}

/// The relay's side of a PostgreSQL outbox on diesel-async: [`Store`] and [`Maintenance`] over a
/// deadpool of `AsyncPgConnection`s. Cheap to clone (clones share the pool).
///
/// ```no_run
/// use diesel_async::AsyncPgConnection;
/// use diesel_async::pooled_connection::AsyncDieselConnectionManager;
/// use diesel_async::pooled_connection::deadpool::Pool;
/// use outbox_core::{NoopPublisher, Relay, RelayConfig};
/// use outbox_diesel::postgres::PgStore;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new("postgres://postgres@127.0.0.1/test");
/// let pool = Pool::builder(manager).max_size(4).build()?;
/// let relay = Relay::new(PgStore::new(pool), NoopPublisher, RelayConfig::default())?;
/// relay.run_once().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PgStore {
    pool: Pool<AsyncPgConnection>,
    outbox: PgOutbox,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore").field("tables", self.outbox.tables()).finish_non_exhaustive()
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
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
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
    #[diesel(sql_type = Nullable<Timestamptz>)]
    oldest: Option<PgTimestamp>,
}

#[derive(QueryableByName)]
struct CountRow {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl PgStore {
    /// A store for the default tables over `pool`.
    pub fn new(pool: Pool<AsyncPgConnection>) -> Self {
        PgOutbox::default().store(pool)
    }

    /// The pool.
    pub fn pool(&self) -> &Pool<AsyncPgConnection> {
        &self.pool
    }

    /// The outbox (tables and writer).
    pub fn outbox(&self) -> &PgOutbox {
        &self.outbox
    }

    async fn conn(&self, what: &str) -> Result<diesel_async::pooled_connection::deadpool::Object<AsyncPgConnection>> {
        self.pool.get().await.map_err(|e| unavailable(Db::Postgres, what, e))
    }

    /// Runs `body` in a transaction on a pooled connection: commits on `Ok`, rolls back on `Err`.
    async fn in_transaction<R>(
        &self,
        what: &str,
        body: impl AsyncFnOnce(&mut AsyncPgConnection) -> Result<R>,
    ) -> Result<R> {
        let mut conn = self.conn(what).await?;
        let conn: &mut AsyncPgConnection = &mut conn;
        // Claims and completions must read what committed before their locks were taken: each
        // statement needs a fresh snapshot, whatever the server's default isolation is.
        AnsiTransactionManager::begin_transaction_sql(conn, "BEGIN ISOLATION LEVEL READ COMMITTED")
            .await
            .map_err(|e| self.outbox.err(what, e))?;
        let result = body(conn).await;
        match result {
            Ok(r) => {
                AnsiTransactionManager::commit_transaction(conn).await.map_err(|e| self.outbox.err(what, e))?;
                Ok(r)
            }
            Err(e) => {
                // The error that matters is the body's; a failed rollback leaves the connection
                // broken, and the pool discards it on recycle.
                let _ = AnsiTransactionManager::rollback_transaction(conn).await;
                Err(e)
            }
        }
    }

    async fn claim_in(&self, conn: &mut AsyncPgConnection, request: &ClaimRequest<'_>) -> Result<Vec<Entry>> {
        let what = "claiming entries";
        let sql = &self.outbox.sql;
        let err = |e| self.outbox.err(what, e);
        let k = plan::aggregates_for(request);
        let locked: Vec<KeyRow> = query(&sql.lock_aggregates)
            .bind::<Timestamptz, _>(to_pg(request.now))
            .bind::<BigInt, _>(k as i64)
            .load(conn)
            .await
            .map_err(err)?;
        if locked.is_empty() {
            return Ok(Vec::new());
        }
        let locked: Vec<Key> = locked.into_iter().map(|r| (r.aggregate_type, r.aggregate_id)).collect();
        let types: Vec<&str> = locked.iter().map(|(t, _)| t.as_str()).collect();
        let ids: Vec<&str> = locked.iter().map(|(_, i)| i.as_str()).collect();
        let rows: Vec<Row> = query(&sql.read_heads)
            .bind::<Array<Text>, _>(types)
            .bind::<Array<Text>, _>(ids)
            .bind::<Bool, _>(request.on_dead == DeadPolicy::Block)
            .bind::<BigInt, _>(request.max_per_aggregate as i64)
            .load(conn)
            .await
            .map_err(err)?;
        let table = self.outbox.tables().name();
        let rows = rows.into_iter().map(|r| r.into_entry(table)).collect::<Result<Vec<_>>>()?;
        let plan = plan::plan_claim(request, &locked, rows)?;
        let claimed: Vec<Uuid> = plan.claimed.iter().map(|e| uuid(&e.id)).collect();
        let mut a_types = Vec::new();
        let mut a_ids = Vec::new();
        let mut a_at: Vec<Option<PgTimestamp>> = Vec::new();
        for (t, i) in &plan.leased {
            a_types.push(t.as_str());
            a_ids.push(i.as_str());
            a_at.push(None);
        }
        for ((t, i), at) in &plan.parked {
            a_types.push(t.as_str());
            a_ids.push(i.as_str());
            a_at.push(Some(to_pg(*at)));
        }
        query(&sql.mark_claimed)
            .bind::<Text, _>(request.holder)
            .bind::<Timestamptz, _>(to_pg(request.lease_until))
            .bind::<Array<SqlUuid>, _>(claimed)
            .bind::<Array<Text>, _>(a_types)
            .bind::<Array<Text>, _>(a_ids)
            .bind::<Array<Nullable<Timestamptz>>, _>(a_at)
            .execute(conn)
            .await
            .map_err(err)?;
        Ok(plan.claimed)
    }

    async fn complete_in(&self, conn: &mut AsyncPgConnection, completion: &Completion) -> Result<()> {
        let what = "completing a batch";
        let sql = &self.outbox.sql;
        let err = |e| self.outbox.err(what, e);
        let all: Vec<Uuid> = plan::completion_ids(completion).iter().map(uuid).collect();
        query(&sql.lock_for_completion)
            .bind::<Array<SqlUuid>, _>(all.clone())
            .bind::<Text, _>(completion.holder.as_str())
            .execute(conn)
            .await
            .map_err(err)?;
        let held: Vec<HeldRow> = query(&sql.held)
            .bind::<Array<SqlUuid>, _>(all)
            .bind::<Text, _>(completion.holder.as_str())
            .load(conn)
            .await
            .map_err(err)?;
        if held.is_empty() {
            return Ok(());
        }
        let held: HashMap<EntryId, Key> = held
            .into_iter()
            .map(|r| (EntryId::from_u128(r.id.as_u128()), (r.aggregate_type, r.aggregate_id)))
            .collect();
        let plan = plan::plan_completion(completion, &held);
        query(&sql.complete)
            .bind::<Array<SqlUuid>, _>(plan.published.iter().map(uuid).collect::<Vec<_>>())
            .bind::<Text, _>(completion.holder.as_str())
            .bind::<Timestamptz, _>(to_pg(completion.now))
            .bind::<Array<SqlUuid>, _>(plan.retry.iter().map(|r| uuid(&r.id)).collect::<Vec<_>>())
            .bind::<Array<Timestamptz>, _>(plan.retry.iter().map(|r| to_pg(r.at)).collect::<Vec<_>>())
            .bind::<Array<Text>, _>(plan.retry.iter().map(|r| r.error.as_str()).collect::<Vec<_>>())
            .bind::<Array<SqlUuid>, _>(plan.dead.iter().map(|d| uuid(&d.id)).collect::<Vec<_>>())
            .bind::<Array<Text>, _>(plan.dead.iter().map(|d| d.error.as_str()).collect::<Vec<_>>())
            .bind::<Array<SqlUuid>, _>(plan.released.iter().map(uuid).collect::<Vec<_>>())
            .bind::<Array<Text>, _>(plan.aggregates.iter().map(|a| a.key.0.as_str()).collect::<Vec<_>>())
            .bind::<Array<Text>, _>(plan.aggregates.iter().map(|a| a.key.1.as_str()).collect::<Vec<_>>())
            .bind::<Array<BigInt>, _>(plan.aggregates.iter().map(|a| a.published).collect::<Vec<_>>())
            .bind::<Timestamptz, _>(to_pg(NEVER))
            .bind::<Array<Timestamptz>, _>(plan.aggregates.iter().map(|a| to_pg(a.available_at)).collect::<Vec<_>>())
            .execute(conn)
            .await
            .map_err(err)?;
        Ok(())
    }
}

impl Store for PgStore {
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

impl Maintenance for PgStore {
    async fn purge_published(&self, before: Timestamp, limit: usize) -> Result<u64> {
        let what = "purging published entries";
        let mut conn = self.conn(what).await?;
        let n = query(&self.outbox.sql.purge)
            .bind::<Timestamptz, _>(to_pg(before))
            .bind::<BigInt, _>(i64::try_from(limit).unwrap_or(i64::MAX))
            .execute(&mut conn)
            .await
            .map_err(|e| self.outbox.err(what, e))?;
        Ok(n as u64)
    }

    async fn stats(&self, now: Timestamp) -> Result<Stats> {
        let what = "reading stats";
        let mut conn = self.conn(what).await?;
        let row: StatsRow =
            query(&self.outbox.sql.stats).get_result(&mut conn).await.map_err(|e| self.outbox.err(what, e))?;
        Ok(Stats {
            pending: count(row.pending),
            processing: count(row.processing),
            published: count(row.published),
            failed: count(row.failed),
            dead: count(row.dead),
            oldest_unpublished_age: row.oldest.map(|o| now.saturating_duration_since(from_pg(o))),
        })
    }

    async fn requeue_dead(&self, which: Requeue<'_>, now: Timestamp) -> Result<u64> {
        let what = "requeuing dead entries";
        let sql = &self.outbox.sql;
        let q = match which {
            Requeue::All => query(&sql.requeue_all).bind::<Timestamptz, _>(to_pg(now)),
            Requeue::Ids(ids) => query(&sql.requeue_ids)
                .bind::<Timestamptz, _>(to_pg(now))
                .bind::<Array<SqlUuid>, _>(ids.iter().map(uuid).collect::<Vec<_>>()),
            Requeue::Aggregate { aggregate_type, aggregate_id } => query(&sql.requeue_aggregate)
                .bind::<Timestamptz, _>(to_pg(now))
                .bind::<Text, _>(aggregate_type.to_string())
                .bind::<Text, _>(aggregate_id.to_string()),
        };
        let mut conn = self.conn(what).await?;
        let row: CountRow = q.get_result(&mut conn).await.map_err(|e| self.outbox.err(what, e))?;
        Ok(count(row.n))
    }

    async fn entry(&self, id: EntryId) -> Result<Option<Entry>> {
        let what = "reading an entry";
        let mut conn = self.conn(what).await?;
        let rows: Vec<Row> = query(&self.outbox.sql.entry)
            .bind::<SqlUuid, _>(uuid(&id))
            .load(&mut conn)
            .await
            .map_err(|e| self.outbox.err(what, e))?;
        rows.into_iter().next().map(|r| r.into_entry(self.outbox.tables().name())).transpose()
    }
}
