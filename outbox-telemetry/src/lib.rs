//! # outbox-telemetry
//!
//! Observability for the **outbox** framework, in one place that the relay's users and every
//! broker crate share:
//! - **logs** ([`TracingObserver`], feature `tracing`): a warning per retried publish, an error
//!   per dead-lettered entry, store failures once per streak with what to do, a debug line per
//!   batch; the relay's `outbox.batch` span (outbox-core's `tracing` feature, turned on here)
//!   and the broker crates' `send {destination}` producer spans ([`send`]);
//! - **metrics** ([`MetricsObserver`], [`StatsGauges`], feature `metrics`): counters, histograms
//!   and gauges through the `metrics` facade, for any exporter (the table is in [`metrics`]);
//! - **trace context** ([`context`], feature `opentelemetry`): the request's W3C `traceparent`
//!   and `tracestate` into an entry's headers at enqueue, links from the send span to each
//!   entry's creation context, and extraction at the consumer, so the consumer's span joins the
//!   request's trace.
//!
//! [`Telemetry`] is the [`Observer`] to put in `RelayConfig::observer`: it logs and counts with
//! whichever of the features are on.
//!
//! ## Example
//! ```
//! use std::sync::Arc;
//! use outbox_core::{Error, ErrorKind, MemoryStore, NewEntry, Relay, RelayConfig, ScriptedPublisher};
//! use outbox_telemetry::Telemetry;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Install a `tracing` subscriber and a `metrics` recorder first (e.g. tracing-subscriber's
//! // fmt layer, a Prometheus exporter); `Telemetry` registers its metrics with the recorder in place.
//! let store = MemoryStore::new();
//! store.enqueue([NewEntry::builder("order", "o-1", "order.placed").json("{}").build()?])?;
//! let publisher = ScriptedPublisher::new(|_| Some(Error::new(ErrorKind::Timeout, "no answer").with_outage(false)));
//! let config = RelayConfig { observer: Arc::new(Telemetry::new()), ..RelayConfig::default() };
//! let relay = Relay::new(store, publisher, config)?;
//! let report = relay.run_once().await?; // logs "publish failed; will retry", counts 1 retried
//! assert_eq!(report.retried, 1);
//! # Ok(()) }
//! ```
//! With the `opentelemetry` feature, in the request handler:
//! `NewEntry::builder(..).json(..).trace_context().build()?` (see [`TraceContextExt`]).
//!
//! ## Features
//! - `tracing` (default): [`TracingObserver`], the batch span, [`send::Send`] for broker crates.
//! - `metrics` (default): [`MetricsObserver`], [`StatsGauges`].
//! - `opentelemetry`: [`context`], span links; needs `tracing-opentelemetry` in the application's
//!   subscriber for spans to carry OpenTelemetry contexts.
//! - `testing`: [`testing::SpanCapture`], OpenTelemetry's in-memory exporter for tests.
//!
//! No exporter is included (no OTLP, no HTTP server): the application picks its own.
#![cfg_attr(docsrs, feature(doc_cfg))]

use outbox_core::{Observer, RelayEvent};

mod redact;
#[cfg(feature = "tracing")]
mod timefmt;

#[cfg(feature = "tracing")]
mod log;
#[cfg(feature = "tracing")]
#[cfg_attr(docsrs, doc(cfg(feature = "tracing")))]
pub mod send;

#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;

#[cfg(feature = "opentelemetry")]
#[cfg_attr(docsrs, doc(cfg(feature = "opentelemetry")))]
pub mod context;

#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;

#[cfg(feature = "opentelemetry")]
pub use context::TraceContextExt;
#[cfg(feature = "tracing")]
pub use log::TracingObserver;
#[cfg(feature = "metrics")]
pub use metrics::{MetricsObserver, StatsGauges};
/// The OpenTelemetry API crate this one is built on (its `Context` is what [`context`] returns).
#[cfg(feature = "opentelemetry")]
#[cfg_attr(docsrs, doc(cfg(feature = "opentelemetry")))]
pub use opentelemetry;
pub use redact::scrub;
/// The `tracing-opentelemetry` crate this one is built on (`OpenTelemetrySpanExt::set_parent`
/// makes an extracted context a consumer span's parent).
#[cfg(feature = "opentelemetry")]
#[cfg_attr(docsrs, doc(cfg(feature = "opentelemetry")))]
pub use tracing_opentelemetry;

/// The relay [`Observer`] with everything the enabled features offer: logs ([`TracingObserver`])
/// and metrics ([`MetricsObserver`]).
#[derive(Debug, Default)]
pub struct Telemetry {
    #[cfg(feature = "tracing")]
    log: TracingObserver,
    #[cfg(feature = "metrics")]
    metrics: MetricsObserver,
}

impl Telemetry {
    /// Logs and metrics without metric labels.
    pub fn new() -> Self {
        Self::default()
    }

    /// Logs and metrics with these constant metric labels (see [`MetricsObserver::with_labels`]).
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn with_labels(pairs: impl IntoIterator<Item = (impl Into<String>, impl Into<String>)>) -> Self {
        Telemetry {
            #[cfg(feature = "tracing")]
            log: TracingObserver::new(),
            metrics: MetricsObserver::with_labels(pairs),
        }
    }
}

impl Observer for Telemetry {
    fn observe(&self, _event: &RelayEvent<'_>) {
        #[cfg(feature = "tracing")]
        self.log.observe(_event);
        #[cfg(feature = "metrics")]
        self.metrics.observe(_event);
    }
}
