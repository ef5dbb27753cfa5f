//! The Kafka headers every message carries.
//!
//! Each message carries, in this order:
//!
//! | header | value |
//! |---|---|
//! | [`ID`] `outbox-id` | the entry id, a hyphenated UUID; consumers de-duplicate by it |
//! | [`EVENT_TYPE`] `outbox-event-type` | e.g. `order.placed` |
//! | [`AGGREGATE_TYPE`] `outbox-aggregate-type` | e.g. `order` |
//! | [`AGGREGATE_ID`] `outbox-aggregate-id` | e.g. `o-42` (also the default key) |
//! | [`SEQUENCE`] `outbox-sequence` | the entry's position in its aggregate, decimal; increases, may have gaps |
//! | [`CONTENT_TYPE`] `content-type` | the payload's media type, e.g. `application/json` |
//!
//! then the entry's own headers, unchanged and in order (`traceparent`, `tracestate`,
//! `correlation-id`, ...). Entry headers cannot start with `outbox-` (the core rejects them),
//! so the metadata never collides with them. `content-type` is the name the CloudEvents Kafka
//! binding and most tooling read; if an entry carries its own `content-type` header, that one
//! is sent and the adapter adds none, so there is only ever one.
//!
//! All values are UTF-8 text.

use outbox_core::Entry;
use rdkafka::message::{Header, OwnedHeaders};

/// The entry id (hyphenated UUID).
pub const ID: &str = "outbox-id";
/// The event type.
pub const EVENT_TYPE: &str = "outbox-event-type";
/// The aggregate type.
pub const AGGREGATE_TYPE: &str = "outbox-aggregate-type";
/// The aggregate id.
pub const AGGREGATE_ID: &str = "outbox-aggregate-id";
/// The entry's sequence within its aggregate (decimal).
pub const SEQUENCE: &str = "outbox-sequence";
/// The payload's media type.
pub const CONTENT_TYPE: &str = "content-type";

/// The headers of `entry`'s message.
pub(crate) fn for_entry(entry: &Entry) -> OwnedHeaders {
    let id = entry.id.to_string();
    let sequence = entry.sequence.to_string();
    let own_content_type = entry.headers.iter().any(|(name, _)| name.eq_ignore_ascii_case(CONTENT_TYPE));
    let mut headers = OwnedHeaders::new_with_capacity(6 + entry.headers.len())
        .insert(Header { key: ID, value: Some(id.as_str()) })
        .insert(Header { key: EVENT_TYPE, value: Some(entry.event_type.as_str()) })
        .insert(Header { key: AGGREGATE_TYPE, value: Some(entry.aggregate_type.as_str()) })
        .insert(Header { key: AGGREGATE_ID, value: Some(entry.aggregate_id.as_str()) })
        .insert(Header { key: SEQUENCE, value: Some(sequence.as_str()) });
    if !own_content_type {
        headers = headers.insert(Header { key: CONTENT_TYPE, value: Some(entry.content_type.as_str()) });
    }
    for (name, value) in entry.headers.iter() {
        headers = headers.insert(Header { key: name, value: Some(value) });
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use outbox_core::{NewEntry, Timestamp};
    use rdkafka::message::Headers;

    fn pairs(headers: &OwnedHeaders) -> Vec<(String, String)> {
        headers
            .iter()
            .map(|h| (h.key.to_string(), String::from_utf8(h.value.unwrap_or_default().to_vec()).unwrap()))
            .collect()
    }

    #[test]
    fn metadata_then_the_entrys_own_headers_in_order() {
        let new = NewEntry::builder("order", "o-42", "order.placed")
            .json("{}")
            .traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .correlation_id("c-1")
            .build()
            .unwrap();
        let entry = Entry::from_new(new, 7, Timestamp::from_millis(0));
        let got = pairs(&for_entry(&entry));
        let want: Vec<(String, String)> = [
            (ID, entry.id.to_string().as_str()),
            (EVENT_TYPE, "order.placed"),
            (AGGREGATE_TYPE, "order"),
            (AGGREGATE_ID, "o-42"),
            (SEQUENCE, "7"),
            (CONTENT_TYPE, "application/json"),
            ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            ("correlation-id", "c-1"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn an_entrys_own_content_type_header_wins() {
        let new = NewEntry::builder("o", "1", "e")
            .payload("x", "text/plain")
            .header("Content-Type", "text/x-custom")
            .build()
            .unwrap();
        let got = pairs(&for_entry(&Entry::from_new(new, 1, Timestamp::from_millis(0))));
        let content_types: Vec<_> = got.iter().filter(|(k, _)| k.eq_ignore_ascii_case(CONTENT_TYPE)).collect();
        assert_eq!(content_types, [&("Content-Type".to_string(), "text/x-custom".to_string())]);
    }
}
