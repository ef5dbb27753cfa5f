//! Tracing support (features `tracing`, `opentelemetry`), built on `outbox-telemetry`.
//!
//! Each publish runs in a `send {event bus}` producer span (`send default` for the account's
//! default bus) with `messaging.system` = `aws.eventbridge` and the other messaging attributes
//! (see `outbox_telemetry::send::Send::traced`). The W3C context reaches consumers inside
//! `Detail` (see [`DetailFormat`](crate::DetailFormat)); [`extract`] reads it back.

/// `messaging.system` of the send spans (OpenTelemetry has no well-known value for EventBridge;
/// this follows its `aws.*` naming).
pub const SYSTEM: &str = "aws.eventbridge";

/// The `messaging.destination.name` of an event bus: its name or ARN, `default` when none is set.
pub(crate) fn destination(bus: Option<&str>) -> String {
    bus.unwrap_or("default").to_string()
}

/// The trace context of a delivered event: `event` is the event as EventBridge delivers it (an
/// SQS message body, parsed; a Lambda event) or its `detail` alone. The context is read from
/// `detail.traceContext` ([`DetailFormat::PayloadWithTraceContext`](crate::DetailFormat)) or
/// `detail.metadata.headers` ([`DetailFormat::Envelope`](crate::DetailFormat)); an empty context
/// when there is none.
///
/// ```no_run
/// # fn handle(sqs_body: &str) -> Result<(), serde_json::Error> {
/// use outbox_telemetry::tracing_opentelemetry::OpenTelemetrySpanExt;
/// let event: serde_json::Value = serde_json::from_str(sqs_body)?;
/// let span = tracing::info_span!("process order", otel.kind = "consumer");
/// let _ = span.set_parent(outbox_eventbridge::trace::extract(&event));
/// # Ok(()) }
/// ```
#[cfg(feature = "opentelemetry")]
#[cfg_attr(docsrs, doc(cfg(feature = "opentelemetry")))]
pub fn extract(event: &serde_json::Value) -> outbox_telemetry::opentelemetry::Context {
    let detail = event.get("detail").unwrap_or(event);
    let carrier = detail
        .get(crate::TRACE_CONTEXT_MEMBER)
        .filter(|c| c.is_object())
        .or_else(|| detail.get("metadata").and_then(|m| m.get("headers")));
    outbox_telemetry::context::extract(|name| carrier?.get(name)?.as_str())
}

#[cfg(all(test, feature = "opentelemetry"))]
mod tests {
    use outbox_telemetry::opentelemetry::trace::TraceContextExt;

    #[test]
    fn reads_either_detail_format_from_the_event_or_its_detail() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        for event in [
            serde_json::json!({"detail": {"traceContext": {"traceparent": tp, "tracestate": "k=v"}, "x": 1}}),
            serde_json::json!({"detail": {"metadata": {"headers": {"traceparent": tp, "tracestate": "k=v"}}, "data": 1}}),
            serde_json::json!({"traceContext": {"traceparent": tp, "tracestate": "k=v"}}),
        ] {
            let cx = super::extract(&event);
            let span = cx.span();
            let sc = span.span_context();
            assert_eq!(sc.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736", "{event}");
            assert_eq!(sc.trace_state().header(), "k=v");
        }
        assert!(!super::extract(&serde_json::json!({"detail": {"x": 1}})).span().span_context().is_valid());
    }
}
