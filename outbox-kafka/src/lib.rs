//! # outbox-kafka
//!
//! Publishes outbox entries to Kafka: the [`Publisher`](outbox_core::Publisher) port of the
//! **outbox** framework on an [rdkafka](https://docs.rs/rdkafka) `FutureProducer`.
//!
//! - **Durable before published.** The producer is idempotent with `acks=all` by default; an
//!   entry is reported published only when its delivery report says the broker has it.
//! - **Order per aggregate.** The message key is the aggregate id by default ([`Key`]), so an
//!   aggregate stays in one partition; the idempotent producer keeps that partition's order
//!   even when librdkafka retries internally.
//! - **Routing** ([`Routing`]): one topic, by event type, by aggregate type (with an optional
//!   prefix), or a function; names are validated against Kafka's rules.
//! - **Metadata headers** ([`headers`]): `outbox-id`, `outbox-event-type`,
//!   `outbox-aggregate-type`, `outbox-aggregate-id`, `outbox-sequence`, `content-type`, then
//!   the entry's own headers (`traceparent` and `tracestate` included).
//! - **One honest outcome per entry**: a batch is enqueued as a whole, then every delivery
//!   report is awaited and classified, retryable or permanent (table below). A bad entry (too
//!   large, invalid topic name) fails alone.
//! - **Observable** (features `tracing`, `opentelemetry`): a `send {topic}` producer span per
//!   publish, linked to each entry's creation context, and [`trace::extract`] for consumers
//!   (see the `outbox-telemetry` crate).
//! - **Any librdkafka option** passes through [`KafkaConfig::set`] (SASL, TLS, compression,
//!   `linger.ms`, ...); `Debug` and errors never show secrets ([Secrets](#secrets)).
//!
//! ## Example
//! ```no_run
//! use outbox_core::{MemoryStore, Relay, RelayConfig};
//! use outbox_kafka::{KafkaConfig, KafkaPublisher, Routing};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = KafkaConfig::new("127.0.0.1:9092", Routing::by_event_type().prefixed("shop.")?)
//!     .set("compression.type", "lz4")
//!     .set("linger.ms", "10");
//! let publisher = KafkaPublisher::new(config)?;
//!
//! let store = MemoryStore::new(); // in production: an SQL store from outbox-sqlx & co.
//! // new_checked: refuses a relay whose publish_timeout is not above `message.timeout.ms`.
//! let relay = Relay::new_checked(store, publisher.clone(), RelayConfig::default())?;
//! relay.run_once().await?;
//! publisher.flush(std::time::Duration::from_secs(5))?;
//! # Ok(()) }
//! ```
//!
//! ## Errors
//! Configuration mistakes are a [`ConfigError`] when the config or publisher is built (invalid
//! topic name or prefix, an option librdkafka refuses, no brokers). At publish time each
//! entry's failure is an [`outbox_core::Error`]:
//!
//! | librdkafka / broker error | kind | verdict |
//! |---|---|---|
//! | larger than the producer's `message.max.bytes` (checked before sending, see [Size limits](#size-limits)) | `TooLarge` | permanent, not sent |
//! | message too large at the broker (`MSG_SIZE_TOO_LARGE`, `INVALID_MSG_SIZE`, `MESSAGE_BATCH_TOO_LARGE`) | `TooLarge` | permanent |
//! | a routed topic name that breaks Kafka's rules (checked before sending) | `Rejected` | permanent |
//! | `INVALID_TOPIC_EXCEPTION`, `TOPIC_AUTHORIZATION_FAILED`, `CLUSTER_AUTHORIZATION_FAILED`, `INVALID_RECORD`, `INVALID_TIMESTAMP`, `POLICY_VIOLATION`, `UNSUPPORTED_COMPRESSION_TYPE`, local invalid argument | `Rejected` | permanent |
//! | missing topic (`UNKNOWN_TOPIC_OR_PART`, local `_UNKNOWN_TOPIC`) | `Rejected` | retryable, bounded by the relay's retry policy |
//! | `_MSG_TIMED_OUT`, `REQUEST_TIMED_OUT`, `_TIMED_OUT_QUEUE` | `Timeout` | retryable, outage |
//! | `_QUEUE_FULL` (after waiting up to [`QUEUE_FULL_WAIT`] for room), `THROTTLING_QUOTA_EXCEEDED` | `Throttled` | retryable, outage |
//! | transport, all brokers down, resolve, broker / leader / replica not available, not leader, network exception, not enough replicas, storage error, TLS, authentication | `Unavailable` | retryable, outage |
//! | an earlier entry of the same aggregate in the batch could not be sent | `Conflict` | retryable |
//! | `_FATAL` and the error behind it, e.g. `OUT_OF_ORDER_SEQUENCE_NUMBER` (the idempotent producer stops; a new one is made for the next batch), `INVALID_PRODUCER_EPOCH`, `PRODUCER_FENCED`, anything else | `Unexpected` | retryable |
//!
//! An **outage** ([`Error::is_outage`](outbox_core::Error::is_outage)) says nothing about the
//! entry: the relay releases it without counting an attempt and pauses with a bounded back-off
//! until the broker answers, so a Kafka outage never dead-letters entries. The other failures
//! count attempts.
//!
//! When librdkafka's queue is full, a send waits for the batch's oldest delivery report (or
//! sleeps briefly when another batch filled the queue) and tries again, for up to
//! [`QUEUE_FULL_WAIT`]; only then does it fail.
//!
//! ## Size limits
//! Kafka limits a whole message, not its payload: librdkafka counts the key, the value, every
//! header's name and value, and up to 36 bytes of record overhead against the producer's
//! `message.max.bytes`, **1,000,000 bytes by default** (not 1 MiB; see
//! [`KafkaConfig::message_max_bytes`]). The publisher computes that size for each entry before
//! sending, exactly as librdkafka does, and fails an entry that can never fit, permanently
//! ([`TooLarge`](outbox_core::ErrorKind::TooLarge)), without sending it; the later entries of
//! its aggregate in the batch are held back. The outbox's own default payload limit
//! (`Limits::max_payload_len`, 1 MiB) is above Kafka's, so set `message.max.bytes` (and the
//! topic's `max.message.bytes`, broker default 1,048,588, which applies to the compressed
//! batch) when entries are that large, or lower the outbox's limit.
//!
//! ## Secrets
//! `Debug` of [`KafkaConfig`] and [`KafkaPublisher`] shows every option whose name looks secret
//! (`password`, `secret`, `token`, `key`, `credential`, `oauth`, `jaas`, ..., in any case and
//! misspelled or not, e.g. `sasl.pasword`, so `sasl.oauthbearer.config` is hidden whole) as
//! `<redacted>`, and credentials in `bootstrap.servers` URLs redacted. [`ConfigError`]s never
//! quote a secret option's value: librdkafka's text is scrubbed of them.
//!
//! ## Build
//! rdkafka's bundled librdkafka (2.12) is compiled with its own `configure` and `make` (no
//! cmake) and linked statically; Debian 12's `librdkafka-dev` (2.0) is too old for rdkafka's
//! dynamic linking. lz4 and snappy compression are built in. Features:
//! - `ssl`: TLS and SASL SCRAM, with OpenSSL compiled from source (needs `perl` and `make`);
//! - `gzip`: gzip compression, zlib compiled from source;
//! - `zstd`: zstd compression, zstd compiled from source.
//!
//! SASL `PLAIN` and `OAUTHBEARER` work without features. GSSAPI (Kerberos) is not offered: it
//! needs the system's Cyrus SASL library.
//!
//! ## Decisions
//! - The message timestamp is left to the producer (the send time), not the entry's
//!   `created_at`: an old entry would otherwise fall out of a time-based retention at once.
//! - `message.timeout.ms=8000` (librdkafka: 300 s): below the relay's default 10 s publish
//!   timeout, so a batch's outcomes are known before the relay gives up on it. The publisher
//!   implements [`DeliveryTimeout`](outbox_core::DeliveryTimeout):
//!   [`Relay::new_checked`](outbox_core::Relay::new_checked) refuses a relay whose
//!   `publish_timeout` is not longer, naming both values. The producer connects lazily, so a
//!   relay started while Kafka is down waits for it (an outage) instead of failing.
//! - `partitioner=murmur2_random`, like the Java client, so other producers of the same keys
//!   pick the same partitions.
//! - Delivery is at least once: a publish the relay abandons (its timeout) may still reach the
//!   broker, and a delivery failure after an entry was enqueued may let a later entry of its
//!   aggregate through first; consumers de-duplicate by `outbox-id` and can check
//!   `outbox-sequence`.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod classify;
mod config;
pub mod headers;
mod publisher;
mod routing;
#[cfg(feature = "tracing")]
#[cfg_attr(docsrs, doc(cfg(feature = "tracing")))]
pub mod trace;

pub use config::{ConfigError, DEFAULT_MESSAGE_MAX_BYTES, DEFAULT_OPTIONS, KafkaConfig, Key, KeyFn};
pub use publisher::{KafkaPublisher, QUEUE_FULL_WAIT};
pub use routing::{MAX_TOPIC_LEN, Routing, TopicFn, validate_topic};

/// The rdkafka crate this adapter is built on, for consumers and admin clients of the same version.
pub use rdkafka;
