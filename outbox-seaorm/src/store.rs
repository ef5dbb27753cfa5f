//! The relay side: [`SeaStore`] implements outbox-core's `Store` and `Maintenance` on a SeaORM
//! connection pool.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use outbox_core::{
    ClaimRequest, Completion, DeadPolicy, Entry, EntryId, Maintenance, Requeue, Result, Stats, Status, Store, Timestamp,
};
use sea_orm::sea_query::Value;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, IsolationLevel, TransactionTrait,
};

use crate::config::Tables;
use crate::convert::{self, entry_columns, entry_from_row};
use crate::error::map;
use crate::plan::{self, ClaimPlan, Key};
use crate::query::Query;

/// The outbox's relay-side store on a SeaORM [`DatabaseConnection`] (PostgreSQL, MySQL/MariaDB
/// or SQLite, whichever the connection is).
///
/// Claims lease whole aggregates (`SELECT … FOR UPDATE SKIP LOCKED` on the aggregates table;
/// SQLite has one writer and needs no row locks), so entries of one aggregate go out in order
/// with any number of relays; a completion applies each status group in one statement. The
/// times in requests are the relay's clock, never the database's.
///
/// ```no_run
/// use outbox_core::{NoopPublisher, Relay, RelayConfig};
/// use outbox_seaorm::{SeaStore, Tables};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let db = sea_orm::Database::connect("postgres://postgres@127.0.0.1:5432/test").await?;
/// let store = SeaStore::new(db, Tables::default());
/// let relay = Relay::new(store, NoopPublisher, RelayConfig::default())?;
/// relay.run_once().await?;
/// # Ok(()) }
/// ```
///
/// On SQLite (one writer at a time) a store queues its own writing transactions (claims,
/// completions, requeues: a relay claims its next batch while the last one completes) on an
/// async lock shared by its clones, instead of having them wait in SQLite's busy handler, which
/// polls with sleeps of up to 100 ms.
#[derive(Clone)]
pub struct SeaStore {
    db: DatabaseConnection,
    tables: Tables,
    backend: DbBackend,
    writer: Arc<tokio::sync::Mutex<()>>,
}

impl fmt::Debug for SeaStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The connection is left out: its options may hold a password.
        f.debug_struct("SeaStore").field("backend", &self.backend).field("tables", &self.tables).finish()
    }
}

fn held_keys(rows: &[sea_orm::QueryResult], backend: DbBackend, table: &str) -> Result<HashMap<EntryId, Key>> {
    let m = |e| map(backend, "completing a batch", table, e);
    let mut held = HashMap::with_capacity(rows.len());
    for row in rows {
        let id = convert::get_id(backend, row, "id", table)?;
        let t: String = row.try_get("", "aggregate_type").map_err(m)?;
        let i: String = row.try_get("", "aggregate_id").map_err(m)?;
        held.insert(id, (t, i));
    }
    Ok(held)
}

impl SeaStore {
    /// On SQLite, this store's turn to write (see the type's docs); elsewhere nothing.
    async fn writing(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match self.backend {
            DbBackend::Sqlite => Some(self.writer.lock().await),
            _ => None,
        }
    }

    /// A store over the outbox in `tables`, on `db`.
    pub fn new(db: DatabaseConnection, tables: Tables) -> Self {
        let backend = db.get_database_backend();
        SeaStore { db, tables, backend, writer: Arc::default() }
    }

    /// The connection pool.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// The outbox's tables.
    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    fn err(&self, what: &str) -> impl Fn(DbErr) -> outbox_core::Error + '_ {
        let what = what.to_string();
        move |e| map(self.backend, &what, self.tables.name(), e)
    }

    fn q(&self, sql: &str) -> Query {
        Query::new(self.backend, self.tables.render(sql, self.backend))
    }

    fn ts(&self, t: Timestamp) -> Result<Value> {
        convert::ts(self.backend, t)
    }

    fn id(&self, id: EntryId) -> Value {
        convert::id(self.backend, id)
    }

    /// A transaction for the store's own work. On MySQL at `READ COMMITTED`: InnoDB then takes no
    /// gap locks that would block writers, and each statement sees what committed before it.
    async fn begin(&self, what: &str) -> Result<DatabaseTransaction> {
        let isolation = (self.backend == DbBackend::MySql).then_some(IsolationLevel::ReadCommitted);
        self.db.begin_with_config(isolation, None).await.map_err(self.err(what))
    }

    // ---------------------------------------------------------------- claim

    async fn claim_inner(&self, req: &ClaimRequest<'_>) -> Result<Vec<Entry>> {
        let what = "claiming outbox entries";
        let m = self.err(what);
        let tx = self.begin(what).await?;
        let (locked, rows) = match self.backend {
            DbBackend::Postgres => self.pg_lock_and_read(&tx, req).await?,
            DbBackend::MySql => self.mysql_lock_and_read(&tx, req).await?,
            DbBackend::Sqlite => self.sqlite_lock_and_read(&tx, req).await?,
        };
        if locked.is_empty() {
            tx.commit().await.map_err(&m)?;
            return Ok(Vec::new());
        }
        let plan = plan::plan_claim(req, &locked, rows)?;
        match self.backend {
            DbBackend::Postgres => self.pg_apply_claim(&tx, req, &plan).await?,
            DbBackend::MySql | DbBackend::Sqlite => self.generic_apply_claim(&tx, req, &plan).await?,
        }
        tx.commit().await.map_err(&m)?;
        Ok(plan.claimed)
    }

    fn skip_dead(&self, req: &ClaimRequest<'_>, prefix: &str) -> String {
        if req.on_dead == DeadPolicy::Skip { format!(" AND {prefix}status <> 'dead'") } else { String::new() }
    }

    async fn pg_lock_and_read(
        &self,
        tx: &DatabaseTransaction,
        req: &ClaimRequest<'_>,
    ) -> Result<(Vec<Key>, Vec<Entry>)> {
        let table = self.tables.name();
        let m = self.err("claiming outbox entries");
        let mut q =
            self.q("SELECT aggregate_type, aggregate_id FROM {aggregates} WHERE unpublished > 0 AND available_at <= ");
        let now = q.bind(self.ts(req.now)?);
        q.push(&now);
        q.push(&format!(" AND (lease_expires_at IS NULL OR lease_expires_at <= {now}) ORDER BY available_at LIMIT "));
        q.push_bind(plan::aggregates_for(req) as i64);
        q.push(" FOR UPDATE SKIP LOCKED");
        let rows = tx.query_all(q.statement()).await.map_err(&m)?;
        let mut locked: Vec<Key> = Vec::with_capacity(rows.len());
        for row in rows {
            locked.push((row.try_get_by(0).map_err(&m)?, row.try_get_by(1).map_err(&m)?));
        }
        if locked.is_empty() {
            return Ok((locked, Vec::new()));
        }
        // Each locked aggregate's first unpublished entries through the partial index.
        let mut q = self.q("SELECT e.* FROM unnest(");
        q.push_bind(convert::pg_text_array(locked.iter().map(|k| k.0.as_str())));
        q.push("::text[], ");
        q.push_bind(convert::pg_text_array(locked.iter().map(|k| k.1.as_str())));
        q.push("::text[]) AS k(t, i) CROSS JOIN LATERAL (SELECT ");
        q.push(&entry_columns(self.backend, "x."));
        q.push(&self.tables.render(
            " FROM {entries} x WHERE x.aggregate_type = k.t AND x.aggregate_id = k.i AND x.status <> 'published'",
            self.backend,
        ));
        q.push(&self.skip_dead(req, "x."));
        q.push(" ORDER BY x.sequence LIMIT ");
        q.push_bind(req.max_per_aggregate as i64);
        q.push(") e");
        let rows = tx.query_all(q.statement()).await.map_err(&m)?;
        let entries = rows.iter().map(|r| entry_from_row(self.backend, r, table, 0)).collect::<Result<Vec<_>>>()?;
        Ok((locked, entries))
    }

    async fn mysql_lock_and_read(
        &self,
        tx: &DatabaseTransaction,
        req: &ClaimRequest<'_>,
    ) -> Result<(Vec<Key>, Vec<Entry>)> {
        let m = self.err("claiming outbox entries");
        let mut q =
            self.q("SELECT aggregate_type, aggregate_id FROM {aggregates} WHERE unpublished > 0 AND available_at <= ");
        q.push_bind(self.ts(req.now)?);
        q.push(" AND (lease_expires_at IS NULL OR lease_expires_at <= ");
        q.push_bind(self.ts(req.now)?);
        q.push(") ORDER BY available_at LIMIT ");
        q.push_bind(plan::aggregates_for(req) as i64);
        q.push(" FOR UPDATE SKIP LOCKED");
        let rows = tx.query_all(q.statement()).await.map_err(&m)?;
        let mut locked: Vec<Key> = Vec::with_capacity(rows.len());
        for row in rows {
            locked.push((row.try_get("", "aggregate_type").map_err(&m)?, row.try_get("", "aggregate_id").map_err(&m)?));
        }
        if locked.is_empty() {
            return Ok((locked, Vec::new()));
        }
        // One index range per aggregate: (type, id, published_at IS NULL, sequence...).
        let mut q = self.q("");
        let cols = entry_columns(self.backend, "");
        for (i, (t, id)) in locked.iter().enumerate() {
            if i > 0 {
                q.push(" UNION ALL ");
            }
            q.push(
                &self.tables.render(&format!("(SELECT {cols} FROM {{entries}} WHERE aggregate_type = "), self.backend),
            );
            q.push_bind(t.as_str());
            q.push(" AND aggregate_id = ");
            q.push_bind(id.as_str());
            q.push(" AND published_at IS NULL");
            q.push(&self.skip_dead(req, ""));
            q.push(" ORDER BY sequence LIMIT ");
            q.push_bind(req.max_per_aggregate as i64);
            q.push(")");
        }
        let rows = tx.query_all(q.statement()).await.map_err(&m)?;
        let entries =
            rows.iter().map(|r| entry_from_row(self.backend, r, self.tables.name(), 0)).collect::<Result<Vec<_>>>()?;
        Ok((locked, entries))
    }

    async fn sqlite_lock_and_read(
        &self,
        tx: &DatabaseTransaction,
        req: &ClaimRequest<'_>,
    ) -> Result<(Vec<Key>, Vec<Entry>)> {
        let m = self.err("claiming outbox entries");
        // SQLite: one writer at a time. A write first (one that changes nothing) takes the write
        // lock at once, as `BEGIN IMMEDIATE` would: a read first could not be upgraded under a
        // concurrent writer. The lock then keeps other claims out until commit.
        tx.execute(self.q("UPDATE {aggregates} SET unpublished = unpublished WHERE 1 = 0").statement())
            .await
            .map_err(&m)?;
        let mut q =
            self.q("SELECT aggregate_type, aggregate_id FROM {aggregates} WHERE unpublished > 0 AND available_at <= ");
        q.push_bind(self.ts(req.now)?);
        q.push(" AND (lease_expires_at IS NULL OR lease_expires_at <= ");
        q.push_bind(self.ts(req.now)?);
        q.push(") ORDER BY available_at LIMIT ");
        q.push_bind(plan::aggregates_for(req) as i64);
        let rows = tx.query_all(q.statement()).await.map_err(&m)?;
        let mut locked: Vec<Key> = Vec::with_capacity(rows.len());
        for row in rows {
            locked.push((row.try_get_by(0).map_err(&m)?, row.try_get_by(1).map_err(&m)?));
        }
        if locked.is_empty() {
            return Ok((locked, Vec::new()));
        }
        // One index range per aggregate (`ORDER BY sequence LIMIT m` on the partial index), in
        // `UNION ALL` statements of at most 500 arms (SQLite's compound-select limit).
        let cols = entry_columns(self.backend, "");
        let arm = self.tables.render(
            &format!(
                "SELECT * FROM (SELECT {cols} FROM {{entries}} WHERE aggregate_type = ? AND aggregate_id = ? \
                 AND status <> 'published'{} ORDER BY sequence LIMIT ?)",
                self.skip_dead(req, "")
            ),
            self.backend,
        );
        let mut entries = Vec::new();
        for group in locked.chunks(500) {
            let mut q = Query::new(self.backend, vec![arm.as_str(); group.len()].join(" UNION ALL "));
            for (t, id) in group {
                q.bind(t.as_str());
                q.bind(id.as_str());
                q.bind(req.max_per_aggregate as i64);
            }
            let rows = tx.query_all(q.statement()).await.map_err(&m)?;
            for row in &rows {
                entries.push(entry_from_row(self.backend, row, self.tables.name(), 0)?);
            }
        }
        Ok((locked, entries))
    }

    async fn pg_apply_claim(&self, tx: &DatabaseTransaction, req: &ClaimRequest<'_>, plan: &ClaimPlan) -> Result<()> {
        let m = self.err("claiming outbox entries");
        // `leased_through` is cleared on lease: outbox-sqlx's PostgreSQL store marks its claims
        // there (not on the entries), and a lapsed one of its leases may have left it set.
        let mut q = self.q("WITH c AS (UPDATE {entries} SET status = 'processing', lease_holder = ");
        let holder = q.bind(req.holder);
        let until = q.bind(self.ts(req.lease_until)?);
        q.push(&format!("{holder}, lease_expires_at = {until} WHERE id = ANY("));
        q.push_bind(convert::pg_uuid_array(plan.claimed.iter().map(|e| e.id)));
        q.push(&self.tables.render(
            &format!(
                ")), l AS (UPDATE {{aggregates}} a SET lease_holder = {holder}, lease_expires_at = {until}, \
                 leased_through = NULL FROM unnest("
            ),
            self.backend,
        ));
        q.push_bind(convert::pg_text_array(plan.leased.iter().map(|k| k.0.as_str())));
        q.push("::text[], ");
        q.push_bind(convert::pg_text_array(plan.leased.iter().map(|k| k.1.as_str())));
        q.push("::text[]) AS v(t, i) WHERE a.aggregate_type = v.t AND a.aggregate_id = v.i)");
        if !plan.parked.is_empty() {
            q.push(
                &self.tables.render(", p AS (UPDATE {aggregates} a SET available_at = v.at FROM unnest(", self.backend),
            );
            q.push_bind(convert::pg_text_array(plan.parked.iter().map(|(k, _)| k.0.as_str())));
            q.push("::text[], ");
            q.push_bind(convert::pg_text_array(plan.parked.iter().map(|(k, _)| k.1.as_str())));
            q.push("::text[], ");
            q.push_bind(convert::pg_ts_array(plan.parked.iter().map(|(_, t)| *t))?);
            q.push("::timestamptz[]) AS v(t, i, at) WHERE a.aggregate_type = v.t AND a.aggregate_id = v.i)");
        }
        q.push(" SELECT 1");
        tx.execute(q.statement()).await.map_err(&m)?;
        Ok(())
    }

    async fn generic_apply_claim(
        &self,
        tx: &DatabaseTransaction,
        req: &ClaimRequest<'_>,
        plan: &ClaimPlan,
    ) -> Result<()> {
        let m = self.err("claiming outbox entries");
        if !plan.claimed.is_empty() {
            let mut q = self.q("UPDATE {entries} SET status = 'processing', lease_holder = ");
            q.push_bind(req.holder);
            q.push(", lease_expires_at = ");
            q.push_bind(self.ts(req.lease_until)?);
            q.push(" WHERE id IN ");
            q.push_list(plan.claimed.iter().map(|e| self.id(e.id)));
            tx.execute(q.statement()).await.map_err(&m)?;
        }
        if !plan.leased.is_empty() {
            let mut q = self.q("UPDATE {aggregates} SET lease_holder = ");
            q.push_bind(req.holder);
            q.push(", lease_expires_at = ");
            q.push_bind(self.ts(req.lease_until)?);
            q.push(" WHERE ");
            q.push_keys("", &plan.leased);
            tx.execute(q.statement()).await.map_err(&m)?;
        }
        if !plan.parked.is_empty() {
            let mut q = self.q("UPDATE {aggregates} SET available_at = CASE");
            for ((t, id), at) in &plan.parked {
                q.push(" WHEN aggregate_type = ");
                q.push_bind(t.as_str());
                q.push(" AND aggregate_id = ");
                q.push_bind(id.as_str());
                q.push(" THEN ");
                q.push_bind(self.ts(*at)?);
            }
            q.push(" ELSE available_at END");
            q.push(" WHERE ");
            q.push_keys("", plan.parked.iter().map(|(k, _)| k));
            tx.execute(q.statement()).await.map_err(&m)?;
        }
        Ok(())
    }

    // ------------------------------------------------------------- complete

    async fn complete_inner(&self, c: &Completion) -> Result<()> {
        let what = "completing a batch";
        let m = self.err(what);
        let table = self.tables.name();
        let ids: Vec<EntryId> = c
            .published
            .iter()
            .copied()
            .chain(c.retry.iter().map(|r| r.id))
            .chain(c.dead.iter().map(|d| d.id))
            .chain(c.released.iter().copied())
            .collect();
        let tx = self.begin(what).await?;
        let held = match self.backend {
            DbBackend::Postgres => {
                // Lock the batch's aggregates first, in key order (the order writers lock in: byte
                // order, whatever the database's collation).
                let mut q = self
                    .q("SELECT a.aggregate_type FROM {aggregates} a WHERE (a.aggregate_type, a.aggregate_id) IN \
                     (SELECT e.aggregate_type, e.aggregate_id FROM {entries} e WHERE e.id = ANY(");
                let ids_p = q.bind(convert::pg_uuid_array(ids.iter().copied()));
                let holder_p = q.bind(c.holder.as_str());
                q.push(&format!(
                    "{ids_p}) AND e.lease_holder = {holder_p}) ORDER BY a.aggregate_type COLLATE \"C\", a.aggregate_id COLLATE \"C\" FOR UPDATE"
                ));
                tx.query_all(q.statement()).await.map_err(&m)?;
                let mut q = self.q("SELECT id, aggregate_type, aggregate_id FROM {entries} WHERE id = ANY(");
                q.push_bind(convert::pg_uuid_array(ids.iter().copied()));
                q.push(") AND status = 'processing' AND lease_holder = ");
                q.push_bind(c.holder.as_str());
                let rows = tx.query_all(q.statement()).await.map_err(&m)?;
                held_keys(&rows, self.backend, table)?
            }
            DbBackend::MySql => {
                let read = |lock: bool| {
                    let mut q = self.q("SELECT id, aggregate_type, aggregate_id FROM {entries} WHERE id IN ");
                    q.push_list(ids.iter().map(|id| self.id(*id)));
                    q.push(" AND status = 'processing' AND lease_holder = ");
                    q.push_bind(c.holder.as_str());
                    if lock {
                        q.push(" FOR UPDATE");
                    }
                    q.statement()
                };
                let rows = tx.query_all(read(false)).await.map_err(&m)?;
                let first = held_keys(&rows, self.backend, table)?;
                let mut keys: Vec<&Key> = first.values().collect();
                keys.sort();
                keys.dedup();
                if keys.is_empty() {
                    first
                } else {
                    let mut q = self.q("SELECT aggregate_type FROM {aggregates} WHERE ");
                    q.push_keys("", keys);
                    q.push(" FOR UPDATE");
                    tx.query_all(q.statement()).await.map_err(&m)?;
                    // Read again under the locks: the latest committed state, not the snapshot.
                    let rows = tx.query_all(read(true)).await.map_err(&m)?;
                    held_keys(&rows, self.backend, table)?
                }
            }
            DbBackend::Sqlite => {
                // One writer: take the write lock first with a no-op write on the held rows.
                let mut q = self.q("UPDATE {entries} SET lease_holder = lease_holder WHERE id IN ");
                q.push_list(ids.iter().map(|id| self.id(*id)));
                q.push(" AND status = 'processing' AND lease_holder = ");
                q.push_bind(c.holder.as_str());
                q.push(" RETURNING id, aggregate_type, aggregate_id");
                let rows = tx.query_all(q.statement()).await.map_err(&m)?;
                held_keys(&rows, self.backend, table)?
            }
        };
        if held.is_empty() {
            tx.commit().await.map_err(&m)?;
            return Ok(());
        }
        let plan = plan::plan_completion(c, &held);
        match self.backend {
            DbBackend::Postgres => self.pg_apply_completion(&tx, c, &plan).await?,
            DbBackend::MySql | DbBackend::Sqlite => self.generic_apply_completion(&tx, c, &plan).await?,
        }
        tx.commit().await.map_err(&m)?;
        Ok(())
    }

    async fn pg_apply_completion(
        &self,
        tx: &DatabaseTransaction,
        c: &Completion,
        plan: &plan::CompletionPlan<'_>,
    ) -> Result<()> {
        let m = self.err("completing a batch");
        let mut q = self.q("WITH ");
        let mut ctes = 0;
        let mut sep = |q: &mut Query, name: &str| {
            if ctes > 0 {
                q.push(", ");
            }
            ctes += 1;
            q.push(&format!("{name} AS ("));
        };
        if !plan.published.is_empty() {
            sep(&mut q, "p");
            q.push(&self.tables.render("UPDATE {entries} SET status = 'published', published_at = ", self.backend));
            q.push_bind(self.ts(c.now)?);
            q.push(", lease_holder = NULL, lease_expires_at = NULL WHERE id = ANY(");
            q.push_bind(convert::pg_uuid_array(plan.published.iter().copied()));
            q.push("))");
        }
        if !plan.retry.is_empty() {
            sep(&mut q, "r");
            q.push(&self.tables.render(
                "UPDATE {entries} e SET status = 'failed', attempts = e.attempts + 1, available_at = v.at, \
                 last_error = v.err, lease_holder = NULL, lease_expires_at = NULL FROM unnest(",
                self.backend,
            ));
            q.push_bind(convert::pg_uuid_array(plan.retry.iter().map(|r| r.id)));
            q.push("::uuid[], ");
            q.push_bind(convert::pg_ts_array(plan.retry.iter().map(|r| r.at))?);
            q.push("::timestamptz[], ");
            q.push_bind(convert::pg_text_array(plan.retry.iter().map(|r| r.error.as_str())));
            q.push("::text[]) AS v(id, at, err) WHERE e.id = v.id)");
        }
        if !plan.dead.is_empty() {
            sep(&mut q, "d");
            q.push(&self.tables.render(
                "UPDATE {entries} e SET status = 'dead', attempts = e.attempts + 1, last_error = v.err, \
                 lease_holder = NULL, lease_expires_at = NULL FROM unnest(",
                self.backend,
            ));
            q.push_bind(convert::pg_uuid_array(plan.dead.iter().map(|d| d.id)));
            q.push("::uuid[], ");
            q.push_bind(convert::pg_text_array(plan.dead.iter().map(|d| d.error.as_str())));
            q.push("::text[]) AS v(id, err) WHERE e.id = v.id)");
        }
        if !plan.released.is_empty() {
            sep(&mut q, "x");
            q.push(&self.tables.render(
                "UPDATE {entries} SET status = 'pending', lease_holder = NULL, lease_expires_at = NULL WHERE id = ANY(",
                self.backend,
            ));
            q.push_bind(convert::pg_uuid_array(plan.released.iter().copied()));
            q.push("))");
        }
        sep(&mut q, "g");
        q.push(&self.tables.render("UPDATE {aggregates} a SET unpublished = a.unpublished - v.n, ", self.backend));
        let holder = q.bind(c.holder.as_str());
        let never = q.bind(self.ts(plan::NEVER)?);
        q.push(&format!(
            "available_at = CASE WHEN a.unpublished - v.n <= 0 THEN {never} \
             WHEN a.lease_holder = {holder} THEN v.at ELSE a.available_at END, \
             lease_expires_at = CASE WHEN a.lease_holder = {holder} THEN NULL ELSE a.lease_expires_at END, \
             lease_holder = CASE WHEN a.lease_holder = {holder} THEN NULL ELSE a.lease_holder END FROM unnest("
        ));
        q.push_bind(convert::pg_text_array(plan.aggregates.iter().map(|a| a.key.0.as_str())));
        q.push("::text[], ");
        q.push_bind(convert::pg_text_array(plan.aggregates.iter().map(|a| a.key.1.as_str())));
        q.push("::text[], ");
        q.push_bind(convert::pg_i64_array(plan.aggregates.iter().map(|a| a.published)));
        q.push("::int8[], ");
        q.push_bind(convert::pg_ts_array(plan.aggregates.iter().map(|a| a.available_at))?);
        q.push("::timestamptz[]) AS v(t, i, n, at) WHERE a.aggregate_type = v.t AND a.aggregate_id = v.i) SELECT 1");
        tx.execute(q.statement()).await.map_err(&m)?;
        Ok(())
    }

    async fn generic_apply_completion(
        &self,
        tx: &DatabaseTransaction,
        c: &Completion,
        plan: &plan::CompletionPlan<'_>,
    ) -> Result<()> {
        let m = self.err("completing a batch");
        if !plan.published.is_empty() {
            let mut q = self.q("UPDATE {entries} SET status = 'published', published_at = ");
            q.push_bind(self.ts(c.now)?);
            q.push(", lease_holder = NULL, lease_expires_at = NULL WHERE id IN ");
            q.push_list(plan.published.iter().map(|id| self.id(*id)));
            tx.execute(q.statement()).await.map_err(&m)?;
        }
        if !plan.retry.is_empty() {
            let mut q =
                self.q("UPDATE {entries} SET status = 'failed', attempts = attempts + 1, available_at = CASE id");
            for r in &plan.retry {
                q.push(" WHEN ");
                q.push_bind(self.id(r.id));
                q.push(" THEN ");
                q.push_bind(self.ts(r.at)?);
            }
            q.push(" END, last_error = CASE id");
            for r in &plan.retry {
                q.push(" WHEN ");
                q.push_bind(self.id(r.id));
                q.push(" THEN ");
                q.push_bind(r.error.as_str());
            }
            q.push(" END, lease_holder = NULL, lease_expires_at = NULL WHERE id IN ");
            q.push_list(plan.retry.iter().map(|r| self.id(r.id)));
            tx.execute(q.statement()).await.map_err(&m)?;
        }
        if !plan.dead.is_empty() {
            let mut q = self.q("UPDATE {entries} SET status = 'dead', attempts = attempts + 1, last_error = CASE id");
            for d in &plan.dead {
                q.push(" WHEN ");
                q.push_bind(self.id(d.id));
                q.push(" THEN ");
                q.push_bind(d.error.as_str());
            }
            q.push(" END, lease_holder = NULL, lease_expires_at = NULL WHERE id IN ");
            q.push_list(plan.dead.iter().map(|d| self.id(d.id)));
            tx.execute(q.statement()).await.map_err(&m)?;
        }
        if !plan.released.is_empty() {
            let mut q = self.q(
                "UPDATE {entries} SET status = 'pending', lease_holder = NULL, lease_expires_at = NULL WHERE id IN ",
            );
            q.push_list(plan.released.iter().map(|id| self.id(*id)));
            tx.execute(q.statement()).await.map_err(&m)?;
        }
        // MySQL assigns left to right with the new values: `available_at` reads the old count and
        // lease, so it goes first, and the lease holder, tested by the others, goes last.
        let mut q = self.q("UPDATE {aggregates} SET available_at = CASE");
        for a in &plan.aggregates {
            q.push(" WHEN aggregate_type = ");
            q.push_bind(a.key.0.as_str());
            q.push(" AND aggregate_id = ");
            q.push_bind(a.key.1.as_str());
            q.push(" THEN (CASE WHEN unpublished - ");
            q.push_bind(a.published);
            q.push(" <= 0 THEN ");
            q.push_bind(self.ts(plan::NEVER)?);
            q.push(" WHEN lease_holder = ");
            q.push_bind(c.holder.as_str());
            q.push(" THEN ");
            q.push_bind(self.ts(a.available_at)?);
            q.push(" ELSE available_at END)");
        }
        q.push(" ELSE available_at END, unpublished = unpublished - CASE");
        for a in &plan.aggregates {
            q.push(" WHEN aggregate_type = ");
            q.push_bind(a.key.0.as_str());
            q.push(" AND aggregate_id = ");
            q.push_bind(a.key.1.as_str());
            q.push(" THEN ");
            q.push_bind(a.published);
        }
        q.push(" ELSE 0 END, lease_expires_at = CASE WHEN lease_holder = ");
        q.push_bind(c.holder.as_str());
        q.push(" THEN NULL ELSE lease_expires_at END, lease_holder = CASE WHEN lease_holder = ");
        q.push_bind(c.holder.as_str());
        q.push(" THEN NULL ELSE lease_holder END WHERE ");
        q.push_keys("", plan.aggregates.iter().map(|a| &a.key));
        tx.execute(q.statement()).await.map_err(&m)?;
        Ok(())
    }

    // ---------------------------------------------------------- maintenance

    async fn requeue_inner(&self, which: Requeue<'_>, now: Timestamp) -> Result<u64> {
        let what = "requeueing dead outbox entries";
        let m = self.err(what);
        let filter = |q: &mut Query| match which {
            Requeue::All => {}
            Requeue::Ids(ids) => {
                q.push(" AND id IN ");
                q.push_list(ids.iter().map(|id| self.id(*id)));
            }
            Requeue::Aggregate { aggregate_type, aggregate_id } => {
                q.push(" AND aggregate_type = ");
                q.push_bind(aggregate_type);
                q.push(" AND aggregate_id = ");
                q.push_bind(aggregate_id);
            }
        };
        if let Requeue::Ids(ids) = which
            && ids.is_empty()
        {
            return Ok(0);
        }
        let tx = self.begin(what).await?;
        let read_keys = |rows: Vec<sea_orm::QueryResult>| -> Result<Vec<Key>> {
            let mut keys = Vec::with_capacity(rows.len());
            for row in rows {
                keys.push((
                    row.try_get("", "aggregate_type").map_err(&m)?,
                    row.try_get("", "aggregate_id").map_err(&m)?,
                ));
            }
            keys.sort();
            keys.dedup();
            Ok(keys)
        };
        let (keys, count) = if self.backend == DbBackend::Sqlite {
            let mut q = self.q("UPDATE {entries} SET status = 'pending', attempts = 0, available_at = ");
            q.push_bind(self.ts(now)?);
            q.push(" WHERE status = 'dead'");
            filter(&mut q);
            q.push(" RETURNING aggregate_type, aggregate_id");
            let rows = tx.query_all(q.statement()).await.map_err(&m)?;
            let count = rows.len() as u64;
            (read_keys(rows)?, count)
        } else {
            let mut q = self.q("SELECT DISTINCT aggregate_type, aggregate_id FROM {entries} WHERE status = 'dead'");
            filter(&mut q);
            let keys = read_keys(tx.query_all(q.statement()).await.map_err(&m)?)?;
            if keys.is_empty() {
                tx.commit().await.map_err(&m)?;
                return Ok(0);
            }
            let mut q = self.q("SELECT aggregate_type FROM {aggregates} WHERE ");
            q.push_keys("", &keys);
            q.push(" FOR UPDATE");
            tx.query_all(q.statement()).await.map_err(&m)?;
            let mut q = self.q("UPDATE {entries} SET status = 'pending', attempts = 0, available_at = ");
            q.push_bind(self.ts(now)?);
            q.push(" WHERE status = 'dead'");
            filter(&mut q);
            q.push(" AND ");
            q.push_keys("", &keys);
            let count = tx.execute(q.statement()).await.map_err(&m)?.rows_affected();
            (keys, count)
        };
        if !keys.is_empty() {
            let least = if self.backend == DbBackend::Sqlite { "MIN" } else { "LEAST" };
            let mut q = self.q(&format!("UPDATE {{aggregates}} SET available_at = {least}(available_at, "));
            q.push_bind(self.ts(now)?);
            q.push(") WHERE ");
            q.push_keys("", &keys);
            tx.execute(q.statement()).await.map_err(&m)?;
        }
        tx.commit().await.map_err(&m)?;
        Ok(count)
    }

    async fn purge_inner(&self, before: Timestamp, limit: usize) -> Result<u64> {
        let m = self.err("purging published outbox entries");
        let mut q = match self.backend {
            DbBackend::MySql => self.q("DELETE FROM {entries} WHERE status = 'published' AND published_at < "),
            _ => self.q(
                "DELETE FROM {entries} WHERE id IN (SELECT id FROM {entries} WHERE status = 'published' AND published_at < ",
            ),
        };
        q.push_bind(self.ts(before)?);
        q.push(" ORDER BY published_at LIMIT ");
        q.push_bind(limit as i64);
        if self.backend != DbBackend::MySql {
            q.push(")");
        }
        Ok(self.db.execute(q.statement()).await.map_err(&m)?.rows_affected())
    }

    async fn stats_inner(&self, now: Timestamp) -> Result<Stats> {
        let m = self.err("reading outbox stats");
        let table = self.tables.name();
        let q = self.q("SELECT status, COUNT(*) AS n, MIN(created_at) AS oldest FROM {entries} GROUP BY status");
        let rows = self.db.query_all(q.statement()).await.map_err(&m)?;
        let mut stats = Stats::default();
        let mut oldest: Option<Timestamp> = None;
        for row in rows {
            let status: String = row.try_get("", "status").map_err(&m)?;
            let status: Status =
                status.parse().map_err(|_| crate::error::bad_row(table, format!("unknown status `{status}`")))?;
            let n: i64 = row.try_get("", "n").map_err(&m)?;
            let n = u64::try_from(n).unwrap_or(0);
            match status {
                Status::Pending => stats.pending = n,
                Status::Processing => stats.processing = n,
                Status::Published => stats.published = n,
                Status::Failed => stats.failed = n,
                Status::Dead => stats.dead = n,
            }
            if status.is_unpublished()
                && let Some(t) = convert::get_ts_opt(self.backend, &row, "oldest", table)?
            {
                oldest = Some(oldest.map_or(t, |o| o.min(t)));
            }
        }
        stats.oldest_unpublished_age = oldest.map(|o| now.saturating_duration_since(o));
        Ok(stats)
    }

    async fn entry_inner(&self, id: EntryId) -> Result<Option<Entry>> {
        let m = self.err("reading an outbox entry");
        let mut q = self.q(&format!("SELECT {} FROM {{entries}} WHERE id = ", entry_columns(self.backend, "")));
        q.push_bind(self.id(id));
        match self.db.query_one(q.statement()).await.map_err(&m)? {
            Some(row) => Ok(Some(entry_from_row(self.backend, &row, self.tables.name(), 0)?)),
            None => Ok(None),
        }
    }
}

impl Store for SeaStore {
    async fn claim(&self, request: &ClaimRequest<'_>) -> Result<Vec<Entry>> {
        if request.max_entries == 0 || request.max_per_aggregate == 0 {
            return Ok(Vec::new());
        }
        let _writing = self.writing().await;
        self.claim_inner(request).await
    }

    async fn complete(&self, completion: &Completion) -> Result<()> {
        if completion.is_empty() {
            return Ok(());
        }
        let _writing = self.writing().await;
        self.complete_inner(completion).await
    }
}

impl Maintenance for SeaStore {
    async fn purge_published(&self, before: Timestamp, limit: usize) -> Result<u64> {
        if limit == 0 {
            return Ok(0);
        }
        self.purge_inner(before, limit).await
    }

    async fn stats(&self, now: Timestamp) -> Result<Stats> {
        self.stats_inner(now).await
    }

    async fn requeue_dead(&self, which: Requeue<'_>, now: Timestamp) -> Result<u64> {
        let _writing = self.writing().await;
        self.requeue_inner(which, now).await
    }

    async fn entry(&self, id: EntryId) -> Result<Option<Entry>> {
        self.entry_inner(id).await
    }
}
