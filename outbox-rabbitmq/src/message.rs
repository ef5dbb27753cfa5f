//! How an [`Entry`] becomes an AMQP message: routing key, properties and headers.
//!
//! | AMQP | from the entry |
//! |---|---|
//! | exchange | the configured exchange |
//! | routing key | [`Routing`](crate::Routing): the event type by default |
//! | `message_id` | [`Entry::id`] as a hyphenated UUID (consumers de-duplicate by it) |
//! | `type` | [`Entry::event_type`] |
//! | `content_type` | [`Entry::content_type`] |
//! | `timestamp` | [`Entry::created_at`], whole seconds since the Unix epoch |
//! | `delivery_mode` | 2 (persistent), or 1 with `persistent(false)` |
//! | `app_id` | the configured app id, if any |
//! | headers | the entry's headers as long strings (`traceparent` and `tracestate` included), then [`AGGREGATE_TYPE`], [`AGGREGATE_ID`] (long strings) and [`SEQUENCE`] (a signed 64-bit integer) |
//! | body | [`Entry::payload`], unchanged |
//!
//! An AMQP table has one value per name: when an entry repeats a header name, the first value
//! wins (as [`Headers::get`](outbox_core::Headers::get) reads it), and the metadata headers win
//! over an entry header of the same name (entries built with [`NewEntry`](outbox_core::NewEntry)
//! cannot use the reserved `outbox-` prefix).

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use outbox_core::{Entry, Error, ErrorKind};

use crate::config::{MAX_SHORT_STRING, RabbitMqConfig};

/// Header carrying [`Entry::aggregate_type`] (an AMQP long string).
pub const AGGREGATE_TYPE: &str = "outbox-aggregate-type";
/// Header carrying [`Entry::aggregate_id`] (an AMQP long string).
pub const AGGREGATE_ID: &str = "outbox-aggregate-id";
/// Header carrying [`Entry::sequence`] (an AMQP signed 64-bit integer, `l`).
pub const SEQUENCE: &str = "outbox-sequence";

/// One entry ready to publish.
pub(crate) struct Message {
    pub(crate) routing_key: ShortString,
    pub(crate) properties: BasicProperties,
}

fn short(entry: &Entry, what: &str, value: &str) -> Result<ShortString, Error> {
    ShortString::try_new(value).map_err(|_| {
        Error::new(
            ErrorKind::Validation,
            format!(
                "entry {} cannot be sent to RabbitMQ: its {what} `{}…` is {} bytes, over AMQP's limit of {MAX_SHORT_STRING}",
                entry.id,
                value.chars().take(40).collect::<String>(),
                value.len()
            ),
        )
    })
}

/// Maps `entry` to its message; an error is permanent and concerns this entry alone.
pub(crate) fn message(entry: &Entry, config: &RabbitMqConfig) -> Result<Message, Error> {
    let routing_key = short(entry, "routing key", &config.routing.key_for(entry))?;
    let mut headers = FieldTable::default();
    for (name, value) in entry.headers.iter() {
        if !headers.contains_key(name) {
            headers.insert(short(entry, "header name", name)?, AMQPValue::LongString(LongString::from(value)));
        }
    }
    headers.insert(AGGREGATE_TYPE.into(), AMQPValue::LongString(LongString::from(entry.aggregate_type.as_str())));
    headers.insert(AGGREGATE_ID.into(), AMQPValue::LongString(LongString::from(entry.aggregate_id.as_str())));
    headers.insert(SEQUENCE.into(), AMQPValue::LongLongInt(entry.sequence));
    let seconds = u64::try_from(entry.created_at.as_micros().div_euclid(1_000_000)).unwrap_or(0);
    let mut properties = BasicProperties::default()
        .with_message_id(short(entry, "id", &entry.id.to_string())?)
        .with_type(short(entry, "event type", &entry.event_type)?)
        .with_content_type(short(entry, "content type", &entry.content_type)?)
        .with_timestamp(seconds)
        .with_delivery_mode(if config.persistent { 2 } else { 1 })
        .with_headers(headers);
    if let Some(app_id) = &config.app_id {
        // validated when the configuration was built
        properties = properties.with_app_id(short(entry, "app id", app_id)?);
    }
    Ok(Message { routing_key, properties })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Routing;
    use outbox_core::{NewEntry, Timestamp};

    fn entry() -> Entry {
        let new = NewEntry::builder("order", "o-1", "order.placed")
            .json("{}")
            .traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .header("x-dup", "first")
            .header("x-dup", "second")
            .build()
            .unwrap();
        Entry::from_new(new, 7, Timestamp::from_millis(1_700_000_000_999))
    }

    fn config(routing: Routing) -> RabbitMqConfig {
        RabbitMqConfig::builder("amqp://127.0.0.1", "events").routing(routing).app_id("billing").build().unwrap()
    }

    fn header<'a>(p: &'a BasicProperties, name: &str) -> &'a AMQPValue {
        p.headers().as_ref().unwrap().inner().get(name).unwrap()
    }

    #[test]
    fn maps_properties_and_headers() {
        let e = entry();
        let m = message(&e, &config(Routing::EventType)).unwrap();
        let p = &m.properties;
        assert_eq!(m.routing_key.as_str(), "order.placed");
        assert_eq!(p.message_id().as_ref().unwrap().as_str(), e.id.to_string());
        assert_eq!(p.kind().as_ref().unwrap().as_str(), "order.placed");
        assert_eq!(p.content_type().as_ref().unwrap().as_str(), "application/json");
        assert_eq!(*p.timestamp(), Some(1_700_000_000));
        assert_eq!(*p.delivery_mode(), Some(2));
        assert_eq!(p.app_id().as_ref().unwrap().as_str(), "billing");
        assert_eq!(header(p, "x-dup"), &AMQPValue::LongString("first".into()));
        assert_eq!(header(p, SEQUENCE), &AMQPValue::LongLongInt(7));
        assert_eq!(header(p, AGGREGATE_ID), &AMQPValue::LongString("o-1".into()));
        assert_eq!(header(p, AGGREGATE_TYPE), &AMQPValue::LongString("order".into()));
    }

    #[test]
    fn routes_as_configured() {
        let e = entry();
        let key = |r| message(&e, &config(r)).unwrap().routing_key.to_string();
        assert_eq!(key(Routing::AggregateType), "order");
        assert_eq!(key(Routing::Fixed("all".into())), "all");
        assert_eq!(key(Routing::function(|e| format!("{}.{}", e.aggregate_type, e.sequence))), "order.7");
    }

    #[test]
    fn an_overlong_function_key_fails_the_entry_permanently() {
        let e = entry();
        let err = message(&e, &config(Routing::function(|_| "k".repeat(300)))).err().unwrap();
        assert_eq!(err.kind(), ErrorKind::Validation);
        assert!(!err.is_retryable());
        assert!(err.message().contains("routing key"), "{err}");
    }
}
