//! Tracing support (features `tracing`, `opentelemetry`), built on `outbox-telemetry`.
//!
//! - Each publish runs in a `send {topic}` producer span (`send` when the batch goes to several
//!   topics) with the OpenTelemetry messaging attributes (`messaging.system` = `kafka`, ...);
//!   see `outbox_telemetry::send::Send::traced` for the full list.
//! - The entry's `traceparent` and `tracestate` headers travel as Kafka headers (see
//!   [`headers`](crate::headers)); with `opentelemetry` the send span links to that context and
//!   [`extract`] reads it back on the consumer's side.

/// `messaging.system` of the send spans.
pub const SYSTEM: &str = "kafka";

/// The trace context a record carries (its `traceparent` and `tracestate` headers), to make it
/// the parent of the consumer's span; an empty context when there is none.
///
/// ```no_run
/// # fn handle(message: &outbox_kafka::rdkafka::message::BorrowedMessage<'_>) {
/// use outbox_telemetry::tracing_opentelemetry::OpenTelemetrySpanExt;
/// let span = tracing::info_span!("process order", otel.kind = "consumer");
/// let _ = span.set_parent(outbox_kafka::trace::extract(message));
/// # }
/// ```
#[cfg(feature = "opentelemetry")]
#[cfg_attr(docsrs, doc(cfg(feature = "opentelemetry")))]
pub fn extract<M: rdkafka::message::Message>(message: &M) -> outbox_telemetry::opentelemetry::Context {
    use rdkafka::message::Headers;
    let headers = message.headers();
    outbox_telemetry::context::extract(|name| {
        let headers = headers?;
        headers.iter().find(|h| h.key == name).and_then(|h| h.value).and_then(|v| std::str::from_utf8(v).ok())
    })
}
