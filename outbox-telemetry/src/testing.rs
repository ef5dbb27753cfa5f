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

/// A request that enqueues entries in its span, as an HTTP handler would: its span continues a
/// remote trace whose `tracestate` is [`Request::TRACESTATE`], so tests see both headers travel.
#[derive(Debug)]
pub struct Request {
    span: tracing::Span,
}

impl Request {
    /// The `tracestate` of every request's trace.
    pub const TRACESTATE: &'static str = "outbox=test";

    /// Starts the `request` span (a server span) under a new remote trace.
    pub fn start() -> Self {
        use opentelemetry::trace::TraceContextExt as _;
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        let random = outbox_core::EntryId::generate().as_u128();
        let upstream = opentelemetry::trace::SpanContext::new(
            opentelemetry::trace::TraceId::from_bytes(random.to_be_bytes()),
            opentelemetry::trace::SpanId::from_bytes(((random as u64) | 1).to_be_bytes()),
            opentelemetry::trace::TraceFlags::SAMPLED,
            true,
            Self::TRACESTATE.parse().unwrap_or_default(),
        );
        let span = tracing::info_span!("request", otel.kind = "server");
        // Only fails when no OpenTelemetry layer is installed; the checks then say what is missing.
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(upstream));
        Request { span }
    }

    /// Builds the entry inside the request's span, with its trace context.
    pub fn entry(
        &self,
        builder: outbox_core::NewEntryBuilder,
    ) -> Result<outbox_core::NewEntry, outbox_core::ValidationError> {
        use crate::TraceContextExt as _;
        self.span.in_scope(|| builder.trace_context().build())
    }

    /// Ends the request's span.
    pub fn end(self) {
        drop(self.span);
    }
}

/// A consumer's `process` span (kind consumer) whose parent is `cx`, as a consumer does with the
/// context a broker crate's helper extracted; ends at once.
pub fn consume(cx: opentelemetry::Context) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let span = tracing::info_span!("process", otel.kind = "consumer");
    let _ = span.set_parent(cx);
    span.in_scope(|| tracing::info!("handled"));
}

impl SpanCapture {
    /// Checks the trace of one entry from [`Request`] to [`consume`]: the consumer's span is a
    /// child of the request's span (same trace, same `tracestate`), and the relay's send span is
    /// a producer span named `send {destination}`, child of an `outbox.batch` span, with the
    /// messaging attributes, linked to the request's span. Says what is wrong otherwise.
    pub fn check_round_trip(
        &self,
        system: &str,
        destination: &str,
        entry_id: outbox_core::EntryId,
    ) -> Result<(), String> {
        use opentelemetry::trace::SpanKind;
        let spans = self.spans();
        let names: Vec<String> = spans.iter().map(|s| s.name.to_string()).collect();
        let find = |name: &str| {
            spans.iter().find(|s| s.name == name).ok_or_else(|| format!("no `{name}` span among {names:?}"))
        };
        let request = find("request")?;
        let process = find("process")?;
        let send_name = format!("send {destination}");
        let send = find(&send_name)?;
        let batch = find("outbox.batch")?;
        let trace_id = request.span_context.trace_id();
        if process.span_context.trace_id() != trace_id || process.parent_span_id != request.span_context.span_id() {
            return Err(format!(
                "the consumer's span is not the request's child: trace {} parent {} (request: trace {trace_id} span {})",
                process.span_context.trace_id(),
                process.parent_span_id,
                request.span_context.span_id()
            ));
        }
        if process.span_context.trace_state().header() != Request::TRACESTATE {
            return Err(format!("the consumer's tracestate is `{}`", process.span_context.trace_state().header()));
        }
        if send.span_kind != SpanKind::Producer {
            return Err(format!("the send span's kind is {:?}", send.span_kind));
        }
        if send.parent_span_id != batch.span_context.span_id() {
            return Err("the send span is not a child of the outbox.batch span".into());
        }
        let attribute = |key: &str| {
            send.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.as_str().into_owned())
        };
        let expected = [
            ("messaging.system", system.to_string()),
            ("messaging.destination.name", destination.to_string()),
            ("messaging.operation.type", "send".to_string()),
            ("messaging.message.id", entry_id.to_string()),
        ];
        for (key, want) in expected {
            if attribute(key).as_deref() != Some(want.as_str()) {
                return Err(format!("the send span's `{key}` is {:?}, not `{want}`", attribute(key)));
            }
        }
        if !send.links.iter().any(|l| l.span_context.span_id() == request.span_context.span_id()) {
            return Err(format!("the send span does not link to the request's span: {:?}", send.links.links));
        }
        Ok(())
    }
}
