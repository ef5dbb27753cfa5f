//! [`TracingObserver`]: the relay's events as `tracing` events.

use std::sync::atomic::{AtomicU64, Ordering};

use outbox_core::{Error, ErrorKind, Observer, RelayEvent};

use crate::redact::scrub;
use crate::timefmt::rfc3339;

/// Turns [`RelayEvent`]s into `tracing` events (target `outbox`):
///
/// | what | level | fields |
/// |---|---|---|
/// | a publish failed and will be retried | `WARN` | `entry_id`, `aggregate_type`, `aggregate_id`, `event_type`, `attempt`, `next_attempt_at` (RFC 3339), `error.kind`, `error` |
/// | an entry went dead | `ERROR` | `entry_id`, `aggregate_type`, `aggregate_id`, `event_type`, `attempts`, `error.kind`, `error` |
/// | the store failed (claim, completion) | `ERROR` once per streak of failures, with what to do; `DEBUG` for the repeats | `error.kind`, `retryable`, `error`, `failures` |
/// | the store works again after failing | `INFO` | `failures` |
/// | a batch completed | `DEBUG` | `claimed`, `published`, `retried`, `dead`, `released`, `claim_ms`, `publish_ms`, `complete_ms` |
///
/// Under outbox-core's `tracing` feature (on with this one) the events of a batch are inside its
/// `outbox.batch` span. No payload and no header value is ever logged (headers can hold
/// credentials); error messages pass through [`scrub`](crate::scrub), which masks URL passwords
/// and `password=`/`token=`-like values.
#[derive(Debug, Default)]
pub struct TracingObserver {
    /// Store failures since the last success; the first one of a streak is logged loudly.
    store_failures: AtomicU64,
}

impl TracingObserver {
    /// An observer logging through the `tracing` dispatcher in scope.
    pub fn new() -> Self {
        Self::default()
    }

    fn store_recovered(&self) {
        let failures = self.store_failures.swap(0, Ordering::Relaxed);
        if failures > 0 {
            tracing::info!(target: "outbox", failures, "outbox store works again");
        }
    }

    fn store_failed(&self, error: &Error) {
        let failures = self.store_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let message = scrub(error.message());
        if failures == 1 {
            tracing::error!(
                target: "outbox",
                failures,
                error.kind = crate::send::error_type(error.kind()),
                retryable = error.is_retryable(),
                error = %message,
                "outbox store failed; the relay retries with back-off and logs again when it works: {}",
                advice(error.kind()),
            );
        } else {
            tracing::debug!(
                target: "outbox",
                failures,
                error.kind = crate::send::error_type(error.kind()),
                retryable = error.is_retryable(),
                error = %message,
                "outbox store still failing"
            );
        }
    }
}

/// What an operator should look at for a store error of this kind.
fn advice(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Unavailable => "check that the database is up and reachable from this host",
        ErrorKind::Timeout => "the database is slow or overloaded; check its load and locks",
        ErrorKind::Conflict => "lock conflicts with other writers; usually passes by itself",
        ErrorKind::SchemaMismatch => "the outbox table is missing or outdated: run the migrations",
        ErrorKind::Config => "the store is misconfigured; fix its configuration and restart",
        _ => "see the error",
    }
}

impl Observer for TracingObserver {
    fn observe(&self, event: &RelayEvent<'_>) {
        match event {
            RelayEvent::Claimed { .. } => self.store_recovered(),
            RelayEvent::RetryScheduled { entry, attempt, at, error } => {
                tracing::warn!(
                    target: "outbox",
                    entry_id = %entry.id,
                    aggregate_type = entry.aggregate_type.as_str(),
                    aggregate_id = entry.aggregate_id.as_str(),
                    event_type = entry.event_type.as_str(),
                    attempt,
                    next_attempt_at = %rfc3339(*at),
                    error.kind = crate::send::error_type(error.kind()),
                    error = %scrub(error.message()),
                    "publish failed; will retry"
                );
            }
            RelayEvent::DeadLettered { entry, attempts, error } => {
                tracing::error!(
                    target: "outbox",
                    entry_id = %entry.id,
                    aggregate_type = entry.aggregate_type.as_str(),
                    aggregate_id = entry.aggregate_id.as_str(),
                    event_type = entry.event_type.as_str(),
                    attempts,
                    error.kind = crate::send::error_type(error.kind()),
                    error = %scrub(error.message()),
                    "entry dead-lettered: it waits for an operator (Maintenance::requeue_dead)"
                );
            }
            RelayEvent::BatchCompleted { report, claim, publish, complete } => {
                self.store_recovered();
                tracing::debug!(
                    target: "outbox",
                    claimed = report.claimed,
                    published = report.published,
                    retried = report.retried,
                    dead = report.dead,
                    released = report.released,
                    claim_ms = claim.as_secs_f64() * 1000.0,
                    publish_ms = publish.as_secs_f64() * 1000.0,
                    complete_ms = complete.as_secs_f64() * 1000.0,
                    "batch completed"
                );
            }
            RelayEvent::StoreError { error } => self.store_failed(error),
            _ => {}
        }
    }
}
