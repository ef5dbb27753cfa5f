//! W3C trace context (`traceparent`, `tracestate`) from the request that enqueues an entry to
//! the consumer that receives it.
//!
//! - **At enqueue**: [`TraceContextExt::trace_context`] on a `NewEntryBuilder` puts the current
//!   `tracing` span's OpenTelemetry context (through `tracing-opentelemetry`) into the entry's
//!   headers. Every broker crate carries both headers to the consumer.
//! - **At the relay**: the send span links to each entry's context ([`creation_context`]).
//! - **At the consumer**: [`extract`] (or the broker crates' helpers, which call it) turns the
//!   headers back into a context; make it the parent of the consumer's span with
//!   `tracing_opentelemetry::OpenTelemetrySpanExt::set_parent`, and the consumer's work is in the
//!   request's trace.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState};
use opentelemetry::{Context, KeyValue};
use outbox_core::{Entry, Headers, NewEntryBuilder, header};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The OpenTelemetry context of the current `tracing` span (empty when no
/// `tracing-opentelemetry` layer is installed).
pub fn current() -> Context {
    tracing::Span::current().context()
}

/// The `traceparent` and `tracestate` headers of `cx`'s span: none when it has no valid span
/// context, no `tracestate` when its trace state is empty.
pub fn inject(cx: &Context) -> Vec<(&'static str, String)> {
    let span = cx.span();
    let sc = span.span_context();
    if !sc.is_valid() {
        return Vec::new();
    }
    let mut headers = vec![(header::TRACEPARENT, traceparent(sc))];
    let state = sc.trace_state().header();
    if !state.is_empty() {
        headers.push((header::TRACESTATE, state));
    }
    headers
}

/// `00-{trace id}-{span id}-{flags}`, version 00 of the W3C format.
pub fn traceparent(sc: &SpanContext) -> String {
    format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8())
}

/// Parses a W3C `traceparent` (and its `tracestate`, ignored when malformed) into a remote span
/// context; `None` when the `traceparent` is not valid.
pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<SpanContext> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let lower_hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    // Version 00 has exactly four parts; later versions may append more (read the first four).
    if !lower_hex(version, 2) || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    if !lower_hex(trace, 32) || !lower_hex(span, 16) || !lower_hex(flags, 2) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    let flags = TraceFlags::new(u8::from_str_radix(flags, 16).ok()? & TraceFlags::SAMPLED.to_u8());
    let state = tracestate.and_then(|s| s.parse::<TraceState>().ok()).unwrap_or_default();
    let sc = SpanContext::new(trace_id, span_id, flags, true, state);
    sc.is_valid().then_some(sc)
}

/// The context carried by headers read with `get` (`traceparent`, `tracestate`); an empty
/// context when there is none or it is malformed.
pub fn extract<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Context {
    match get(header::TRACEPARENT).and_then(|tp| parse(tp, get(header::TRACESTATE))) {
        Some(sc) => Context::new().with_remote_span_context(sc),
        None => Context::new(),
    }
}

/// The context carried by an entry's headers.
pub fn extract_headers(headers: &Headers) -> Context {
    extract(|name| headers.get(name))
}

/// The span context an entry was created in (its `traceparent`, `tracestate` headers).
pub fn creation_context(entry: &Entry) -> Option<SpanContext> {
    let tp = entry.headers.get(header::TRACEPARENT)?;
    parse(tp, entry.headers.get(header::TRACESTATE))
}

/// Links `span` to the creation context of each entry of `batch` (at most
/// [`MAX_LINKS`](crate::send::MAX_LINKS)), with the entry id as a link attribute.
pub(crate) fn link_entries(span: &tracing::Span, batch: &[Entry]) {
    for (entry, sc) in batch.iter().filter_map(|e| creation_context(e).map(|sc| (e, sc))).take(crate::send::MAX_LINKS) {
        span.add_link_with_attributes(sc, vec![KeyValue::new("messaging.message.id", entry.id.to_string())]);
    }
}

/// Puts a trace context into a `NewEntryBuilder`'s headers.
pub trait TraceContextExt: Sized {
    /// Adds the current `tracing` span's `traceparent` and `tracestate` (nothing when there is
    /// no OpenTelemetry span). Call it once per entry.
    ///
    /// ```
    /// use outbox_core::NewEntry;
    /// use outbox_telemetry::TraceContextExt;
    ///
    /// let entry = NewEntry::builder("order", "o-1", "order.placed").json("{}").trace_context().build()?;
    /// # Ok::<(), outbox_core::ValidationError>(())
    /// ```
    fn trace_context(self) -> Self {
        self.trace_context_of(&current())
    }

    /// Adds the `traceparent` and `tracestate` of `cx`.
    fn trace_context_of(self, cx: &Context) -> Self;
}

impl TraceContextExt for NewEntryBuilder {
    fn trace_context_of(self, cx: &Context) -> Self {
        inject(cx).into_iter().fold(self, |builder, (name, value)| builder.header(name, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_round_trips_with_its_state() {
        let sc = parse(TP, Some("vendor=a,other=b")).unwrap();
        assert!(sc.is_remote() && sc.is_sampled());
        assert_eq!(traceparent(&sc), TP);
        let cx = Context::new().with_remote_span_context(sc);
        assert_eq!(
            inject(&cx),
            [(header::TRACEPARENT, TP.to_string()), (header::TRACESTATE, "vendor=a,other=b".into())]
        );
    }

    #[test]
    fn malformed_contexts_are_ignored() {
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(parse(bad, None).is_none(), "{bad}");
        }
        assert!(parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future", None).is_some());
        assert!(inject(&Context::new()).is_empty());
        assert!(!extract(|_| None).span().span_context().is_valid());
    }

    #[test]
    fn the_builder_gets_both_headers() {
        let cx = Context::new().with_remote_span_context(parse(TP, Some("k=v")).unwrap());
        let entry = outbox_core::NewEntry::builder("o", "1", "e").trace_context_of(&cx).build().unwrap();
        assert_eq!(entry.headers().get("traceparent"), Some(TP));
        assert_eq!(entry.headers().get("tracestate"), Some("k=v"));
        let back = extract_headers(entry.headers());
        assert_eq!(back.span().span_context().trace_id(), parse(TP, None).unwrap().trace_id());
    }
}
