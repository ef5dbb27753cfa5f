//! MySQL/MariaDB: the store passes the conformance suite; rolled-back diesel transactions (sync and
//! async) leave nothing; batch writes keep order. Needs the server of `cargo xtask services up`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use diesel::{Connection, MysqlConnection};
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::{AsyncConnection, AsyncMysqlConnection};
use outbox_core::testkit::{Harness, store_suite};
use outbox_core::{CollectingPublisher, ErrorKind, Maintenance, NewEntry, Relay, RelayConfig, Result, Timestamp};
use outbox_diesel::Tables;
use outbox_diesel::mysql::{MysqlOutbox, MysqlStore};

use common::{entries, mysql_url, unique, unreachable};

fn connect() -> MysqlConnection {
    let url = mysql_url();
    MysqlConnection::establish(&url).unwrap_or_else(|e| unreachable("MariaDB", &url, e))
}

fn pool() -> Pool<AsyncMysqlConnection> {
    let manager = AsyncDieselConnectionManager::<AsyncMysqlConnection>::new(mysql_url());
    Pool::builder(manager).max_size(4).build().expect("pool config")
}

/// A fresh outbox in tables of its own.
fn fresh(prefix: &str) -> MysqlOutbox {
    let outbox = MysqlOutbox::new(Tables::new(unique(prefix)).expect("valid name"));
    outbox.migrate(&mut connect()).expect("migrate");
    outbox
}

struct MysqlHarness {
    outbox: MysqlOutbox,
    store: MysqlStore,
}

impl Harness for MysqlHarness {
    type Store = MysqlStore;

    fn store(&self) -> MysqlStore {
        self.store.clone()
    }

    async fn open_store(&self) -> Result<MysqlStore> {
        Ok(self.outbox.store(pool()))
    }

    /// Writes through the synchronous `MysqlConnection` inside `conn.transaction`, off the runtime.
    async fn write(&self, entries: Vec<NewEntry>, commit: bool) -> Result<()> {
        let outbox = self.outbox.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = connect();
            let result = conn.transaction(|conn| {
                outbox.enqueue_batch(conn, &entries).map_err(Abort::Outbox)?;
                if commit { Ok(()) } else { Err(Abort::Rollback) }
            });
            match result {
                Ok(()) | Err(Abort::Rollback) => Ok(()),
                Err(Abort::Outbox(e)) => Err(e),
                Err(Abort::Diesel(e)) => panic!("diesel failed around the write: {e}"),
            }
        })
        .await
        .expect("writer thread")
    }
}

/// Writes through `AsyncMysqlConnection` inside `conn.transaction(async |conn| ...)`.
struct AsyncMysqlHarness(MysqlHarness);

impl Harness for AsyncMysqlHarness {
    type Store = MysqlStore;

    fn store(&self) -> MysqlStore {
        self.0.store()
    }

    async fn open_store(&self) -> Result<MysqlStore> {
        self.0.open_store().await
    }

    async fn write(&self, entries: Vec<NewEntry>, commit: bool) -> Result<()> {
        let mut conn = connect_async().await;
        let outbox = &self.0.outbox;
        let result = conn
            .transaction(async |conn| {
                outbox.enqueue_batch_async(conn, &entries).await.map_err(Abort::Outbox)?;
                if commit { Ok(()) } else { Err(Abort::Rollback) }
            })
            .await;
        match result {
            Ok(()) | Err(Abort::Rollback) => Ok(()),
            Err(Abort::Outbox(e)) => Err(e),
            Err(Abort::Diesel(e)) => panic!("diesel failed around the write: {e}"),
        }
    }
}

async fn connect_async() -> AsyncMysqlConnection {
    let url = mysql_url();
    AsyncMysqlConnection::establish(&url).await.unwrap_or_else(|e| unreachable("MariaDB", &url, e))
}

/// Why a test's transaction ended without commit.
#[derive(Debug)]
enum Abort {
    Rollback,
    Outbox(outbox_core::Error),
    Diesel(diesel::result::Error),
}

impl From<diesel::result::Error> for Abort {
    fn from(e: diesel::result::Error) -> Self {
        Abort::Diesel(e)
    }
}

fn harness(prefix: &str) -> MysqlHarness {
    let outbox = fresh(prefix);
    let store = outbox.store(pool());
    MysqlHarness { outbox, store }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_passes_the_conformance_suite_with_sync_writes() {
    store_suite(|| async { Ok(harness("dmy_suite")) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_passes_the_conformance_suite_with_async_writes() {
    store_suite(|| async { Ok(AsyncMysqlHarness(harness("dmy_asuite"))) }).await;
}

#[tokio::test]
async fn rolled_back_transactions_sync_and_async_leave_nothing() {
    let h = harness("dmy_rollback");
    let sync_entries = entries("sync", 3);
    let outbox = h.outbox.clone();
    let written = sync_entries.clone();
    let result: std::result::Result<(), Abort> = tokio::task::spawn_blocking(move || {
        connect().transaction(|conn| {
            outbox.enqueue(conn, &written[0]).map_err(Abort::Outbox)?;
            outbox.enqueue_batch(conn, &written[1..]).map_err(Abort::Outbox)?;
            Err(Abort::Rollback)
        })
    })
    .await
    .unwrap();
    assert!(matches!(result, Err(Abort::Rollback)));

    let async_entries = entries("async", 3);
    let mut conn = connect_async().await;
    let result: std::result::Result<(), Abort> = conn
        .transaction(async |conn| {
            h.outbox.enqueue_async(conn, &async_entries[0]).await.map_err(Abort::Outbox)?;
            h.outbox.enqueue_batch_async(conn, &async_entries[1..]).await.map_err(Abort::Outbox)?;
            Err(Abort::Rollback)
        })
        .await;
    assert!(matches!(result, Err(Abort::Rollback)));

    for e in sync_entries.iter().chain(&async_entries) {
        assert!(h.store.entry(e.id()).await.unwrap().is_none(), "rolled-back entry {} is in the store", e.id());
    }
    let stats = h.store.stats(Timestamp::now()).await.unwrap();
    assert_eq!((stats.pending, stats.published), (0, 0), "{stats:?}");
    let publisher = CollectingPublisher::new();
    let relay = Relay::new(h.store.clone(), publisher.clone(), RelayConfig::default()).unwrap();
    assert_eq!(relay.run_once().await.unwrap().claimed, 0, "nothing rolled back is claimable");
}

#[tokio::test]
async fn single_and_batch_writes_interleave_in_sequence_order() {
    let h = harness("dmy_seq");
    let all = entries("mixed", 7);
    let outbox = h.outbox.clone();
    let written = all.clone();
    tokio::task::spawn_blocking(move || {
        let mut conn = connect();
        outbox.enqueue(&mut conn, &written[0]).unwrap();
        outbox.enqueue_batch(&mut conn, &written[1..4]).unwrap();
    })
    .await
    .unwrap();
    let mut conn = connect_async().await;
    h.outbox.enqueue_async(&mut conn, &all[4]).await.unwrap();
    h.outbox.enqueue_batch_async(&mut conn, &all[5..]).await.unwrap();
    let mut sequences = Vec::new();
    for e in &all {
        sequences.push(h.store.entry(e.id()).await.unwrap().expect("written").sequence);
    }
    assert_eq!(sequences, (1..=7).collect::<Vec<i64>>());
}

#[tokio::test]
async fn missing_tables_fail_with_schema_mismatch_naming_the_migration() {
    let outbox = MysqlOutbox::new(Tables::new(unique("dmy_missing")).unwrap());
    let store = outbox.store(pool());
    let err = store.stats(Timestamp::now()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SchemaMismatch, "{err}");
    assert!(err.to_string().contains("0001_outbox"), "{err}");
    let entry = entries("x", 1).remove(0);
    let err = tokio::task::spawn_blocking(move || outbox.enqueue(&mut connect(), &entry)).await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SchemaMismatch, "{err}");
}

#[tokio::test]
async fn unreachable_server_is_a_retryable_unavailable_error() {
    let manager = AsyncDieselConnectionManager::<AsyncMysqlConnection>::new("mysql://root@127.0.0.1:1/test");
    let store = MysqlStore::new(Pool::builder(manager).max_size(1).build().unwrap());
    let err = store.stats(Timestamp::now()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn diesel_migrations_create_the_default_tables() {
    use diesel::connection::SimpleConnection;
    use diesel::prelude::*;
    use diesel_migrations::MigrationHarness;
    use outbox_diesel::mysql::schema::{outbox, outbox_aggregates};
    let database = unique("dmy_mig");
    connect().batch_execute(&format!("CREATE DATABASE `{database}`")).unwrap();
    let url = format!("{}/{database}", mysql_url().rsplit_once('/').unwrap().0);
    let mut conn = MysqlConnection::establish(&url).unwrap();
    assert_eq!(conn.run_pending_migrations(outbox_diesel::mysql::MIGRATIONS).unwrap().len(), 1);
    let entry = entries("mig", 1).remove(0);
    conn.transaction(|conn| outbox_diesel::mysql::enqueue(conn, &entry).map_err(Abort::Outbox)).unwrap();
    let joined: Vec<(Vec<u8>, i64, String, i64)> = outbox::table
        .inner_join(
            outbox_aggregates::table.on(outbox_aggregates::aggregate_type
                .eq(outbox::aggregate_type)
                .and(outbox_aggregates::aggregate_id.eq(outbox::aggregate_id))),
        )
        .select((outbox::id, outbox::sequence, outbox::status, outbox_aggregates::unpublished))
        .load(&mut conn)
        .unwrap();
    assert_eq!(joined, [(entry.id().to_bytes().to_vec(), 1, "pending".to_string(), 1)]);
    conn.batch_execute(&format!("DROP DATABASE `{database}`")).unwrap();
}
