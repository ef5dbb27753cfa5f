//! outbox-sqlx against a real MariaDB or MySQL (`OUTBOX_TEST_MYSQL_URL`, default
//! `mysql://root@127.0.0.1:3306/test`). Start it with `cargo xtask services up`.
#![cfg(feature = "mysql")]
// Test helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{drain_with_relays, entry, redact, unique_table, url};
use outbox_core::testkit::{Harness, store_suite};
use outbox_core::{ClaimRequest, Completion, DeadPolicy, ErrorKind, Maintenance, NewEntry, Result, Store, Timestamp};
use outbox_sqlx::{MySqlOutbox, MySqlStore, Tables};
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};

fn mysql_url() -> String {
    url("OUTBOX_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
}

async fn connect(max: u32) -> MySqlPool {
    let url = mysql_url();
    match MySqlPoolOptions::new().max_connections(max).acquire_timeout(Duration::from_secs(10)).connect(&url).await {
        Ok(pool) => pool,
        Err(e) => panic!(
            "cannot reach MySQL/MariaDB at {} ({e}); run `cargo xtask services up` (or set OUTBOX_TEST_MYSQL_URL)",
            redact(&url)
        ),
    }
}

/// Drops this crate's test tables left over by runs over an hour ago.
async fn drop_stale(pool: &MySqlPool) {
    let tables: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT CAST(table_name AS BINARY) FROM information_schema.tables \
         WHERE table_schema = DATABASE() AND table_name LIKE 'sx\\_%'",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for t in tables.iter().map(|t| String::from_utf8_lossy(t).into_owned()).filter(|t| common::is_stale(t)) {
        sqlx::query(&format!("DROP TABLE IF EXISTS `{t}`")).execute(pool).await.unwrap();
    }
}

async fn fresh_outbox(prefix: &str) -> (MySqlPool, MySqlOutbox) {
    let pool = connect(5).await;
    common::once_per_process(async || drop_stale(&pool).await).await;
    let outbox = MySqlOutbox::new(Tables::new(unique_table(prefix)).unwrap());
    outbox.migrate(&pool).await.unwrap();
    (pool, outbox)
}

struct MySqlHarness {
    pool: MySqlPool,
    store: MySqlStore,
}

impl Harness for MySqlHarness {
    type Store = MySqlStore;

    fn store(&self) -> MySqlStore {
        self.store.clone()
    }

    async fn open_store(&self) -> Result<MySqlStore> {
        Ok(self.store.outbox().store(connect(4).await))
    }

    async fn write(&self, entries: Vec<NewEntry>, commit: bool) -> Result<()> {
        let mut tx = self.pool.begin().await.unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_conformance_suite() {
    store_suite(|| async {
        let (pool, outbox) = fresh_outbox("suite").await;
        Ok(MySqlHarness { store: outbox.store(pool.clone()), pool })
    })
    .await;
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
    let (pool, outbox) = fresh_outbox("rollback").await;
    let orders = format!("{}_orders", outbox.tables().name());
    sqlx::query(&format!("CREATE TABLE `{orders}` (id VARCHAR(64) PRIMARY KEY) ENGINE=InnoDB"))
        .execute(&pool)
        .await
        .unwrap();
    let order = |id: &str| format!("INSERT INTO `{orders}` (id) VALUES ('{id}')");

    let mut tx = pool.begin().await.unwrap();
    sqlx::query(&order("o-1")).execute(&mut *tx).await.unwrap();
    let lost = entry("o-1", 0);
    outbox.enqueue(&mut tx, &lost).await.unwrap();
    tx.rollback().await.unwrap();

    let mut tx = pool.begin().await.unwrap();
    sqlx::query(&order("o-2")).execute(&mut *tx).await.unwrap();
    let kept = entry("o-2", 0);
    outbox.enqueue(&mut tx, &kept).await.unwrap();
    tx.commit().await.unwrap();

    let store = outbox.store(pool.clone());
    let claimed = store.claim(&claim_all("h")).await.unwrap();
    assert_eq!(claimed.iter().map(|e| e.id).collect::<Vec<_>>(), [kept.id()]);
    assert!(store.entry(lost.id()).await.unwrap().is_none(), "the rolled-back entry must not exist");
    store
        .complete(&Completion {
            holder: "h".into(),
            now: Timestamp::now(),
            published: vec![kept.id()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(store.claim(&claim_all("h2")).await.unwrap().is_empty());
}

#[tokio::test]
async fn batch_enqueue_gives_consecutive_sequences_in_slice_order() {
    let (pool, outbox) = fresh_outbox("batchseq").await;
    let first = [entry("a", 0), entry("b", 0), entry("a", 1)];
    let mut tx = pool.begin().await.unwrap();
    outbox.enqueue_batch(&mut tx, &first).await.unwrap();
    let second = [entry("a", 2), entry("b", 1)];
    outbox.enqueue_batch(&mut tx, &second).await.unwrap();
    let third = entry("A", 0); // binary collation: "A" is another aggregate than "a"
    outbox.enqueue(&mut tx, &third).await.unwrap();
    tx.commit().await.unwrap();
    let store = outbox.store(pool);
    let mut got = Vec::new();
    for e in first.iter().chain(&second).chain([&third]) {
        let stored = store.entry(e.id()).await.unwrap().unwrap();
        got.push((stored.aggregate_id, stored.sequence));
    }
    let expected: Vec<(String, i64)> =
        [("a", 1), ("b", 1), ("a", 2), ("a", 3), ("b", 2), ("A", 1)].iter().map(|(a, s)| (a.to_string(), *s)).collect();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn missing_table_is_a_schema_mismatch_naming_the_migration() {
    let pool = connect(2).await;
    let outbox = MySqlOutbox::new(Tables::new(unique_table("missing")).unwrap());
    let store = outbox.store(pool.clone());
    let err = store.claim(&claim_all("h")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SchemaMismatch, "{err}");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("0001_outbox") && err.to_string().contains("MySqlOutbox::migrate"), "{err}");
    let mut tx = pool.begin().await.unwrap();
    let err = outbox.enqueue(&mut tx, &entry("x", 0)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SchemaMismatch, "{err}");
}

#[tokio::test]
async fn duplicate_id_is_a_validation_error_and_migrate_is_idempotent() {
    let (pool, outbox) = fresh_outbox("dup").await;
    outbox.migrate(&pool).await.unwrap();
    let e = entry("d", 0);
    let mut tx = pool.begin().await.unwrap();
    outbox.enqueue(&mut tx, &e).await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    let err = outbox.enqueue(&mut tx, &e).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation, "{err}");
    assert!(err.to_string().contains("duplicate entry id"), "{err}");
}

#[tokio::test]
async fn unreachable_server_is_unavailable_and_retryable() {
    let pool = MySqlPoolOptions::new()
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy("mysql://root@127.0.0.1:1/test")
        .unwrap();
    let store = MySqlOutbox::new(Tables::default()).store(pool);
    let err = store.claim(&claim_all("h")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.is_retryable());
}

/// Four relays, each with its own pool, drain 5,000 entries over 200 aggregates with `run`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_relays_with_separate_pools_publish_each_entry_once_in_order() {
    let (pool, outbox) = fresh_outbox("conc").await;
    let mut expected = HashSet::new();
    let mut batch = Vec::new();
    for n in 0..25 {
        for a in 0..200 {
            let e = entry(&format!("agg-{a}"), n);
            expected.insert(e.id());
            batch.push(e);
        }
        let mut tx = pool.begin().await.unwrap();
        outbox.enqueue_batch(&mut tx, &batch).await.unwrap();
        tx.commit().await.unwrap();
        batch.clear();
    }
    let total = expected.len();
    let mut stores = Vec::new();
    for _ in 0..4 {
        stores.push(outbox.store(connect(3).await));
    }
    drain_with_relays(stores, &expected).await;
    let stats = outbox.store(pool).stats(Timestamp::now()).await.unwrap();
    assert_eq!((stats.published, stats.pending, stats.processing), (total as u64, 0, 0));
}

#[tokio::test]
async fn requeue_all_brings_back_every_dead_entry() {
    let (pool, outbox) = fresh_outbox("requeue").await;
    let h = MySqlHarness { store: outbox.store(pool.clone()), pool };
    common::requeue_all_brings_back_every_dead_entry(&h).await;
}
