//! Commit-to-publish latency on PostgreSQL at a steady rate (default 1,000 entries/s for 10 s),
//! with LISTEN/NOTIFY wake-ups on (`PgStore::listen` wakes the relay), sent after commit
//! (`NotifyMode::AfterCommit`) or by the trigger inside each writer's transaction
//! (`NotifyMode::Trigger`), and off (the relay polls with its default interval: 100 ms, doubling
//! while idle up to 2 s).
//!
//! Writers (4 tasks, each on its own connection, on a fixed schedule) write one entry per
//! transaction through `PgOutbox::enqueue`, commit with `PgOutbox::commit` and note the `Instant`
//! their commit returned; the
//! relay (`Relay::run` on its own pool, default config) publishes into a publisher that notes the
//! `Instant` it saw each entry. Latency = seen − committed (0 when the relay saw it before the
//! writer's `COMMIT` call returned). The first second is warm-up and not counted.
//!
//! Under `Trigger`, PostgreSQL serializes notifying commits: when writers cannot keep up with
//! the rate, the note says how many writes started late.
//!
//! Run: `cargo bench -p outbox-sqlx --bench pg_latency`. Sizes: `OUTBOX_BENCH_RATE` (entries/s,
//! default 1000), `OUTBOX_BENCH_SECONDS` (default 10).

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{BenchResult, env_usize, load_note, ms, payload, percentile, pg_connect as connect, row, say, unique};
use outbox_core::{Entry, EntryId, NewEntry, Outcome, Publisher, Relay, RelayConfig};
use outbox_sqlx::{PgOutbox, Tables};

const WRITERS: usize = 4;

/// Notes when it saw each entry.
#[derive(Clone, Default)]
struct Stopwatch(Arc<Mutex<HashMap<u128, Instant>>>);

impl Publisher for Stopwatch {
    async fn publish(&self, batch: &[Entry]) -> outbox_core::Result<Vec<Outcome>> {
        let now = Instant::now();
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for e in batch {
            seen.entry(e.id.as_u128()).or_insert(now);
        }
        Ok(batch.iter().map(|_| Outcome::Published).collect())
    }
}

struct Outcomes {
    latencies: Vec<Duration>,
    written: usize,
    write_rate: f64,
    lagging_writes: usize,
}

/// How the relay learns about new entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// `NotifyMode::AfterCommit`: writers commit with `PgOutbox::commit`, which NOTIFYs after the
    /// commit; `PgStore::listen` wakes the relay.
    AfterCommit,
    /// `NotifyMode::Trigger`: the migration's trigger NOTIFYs inside each writer's transaction;
    /// `PgStore::listen` wakes the relay.
    Trigger,
    /// No listener: the relay polls with its default interval (writers as in `AfterCommit`).
    Poll,
}

async fn run(mode: Mode, rate: usize, secs: usize) -> BenchResult<Outcomes> {
    let admin = connect(1).await?;
    let writers_pool = connect(WRITERS as u32).await?;
    let mut outbox = PgOutbox::new(Tables::new(unique("bench_latency"))?);
    outbox.migrate(&admin).await?;
    if mode != Mode::Trigger {
        outbox = outbox.notify_after_commit(&writers_pool);
    }
    let config = RelayConfig::default();
    let store = outbox.store(connect(2).await?);
    let publisher = Stopwatch::default();
    let relay = Arc::new(Relay::new(store.clone(), publisher.clone(), config)?);
    let listener = (mode != Mode::Poll).then(|| store.listen(relay.wakeup()));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let relay_task = {
        let relay = relay.clone();
        tokio::spawn(async move {
            relay
                .run(async {
                    let _ = stop_rx.await;
                })
                .await
        })
    };
    // Let the listener connect and the relay go idle.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let total = rate * secs;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let committed: Arc<Mutex<HashMap<u128, (Instant, usize)>>> = Arc::default();
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (pool, outbox, committed) = (writers_pool.clone(), outbox.clone(), committed.clone());
        writers.push(tokio::spawn(async move {
            let mut lagging = 0usize;
            let mut n = w;
            while n < total {
                let due = start + interval * n as u32;
                if tokio::time::Instant::now() > due + Duration::from_millis(5) {
                    lagging += 1;
                }
                tokio::time::sleep_until(due).await;
                let entry = NewEntry::builder("order", format!("o-{}", n % 1000), "order.changed")
                    .id(EntryId::generate())
                    .json(payload(n))
                    .build()?;
                let mut tx = pool.begin().await?;
                outbox.enqueue(&mut tx, &entry).await?;
                outbox.commit(tx).await?;
                let at = Instant::now();
                committed.lock().unwrap_or_else(|p| p.into_inner()).insert(entry.id().as_u128(), (at, n));
                n += WRITERS;
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(lagging)
        }));
    }
    let mut lagging_writes = 0;
    for w in writers {
        lagging_writes += w.await??;
    }
    let write_took = start.elapsed();
    // Wait for the relay to publish the rest (at most 10 s).
    let deadline = Instant::now() + Duration::from_secs(10);
    while publisher.0.lock().unwrap_or_else(|p| p.into_inner()).len() < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(());
    relay_task.await??;
    drop(listener);
    let seen = publisher.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let committed = committed.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if seen.len() != total {
        return Err(format!("published {} of {total} entries within 10 s of the last write", seen.len()).into());
    }
    let warmup = rate; // the first second
    let latencies: Vec<Duration> = committed
        .iter()
        .filter(|(_, (_, n))| *n >= warmup)
        .filter_map(|(id, (at, _))| seen.get(id).map(|s| s.saturating_duration_since(*at)))
        .collect();
    writers_pool.close().await;
    store.pool().close().await;
    let name = outbox.tables().name().to_string();
    sqlx::raw_sql(&format!(
        r#"DROP TABLE IF EXISTS "{name}", "{name}_aggregates" CASCADE; DROP FUNCTION IF EXISTS "{name}_notify"() CASCADE;"#
    ))
    .execute(&admin)
    .await?;
    Ok(Outcomes { written: total, write_rate: total as f64 / write_took.as_secs_f64(), latencies, lagging_writes })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> BenchResult<()> {
    let rate = env_usize("OUTBOX_BENCH_RATE", 1000).max(1);
    let secs = env_usize("OUTBOX_BENCH_SECONDS", 10).max(2);
    for mode in [Mode::AfterCommit, Mode::Trigger, Mode::Poll] {
        let notify = mode == Mode::AfterCommit;
        let label = match mode {
            Mode::AfterCommit => "LISTEN/NOTIFY on (NotifyMode::AfterCommit)",
            Mode::Trigger => "LISTEN/NOTIFY on (NotifyMode::Trigger)",
            Mode::Poll => "LISTEN/NOTIFY off (polling, default 100 ms)",
        };
        say(format!("postgres latency, {label}, {rate}/s for {secs} s"));
        let mut out = run(mode, rate, secs).await?;
        let p50 = percentile(&mut out.latencies, 50.0);
        let p99 = percentile(&mut out.latencies, 99.0);
        let max = percentile(&mut out.latencies, 100.0);
        let note = format!(
            "{} entries written at {:.0}/s ({} writes started > 5 ms late), 1 relay, default config; max {} ms; {}",
            out.written,
            out.write_rate,
            out.lagging_writes,
            ms(max),
            load_note()
        );
        let target = if notify { " (target p99 ≤ 20 ms)" } else { "" };
        row("postgres", &format!("commit-to-publish p50, {rate}/s, {label}"), ms(p50), "ms", &note);
        row("postgres", &format!("commit-to-publish p99, {rate}/s, {label}{target}"), ms(p99), "ms", &note);
    }
    Ok(())
}
