//! The relay's span per batch, behind the `tracing` feature; without it a zero-sized stand-in
//! whose methods do nothing, so `relay.rs` has no `cfg` of its own.

use std::future::Future;
use std::time::Duration;

use crate::relay::BatchReport;

/// The `outbox.batch` span of one claimed batch.
///
/// Fields: `relay` (the relay id), `claimed`, then, when the batch is recorded, `published`,
/// `retried`, `dead`, `released`, and the timings `claim_ms`, `publish_ms`, `complete_ms`.
/// The publish and the completion run inside it, so a publisher's send span is its child, and
/// so are the events an observer emits for the batch's entries.
#[derive(Clone, Debug)]
pub(crate) struct BatchSpan {
    #[cfg(feature = "tracing")]
    span: tracing::Span,
}

#[cfg(feature = "tracing")]
impl BatchSpan {
    pub(crate) fn start(relay_id: &str, claimed: usize, claim_took: Duration) -> Self {
        let span = tracing::info_span!(
            "outbox.batch",
            relay = relay_id,
            claimed,
            published = tracing::field::Empty,
            retried = tracing::field::Empty,
            dead = tracing::field::Empty,
            released = tracing::field::Empty,
            claim_ms = millis(claim_took),
            publish_ms = tracing::field::Empty,
            complete_ms = tracing::field::Empty,
        );
        BatchSpan { span }
    }

    pub(crate) async fn run<F: Future>(&self, future: F) -> F::Output {
        tracing::Instrument::instrument(future, self.span.clone()).await
    }

    pub(crate) fn in_scope<T>(&self, f: impl FnOnce() -> T) -> T {
        self.span.in_scope(f)
    }

    pub(crate) fn record(&self, report: &BatchReport, publish_took: Duration, complete_took: Duration) {
        let span = &self.span;
        span.record("published", report.published);
        span.record("retried", report.retried);
        span.record("dead", report.dead);
        span.record("released", report.released);
        span.record("publish_ms", millis(publish_took));
        span.record("complete_ms", millis(complete_took));
    }
}

#[cfg(feature = "tracing")]
fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(not(feature = "tracing"))]
impl BatchSpan {
    pub(crate) fn start(_relay_id: &str, _claimed: usize, _claim_took: Duration) -> Self {
        BatchSpan {}
    }

    pub(crate) async fn run<F: Future>(&self, future: F) -> F::Output {
        future.await
    }

    pub(crate) fn in_scope<T>(&self, f: impl FnOnce() -> T) -> T {
        f()
    }

    pub(crate) fn record(&self, _report: &BatchReport, _publish_took: Duration, _complete_took: Duration) {}
}
