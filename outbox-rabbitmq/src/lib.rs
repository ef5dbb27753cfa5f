//! # outbox-rabbitmq
//!
//! Publishes **outbox** entries to RabbitMQ (AMQP 0-9-1, through [lapin](https://docs.rs/lapin)):
//! the [`Publisher`](outbox_core::Publisher) a [`Relay`](outbox_core::Relay) hands its claimed
//! batches to. An entry is reported published only once the broker **confirmed** it
//! (publisher confirms) and did not return it as unroutable.
//!
//! ## Example
//! ```no_run
//! use outbox_core::{MemoryStore, NewEntry, Relay, RelayConfig};
//! use outbox_rabbitmq::{ExchangeType, RabbitMqConfig, RabbitMqPublisher, Routing};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = RabbitMqConfig::builder("amqp://guest:guest@127.0.0.1:5672/%2f", "orders.events")
//!     .routing(Routing::EventType) // the default: routing key = event type
//!     .declare_exchange(ExchangeType::Topic) // or leave it to operators: then it is only checked
//!     .connection_name("orders-relay")
//!     .build()?;
//! let publisher = RabbitMqPublisher::new(config);
//! // Optional check at start-up. A long-running relay should log a failure here rather than
//! // exit: `Relay::run` waits for a broker that is down and publishes once it answers.
//! if let Err(error) = publisher.connect().await {
//!     eprintln!("RabbitMQ is not reachable yet, the relay will wait for it: {error}");
//! }
//!
//! let store = MemoryStore::new();
//! let mut tx = store.begin();
//! tx.enqueue(NewEntry::builder("order", "o-1", "order.placed").json(r#"{"total":42}"#).build()?);
//! tx.commit()?;
//!
//! let relay = Relay::new(store, publisher, RelayConfig::default())?;
//! let report = relay.run_once().await?;
//! println!("published {}", report.published);
//! # Ok(()) }
//! ```
//!
//! ## What a message looks like
//! Persistent (delivery mode 2), `message_id` = entry id, `type` = event type, `content_type`,
//! `timestamp` (seconds), and the entry's headers plus `outbox-aggregate-type`,
//! `outbox-aggregate-id` and `outbox-sequence` as an AMQP table: see [`message`] for the full
//! mapping.
//!
//! ## Outcomes
//! | what happened | outcome |
//! |---|---|
//! | broker ack | `Published` |
//! | ack with the message returned (`mandatory`, no queue bound: 312 NO_ROUTE) | failed, [`Rejected`](outbox_core::ErrorKind::Rejected), **permanent**: retrying cannot create a binding; the error names the exchange and routing key |
//! | routing key, header name or property over 255 bytes | failed, [`Validation`](outbox_core::ErrorKind::Validation), permanent, that entry alone, not sent |
//! | payload over [`max_message_size`](RabbitMqConfigBuilder::max_message_size) (default 16 MiB), or properties and headers over the connection's `frame_max` (RabbitMQ default 131,072 bytes) | failed, [`TooLarge`](outbox_core::ErrorKind::TooLarge), permanent, that entry alone, not sent (see [`message`](message#size-limits)) |
//! | broker nack (e.g. a full queue with `x-overflow=reject-publish`) | failed, [`Unavailable`](outbox_core::ErrorKind::Unavailable), retryable, outage |
//! | connection or channel lost before the confirm (broker restart, `rabbitmqctl close_connection`, channel error) | failed, retryable, outage; later entries of the batch too; the next batch reconnects |
//! | no confirm within `confirm_timeout` | failed, [`Timeout`](outbox_core::ErrorKind::Timeout), retryable, outage; the connection is replaced |
//! | cannot connect, exchange missing, access refused | the whole batch fails (`Err`), retryable: an outage |
//!
//! An **outage** ([`Error::is_outage`](outbox_core::Error::is_outage)) says nothing about the
//! entry: the relay releases it without counting an attempt and pauses with a bounded back-off
//! until the broker answers, so entries wait for the broker or the operator instead of dying.
//! Only the failures of an entry itself (unroutable, invalid, too large) count attempts.
//!
//! Returned messages are matched to entries by `message_id` (the entry id), not by the confirm
//! lapin attaches them to: lapin 4 hands a returned message to the next confirm it completes,
//! which, when the broker acks several messages at once, can be another entry's (the
//! `interleaved_unroutable_entries_are_attributed_exactly` test shows it with a durable queue).
//!
//! Delivery is at least once: an entry whose confirm was lost may have reached its queue, and
//! will be sent again; consumers de-duplicate by `message_id`.
//!
//! ## Secrets
//! The URL's password is never shown: `Debug`, [`RabbitMqConfig::redacted_url`], configuration
//! errors and connection errors print the URL as [`outbox_core::redact::redact_url`] redacts it
//! (the user information ends at the last `@`, so passwords holding `/`, `?`, `#` or `@` stay
//! hidden), and driver messages are scrubbed of every secret part of the URL.
//!
//! ## Order
//! One channel carries a batch, in batch order, and RabbitMQ keeps the order of one channel's
//! messages within a queue, so entries of one aggregate reach each queue in sequence order.
//!
//! ## Tracing
//! With the `tracing` feature each publish runs in a `send {exchange}` producer span with the
//! OpenTelemetry messaging attributes; with `opentelemetry` it links to each entry's creation
//! context, and [`trace::extract`] gives a consumer the context a delivery carries (the entry's
//! `traceparent` and `tracestate` headers travel as AMQP headers). See the `outbox-telemetry` crate.
//!
//! ## Connection handling
//! The publisher opens one connection with one confirm-mode channel on its first batch (or on
//! [`RabbitMqPublisher::connect`]) and keeps it. When a batch finds the connection or channel
//! broken, it reports the unconfirmed entries retryable and drops the connection; the next
//! batch opens a new one (a mutex serializes batches, so reconnecting is never raced). lapin's
//! own auto-recovery is not used: the publisher must know which confirms were lost.
//!
//! ## TLS
//! The crate builds lapin without a TLS backend. For `amqps://`, enable one of lapin's TLS
//! features in your application (e.g. `lapin = { version = "4", features = ["rustls"] }`);
//! Cargo unifies it into this crate's lapin.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;
pub mod message;
mod publisher;
#[cfg(feature = "tracing")]
#[cfg_attr(docsrs, doc(cfg(feature = "tracing")))]
pub mod trace;

pub use config::{
    ConfigError, DEFAULT_MAX_MESSAGE_SIZE, ExchangeType, MAX_MESSAGE_SIZE_LIMIT, MAX_SHORT_STRING, RabbitMqConfig,
    RabbitMqConfigBuilder, Routing,
};
pub use publisher::RabbitMqPublisher;

/// The lapin crate this adapter is built on, for consumers and tests that need its types.
pub use lapin;
