//! One outbox, two libraries: entries written through SeaORM are drained by outbox-sqlx's store,
//! entries written through outbox-sqlx by SeaStore, and relays of both libraries can drain one
//! outbox at the same time, with per-aggregate order and exactly-once kept. On each database.

use std::collections::{HashMap, HashSet};

use outbox_core::{CollectingPublisher, Entry, EntryId, Maintenance, NewEntry, Relay, RelayConfig, Store, Timestamp};
use sea_orm::sqlx;

use crate::common::{Db, Fresh, fresh};

fn entry(aggregate: usize, n: usize) -> NewEntry {
    NewEntry::builder("interop", format!("agg-{aggregate}"), "interop.happened")
        .payload(format!("{aggregate}/{n}"), "text/plain")
        .header("x-n", n.to_string())
        .build()
        .unwrap()
}

/// Interleaved entries of `aggregates` aggregates, `per` each, in transactions of 10.
fn batches(aggregates: usize, per: usize) -> Vec<Vec<NewEntry>> {
    let all: Vec<NewEntry> = (0..per).flat_map(|n| (0..aggregates).map(move |a| entry(a, n))).collect();
    all.chunks(10).map(<[NewEntry]>::to_vec).collect()
}

fn config() -> RelayConfig {
    RelayConfig { batch_size: 7, max_per_aggregate: 3, ..RelayConfig::default() }
}

async fn drain<S: Store>(store: S, publisher: CollectingPublisher) {
    let relay = Relay::new(store, publisher, config()).unwrap();
    for _ in 0..10_000 {
        if relay.run_once().await.unwrap().claimed == 0 {
            return;
        }
    }
    panic!("the outbox did not drain");
}

/// Every expected entry exactly once, and within each aggregate in write order.
fn exactly_once_in_order(published: &[Entry], expected: &HashSet<EntryId>) {
    let mut seen = HashSet::new();
    let mut last: HashMap<&str, (i64, usize)> = HashMap::new();
    for e in published {
        assert!(seen.insert(e.id), "{} published twice", e.id);
        let n: usize = String::from_utf8_lossy(e.payload.as_bytes()).rsplit('/').next().unwrap().parse().unwrap();
        if let Some((seq, prev)) = last.get(e.aggregate_id.as_str()) {
            assert!(e.sequence > *seq && n > *prev, "{} out of order: {n} after {prev}", e.aggregate_id);
        }
        last.insert(&e.aggregate_id, (e.sequence, n));
    }
    assert_eq!(&seen, expected, "published set differs from the committed set");
}

/// outbox-sqlx on the same outbox as `f`.
enum Sqlx {
    Pg(sqlx::PgPool, outbox_sqlx::PgOutbox),
    My(sqlx::MySqlPool, outbox_sqlx::MySqlOutbox),
    Lite(sqlx::SqlitePool, outbox_sqlx::SqliteOutbox),
}

impl Sqlx {
    async fn open(db: Db, f: &Fresh) -> Self {
        let tables = outbox_sqlx::Tables::new(f.tables.name()).unwrap();
        match db {
            Db::Postgres => Sqlx::Pg(
                sqlx::postgres::PgPoolOptions::new().max_connections(4).connect(&f.url).await.unwrap(),
                outbox_sqlx::PgOutbox::new(tables),
            ),
            Db::MySql => Sqlx::My(
                sqlx::mysql::MySqlPoolOptions::new().max_connections(4).connect(&f.url).await.unwrap(),
                outbox_sqlx::MySqlOutbox::new(tables),
            ),
            Db::Sqlite => Sqlx::Lite(
                sqlx::sqlite::SqlitePoolOptions::new().max_connections(4).connect(&f.url).await.unwrap(),
                outbox_sqlx::SqliteOutbox::new(tables),
            ),
        }
    }

    /// Runs outbox-sqlx's migration on tables outbox-seaorm created: it adopts them.
    async fn migrate(&self) {
        match self {
            Sqlx::Pg(p, o) => o.migrate(p).await.unwrap(),
            Sqlx::My(p, o) => o.migrate(p).await.unwrap(),
            Sqlx::Lite(p, o) => o.migrate(p).await.unwrap(),
        }
    }

    /// Writes a batch in one sqlx transaction, as a batch or one entry at a time.
    async fn write(&self, batch: &[NewEntry], one_by_one: bool) {
        macro_rules! write {
            ($pool:expr, $outbox:expr) => {{
                let mut tx = $pool.begin().await.unwrap();
                if one_by_one {
                    for e in batch {
                        $outbox.enqueue(&mut tx, e).await.unwrap();
                    }
                } else {
                    $outbox.enqueue_batch(&mut tx, batch).await.unwrap();
                }
                tx.commit().await.unwrap();
            }};
        }
        match self {
            Sqlx::Pg(p, o) => write!(p, o),
            Sqlx::My(p, o) => write!(p, o),
            Sqlx::Lite(p, o) => write!(p, o),
        }
    }

    async fn drain(&self, publisher: CollectingPublisher) {
        match self {
            Sqlx::Pg(p, o) => drain(o.store(p.clone()), publisher).await,
            Sqlx::My(p, o) => drain(o.store(p.clone()), publisher).await,
            Sqlx::Lite(p, o) => drain(o.store(p.clone()), publisher).await,
        }
    }
}

async fn assert_all_published(f: &Fresh, total: u64) {
    let stats = f.store().stats(Timestamp::now()).await.unwrap();
    assert_eq!((stats.published, stats.pending, stats.processing), (total, 0, 0), "{stats:?}");
}

async fn seaorm_writes_are_drained_by_sqlx(db: Db) {
    let f = fresh(db, "sea_interop").await;
    let mut expected = HashSet::new();
    for batch in batches(6, 20) {
        expected.extend(batch.iter().map(NewEntry::id));
        f.write(&batch, true).await.unwrap();
    }
    f.write(&[entry(0, 99)], false).await.unwrap(); // rolled back: never published
    let publisher = CollectingPublisher::new();
    Sqlx::open(db, &f).await.drain(publisher.clone()).await;
    exactly_once_in_order(&publisher.published(), &expected);
    assert_all_published(&f, expected.len() as u64).await;
}

async fn sqlx_writes_are_drained_by_seaorm(db: Db) {
    let f = fresh(db, "sea_interop").await;
    let sqlx = Sqlx::open(db, &f).await;
    sqlx.migrate().await;
    let mut expected = HashSet::new();
    for (i, batch) in batches(6, 20).into_iter().enumerate() {
        expected.extend(batch.iter().map(NewEntry::id));
        sqlx.write(&batch, i % 2 == 1).await;
    }
    let publisher = CollectingPublisher::new();
    drain(f.store(), publisher.clone()).await;
    exactly_once_in_order(&publisher.published(), &expected);
    assert_all_published(&f, expected.len() as u64).await;
}

/// Writers of both libraries on the same aggregates, then a SeaORM relay and a sqlx relay
/// draining at the same time into one publisher: sequences continue across libraries, and every
/// entry goes out once, in order.
async fn mixed_writers_and_concurrent_relays(db: Db) {
    let f = fresh(db, "sea_interop").await;
    let sqlx = Sqlx::open(db, &f).await;
    let mut expected = HashSet::new();
    for (i, batch) in batches(8, 40).into_iter().enumerate() {
        expected.extend(batch.iter().map(NewEntry::id));
        if i % 2 == 0 {
            f.write(&batch, true).await.unwrap();
        } else {
            sqlx.write(&batch, false).await;
        }
    }
    let publisher = CollectingPublisher::new();
    let sea = tokio::spawn(drain(f.store(), publisher.clone()));
    sqlx.drain(publisher.clone()).await;
    sea.await.unwrap();
    exactly_once_in_order(&publisher.published(), &expected);
    assert_all_published(&f, expected.len() as u64).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_seaorm_writes_are_drained_by_sqlx() {
    seaorm_writes_are_drained_by_sqlx(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sqlx_writes_are_drained_by_seaorm() {
    sqlx_writes_are_drained_by_seaorm(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_mixed_writers_and_concurrent_relays_of_both_libraries() {
    mixed_writers_and_concurrent_relays(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_seaorm_writes_are_drained_by_sqlx() {
    seaorm_writes_are_drained_by_sqlx(Db::MySql).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_sqlx_writes_are_drained_by_seaorm() {
    sqlx_writes_are_drained_by_seaorm(Db::MySql).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_mixed_writers_and_concurrent_relays_of_both_libraries() {
    mixed_writers_and_concurrent_relays(Db::MySql).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_seaorm_writes_are_drained_by_sqlx() {
    seaorm_writes_are_drained_by_sqlx(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_sqlx_writes_are_drained_by_seaorm() {
    sqlx_writes_are_drained_by_seaorm(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_mixed_writers_and_concurrent_relays_of_both_libraries() {
    mixed_writers_and_concurrent_relays(Db::Sqlite).await;
}
