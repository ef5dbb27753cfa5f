//! Drains a SQLite backlog (a file in WAL mode) through `outbox_core::NoopPublisher` with 1, 2
//! and 4 relays (each relay on its own pool; SQLite has one writer, so more relays only queue on
//! the write lock), and, in the same run, a hand-written naive loop with the least SQL on a
//! single connection: per batch `BEGIN IMMEDIATE; UPDATE … SET status = 'processing' WHERE id IN
//! (SELECT id … WHERE status = 'pending' ORDER BY created_at LIMIT n) RETURNING …; COMMIT`, then
//! one `UPDATE … SET status = 'published' WHERE id IN (…)`, on a plain table of the same shape
//! with a partial index over pending rows.
//!
//! Run: `cargo bench -p outbox-sqlx --bench sqlite_drain`. Sizes: `OUTBOX_BENCH_ENTRIES` (default
//! 200000), `OUTBOX_BENCH_AGGREGATES` (default 1000), `OUTBOX_BENCH_RELAYS` (default `1,2,4`).
//! The database file goes to a temporary directory (`TMPDIR`).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{BenchResult, env_str, env_usize, load_note, rate, row, say, thousands, unique};
use outbox_core::Timestamp;
use outbox_sqlx::{SqliteOutbox, SqliteStore, Tables};
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

const COLUMNS: &str = "id BLOB NOT NULL PRIMARY KEY, aggregate_type TEXT NOT NULL, aggregate_id TEXT NOT NULL, \
     sequence INTEGER NOT NULL, event_type TEXT NOT NULL, payload BLOB NOT NULL, content_type TEXT NOT NULL, \
     headers TEXT NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, \
     created_at INTEGER NOT NULL, available_at INTEGER NOT NULL, published_at INTEGER, last_error TEXT, \
     lease_holder TEXT, lease_expires_at INTEGER";

fn options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(60))
}

async fn pool(path: &Path, max: u32) -> BenchResult<SqlitePool> {
    Ok(SqlitePoolOptions::new().max_connections(max).connect_with(options(path)).await?)
}

async fn fill_entries(pool: &SqlitePool, table: &str, total: usize, aggregates: usize) -> BenchResult<()> {
    let base = Timestamp::now().as_micros() - 3_600_000_000;
    let sql = format!(
        r#"INSERT INTO "{table}" (id, aggregate_type, aggregate_id, sequence, event_type, payload, content_type,
             headers, status, attempts, created_at, available_at)
           WITH RECURSIVE s(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM s WHERE n < {last})
           SELECT unhex(printf('%032x', n)), 'order', 'o-' || (n % {aggregates}), n / {aggregates} + 1,
             'order.changed',
             CAST('{{"n":' || n || ',"pad":"' || substr(printf('%.*c', 180, 'x'), 1, 180 - length(n)) || '"}}' AS BLOB),
             'application/json', '[]', 'pending', 0, {base} + n, {base}
           FROM s"#,
        last = total - 1
    );
    sqlx::raw_sql(&sql).execute(pool).await?;
    sqlx::raw_sql(&format!(r#"ANALYZE "{table}""#)).execute(pool).await?;
    Ok(())
}

fn placeholders(n: usize) -> String {
    let mut s = "?, ".repeat(n);
    s.truncate(s.len().saturating_sub(2));
    s
}

fn naive_split(batches: u32, claim: Duration, complete: Duration) -> String {
    let n = f64::from(batches.max(1));
    format!(
        "per batch: claim {:.1} ms + complete {:.1} ms",
        claim.as_secs_f64() * 1000.0 / n,
        complete.as_secs_f64() * 1000.0 / n
    )
}

async fn naive(path: &Path, total: usize, aggregates: usize, batch: i64) -> BenchResult<(Duration, String)> {
    let table = unique("bench_naive");
    let admin = pool(path, 1).await?;
    sqlx::raw_sql(&format!(
        r#"CREATE TABLE "{table}" ({COLUMNS});
           CREATE INDEX "{table}_pending" ON "{table}" (created_at) WHERE status = 'pending';"#
    ))
    .execute(&admin)
    .await?;
    fill_entries(&admin, &table, total, aggregates).await?;
    admin.close().await;
    let mut conn = sqlx::SqliteConnection::connect_with(&options(path)).await?;
    let claim = format!(
        r#"UPDATE "{table}" SET status = 'processing' WHERE id IN (SELECT id FROM "{table}"
             WHERE status = 'pending' ORDER BY created_at LIMIT ?)
           RETURNING id, aggregate_type, aggregate_id, sequence, event_type, payload, content_type, headers"#
    );
    type Claimed = (Vec<u8>, String, String, i64, String, Vec<u8>, String, String);
    let started = Instant::now();
    let mut done = 0;
    let (mut batches, mut claim_t, mut complete_t) = (0u32, Duration::ZERO, Duration::ZERO);
    loop {
        let t0 = Instant::now();
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let rows: Vec<Claimed> = sqlx::query_as(&claim).bind(batch).fetch_all(&mut *tx).await?;
        tx.commit().await?;
        if rows.is_empty() {
            break;
        }
        claim_t += t0.elapsed();
        let t1 = Instant::now();
        let sql = format!(
            r#"UPDATE "{table}" SET status = 'published', published_at = ? WHERE id IN ({})"#,
            placeholders(rows.len())
        );
        let mut q = sqlx::query(&sql).bind(Timestamp::now().as_micros());
        for r in &rows {
            q = q.bind(&r.0);
        }
        q.execute(&mut conn).await?;
        complete_t += t1.elapsed();
        batches += 1;
        done += rows.len();
    }
    let took = started.elapsed();
    conn.close().await?;
    if done != total {
        return Err(format!("naive loop published {done} of {total}").into());
    }
    Ok((took, naive_split(batches, claim_t, complete_t)))
}

async fn adapter(path: &Path, total: usize, aggregates: usize, relays: usize) -> BenchResult<(Duration, String)> {
    let name = unique("bench_drain");
    let outbox = SqliteOutbox::new(Tables::new(name.clone())?);
    let admin = pool(path, 1).await?;
    outbox.migrate(&admin).await?;
    let agg_table = outbox.tables().aggregates_name();
    fill_entries(&admin, &name, total, aggregates).await?;
    sqlx::raw_sql(&format!(
        r#"INSERT INTO "{agg_table}" (aggregate_type, aggregate_id, next_sequence, unpublished, available_at)
           SELECT aggregate_type, aggregate_id, max(sequence), count(*), min(available_at)
           FROM "{name}" GROUP BY aggregate_type, aggregate_id;
           ANALYZE "{agg_table}";"#
    ))
    .execute(&admin)
    .await?;
    let mut stores: Vec<SqliteStore> = Vec::new();
    for _ in 0..relays {
        stores.push(outbox.store(pool(path, 2).await?));
    }
    let pools: Vec<SqlitePool> = stores.iter().map(|s| s.pool().clone()).collect();
    let (took, split) = common::drain(stores, total, 1).await?;
    for p in pools {
        p.close().await;
    }
    let (published, out_of_order): (i64, i64) = sqlx::query_as(&format!(
        r#"SELECT coalesce(sum(status = 'published'), 0), coalesce(sum(published_at < prev), 0)
           FROM (SELECT status, published_at,
                   lag(published_at) OVER (PARTITION BY aggregate_type, aggregate_id ORDER BY sequence) AS prev
                 FROM "{name}")"#
    ))
    .fetch_one(&admin)
    .await?;
    admin.close().await;
    if published as usize != total || out_of_order != 0 {
        return Err(format!(
            "{relays} relay(s): {published} of {total} published, {out_of_order} published before an earlier entry"
        )
        .into());
    }
    Ok((took, split.describe()))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> BenchResult<()> {
    let total = env_usize("OUTBOX_BENCH_ENTRIES", 200_000).max(1);
    let aggregates = env_usize("OUTBOX_BENCH_AGGREGATES", 1_000).max(1);
    let relay_counts: Vec<usize> =
        env_str("OUTBOX_BENCH_RELAYS", "1,2,4").split(',').filter_map(|s| s.trim().parse().ok()).collect();
    let dir = tempfile::tempdir()?;
    let size = format!("{} x 200 B, {} aggregates", thousands(total as f64), thousands(aggregates as f64));
    let version: String = {
        let p = pool(&dir.path().join("version.db"), 1).await?;
        let v = sqlx::query_scalar("SELECT sqlite_version()").fetch_one(&p).await?;
        p.close().await;
        v
    };

    say(format!("sqlite {version} naive loop, {size}"));
    let (naive_took, naive_split) = naive(&dir.path().join("naive.db"), total, aggregates, 1000).await?;
    let naive_rate = rate(total, naive_took);
    row(
        "sqlite",
        &format!("naive loop (BEGIN IMMEDIATE; UPDATE … RETURNING, then UPDATE IN), {size}"),
        format!("{naive_rate:.0}"),
        "entries/s",
        &format!(
            "SQLite {version}, file, WAL, synchronous=NORMAL; 1 connection, batches of 1,000, no per-aggregate order; {naive_split}; {}",
            load_note()
        ),
    );
    let mut rates = Vec::new();
    for &relays in &relay_counts {
        say(format!("sqlite adapter, {relays} relay(s), {size}"));
        let db = dir.path().join(format!("adapter-{relays}.db"));
        let (took, split) = adapter(&db, total, aggregates, relays).await?;
        let r = rate(total, took);
        rates.push((relays, r));
        row(
            "sqlite",
            &format!(
                "adapter drain, {relays} relay(s), Relay::run default (1 batch in flight), no-op publisher, {size}"
            ),
            format!("{r:.0}"),
            "entries/s",
            &format!(
                "same file settings; batches of 1,000, {} per aggregate, order kept (checked); {split}; {}",
                common::relay_config().max_per_aggregate,
                load_note()
            ),
        );
    }
    if let Some((_, one)) = rates.iter().find(|(k, _)| *k == 1) {
        row(
            "sqlite",
            "adapter 1 relay ÷ naive loop",
            format!("{:.2}", one / naive_rate),
            "ratio",
            &format!("adapter {}/s, naive {}/s, same run", thousands(*one), thousands(naive_rate)),
        );
    }
    Ok(())
}
