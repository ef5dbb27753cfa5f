//! Writing inside SeaORM transactions: rollback, batches, concurrent writers, the migration.

use std::collections::HashMap;
use std::time::Duration;

use outbox_core::{ClaimRequest, DeadPolicy, ErrorKind, Maintenance, NewEntry, Store, Timestamp};
use outbox_seaorm::{Migration, SeaStore, Tables};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, Statement, TransactionTrait};
use sea_orm_migration::{MigrationTrait, MigratorTrait};

use crate::common::{Db, fresh};

fn entry(aggregate: &str, n: usize) -> NewEntry {
    NewEntry::builder("order", aggregate, "order.changed")
        .payload(format!("{aggregate}/{n}"), "text/plain")
        .build()
        .unwrap()
}

async fn aggregate_rows(f: &crate::common::Fresh) -> i64 {
    let backend = f.db.get_database_backend();
    let sql = f.tables.aggregates_name();
    let quoted = if backend == sea_orm::DbBackend::MySql { format!("`{sql}`") } else { format!("\"{sql}\"") };
    let row =
        f.db.query_one(Statement::from_string(backend, format!("SELECT COUNT(*) AS n FROM {quoted}")))
            .await
            .unwrap()
            .unwrap();
    row.try_get::<i64>("", "n").unwrap()
}

async fn rolled_back_transaction_leaves_nothing(db: Db) {
    let f = fresh(db, "sea_rollback").await;
    let tx = f.db.begin().await.unwrap();
    let entries: Vec<NewEntry> = (0..3).map(|n| entry("o-1", n)).collect();
    outbox_seaorm::Outbox::new(f.tables.clone()).enqueue(&tx, &entries[0]).await.unwrap();
    f.outbox().enqueue_all(&tx, &entries[1..]).await.unwrap();
    tx.rollback().await.unwrap();
    let store = f.store();
    for e in &entries {
        assert!(store.entry(e.id()).await.unwrap().is_none(), "rolled-back entry {} is in the outbox", e.id());
    }
    let stats = store.stats(Timestamp::now()).await.unwrap();
    assert_eq!(stats, outbox_core::Stats::default());
    assert_eq!(aggregate_rows(&f).await, 0, "the aggregate upsert must roll back too");
    let now = Timestamp::now();
    let claimed = store
        .claim(&ClaimRequest {
            holder: "h",
            now,
            lease_until: now.saturating_add(Duration::from_secs(30)),
            max_entries: 10,
            max_per_aggregate: 10,
            on_dead: DeadPolicy::Block,
        })
        .await
        .unwrap();
    assert!(claimed.is_empty());
}

#[tokio::test]
async fn postgres_rolled_back_transaction_leaves_nothing() {
    rolled_back_transaction_leaves_nothing(Db::Postgres).await;
}

#[tokio::test]
async fn mysql_rolled_back_transaction_leaves_nothing() {
    rolled_back_transaction_leaves_nothing(Db::MySql).await;
}

#[tokio::test]
async fn sqlite_rolled_back_transaction_leaves_nothing() {
    rolled_back_transaction_leaves_nothing(Db::Sqlite).await;
}

/// A batch over interleaved aggregates gets consecutive sequences per aggregate, in batch order,
/// continuing after earlier writes; more than one chunk of 500.
async fn batch_assigns_sequences_in_order(db: Db) {
    let f = fresh(db, "sea_batch").await;
    f.write(&[entry("a", 0)], true).await.unwrap();
    let batch: Vec<NewEntry> = (0..1200).map(|n| entry(["a", "b", "c"][n % 3], n)).collect();
    f.write(&batch, true).await.unwrap();
    let store = f.store();
    let mut last: HashMap<String, i64> = HashMap::from([("a".to_string(), 1)]);
    for e in &batch {
        let stored = store.entry(e.id()).await.unwrap().unwrap();
        let prev = last.entry(stored.aggregate_id.clone()).or_insert(0);
        assert_eq!(stored.sequence, *prev + 1, "entry {} of {}", stored.sequence, stored.aggregate_id);
        *prev = stored.sequence;
        assert_eq!(stored.payload.as_bytes(), e.payload().as_bytes());
    }
    assert_eq!(store.stats(Timestamp::now()).await.unwrap().pending, 1201);
}

#[tokio::test]
async fn postgres_batch_assigns_sequences_in_order() {
    batch_assigns_sequences_in_order(Db::Postgres).await;
}

#[tokio::test]
async fn mysql_batch_assigns_sequences_in_order() {
    batch_assigns_sequences_in_order(Db::MySql).await;
}

#[tokio::test]
async fn sqlite_batch_assigns_sequences_in_order() {
    batch_assigns_sequences_in_order(Db::Sqlite).await;
}

/// Two transactions writing one aggregate: the second waits for the first's row lock, so the
/// sequences follow commit order even though the second started its write before the first
/// committed.
async fn concurrent_writers_follow_commit_order(db: Db) {
    let f = fresh(db, "sea_commit_order").await;
    let first = entry("x", 1);
    let second = entry("x", 2);
    let tx1 = f.db.begin().await.unwrap();
    f.outbox().enqueue(&tx1, &first).await.unwrap();
    let (db2, outbox2, second2) = (f.db.clone(), f.outbox(), second.clone());
    let writer = tokio::spawn(async move {
        let tx2 = db2.begin().await.unwrap();
        outbox2.enqueue(&tx2, &second2).await.unwrap();
        tx2.commit().await.unwrap();
    });
    tokio::task::yield_now().await;
    tx1.commit().await.unwrap();
    writer.await.unwrap();
    let store = f.store();
    let s1 = store.entry(first.id()).await.unwrap().unwrap().sequence;
    let s2 = store.entry(second.id()).await.unwrap().unwrap().sequence;
    assert!(s1 < s2, "first committed got {s1}, second {s2}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_writers_follow_commit_order() {
    concurrent_writers_follow_commit_order(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_concurrent_writers_follow_commit_order() {
    concurrent_writers_follow_commit_order(Db::MySql).await;
}

/// Running the migration again changes nothing and keeps the entries.
#[tokio::test]
async fn postgres_migration_is_idempotent() {
    let f = fresh(Db::Postgres, "sea_idem").await;
    f.write(&[entry("a", 0)], true).await.unwrap();
    Migration::new(f.tables.clone()).apply(&f.db).await.unwrap();
    assert_eq!(f.store().stats(Timestamp::now()).await.unwrap().pending, 1);
}

#[tokio::test]
async fn mysql_migration_is_idempotent() {
    let f = fresh(Db::MySql, "sea_idem").await;
    f.write(&[entry("a", 0)], true).await.unwrap();
    Migration::new(f.tables.clone()).apply(&f.db).await.unwrap();
    assert_eq!(f.store().stats(Timestamp::now()).await.unwrap().pending, 1);
}

struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(Migration::default())]
    }
}

/// The migration runs through a sea-orm-migration `Migrator`, up and down.
#[tokio::test]
async fn sqlite_migrator_runs_the_migration_up_and_down() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("m.db").display());
    let db = crate::common::connect(&url).await;
    Migrator::up(&db, None).await.unwrap();
    let store = SeaStore::new(db.clone(), Tables::default());
    let tx = db.begin().await.unwrap();
    outbox_seaorm::enqueue(&tx, &entry("m", 0)).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(store.stats(Timestamp::now()).await.unwrap().pending, 1);
    Migrator::down(&db, None).await.unwrap();
    let err = store.stats(Timestamp::now()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SchemaMismatch, "{err}");
    assert!(err.to_string().contains("m20261122_000001_outbox"), "{err}");
}

/// A database that cannot be reached is a retryable `Unavailable` error, naming the database.
#[tokio::test]
async fn unreachable_database_is_unavailable_and_retryable() {
    let mut options = ConnectOptions::new("postgres://postgres:secret@127.0.0.1:1/test".to_string());
    options.connect_lazy(true).acquire_timeout(Duration::from_secs(2)).sqlx_logging(false);
    let db = Database::connect(options).await.unwrap();
    let store = SeaStore::new(db, Tables::default());
    let err = store.stats(Timestamp::now()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.is_retryable());
    assert!(!format!("{err:?} {store:?}").contains("secret"), "a password leaked: {err:?}");
}

/// A duplicate id is a Validation error and the transaction's other entries are not written.
#[tokio::test]
async fn postgres_duplicate_id_is_a_validation_error() {
    let f = fresh(Db::Postgres, "sea_dup").await;
    let e = entry("a", 0);
    f.write(std::slice::from_ref(&e), true).await.unwrap();
    let err = f.write(&[entry("b", 0), e], true).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation, "{err}");
    assert!(err.to_string().contains("duplicate entry id"), "{err}");
}
