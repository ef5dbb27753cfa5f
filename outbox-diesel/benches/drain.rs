//! Drains a backlog through `outbox_core::NoopPublisher` with one relay, from the diesel store
//! and, in the same run on the same database and the same data, from the outbox-sqlx store (a
//! dev-dependency, for the side-by-side ratio): PostgreSQL, MariaDB and SQLite (a file).
//!
//! The stores take turns (sqlx, diesel, diesel, sqlx) and each figure is the mean of a store's
//! two rounds. Each round gets fresh tables, filled through this crate's batch writer in transactions of
//! 10,000 entries (~200-byte JSON payloads over 1,000 aggregates), then analyzed. The relay uses
//! batches of 1,000 with at most 20 entries per aggregate.
//!
//! Run: `cargo bench -p outbox-diesel --bench drain` (or `cargo xtask bench`). Sizes:
//! `OUTBOX_BENCH_ENTRIES` (default 200000), `OUTBOX_BENCH_AGGREGATES` (default 1000). Servers:
//! `OUTBOX_TEST_POSTGRES_URL`, `OUTBOX_TEST_MYSQL_URL` (the tests' defaults). Prints markdown rows.

use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::{Connection, MysqlConnection, PgConnection, SqliteConnection};
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::{AsyncMysqlConnection, AsyncPgConnection};
use outbox_core::{EntryId, NewEntry, NoopPublisher, Relay, RelayConfig, Store};
use outbox_diesel::Tables;

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

const TX: usize = 10_000;

/// Which store drains each round (true: diesel): A B B A, so a drift of the machine or the
/// server (background purge after a drain, other load) weighs on both stores alike. Each store's
/// figure is the mean of its two rounds.
const ORDER: [bool; 4] = [false, true, true, false];

/// A progress line on stderr (the rows go to stdout).
fn fill_done(round: usize) {
    eprintln!("round {} of {} done", round + 1, ORDER.len());
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn pg_url() -> String {
    std::env::var("OUTBOX_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn mysql_url() -> String {
    std::env::var("OUTBOX_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

fn redact(url: &str) -> &str {
    url.rsplit('@').next().unwrap_or(url)
}

fn unique(prefix: &str) -> String {
    format!("{prefix}_{:08x}", EntryId::generate().as_u128() as u32)
}

/// The backlog, in transactions of `TX` entries.
fn backlog(total: usize, aggregates: usize) -> BenchResult<Vec<Vec<NewEntry>>> {
    let mut txs = Vec::new();
    let mut current = Vec::with_capacity(TX);
    for n in 0..total {
        let body = format!(r#"{{"n":{n},"pad":"{}"}}"#, "x".repeat(180usize.saturating_sub(n.to_string().len())));
        current.push(NewEntry::builder("order", format!("o-{}", n % aggregates), "order.changed").json(body).build()?);
        if current.len() == TX {
            txs.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        txs.push(current);
    }
    Ok(txs)
}

fn config() -> BenchResult<RelayConfig> {
    Ok(RelayConfig { batch_size: 1000, max_per_aggregate: 20, ..RelayConfig::default() })
}

/// Drains with one relay; returns entries per second.
async fn drain<S: Store>(store: S, total: usize) -> BenchResult<f64> {
    let relay = Relay::new(store, NoopPublisher, config()?)?;
    let started = Instant::now();
    let mut published = 0;
    loop {
        let report = relay.run_once().await?;
        if report.claimed == 0 {
            break;
        }
        published += report.published;
    }
    let took = started.elapsed();
    if published != total {
        return Err(format!("published {published} of {total}").into());
    }
    Ok(total as f64 / took.as_secs_f64())
}

fn rate(d: Duration, n: usize) -> f64 {
    n as f64 / d.as_secs_f64()
}

struct Figures {
    enqueue: f64,
    diesel: f64,
    sqlx: f64,
}

fn print(db: &str, total: usize, aggregates: usize, f: &Figures) {
    let ratio = f.diesel / f.sqlx;
    let slow = if ratio < 0.75 { "; more than 25% slower than sqlx: see the crate's bench notes" } else { "" };
    println!(
        "| diesel | {db} drain, diesel store, 1 relay, no-op publisher, {total} x 200 B, {aggregates} aggregates | {:.0} | entries/s | batches of 1,000, 20 per aggregate; outbox-sqlx store same run: {:.0}/s{slow} |",
        f.diesel, f.sqlx
    );
    println!(
        "| diesel | {db} drain, diesel store vs sqlx store, {total} x 200 B | {ratio:.2} | ratio | diesel {:.0}k/s, sqlx {:.0}k/s, same data, same run |",
        f.diesel / 1000.0,
        f.sqlx / 1000.0
    );
    println!(
        "| diesel | {db} enqueue_batch (sync connection), {total} x 200 B, {aggregates} aggregates | {:.0} | entries/s | transactions of 10,000 |",
        f.enqueue
    );
}

async fn postgres(total: usize, aggregates: usize) -> BenchResult<Figures> {
    let url = pg_url();
    let mut conn = PgConnection::establish(&url).map_err(|e| {
        format!("cannot reach PostgreSQL at {} ({e}); start it with `cargo xtask services up`", redact(&url))
    })?;
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(url.clone());
    let pool = Pool::builder(manager).max_size(2).build()?;
    let sqlx_pool = sqlx::postgres::PgPoolOptions::new().max_connections(2).connect(&url).await?;
    let mut fill = |name: &str| -> BenchResult<Duration> {
        let outbox = outbox_diesel::postgres::PgOutbox::new(Tables::new(name)?);
        outbox.migrate(&mut conn)?;
        let started = Instant::now();
        for tx in backlog(total, aggregates)? {
            conn.transaction(|c| outbox.enqueue_batch(c, &tx).map_err(Box::<dyn std::error::Error>::from))
                .map_err(|e| e.to_string())?;
        }
        let took = started.elapsed();
        conn.batch_execute(&format!("VACUUM ANALYZE \"{name}\""))?;
        conn.batch_execute(&format!("VACUUM ANALYZE \"{name}_aggregates\""))?;
        Ok(took)
    };
    let mut figures = Figures { enqueue: 0.0, diesel: 0.0, sqlx: 0.0 };
    for (round, diesel) in ORDER.into_iter().enumerate() {
        let name = unique("dbench");
        let took = fill(&name)?;
        if diesel {
            figures.enqueue += rate(took, total) / 2.0;
            let store = outbox_diesel::postgres::PgOutbox::new(Tables::new(&*name)?).store(pool.clone());
            figures.diesel += drain(store, total).await? / 2.0;
        } else {
            let store = outbox_sqlx::PgOutbox::new(outbox_sqlx::Tables::new(&*name)?).store(sqlx_pool.clone());
            figures.sqlx += drain(store, total).await? / 2.0;
        }
        fill_done(round);
        PgConnection::establish(&url)?.batch_execute(&format!(
            "DROP TABLE \"{name}\", \"{name}_aggregates\" CASCADE; DROP FUNCTION IF EXISTS \"{name}_notify\"()"
        ))?;
    }
    Ok(figures)
}

async fn mysql(total: usize, aggregates: usize) -> BenchResult<Figures> {
    let url = mysql_url();
    let mut conn = MysqlConnection::establish(&url).map_err(|e| {
        format!("cannot reach MariaDB at {} ({e}); start it with `cargo xtask services up`", redact(&url))
    })?;
    let manager = AsyncDieselConnectionManager::<AsyncMysqlConnection>::new(url.clone());
    let pool = Pool::builder(manager).max_size(2).build()?;
    let sqlx_pool = sqlx::mysql::MySqlPoolOptions::new().max_connections(2).connect(&url).await?;
    let mut fill = |name: &str| -> BenchResult<Duration> {
        let outbox = outbox_diesel::mysql::MysqlOutbox::new(Tables::new(name)?);
        outbox.migrate(&mut conn)?;
        let started = Instant::now();
        for tx in backlog(total, aggregates)? {
            conn.transaction(|c| outbox.enqueue_batch(c, &tx).map_err(Box::<dyn std::error::Error>::from))
                .map_err(|e| e.to_string())?;
        }
        let took = started.elapsed();
        conn.batch_execute(&format!("ANALYZE TABLE `{name}`, `{name}_aggregates`"))?;
        Ok(took)
    };
    let mut figures = Figures { enqueue: 0.0, diesel: 0.0, sqlx: 0.0 };
    for (round, diesel) in ORDER.into_iter().enumerate() {
        let name = unique("dbench");
        let took = fill(&name)?;
        if diesel {
            figures.enqueue += rate(took, total) / 2.0;
            let store = outbox_diesel::mysql::MysqlOutbox::new(Tables::new(&*name)?).store(pool.clone());
            figures.diesel += drain(store, total).await? / 2.0;
        } else {
            let store = outbox_sqlx::MySqlOutbox::new(outbox_sqlx::Tables::new(&*name)?).store(sqlx_pool.clone());
            figures.sqlx += drain(store, total).await? / 2.0;
        }
        fill_done(round);
        MysqlConnection::establish(&url)?.batch_execute(&format!("DROP TABLE `{name}`, `{name}_aggregates`"))?;
    }
    Ok(figures)
}

async fn sqlite(total: usize, aggregates: usize) -> BenchResult<Figures> {
    let dir = tempfile::tempdir()?;
    let fill = |file: &str| -> BenchResult<(Duration, String)> {
        let path = dir.path().join(file).to_string_lossy().into_owned();
        let mut conn = SqliteConnection::establish(&path)?;
        conn.batch_execute("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;")?;
        let outbox = outbox_diesel::sqlite::SqliteOutbox::default();
        outbox.migrate(&mut conn)?;
        let started = Instant::now();
        for tx in backlog(total, aggregates)? {
            conn.immediate_transaction(|c| outbox.enqueue_batch(c, &tx).map_err(Box::<dyn std::error::Error>::from))
                .map_err(|e| e.to_string())?;
        }
        let took = started.elapsed();
        conn.batch_execute("ANALYZE")?;
        Ok((took, path))
    };
    let mut figures = Figures { enqueue: 0.0, diesel: 0.0, sqlx: 0.0 };
    for (round, diesel) in ORDER.into_iter().enumerate() {
        let (took, path) = fill(&format!("round-{round}.db"))?;
        if diesel {
            figures.enqueue += rate(took, total) / 2.0;
            figures.diesel += drain(outbox_diesel::sqlite::SqliteStore::open(&path)?, total).await? / 2.0;
        } else {
            let options = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&path)
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(5));
            let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(2).connect_with(options).await?;
            let store = outbox_sqlx::SqliteOutbox::new(outbox_sqlx::Tables::default()).store(pool.clone());
            figures.sqlx += drain(store, total).await? / 2.0;
            pool.close().await;
        }
        fill_done(round);
        std::fs::remove_file(&path)?;
    }
    Ok(figures)
}

fn main() -> BenchResult<()> {
    let total = env_usize("OUTBOX_BENCH_ENTRIES", 200_000);
    let aggregates = env_usize("OUTBOX_BENCH_AGGREGATES", 1_000).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let pg = runtime.block_on(postgres(total, aggregates))?;
    print("PostgreSQL", total, aggregates, &pg);
    let my = runtime.block_on(mysql(total, aggregates))?;
    print("MariaDB", total, aggregates, &my);
    let lite = runtime.block_on(sqlite(total, aggregates))?;
    print("SQLite (file)", total, aggregates, &lite);
    Ok(())
}
