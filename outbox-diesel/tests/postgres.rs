//! PostgreSQL: the store passes the conformance suite; rolled-back diesel transactions (sync and
//! async) leave nothing; batch writes keep order. Needs the server of `cargo xtask services up`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use diesel::{Connection, PgConnection};
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use outbox_core::testkit::{Harness, store_suite};
use outbox_core::{CollectingPublisher, ErrorKind, Maintenance, NewEntry, Relay, RelayConfig, Result, Timestamp};
use outbox_diesel::Tables;
use outbox_diesel::postgres::{PgOutbox, PgStore};

use common::{entries, pg_url, unique, unreachable};

fn connect() -> PgConnection {
    let url = pg_url();
    PgConnection::establish(&url).unwrap_or_else(|e| unreachable("PostgreSQL", &url, e))
}

fn pool() -> Pool<AsyncPgConnection> {
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(pg_url());
    Pool::builder(manager).max_size(4).build().expect("pool config")
}

/// A fresh outbox in tables of its own.
fn fresh(prefix: &str) -> PgOutbox {
    let outbox = PgOutbox::new(Tables::new(unique(prefix)).expect("valid name"));
    outbox.migrate(&mut connect()).expect("migrate");
    outbox
}

struct PgHarness {
    outbox: PgOutbox,
    store: PgStore,
}

impl Harness for PgHarness {
    type Store = PgStore;

    fn store(&self) -> PgStore {
        self.store.clone()
    }

    async fn open_store(&self) -> Result<PgStore> {
        Ok(self.outbox.store(pool()))
    }

    /// Writes through the synchronous `PgConnection` inside `conn.transaction`, off the runtime.
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

/// Writes through `AsyncPgConnection` inside `conn.transaction(async |conn| ...)`.
struct AsyncPgHarness(PgHarness);

impl Harness for AsyncPgHarness {
    type Store = PgStore;

    fn store(&self) -> PgStore {
        self.0.store()
    }

    async fn open_store(&self) -> Result<PgStore> {
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

async fn connect_async() -> AsyncPgConnection {
    let url = pg_url();
    AsyncPgConnection::establish(&url).await.unwrap_or_else(|e| unreachable("PostgreSQL", &url, e))
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

fn harness(prefix: &str) -> PgHarness {
    let outbox = fresh(prefix);
    let store = outbox.store(pool());
    PgHarness { outbox, store }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_passes_the_conformance_suite_with_sync_writes() {
    store_suite(|| async { Ok(harness("dpg_suite")) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_passes_the_conformance_suite_with_async_writes() {
    store_suite(|| async { Ok(AsyncPgHarness(harness("dpg_asuite"))) }).await;
}

#[tokio::test]
async fn rolled_back_transactions_sync_and_async_leave_nothing() {
    let h = harness("dpg_rollback");
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
    let h = harness("dpg_seq");
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
    let outbox = PgOutbox::new(Tables::new(unique("dpg_missing")).unwrap());
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
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new("postgres://postgres@127.0.0.1:1/test");
    let store = PgStore::new(Pool::builder(manager).max_size(1).build().unwrap());
    let err = store.stats(Timestamp::now()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn diesel_migrations_create_the_default_tables() {
    use diesel::connection::SimpleConnection;
    use diesel_migrations::MigrationHarness;
    let schema = unique("dpg_mig");
    let mut conn = connect();
    conn.batch_execute(&format!("CREATE SCHEMA \"{schema}\"; SET search_path TO \"{schema}\"")).unwrap();
    let applied = conn.run_pending_migrations(outbox_diesel::postgres::MIGRATIONS).unwrap();
    assert_eq!(applied.len(), 1);
    // Writing through the free function (default tables) works in that schema.
    let entry = entries("mig", 1).remove(0);
    conn.transaction(|conn| outbox_diesel::postgres::enqueue(conn, &entry).map_err(Abort::Outbox)).unwrap();
    // And the `table!` definitions match the table.
    use diesel::prelude::*;
    use outbox_diesel::postgres::schema::{outbox, outbox_aggregates};
    let (seq, status): (i64, String) =
        outbox::table.select((outbox::sequence, outbox::status)).first(&mut conn).unwrap();
    assert_eq!((seq, status.as_str()), (1, "pending"));
    let joined: Vec<(String, i64)> = outbox::table
        .inner_join(
            outbox_aggregates::table.on(outbox_aggregates::aggregate_type
                .eq(outbox::aggregate_type)
                .and(outbox_aggregates::aggregate_id.eq(outbox::aggregate_id))),
        )
        .select((outbox::aggregate_id, outbox_aggregates::unpublished))
        .load(&mut conn)
        .unwrap();
    assert_eq!(joined, [("mig".to_string(), 1)]);
    conn.batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE")).unwrap();
}
