//! Which topic an entry goes to: [`Routing`], and Kafka's rules for topic names.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use outbox_core::{Entry, Error, ErrorKind};

use crate::config::ConfigError;

/// The longest topic name Kafka accepts.
pub const MAX_TOPIC_LEN: usize = 249;

/// Checks a topic name against Kafka's rules: 1 to 249 characters from `[a-zA-Z0-9._-]`, and
/// neither `.` nor `..`.
///
/// Returns why the name is invalid, written to be shown to whoever chose it.
///
/// ```
/// use outbox_kafka::validate_topic;
/// assert!(validate_topic("orders.v1").is_ok());
/// assert!(validate_topic("order placed").is_err());
/// assert!(validate_topic("..").is_err());
/// ```
pub fn validate_topic(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty; give a name such as `orders`".to_string());
    }
    if name == "." || name == ".." {
        return Err(format!("`{name}` is not allowed as a topic name"));
    }
    if name.len() > MAX_TOPIC_LEN {
        return Err(format!("is {} characters, over Kafka's limit of {MAX_TOPIC_LEN}", name.len()));
    }
    if let Some(bad) = name.chars().find(|c| !is_topic_char(*c)) {
        return Err(format!("`{name}` contains {bad:?}; Kafka topic names use only letters, digits, `.`, `_` and `-`"));
    }
    Ok(())
}

fn is_topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// A user function choosing an entry's topic (see [`Routing::custom`]).
pub type TopicFn = dyn Fn(&Entry) -> String + Send + Sync;

#[derive(Clone)]
enum Rule {
    Topic(String),
    EventType,
    AggregateType,
    Custom(Arc<TopicFn>),
}

/// Which topic each entry is published to.
///
/// Names fixed at configuration time are validated then (an invalid one is a [`ConfigError`]);
/// names that depend on the entry are validated per entry at publish time, and an invalid one
/// is a permanent failure of that entry alone ([`ErrorKind::Rejected`]).
///
/// Kafka keeps order within a partition of one topic: when the events of one aggregate go to
/// several topics (routing by event type), consumers see each topic's share in order, not the
/// aggregate's events as one sequence. Route by aggregate type or to one topic when a consumer
/// needs them all in order.
///
/// ```
/// use outbox_kafka::Routing;
/// // Everything to one topic:
/// let one = Routing::topic("outbox.events")?;
/// // `order.placed` goes to `prod.order.placed`, `order.cancelled` to `prod.order.cancelled`:
/// let by_event = Routing::by_event_type().prefixed("prod.")?;
/// // Anything else:
/// let custom = Routing::custom(|entry| format!("{}-events", entry.aggregate_type));
/// # let _ = (one, by_event, custom);
/// # Ok::<(), outbox_kafka::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct Routing {
    rule: Rule,
    prefix: String,
}

impl Routing {
    /// Every entry to `name`, which is validated now.
    pub fn topic(name: impl Into<String>) -> Result<Self, ConfigError> {
        let name = name.into();
        validate_topic(&name).map_err(|reason| ConfigError::InvalidTopic { name: name.clone(), reason })?;
        Ok(Routing { rule: Rule::Topic(name), prefix: String::new() })
    }

    /// Each entry to the topic named like its event type (`order.placed`).
    pub fn by_event_type() -> Self {
        Routing { rule: Rule::EventType, prefix: String::new() }
    }

    /// Each entry to the topic named like its aggregate type (`order`).
    pub fn by_aggregate_type() -> Self {
        Routing { rule: Rule::AggregateType, prefix: String::new() }
    }

    /// Each entry to the topic `topic_for` returns. The name is validated per entry.
    pub fn custom(topic_for: impl Fn(&Entry) -> String + Send + Sync + 'static) -> Self {
        Routing { rule: Rule::Custom(Arc::new(topic_for)), prefix: String::new() }
    }

    /// Puts `prefix` in front of every topic name (e.g. an environment: `prod.`).
    ///
    /// The prefix must use only topic-name characters and leave room for a name; with
    /// [`Routing::topic`] the whole name is validated again.
    pub fn prefixed(mut self, prefix: impl Into<String>) -> Result<Self, ConfigError> {
        let prefix = prefix.into();
        let invalid = |reason: String| ConfigError::InvalidTopicPrefix { prefix: prefix.clone(), reason };
        if let Some(bad) = prefix.chars().find(|c| !is_topic_char(*c)) {
            return Err(invalid(format!("contains {bad:?}; use only letters, digits, `.`, `_` and `-`")));
        }
        if prefix.len() >= MAX_TOPIC_LEN {
            return Err(invalid(format!("is {} characters and leaves no room under Kafka's limit", prefix.len())));
        }
        self.prefix = format!("{prefix}{}", self.prefix);
        if let Rule::Topic(name) = &self.rule {
            let full = format!("{}{name}", self.prefix);
            validate_topic(&full).map_err(|reason| ConfigError::InvalidTopic { name: full.clone(), reason })?;
        }
        Ok(self)
    }

    /// The topic of `entry`, validated; an invalid name is a permanent [`ErrorKind::Rejected`].
    pub fn topic_for<'a>(&'a self, entry: &'a Entry) -> Result<Cow<'a, str>, Error> {
        let base: Cow<'a, str> = match &self.rule {
            // Validated (with the prefix) when configured.
            Rule::Topic(name) if self.prefix.is_empty() => return Ok(Cow::Borrowed(name)),
            Rule::Topic(name) => return Ok(Cow::Owned(format!("{}{name}", self.prefix))),
            Rule::EventType => Cow::Borrowed(&entry.event_type),
            Rule::AggregateType => Cow::Borrowed(&entry.aggregate_type),
            Rule::Custom(f) => Cow::Owned(f(entry)),
        };
        let name = if self.prefix.is_empty() { base } else { Cow::Owned(format!("{}{base}", self.prefix)) };
        match validate_topic(&name) {
            Ok(()) => Ok(name),
            Err(reason) => Err(Error::new(
                ErrorKind::Rejected,
                format!(
                    "entry {} routes to an invalid Kafka topic name: {reason}; change the entry's {} or the routing",
                    entry.id,
                    self.source_field()
                ),
            )),
        }
    }

    fn source_field(&self) -> &'static str {
        match self.rule {
            Rule::Topic(_) => "topic",
            Rule::EventType => "event type",
            Rule::AggregateType => "aggregate type",
            Rule::Custom(_) => "fields read by the routing function",
        }
    }
}

impl fmt::Debug for Routing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Routing");
        match &self.rule {
            Rule::Topic(name) => d.field("topic", name),
            Rule::EventType => d.field("by", &"event type"),
            Rule::AggregateType => d.field("by", &"aggregate type"),
            Rule::Custom(_) => d.field("by", &"custom function"),
        };
        d.field("prefix", &self.prefix).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outbox_core::{NewEntry, Timestamp};

    fn entry(aggregate_type: &str, event_type: &str) -> Entry {
        let new = NewEntry::builder(aggregate_type, "a-1", event_type).build().unwrap();
        Entry::from_new(new, 1, Timestamp::from_millis(0))
    }

    #[test]
    fn kafka_topic_rules() {
        for ok in ["a", "orders", "order.placed", "A-b_c.9", &"x".repeat(249)] {
            assert!(validate_topic(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "order placed", "orders/v1", "ordér", &"x".repeat(250), "a\n"] {
            assert!(validate_topic(bad).is_err(), "{bad:?}");
        }
        // Three dots are fine by Kafka's rules.
        assert!(validate_topic("...").is_ok());
    }

    #[test]
    fn fixed_topics_and_prefixes_are_checked_when_configured() {
        assert!(matches!(Routing::topic("bad topic"), Err(ConfigError::InvalidTopic { .. })));
        assert!(matches!(Routing::topic(""), Err(ConfigError::InvalidTopic { .. })));
        assert!(matches!(Routing::by_event_type().prefixed("prod/"), Err(ConfigError::InvalidTopicPrefix { .. })));
        assert!(matches!(
            Routing::topic("x".repeat(240)).unwrap().prefixed("0123456789"),
            Err(ConfigError::InvalidTopic { .. })
        ));
        let r = Routing::topic("events").unwrap().prefixed("prod.").unwrap();
        assert_eq!(r.topic_for(&entry("order", "order.placed")).unwrap(), "prod.events");
    }

    #[test]
    fn routes_by_event_type_aggregate_type_and_function() {
        let e = entry("order", "order.placed");
        assert_eq!(Routing::by_event_type().topic_for(&e).unwrap(), "order.placed");
        assert_eq!(Routing::by_aggregate_type().prefixed("dev-").unwrap().topic_for(&e).unwrap(), "dev-order");
        let custom = Routing::custom(|e| format!("{}-{}", e.aggregate_type, e.aggregate_id));
        assert_eq!(custom.topic_for(&e).unwrap(), "order-a-1");
    }

    #[test]
    fn an_invalid_routed_name_is_a_permanent_rejection() {
        let err = Routing::by_event_type().topic_for(&entry("order", "order placed")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Rejected);
        assert!(!err.is_retryable());
        assert!(err.message().contains("event type"), "{err}");
        let err = Routing::custom(|_| String::new()).topic_for(&entry("o", "e")).unwrap_err();
        assert!(err.message().contains("is empty"), "{err}");
    }
}
