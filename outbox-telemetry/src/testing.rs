//! An in-memory OpenTelemetry pipeline for tests: every `tracing` span of the current thread
//! becomes an OpenTelemetry span that the test can read back. Not for production.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt as _;

pub use opentelemetry_sdk;

/// Captures the spans of the current thread while it lives (a thread-default `tracing`
/// subscriber: run the code under test on this thread, e.g. in a current-thread tokio runtime).
///
/// ```
/// use outbox_telemetry::testing::SpanCapture;
/// let capture = SpanCapture::start();
/// tracing::info_span!("work").in_scope(|| {});
/// assert_eq!(capture.spans()[0].name, "work");
/// ```
#[derive(Debug)]
pub struct SpanCapture {
    exporter: InMemorySpanExporter,
    provider: SdkTracerProvider,
    _guard: tracing::subscriber::DefaultGuard,
}

impl SpanCapture {
    /// Installs the pipeline as this thread's default subscriber until dropped.
    pub fn start() -> Self {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
        let tracer = provider.tracer("outbox-telemetry-testing");
        let subscriber = tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(tracer));
        let guard = tracing::subscriber::set_default(subscriber);
        SpanCapture { exporter, provider, _guard: guard }
    }

    /// The spans finished so far, in the order they ended.
    pub fn spans(&self) -> Vec<SpanData> {
        // The simple processor exports as each span ends; the flush is for safety only.
        let _ = self.provider.force_flush();
        self.exporter.get_finished_spans().unwrap_or_default()
    }
}
