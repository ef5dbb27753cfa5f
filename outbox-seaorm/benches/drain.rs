//! Drains 200,000 entries (200 B, 1,000 aggregates) through a no-op publisher with one relay,
//! through [`SeaStore`] and, side by side on the same server, through outbox-sqlx's store: on
//! PostgreSQL (best of two alternating rounds), MariaDB and an SQLite file.
//!
//! `cargo bench -p outbox-seaorm --bench drain` (or `cargo xtask bench`). `OUTBOX_BENCH_ENTRIES`
//! lowers the count for a quick check; `OUTBOX_BENCH_DATABASES=postgres,mysql,sqlite` picks the
//! databases; `OUTBOX_BENCH_PHASES=1` prints the time spent claiming and completing; `OUTBOX_TEST_POSTGRES_URL` / `OUTBOX_TEST_MYSQL_URL` as in
//! the tests. Prints markdown table rows.

use std::time::{Duration, Instant};

use outbox_core::{EntryId, NewEntry, NoopPublisher, Relay, RelayConfig, Store};
use outbox_seaorm::{Migration, Outbox, SeaStore, Tables};
use sea_orm::{ConnectOptions, Database, DatabaseConnection, TransactionTrait};

type BoxError = Box<dyn std::error::Error>;

const AGGREGATES: usize = 1_000;
const WRITE_BATCH: usize = 1_000;
/// PostgreSQL rounds (each runs both stores).
const ROUNDS: usize = 2;

fn entries(total: usize) -> Result<Vec<NewEntry>, BoxError> {
    let body = format!("{{\"pad\":\"{}\"}}", "x".repeat(190));
    (0..total)
        .map(|n| {
            Ok(NewEntry::builder("order", format!("o-{}", n % AGGREGATES), "order.changed")
                .json(body.clone())
                .build()?)
        })
        .collect()
}

fn config() -> RelayConfig {
    RelayConfig { batch_size: 1000, max_per_aggregate: 20, ..RelayConfig::default() }
}

/// A store that times its claims and completions.
struct Timed<S> {
    inner: S,
    claim: std::sync::Mutex<Duration>,
    complete: std::sync::Mutex<Duration>,
}

impl<S: Store> Store for Timed<S> {
    async fn claim(&self, request: &outbox_core::ClaimRequest<'_>) -> outbox_core::Result<Vec<outbox_core::Entry>> {
        let started = Instant::now();
        let r = self.inner.claim(request).await;
        *self.claim.lock().unwrap_or_else(|p| p.into_inner()) += started.elapsed();
        r
    }

    async fn complete(&self, completion: &outbox_core::Completion) -> outbox_core::Result<()> {
        let started = Instant::now();
        let r = self.inner.complete(completion).await;
        *self.complete.lock().unwrap_or_else(|p| p.into_inner()) += started.elapsed();
        r
    }
}

async fn drain<S: Store>(store: S, total: usize) -> Result<Duration, BoxError> {
    let timed = std::sync::Arc::new(Timed {
        inner: store,
        claim: std::sync::Mutex::new(Duration::ZERO),
        complete: std::sync::Mutex::new(Duration::ZERO),
    });
    let elapsed = drain_inner(timed.clone(), total).await?;
    if std::env::var_os("OUTBOX_BENCH_PHASES").is_some() {
        let get = |m: &std::sync::Mutex<Duration>| *m.lock().unwrap_or_else(|p| p.into_inner());
        eprintln!("claim {:?}, complete {:?}, total {elapsed:?}", get(&timed.claim), get(&timed.complete));
    }
    Ok(elapsed)
}

async fn drain_inner<S: Store>(store: S, total: usize) -> Result<Duration, BoxError> {
    let relay = Relay::new(store, NoopPublisher, config())?;
    let started = Instant::now();
    let mut published = 0;
    loop {
        let report = relay.run_once().await?;
        if report.claimed == 0 {
            break;
        }
        published += report.published;
    }
    let elapsed = started.elapsed();
    if published != total {
        return Err(format!("published {published} of {total}").into());
    }
    Ok(elapsed)
}

async fn connect(url: &str) -> Result<DatabaseConnection, BoxError> {
    let mut options = ConnectOptions::new(url.to_string());
    options.max_connections(4).sqlx_logging(false);
    Database::connect(options)
        .await
        .map_err(|e| format!("cannot reach {url}: {e}; start it with `cargo xtask services up`").into())
}

fn unique(prefix: &str) -> String {
    format!("{prefix}_{:012x}", EntryId::generate().as_u128() as u64 & 0xffff_ffff_ffff)
}

/// Fills a fresh outbox through SeaORM and drains it through SeaStore; drops the tables after.
async fn seaorm_drain(url: &str, total: usize) -> Result<(Duration, Duration), BoxError> {
    let db = connect(url).await?;
    let tables = Tables::new(unique("bench_sea"))?;
    let migration = Migration::new(tables.clone());
    migration.apply(&db).await?;
    let outbox = Outbox::new(tables.clone());
    let all = entries(total)?;
    let started = Instant::now();
    for chunk in all.chunks(WRITE_BATCH) {
        let tx = db.begin().await?;
        outbox.enqueue_all(&tx, chunk).await?;
        tx.commit().await?;
    }
    let fill = started.elapsed();
    let result = drain(SeaStore::new(db.clone(), tables), total).await;
    migration.revert(&db).await?;
    Ok((fill, result?))
}

/// The same through outbox-sqlx on PostgreSQL.
async fn sqlx_pg_drain(url: &str, total: usize) -> Result<Duration, BoxError> {
    let pool = sea_orm::sqlx::postgres::PgPoolOptions::new().max_connections(4).connect(url).await?;
    let outbox = outbox_sqlx::PgOutbox::new(outbox_sqlx::Tables::new(unique("bench_sqlx"))?);
    outbox.migrate(&pool).await?;
    let all = entries(total)?;
    for chunk in all.chunks(WRITE_BATCH) {
        let mut tx = pool.begin().await?;
        outbox.enqueue_batch(&mut tx, chunk).await?;
        tx.commit().await?;
    }
    let result = drain(outbox.store(pool.clone()), total).await;
    let name = outbox.tables().name().to_string();
    sea_orm::sqlx::query(&format!("DROP TABLE IF EXISTS \"{name}\", \"{name}_aggregates\"")).execute(&pool).await?;
    result
}

/// The same through outbox-sqlx on MariaDB.
async fn sqlx_mysql_drain(url: &str, total: usize) -> Result<Duration, BoxError> {
    let pool = sea_orm::sqlx::mysql::MySqlPoolOptions::new().max_connections(4).connect(url).await?;
    let outbox = outbox_sqlx::MySqlOutbox::new(outbox_sqlx::Tables::new(unique("bench_sqlx"))?);
    outbox.migrate(&pool).await?;
    let all = entries(total)?;
    for chunk in all.chunks(WRITE_BATCH) {
        let mut tx = pool.begin().await?;
        outbox.enqueue_batch(&mut tx, chunk).await?;
        tx.commit().await?;
    }
    let result = drain(outbox.store(pool.clone()), total).await;
    let name = outbox.tables().name().to_string();
    sea_orm::sqlx::query(&format!("DROP TABLE IF EXISTS `{name}`, `{name}_aggregates`")).execute(&pool).await?;
    result
}

/// The same through outbox-sqlx on an SQLite file.
async fn sqlx_sqlite_drain(url: &str, total: usize) -> Result<Duration, BoxError> {
    let pool = sea_orm::sqlx::sqlite::SqlitePoolOptions::new().max_connections(4).connect(url).await?;
    let outbox = outbox_sqlx::SqliteOutbox::new(outbox_sqlx::Tables::new(unique("bench_sqlx"))?);
    outbox.migrate(&pool).await?;
    let all = entries(total)?;
    for chunk in all.chunks(WRITE_BATCH) {
        let mut tx = pool.begin().await?;
        outbox.enqueue_batch(&mut tx, chunk).await?;
        tx.commit().await?;
    }
    drain(outbox.store(pool.clone()), total).await
}

fn rate(total: usize, d: Duration) -> f64 {
    total as f64 / d.as_secs_f64()
}

fn main() -> Result<(), BoxError> {
    let total: usize = std::env::var("OUTBOX_BENCH_ENTRIES").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let pg =
        std::env::var("OUTBOX_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let my = std::env::var("OUTBOX_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let shape = format!("{total} x 200 B, {AGGREGATES} aggregates");
    runtime.block_on(async {
        let only = std::env::var("OUTBOX_BENCH_DATABASES").unwrap_or_else(|_| "postgres,mysql,sqlite".into());
        let run = |db: &str| only.split(',').any(|d| d.trim() == db);
        if run("postgres") {
        // Alternating rounds, best of each: the order of runs on one server should not decide.
        let (mut fill, mut sea, mut sqlx) = (Duration::MAX, Duration::MAX, Duration::MAX);
        for _ in 0..ROUNDS {
            sqlx = sqlx.min(sqlx_pg_drain(&pg, total).await?);
            let (f, s) = seaorm_drain(&pg, total).await?;
            fill = fill.min(f);
            sea = sea.min(s);
        }
        let (sea_rate, sqlx_rate) = (rate(total, sea), rate(total, sqlx));
        println!(
            "| seaorm | drain PostgreSQL, no-op publisher, {shape}, 1 relay | {sea_rate:.0} | entries/s | batches of 1,000, 20 per aggregate; written at {:.0}/s in transactions of 1,000 |",
            rate(total, fill)
        );
        println!(
            "| seaorm | SeaStore vs outbox-sqlx PgStore, drain PostgreSQL, {shape} | {:.2} | ratio | seaorm {sea_rate:.0}/s, sqlx {sqlx_rate:.0}/s, best of {ROUNDS} alternating rounds |",
            sea_rate / sqlx_rate
        );
        }
        if run("mysql") {
        let (fill, sea) = seaorm_drain(&my, total).await?;
        let sqlx = sqlx_mysql_drain(&my, total).await?;
        let (sea_rate, sqlx_rate) = (rate(total, sea), rate(total, sqlx));
        println!(
            "| seaorm | drain MariaDB, no-op publisher, {shape}, 1 relay | {sea_rate:.0} | entries/s | batches of 1,000, 20 per aggregate; written at {:.0}/s |",
            rate(total, fill)
        );
        println!(
            "| seaorm | SeaStore vs outbox-sqlx MySqlStore, drain MariaDB, {shape} | {:.2} | ratio | seaorm {sea_rate:.0}/s, sqlx {sqlx_rate:.0}/s, one round |",
            sea_rate / sqlx_rate
        );
        }
        if run("sqlite") {
        let dir = tempfile::tempdir()?;
        let lite = format!("sqlite://{}?mode=rwc", dir.path().join("bench.db").display());
        let (fill, sea) = seaorm_drain(&lite, total).await?;
        let lite_sqlx = format!("sqlite://{}?mode=rwc", dir.path().join("bench-sqlx.db").display());
        let sqlx = sqlx_sqlite_drain(&lite_sqlx, total).await?;
        let (sea_rate, sqlx_rate) = (rate(total, sea), rate(total, sqlx));
        println!(
            "| seaorm | drain SQLite (file, WAL), no-op publisher, {shape}, 1 relay | {sea_rate:.0} | entries/s | batches of 1,000, 20 per aggregate; written at {:.0}/s |",
            rate(total, fill)
        );
        println!(
            "| seaorm | SeaStore vs outbox-sqlx SqliteStore, drain SQLite file, {shape} | {:.2} | ratio | seaorm {sea_rate:.0}/s, sqlx {sqlx_rate:.0}/s, one round |",
            sea_rate / sqlx_rate
        );
        }
        Ok::<_, BoxError>(())
    })?;
    Ok(())
}
