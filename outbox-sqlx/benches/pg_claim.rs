//! Claim time on PostgreSQL with 1,000,000 published rows in the entries table vs none, the
//! same pending backlog in both (default 1,000 entries, one per aggregate over 1,000
//! aggregates, after 1,000 published entries each in the big table).
//!
//! Both outboxes are filled in SQL (`generate_series`, straight into the adapter's schema, with
//! aggregates rows consistent with the entries), then `VACUUM ANALYZE`d. Each sample times one
//! `PgStore::claim` (the relay's request: batches of 1,000, 20 per aggregate), then gives the
//! batch back with a `released` completion (not timed), so the backlog stays the same. Samples
//! alternate between the two tables; the figure is the ratio of the medians.
//!
//! Run: `cargo bench -p outbox-sqlx --bench pg_claim`. Sizes: `OUTBOX_BENCH_PUBLISHED` (default
//! 1000000), `OUTBOX_BENCH_PENDING` (default 1000, also the number of aggregates),
//! `OUTBOX_BENCH_SAMPLES` (default 200 per table and case).

mod common;

use std::time::{Duration, Instant};

use common::{
    BenchResult, env_usize, load_note, median, ms, percentile, pg_connect as connect, row, say, thousands, unique,
};
use outbox_core::{ClaimRequest, Completion, DeadPolicy, Store, Timestamp};
use outbox_sqlx::{ClaimOptions, PgOutbox, PgStore, Tables};
use sqlx::postgres::PgPool;

/// An outbox with `published` published entries spread evenly over `aggregates` aggregates
/// (sequences 1..), then one pending entry per aggregate after them.
async fn outbox_with(admin: &PgPool, published: usize, aggregates: usize) -> BenchResult<PgOutbox> {
    let outbox = PgOutbox::new(Tables::new(unique("bench_claim"))?);
    outbox.migrate(admin).await?;
    let entries = outbox.tables().name().to_string();
    let aggs = outbox.tables().aggregates_name();
    let per = published / aggregates;
    let insert = |status: &str, from: usize, count: usize| {
        let published_at = if status == "published" { "now() - interval '1 hour'" } else { "NULL" };
        format!(
            r#"INSERT INTO "{entries}" (id, aggregate_type, aggregate_id, sequence, event_type, payload, content_type,
                 headers, status, attempts, created_at, available_at, published_at)
               SELECT lpad(to_hex(n), 32, '0')::uuid, 'order', 'o-' || (n % {aggregates}), n / {aggregates} + 1,
                 'order.changed',
                 convert_to('{{"n":' || n || ',"pad":"' || repeat('x', 180 - length(n::text)) || '"}}', 'UTF8'),
                 'application/json', '[]'::jsonb, '{status}', 0,
                 now() - interval '2 hours' + n * interval '1 microsecond', now() - interval '2 hours', {published_at}
               FROM generate_series({from}, {last}) AS n"#,
            last = from + count - 1
        )
    };
    if per > 0 {
        // In chunks, so one statement never holds a huge transaction.
        let chunk = 100_000 - 100_000 % aggregates;
        let mut from = 0;
        let end = per * aggregates;
        while from < end {
            let count = chunk.min(end - from);
            sqlx::raw_sql(&insert("published", from, count)).execute(admin).await?;
            from += count;
        }
    }
    sqlx::raw_sql(&insert("pending", per * aggregates, aggregates)).execute(admin).await?;
    sqlx::raw_sql(&format!(
        r#"INSERT INTO "{aggs}" (aggregate_type, aggregate_id, next_sequence, unpublished, available_at)
           SELECT aggregate_type, aggregate_id, max(sequence),
             count(*) FILTER (WHERE status <> 'published'),
             COALESCE(min(available_at) FILTER (WHERE status <> 'published'), '9999-12-31T00:00:00Z')
           FROM "{entries}" GROUP BY aggregate_type, aggregate_id"#
    ))
    .execute(admin)
    .await?;
    // One statement per call: VACUUM cannot run inside the implicit transaction of a batch.
    for t in [&entries, &aggs] {
        sqlx::raw_sql(&format!(r#"VACUUM ANALYZE "{t}""#)).execute(admin).await?;
    }
    Ok(outbox)
}

/// Times one claim, then releases what it took.
async fn sample(store: &PgStore, n: usize) -> BenchResult<(Duration, usize)> {
    let holder = format!("bench-claim-{n}");
    let now = Timestamp::now();
    let request = ClaimRequest {
        holder: &holder,
        now,
        lease_until: now.saturating_add(Duration::from_secs(30)),
        max_entries: 1000,
        max_per_aggregate: 20,
        on_dead: DeadPolicy::Block,
    };
    let started = Instant::now();
    let batch = store.claim(&request).await?;
    let took = started.elapsed();
    let claimed = batch.len();
    let completion = Completion {
        holder,
        now: Timestamp::now(),
        released: batch.iter().map(|e| e.id).collect(),
        ..Completion::default()
    };
    store.complete(&completion).await?;
    Ok((took, claimed))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> BenchResult<()> {
    let published = env_usize("OUTBOX_BENCH_PUBLISHED", 1_000_000);
    let pending = env_usize("OUTBOX_BENCH_PENDING", 1_000).max(1);
    let samples = env_usize("OUTBOX_BENCH_SAMPLES", 200).max(1);
    let admin = connect(1).await?;
    say(format!("postgres claim: filling {published} published + {pending} pending"));
    let filled = Instant::now();
    let big = outbox_with(&admin, published, pending).await?;
    say(format!("filled in {:.1} s; empty table next", filled.elapsed().as_secs_f64()));
    let empty = outbox_with(&admin, 0, pending).await?;
    let big_pool = connect(2).await?;
    let empty_pool = connect(2).await?;
    let cases = [
        ("default options (adaptive: a full batch of 1,000 aggregates of one entry)", ClaimOptions::default()),
        ("aggregates_per_claim(100): 100 entries per claim", ClaimOptions::aggregates_per_claim(100)),
    ];
    for (label, options) in cases {
        let big_store = big.store(big_pool.clone()).with_options(options);
        let empty_store = empty.store(empty_pool.clone()).with_options(options);
        // Warm up both (caches, prepared statements).
        for n in 0..10 {
            sample(&big_store, n).await?;
            sample(&empty_store, n).await?;
        }
        let (mut with_rows, mut without) = (Vec::with_capacity(samples), Vec::with_capacity(samples));
        let mut claimed = (0, 0);
        for n in 0..samples {
            let (a, b) = if n % 2 == 0 {
                let a = sample(&big_store, n).await?;
                (a, sample(&empty_store, n).await?)
            } else {
                let b = sample(&empty_store, n).await?;
                (sample(&big_store, n).await?, b)
            };
            with_rows.push(a.0);
            without.push(b.0);
            claimed = (a.1, b.1);
        }
        let (m_big, m_empty) = (median(&mut with_rows), median(&mut without));
        let p99 = (percentile(&mut with_rows, 99.0), percentile(&mut without, 99.0));
        let note = format!(
            "{} entries per claim; {samples} samples each, alternating; p99 {} vs {} ms; {}",
            claimed.0,
            ms(p99.0),
            ms(p99.1),
            load_note()
        );
        let size = thousands(published as f64);
        row("postgres", &format!("claim median, {size} published rows, {label}"), ms(m_big), "ms", &note);
        row("postgres", &format!("claim median, empty table, {label}"), ms(m_empty), "ms", &note);
        row(
            "postgres",
            &format!("claim with {size} published ÷ empty, {label} (target ≤ 1.2)"),
            format!("{:.2}", m_big.as_secs_f64() / m_empty.as_secs_f64()),
            "ratio",
            &format!("medians {} vs {} ms, {pending} pending in both", ms(m_big), ms(m_empty)),
        );
        if claimed.0 != claimed.1 {
            return Err(format!("the two tables claimed different batch sizes: {claimed:?}").into());
        }
    }
    big_pool.close().await;
    empty_pool.close().await;
    if std::env::var("OUTBOX_BENCH_KEEP").is_err() {
        for o in [&big, &empty] {
            let name = o.tables().name().to_string();
            sqlx::raw_sql(&format!(
                r#"DROP TABLE IF EXISTS "{name}", "{name}_aggregates" CASCADE; DROP FUNCTION IF EXISTS "{name}_notify"() CASCADE;"#
            ))
            .execute(&admin)
            .await?;
        }
    } else {
        say(format!("kept tables {} and {}", big.tables().name(), empty.tables().name()));
    }
    Ok(())
}
