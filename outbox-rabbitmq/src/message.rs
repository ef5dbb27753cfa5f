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
//! ## Size limits
//! Before anything is sent, each entry is checked against the two limits a broker enforces,
//! and one that can never fit fails alone, permanently ([`ErrorKind::TooLarge`]), without
//! being sent (sending it would make the broker close the channel or the connection, failing
//! the whole batch again and again):
//! - the **body** (the payload) must be at most the configured
//!   [`max_message_size`](crate::RabbitMqConfigBuilder::max_message_size), which should match
//!   the broker's `max_message_size` (RabbitMQ 4.x default 16 MiB, 3.8 to 3.13 default
//!   128 MiB, never more than 512 MiB);
//! - the **properties and headers** travel in one content-header frame, which AMQP 0-9-1 does
//!   not split: [`header_frame_len`] must be at most the connection's negotiated `frame_max`
//!   (RabbitMQ's default 131,072 bytes). With the outbox's default limits an entry may carry
//!   64 headers of 8 KiB, about 540 KiB: far more than fits.
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

/// The bytes of an AMQP frame around its payload: type (1), channel (2), size (4), frame end (1).
const FRAME_OVERHEAD: usize = 8;

/// The bytes of a content-header payload before the properties: class id (2), weight (2),
/// body size (8), property flags (2: the basic class has 14 properties).
const CONTENT_HEADER_FIXED: usize = 14;

fn short_string_len(s: &str) -> usize {
    1 + s.len()
}

/// The encoded size of a field-table value, type tag included, for the values this crate sends.
fn value_len(value: &AMQPValue) -> usize {
    1 + match value {
        AMQPValue::LongString(s) => 4 + s.len(),
        AMQPValue::LongLongInt(_) => 8,
        // Not sent by this crate; counted generously so a mistake errs towards refusing.
        _ => 64,
    }
}

fn table_len(table: &FieldTable) -> usize {
    4 + table.inner().iter().map(|(name, value)| 1 + name.as_str().len() + value_len(value)).sum::<usize>()
}

/// The size in bytes of the content-header frame of `properties`: what must fit in the
/// connection's `frame_max`.
fn properties_frame_len(properties: &BasicProperties) -> usize {
    let shorts = [
        properties.content_type(),
        properties.content_encoding(),
        properties.correlation_id(),
        properties.reply_to(),
        properties.expiration(),
        properties.message_id(),
        properties.kind(),
        properties.user_id(),
        properties.app_id(),
        properties.cluster_id(),
    ];
    let strings: usize = shorts.iter().filter_map(|s| s.as_ref()).map(|s| short_string_len(s.as_str())).sum();
    let octets = usize::from(properties.delivery_mode().is_some()) + usize::from(properties.priority().is_some());
    let timestamp = if properties.timestamp().is_some() { 8 } else { 0 };
    let headers = properties.headers().as_ref().map_or(0, table_len);
    FRAME_OVERHEAD + CONTENT_HEADER_FIXED + strings + octets + timestamp + headers
}

/// The size in bytes of the content-header frame that carries `entry`'s properties and headers
/// under `config`: it must be at most the connection's negotiated `frame_max` (131,072 on a
/// default RabbitMQ), or the entry can never be sent (see [the size limits](self#size-limits)).
///
/// Fails as the publisher would if the entry cannot be mapped at all (a routing key, header
/// name or property over 255 bytes).
pub fn header_frame_len(entry: &Entry, config: &RabbitMqConfig) -> Result<usize, Error> {
    let message = map(entry, config)?;
    Ok(properties_frame_len(&message.properties))
}

fn short(entry: &Entry, what: &str, value: &str) -> Result<ShortString, Error> {
    ShortString::try_new(value).map_err(|_| {
        Error::new(
            ErrorKind::Validation,
            format!(
                "entry {} cannot be sent to RabbitMQ: its {what} `{}…` is {} bytes, over AMQP's limit of {MAX_SHORT_STRING}; shorten it",
                entry.id,
                value.chars().take(40).collect::<String>(),
                value.len()
            ),
        )
    })
}

/// Maps `entry` to its message for a connection whose negotiated `frame_max` is `frame_max`
/// (0: unlimited), after checking that it can ever fit; an error is permanent and concerns this
/// entry alone.
pub(crate) fn message(entry: &Entry, config: &RabbitMqConfig, frame_max: u32) -> Result<Message, Error> {
    let body = entry.payload.len();
    if body > config.max_message_size {
        return Err(Error::new(
            ErrorKind::TooLarge,
            format!(
                "entry {} cannot be sent to RabbitMQ: its payload is {body} bytes, over max_message_size of {} bytes \
                 (set it to the broker's `max_message_size`); store large data elsewhere and send a reference",
                entry.id, config.max_message_size
            ),
        ));
    }
    let message = map(entry, config)?;
    let frame = properties_frame_len(&message.properties);
    if frame_max != 0 && frame > frame_max as usize {
        return Err(Error::new(
            ErrorKind::TooLarge,
            format!(
                "entry {} cannot be sent to RabbitMQ: its properties and headers take a {frame}-byte header frame, over \
                 the connection's frame_max of {frame_max} bytes (AMQP does not split header frames); send fewer or \
                 shorter headers, or raise the broker's `frame_max`",
                entry.id
            ),
        ));
    }
    Ok(message)
}

/// Maps `entry` to its message, checking only AMQP's short-string limits.
fn map(entry: &Entry, config: &RabbitMqConfig) -> Result<Message, Error> {
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
        let m = message(&e, &config(Routing::EventType), 131_072).unwrap();
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
        let key = |r| message(&e, &config(r), 131_072).unwrap().routing_key.to_string();
        assert_eq!(key(Routing::AggregateType), "order");
        assert_eq!(key(Routing::Fixed("all".into())), "all");
        assert_eq!(key(Routing::function(|e| format!("{}.{}", e.aggregate_type, e.sequence))), "order.7");
    }

    #[test]
    fn an_overlong_function_key_fails_the_entry_permanently() {
        let e = entry();
        let err = message(&e, &config(Routing::function(|_| "k".repeat(300))), 131_072).err().unwrap();
        assert_eq!(err.kind(), ErrorKind::Validation);
        assert!(!err.is_retryable());
        assert!(err.message().contains("routing key"), "{err}");
    }
}
