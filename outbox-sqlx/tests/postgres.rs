//! outbox-sqlx against a real PostgreSQL (`OUTBOX_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`). Start it with `cargo xtask services up`.
#![cfg(feature = "postgres")]
// Test helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Shared, drain_with_relays, entry, redact, spawn_relays, unique_table, url};
use outbox_core::testkit::{Harness, store_suite};
use outbox_core::{
    ClaimRequest, CollectingPublisher, Completion, DeadPolicy, Entry, ErrorKind, Maintenance, NewEntry, Relay,
    RelayConfig, Result, Store, Timestamp,
};
use outbox_sqlx::{PgOutbox, PgStore, Tables};
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};

fn pg_url() -> String {
    url("OUTBOX_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
}

async fn connect(max: u32) -> PgPool {
    let url = pg_url();
    match PgPoolOptions::new().max_connections(max).acquire_timeout(Duration::from_secs(10)).connect(&url).await {
        Ok(pool) => pool,
        Err(e) => panic!(
            "cannot reach PostgreSQL at {} ({e}); run `cargo xtask services up` (or set OUTBOX_TEST_POSTGRES_URL)",
            redact(&url)
        ),
    }
}

/// Drops this crate's test tables, functions and schemas left over by runs over an hour ago.
async fn drop_stale(pool: &PgPool) {
    let like = r"sx\_%";
    let tables: Vec<String> = sqlx::query_scalar("SELECT tablename FROM pg_tables WHERE tablename LIKE $1")
        .bind(like)
        .fetch_all(pool)
        .await
        .unwrap();
    for t in tables.iter().filter(|t| common::is_stale(t)) {
        sqlx::query(&format!("DROP TABLE IF EXISTS \"{t}\" CASCADE")).execute(pool).await.unwrap();
    }
    let functions: Vec<String> = sqlx::query_scalar("SELECT proname FROM pg_proc WHERE proname LIKE $1")
        .bind(like)
        .fetch_all(pool)
        .await
        .unwrap();
    for f in functions.iter().filter(|f| common::is_stale(f)) {
        sqlx::query(&format!("DROP FUNCTION IF EXISTS \"{f}\"()")).execute(pool).await.unwrap();
    }
    let schemas: Vec<String> = sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE nspname LIKE $1")
        .bind(like)
        .fetch_all(pool)
        .await
        .unwrap();
    for s in schemas.iter().filter(|s| common::is_stale(s)) {
        sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{s}\" CASCADE")).execute(pool).await.unwrap();
    }
}

async fn fresh_outbox(prefix: &str) -> (PgPool, PgOutbox) {
    let pool = connect(5).await;
    common::once_per_process(async || drop_stale(&pool).await).await;
    let outbox = PgOutbox::new(Tables::new(unique_table(prefix)).unwrap());
    outbox.migrate(&pool).await.unwrap();
    (pool, outbox)
}

struct PgHarness {
    pool: PgPool,
    store: PgStore,
}

impl Harness for PgHarness {
    type Store = PgStore;

    fn store(&self) -> PgStore {
        self.store.clone()
    }

    async fn open_store(&self) -> Result<PgStore> {
        Ok(self.store.outbox().store(connect(4).await))
    }

    async fn write(&self, entries: Vec<NewEntry>, commit: bool) -> Result<()> {
        let mut tx = self.pool.begin().await.unwrap();
        let outbox = self.store.outbox();
        // One entry through `enqueue`, several through `enqueue_batch`: both paths get checked.
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
        Ok(PgHarness { store: outbox.store(pool.clone()), pool })
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
    sqlx::query(&format!("CREATE TABLE \"{}_orders\" (id text PRIMARY KEY)", outbox.tables().name()))
        .execute(&pool)
        .await
        .unwrap();
    let order = |id: &str| format!("INSERT INTO \"{}_orders\" (id) VALUES ('{id}')", outbox.tables().name());

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
    tx.commit().await.unwrap();
    let store = outbox.store(pool);
    let mut got = Vec::new();
    for e in first.iter().chain(&second) {
        let stored = store.entry(e.id()).await.unwrap().unwrap();
        got.push((stored.aggregate_id, stored.sequence));
    }
    let expected: Vec<(String, i64)> =
        [("a", 1), ("b", 1), ("a", 2), ("a", 3), ("b", 2)].iter().map(|(a, s)| (a.to_string(), *s)).collect();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn missing_table_is_a_schema_mismatch_naming_the_migration() {
    let pool = connect(2).await;
    let outbox = PgOutbox::new(Tables::new(unique_table("missing")).unwrap());
    let store = outbox.store(pool.clone());
    let err = store.claim(&claim_all("h")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SchemaMismatch, "{err}");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("0001_outbox") && err.to_string().contains("PgOutbox::migrate"), "{err}");
    let mut tx = pool.begin().await.unwrap();
    let err = outbox.enqueue(&mut tx, &entry("x", 0)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SchemaMismatch, "{err}");
    let err = store.stats(Timestamp::now()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SchemaMismatch, "{err}");
}

#[tokio::test]
async fn migrations_are_rendered_idempotent_and_in_a_schema() {
    let pool = connect(2).await;
    let schema = unique_table("schema");
    sqlx::query(&format!("CREATE SCHEMA \"{schema}\"")).execute(&pool).await.unwrap();
    let outbox = PgOutbox::new(Tables::new("outbox").unwrap().with_schema(&schema).unwrap());
    let migrations = outbox.migrations();
    assert_eq!(migrations.len(), 1);
    assert_eq!(migrations[0].file_name(), "0001_outbox.sql");
    assert!(!migrations[0].sql.contains("{entries}") && !migrations[0].sql.contains("{name}"));
    outbox.migrate(&pool).await.unwrap();
    outbox.migrate(&pool).await.unwrap(); // again: nothing changes, nothing fails
    let mut tx = pool.begin().await.unwrap();
    outbox.enqueue(&mut tx, &entry("s", 0)).await.unwrap();
    tx.commit().await.unwrap();
    let n: i64 =
        sqlx::query_scalar(&format!("SELECT count(*) FROM \"{schema}\".outbox")).fetch_one(&pool).await.unwrap();
    assert_eq!(n, 1);
    let err = pool.acquire().await.map(|_| ()).and(Ok::<_, sqlx::Error>(()));
    assert!(err.is_ok());
}

/// Tables made by the earlier shape of the migration (an all-rows unique (aggregate, sequence)
/// constraint, no `leased_through`) are brought up to date by running it again, and then work.
#[tokio::test]
async fn migrating_again_upgrades_tables_of_the_earlier_shape() {
    let (pool, outbox) = fresh_outbox("upgrade").await;
    let (name, aggs) = (outbox.tables().name().to_string(), outbox.tables().aggregates_name());
    sqlx::raw_sql(&format!(
        r#"ALTER TABLE "{aggs}" DROP COLUMN leased_through;
           ALTER TABLE "{name}" ADD CONSTRAINT "{name}_aggregate_sequence" UNIQUE (aggregate_type, aggregate_id, sequence);"#
    ))
    .execute(&pool)
    .await
    .unwrap();
    outbox.migrate(&pool).await.unwrap();
    let constraints: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_constraint WHERE conname = $1")
        .bind(format!("{name}_aggregate_sequence"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(constraints, 0, "the all-rows unique constraint is dropped");
    let columns: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.columns WHERE table_name = $1 AND column_name = 'leased_through'",
    )
    .bind(&aggs)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(columns, 1, "leased_through is added");
    let h = PgHarness { store: outbox.store(pool.clone()), pool };
    let mut tx = h.pool.begin().await.unwrap();
    outbox.enqueue(&mut tx, &entry("u", 0)).await.unwrap();
    tx.commit().await.unwrap();
    let request = claim_all("upgraded");
    assert_eq!(h.store.claim(&request).await.unwrap().len(), 1, "claims work on the upgraded tables");
}

#[tokio::test]
async fn duplicate_id_is_a_validation_error() {
    let (pool, outbox) = fresh_outbox("dup").await;
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
    // Nothing listens on port 1.
    let pool = PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy("postgres://postgres@127.0.0.1:1/test")
        .unwrap();
    let store = PgOutbox::new(Tables::default()).store(pool);
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

/// Batch writers and relays on the same few aggregates at once. Writers lock aggregate rows in
/// key order; claims and completions must too, or a completion holding one aggregate and waiting
/// for another would deadlock with a writer doing the reverse, and PostgreSQL could abort the
/// writer's business transaction. Every write must commit, every entry go out once, and each
/// aggregate's entries in sequence order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_writers_and_relays_on_the_same_aggregates_never_deadlock() {
    let (pool, outbox) = fresh_outbox("nodeadlock").await;
    let keys: Vec<String> = (0..6).map(|k| format!("hot-{k}")).collect();
    writers_and_relays_never_deadlock(&pool, &outbox, &keys, || connect(4)).await;
}

/// The same in a database whose default collation is not bytewise (ICU `en-US`, as most
/// production databases have one like it), with aggregate ids that sort differently there:
/// writers lock aggregates in byte order, so relays must too. Fails when the relays' lock order
/// follows the database's collation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_order_is_bytewise_whatever_the_database_collation() {
    let admin = connect(1).await;
    let db = "outbox_test_icu";
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(db)
        .fetch_one(&admin)
        .await
        .unwrap();
    if !exists {
        let created =
            sqlx::query(&format!("CREATE DATABASE {db} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"))
                .execute(&admin)
                .await;
        // Another test process may have created it meanwhile (42P04 duplicate_database).
        if let Err(e) = created
            && e.as_database_error().and_then(|d| d.code()).as_deref() != Some("42P04")
        {
            panic!("cannot create the ICU test database {db} (PostgreSQL 15+ built with ICU): {e}");
        }
    }
    let options = pg_url().parse::<sqlx::postgres::PgConnectOptions>().unwrap().database(db);
    let icu = move |max: u32| PgPoolOptions::new().max_connections(max).connect_lazy_with(options.clone());
    let pool = icu(5);
    let en_us: bool =
        sqlx::query_scalar("SELECT 'hot-a' < 'HOT-b' AND 'HOT-b' < 'hot-c'").fetch_one(&pool).await.unwrap();
    assert!(en_us, "the test database {db} must sort text as ICU en-US does (case last), not bytewise");
    drop_stale(&pool).await;
    let outbox = PgOutbox::new(Tables::new(unique_table("icuorder")).unwrap());
    outbox.migrate(&pool).await.unwrap();
    // Byte order: "HOT-b" < "HOT-d" < "Hot-f" < "hot-a" < "hot-c" < "hot-e"; en-US order is
    // a, b, c, d, e, f.
    let keys: Vec<String> = ["hot-a", "HOT-b", "hot-c", "HOT-d", "hot-e", "Hot-f"].map(String::from).to_vec();
    writers_and_relays_never_deadlock(&pool, &outbox, &keys, || async { icu(4) }).await;
}

/// Four writers enqueue batches over `keys` (four of them per batch, in a varying order) and
/// hold the locks a moment, while two relays (two batches in flight each) drain: every business
/// transaction must commit, every entry be published once and in order.
async fn writers_and_relays_never_deadlock<F: Future<Output = PgPool>>(
    pool: &PgPool,
    outbox: &PgOutbox,
    keys: &[String],
    connect: impl Fn() -> F,
) {
    const WRITERS: usize = 4;
    const BATCHES: usize = 50;
    let total = WRITERS * BATCHES * 4;
    let publisher = Shared::default();
    let writers_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stores = vec![outbox.store(connect().await), outbox.store(connect().await)];
    let config = |i: usize| RelayConfig {
        relay_id: format!("relay-{i}"),
        batch_size: 20,
        max_per_aggregate: 3,
        max_in_flight: 2,
        poll_interval: Duration::from_millis(2),
        max_poll_interval: Duration::from_millis(10),
        ..RelayConfig::default()
    };
    let (done, published) = (writers_done.clone(), publisher.inner.clone());
    let relays =
        spawn_relays(stores, &publisher, config, move || done.load(Ordering::SeqCst) && published.len() >= total);
    let writers_pool = connect().await;
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (pool, outbox, keys) = (writers_pool.clone(), outbox.clone(), keys.to_vec());
        writers.push(tokio::spawn(async move {
            for b in 0..BATCHES {
                // Four of the six aggregates, in an order that varies; enqueue_batch sorts them.
                let batch: Vec<NewEntry> = (0..4).map(|k| entry(&keys[(w + b * 5 + k * 7) % keys.len()], b)).collect();
                let mut tx = pool.begin().await.map_err(|e| format!("writer {w} batch {b}: begin: {e}"))?;
                outbox.enqueue_batch(&mut tx, &batch).await.map_err(|e| format!("writer {w} batch {b}: {e}"))?;
                // Hold the aggregates' locks a moment, while relays complete batches of them.
                tokio::time::sleep(Duration::from_millis(1)).await;
                tx.commit().await.map_err(|e| format!("writer {w} batch {b}: commit: {e}"))?;
            }
            Ok::<_, String>(())
        }));
    }
    for w in writers {
        w.await.unwrap().unwrap_or_else(|e| panic!("a business transaction failed: {e}"));
    }
    writers_done.store(true, Ordering::SeqCst);
    relays.join().await;
    let published = publisher.inner.published();
    let mut seen = HashSet::new();
    let mut last: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    for e in &published {
        assert!(seen.insert(e.id), "entry {} was published twice", e.id);
        if let Some(prev) = last.insert(e.aggregate_id.clone(), e.sequence) {
            assert!(prev < e.sequence, "aggregate {} out of order: {} after {prev}", e.aggregate_id, e.sequence);
        }
    }
    assert_eq!(seen.len(), total, "every committed entry is published once");
    let stats = outbox.store(pool.clone()).stats(Timestamp::now()).await.unwrap();
    assert_eq!((stats.published, stats.pending, stats.processing), (total as u64, 0, 0), "{stats:?}");
}

/// Counts claims, to know the relay has gone idle.
#[derive(Clone)]
struct Counting(PgStore, Arc<AtomicUsize>);

impl Store for Counting {
    async fn claim(&self, request: &ClaimRequest<'_>) -> Result<Vec<Entry>> {
        self.1.fetch_add(1, Ordering::SeqCst);
        self.0.claim(request).await
    }
    async fn complete(&self, completion: &Completion) -> Result<()> {
        self.0.complete(completion).await
    }
}

async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..1000 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("gave up waiting (20 s) until {what}");
}

/// A relay that polls only every 60 s publishes a committed entry at once because the commit's
/// NOTIFY wakes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_on_commit_wakes_an_idle_relay_and_survives_a_dropped_listen_connection() {
    let (pool, outbox) = fresh_outbox("notify").await;
    let store = outbox.store(pool.clone());
    let claims = Arc::new(AtomicUsize::new(0));
    let publisher = CollectingPublisher::new();
    let config = RelayConfig {
        poll_interval: Duration::from_secs(60),
        max_poll_interval: Duration::from_secs(60),
        ..RelayConfig::default()
    };
    let relay = Arc::new(Relay::new(Counting(store.clone(), claims.clone()), publisher.clone(), config).unwrap());
    let listener = store.listen(relay.wakeup());
    let channel = outbox.channel().to_string();
    let listening = async |pool: &PgPool| -> Vec<i32> {
        sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE query LIKE $1")
            .bind(format!("LISTEN \"{channel}\"%"))
            .fetch_all(pool)
            .await
            .unwrap()
    };
    wait_until("the listener is connected", async || !listening(&pool).await.is_empty()).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = relay.clone();
    let task = tokio::spawn(async move {
        running
            .run(async move {
                let _ = stopped.await;
            })
            .await
    });
    // The relay polls once at start (and maybe once more for the listener's first wake), then sleeps 60 s.
    wait_until("the relay polled", async || claims.load(Ordering::SeqCst) >= 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = claims.load(Ordering::SeqCst);

    let e = entry("wake", 0);
    let mut tx = pool.begin().await.unwrap();
    outbox.enqueue(&mut tx, &e).await.unwrap();
    tx.commit().await.unwrap();
    wait_until("the entry is published", async || publisher.len() == 1).await;
    assert!(claims.load(Ordering::SeqCst) > before, "the relay claimed again because of the notification");
    assert_eq!(publisher.published()[0].id, e.id());

    // Kill the listening connection: the task listens again and wake-ups keep working.
    let old = listening(&pool).await;
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = ANY($1)")
        .bind(&old)
        .execute(&pool)
        .await
        .unwrap();
    wait_until("the listener is connected again", async || {
        let now = listening(&pool).await;
        !now.is_empty() && now.iter().all(|p| !old.contains(p))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let e2 = entry("wake", 1);
    let mut tx = pool.begin().await.unwrap();
    outbox.enqueue(&mut tx, &e2).await.unwrap();
    tx.commit().await.unwrap();
    wait_until("the second entry is published", async || publisher.len() == 2).await;
    assert_eq!(publisher.published()[1].id, e2.id());
    assert!(listener.is_running());
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

/// Only a commit notifies: a rolled-back write sends nothing.
#[tokio::test]
async fn rolled_back_write_does_not_notify() {
    let (pool, outbox) = fresh_outbox("nonotify").await;
    let mut listener = PgListener::connect_with(&pool).await.unwrap();
    listener.listen(outbox.channel()).await.unwrap();

    let mut tx = pool.begin().await.unwrap();
    outbox.enqueue(&mut tx, &entry("n", 0)).await.unwrap();
    tx.rollback().await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    outbox.enqueue_batch(&mut tx, &[entry("n", 1), entry("m", 0)]).await.unwrap();
    tx.commit().await.unwrap();
    sqlx::query("SELECT pg_notify($1, 'marker')").bind(outbox.channel()).execute(&pool).await.unwrap();

    // Notifications arrive in commit order: the committed write's, then the marker. A
    // notification from the rolled-back write would come first.
    let first = listener.recv().await.unwrap();
    assert_eq!(first.payload(), "", "the committed write notifies");
    let second = listener.recv().await.unwrap();
    assert_eq!(second.payload(), "marker", "exactly one notification per committed write, none for the rollback");
}

/// Entries that another adapter's protocol (outbox-diesel, outbox-seaorm) marked `processing`
/// under a lease that lapsed are taken over, and their old mark is cleared, so the lapsed
/// holder's late completion (which matches on the mark) changes nothing.
#[tokio::test]
async fn takes_over_entries_another_protocol_left_processing() {
    let (pool, outbox) = fresh_outbox("adopt").await;
    let store = outbox.store(pool.clone());
    let entries = [entry("legacy", 0), entry("legacy", 1)];
    let mut tx = pool.begin().await.unwrap();
    outbox.enqueue_batch(&mut tx, &entries).await.unwrap();
    tx.commit().await.unwrap();
    // What a per-entry relay leaves behind when it crashes mid-batch.
    let (name, aggs) = (outbox.tables().name().to_string(), outbox.tables().aggregates_name());
    let lapsed = time::OffsetDateTime::now_utc() - time::Duration::seconds(5);
    sqlx::query(&format!(
        r#"UPDATE "{name}" SET status = 'processing', lease_holder = 'crashed', lease_expires_at = $1"#
    ))
    .bind(lapsed)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(&format!(r#"UPDATE "{aggs}" SET lease_holder = 'crashed', lease_expires_at = $1"#))
        .bind(lapsed)
        .execute(&pool)
        .await
        .unwrap();

    let request = claim_all("second");
    let claimed = store.claim(&request).await.unwrap();
    assert_eq!(claimed.iter().map(|e| e.id).collect::<Vec<_>>(), entries.iter().map(|e| e.id()).collect::<Vec<_>>());
    for e in &entries {
        let seen = store.entry(e.id()).await.unwrap().unwrap();
        assert_eq!(seen.status, outbox_core::Status::Processing);
        assert_eq!(seen.lease.map(|l| l.holder), Some("second".to_string()));
    }
    // The crashed relay's late verdict, as the per-entry protocol writes it: matches nothing.
    let late = sqlx::query(&format!(
        r#"UPDATE "{name}" SET status = 'dead' WHERE lease_holder = 'crashed' AND status = 'processing'"#
    ))
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(late.rows_affected(), 0, "the lapsed holder's completion must not touch taken-over entries");
    let completion = Completion {
        holder: "second".into(),
        now: request.now,
        published: entries.iter().map(|e| e.id()).collect(),
        ..Completion::default()
    };
    store.complete(&completion).await.unwrap();
    let stats = store.stats(Timestamp::now()).await.unwrap();
    assert_eq!((stats.published, stats.pending, stats.processing, stats.dead), (2, 0, 0, 0), "{stats:?}");
}

/// Under `NotifyMode::AfterCommit` the trigger stays quiet in the writer's transaction (so
/// writers' commits are not serialized) and `PgOutbox::commit` sends one NOTIFY after the
/// commit; a rolled-back write and a plain `tx.commit()` send none.
#[tokio::test]
async fn after_commit_mode_notifies_from_commit_only() {
    let (pool, outbox) = fresh_outbox("aftercommit").await;
    let outbox = outbox.notify_after_commit(&pool);
    assert_eq!(outbox.notify_mode(), outbox_sqlx::NotifyMode::AfterCommit);
    let mut listener = PgListener::connect_with(&pool).await.unwrap();
    listener.listen(outbox.channel()).await.unwrap();
    let marker = async |text: &str| {
        sqlx::query("SELECT pg_notify($1, $2)").bind(outbox.channel()).bind(text).execute(&pool).await.unwrap();
    };

    // Rolled back, and committed without the outbox: no notification (the trigger is off).
    let mut tx = pool.begin().await.unwrap();
    outbox.enqueue(&mut tx, &entry("q", 0)).await.unwrap();
    tx.rollback().await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    outbox.enqueue_batch(&mut tx, &[entry("q", 1), entry("r", 0)]).await.unwrap();
    tx.commit().await.unwrap();
    marker("one").await;
    let first = listener.recv().await.unwrap();
    assert_eq!(first.payload(), "one", "the trigger notified inside a writer's transaction");

    // Committed through the outbox: one notification, after the commit.
    let mut tx = pool.begin().await.unwrap();
    outbox.enqueue(&mut tx, &entry("q", 2)).await.unwrap();
    outbox.commit(tx).await.unwrap();
    let woke = tokio::time::timeout(Duration::from_secs(10), listener.recv()).await.expect("no NOTIFY after commit");
    assert_eq!(woke.unwrap().payload(), "", "PgOutbox::commit notifies");

    // The switch lasts for the writer's transaction only: a trigger-mode writer on the same
    // connection pool still notifies from its transaction.
    let plain = PgOutbox::new(outbox.tables().clone());
    let mut tx = pool.begin().await.unwrap();
    plain.enqueue(&mut tx, &entry("s", 0)).await.unwrap();
    tx.commit().await.unwrap();
    marker("two").await;
    assert_eq!(listener.recv().await.unwrap().payload(), "", "trigger mode still notifies");
    assert_eq!(listener.recv().await.unwrap().payload(), "two");
    let store = outbox.store(pool.clone());
    assert_eq!(store.stats(Timestamp::now()).await.unwrap().pending, 4, "every committed entry is there");
}

#[tokio::test]
async fn requeue_all_brings_back_every_dead_entry() {
    let (pool, outbox) = fresh_outbox("requeue").await;
    let h = PgHarness { store: outbox.store(pool.clone()), pool };
    common::requeue_all_brings_back_every_dead_entry(&h).await;
}

/// A second writer of the same aggregate waits for the first one's transaction, so sequences
/// follow commit order without any lock taken by the application.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_of_one_aggregate_are_serialized_in_commit_order() {
    let (pool, outbox) = fresh_outbox("strict").await;
    let first = entry("hot", 0);
    let mut tx_a = pool.begin().await.unwrap();
    outbox.enqueue(&mut tx_a, &first).await.unwrap();

    let second = entry("hot", 1);
    let (pool_b, outbox_b, second_b) = (pool.clone(), outbox.clone(), second.clone());
    let b = tokio::spawn(async move {
        let mut tx_b = pool_b.begin().await.unwrap();
        outbox_b.enqueue(&mut tx_b, &second_b).await.unwrap();
        tx_b.commit().await.unwrap();
    });
    // B is blocked on the aggregate's row for as long as A's transaction is open.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!b.is_finished(), "the second writer must wait for the first transaction");
    tx_a.commit().await.unwrap();
    b.await.unwrap();

    let store = outbox.store(pool);
    let a_seq = store.entry(first.id()).await.unwrap().unwrap().sequence;
    let b_seq = store.entry(second.id()).await.unwrap().unwrap().sequence;
    assert!(a_seq < b_seq, "sequences follow commit order: first {a_seq}, second {b_seq}");
}

/// The relay's connections are killed again and again while it drains: it recovers (connection
/// loss is a retryable error), every entry is published, and no entry of an aggregate is first
/// published before an earlier one of the same aggregate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_recovers_from_killed_connections() {
    use sqlx::postgres::PgConnectOptions;
    use std::str::FromStr;

    let (pool, outbox) = fresh_outbox("kill").await;
    let mut expected = HashSet::new();
    let mut batch = Vec::new();
    for n in 0..20 {
        for a in 0..100 {
            let e = entry(&format!("k-{a}"), n);
            expected.insert(e.id());
            batch.push(e);
        }
    }
    let mut tx = pool.begin().await.unwrap();
    outbox.enqueue_batch(&mut tx, &batch).await.unwrap();
    tx.commit().await.unwrap();

    let app = unique_table("app");
    let options = PgConnectOptions::from_str(&pg_url()).unwrap().application_name(&app);
    let relay_pool = PgPoolOptions::new().max_connections(2).connect_with(options).await.unwrap();
    let publisher = Shared::default();
    let config = RelayConfig {
        batch_size: 50,
        max_per_aggregate: 5,
        poll_interval: Duration::from_millis(5),
        max_poll_interval: Duration::from_millis(50),
        lease_duration: Duration::from_secs(2),
        publish_timeout: Duration::from_secs(1),
        ..RelayConfig::default()
    };
    let relay = Arc::new(Relay::new(outbox.store(relay_pool), publisher.clone(), config).unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = relay.clone();
    let task = tokio::spawn(async move {
        running
            .run(async move {
                let _ = stopped.await;
            })
            .await
    });
    let mut kills = 0;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        let killed: Vec<bool> =
            sqlx::query_scalar("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1")
                .bind(&app)
                .fetch_all(&pool)
                .await
                .unwrap();
        kills += killed.len();
    }
    let store = outbox.store(pool.clone());
    for _ in 0..3000 {
        let s = store.stats(Timestamp::now()).await.unwrap();
        if s.published as usize == expected.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(());
    task.await.unwrap().unwrap();
    assert!(kills > 0, "the test killed no connection; it proves nothing");
    let stats = store.stats(Timestamp::now()).await.unwrap();
    assert_eq!(stats.published as usize, expected.len(), "every entry is published in the end: {stats:?}");
    // At least once: an entry may be published again after a lost completion, but its first
    // publication never comes before the first publication of an earlier entry of its aggregate.
    let mut seen = HashSet::new();
    let mut last: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for e in publisher.inner.published() {
        if !seen.insert(e.id) {
            continue;
        }
        let n: usize = String::from_utf8_lossy(e.payload.as_bytes()).rsplit('/').next().unwrap().parse().unwrap();
        if let Some(prev) = last.insert(e.aggregate_id.clone(), n) {
            assert!(prev < n, "aggregate {} first published {n} after {prev}", e.aggregate_id);
        } else {
            assert_eq!(n, 0, "aggregate {} started with entry {n}", e.aggregate_id);
        }
    }
    assert_eq!(seen.len(), expected.len());
}
