//! The publisher's configuration: [`KafkaConfig`], [`Key`] and [`ConfigError`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use outbox_core::{Entry, Error, ErrorKind};
use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;

use crate::routing::Routing;

/// The options [`KafkaConfig::new`] sets, in order; each can be overridden with
/// [`KafkaConfig::set`].
///
/// - `enable.idempotence=true` and `acks=all`: the broker de-duplicates librdkafka's own retries
///   and keeps the order of one partition even when retries happen (librdkafka then keeps
///   `max.in.flight` at 5 or less itself).
/// - `partitioner=murmur2_random`: a key goes to the same partition as with the Java client, so
///   other producers of the same keys agree on partitions.
/// - `message.timeout.ms=8000`: a message not acknowledged within 8 s fails (retryable), instead
///   of librdkafka's 300 s. This is below the relay's default 10 s `publish_timeout`, so every
///   outcome of a batch is known before the relay would give up on it (an abandoned batch may
///   still reach the broker later: a duplicate). Raise both together.
pub const DEFAULT_OPTIONS: &[(&str, &str)] = &[
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("partitioner", "murmur2_random"),
    ("message.timeout.ms", "8000"),
];

/// librdkafka's delivery timeout option; `delivery.timeout.ms` is its alias.
pub(crate) const MESSAGE_TIMEOUT: &str = "message.timeout.ms";

/// A user function computing an entry's message key (see [`Key::Custom`]).
pub type KeyFn = dyn Fn(&Entry) -> Vec<u8> + Send + Sync;

/// What the Kafka message key is. The key picks the partition, and order holds only within a
/// partition: keep all entries of one aggregate on one key.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum Key {
    /// The aggregate id (the default): `o-42`.
    #[default]
    AggregateId,
    /// The aggregate type and id joined by `/`: `order/o-42`, for topics shared by several
    /// aggregate types whose ids may collide.
    AggregateTypeAndId,
    /// A user function. It must give the same key to all entries of one aggregate, or their
    /// order is lost.
    Custom(Arc<KeyFn>),
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::AggregateId => f.write_str("AggregateId"),
            Key::AggregateTypeAndId => f.write_str("AggregateTypeAndId"),
            Key::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// A configuration that cannot work, found before anything is sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A topic name breaks Kafka's rules.
    #[error("invalid Kafka topic name {name:?}: {reason}")]
    InvalidTopic {
        /// The name.
        name: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A topic prefix cannot lead to valid names.
    #[error("invalid Kafka topic prefix {prefix:?}: {reason}")]
    InvalidTopicPrefix {
        /// The prefix.
        prefix: String,
        /// Why it is invalid.
        reason: String,
    },
    /// `bootstrap.servers` is empty.
    #[error("no Kafka brokers configured: give `host:port[,host:port...]` to KafkaConfig::new")]
    NoBrokers,
    /// librdkafka refused an option (unknown name, bad value, or a combination it forbids, such
    /// as `acks=1` with `enable.idempotence=true`).
    #[error("librdkafka refused the producer configuration: {0}; see librdkafka's CONFIGURATION.md")]
    Rejected(String),
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        Error::new(ErrorKind::Config, e.to_string())
    }
}

/// librdkafka's default `message.max.bytes`: 1,000,000 bytes (not 1 MiB).
pub const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;

/// Whether an option's value is a secret that must never be shown: its name contains
/// `password`, `secret`, `token`, `key`, `credential`, `oauth`, `jaas`, ... in any case,
/// misspelled or not (see [`outbox_core::redact::is_secret_name`]).
pub(crate) fn is_secret(option: &str) -> bool {
    outbox_core::redact::is_secret_name(option)
}

const REDACTED: &str = "<redacted>";

/// How an option's value may be shown: secrets redacted, and a `bootstrap.servers` entry written
/// as a URL with credentials (`sasl_ssl://user:password@host:9092`) shown with them redacted.
fn shown_value<'a>(option: &str, value: &'a str) -> std::borrow::Cow<'a, str> {
    if is_secret(option) {
        REDACTED.into()
    } else if value.contains('@') {
        value.split(',').map(outbox_core::redact::redact_url).collect::<Vec<_>>().join(",").into()
    } else {
        value.into()
    }
}

/// How to reach Kafka and how to turn entries into messages.
///
/// Any librdkafka producer option can be set with [`KafkaConfig::set`] (SASL, TLS, compression,
/// `linger.ms`, ...); see librdkafka's `CONFIGURATION.md`. TLS needs this crate's `ssl`
/// feature, gzip and zstd compression its `gzip` and `zstd` features (lz4 and snappy are always
/// built in). `Debug` shows secret values (`sasl.password`, `ssl.key.password`, ...) as
/// `<redacted>`.
///
/// ```
/// use outbox_kafka::{KafkaConfig, Key, Routing};
/// let config = KafkaConfig::new("broker-1:9092,broker-2:9092", Routing::by_event_type().prefixed("prod.")?)
///     .key(Key::AggregateTypeAndId)
///     .set("compression.type", "lz4")
///     .set("linger.ms", "10")
///     .set("security.protocol", "sasl_plaintext")
///     .set("sasl.mechanism", "PLAIN")
///     .set("sasl.username", "relay")
///     .set("sasl.password", "s3cr3t");
/// assert!(!format!("{config:?}").contains("s3cr3t"));
/// # Ok::<(), outbox_kafka::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct KafkaConfig {
    pub(crate) options: BTreeMap<String, String>,
    pub(crate) routing: Routing,
    pub(crate) key: Key,
}

impl KafkaConfig {
    /// Publishes to the brokers `bootstrap_servers` (`host:port[,host:port...]`) along
    /// `routing`, with the [`DEFAULT_OPTIONS`] and [`Key::AggregateId`].
    pub fn new(bootstrap_servers: impl Into<String>, routing: Routing) -> Self {
        let mut options: BTreeMap<String, String> =
            DEFAULT_OPTIONS.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        options.insert("bootstrap.servers".to_string(), bootstrap_servers.into());
        KafkaConfig { options, routing, key: Key::default() }
    }

    /// Sets a librdkafka option, replacing an earlier value (including a default).
    /// librdkafka checks names and values when the publisher is built. `delivery.timeout.ms` is
    /// stored as `message.timeout.ms`, the option it is an alias of, so it replaces the default.
    pub fn set(mut self, option: impl Into<String>, value: impl Into<String>) -> Self {
        let option = option.into();
        let option = if option == "delivery.timeout.ms" { MESSAGE_TIMEOUT.to_string() } else { option };
        self.options.insert(option, value.into());
        self
    }

    /// The value of a librdkafka option, if set here.
    pub fn get(&self, option: &str) -> Option<&str> {
        self.options.get(option).map(String::as_str)
    }

    /// Sets what the message key is (default [`Key::AggregateId`]).
    pub fn key(mut self, key: Key) -> Self {
        self.key = key;
        self
    }

    /// Replaces the routing.
    pub fn routing(mut self, routing: Routing) -> Self {
        self.routing = routing;
        self
    }

    /// The producer's `message.max.bytes`: the configured value, or librdkafka's default
    /// [`DEFAULT_MESSAGE_MAX_BYTES`] (1,000,000). Every entry is checked against it before it is
    /// sent (see [`KafkaPublisher`](crate::KafkaPublisher)).
    pub fn message_max_bytes(&self) -> usize {
        self.get("message.max.bytes").and_then(|v| v.trim().parse().ok()).unwrap_or(DEFAULT_MESSAGE_MAX_BYTES)
    }

    /// The values of the secret options, for scrubbing driver messages.
    fn secret_values(&self) -> Vec<&str> {
        let mut values: Vec<&str> = self
            .options
            .iter()
            .filter(|(k, _)| is_secret(k))
            .flat_map(|(_, v)| {
                // A structured value (`sasl.oauthbearer.config`: `principal=x clientSecret=y`,
                // `sasl.jaas.config`) is scrubbed whole and piece by piece.
                std::iter::once(v.as_str()).chain(v.split([' ', ',', ';', '=', '"', '\'']))
            })
            .filter(|v| v.len() >= 3)
            .collect();
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        values
    }

    /// `text` with every secret option value (and every URL credential of `bootstrap.servers`)
    /// replaced by `<redacted>`.
    pub(crate) fn scrub(&self, text: &str) -> String {
        let mut text = text.to_string();
        for value in self.secret_values() {
            text = text.replace(value, REDACTED);
        }
        if let Some(servers) = self.get("bootstrap.servers") {
            for server in servers.split(',') {
                text = outbox_core::redact::scrub(&text, server);
            }
        }
        text
    }

    /// The librdkafka configuration these options make.
    pub(crate) fn client_config(&self) -> Result<ClientConfig, ConfigError> {
        if self.get("bootstrap.servers").is_none_or(|s| s.trim().is_empty()) {
            return Err(ConfigError::NoBrokers);
        }
        let mut config = ClientConfig::new();
        for (k, v) in &self.options {
            config.set(k, v);
        }
        Ok(config)
    }
}

/// Describes a librdkafka error from creating a client without revealing secret values: a
/// secret option's description is left out (librdkafka may quote the value), and any secret
/// value that still appears in the text is replaced.
pub(crate) fn describe_client_error(e: &KafkaError, config: &KafkaConfig) -> String {
    let text = match e {
        KafkaError::ClientConfig(_, _, option, _) if is_secret(option) => {
            format!("option `{option}` has an invalid value (not shown: the option holds a secret)")
        }
        KafkaError::ClientConfig(_, description, option, _) => format!("option `{option}`: {description}"),
        other => other.to_string(),
    };
    config.scrub(&text)
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let options: BTreeMap<&str, std::borrow::Cow<'_, str>> =
            self.options.iter().map(|(k, v)| (k.as_str(), shown_value(k, v))).collect();
        f.debug_struct("KafkaConfig")
            .field("options", &options)
            .field("routing", &self.routing)
            .field("key", &self.key)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_make_an_idempotent_producer_and_options_override() {
        let c = KafkaConfig::new("k:9092", Routing::by_event_type());
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("acks"), Some("all"));
        assert_eq!(c.get("bootstrap.servers"), Some("k:9092"));
        let c = c.set("linger.ms", "20").set("message.timeout.ms", "5000");
        assert_eq!(c.get("linger.ms"), Some("20"));
        assert_eq!(c.get("message.timeout.ms"), Some("5000"));
    }

    #[test]
    fn debug_redacts_secrets() {
        let c = KafkaConfig::new("k:9092", Routing::by_event_type())
            .set("sasl.username", "relay")
            .set("sasl.password", "pw-1")
            .set("ssl.key.password", "pw-2")
            .set("ssl.keystore.password", "pw-3")
            .set("ssl.truststore.password", "pw-4")
            .set("sasl.oauthbearer.client.secret", "pw-5")
            .set("sasl.oauthbearer.config", "principal=x")
            .set("ssl.key.pem", "pw-6")
            .set("sasl.jaas.config", "pw-7");
        let shown = format!("{c:?}");
        for secret in ["pw-1", "pw-2", "pw-3", "pw-4", "pw-5", "pw-6", "pw-7"] {
            assert!(!shown.contains(secret), "{secret} shown in {shown}");
        }
        assert!(shown.contains("relay"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn an_empty_broker_list_is_refused() {
        let c = KafkaConfig::new(" ", Routing::by_event_type());
        assert!(matches!(c.client_config(), Err(ConfigError::NoBrokers)));
    }

    #[test]
    fn client_errors_never_show_secret_values() {
        let e = KafkaError::ClientConfig(
            rdkafka::types::RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
            "Invalid value \"hunter2\"".to_string(),
            "sasl.password".to_string(),
            "hunter2".to_string(),
        );
        let config = KafkaConfig::new("k:9092", Routing::by_event_type()).set("sasl.password", "hunter2");
        let shown = describe_client_error(&e, &config);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("sasl.password"), "{shown}");
        // Whatever the error, a secret value quoted in its text is replaced.
        let e = KafkaError::ClientCreation("bad config near \"hunter2\"".to_string());
        let shown = describe_client_error(&e, &config);
        assert!(!shown.contains("hunter2") && shown.contains("<redacted>"), "{shown}");
    }
}
