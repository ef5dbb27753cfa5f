//! Drains a MySQL/MariaDB backlog through `outbox_core::NoopPublisher` with 1, 2 and 4 relays
//! (each relay on its own pool), and, in the same run on the same database, a hand-written naive
//! loop with the least SQL: per batch one short transaction (`SELECT … WHERE status = 'pending'
//! ORDER BY created_at LIMIT n FOR UPDATE SKIP LOCKED` + `UPDATE … SET status = 'processing'
//! WHERE id IN (…)`), then one `UPDATE … SET status = 'published' WHERE id IN (…)`, on a plain
//! table of the same shape with an index on (status, created_at).
//!
//! Tables are filled in SQL from MariaDB's `seq_0_to_<n>` sequence tables (MySQL 8 has none: use
//! MariaDB, as `cargo xtask services up` does).
//!
//! Run: `cargo bench -p outbox-sqlx --bench mysql_drain`. Sizes: `OUTBOX_BENCH_ENTRIES` (default
//! 200000), `OUTBOX_BENCH_AGGREGATES` (default 1000), `OUTBOX_BENCH_RELAYS` (default `1,2,4`).
//! Server: `OUTBOX_TEST_MYSQL_URL` (default `mysql://root@127.0.0.1:3306/test`).

mod common;

use std::time::{Duration, Instant};

use common::{BenchResult, env_str, env_usize, load_note, mysql_url, rate, redact, row, say, thousands, unique};
use outbox_sqlx::{MySqlOutbox, MySqlStore, Tables};
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};

const COLUMNS: &str = "id BINARY(16) NOT NULL PRIMARY KEY, aggregate_type VARCHAR(255) NOT NULL, \
     aggregate_id VARCHAR(255) NOT NULL, sequence BIGINT NOT NULL, event_type VARCHAR(255) NOT NULL, \
     payload LONGBLOB NOT NULL, content_type VARCHAR(255) NOT NULL, headers JSON NOT NULL, \
     status VARCHAR(16) NOT NULL, attempts INT NOT NULL DEFAULT 0, created_at DATETIME(6) NOT NULL, \
     available_at DATETIME(6) NOT NULL, published_at DATETIME(6) NULL, last_error TEXT NULL, \
     lease_holder VARCHAR(255) NULL, lease_expires_at DATETIME(6) NULL";

async fn connect(max: u32) -> BenchResult<MySqlPool> {
    let url = mysql_url();
    MySqlPoolOptions::new().max_connections(max).acquire_timeout(Duration::from_secs(30)).connect(&url).await.map_err(
        |e| {
            format!(
                "cannot reach MySQL/MariaDB at {} ({e}); run `cargo xtask services up` (or set OUTBOX_TEST_MYSQL_URL)",
                redact(&url)
            )
            .into()
        },
    )
}

async fn fill_entries(pool: &MySqlPool, table: &str, total: usize, aggregates: usize) -> BenchResult<()> {
    let sql = format!(
        "INSERT INTO `{table}` (id, aggregate_type, aggregate_id, sequence, event_type, payload, content_type, \
           headers, status, attempts, created_at, available_at) \
         SELECT UNHEX(LPAD(HEX(seq), 32, '0')), 'order', CONCAT('o-', seq % {aggregates}), \
           seq DIV {aggregates} + 1, 'order.changed', \
           CONCAT('{{\"n\":', seq, ',\"pad\":\"', REPEAT('x', 180 - LENGTH(seq)), '\"}}'), \
           'application/json', '[]', 'pending', 0, \
           UTC_TIMESTAMP(6) - INTERVAL 1 HOUR + INTERVAL seq MICROSECOND, UTC_TIMESTAMP(6) - INTERVAL 1 HOUR \
         FROM seq_0_to_{last}",
        last = total - 1
    );
    sqlx::raw_sql(&sql).execute(pool).await?;
    sqlx::raw_sql(&format!("ANALYZE TABLE `{table}`")).execute(pool).await?;
    Ok(())
}

async fn drop_tables(pool: &MySqlPool, tables: &[&str]) -> BenchResult<()> {
    for t in tables {
        sqlx::raw_sql(&format!("DROP TABLE IF EXISTS `{t}`")).execute(pool).await?;
    }
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

async fn naive(admin: &MySqlPool, total: usize, aggregates: usize, batch: usize) -> BenchResult<(Duration, String)> {
    let table = unique("bench_naive");
    sqlx::raw_sql(&format!(
        "CREATE TABLE `{table}` ({COLUMNS}, KEY `{table}_pending` (status, created_at)) \
         ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
    ))
    .execute(admin)
    .await?;
    fill_entries(admin, &table, total, aggregates).await?;
    let pool = connect(1).await?;
    let select = format!(
        "SELECT id, aggregate_type, aggregate_id, sequence, event_type, payload, content_type, \
           CAST(headers AS CHAR) FROM `{table}` WHERE status = 'pending' ORDER BY created_at LIMIT ? \
         FOR UPDATE SKIP LOCKED"
    );
    // Text columns come back as bytes: MariaDB flags `utf8mb4_bin` columns as binary.
    type Claimed = (Vec<u8>, Vec<u8>, Vec<u8>, i64, Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>);
    let started = Instant::now();
    let mut done = 0;
    let (mut batches, mut claim_t, mut complete_t) = (0u32, Duration::ZERO, Duration::ZERO);
    loop {
        let t0 = Instant::now();
        let mut tx = pool.begin().await?;
        let rows: Vec<Claimed> = sqlx::query_as(&select).bind(batch as i64).fetch_all(&mut *tx).await?;
        if rows.is_empty() {
            tx.commit().await?;
            break;
        }
        let marks = placeholders(rows.len());
        let sql = format!("UPDATE `{table}` SET status = 'processing' WHERE id IN ({marks})");
        let mut q = sqlx::query(&sql);
        for r in &rows {
            q = q.bind(&r.0);
        }
        q.execute(&mut *tx).await?;
        tx.commit().await?;
        claim_t += t0.elapsed();
        let t1 = Instant::now();
        let sql =
            format!("UPDATE `{table}` SET status = 'published', published_at = UTC_TIMESTAMP(6) WHERE id IN ({marks})");
        let mut q = sqlx::query(&sql);
        for r in &rows {
            q = q.bind(&r.0);
        }
        q.execute(&pool).await?;
        complete_t += t1.elapsed();
        batches += 1;
        done += rows.len();
    }
    let took = started.elapsed();
    pool.close().await;
    if done != total {
        return Err(format!("naive loop published {done} of {total}").into());
    }
    drop_tables(admin, &[&table]).await?;
    Ok((took, naive_split(batches, claim_t, complete_t)))
}

async fn adapter(admin: &MySqlPool, total: usize, aggregates: usize, relays: usize) -> BenchResult<(Duration, String)> {
    let name = unique("bench_drain");
    let outbox = MySqlOutbox::new(Tables::new(name.clone())?);
    outbox.migrate(admin).await?;
    let agg_table = outbox.tables().aggregates_name();
    fill_entries(admin, &name, total, aggregates).await?;
    sqlx::raw_sql(&format!(
        "INSERT INTO `{agg_table}` (aggregate_type, aggregate_id, next_sequence, unpublished, available_at) \
         SELECT aggregate_type, aggregate_id, MAX(sequence), COUNT(*), MIN(available_at) \
         FROM `{name}` GROUP BY aggregate_type, aggregate_id"
    ))
    .execute(admin)
    .await?;
    sqlx::raw_sql(&format!("ANALYZE TABLE `{agg_table}`")).execute(admin).await?;
    let mut stores: Vec<MySqlStore> = Vec::new();
    for _ in 0..relays {
        stores.push(outbox.store(connect(2).await?));
    }
    let pools: Vec<MySqlPool> = stores.iter().map(|s| s.pool().clone()).collect();
    let (took, split) = common::drain(stores, total, 1).await?;
    for p in pools {
        p.close().await;
    }
    let (published, out_of_order): (i64, i64) = sqlx::query_as(&format!(
        "SELECT CAST(COALESCE(SUM(status = 'published'), 0) AS SIGNED), \
           CAST(COALESCE(SUM(published_at < prev), 0) AS SIGNED) \
         FROM (SELECT status, published_at, LAG(published_at) OVER \
                 (PARTITION BY aggregate_type, aggregate_id ORDER BY sequence) AS prev FROM `{name}`) x"
    ))
    .fetch_one(admin)
    .await?;
    if published as usize != total || out_of_order != 0 {
        return Err(format!(
            "{relays} relay(s): {published} of {total} published, {out_of_order} published before an earlier entry"
        )
        .into());
    }
    drop_tables(admin, &[&name, &agg_table]).await?;
    Ok((took, split.describe()))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> BenchResult<()> {
    let total = env_usize("OUTBOX_BENCH_ENTRIES", 200_000).max(1);
    let aggregates = env_usize("OUTBOX_BENCH_AGGREGATES", 1_000).max(1);
    let relay_counts: Vec<usize> =
        env_str("OUTBOX_BENCH_RELAYS", "1,2,4").split(',').filter_map(|s| s.trim().parse().ok()).collect();
    let admin = connect(2).await?;
    let version: String = sqlx::query_scalar("SELECT VERSION()").fetch_one(&admin).await?;
    let size = format!("{} x 200 B, {} aggregates", thousands(total as f64), thousands(aggregates as f64));

    say(format!("mysql ({version}) naive loop, {size}"));
    let (naive_took, naive_split) = naive(&admin, total, aggregates, 1000).await?;
    let naive_rate = rate(total, naive_took);
    row(
        "mariadb",
        &format!("naive SKIP LOCKED loop (SELECT … FOR UPDATE SKIP LOCKED + UPDATE IN, then UPDATE IN), {size}"),
        format!("{naive_rate:.0}"),
        "entries/s",
        &format!("{version}; 1 connection, batches of 1,000, no per-aggregate order; {naive_split}; {}", load_note()),
    );
    let mut rates = Vec::new();
    for &relays in &relay_counts {
        say(format!("mysql adapter, {relays} relay(s), {size}"));
        let (took, split) = adapter(&admin, total, aggregates, relays).await?;
        let r = rate(total, took);
        rates.push((relays, r));
        row(
            "mariadb",
            &format!(
                "adapter drain, {relays} relay(s), Relay::run default (1 batch in flight), no-op publisher, {size}"
            ),
            format!("{r:.0}"),
            "entries/s",
            &format!(
                "batches of 1,000, {} per aggregate, order kept (checked); {split}; {}",
                common::relay_config().max_per_aggregate,
                load_note()
            ),
        );
    }
    let of = |n: usize| rates.iter().find(|(k, _)| *k == n).map(|(_, r)| *r);
    if let Some(one) = of(1) {
        row(
            "mariadb",
            "adapter 1 relay ÷ naive loop",
            format!("{:.2}", one / naive_rate),
            "ratio",
            &format!("adapter {}/s, naive {}/s, same run", thousands(one), thousands(naive_rate)),
        );
        for n in [2, 4] {
            if let Some(r) = of(n) {
                row(
                    "mariadb",
                    &format!("adapter {n} relays ÷ 1 relay"),
                    format!("{:.2}", r / one),
                    "ratio",
                    &format!("{n} relays {}/s, 1 relay {}/s", thousands(r), thousands(one)),
                );
            }
        }
    }
    admin.close().await;
    Ok(())
}
