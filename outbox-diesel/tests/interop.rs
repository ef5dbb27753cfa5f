//! One outbox, two adapters: entries written through diesel (sync and diesel-async) and through
//! outbox-sqlx, interleaved on the same aggregates, are drained by the sqlx store, by the diesel
//! store, and by both at once, each exactly once and in order per aggregate.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use diesel::Connection;
use diesel_async::AsyncConnection;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::deadpool::Pool;
use outbox_core::{CollectingPublisher, Entry, EntryId, NewEntry, Relay, RelayConfig, Result, Store};

use common::{mysql_url, pg_url, unique, unreachable};

/// Writes a batch through writer `who` (0: diesel sync, 1: diesel-async or diesel again, 2: sqlx).
trait Writers {
    async fn write(&self, who: usize, entries: Vec<NewEntry>) -> Result<()>;
}

/// A diesel transaction's failure: the outbox's or diesel's own.
#[derive(Debug)]
enum Fail {
    Outbox(outbox_core::Error),
    Diesel(diesel::result::Error),
}

impl From<diesel::result::Error> for Fail {
    fn from(e: diesel::result::Error) -> Self {
        Fail::Diesel(e)
    }
}

impl Fail {
    fn into_outbox(self) -> outbox_core::Error {
        match self {
            Fail::Outbox(e) => e,
            Fail::Diesel(e) => panic!("diesel failed around the write: {e}"),
        }
    }
}

fn entry(agg: &str, n: usize) -> NewEntry {
    NewEntry::builder("interop", agg, "interop.happened")
        .payload(format!("{agg}/{n}"), "text/plain")
        .header("x-n", n.to_string())
        .build()
        .expect("valid entry")
}

fn index(e: &Entry) -> usize {
    let p = String::from_utf8_lossy(e.payload.as_bytes()).into_owned();
    p.rsplit('/').next().and_then(|n| n.parse().ok()).expect("payload index")
}

/// Writes `from..to` of each aggregate, one round per index, each round through the next writer.
async fn write_rounds(w: &impl Writers, aggregates: &[String], from: usize, to: usize) -> HashSet<EntryId> {
    let mut ids = HashSet::new();
    for n in from..to {
        let batch: Vec<NewEntry> = aggregates.iter().map(|a| entry(a, n)).collect();
        ids.extend(batch.iter().map(NewEntry::id));
        w.write(n % 3, batch).await.expect("write");
    }
    ids
}

fn check(published: &[Entry], expected: &HashSet<EntryId>, who: &str) {
    let mut seen = HashSet::new();
    let mut last: HashMap<&str, (usize, i64)> = HashMap::new();
    for e in published {
        assert!(seen.insert(e.id), "{who}: entry {} published twice", e.id);
        assert!(expected.contains(&e.id), "{who}: entry {} was not expected in this phase", e.id);
        if let Some((n, seq)) = last.insert(&e.aggregate_id, (index(e), e.sequence)) {
            assert!(n < index(e) && seq < e.sequence, "{who}: {} out of order: {} after {n}", e.aggregate_id, index(e));
        }
    }
    assert_eq!(seen.len(), expected.len(), "{who}: published {} of {}", seen.len(), expected.len());
}

fn config() -> RelayConfig {
    RelayConfig { batch_size: 50, max_per_aggregate: 4, ..RelayConfig::default() }
}

async fn drain<S: Store>(store: S) -> Vec<Entry> {
    let publisher = CollectingPublisher::new();
    let relay = Relay::new(store, publisher.clone(), config()).expect("relay");
    for _ in 0..1000 {
        if relay.run_once().await.expect("batch").claimed == 0 {
            return publisher.published();
        }
    }
    panic!("the outbox did not drain");
}

/// Both stores' relays run at once until `total` entries are out.
async fn drain_both<A: Store + 'static, B: Store + 'static>(a: A, b: B, total: usize) -> Vec<Entry> {
    let publisher = CollectingPublisher::new();
    let mut tasks = Vec::new();
    fn spawn<S: Store + 'static>(store: S, p: CollectingPublisher, total: usize) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let relay = Relay::new(store, p.clone(), config()).expect("relay");
            let mut idle = 0;
            while p.len() < total && idle < 500 {
                if relay.run_once().await.expect("batch").claimed == 0 {
                    idle += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                } else {
                    idle = 0;
                    tokio::task::yield_now().await;
                }
            }
        })
    }
    tasks.push(spawn(a, publisher.clone(), total));
    tasks.push(spawn(b, publisher.clone(), total));
    for t in tasks {
        t.await.expect("relay task");
    }
    publisher.published()
}

async fn interop<D: Store + Clone + 'static, X: Store + Clone + 'static>(w: impl Writers, diesel: D, sqlx: X) {
    let aggregates: Vec<String> = (0..8).map(|a| format!("agg-{a}")).collect();
    // diesel and sqlx writers → the sqlx store.
    let first = write_rounds(&w, &aggregates, 0, 9).await;
    check(&drain(sqlx.clone()).await, &first, "sqlx store draining mixed writes");
    // More of the same aggregates → the diesel store (sequences continue across adapters).
    let second = write_rounds(&w, &aggregates, 9, 18).await;
    check(&drain(diesel.clone()).await, &second, "diesel store draining mixed writes");
    // A larger backlog drained by both stores at once.
    let many: Vec<String> = (0..40).map(|a| format!("many-{a}")).collect();
    let third = write_rounds(&w, &many, 0, 15).await;
    check(&drain_both(diesel.clone(), sqlx.clone(), third.len()).await, &third, "both stores at once");
    assert!(drain(diesel).await.is_empty() && drain(sqlx).await.is_empty(), "nothing left after all phases");
}

mod pg {
    use super::*;
    use diesel::PgConnection;
    use diesel_async::AsyncPgConnection;
    use outbox_diesel::postgres::PgOutbox;

    struct Pg {
        diesel: PgOutbox,
        sqlx: outbox_sqlx::PgOutbox,
        pool: sqlx::PgPool,
    }

    impl Writers for Pg {
        async fn write(&self, who: usize, entries: Vec<NewEntry>) -> Result<()> {
            match who {
                0 => {
                    let outbox = self.diesel.clone();
                    tokio::task::spawn_blocking(move || {
                        let mut conn = PgConnection::establish(&pg_url()).expect("connect");
                        conn.transaction(|conn| outbox.enqueue_batch(conn, &entries).map_err(Fail::Outbox))
                            .map_err(Fail::into_outbox)
                    })
                    .await
                    .expect("writer thread")
                }
                1 => {
                    let mut conn = AsyncPgConnection::establish(&pg_url()).await.expect("connect");
                    let outbox = &self.diesel;
                    conn.transaction(async |conn| {
                        outbox.enqueue_batch_async(conn, &entries).await.map_err(Fail::Outbox)
                    })
                    .await
                    .map_err(Fail::into_outbox)
                }
                _ => {
                    let mut tx = self.pool.begin().await.expect("begin");
                    self.sqlx.enqueue_batch(&mut tx, &entries).await?;
                    tx.commit().await.expect("commit");
                    Ok(())
                }
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_diesel_and_sqlx_share_one_outbox() {
        let url = pg_url();
        let name = unique("dint");
        let pool = sqlx::PgPool::connect(&url).await.unwrap_or_else(|e| unreachable("PostgreSQL", &url, e));
        let diesel = PgOutbox::new(outbox_diesel::Tables::new(name.clone()).unwrap());
        diesel.migrate(&mut PgConnection::establish(&url).unwrap()).unwrap();
        let sqlx_outbox = outbox_sqlx::PgOutbox::new(outbox_sqlx::Tables::new(name).unwrap());
        let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(url);
        let diesel_store = diesel.store(Pool::builder(manager).max_size(4).build().unwrap());
        let sqlx_store = sqlx_outbox.store(pool.clone());
        interop(Pg { diesel, sqlx: sqlx_outbox, pool }, diesel_store, sqlx_store).await;
    }
}

mod my {
    use super::*;
    use diesel::MysqlConnection;
    use diesel_async::AsyncMysqlConnection;
    use outbox_diesel::mysql::MysqlOutbox;

    struct My {
        diesel: MysqlOutbox,
        sqlx: outbox_sqlx::MySqlOutbox,
        pool: sqlx::MySqlPool,
    }

    impl Writers for My {
        async fn write(&self, who: usize, entries: Vec<NewEntry>) -> Result<()> {
            match who {
                0 => {
                    let outbox = self.diesel.clone();
                    tokio::task::spawn_blocking(move || {
                        let mut conn = MysqlConnection::establish(&mysql_url()).expect("connect");
                        conn.transaction(|conn| outbox.enqueue_batch(conn, &entries).map_err(Fail::Outbox))
                            .map_err(Fail::into_outbox)
                    })
                    .await
                    .expect("writer thread")
                }
                1 => {
                    let mut conn = AsyncMysqlConnection::establish(&mysql_url()).await.expect("connect");
                    let outbox = &self.diesel;
                    conn.transaction(async |conn| {
                        outbox.enqueue_batch_async(conn, &entries).await.map_err(Fail::Outbox)
                    })
                    .await
                    .map_err(Fail::into_outbox)
                }
                _ => {
                    let mut tx = self.pool.begin().await.expect("begin");
                    self.sqlx.enqueue_batch(&mut tx, &entries).await?;
                    tx.commit().await.expect("commit");
                    Ok(())
                }
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mysql_diesel_and_sqlx_share_one_outbox() {
        let url = mysql_url();
        let name = unique("dint");
        let pool = sqlx::MySqlPool::connect(&url).await.unwrap_or_else(|e| unreachable("MariaDB", &url, e));
        let diesel = MysqlOutbox::new(outbox_diesel::Tables::new(name.clone()).unwrap());
        diesel.migrate(&mut MysqlConnection::establish(&url).unwrap()).unwrap();
        let sqlx_outbox = outbox_sqlx::MySqlOutbox::new(outbox_sqlx::Tables::new(name).unwrap());
        let manager = AsyncDieselConnectionManager::<AsyncMysqlConnection>::new(url);
        let diesel_store = diesel.store(Pool::builder(manager).max_size(4).build().unwrap());
        let sqlx_store = sqlx_outbox.store(pool.clone());
        interop(My { diesel, sqlx: sqlx_outbox, pool }, diesel_store, sqlx_store).await;
    }
}

mod lite {
    use std::path::PathBuf;

    use super::*;
    use diesel::SqliteConnection;
    use diesel::connection::SimpleConnection;
    use outbox_diesel::sqlite::SqliteOutbox;
    use sqlx::Connection as _;

    struct Lite {
        path: PathBuf,
        diesel: SqliteOutbox,
        sqlx: outbox_sqlx::SqliteOutbox,
        pool: sqlx::SqlitePool,
    }

    impl Writers for Lite {
        async fn write(&self, who: usize, entries: Vec<NewEntry>) -> Result<()> {
            if who < 2 {
                let outbox = self.diesel.clone();
                let path = self.path.clone();
                return tokio::task::spawn_blocking(move || {
                    let mut conn = SqliteConnection::establish(&path.to_string_lossy()).expect("open");
                    conn.batch_execute("PRAGMA busy_timeout = 5000").expect("pragma");
                    conn.immediate_transaction(|conn| {
                        if who == 0 {
                            outbox.enqueue_batch(conn, &entries).map_err(Fail::Outbox)
                        } else {
                            entries.iter().try_for_each(|e| outbox.enqueue(conn, e)).map_err(Fail::Outbox)
                        }
                    })
                    .map_err(Fail::into_outbox)
                })
                .await
                .expect("writer thread");
            }
            let mut conn = self.pool.acquire().await.expect("acquire");
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.expect("begin");
            self.sqlx.enqueue_batch(&mut tx, &entries).await?;
            tx.commit().await.expect("commit");
            Ok(())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_diesel_and_sqlx_share_one_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("interop.db");
        let diesel = SqliteOutbox::default();
        let store = diesel.open_store(&path.to_string_lossy()).unwrap();
        diesel.migrate(&mut SqliteConnection::establish(&path.to_string_lossy()).unwrap()).unwrap();
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(5));
        let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(4).connect_with(options).await.unwrap();
        let sqlx_outbox = outbox_sqlx::SqliteOutbox::new(outbox_sqlx::Tables::default());
        let sqlx_store = sqlx_outbox.store(pool.clone());
        interop(Lite { path, diesel, sqlx: sqlx_outbox, pool }, store, sqlx_store).await;
    }
}
