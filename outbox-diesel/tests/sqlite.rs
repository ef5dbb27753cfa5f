//! SQLite (a file): the store passes the conformance suite; rolled-back diesel transactions
//! leave nothing; the diesel migrations and `table!` definitions match.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;

use diesel::connection::SimpleConnection;
use diesel::{Connection, SqliteConnection};
use outbox_core::testkit::{Harness, store_suite};
use outbox_core::{ErrorKind, Maintenance, NewEntry, Result, Timestamp};
use outbox_diesel::Tables;
use outbox_diesel::sqlite::{SqliteOutbox, SqliteStore};

use common::{entries, unique};

struct SqliteHarness {
    _dir: tempfile::TempDir,
    path: PathBuf,
    outbox: SqliteOutbox,
    store: SqliteStore,
}

fn connect(path: &std::path::Path) -> SqliteConnection {
    let mut conn = SqliteConnection::establish(&path.to_string_lossy()).expect("open the SQLite file");
    conn.batch_execute("PRAGMA busy_timeout = 5000").expect("busy timeout");
    conn
}

fn harness() -> SqliteHarness {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("outbox.db");
    let outbox = SqliteOutbox::new(Tables::new(unique("dsq")).expect("valid name"));
    outbox.migrate(&mut connect(&path)).expect("migrate");
    let store = outbox.open_store(&path.to_string_lossy()).expect("store");
    SqliteHarness { _dir: dir, path, outbox, store }
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

impl Harness for SqliteHarness {
    type Store = SqliteStore;

    fn store(&self) -> SqliteStore {
        self.store.clone()
    }

    async fn open_store(&self) -> Result<SqliteStore> {
        self.outbox.open_store(&self.path.to_string_lossy())
    }

    /// Writes through `SqliteConnection::immediate_transaction`, off the runtime.
    async fn write(&self, entries: Vec<NewEntry>, commit: bool) -> Result<()> {
        let outbox = self.outbox.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let result = connect(&path).immediate_transaction(|conn| {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_passes_the_conformance_suite_on_a_file() {
    store_suite(|| async { Ok(harness()) }).await;
}

#[tokio::test]
async fn rolled_back_transaction_leaves_nothing() {
    let h = harness();
    let written = entries("rb", 3);
    let (outbox, path, copy) = (h.outbox.clone(), h.path.clone(), written.clone());
    let result: std::result::Result<(), Abort> = tokio::task::spawn_blocking(move || {
        connect(&path).transaction(|conn| {
            outbox.enqueue(conn, &copy[0]).map_err(Abort::Outbox)?;
            outbox.enqueue_batch(conn, &copy[1..]).map_err(Abort::Outbox)?;
            Err(Abort::Rollback)
        })
    })
    .await
    .unwrap();
    assert!(matches!(result, Err(Abort::Rollback)));
    for e in &written {
        assert!(h.store.entry(e.id()).await.unwrap().is_none());
    }
    assert_eq!(h.store.stats(Timestamp::now()).await.unwrap().pending, 0);
}

#[tokio::test]
async fn missing_tables_fail_with_schema_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("empty.db").to_string_lossy()).unwrap();
    let err = store.stats(Timestamp::now()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SchemaMismatch, "{err}");
    assert!(err.to_string().contains("0001_outbox"), "{err}");
}

#[tokio::test]
async fn diesel_migrations_and_table_definitions_match() {
    use diesel::prelude::*;
    use diesel_migrations::MigrationHarness;
    use outbox_diesel::sqlite::schema::{outbox, outbox_aggregates};
    let dir = tempfile::tempdir().unwrap();
    let mut conn = connect(&dir.path().join("mig.db"));
    assert_eq!(conn.run_pending_migrations(outbox_diesel::sqlite::MIGRATIONS).unwrap().len(), 1);
    let entry = entries("mig", 1).remove(0);
    conn.immediate_transaction(|conn| outbox_diesel::sqlite::enqueue(conn, &entry).map_err(Abort::Outbox)).unwrap();
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
}
