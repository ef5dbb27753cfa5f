//! Write-side overhead on PostgreSQL: a business transaction (insert one order row) run by 4
//! concurrent clients for a fixed time, three ways, in the same run:
//! - **bare**: `BEGIN; INSERT INTO orders …; COMMIT`;
//! - **minimal outbox**: the same plus one hand-written `INSERT` into a plain outbox table (id
//!   primary key, aggregate, event type, payload, headers, status, created_at, and a partial
//!   index over pending rows, which any claim query needs);
//! - **adapter**: the same plus `PgOutbox::enqueue` of one entry (aggregate = the order),
//!   committed with `PgOutbox::commit` under `NotifyMode::AfterCommit` (the NOTIFY goes out after
//!   the commit, from the outbox's own connection);
//! - **adapter, trigger**: the same under `NotifyMode::Trigger` (the migration's trigger
//!   NOTIFYs inside the transaction; PostgreSQL serializes such commits).
//!
//! Cases alternate in rounds so drift (autovacuum, other load) hits each alike; figures are
//! total transactions ÷ total time per case.
//!
//! Run: `cargo bench -p outbox-sqlx --bench pg_enqueue`. Sizes: `OUTBOX_BENCH_SECONDS` per case
//! and round (default 5), `OUTBOX_BENCH_ROUNDS` (default 2), `OUTBOX_BENCH_CLIENTS` (default 4).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{BenchResult, env_usize, load_note, payload, pg_connect as connect, row, say, thousands, unique};
use outbox_core::{EntryId, NewEntry};
use outbox_sqlx::{PgOutbox, Tables};
use sqlx::postgres::PgPool;
use uuid::Uuid;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    Bare,
    Minimal,
    Adapter,
    AdapterTrigger,
}

struct Setup {
    orders: String,
    minimal: String,
    /// Under `NotifyMode::AfterCommit`.
    outbox: PgOutbox,
    /// The same tables under `NotifyMode::Trigger`.
    trigger: PgOutbox,
}

async fn one_tx(pool: &PgPool, setup: &Setup, case: Case, n: usize) -> BenchResult<()> {
    let order_id = Uuid::from_u128(EntryId::generate().as_u128());
    let mut tx = pool.begin().await?;
    sqlx::query(&format!(r#"INSERT INTO "{}" (id, customer, total) VALUES ($1, $2, $3)"#, setup.orders))
        .bind(order_id)
        .bind("c-42")
        .bind(n as i64)
        .persistent(true)
        .execute(&mut *tx)
        .await?;
    match case {
        Case::Bare => {}
        Case::Minimal => {
            sqlx::query(&format!(
                r#"INSERT INTO "{}" (id, aggregate_type, aggregate_id, event_type, payload) VALUES ($1, $2, $3, $4, $5)"#,
                setup.minimal
            ))
            .bind(Uuid::from_u128(EntryId::generate().as_u128()))
            .bind("order")
            .bind(order_id.to_string())
            .bind("order.placed")
            .bind(payload(n).into_bytes())
            .execute(&mut *tx)
            .await?;
        }
        Case::Adapter | Case::AdapterTrigger => {
            let outbox = if case == Case::Adapter { &setup.outbox } else { &setup.trigger };
            let entry = NewEntry::builder("order", order_id.to_string(), "order.placed").json(payload(n)).build()?;
            outbox.enqueue(&mut tx, &entry).await?;
            return Ok(outbox.commit(tx).await?);
        }
    }
    tx.commit().await?;
    Ok(())
}

/// Runs `case` with `clients` concurrent clients for `secs`; returns (transactions, time).
async fn run(
    pool: &PgPool,
    setup: &Arc<Setup>,
    case: Case,
    clients: usize,
    secs: u64,
) -> BenchResult<(usize, Duration)> {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (pool, setup, stop, count) = (pool.clone(), setup.clone(), stop.clone(), count.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = c;
            while !stop.load(Ordering::Relaxed) {
                one_tx(&pool, &setup, case, n).await?;
                count.fetch_add(1, Ordering::Relaxed);
                n += clients;
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    Ok((count.load(Ordering::Relaxed), started.elapsed()))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> BenchResult<()> {
    let secs = env_usize("OUTBOX_BENCH_SECONDS", 5) as u64;
    let rounds = env_usize("OUTBOX_BENCH_ROUNDS", 2);
    let clients = env_usize("OUTBOX_BENCH_CLIENTS", 4);
    let admin = connect(1).await?;
    let orders = unique("bench_orders");
    let minimal = unique("bench_minimal");
    let outbox = PgOutbox::new(Tables::new(unique("bench_enqueue"))?);
    outbox.migrate(&admin).await?;
    sqlx::raw_sql(&format!(
        r#"CREATE TABLE "{orders}" (id uuid PRIMARY KEY, customer text NOT NULL, total bigint NOT NULL,
             created_at timestamptz NOT NULL DEFAULT now());
           CREATE TABLE "{minimal}" (id uuid PRIMARY KEY, aggregate_type text NOT NULL, aggregate_id text NOT NULL,
             event_type text NOT NULL, payload bytea NOT NULL, headers jsonb NOT NULL DEFAULT '[]',
             status text NOT NULL DEFAULT 'pending', created_at timestamptz NOT NULL DEFAULT now());
           CREATE INDEX "{minimal}_pending" ON "{minimal}" (created_at) WHERE status = 'pending';"#
    ))
    .execute(&admin)
    .await?;
    let pool = connect(clients as u32).await?;
    let setup = Arc::new(Setup { orders, minimal, trigger: outbox.clone(), outbox: outbox.notify_after_commit(&pool) });
    // Warm the connections and statement caches.
    let cases = [Case::Bare, Case::Minimal, Case::Adapter, Case::AdapterTrigger];
    for case in cases {
        run(&pool, &setup, case, clients, 1).await?;
    }
    let mut totals = [(0usize, Duration::ZERO); 4];
    for round in 0..rounds {
        for (i, case) in cases.into_iter().enumerate() {
            say(format!("postgres enqueue round {}: {case:?} for {secs} s", round + 1));
            let (n, took) = run(&pool, &setup, case, clients, secs).await?;
            totals[i].0 += n;
            totals[i].1 += took;
        }
    }
    let tps: Vec<f64> = totals.iter().map(|(n, d)| *n as f64 / d.as_secs_f64()).collect();
    let what = format!("{clients} clients, {rounds} x {secs} s alternating; {}", load_note());
    row("postgres", "business tx (insert 1 order row), bare", format!("{:.0}", tps[0]), "tx/s", &what);
    row(
        "postgres",
        "business tx + minimal hand-written outbox INSERT",
        format!("{:.0}", tps[1]),
        "tx/s",
        &format!("{:.2}× bare; {what}", tps[1] / tps[0]),
    );
    row(
        "postgres",
        "business tx + 1 entry through PgOutbox::enqueue, NotifyMode::AfterCommit",
        format!("{:.0}", tps[2]),
        "tx/s",
        &format!("{:.2}× bare; aggregate = the new order; NOTIFY after commit; {what}", tps[2] / tps[0]),
    );
    row(
        "postgres",
        "business tx + 1 entry through PgOutbox::enqueue, NotifyMode::Trigger",
        format!("{:.0}", tps[3]),
        "tx/s",
        &format!("{:.2}× bare, {:.2}× minimal; NOTIFY in the transaction; {what}", tps[3] / tps[0], tps[3] / tps[1]),
    );
    row(
        "postgres",
        "enqueue: adapter (AfterCommit) ÷ minimal INSERT (target ≥ 0.9)",
        format!("{:.2}", tps[2] / tps[1]),
        "ratio",
        &format!(
            "adapter {} tx/s, minimal {} tx/s, bare {} tx/s",
            thousands(tps[2]),
            thousands(tps[1]),
            thousands(tps[0])
        ),
    );
    pool.close().await;
    let name = setup.outbox.tables().name().to_string();
    sqlx::raw_sql(&format!(
        r#"DROP TABLE IF EXISTS "{o}", "{m}", "{name}", "{name}_aggregates" CASCADE;
           DROP FUNCTION IF EXISTS "{name}_notify"() CASCADE;"#,
        o = setup.orders,
        m = setup.minimal
    ))
    .execute(&admin)
    .await?;
    Ok(())
}
