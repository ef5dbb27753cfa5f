//! From an outbox [`Entry`] to a `PutEventsRequestEntry`, with the checks that must pass before
//! sending: the detail is JSON, the entry fits in a request.

use aws_sdk_eventbridge::primitives::DateTime;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use outbox_core::{Entry, Error, ErrorKind, header};

use crate::config::{DetailFormat, EventBridgeConfig, TRACE_CONTEXT_MEMBER, TraceHeader, check_detail_type};

/// Bytes the `Time` field counts for, as AWS documents it.
const TIME_BYTES: usize = 14;

/// The size of a `PutEvents` entry, as EventBridge counts it against the 256 KiB request limit:
/// `Time` 14 bytes if set, plus the UTF-8 bytes of `Source`, `DetailType`, `Detail` and each of
/// `Resources` (the formula of the EventBridge user guide, "Calculating PutEvents event entry
/// size"), plus, to be safe, the bytes of `EventBusName`. `TraceHeader` is not counted.
pub fn request_entry_size(entry: &PutEventsRequestEntry) -> usize {
    let text = |s: Option<&str>| s.map_or(0, str::len);
    let time = if entry.time().is_some() { TIME_BYTES } else { 0 };
    time + text(entry.source())
        + text(entry.detail_type())
        + text(entry.detail())
        + entry.resources().iter().map(String::len).sum::<usize>()
        + text(entry.event_bus_name())
}

/// A request entry ready to send, with its size.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) request: PutEventsRequestEntry,
    pub(crate) size: usize,
}

/// Maps `entry` to a request entry, or says why it can never be sent (a permanent error).
pub(crate) fn prepare(entry: &Entry, config: &EventBridgeConfig) -> Result<Prepared, Error> {
    let detail = detail(entry, config.detail_format)?;
    let detail_type = config.detail_type.of(entry);
    if let Err(reason) = check_detail_type(&detail_type) {
        return Err(Error::new(
            ErrorKind::Validation,
            format!("entry {}: its DetailType `{detail_type}` is not valid: {reason}", entry.id),
        ));
    }
    let mut request = PutEventsRequestEntry::builder()
        .source(config.source.as_str())
        .detail_type(detail_type)
        .detail(detail)
        .time(time(entry))
        .set_resources(Some(config.resources_of(entry)).filter(|r| !r.is_empty()))
        .set_event_bus_name(config.event_bus_name.clone());
    if let Some(trace) = trace_header(entry, config.trace_header) {
        request = request.trace_header(trace);
    }
    let request = request.build();
    let size = request_entry_size(&request);
    if size > config.max_request_bytes {
        return Err(Error::new(
            ErrorKind::TooLarge,
            format!(
                "entry {}: its PutEvents entry is {size} bytes (Time 14 + Source + DetailType + Detail + Resources + \
                 EventBusName), over the limit of {} bytes per request; store the data elsewhere (e.g. S3) and send \
                 a reference",
                entry.id, config.max_request_bytes
            ),
        ));
    }
    Ok(Prepared { request, size })
}

fn time(entry: &Entry) -> DateTime {
    let micros = entry.created_at.as_micros();
    let nanos = u32::try_from(micros.rem_euclid(1_000_000) * 1000).unwrap_or(0);
    DateTime::from_secs_and_nanos(micros.div_euclid(1_000_000), nanos)
}

/// The `Detail` text: the payload (a JSON object), or the envelope around it (any JSON value).
fn detail(entry: &Entry, format: DetailFormat) -> Result<String, Error> {
    let not_json = |reason: String| {
        Error::new(
            ErrorKind::Validation,
            format!(
                "entry {}: its payload cannot be an EventBridge Detail: {reason}; EventBridge carries JSON only \
                 (content type `{}`)",
                entry.id, entry.content_type
            ),
        )
    };
    let text =
        std::str::from_utf8(entry.payload.as_bytes()).map_err(|e| not_json(format!("it is not UTF-8 text ({e})")))?;
    serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(|e| not_json(format!("it is not valid JSON ({e})")))?;
    let object_only = || {
        not_json(
            "it is JSON but not an object, and Detail must be a JSON object; wrap it (or use \
             DetailFormat::Envelope)"
                .to_string(),
        )
    };
    match format {
        DetailFormat::Payload => {
            if !text.trim_start().starts_with('{') {
                return Err(object_only());
            }
            Ok(text.to_string())
        }
        DetailFormat::PayloadWithTraceContext => {
            let Some(body) = text.trim_start().strip_prefix('{') else {
                return Err(object_only());
            };
            let Some(traceparent) = entry.headers.get(header::TRACEPARENT) else {
                return Ok(text.to_string());
            };
            let has_member = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text)
                .map(|m| m.contains_key(TRACE_CONTEXT_MEMBER))
                .unwrap_or(false);
            if has_member {
                return Ok(text.to_string());
            }
            let mut context = serde_json::Map::new();
            context.insert(header::TRACEPARENT.to_string(), traceparent.into());
            if let Some(state) = entry.headers.get(header::TRACESTATE) {
                context.insert(header::TRACESTATE.to_string(), state.into());
            }
            let context = serde_json::Value::Object(context);
            // Spliced in as text: the payload's own members keep their order and formatting.
            let separator = if body.trim_start().starts_with('}') { "" } else { "," };
            Ok(format!(r#"{{"{TRACE_CONTEXT_MEMBER}":{context}{separator}{body}"#))
        }
        DetailFormat::Envelope => {
            let mut headers = serde_json::Map::new();
            for (name, value) in entry.headers.iter() {
                if !headers.contains_key(name) {
                    headers.insert(name.to_string(), value.into());
                }
            }
            let metadata = serde_json::json!({
                "id": entry.id.to_string(),
                "aggregate_type": entry.aggregate_type,
                "aggregate_id": entry.aggregate_id,
                "sequence": entry.sequence,
                "event_type": entry.event_type,
                "content_type": entry.content_type,
                "headers": headers,
            });
            Ok(format!(r#"{{"metadata":{metadata},"data":{}}}"#, text.trim()))
        }
    }
}

fn trace_header(entry: &Entry, mode: TraceHeader) -> Option<String> {
    let value = entry.headers.get(header::TRACEPARENT)?;
    match mode {
        TraceHeader::Off => None,
        TraceHeader::Verbatim => Some(value.to_string()),
        TraceHeader::XRay if value.starts_with("Root=") => Some(value.to_string()),
        TraceHeader::XRay => xray_from_traceparent(value),
    }
}

/// `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>` → `Root=1-<8>-<24>;Parent=<16>;Sampled=<0|1>`.
pub(crate) fn xray_from_traceparent(traceparent: &str) -> Option<String> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex =
        |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let ok = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && hex(span, 16)
        && span.bytes().any(|b| b != b'0')
        && hex(flags, 2)
        && (version != "00" || parts.next().is_none());
    if !ok {
        return None;
    }
    let sampled = u8::from_str_radix(flags, 16).ok()? & 1;
    Some(format!("Root=1-{}-{};Parent={span};Sampled={sampled}", &trace[..8], &trace[8..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DetailType, MAX_REQUEST_BYTES};
    use outbox_core::{NewEntry, Timestamp};

    fn entry(payload: &[u8]) -> Entry {
        let new = NewEntry::builder("order", "o-1", "order.placed")
            .payload(payload.to_vec(), "application/json")
            .traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .correlation_id("c-1")
            .correlation_id("c-2")
            .build()
            .unwrap();
        Entry::from_new(new, 7, Timestamp::from_micros(1_700_000_000_123_456))
    }

    fn config() -> EventBridgeConfig {
        EventBridgeConfig::builder("com.example.orders").event_bus_name("orders").build().unwrap()
    }

    #[test]
    fn fields_map_as_documented() {
        let e = entry(br#"{"total":42}"#);
        let config = EventBridgeConfig::builder("com.example.orders")
            .event_bus_name("orders")
            .resources(|e| vec![format!("arn:aws:example:::order/{}", e.aggregate_id)])
            .build()
            .unwrap();
        let p = prepare(&e, &config).unwrap();
        let r = &p.request;
        assert_eq!(r.source(), Some("com.example.orders"));
        assert_eq!(r.detail_type(), Some("order.placed"));
        assert_eq!(r.detail(), Some(r#"{"total":42}"#));
        assert_eq!(r.event_bus_name(), Some("orders"));
        assert_eq!(r.resources(), ["arn:aws:example:::order/o-1"]);
        assert_eq!(r.time(), Some(&DateTime::from_secs_and_nanos(1_700_000_000, 123_456_000)));
        assert_eq!(
            r.trace_header(),
            Some("Root=1-4bf92f35-77b34da6a3ce929d0e0e4736;Parent=00f067aa0ba902b7;Sampled=1")
        );
        let expected = 14 + "com.example.orders".len() + "order.placed".len() + 12 + 27 + "orders".len();
        assert_eq!(p.size, expected);
    }

    #[test]
    fn detail_type_and_trace_header_are_configurable() {
        let e = entry(b"{}");
        let fixed = EventBridgeConfig::builder("s")
            .detail_type(DetailType::Fixed("Order Event".into()))
            .trace_header(TraceHeader::Verbatim)
            .build()
            .unwrap();
        let p = prepare(&e, &fixed).unwrap();
        assert_eq!(p.request.detail_type(), Some("Order Event"));
        assert_eq!(p.request.trace_header(), Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        assert_eq!(p.request.event_bus_name(), None);
        assert!(p.request.resources().is_empty());
        let custom = EventBridgeConfig::builder("s")
            .detail_type(DetailType::with(|e| format!("{}:{}", e.aggregate_type, e.event_type)))
            .trace_header(TraceHeader::Off)
            .build()
            .unwrap();
        let p = prepare(&e, &custom).unwrap();
        assert_eq!(p.request.detail_type(), Some("order:order.placed"));
        assert_eq!(p.request.trace_header(), None);
        let empty = EventBridgeConfig::builder("s").detail_type(DetailType::with(|_| String::new())).build().unwrap();
        let err = prepare(&e, &empty).unwrap_err();
        assert_eq!((err.kind(), err.is_retryable()), (ErrorKind::Validation, false));
    }

    #[test]
    fn non_json_payloads_fail_permanently_with_the_reason() {
        for (payload, needle) in [
            (&b"not json"[..], "not valid JSON"),
            (b"", "not valid JSON"),
            (b"{\"a\":1} trailing", "not valid JSON"),
            (b"\xff\xfe{}", "not UTF-8"),
            (b"[1,2]", "not an object"),
            (b"\"text\"", "not an object"),
        ] {
            let err = prepare(&entry(payload), &config()).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Validation, "{err}");
            assert!(!err.is_retryable(), "{err}");
            assert!(err.message().contains(needle), "{payload:?}: {err}");
        }
    }

    #[test]
    fn envelope_wraps_the_payload_with_the_metadata() {
        let e = entry(br#" [1, 2] "#);
        let config = EventBridgeConfig::builder("s").detail_format(DetailFormat::Envelope).build().unwrap();
        let p = prepare(&e, &config).unwrap();
        let detail: serde_json::Value = serde_json::from_str(p.request.detail().unwrap()).unwrap();
        assert_eq!(detail["data"], serde_json::json!([1, 2]));
        let m = &detail["metadata"];
        assert_eq!(m["id"], e.id.to_string());
        assert_eq!(m["aggregate_type"], "order");
        assert_eq!(m["aggregate_id"], "o-1");
        assert_eq!(m["sequence"], 7);
        assert_eq!(m["event_type"], "order.placed");
        assert_eq!(m["content_type"], "application/json");
        assert_eq!(m["headers"]["correlation-id"], "c-1", "the first value of a repeated header wins");
        assert_eq!(m["headers"]["traceparent"], "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert!(prepare(&entry(b"nope"), &config).is_err(), "the payload must still be JSON");
    }

    #[test]
    fn payload_with_trace_context_adds_the_w3c_context_as_a_first_member() {
        let config =
            EventBridgeConfig::builder("s").detail_format(DetailFormat::PayloadWithTraceContext).build().unwrap();
        let with_state = |payload: &str| {
            let new = NewEntry::builder("o", "1", "e")
                .json(payload)
                .traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                .header("tracestate", "vendor=x")
                .build()
                .unwrap();
            Entry::from_new(new, 1, Timestamp::from_millis(0))
        };
        let p = prepare(&with_state(r#" {"total": 1.50, "a": 1} "#), &config).unwrap();
        assert_eq!(
            p.request.detail(),
            Some(
                r#"{"traceContext":{"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","tracestate":"vendor=x"},"total": 1.50, "a": 1} "#
            )
        );
        let p = prepare(&with_state("{}"), &config).unwrap();
        let detail: serde_json::Value = serde_json::from_str(p.request.detail().unwrap()).unwrap();
        assert_eq!(detail["traceContext"]["tracestate"], "vendor=x");
        let own = r#"{"traceContext":"mine"}"#;
        assert_eq!(prepare(&with_state(own), &config).unwrap().request.detail(), Some(own));
        assert_eq!(
            prepare(&entry(br#"{"x":1}"#), &config)
                .unwrap()
                .request
                .detail()
                .map(|d| d.starts_with(r#"{"traceContext":{"traceparent""#)),
            Some(true)
        );
        let bare = Entry::from_new(
            NewEntry::builder("o", "1", "e").json(r#"{"x":1}"#).build().unwrap(),
            1,
            Timestamp::from_millis(0),
        );
        assert_eq!(prepare(&bare, &config).unwrap().request.detail(), Some(r#"{"x":1}"#));
        assert!(prepare(&with_state("[1]"), &config).is_err(), "still an object only");
    }

    #[test]
    fn an_entry_over_the_limit_is_too_large_and_permanent() {
        let overhead = 14 + "com.example.orders".len() + "order.placed".len() + "orders".len();
        let fits = format!(r#"{{"x":"{}"}}"#, "a".repeat(MAX_REQUEST_BYTES - overhead - 8));
        assert_eq!(prepare(&entry(fits.as_bytes()), &config()).unwrap().size, MAX_REQUEST_BYTES);
        let over = format!(r#"{{"x":"{}"}}"#, "a".repeat(MAX_REQUEST_BYTES - overhead - 7));
        let err = prepare(&entry(over.as_bytes()), &config()).unwrap_err();
        assert_eq!((err.kind(), err.is_retryable()), (ErrorKind::TooLarge, false));
        assert!(err.message().contains("262145 bytes"), "{err}");
        assert!(err.message().contains("over the limit of 262144"), "{err}");
    }

    #[test]
    fn traceparent_converts_to_xray_or_is_left_out() {
        assert_eq!(
            xray_from_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").as_deref(),
            Some("Root=1-4bf92f35-77b34da6a3ce929d0e0e4736;Parent=00f067aa0ba902b7;Sampled=0")
        );
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(xray_from_traceparent(bad), None, "{bad}");
        }
        let new = NewEntry::builder("o", "1", "e")
            .json("{}")
            .traceparent("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1")
            .build()
            .unwrap();
        let p = prepare(&Entry::from_new(new, 1, Timestamp::from_millis(0)), &config()).unwrap();
        assert_eq!(
            p.request.trace_header(),
            Some("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1")
        );
        let bare =
            Entry::from_new(NewEntry::builder("o", "1", "e").json("{}").build().unwrap(), 1, Timestamp::from_millis(0));
        assert_eq!(prepare(&bare, &config()).unwrap().request.trace_header(), None);
    }
}
