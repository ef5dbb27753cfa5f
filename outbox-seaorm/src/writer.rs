//! Writing entries inside the application's own SeaORM transaction.

use std::collections::HashMap;

use outbox_core::{NewEntry, Result, Timestamp};
use sea_orm::sea_query::Value;
use sea_orm::{ConnectionTrait, DbBackend, Statement};

use crate::config::Tables;
use crate::convert;
use crate::error::map;
use crate::plan::{self, Key};

/// Most rows in one multi-row statement (keeps every database under its bind-parameter limit).
const CHUNK: usize = 500;

/// Writes `entry` into the default outbox (`outbox`, see [`Tables::default`]) with `conn`,
/// normally the application's [`DatabaseTransaction`](sea_orm::DatabaseTransaction), so the entry
/// commits or rolls back with the business change. See [`Outbox::enqueue`].
pub async fn enqueue<C: ConnectionTrait>(conn: &C, entry: &NewEntry) -> Result<()> {
    write(&Tables::default(), conn, std::slice::from_ref(entry)).await
}

/// Writes `entries` into the default outbox with `conn`, in two statements per 500 entries
/// (three on MySQL). See [`Outbox::enqueue_all`].
pub async fn enqueue_all<C: ConnectionTrait>(conn: &C, entries: &[NewEntry]) -> Result<()> {
    write(&Tables::default(), conn, entries).await
}

/// The writing side of an outbox in given [`Tables`].
///
/// ```no_run
/// use outbox_seaorm::{Outbox, Tables};
/// use outbox_core::NewEntry;
/// use sea_orm::{Database, TransactionTrait};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let db = Database::connect("postgres://postgres@127.0.0.1:5432/test").await?;
/// let outbox = Outbox::new(Tables::new("orders_outbox")?);
/// let tx = db.begin().await?;
/// // ... the business change with `&tx` ...
/// outbox.enqueue(&tx, &NewEntry::builder("order", "o-1", "order.placed").json("{}").build()?).await?;
/// tx.commit().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default)]
pub struct Outbox {
    tables: Tables,
}

impl Outbox {
    /// The outbox in `tables`.
    pub fn new(tables: Tables) -> Self {
        Outbox { tables }
    }

    /// Its tables.
    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    /// Writes `entry` with `conn`, which should be the application's transaction (a
    /// [`DatabaseTransaction`](sea_orm::DatabaseTransaction)): the entry then commits or rolls
    /// back with it, and this never commits on its own.
    ///
    /// The entry gets the next sequence of its aggregate: the aggregate's row is upserted in the
    /// same transaction, and its row lock orders concurrent writers of one aggregate, so
    /// sequences follow commit order. A duplicate id fails with [`ErrorKind::Validation`]
    /// (PostgreSQL then requires the transaction to be rolled back).
    ///
    /// [`ErrorKind::Validation`]: outbox_core::ErrorKind::Validation
    pub async fn enqueue<C: ConnectionTrait>(&self, conn: &C, entry: &NewEntry) -> Result<()> {
        write(&self.tables, conn, std::slice::from_ref(entry)).await
    }

    /// Writes `entries` with `conn` as [`Outbox::enqueue`] does, in order: two statements per
    /// 500 entries (one upsert of their aggregates, in key order so concurrent batch writers
    /// cannot deadlock, and one insert; MySQL adds a read of the new sequences), whatever their
    /// aggregates. Entries of one aggregate get consecutive sequences in slice order.
    pub async fn enqueue_all<C: ConnectionTrait>(&self, conn: &C, entries: &[NewEntry]) -> Result<()> {
        write(&self.tables, conn, entries).await
    }
}

async fn write<C: ConnectionTrait>(tables: &Tables, conn: &C, entries: &[NewEntry]) -> Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let backend = conn.get_database_backend();
    let now = Timestamp::now();
    let what = "writing outbox entries";
    let m = |e| map(backend, what, tables.name(), e);
    let groups = plan::group_by_aggregate(entries);
    let mut sequences = vec![0i64; entries.len()];
    for chunk in groups.chunks(CHUNK) {
        let last = upsert_aggregates(tables, conn, backend, chunk, entries, now).await?;
        for (key, indexes) in chunk {
            let Some(&top) = last.get(key) else {
                return Err(crate::error::bad_row(
                    &tables.aggregates_name(),
                    format!("the aggregate ({}, {}) was not found after its upsert", key.0, key.1),
                ));
            };
            let n = indexes.len() as i64;
            for (k, &i) in indexes.iter().enumerate() {
                sequences[i] = top - n + 1 + k as i64;
            }
        }
    }
    let base = "INSERT INTO {entries} (id, aggregate_type, aggregate_id, sequence, event_type, payload, \
                content_type, headers, status, attempts, created_at, available_at) VALUES ";
    for (c, chunk) in entries.chunks(CHUNK).enumerate() {
        let mut sql = tables.render(base, backend);
        let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * 10);
        for (j, e) in chunk.iter().enumerate() {
            if j > 0 {
                sql.push_str(", ");
            }
            match backend {
                DbBackend::Postgres => {
                    let p = values.len();
                    sql.push_str(&format!(
                        "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}::jsonb, 'pending', 0, ${}, ${})",
                        p + 1,
                        p + 2,
                        p + 3,
                        p + 4,
                        p + 5,
                        p + 6,
                        p + 7,
                        p + 8,
                        p + 9,
                        p + 10
                    ));
                }
                DbBackend::MySql | DbBackend::Sqlite => {
                    sql.push_str("(?, ?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?)");
                }
            }
            values.push(convert::id(backend, e.id()));
            values.push(e.aggregate_type().into());
            values.push(e.aggregate_id().into());
            values.push(sequences[c * CHUNK + j].into());
            values.push(e.event_type().into());
            values.push(Value::Bytes(Some(Box::new(e.payload().as_bytes().to_vec()))));
            values.push(e.content_type().into());
            values.push(convert::headers_to_json(e.headers()).into());
            values.push(convert::ts(backend, now)?);
            values.push(convert::ts(backend, plan::available_at(e, now))?);
        }
        conn.execute(Statement::from_sql_and_values(backend, sql, values)).await.map_err(m)?;
    }
    Ok(())
}

/// Upserts the aggregates of `groups` (adding their entry counts) and returns each one's last
/// given sequence.
async fn upsert_aggregates<C: ConnectionTrait>(
    tables: &Tables,
    conn: &C,
    backend: DbBackend,
    groups: &[(Key, Vec<usize>)],
    entries: &[NewEntry],
    now: Timestamp,
) -> Result<HashMap<Key, i64>> {
    let what = "writing outbox entries";
    let m = |e| map(backend, what, tables.name(), e);
    let alias = if backend == DbBackend::Postgres { " AS a" } else { "" };
    let mut sql =
        tables.render(&format!("INSERT INTO {{aggregates}}{alias} (aggregate_type, aggregate_id, next_sequence, unpublished, available_at) VALUES "), backend);
    let mut values: Vec<Value> = Vec::with_capacity(groups.len() * 5);
    for (j, (key, indexes)) in groups.iter().enumerate() {
        if j > 0 {
            sql.push_str(", ");
        }
        match backend {
            DbBackend::Postgres => {
                let p = values.len();
                sql.push_str(&format!("(${}, ${}, ${}, ${}, ${})", p + 1, p + 2, p + 3, p + 4, p + 5));
            }
            _ => sql.push_str("(?, ?, ?, ?, ?)"),
        }
        let due = indexes.iter().map(|&i| plan::available_at(&entries[i], now)).min().unwrap_or(now);
        let n = indexes.len() as i64;
        values.push(key.0.as_str().into());
        values.push(key.1.as_str().into());
        values.push(n.into());
        values.push(n.into());
        values.push(convert::ts(backend, due)?);
    }
    let mut last = HashMap::with_capacity(groups.len());
    match backend {
        DbBackend::Postgres | DbBackend::Sqlite => {
            let (t, least) = if backend == DbBackend::Postgres { ("a.", "LEAST") } else { ("", "MIN") };
            let tail = format!(
                " ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET \
                 next_sequence = {t}next_sequence + excluded.next_sequence, \
                 unpublished = {t}unpublished + excluded.unpublished, \
                 available_at = {least}({t}available_at, excluded.available_at) \
                 RETURNING aggregate_type, aggregate_id, next_sequence"
            );
            sql.push_str(&tail);
            let rows = conn.query_all(Statement::from_sql_and_values(backend, sql, values)).await.map_err(m)?;
            for row in rows {
                let t: String = row.try_get("", "aggregate_type").map_err(m)?;
                let i: String = row.try_get("", "aggregate_id").map_err(m)?;
                let s: i64 = row.try_get("", "next_sequence").map_err(m)?;
                last.insert((t, i), s);
            }
        }
        DbBackend::MySql => {
            sql.push_str(
                " ON DUPLICATE KEY UPDATE next_sequence = next_sequence + VALUES(next_sequence), \
                 unpublished = unpublished + VALUES(unpublished), \
                 available_at = LEAST(available_at, VALUES(available_at))",
            );
            conn.execute(Statement::from_sql_and_values(backend, sql, values)).await.map_err(m)?;
            let mut select =
                tables.render("SELECT aggregate_type, aggregate_id, next_sequence FROM {aggregates} WHERE ", backend);
            let mut keys: Vec<Value> = Vec::with_capacity(groups.len() * 2);
            for (j, (key, _)) in groups.iter().enumerate() {
                if j > 0 {
                    select.push_str(" OR ");
                }
                select.push_str("(aggregate_type = ? AND aggregate_id = ?)");
                keys.push(key.0.as_str().into());
                keys.push(key.1.as_str().into());
            }
            let rows = conn.query_all(Statement::from_sql_and_values(backend, select, keys)).await.map_err(m)?;
            for row in rows {
                let t: String = row.try_get("", "aggregate_type").map_err(m)?;
                let i: String = row.try_get("", "aggregate_id").map_err(m)?;
                let s: i64 = row.try_get("", "next_sequence").map_err(m)?;
                last.insert((t, i), s);
            }
        }
    }
    Ok(last)
}
