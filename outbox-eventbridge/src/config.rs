//! What the publisher sends and where: [`EventBridgeConfig`], built and validated by
//! [`EventBridgeConfig::builder`].

use std::fmt;
use std::sync::Arc;

use outbox_core::{Entry, Error, ErrorKind};

/// The most entries one `PutEvents` request accepts.
pub const MAX_ENTRIES_PER_REQUEST: usize = 10;

/// The most bytes the entries of one `PutEvents` request may add up to (256 KiB), counted as
/// [`request_entry_size`](crate::request_entry_size) does.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;

/// A user function computing a value from an entry.
type EntryFn<T> = Arc<dyn Fn(&Entry) -> T + Send + Sync>;

/// Where an event's `DetailType` comes from.
#[derive(Clone, Default)]
pub enum DetailType {
    /// The entry's event type, e.g. `order.placed` (the default).
    #[default]
    EventType,
    /// The same text for every event.
    Fixed(String),
    /// Computed from the entry by a user function.
    Custom(EntryFn<String>),
}

impl DetailType {
    /// A `DetailType` computed from the entry by `f`.
    pub fn with(f: impl Fn(&Entry) -> String + Send + Sync + 'static) -> Self {
        DetailType::Custom(Arc::new(f))
    }

    pub(crate) fn of(&self, entry: &Entry) -> String {
        match self {
            DetailType::EventType => entry.event_type.clone(),
            DetailType::Fixed(text) => text.clone(),
            DetailType::Custom(f) => f(entry),
        }
    }
}

impl fmt::Debug for DetailType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DetailType::EventType => f.write_str("EventType"),
            DetailType::Fixed(text) => f.debug_tuple("Fixed").field(text).finish(),
            DetailType::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// What an event's `Detail` holds.
///
/// EventBridge has no per-event attributes or headers, and the event `id` it assigns is new on
/// every `PutEvents` call (a retried entry gets another one), so consumers can de-duplicate
/// only by something inside `Detail`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DetailFormat {
    /// `Detail` is the payload, unchanged (the default). The payload must be a JSON object.
    /// The entry id, aggregate and headers do not travel: put what consumers need (an event id
    /// to de-duplicate by, the aggregate id) in the payload, or choose [`DetailFormat::Envelope`].
    #[default]
    Payload,
    /// `Detail` wraps the payload with the outbox metadata, the "metadata + data" layout common
    /// in EventBridge event design:
    ///
    /// ```json
    /// {"metadata": {"id": "0190f0e2-7c4a-7b3e-8d21-5f2a9c0e4b17", "aggregate_type": "order",
    ///               "aggregate_id": "o-42", "sequence": 3, "event_type": "order.placed",
    ///               "content_type": "application/json", "headers": {"correlation-id": "c-7"}},
    ///  "data": {"total": 1200}}
    /// ```
    /// `data` is the payload, unchanged (any JSON value). `headers` holds the first value of
    /// each header name. Rules match on `detail.data.…` and `detail.metadata.…`. The W3C trace
    /// context travels in `headers` (`traceparent`, `tracestate`).
    Envelope,
    /// `Detail` is the payload (a JSON object), with the entry's W3C trace context added as a
    /// first member when the entry has a `traceparent` header:
    ///
    /// ```json
    /// {"traceContext": {"traceparent": "00-4bf9…-00f0…-01", "tracestate": "vendor=x"}, "total": 1200}
    /// ```
    /// EventBridge does not deliver `TraceHeader` to targets (and it is in X-Ray form), so this is
    /// how a consumer behind SQS or Lambda gets the context. `tracestate` appears only when the
    /// entry has one. A payload that already has a `traceContext` member is sent unchanged.
    PayloadWithTraceContext,
}

/// The member of a [`DetailFormat::PayloadWithTraceContext`] detail that holds the trace context.
pub const TRACE_CONTEXT_MEMBER: &str = "traceContext";

/// What goes into an event's `TraceHeader`, taken from the entry's `traceparent` header.
///
/// EventBridge's `TraceHeader` is an AWS X-Ray header (`Root=1-…;Parent=…;Sampled=…`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TraceHeader {
    /// A W3C `traceparent` is converted to the X-Ray form (trace id `4bf92f35…` becomes
    /// `Root=1-4bf92f35-77b34da6a3ce929d0e0e4736`, the span id becomes `Parent`, the sampled
    /// flag `Sampled`); a value already in X-Ray form (`Root=…`) is sent as is; anything else
    /// is left out (the default).
    #[default]
    XRay,
    /// The `traceparent` value is sent unchanged.
    Verbatim,
    /// No `TraceHeader`.
    Off,
}

/// A configuration value is not valid; the message says which and what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The event `Source` is not valid.
    #[error("invalid EventBridge Source `{value}`: {reason}")]
    Source {
        /// The value given.
        value: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The event bus name or ARN is not valid.
    #[error("invalid EventBridge event bus `{value}`: {reason}")]
    EventBusName {
        /// The value given.
        value: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The fixed `DetailType` is not valid.
    #[error("invalid EventBridge DetailType `{value}`: {reason}")]
    DetailType {
        /// The value given.
        value: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The endpoint override is not an http(s) URL.
    #[error("invalid EventBridge endpoint URL: {reason}")]
    EndpointUrl {
        /// Why it is invalid.
        reason: String,
    },
    /// A request limit is out of range.
    #[error("invalid EventBridge request limit: {reason}")]
    Limit {
        /// Why it is invalid.
        reason: String,
    },
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        Error::new(ErrorKind::Config, e.to_string())
    }
}

/// Where and how the publisher sends events. Cheap to clone.
#[derive(Clone)]
pub struct EventBridgeConfig {
    pub(crate) source: String,
    pub(crate) event_bus_name: Option<String>,
    pub(crate) detail_type: DetailType,
    pub(crate) detail_format: DetailFormat,
    pub(crate) resources: Option<EntryFn<Vec<String>>>,
    pub(crate) trace_header: TraceHeader,
    pub(crate) endpoint_url: Option<String>,
    pub(crate) max_request_bytes: usize,
    pub(crate) max_entries_per_request: usize,
}

impl EventBridgeConfig {
    /// Starts a configuration whose events carry `Source` = `source`, e.g. `com.example.orders`.
    pub fn builder(source: impl Into<String>) -> EventBridgeConfigBuilder {
        EventBridgeConfigBuilder {
            config: EventBridgeConfig {
                source: source.into(),
                event_bus_name: None,
                detail_type: DetailType::default(),
                detail_format: DetailFormat::default(),
                resources: None,
                trace_header: TraceHeader::default(),
                endpoint_url: None,
                max_request_bytes: MAX_REQUEST_BYTES,
                max_entries_per_request: MAX_ENTRIES_PER_REQUEST,
            },
        }
    }

    /// The events' `Source`.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The event bus name or ARN; `None` is the account's `default` bus.
    pub fn event_bus_name(&self) -> Option<&str> {
        self.event_bus_name.as_deref()
    }

    /// Where `DetailType` comes from.
    pub fn detail_type(&self) -> &DetailType {
        &self.detail_type
    }

    /// What `Detail` holds.
    pub fn detail_format(&self) -> DetailFormat {
        self.detail_format
    }

    /// What `TraceHeader` holds.
    pub fn trace_header(&self) -> TraceHeader {
        self.trace_header
    }

    /// The endpoint override, if any.
    pub fn endpoint_url(&self) -> Option<&str> {
        self.endpoint_url.as_deref()
    }

    /// The most bytes per request.
    pub fn max_request_bytes(&self) -> usize {
        self.max_request_bytes
    }

    /// The most entries per request.
    pub fn max_entries_per_request(&self) -> usize {
        self.max_entries_per_request
    }

    pub(crate) fn resources_of(&self, entry: &Entry) -> Vec<String> {
        self.resources.as_ref().map(|f| f(entry)).unwrap_or_default()
    }
}

impl fmt::Debug for EventBridgeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventBridgeConfig")
            .field("source", &self.source)
            .field("event_bus_name", &self.event_bus_name)
            .field("detail_type", &self.detail_type)
            .field("detail_format", &self.detail_format)
            .field("resources", &self.resources.as_ref().map(|_| ".."))
            .field("trace_header", &self.trace_header)
            .field("endpoint_url", &self.endpoint_url.as_deref().map(redact_url))
            .field("max_request_bytes", &self.max_request_bytes)
            .field("max_entries_per_request", &self.max_entries_per_request)
            .finish()
    }
}

/// Builds an [`EventBridgeConfig`]; [`EventBridgeConfigBuilder::build`] validates it.
#[derive(Clone, Debug)]
pub struct EventBridgeConfigBuilder {
    config: EventBridgeConfig,
}

impl EventBridgeConfigBuilder {
    /// The event bus, by name (`orders`) or ARN; without it, the account's `default` bus.
    pub fn event_bus_name(mut self, name: impl Into<String>) -> Self {
        self.config.event_bus_name = Some(name.into());
        self
    }

    /// Where `DetailType` comes from (default: the entry's event type).
    pub fn detail_type(mut self, detail_type: DetailType) -> Self {
        self.config.detail_type = detail_type;
        self
    }

    /// What `Detail` holds (default: the payload).
    pub fn detail_format(mut self, format: DetailFormat) -> Self {
        self.config.detail_format = format;
        self
    }

    /// Computes the event's `Resources` (usually ARNs the event concerns) from the entry.
    /// Without it, events carry no resources.
    pub fn resources(mut self, f: impl Fn(&Entry) -> Vec<String> + Send + Sync + 'static) -> Self {
        self.config.resources = Some(Arc::new(f));
        self
    }

    /// What `TraceHeader` holds (default: the `traceparent` header in X-Ray form).
    pub fn trace_header(mut self, trace_header: TraceHeader) -> Self {
        self.config.trace_header = trace_header;
        self
    }

    /// Sends to this endpoint instead of the one the AWS configuration resolves, e.g.
    /// `http://127.0.0.1:4566` for a local emulator. Used by
    /// [`EventBridgePublisher::from_sdk_config`](crate::EventBridgePublisher::from_sdk_config)
    /// and [`EventBridgePublisher::from_env`](crate::EventBridgePublisher::from_env). (The standard
    /// chain also reads `AWS_ENDPOINT_URL_EVENTBRIDGE` and `AWS_ENDPOINT_URL`.)
    pub fn endpoint_url(mut self, url: impl Into<String>) -> Self {
        self.config.endpoint_url = Some(url.into());
        self
    }

    /// The most bytes the entries of one request may add up to (default and maximum
    /// [`MAX_REQUEST_BYTES`]); an entry larger than this fails alone.
    pub fn max_request_bytes(mut self, bytes: usize) -> Self {
        self.config.max_request_bytes = bytes;
        self
    }

    /// The most entries per request (default and maximum [`MAX_ENTRIES_PER_REQUEST`]).
    pub fn max_entries_per_request(mut self, entries: usize) -> Self {
        self.config.max_entries_per_request = entries;
        self
    }

    /// Validates and returns the configuration.
    pub fn build(self) -> Result<EventBridgeConfig, ConfigError> {
        let config = self.config;
        check_source(&config.source)?;
        if let Some(bus) = &config.event_bus_name {
            check_event_bus_name(bus)?;
        }
        if let DetailType::Fixed(text) = &config.detail_type {
            check_detail_type(text)
                .map_err(|reason| ConfigError::DetailType { value: text.clone(), reason: reason.to_string() })?;
        }
        if let Some(url) = &config.endpoint_url {
            check_endpoint_url(url)?;
        }
        if config.max_request_bytes == 0 || config.max_request_bytes > MAX_REQUEST_BYTES {
            return Err(ConfigError::Limit {
                reason: format!(
                    "max_request_bytes is {}; it must be between 1 and {MAX_REQUEST_BYTES} (EventBridge's limit)",
                    config.max_request_bytes
                ),
            });
        }
        if config.max_entries_per_request == 0 || config.max_entries_per_request > MAX_ENTRIES_PER_REQUEST {
            return Err(ConfigError::Limit {
                reason: format!(
                    "max_entries_per_request is {}; it must be between 1 and {MAX_ENTRIES_PER_REQUEST} (EventBridge's limit)",
                    config.max_entries_per_request
                ),
            });
        }
        Ok(config)
    }
}

fn check_source(source: &str) -> Result<(), ConfigError> {
    let fail = |reason: &str| Err(ConfigError::Source { value: source.to_string(), reason: reason.to_string() });
    if source.trim().is_empty() {
        return fail("it is empty; use a reverse-DNS name such as `com.example.orders`");
    }
    if source.trim() != source {
        return fail("it has leading or trailing white space");
    }
    if source.len() > 256 {
        return fail("it is longer than 256 bytes");
    }
    if source.chars().any(char::is_control) {
        return fail("it contains a control character");
    }
    if source.to_ascii_lowercase().starts_with("aws.") {
        return fail("sources starting with `aws.` are reserved for AWS services; PutEvents rejects them");
    }
    Ok(())
}

fn check_event_bus_name(bus: &str) -> Result<(), ConfigError> {
    let fail = |reason: &str| Err(ConfigError::EventBusName { value: bus.to_string(), reason: reason.to_string() });
    let name_chars = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c));
    if let Some(rest) = bus.strip_prefix("arn:") {
        if bus.len() > 1600 {
            return fail("an event bus ARN is at most 1600 characters");
        }
        match rest.split_once(":event-bus/") {
            Some((_, name)) if name_chars(name) => Ok(()),
            _ => fail("an event bus ARN looks like `arn:aws:events:us-east-1:123456789012:event-bus/orders`"),
        }
    } else if bus.len() > 256 {
        fail("an event bus name is at most 256 characters")
    } else if !name_chars(bus) {
        fail("an event bus name uses only letters, digits and . - _ / (e.g. `orders`), or give its ARN")
    } else {
        Ok(())
    }
}

/// Why a `DetailType` is not acceptable, if it is not.
pub(crate) fn check_detail_type(text: &str) -> Result<(), &'static str> {
    if text.trim().is_empty() {
        return Err("it is empty; EventBridge requires a DetailType");
    }
    if text.chars().any(char::is_control) {
        return Err("it contains a control character");
    }
    Ok(())
}

fn check_endpoint_url(url: &str) -> Result<(), ConfigError> {
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() && !host.starts_with('/') && !url.chars().any(char::is_whitespace) => Ok(()),
        _ => Err(ConfigError::EndpointUrl {
            reason: format!("`{}` is not an http(s) URL such as `http://127.0.0.1:4566`", redact_url(url)),
        }),
    }
}

/// The URL with its credentials and secret-looking query values replaced by `***`, parsed as
/// [`outbox_core::redact::redact_url`] does (the user information ends at the last `@`).
pub(crate) fn redact_url(url: &str) -> String {
    outbox_core::redact::redact_url(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_aws_limits_and_the_default_bus() {
        let config = EventBridgeConfig::builder("com.example.orders").build().unwrap();
        assert_eq!(config.source(), "com.example.orders");
        assert_eq!(config.event_bus_name(), None);
        assert_eq!(config.max_request_bytes(), 262_144);
        assert_eq!(config.max_entries_per_request(), 10);
        assert_eq!(config.detail_format(), DetailFormat::Payload);
        assert_eq!(config.trace_header(), TraceHeader::XRay);
    }

    #[test]
    fn bad_values_fail_when_the_config_is_built() {
        let source = |s: &str| EventBridgeConfig::builder(s).build().unwrap_err();
        assert!(matches!(source(""), ConfigError::Source { .. }));
        assert!(matches!(source(" a"), ConfigError::Source { .. }));
        assert!(source("aws.orders").to_string().contains("reserved for AWS"), "{}", source("aws.orders"));
        let bus = |b: &str| EventBridgeConfig::builder("s").event_bus_name(b).build();
        assert!(bus("orders").is_ok());
        assert!(bus("arn:aws:events:us-east-1:123456789012:event-bus/orders").is_ok());
        assert!(matches!(bus("has space"), Err(ConfigError::EventBusName { .. })));
        assert!(matches!(bus("arn:aws:sqs:us-east-1:1:q"), Err(ConfigError::EventBusName { .. })));
        assert!(matches!(bus(""), Err(ConfigError::EventBusName { .. })));
        let fixed = EventBridgeConfig::builder("s").detail_type(DetailType::Fixed(" ".into())).build();
        assert!(matches!(fixed, Err(ConfigError::DetailType { .. })));
        let limit = EventBridgeConfig::builder("s").max_request_bytes(300 * 1024).build();
        assert!(matches!(limit, Err(ConfigError::Limit { .. })));
        let limit = EventBridgeConfig::builder("s").max_entries_per_request(11).build();
        assert!(matches!(limit, Err(ConfigError::Limit { .. })));
        let url = EventBridgeConfig::builder("s").endpoint_url("127.0.0.1:4566").build();
        assert!(matches!(url, Err(ConfigError::EndpointUrl { .. })));
        let error: Error = source("").into();
        assert_eq!(error.kind(), ErrorKind::Config);
        assert!(!error.is_retryable());
    }

    #[test]
    fn credentials_in_an_endpoint_url_never_show() {
        let config =
            EventBridgeConfig::builder("s").endpoint_url("https://user:secret@proxy.example:8443/x").build().unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("secret"), "{debug}");
        assert!(debug.contains("https://user:***@proxy.example:8443/x"), "{debug}");
        let err = EventBridgeConfig::builder("s").endpoint_url("ftp://user:secret@x").build().unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
        assert_eq!(redact_url("http://127.0.0.1:4566"), "http://127.0.0.1:4566");
        // A password holding `/` or `?`, and a URL without `//`, were shown before.
        for url in ["https://user:se/cret@proxy.example/x", "https://user:se?cret@proxy.example", "http:user:secret@h"]
        {
            let config = EventBridgeConfig::builder("s").endpoint_url(url).build();
            let shown = match config {
                Ok(config) => format!("{config:?}"),
                Err(e) => format!("{e} {e:?}"),
            };
            assert!(!shown.contains("cret"), "{url}: {shown}");
        }
    }
}
