//! Tracing support (features `tracing`, `opentelemetry`), built on `outbox-telemetry`.
//!
//! Each publish runs in a `send {exchange}` producer span (`send amq.default` for the default
//! exchange, as OpenTelemetry names it) with `messaging.system` = `rabbitmq` and the other
//! messaging attributes (see `outbox_telemetry::send::Send::traced`). The entry's `traceparent`
//! and `tracestate` headers travel as AMQP headers; [`extract`] reads them back.

/// `messaging.system` of the send spans.
pub const SYSTEM: &str = "rabbitmq";

/// The `messaging.destination.name` of an exchange: its name, `amq.default` for `""`.
pub(crate) fn destination(exchange: &str) -> String {
    if exchange.is_empty() { "amq.default".to_string() } else { exchange.to_string() }
}

/// The trace context a delivery carries (the `traceparent` and `tracestate` headers of its
/// properties, long or short strings), to make it the parent of the consumer's span; an empty
/// context when there is none.
///
/// ```no_run
/// # fn handle(delivery: &outbox_rabbitmq::lapin::message::Delivery) {
/// use outbox_telemetry::tracing_opentelemetry::OpenTelemetrySpanExt;
/// let span = tracing::info_span!("process order", otel.kind = "consumer");
/// let _ = span.set_parent(outbox_rabbitmq::trace::extract(&delivery.properties));
/// # }
/// ```
#[cfg(feature = "opentelemetry")]
#[cfg_attr(docsrs, doc(cfg(feature = "opentelemetry")))]
pub fn extract(properties: &lapin::BasicProperties) -> outbox_telemetry::opentelemetry::Context {
    use lapin::types::AMQPValue;
    let headers = properties.headers().as_ref();
    outbox_telemetry::context::extract(|name| match headers?.inner().get(name)? {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str()),
        _ => None,
    })
}
