//! outbox-sqlx against SQLite: a database file, and an in-memory database on a single shared
//! connection.
#![cfg(feature = "sqlite")]
// Test helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::str::FromStr;
use std::time::Duration;

use common::{entry, unique_table};
use outbox_core::testkit::{Harness, store_suite};
use outbox_core::{ClaimRequest, Completion, DeadPolicy, ErrorKind, Maintenance, NewEntry, Result, Store, Timestamp};
use outbox_sqlx::{SqliteOutbox, SqliteStore, Tables};
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

async fn file_pool(path: &std::path::Path) -> SqlitePool {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(30));
    SqlitePoolOptions::new().max_connections(4).connect_with(options).await.unwrap()
}

async fn memory_pool() -> SqlitePool {
    // One connection that never closes: an in-memory database lives as long as its connection.
    SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_with(SqliteConnectOptions::from_str("sqlite::memory:").unwrap())
        .await
        .unwrap()
}

struct SqliteHarness {
    pool: SqlitePool,
    store: SqliteStore,
    /// For a file database: its path, so `open_store` opens a pool of its own.
    path: Option<std::path::PathBuf>,
    _dir: Option<tempfile::TempDir>,
}

impl Harness for SqliteHarness {
    type Store = SqliteStore;

    fn store(&self) -> SqliteStore {
        self.store.clone()
    }

    async fn open_store(&self) -> Result<SqliteStore> {
        Ok(match &self.path {
            Some(path) => self.store.outbox().store(file_pool(path).await),
            None => self.store.clone(),
        })
    }

    async fn write(&self, entries: Vec<NewEntry>, commit: bool) -> Result<()> {
        let mut conn = self.pool.acquire().await.unwrap();
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.unwrap();
        let outbox = self.store.outbox();
        let written = if entries.len() == 1 {
            outbox.enqueue(&mut tx, &entries[0]).await
        } else {
            outbox.enqueue_batch(&mut tx, &entries).await
        };
        if written.is_err() || !commit {
            tx.rollback().await.unwrap();
            return written;
        }
        tx.commit().await.unwrap();
        Ok(())
    }
}

async fn file_harness() -> SqliteHarness {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    let pool = file_pool(&path).await;
    let outbox = SqliteOutbox::new(Tables::new(unique_table("suite")).unwrap());
    outbox.migrate(&pool).await.unwrap();
    SqliteHarness { store: outbox.store(pool.clone()), pool, path: Some(path), _dir: Some(dir) }
}

async fn memory_harness() -> SqliteHarness {
    let pool = memory_pool().await;
    let outbox = SqliteOutbox::new(Tables::new("outbox").unwrap());
    outbox.migrate(&pool).await.unwrap();
    SqliteHarness { store: outbox.store(pool.clone()), pool, path: None, _dir: None }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_conformance_suite_on_a_file() {
    store_suite(|| async { Ok(file_harness().await) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_conformance_suite_in_memory() {
    store_suite(|| async { Ok(memory_harness().await) }).await;
}

fn claim_all(holder: &str) -> ClaimRequest<'_> {
    let now = Timestamp::now();
    ClaimRequest {
        holder,
        now,
        lease_until: now.saturating_add(Duration::from_secs(30)),
        max_entries: 100,
        max_per_aggregate: 100,
        on_dead: DeadPolicy::Block,
    }
}

#[tokio::test]
async fn rolled_back_enqueue_is_never_claimed_and_committed_one_is() {
    let h = file_harness().await;
    let outbox = h.store.outbox();
    sqlx::query("CREATE TABLE orders (id TEXT PRIMARY KEY)").execute(&h.pool).await.unwrap();

    let mut conn = h.pool.acquire().await.unwrap();
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.unwrap();
    sqlx::query("INSERT INTO orders (id) VALUES ('o-1')").execute(&mut *tx).await.unwrap();
    let lost = entry("o-1", 0);
    outbox.enqueue(&mut tx, &lost).await.unwrap();
    tx.rollback().await.unwrap();

    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.unwrap();
    sqlx::query("INSERT INTO orders (id) VALUES ('o-2')").execute(&mut *tx).await.unwrap();
    let kept = entry("o-2", 0);
    outbox.enqueue(&mut tx, &kept).await.unwrap();
    tx.commit().await.unwrap();
    drop(conn);

    let claimed = h.store.claim(&claim_all("h")).await.unwrap();
    assert_eq!(claimed.iter().map(|e| e.id).collect::<Vec<_>>(), [kept.id()]);
    assert!(h.store.entry(lost.id()).await.unwrap().is_none());
    h.store
        .complete(&Completion {
            holder: "h".into(),
            now: Timestamp::now(),
            published: vec![kept.id()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(h.store.claim(&claim_all("h2")).await.unwrap().is_empty());
}

#[tokio::test]
async fn missing_table_is_a_schema_mismatch_naming_the_migration() {
    let pool = memory_pool().await;
    let outbox = SqliteOutbox::new(Tables::new("never_migrated").unwrap());
    let store = outbox.store(pool.clone());
    let err = store.claim(&claim_all("h")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SchemaMismatch, "{err}");
    assert!(err.to_string().contains("0001_outbox") && err.to_string().contains("SqliteOutbox::migrate"), "{err}");
    let mut conn = pool.acquire().await.unwrap();
    let err = outbox.enqueue(&mut conn, &entry("x", 0)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SchemaMismatch, "{err}");
}

#[tokio::test]
async fn duplicate_id_is_a_validation_error_and_migrate_is_idempotent() {
    let h = memory_harness().await;
    h.store.outbox().migrate(&h.pool).await.unwrap();
    let e = entry("d", 0);
    h.write(vec![e.clone()], true).await.unwrap();
    let err = h.write(vec![e], true).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation, "{err}");
    assert!(err.to_string().contains("duplicate entry id"), "{err}");
    assert_eq!(h.store.stats(Timestamp::now()).await.unwrap().pending, 1);
}

#[tokio::test]
async fn requeue_all_brings_back_every_dead_entry() {
    let h = file_harness().await;
    common::requeue_all_brings_back_every_dead_entry(&h).await;
}
