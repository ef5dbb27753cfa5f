//! Drains a PostgreSQL backlog through `outbox_core::NoopPublisher` with 1, 2 and 4 relays
//! (each relay on its own pool, `Relay::run` with the default one batch in flight, in a spawned
//! task), one relay with two batches in flight, and, in the same run on the
//! same database, a hand-written naive loop doing the same work with the least SQL: one
//! `UPDATE … SET status = 'processing' WHERE id IN (SELECT id … WHERE status = 'pending'
//! ORDER BY created_at LIMIT n FOR UPDATE SKIP LOCKED) RETURNING …` per batch, then one
//! `UPDATE … SET status = 'published' WHERE id = ANY($1)` per batch, on a plain table of the same
//! shape with a partial index over pending rows.
//!
//! Every case gets a fresh table filled in SQL (`generate_series`), then `VACUUM ANALYZE`.
//!
//! Cases alternate in `OUTBOX_BENCH_ROUNDS` rounds (default 3); a rate is all entries over all time.
//!
//! Run: `cargo bench -p outbox-sqlx --bench pg_drain`. Sizes: `OUTBOX_BENCH_ENTRIES` (default
//! 200000), `OUTBOX_BENCH_AGGREGATES` (default 1000), `OUTBOX_BENCH_RELAYS` (default `1,2,4`).
//! Server: `OUTBOX_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`).

mod common;

use std::time::{Duration, Instant};

use common::{BenchResult, env_str, env_usize, load_note, pg_connect as connect, rate, row, say, thousands, unique};
use outbox_sqlx::{PgOutbox, PgStore, Tables};
use sqlx::postgres::PgPool;
use uuid::Uuid;

const COLUMNS: &str = "id uuid NOT NULL PRIMARY KEY, aggregate_type text NOT NULL, aggregate_id text NOT NULL, \
     sequence bigint NOT NULL, event_type text NOT NULL, payload bytea NOT NULL, content_type text NOT NULL, \
     headers jsonb NOT NULL, status text NOT NULL, attempts integer NOT NULL DEFAULT 0, \
     created_at timestamptz NOT NULL, available_at timestamptz NOT NULL, published_at timestamptz, \
     last_error text, lease_holder text, lease_expires_at timestamptz";

/// Fills `table` (adapter's columns) with `total` pending entries over `aggregates` aggregates,
/// sequences 1.. per aggregate in id order, ~200-byte JSON payloads.
async fn fill_entries(pool: &PgPool, table: &str, total: usize, aggregates: usize) -> BenchResult<()> {
    let sql = format!(
        r#"INSERT INTO "{table}" (id, aggregate_type, aggregate_id, sequence, event_type, payload, content_type,
             headers, status, attempts, created_at, available_at)
           SELECT lpad(to_hex(n), 32, '0')::uuid, 'order', 'o-' || (n % $2), n / $2 + 1, 'order.changed',
             convert_to('{{"n":' || n || ',"pad":"' || repeat('x', 180 - length(n::text)) || '"}}', 'UTF8'),
             'application/json', '[]'::jsonb, 'pending', 0,
             now() - interval '1 hour' + n * interval '1 microsecond', now() - interval '1 hour'
           FROM generate_series(0, $1 - 1) AS n"#
    );
    sqlx::query(&sql).bind(total as i64).bind(aggregates as i64).execute(pool).await?;
    Ok(())
}

/// Builds the aggregates rows that writers would have left for the entries in `entries`.
async fn fill_aggregates(pool: &PgPool, entries: &str, aggregates: &str) -> BenchResult<()> {
    let sql = format!(
        r#"INSERT INTO "{aggregates}" (aggregate_type, aggregate_id, next_sequence, unpublished, available_at)
           SELECT aggregate_type, aggregate_id, max(sequence),
             count(*) FILTER (WHERE status <> 'published'),
             COALESCE(min(available_at) FILTER (WHERE status <> 'published'), '9999-12-31T00:00:00Z')
           FROM "{entries}" GROUP BY aggregate_type, aggregate_id"#
    );
    sqlx::query(&sql).execute(pool).await?;
    Ok(())
}

async fn vacuum(pool: &PgPool, tables: &[&str]) -> BenchResult<()> {
    for t in tables {
        sqlx::raw_sql(&format!(r#"VACUUM ANALYZE "{t}""#)).execute(pool).await?;
    }
    Ok(())
}

async fn drop_tables(pool: &PgPool, tables: &[&str]) -> BenchResult<()> {
    for t in tables {
        sqlx::raw_sql(&format!(r#"DROP TABLE IF EXISTS "{t}" CASCADE"#)).execute(pool).await?;
    }
    Ok(())
}

/// The naive loop: one claiming UPDATE … RETURNING and one completing UPDATE per batch.
fn naive_split(batches: u32, claim: Duration, complete: Duration) -> String {
    let n = f64::from(batches.max(1));
    format!(
        "per batch: claim {:.1} ms + complete {:.1} ms",
        claim.as_secs_f64() * 1000.0 / n,
        complete.as_secs_f64() * 1000.0 / n
    )
}

async fn naive(admin: &PgPool, total: usize, aggregates: usize, batch: i64) -> BenchResult<(Duration, String)> {
    let table = unique("bench_naive");
    sqlx::raw_sql(&format!(
        r#"CREATE TABLE "{table}" ({COLUMNS});
           CREATE INDEX "{table}_pending" ON "{table}" (created_at) WHERE status = 'pending';"#
    ))
    .execute(admin)
    .await?;
    fill_entries(admin, &table, total, aggregates).await?;
    vacuum(admin, &[&table]).await?;
    let pool = connect(1).await?;
    let claim = format!(
        r#"UPDATE "{table}" SET status = 'processing' WHERE id IN (SELECT id FROM "{table}"
             WHERE status = 'pending' ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED)
           RETURNING id, aggregate_type, aggregate_id, sequence, event_type, payload, content_type, headers::text"#
    );
    let complete = format!(r#"UPDATE "{table}" SET status = 'published', published_at = now() WHERE id = ANY($1)"#);
    type Claimed = (Uuid, String, String, i64, String, Vec<u8>, String, String);
    let started = Instant::now();
    let mut done = 0;
    let (mut batches, mut claim_t, mut complete_t) = (0u32, Duration::ZERO, Duration::ZERO);
    loop {
        let t0 = Instant::now();
        let rows: Vec<Claimed> = sqlx::query_as(&claim).bind(batch).fetch_all(&pool).await?;
        if rows.is_empty() {
            break;
        }
        claim_t += t0.elapsed();
        let t1 = Instant::now();
        let ids: Vec<Uuid> = rows.iter().map(|r| r.0).collect();
        sqlx::query(&complete).bind(&ids).execute(&pool).await?;
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

/// The adapter with `relays` relays, each on its own pool, running `Relay::run` with `in_flight`
/// batches in flight.
async fn adapter(
    admin: &PgPool,
    total: usize,
    aggregates: usize,
    relays: usize,
    in_flight: usize,
) -> BenchResult<(Duration, String)> {
    let name = unique("bench_drain");
    let outbox = PgOutbox::new(Tables::new(name.clone())?);
    outbox.migrate(admin).await?;
    let agg_table = outbox.tables().aggregates_name();
    fill_entries(admin, &name, total, aggregates).await?;
    fill_aggregates(admin, &name, &agg_table).await?;
    vacuum(admin, &[&name, &agg_table]).await?;
    let mut stores: Vec<PgStore> = Vec::new();
    for _ in 0..relays {
        stores.push(outbox.store(connect(2).await?));
    }
    let pools: Vec<PgPool> = stores.iter().map(|s| s.pool().clone()).collect();
    let (took, split) = common::drain(stores, total, in_flight).await?;
    for p in pools {
        p.close().await;
    }
    // Everything published once, and per aggregate in sequence order (published_at never goes
    // back as the sequence grows).
    let (published, out_of_order): (i64, i64) = sqlx::query_as(&format!(
        r#"SELECT count(*) FILTER (WHERE status = 'published'),
             count(*) FILTER (WHERE published_at < prev)
           FROM (SELECT status, published_at,
                   lag(published_at) OVER (PARTITION BY aggregate_type, aggregate_id ORDER BY sequence) AS prev
                 FROM "{name}") x"#
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
    sqlx::raw_sql(&format!(r#"DROP FUNCTION IF EXISTS "{name}_notify"() CASCADE"#)).execute(admin).await?;
    Ok((took, split.describe()))
}

/// One case of the bench: the naive loop, or the adapter with some relays and batches in flight.
#[derive(Clone, Copy, PartialEq)]
enum Case {
    Naive,
    Adapter { relays: usize, in_flight: usize },
}

/// A case's time over all rounds, and the last round's notes.
struct Tally {
    case: Case,
    took: Duration,
    split: String,
    load: String,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> BenchResult<()> {
    let total = env_usize("OUTBOX_BENCH_ENTRIES", 200_000);
    let aggregates = env_usize("OUTBOX_BENCH_AGGREGATES", 1_000);
    let rounds = env_usize("OUTBOX_BENCH_ROUNDS", 3).max(1);
    let relay_counts: Vec<usize> =
        env_str("OUTBOX_BENCH_RELAYS", "1,2,4").split(',').filter_map(|s| s.trim().parse().ok()).collect();
    let admin = connect(2).await?;
    let size = format!("{} x 200 B, {} aggregates", thousands(total as f64), thousands(aggregates as f64));

    // Cases alternate in rounds, so drift on a shared machine (other load, autovacuum) hits each
    // alike; a case's rate is all its entries over all its time.
    let mut tallies: Vec<Tally> = std::iter::once(Case::Naive)
        .chain(relay_counts.iter().map(|&relays| Case::Adapter { relays, in_flight: 1 }))
        .chain(std::iter::once(Case::Adapter { relays: 1, in_flight: 2 }))
        .map(|case| Tally { case, took: Duration::ZERO, split: String::new(), load: String::new() })
        .collect();
    for round in 1..=rounds {
        for tally in &mut tallies {
            let (took, split) = match tally.case {
                Case::Naive => {
                    say(format!("round {round}/{rounds}: postgres naive loop, {size}"));
                    naive(&admin, total, aggregates, 1000).await?
                }
                Case::Adapter { relays, in_flight } => {
                    say(format!("round {round}/{rounds}: postgres adapter, {relays} relay(s), {in_flight} in flight"));
                    adapter(&admin, total, aggregates, relays, in_flight).await?
                }
            };
            tally.took += took;
            tally.split = split;
            tally.load = load_note();
        }
    }
    let entries = total * rounds;
    let rate_of = |case: Case| tallies.iter().find(|t| t.case == case).map(|t| rate(entries, t.took));
    let per_aggregate = common::relay_config().max_per_aggregate;
    let of_rounds = format!("{rounds} rounds alternating, last round's split");
    for t in &tallies {
        let r = rate(entries, t.took);
        let (case, note) = match t.case {
            Case::Naive => (
                format!("naive SKIP LOCKED loop (UPDATE … RETURNING + UPDATE = ANY), {size}"),
                format!("1 connection, batches of 1,000, no per-aggregate order; {of_rounds}: {}", t.split),
            ),
            Case::Adapter { relays, in_flight: 1 } => (
                format!(
                    "adapter drain, {relays} relay(s), Relay::run default (1 batch in flight), no-op publisher, {size}"
                ),
                format!(
                    "batches of 1,000, {per_aggregate} per aggregate, order kept (checked); {of_rounds}: {}",
                    t.split
                ),
            ),
            Case::Adapter { relays, in_flight } => (
                format!(
                    "adapter drain, {relays} relay(s), Relay::run with max_in_flight = {in_flight}, no-op publisher, {size}"
                ),
                format!(
                    "batches of 1,000, {per_aggregate} per aggregate, order kept (checked); {of_rounds}: {}",
                    t.split
                ),
            ),
        };
        row("postgres", &case, format!("{r:.0}"), "entries/s", &format!("{note}; {}", t.load));
    }
    let Some(naive_rate) = rate_of(Case::Naive) else { return Ok(()) };
    if let Some(running) = rate_of(Case::Adapter { relays: 1, in_flight: 2 }) {
        row(
            "postgres",
            "adapter 1 relay (max_in_flight = 2) ÷ naive loop",
            format!("{:.2}", running / naive_rate),
            "ratio",
            &format!("adapter {}/s, naive {}/s, same run", thousands(running), thousands(naive_rate)),
        );
    }
    if let Some(one) = rate_of(Case::Adapter { relays: 1, in_flight: 1 }) {
        row(
            "postgres",
            "adapter 1 relay (default, 1 batch in flight) ÷ naive loop (target ≥ 1.5)",
            format!("{:.2}", one / naive_rate),
            "ratio",
            &format!("adapter {}/s, naive {}/s, same run", thousands(one), thousands(naive_rate)),
        );
        for n in [2, 4] {
            if let Some(r) = rate_of(Case::Adapter { relays: n, in_flight: 1 }) {
                let target = if n == 2 { " (target ≥ 1.3)" } else { "" };
                row(
                    "postgres",
                    &format!("adapter {n} relays ÷ 1 relay{target}"),
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
