//! Drains entries from the in-memory store through a no-op publisher: core's own overhead per
//! entry, the floor every adapter's figures are compared against.
//!
//! `cargo bench -p outbox-core --bench drain` (or `cargo xtask bench`). `OUTBOX_BENCH_ENTRIES`
//! lowers the count (default 1,000,000) for a quick check. Prints markdown table rows.

use std::time::{Duration, Instant};

use outbox_core::{MemoryStore, NewEntry, NoopPublisher, Relay, RelayConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let total: usize = std::env::var("OUTBOX_BENCH_ENTRIES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let aggregates = 1_000;
    let body = "x".repeat(200);
    let store = MemoryStore::new();
    let started = Instant::now();
    let mut tx = store.begin();
    for n in 0..total {
        tx.enqueue(
            NewEntry::builder("order", format!("o-{}", n % aggregates), "order.changed").json(body.clone()).build()?,
        );
        if n % 10_000 == 9_999 {
            tx.commit()?;
            tx = store.begin();
        }
    }
    tx.commit()?;
    let enqueue = started.elapsed();

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let config = RelayConfig { batch_size: 1000, max_per_aggregate: 20, ..RelayConfig::default() };
    let relay = Relay::new(store.clone(), NoopPublisher, config)?;
    let started = Instant::now();
    let published = runtime.block_on(async {
        let mut published = 0;
        loop {
            let report = relay.run_once().await?;
            if report.claimed == 0 {
                return Ok::<_, outbox_core::Error>(published);
            }
            published += report.published;
        }
    })?;
    let drain = started.elapsed();
    if published != total {
        return Err(format!("published {published} of {total}").into());
    }
    let rate = |d: Duration| total as f64 / d.as_secs_f64();
    println!(
        "| core | in-memory enqueue, {total} x 200 B, {aggregates} aggregates | {:.0} | entries/s | transactions of 10,000 |",
        rate(enqueue)
    );
    println!(
        "| core | in-memory drain, no-op publisher, {total} x 200 B, {aggregates} aggregates | {:.0} | entries/s | batches of 1,000, 20 per aggregate, 1 relay |",
        rate(drain)
    );
    Ok(())
}
