//! Configuration: where to connect, which exchange, how to route, and how long to wait.
//!
//! Everything is validated when [`RabbitMqConfigBuilder::build`] runs, so a typo in an exchange
//! name or a malformed URL fails at start-up rather than on the first batch.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use outbox_core::Entry;

/// The longest AMQP short string (exchange names, routing keys, header names, property values).
pub const MAX_SHORT_STRING: usize = 255;

/// The default [`max_message_size`](RabbitMqConfigBuilder::max_message_size): 16 MiB
/// (16,777,216 bytes), RabbitMQ 4.x's default `max_message_size`.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// The largest `max_message_size` RabbitMQ accepts: 512 MiB (536,870,912 bytes).
pub const MAX_MESSAGE_SIZE_LIMIT: usize = 512 * 1024 * 1024;

/// A configuration value was rejected by [`RabbitMqConfigBuilder::build`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The connection URL could not be parsed. The URL is shown with its password redacted (see
    /// [`outbox_core::redact::redact_url`]), and the reason never quotes a secret part of it.
    #[error("invalid RabbitMQ URL `{url}`: {reason}; expected e.g. amqp://user:password@127.0.0.1:5672/%2f")]
    Url {
        /// The URL, password redacted.
        url: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The exchange name is not a valid AMQP exchange name.
    #[error("invalid exchange name `{name}`: {reason}")]
    Exchange {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The fixed routing key is too long.
    #[error("invalid routing key `{key}`: {reason}")]
    RoutingKey {
        /// The rejected key.
        key: String,
        /// Why it was rejected.
        reason: String,
    },
    /// Another setting is out of range.
    #[error("invalid setting `{setting}`: {reason}")]
    Setting {
        /// The setting's name.
        setting: &'static str,
        /// Why it was rejected.
        reason: String,
    },
}

impl From<ConfigError> for outbox_core::Error {
    fn from(e: ConfigError) -> Self {
        outbox_core::Error::new(outbox_core::ErrorKind::Config, e.to_string())
    }
}

/// How an entry's routing key is chosen.
#[derive(Clone, Default)]
pub enum Routing {
    /// The entry's event type, e.g. `order.placed` (the default): suits a topic exchange.
    #[default]
    EventType,
    /// The entry's aggregate type, e.g. `order`.
    AggregateType,
    /// The same key for every entry (validated when the configuration is built).
    Fixed(String),
    /// A function of the entry. Its result is checked per entry: a key over 255 bytes fails
    /// that entry alone, permanently.
    Function(Arc<dyn Fn(&Entry) -> String + Send + Sync>),
}

impl Routing {
    /// Routes with a function of the entry.
    ///
    /// ```
    /// use outbox_rabbitmq::Routing;
    /// let routing = Routing::function(|entry| format!("{}.{}", entry.aggregate_type, entry.event_type));
    /// # let _ = routing;
    /// ```
    pub fn function(f: impl Fn(&Entry) -> String + Send + Sync + 'static) -> Self {
        Routing::Function(Arc::new(f))
    }

    /// The routing key for `entry`, unchecked.
    pub(crate) fn key_for<'a>(&'a self, entry: &'a Entry) -> std::borrow::Cow<'a, str> {
        match self {
            Routing::EventType => entry.event_type.as_str().into(),
            Routing::AggregateType => entry.aggregate_type.as_str().into(),
            Routing::Fixed(key) => key.as_str().into(),
            Routing::Function(f) => f(entry).into(),
        }
    }
}

impl fmt::Debug for Routing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Routing::EventType => f.write_str("EventType"),
            Routing::AggregateType => f.write_str("AggregateType"),
            Routing::Fixed(key) => f.debug_tuple("Fixed").field(key).finish(),
            Routing::Function(_) => f.write_str("Function(..)"),
        }
    }
}

/// The type of exchange to declare when [`RabbitMqConfigBuilder::declare_exchange`] is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExchangeType {
    /// Routes on an exact routing-key match.
    Direct,
    /// Routes on routing-key patterns (`order.*`, `#`).
    Topic,
    /// Copies every message to every bound queue.
    Fanout,
    /// Routes on header values.
    Headers,
}

impl ExchangeType {
    pub(crate) fn to_lapin(self) -> lapin::ExchangeKind {
        match self {
            ExchangeType::Direct => lapin::ExchangeKind::Direct,
            ExchangeType::Topic => lapin::ExchangeKind::Topic,
            ExchangeType::Fanout => lapin::ExchangeKind::Fanout,
            ExchangeType::Headers => lapin::ExchangeKind::Headers,
        }
    }
}

/// What the publisher does about its exchange when it connects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ExchangeSetup {
    /// Check that it exists (a passive declare); the default.
    Check,
    /// Declare it, durable, of this type (idempotent when it already exists with the same type).
    Declare(ExchangeType),
}

/// A validated configuration for [`RabbitMqPublisher`](crate::RabbitMqPublisher).
///
/// Its `Debug` output shows the URL with the password redacted.
#[derive(Clone)]
pub struct RabbitMqConfig {
    pub(crate) url: String,
    pub(crate) redacted_url: String,
    pub(crate) exchange: String,
    pub(crate) routing: Routing,
    pub(crate) mandatory: bool,
    pub(crate) persistent: bool,
    pub(crate) exchange_setup: ExchangeSetup,
    pub(crate) confirm_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) connection_name: Option<String>,
    pub(crate) app_id: Option<String>,
    pub(crate) max_message_size: usize,
}

impl RabbitMqConfig {
    /// Starts a configuration that publishes to `exchange` (`""` is the default exchange, which
    /// routes to the queue named by the routing key) on the broker at `url`
    /// (`amqp://user:password@host:5672/vhost`, with the vhost URL-encoded: `%2f` is `/`).
    pub fn builder(url: impl Into<String>, exchange: impl Into<String>) -> RabbitMqConfigBuilder {
        RabbitMqConfigBuilder {
            config: RabbitMqConfig {
                url: url.into(),
                redacted_url: String::new(),
                exchange: exchange.into(),
                routing: Routing::default(),
                mandatory: true,
                persistent: true,
                exchange_setup: ExchangeSetup::Check,
                confirm_timeout: Duration::from_secs(30),
                connect_timeout: Duration::from_secs(10),
                connection_name: None,
                app_id: None,
                max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            },
        }
    }

    /// The largest payload sent; larger entries fail permanently before sending.
    pub fn max_message_size(&self) -> usize {
        self.max_message_size
    }

    /// The URL with its password (and any secret-looking query value) replaced by `***`, safe
    /// to log.
    pub fn redacted_url(&self) -> &str {
        &self.redacted_url
    }

    /// The exchange messages are published to.
    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// How routing keys are chosen.
    pub fn routing(&self) -> &Routing {
        &self.routing
    }

    /// Whether messages are published with `mandatory` (unroutable ones come back as failures).
    pub fn mandatory(&self) -> bool {
        self.mandatory
    }

    /// Whether messages are persistent (delivery mode 2).
    pub fn persistent(&self) -> bool {
        self.persistent
    }

    /// How long a batch may wait for the broker before its unconfirmed entries are retryable.
    pub fn confirm_timeout(&self) -> Duration {
        self.confirm_timeout
    }

    /// How long connecting may take.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }
}

impl fmt::Debug for RabbitMqConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitMqConfig")
            .field("url", &self.redacted_url)
            .field("exchange", &self.exchange)
            .field("routing", &self.routing)
            .field("mandatory", &self.mandatory)
            .field("persistent", &self.persistent)
            .field("exchange_setup", &self.exchange_setup)
            .field("confirm_timeout", &self.confirm_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("connection_name", &self.connection_name)
            .field("app_id", &self.app_id)
            .field("max_message_size", &self.max_message_size)
            .finish()
    }
}

/// Builds a [`RabbitMqConfig`]; [`build`](Self::build) validates every setting.
#[derive(Debug, Clone)]
pub struct RabbitMqConfigBuilder {
    config: RabbitMqConfig,
}

impl RabbitMqConfigBuilder {
    /// How routing keys are chosen (default: [`Routing::EventType`]).
    pub fn routing(mut self, routing: Routing) -> Self {
        self.config.routing = routing;
        self
    }

    /// Publish with `mandatory` (default `true`): a message no queue is bound for comes back
    /// and its entry fails permanently. With `false` the broker drops such messages silently
    /// and they count as published.
    pub fn mandatory(mut self, mandatory: bool) -> Self {
        self.config.mandatory = mandatory;
        self
    }

    /// Publish persistent messages, delivery mode 2 (default `true`), so durable queues keep
    /// them across a broker restart.
    pub fn persistent(mut self, persistent: bool) -> Self {
        self.config.persistent = persistent;
        self
    }

    /// Declare the exchange (durable, of this type) on connect instead of only checking that it
    /// exists. Without it, a missing exchange makes every batch fail, retryable, until an
    /// operator creates it.
    pub fn declare_exchange(mut self, kind: ExchangeType) -> Self {
        self.config.exchange_setup = ExchangeSetup::Declare(kind);
        self
    }

    /// How long a batch may wait for the broker to take its messages and confirm them
    /// (default 30 s). Past it, the unconfirmed entries are reported retryable and the
    /// connection is replaced.
    pub fn confirm_timeout(mut self, timeout: Duration) -> Self {
        self.config.confirm_timeout = timeout;
        self
    }

    /// How long connecting, opening the channel and checking the exchange may take (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// The connection name shown by `rabbitmqctl list_connections client_properties` and the
    /// management UI.
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.config.connection_name = Some(name.into());
        self
    }

    /// The largest message body (payload) the broker takes, in bytes: set it to the broker's
    /// `max_message_size` (default [`DEFAULT_MAX_MESSAGE_SIZE`], 16 MiB, RabbitMQ 4.x's default;
    /// RabbitMQ 3.8 to 3.13 default to 128 MiB; at most [`MAX_MESSAGE_SIZE_LIMIT`]). A larger
    /// entry fails alone and permanently before it is sent: sent, it would make the broker close
    /// the channel and fail the whole batch.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.config.max_message_size = bytes;
        self
    }

    /// The `app_id` property set on every message.
    pub fn app_id(mut self, app_id: impl Into<String>) -> Self {
        self.config.app_id = Some(app_id.into());
        self
    }

    /// Validates the configuration.
    pub fn build(self) -> Result<RabbitMqConfig, ConfigError> {
        let mut config = self.config;
        config.redacted_url = redact_url(&config.url);
        check_url(&config.url, &config.redacted_url)?;
        check_exchange(&config.exchange)?;
        if let Routing::Fixed(key) = &config.routing {
            check_short_string(key).map_err(|reason| ConfigError::RoutingKey { key: key.clone(), reason })?;
        }
        if let Some(app_id) = &config.app_id {
            check_short_string(app_id).map_err(|reason| ConfigError::Setting { setting: "app_id", reason })?;
        }
        if config.confirm_timeout.is_zero() {
            return Err(ConfigError::Setting { setting: "confirm_timeout", reason: "must be above zero".into() });
        }
        if config.connect_timeout.is_zero() {
            return Err(ConfigError::Setting { setting: "connect_timeout", reason: "must be above zero".into() });
        }
        if config.max_message_size == 0 || config.max_message_size > MAX_MESSAGE_SIZE_LIMIT {
            return Err(ConfigError::Setting {
                setting: "max_message_size",
                reason: format!(
                    "is {}; it must be between 1 and {MAX_MESSAGE_SIZE_LIMIT} bytes (RabbitMQ's own maximum): set it to \
                     the broker's max_message_size",
                    config.max_message_size
                ),
            });
        }
        Ok(config)
    }
}

fn check_url(url: &str, redacted: &str) -> Result<(), ConfigError> {
    let err = |reason: String| ConfigError::Url { url: redacted.to_string(), reason };
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(err("it does not start with amqp:// (or amqps://)".into()));
    };
    // amqps is accepted: it needs one of lapin's TLS features enabled by the application.
    if !matches!(scheme.to_ascii_lowercase().as_str(), "amqp" | "amqps") {
        return Err(err("the scheme must be amqp:// (or amqps:// with a lapin TLS feature)".into()));
    }
    // The host follows the user information, which ends at the last `@` (a password may hold
    // `/`, `?` or `#`).
    let location = rest.rsplit_once('@').map_or(rest, |(_, location)| location);
    let host = match location.strip_prefix('[') {
        Some(bracketed) => bracketed.split_once(']').map_or(bracketed, |(host, _)| host),
        None => location.split([':', '/', '?', '#']).next().unwrap_or(""),
    };
    if host.is_empty() {
        return Err(err("it names no host; give the broker's, e.g. amqp://user:password@127.0.0.1:5672/%2f".into()));
    }
    url.parse::<lapin::uri::AMQPUri>().map(drop).map_err(|reason| err(outbox_core::redact::scrub(&reason, url)))
}

fn check_exchange(name: &str) -> Result<(), ConfigError> {
    let err = |reason: &str| ConfigError::Exchange { name: name.to_string(), reason: reason.to_string() };
    if name.len() > MAX_SHORT_STRING {
        return Err(err("longer than 255 bytes"));
    }
    // AMQP 0-9-1: exchange names are letters, digits, hyphen, underscore, period and colon.
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c)) {
        return Err(err("use only letters, digits, `-`, `_`, `.` and `:` (e.g. `orders.events`)"));
    }
    Ok(())
}

/// Checks a value that travels as an AMQP short string.
pub(crate) fn check_short_string(value: &str) -> Result<(), String> {
    if value.len() > MAX_SHORT_STRING {
        return Err(format!("is {} bytes, over AMQP's short-string limit of {MAX_SHORT_STRING}", value.len()));
    }
    Ok(())
}

/// The URL with its secrets replaced by `***`, parsed as [`outbox_core::redact::redact_url`]
/// does (the password ends at the last `@`).
pub(crate) fn redact_url(url: &str) -> String {
    outbox_core::redact::redact_url(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "amqp://guest:s3cret@127.0.0.1:5672/%2f";

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(redact_url(URL), "amqp://guest:***@127.0.0.1:5672/%2f");
        assert_eq!(redact_url("amqp://127.0.0.1:5672/%2f"), "amqp://127.0.0.1:5672/%2f");
        assert_eq!(redact_url("amqp://user@host"), "amqp://***@host");
        assert_eq!(redact_url("amqp://u:p@ss@host/v?heartbeat=5"), "amqp://u:***@host/v?heartbeat=5");
    }

    #[test]
    fn debug_never_shows_the_password() {
        let config = RabbitMqConfig::builder(URL, "events").build().unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("guest:***@127.0.0.1"), "{debug}");
    }

    #[test]
    fn defaults_are_safe() {
        let config = RabbitMqConfig::builder(URL, "events").build().unwrap();
        assert!(config.mandatory());
        assert!(config.persistent());
        assert!(matches!(config.routing(), Routing::EventType));
        assert_eq!(config.exchange_setup, ExchangeSetup::Check);
    }

    #[test]
    fn rejects_bad_input_when_built() {
        let e = RabbitMqConfig::builder("http://x", "events").build().unwrap_err();
        assert!(matches!(e, ConfigError::Url { .. }), "{e}");
        let e = RabbitMqConfig::builder("amqp://guest:s3cret@127.0.0.1:notaport/%2f", "events").build().unwrap_err();
        assert!(!e.to_string().contains("s3cret"), "{e}");
        let e = RabbitMqConfig::builder(URL, "bad name").build().unwrap_err();
        assert!(matches!(e, ConfigError::Exchange { .. }), "{e}");
        let e = RabbitMqConfig::builder(URL, "x".repeat(256)).build().unwrap_err();
        assert!(e.to_string().contains("255"), "{e}");
        let e = RabbitMqConfig::builder(URL, "events").routing(Routing::Fixed("k".repeat(256))).build().unwrap_err();
        assert!(matches!(e, ConfigError::RoutingKey { .. }), "{e}");
        let e = RabbitMqConfig::builder(URL, "events").confirm_timeout(Duration::ZERO).build().unwrap_err();
        assert!(matches!(e, ConfigError::Setting { setting: "confirm_timeout", .. }), "{e}");
        assert!(RabbitMqConfig::builder(URL, "").build().is_ok(), "the default exchange is allowed");
        assert!(RabbitMqConfig::builder(URL, "amq.topic").build().is_ok());
    }

    #[test]
    fn config_errors_become_config_kind() {
        let e: outbox_core::Error = RabbitMqConfig::builder(URL, "a b").build().unwrap_err().into();
        assert_eq!(e.kind(), outbox_core::ErrorKind::Config);
        assert!(!e.is_retryable());
    }
}
