//! One outbox, two libraries: entries written through SeaORM are drained by outbox-sqlx's store,
//! entries written through outbox-sqlx by SeaStore, and both relays can drain one outbox at once,
//! with per-aggregate order and exactly-once kept.

use std::collections::{HashMap, HashSet};

use outbox_core::{CollectingPublisher, Entry, EntryId, Maintenance, NewEntry, Relay, RelayConfig, Store, Timestamp};
use sea_orm::sqlx;

use crate::common::{Db, Fresh, fresh, postgres_url};

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

async fn sqlx_pg(f: &Fresh) -> (sqlx::PgPool, outbox_sqlx::PgOutbox) {
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(4).connect(&postgres_url()).await.unwrap();
    let outbox = outbox_sqlx::PgOutbox::new(outbox_sqlx::Tables::new(f.tables.name()).unwrap());
    (pool, outbox)
}

async fn assert_all_published(f: &Fresh, total: u64) {
    let stats = f.store().stats(Timestamp::now()).await.unwrap();
    assert_eq!((stats.published, stats.pending, stats.processing), (total, 0, 0), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_seaorm_writes_are_drained_by_sqlx() {
    let f = fresh(Db::Postgres, "sea_interop").await;
    let mut expected = HashSet::new();
    for batch in batches(6, 20) {
        expected.extend(batch.iter().map(NewEntry::id));
        f.write(&batch, true).await.unwrap();
    }
    f.write(&[entry(0, 99)], false).await.unwrap(); // rolled back: never published
    let (pool, outbox) = sqlx_pg(&f).await;
    let publisher = CollectingPublisher::new();
    drain(outbox.store(pool), publisher.clone()).await;
    exactly_once_in_order(&publisher.published(), &expected);
    assert_all_published(&f, expected.len() as u64).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sqlx_writes_are_drained_by_seaorm() {
    let f = fresh(Db::Postgres, "sea_interop").await;
    let (pool, outbox) = sqlx_pg(&f).await;
    outbox.migrate(&pool).await.unwrap(); // adopts the tables: same schema, idempotent
    let mut expected = HashSet::new();
    for (i, batch) in batches(6, 20).into_iter().enumerate() {
        expected.extend(batch.iter().map(NewEntry::id));
        let mut tx = pool.begin().await.unwrap();
        if i % 2 == 0 {
            outbox.enqueue_batch(&mut tx, &batch).await.unwrap();
        } else {
            for e in &batch {
                outbox.enqueue(&mut tx, e).await.unwrap();
            }
        }
        tx.commit().await.unwrap();
    }
    let publisher = CollectingPublisher::new();
    drain(f.store(), publisher.clone()).await;
    exactly_once_in_order(&publisher.published(), &expected);
    assert_all_published(&f, expected.len() as u64).await;
}

/// Writers of both libraries on the same aggregates, then a SeaORM relay and a sqlx relay
/// draining at the same time into one publisher: sequences continue across libraries, and every
/// entry goes out once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_mixed_writers_and_concurrent_relays_of_both_libraries() {
    let f = fresh(Db::Postgres, "sea_interop").await;
    let (pool, outbox) = sqlx_pg(&f).await;
    let mut expected = HashSet::new();
    for (i, batch) in batches(8, 40).into_iter().enumerate() {
        expected.extend(batch.iter().map(NewEntry::id));
        if i % 2 == 0 {
            f.write(&batch, true).await.unwrap();
        } else {
            let mut tx = pool.begin().await.unwrap();
            outbox.enqueue_batch(&mut tx, &batch).await.unwrap();
            tx.commit().await.unwrap();
        }
    }
    let publisher = CollectingPublisher::new();
    let sea = tokio::spawn(drain(f.store(), publisher.clone()));
    let sqlx_relay = tokio::spawn(drain(outbox.store(pool), publisher.clone()));
    sea.await.unwrap();
    sqlx_relay.await.unwrap();
    exactly_once_in_order(&publisher.published(), &expected);
    assert_all_published(&f, expected.len() as u64).await;
}
