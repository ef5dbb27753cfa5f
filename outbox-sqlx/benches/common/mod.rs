//! Helpers shared by the outbox-sqlx benchmarks: settings from the environment, connections,
//! backlog generation in SQL, the relay drain loop and the markdown row printer.
#![allow(dead_code)]

use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use outbox_core::{EntryId, NoopPublisher, Relay, RelayConfig, RelayEvent, Store};

/// Errors in benchmarks: anything, with a message.
pub(crate) type BenchResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// Payload size of generated entries, in bytes (about; JSON text).
pub(crate) const PAYLOAD_BYTES: usize = 200;

/// `name` from the environment as a number, else `default`.
pub(crate) fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.replace('_', "").parse().ok()).unwrap_or(default)
}

/// `name` from the environment, else `default`.
pub(crate) fn env_str(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// The PostgreSQL URL (`OUTBOX_TEST_POSTGRES_URL`, same default as the tests).
pub(crate) fn pg_url() -> String {
    env_str("OUTBOX_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
}

/// A pool of at most `max` connections to [`pg_url`], or an error that says how to start the server.
pub(crate) async fn pg_connect(max: u32) -> BenchResult<sqlx::PgPool> {
    let url = pg_url();
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(30))
        .connect(&url)
        .await
        .map_err(|e| {
            format!(
                "cannot reach PostgreSQL at {} ({e}); run `cargo xtask services up` (or set OUTBOX_TEST_POSTGRES_URL)",
                redact(&url)
            )
            .into()
        })
}

/// The MySQL/MariaDB URL (`OUTBOX_TEST_MYSQL_URL`, same default as the tests).
pub(crate) fn mysql_url() -> String {
    env_str("OUTBOX_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
}

/// The URL without its password, for messages.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let user = url[s + 3..at].split(':').next().unwrap_or("");
            format!("{}{user}{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// A table name no other run uses: `<prefix>_<random hex>`, a valid identifier.
pub(crate) fn unique(prefix: &str) -> String {
    format!("{prefix}_{:x}", EntryId::generate().as_u128() & 0xffff_ffff_ffff)
}

/// One result row: `| area | case | figure | unit | note |`.
pub(crate) fn row(area: &str, case: &str, figure: impl std::fmt::Display, unit: &str, note: &str) {
    println!("| {area} | {case} | {figure} | {unit} | {note} |");
}

/// A JSON payload of about [`PAYLOAD_BYTES`] bytes.
pub(crate) fn payload(n: usize) -> String {
    let mut body = format!(r#"{{"n":{n},"pad":""#);
    body.push_str(&"x".repeat(PAYLOAD_BYTES.saturating_sub(body.len() + 2)));
    body.push_str("\"}");
    body
}

/// Progress and setup messages go to stderr, so stdout holds only result rows.
pub(crate) fn say(msg: impl AsRef<str>) {
    eprintln!("[bench] {}", msg.as_ref());
}

/// The relay configuration every drain uses: the defaults (batches of 1,000, 20 per aggregate;
/// `OUTBOX_BENCH_PER_AGGREGATE` changes the latter).
pub(crate) fn relay_config() -> RelayConfig {
    RelayConfig {
        batch_size: 1000,
        max_per_aggregate: env_usize("OUTBOX_BENCH_PER_AGGREGATE", 20).max(1),
        ..RelayConfig::default()
    }
}

/// Where a drain's time went, summed over every relay's batches.
#[derive(Debug, Default)]
pub(crate) struct Split {
    /// Batches completed.
    pub(crate) batches: AtomicU64,
    /// Time in `Store::claim`, microseconds.
    pub(crate) claim_us: AtomicU64,
    /// Time in `Store::complete`, microseconds.
    pub(crate) complete_us: AtomicU64,
    /// Batches that failed with a retryable store error and were tried again.
    pub(crate) retried: Arc<AtomicU64>,
}

impl Split {
    /// "claim 12.3 ms + complete 4.5 ms per batch of ~1,000".
    pub(crate) fn describe(&self) -> String {
        let n = self.batches.load(Ordering::Relaxed).max(1) as f64;
        let retried = self.retried.load(Ordering::Relaxed);
        format!(
            "per batch: claim {:.1} ms + complete {:.1} ms{}",
            self.claim_us.load(Ordering::Relaxed) as f64 / n / 1000.0,
            self.complete_us.load(Ordering::Relaxed) as f64 / n / 1000.0,
            if retried > 0 { format!(", {retried} retryable store errors retried") } else { String::new() }
        )
    }
}

/// Drains `total` entries with one relay per store (each store on its own pool), each running
/// `Relay::run` as a spawned task with `in_flight` batches in flight (1 is the default: one
/// batch publishing while the previous one's completion is written), until all `total` are
/// published; returns the wall time, and where the time went.
pub(crate) async fn drain<S>(stores: Vec<S>, total: usize, in_flight: usize) -> BenchResult<(Duration, Arc<Split>)>
where
    S: Store + Send + Sync + 'static,
{
    let done = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(tokio::sync::Notify::new());
    let split = Arc::new(Split::default());
    let mut relays = Vec::new();
    for store in stores {
        let (seen, done, finished) = (split.clone(), done.clone(), finished.clone());
        let observer = move |event: &RelayEvent<'_>| {
            if let RelayEvent::BatchCompleted { report, claim, complete, .. } = event {
                seen.batches.fetch_add(1, Ordering::Relaxed);
                seen.claim_us.fetch_add(claim.as_micros() as u64, Ordering::Relaxed);
                seen.complete_us.fetch_add(complete.as_micros() as u64, Ordering::Relaxed);
                if done.fetch_add(report.published, Ordering::Relaxed) + report.published >= total {
                    finished.notify_waiters();
                }
            }
        };
        let config = RelayConfig {
            observer: Arc::new(observer),
            max_in_flight: in_flight,
            poll_interval: Duration::from_millis(1),
            max_poll_interval: Duration::from_millis(10),
            ..relay_config()
        };
        relays.push(Arc::new(Relay::new(store, NoopPublisher, config)?));
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for relay in relays {
        let (done, finished) = (done.clone(), finished.clone());
        tasks.push(tokio::spawn(async move {
            relay
                .run(async move {
                    while done.load(Ordering::Relaxed) < total {
                        // Woken by the last batch, or checks again after a while.
                        let _ = tokio::time::timeout(Duration::from_millis(50), finished.notified()).await;
                    }
                })
                .await
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok((started.elapsed(), split))
}

/// `total` entries per second of `took`.
pub(crate) fn rate(total: usize, took: Duration) -> f64 {
    total as f64 / took.as_secs_f64()
}

/// Thousands separators: 69000 -> "69,000".
pub(crate) fn thousands(n: f64) -> String {
    let s = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The median of `samples` (sorted in place).
pub(crate) fn median(samples: &mut [Duration]) -> Duration {
    percentile(samples, 50.0)
}

/// The `p`-th percentile of `samples` (nearest rank; sorts in place).
pub(crate) fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

/// Milliseconds with two decimals.
pub(crate) fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// The figure for the machine line of every note.
pub(crate) fn load_note() -> String {
    match std::fs::read_to_string("/proc/loadavg") {
        Ok(s) => format!("load {}", s.split_whitespace().next().unwrap_or("?")),
        Err(_) => String::new(),
    }
}
