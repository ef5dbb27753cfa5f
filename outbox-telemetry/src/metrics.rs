//! [`MetricsObserver`] and [`StatsGauges`]: the outbox's numbers through the `metrics` facade.
//!
//! Install any `metrics` recorder (a Prometheus exporter, an OpenTelemetry bridge) **before**
//! creating them: they register their handles once, with the recorder installed at that time.
//!
//! | name | type | unit | labels | what |
//! |---|---|---|---|---|
//! | `outbox_entries_published_total` | counter | entries | yours | entries the broker accepted |
//! | `outbox_entries_retried_total` | counter | entries | yours | failed publishes scheduled for a retry |
//! | `outbox_entries_dead_total` | counter | entries | yours | entries given up on (dead-lettered) |
//! | `outbox_entries_released_total` | counter | entries | yours | entries given back unpublished without an attempt (an earlier entry of their aggregate failed in the batch) |
//! | `outbox_store_errors_total` | counter | errors | yours + `kind` (`unavailable`, `timeout`, ...) | failed claims, completions and stats reads |
//! | `outbox_publish_latency_seconds` | histogram | seconds | yours | from an entry's write (about its commit) to its publish being recorded |
//! | `outbox_batch_claim_seconds` | histogram | seconds | yours | time to claim a batch |
//! | `outbox_batch_publish_seconds` | histogram | seconds | yours | time to publish a batch |
//! | `outbox_batch_complete_seconds` | histogram | seconds | yours | time to record a batch's outcomes |
//! | `outbox_entries_pending` | gauge | entries | yours | waiting to be claimed ([`StatsGauges`]) |
//! | `outbox_entries_processing` | gauge | entries | yours | claimed, being published ([`StatsGauges`]) |
//! | `outbox_entries_failed` | gauge | entries | yours | waiting for a retry ([`StatsGauges`]) |
//! | `outbox_entries_dead` | gauge | entries | yours | dead, waiting for an operator ([`StatsGauges`]) |
//! | `outbox_oldest_unpublished_age_seconds` | gauge | seconds | yours | age of the oldest entry still to publish, 0 when none ([`StatsGauges`]) |
//!
//! "yours" are the constant labels given to [`MetricsObserver::with_labels`] and
//! [`StatsGauges::with_labels`] (e.g. `outbox="orders"` when a process runs several outboxes).
//! No label ever carries an entry id, an aggregate id or a relay id: their number is unbounded.

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Label, Unit};
use outbox_core::{Clock, Error, Maintenance, Observer, RelayEvent, Stats, Timer};

/// Entries the broker accepted.
pub const PUBLISHED: &str = "outbox_entries_published_total";
/// Failed publishes scheduled for a retry.
pub const RETRIED: &str = "outbox_entries_retried_total";
/// Entries given up on.
pub const DEAD_LETTERED: &str = "outbox_entries_dead_total";
/// Entries released unpublished without an attempt.
pub const RELEASED: &str = "outbox_entries_released_total";
/// Failed store operations, labelled with the error `kind`.
pub const STORE_ERRORS: &str = "outbox_store_errors_total";
/// Commit-to-publish latency.
pub const PUBLISH_LATENCY: &str = "outbox_publish_latency_seconds";
/// Claim duration per batch.
pub const CLAIM_DURATION: &str = "outbox_batch_claim_seconds";
/// Publish duration per batch.
pub const PUBLISH_DURATION: &str = "outbox_batch_publish_seconds";
/// Completion duration per batch.
pub const COMPLETE_DURATION: &str = "outbox_batch_complete_seconds";
/// Pending entries.
pub const PENDING: &str = "outbox_entries_pending";
/// Entries being published.
pub const PROCESSING: &str = "outbox_entries_processing";
/// Failed entries waiting for a retry.
pub const FAILED: &str = "outbox_entries_failed";
/// Dead entries.
pub const DEAD: &str = "outbox_entries_dead";
/// Age of the oldest unpublished entry.
pub const OLDEST_UNPUBLISHED_AGE: &str = "outbox_oldest_unpublished_age_seconds";

/// Gives every metric of the table above its unit and description in the installed recorder
/// (exporters show them as `# HELP` / `# UNIT`). Call once after installing the recorder.
pub fn describe() {
    let entries = Unit::Count;
    metrics::describe_counter!(PUBLISHED, entries, "Outbox entries the broker accepted");
    metrics::describe_counter!(RETRIED, entries, "Outbox publishes that failed and were scheduled for a retry");
    metrics::describe_counter!(DEAD_LETTERED, entries, "Outbox entries given up on (dead-lettered)");
    metrics::describe_counter!(RELEASED, entries, "Outbox entries released unpublished without an attempt");
    metrics::describe_counter!(STORE_ERRORS, entries, "Failed outbox store operations, by error kind");
    metrics::describe_histogram!(PUBLISH_LATENCY, Unit::Seconds, "From an outbox entry's write to its publish");
    metrics::describe_histogram!(CLAIM_DURATION, Unit::Seconds, "Time to claim an outbox batch");
    metrics::describe_histogram!(PUBLISH_DURATION, Unit::Seconds, "Time to publish an outbox batch");
    metrics::describe_histogram!(COMPLETE_DURATION, Unit::Seconds, "Time to record an outbox batch's outcomes");
    metrics::describe_gauge!(PENDING, entries, "Outbox entries waiting to be claimed");
    metrics::describe_gauge!(PROCESSING, entries, "Outbox entries claimed and being published");
    metrics::describe_gauge!(FAILED, entries, "Outbox entries waiting for a retry");
    metrics::describe_gauge!(DEAD, entries, "Dead outbox entries waiting for an operator");
    metrics::describe_gauge!(OLDEST_UNPUBLISHED_AGE, Unit::Seconds, "Age of the oldest outbox entry still to publish");
}

fn labels(pairs: impl IntoIterator<Item = (impl Into<String>, impl Into<String>)>) -> Vec<Label> {
    pairs.into_iter().map(|(k, v)| Label::new(k.into(), v.into())).collect()
}

/// Counts and times what the relay does (the counters and histograms of the
/// [module table](self)). Set it as (or in) `RelayConfig::observer`.
#[derive(Debug)]
pub struct MetricsObserver {
    labels: Vec<Label>,
    published: Counter,
    retried: Counter,
    dead: Counter,
    released: Counter,
    latency: Histogram,
    claim: Histogram,
    publish: Histogram,
    complete: Histogram,
}

impl Default for MetricsObserver {
    fn default() -> Self {
        Self::new()
    }
}

impl MetricsObserver {
    /// Metrics without labels.
    pub fn new() -> Self {
        Self::with_labels(std::iter::empty::<(String, String)>())
    }

    /// Metrics with these constant labels on each (keep them few and bounded: never ids).
    pub fn with_labels(pairs: impl IntoIterator<Item = (impl Into<String>, impl Into<String>)>) -> Self {
        let labels = labels(pairs);
        MetricsObserver {
            published: metrics::counter!(PUBLISHED, labels.iter()),
            retried: metrics::counter!(RETRIED, labels.iter()),
            dead: metrics::counter!(DEAD_LETTERED, labels.iter()),
            released: metrics::counter!(RELEASED, labels.iter()),
            latency: metrics::histogram!(PUBLISH_LATENCY, labels.iter()),
            claim: metrics::histogram!(CLAIM_DURATION, labels.iter()),
            publish: metrics::histogram!(PUBLISH_DURATION, labels.iter()),
            complete: metrics::histogram!(COMPLETE_DURATION, labels.iter()),
            labels,
        }
    }
}

fn count_store_error(labels: &[Label], error: &Error) {
    let mut labels = labels.to_vec();
    labels.push(Label::new("kind", error.kind().as_str().replace(' ', "_")));
    metrics::counter!(STORE_ERRORS, labels).increment(1);
}

impl Observer for MetricsObserver {
    fn observe(&self, event: &RelayEvent<'_>) {
        match event {
            RelayEvent::Published { latency, .. } => self.latency.record(latency.as_secs_f64()),
            RelayEvent::BatchCompleted { report, claim, publish, complete } => {
                self.published.increment(report.published as u64);
                self.retried.increment(report.retried as u64);
                self.dead.increment(report.dead as u64);
                self.released.increment(report.released as u64);
                self.claim.record(claim.as_secs_f64());
                self.publish.record(publish.as_secs_f64());
                self.complete.record(complete.as_secs_f64());
            }
            RelayEvent::StoreError { error } => count_store_error(&self.labels, error),
            _ => {}
        }
    }
}

/// The stats gauges of the [module table](self), refreshed from [`Maintenance::stats`].
///
/// Start [`StatsGauges::run`] as a task of its own (one per outbox, not per relay: it costs one
/// stats query per interval):
/// ```
/// # use std::sync::Arc;
/// # use std::time::Duration;
/// # use outbox_core::{MemoryStore, SystemClock, time::TokioTimer};
/// # use outbox_telemetry::StatsGauges;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// # let store = MemoryStore::new();
/// let gauges = StatsGauges::with_labels([("outbox", "orders")]);
/// let shutdown = tokio::time::sleep(Duration::from_millis(10)); // your shutdown signal
/// gauges.run(&store, Duration::from_secs(15), &SystemClock, &TokioTimer, shutdown).await;
/// # }
/// ```
#[derive(Debug)]
pub struct StatsGauges {
    labels: Vec<Label>,
    pending: Gauge,
    processing: Gauge,
    failed: Gauge,
    dead: Gauge,
    oldest: Gauge,
    failing: AtomicBool,
}

impl Default for StatsGauges {
    fn default() -> Self {
        Self::new()
    }
}

impl StatsGauges {
    /// Gauges without labels.
    pub fn new() -> Self {
        Self::with_labels(std::iter::empty::<(String, String)>())
    }

    /// Gauges with these constant labels on each.
    pub fn with_labels(pairs: impl IntoIterator<Item = (impl Into<String>, impl Into<String>)>) -> Self {
        let labels = labels(pairs);
        StatsGauges {
            pending: metrics::gauge!(PENDING, labels.iter()),
            processing: metrics::gauge!(PROCESSING, labels.iter()),
            failed: metrics::gauge!(FAILED, labels.iter()),
            dead: metrics::gauge!(DEAD, labels.iter()),
            oldest: metrics::gauge!(OLDEST_UNPUBLISHED_AGE, labels.iter()),
            labels,
            failing: AtomicBool::new(false),
        }
    }

    /// Sets the gauges from `stats`.
    pub fn record(&self, stats: &Stats) {
        self.pending.set(stats.pending as f64);
        self.processing.set(stats.processing as f64);
        self.failed.set(stats.failed as f64);
        self.dead.set(stats.dead as f64);
        self.oldest.set(stats.oldest_unpublished_age.unwrap_or(Duration::ZERO).as_secs_f64());
    }

    /// Reads the stats once and sets the gauges; a failure counts in `outbox_store_errors_total`
    /// (and is logged once per streak with the `tracing` feature) and leaves the gauges as they were.
    pub async fn refresh<M: Maintenance>(&self, maintenance: &M, clock: &dyn Clock) -> Result<Stats, Error> {
        match maintenance.stats(clock.now()).await {
            Ok(stats) => {
                self.record(&stats);
                self.failing.store(false, Ordering::Relaxed);
                Ok(stats)
            }
            Err(error) => {
                count_store_error(&self.labels, &error);
                #[cfg(feature = "tracing")]
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        target: "outbox",
                        retryable = error.is_retryable(),
                        error.kind = error.kind().as_str(),
                        error = %crate::scrub(error.message()),
                        "reading outbox stats failed; the gauges keep their last values until it works again"
                    );
                }
                Err(error)
            }
        }
    }

    /// Refreshes the gauges now and then every `every` until `shutdown` completes.
    pub async fn run<M: Maintenance>(
        &self,
        maintenance: &M,
        every: Duration,
        clock: &dyn Clock,
        timer: &dyn Timer,
        shutdown: impl Future<Output = ()>,
    ) {
        let mut shutdown = pin!(shutdown);
        loop {
            // A failure is counted (and logged) by `refresh`; the loop goes on.
            let _ = self.refresh(maintenance, clock).await;
            let mut sleep = timer.sleep(every);
            let stop = poll_fn(|cx| {
                if shutdown.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(true);
                }
                sleep.as_mut().poll(cx).map(|()| false)
            })
            .await;
            if stop {
                return;
            }
        }
    }
}
