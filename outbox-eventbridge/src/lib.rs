//! # outbox-eventbridge
//!
//! Publishes the entries of an **outbox** relay to an Amazon EventBridge event bus:
//! [`EventBridgePublisher`] implements [`outbox_core::Publisher`] with `PutEvents`, returning one
//! honest outcome per entry: published only when EventBridge returned an event id for it.
//!
//! ## Example
//! ```no_run
//! # #![recursion_limit = "256"] // the AWS SDK's futures, with the tracing features on
//! use outbox_core::{MemoryStore, Relay, RelayConfig};
//! use outbox_eventbridge::{EventBridgeConfig, EventBridgePublisher};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = EventBridgeConfig::builder("com.example.orders") // the events' Source
//!     .event_bus_name("orders")
//!     .build()?;
//! // Region, credentials and endpoint from the standard AWS chain (environment, profile, IMDS...).
//! let publisher = EventBridgePublisher::from_env(config).await;
//! # let store = MemoryStore::new();
//! let relay = Relay::new(store, publisher, RelayConfig::default())?;
//! relay.run_once().await?;
//! # Ok(()) }
//! ```
//! For a local emulator, add `.endpoint_url("http://127.0.0.1:4566")` to the configuration (or
//! set `AWS_ENDPOINT_URL_EVENTBRIDGE`); to reuse a loaded [`aws_config::SdkConfig`], use
//! [`EventBridgePublisher::from_sdk_config`]; with a ready client, [`EventBridgePublisher::new`].
//!
//! ## Field mapping
//! | `PutEvents` entry field | value |
//! |---|---|
//! | `Source` | the configured source (validated: non-empty, not `aws.…`) |
//! | `DetailType` | the entry's event type; or fixed, or a user function ([`DetailType`]) |
//! | `Detail` | the payload unchanged, which must be a JSON object; or the [`DetailFormat::Envelope`] around it |
//! | `EventBusName` | the configured bus name or ARN; none for the account's default bus |
//! | `Resources` | empty, or what a user function returns ([`EventBridgeConfigBuilder::resources`]) |
//! | `Time` | the entry's `created_at` |
//! | `TraceHeader` | the entry's `traceparent` header, converted to the X-Ray form ([`TraceHeader`]); EventBridge does not deliver it to targets |
//!
//! **Entry id, aggregate, headers.** EventBridge has no per-event attributes, and the event `id`
//! it assigns changes when an entry is sent again. By default `Detail` is exactly the payload, so
//! the entry id travels only if the payload carries one: put an event id consumers can
//! de-duplicate by in the payload (delivery is at least once), or choose
//! [`DetailFormat::Envelope`], which sends `{"metadata": {"id", "aggregate_type", "aggregate_id",
//! "sequence", "event_type", "content_type", "headers"}, "data": <payload>}`.
//! `Resources` is left to the user (it is meant for ARNs and rules match on it).
//!
//! **Payloads must be JSON.** A payload that is not UTF-8, not JSON, or (by default) not a JSON
//! object fails alone, permanently, before anything is sent, with the reason. JSON nested deeper
//! than 128 levels is rejected too (the JSON checker's limit; EventBridge allows 1100).
//!
//! **Trace context.** EventBridge delivers no attributes and drops `TraceHeader` before targets,
//! so the W3C context (`traceparent`, `tracestate`) reaches a consumer only inside `Detail`: in
//! the envelope's `metadata.headers` ([`DetailFormat::Envelope`]), or as a `traceContext` member
//! added to the payload ([`DetailFormat::PayloadWithTraceContext`]). With the `tracing` feature
//! each publish runs in a `send {event bus}` producer span; with `opentelemetry` it links to each
//! entry's creation context and `trace::extract` reads the context of a delivered event (e.g. an
//! SQS message body). See the `outbox-telemetry` crate.
//!
//! ## Requests
//! A batch is cut, in order, into requests of at most 10 entries ([`MAX_ENTRIES_PER_REQUEST`]) whose
//! sizes ([`request_entry_size`]: `Time` 14 bytes + UTF-8 bytes of `Source`, `DetailType`, `Detail`,
//! `Resources`, and `EventBusName` to be safe) add up to at most 256 KiB ([`MAX_REQUEST_BYTES`]).
//! An entry larger than that on its own fails alone, permanently ([`ErrorKind::TooLarge`]), and
//! never blocks the rest. Requests are sent one after the other, each entry's outcome is read from
//! the result entry at its index, and:
//! - when a request fails as a whole and retryably (network, throttling, 5xx, after the SDK's own
//!   retries), every entry in it is retryable and the rest of the batch is not sent (reported
//!   retryable too), so a struggling endpoint is not hammered. These are outages
//!   ([`Error::is_outage`](outbox_core::Error::is_outage)), as are throttled and internal-failure
//!   entries: the relay releases them without counting an attempt and pauses until EventBridge
//!   answers, so an outage never dead-letters entries;
//! - when a request fails as a whole and permanently (access denied, validation), every entry in
//!   it is failed permanently, and the following requests are still sent;
//! - once an entry failed retryably, the later entries of its aggregate in the following requests
//!   are not sent (reported retryable; the relay releases them without counting an attempt).
//!
//! The retryable/permanent table is in [`classify`].
//!
//! Requests of one batch go out one at a time (that is what keeps per-aggregate submission
//! order); to have more requests in flight against a distant endpoint, raise the relay's
//! `RelayConfig::max_in_flight`, which runs several batches at once.
//!
//! ## Order
//! **EventBridge does not preserve order**, not even within one `PutEvents` request: consumers
//! must tolerate events of one aggregate arriving out of order (e.g. by the `sequence` of the
//! envelope, or idempotent state). The outbox keeps per-aggregate order only up to the
//! `PutEvents` call: entries are submitted in sequence order, and the relay never marks a later
//! entry published before an earlier one. Run the relay with `max_per_aggregate = 1` if one
//! event per aggregate in flight at a time is what consumers need.
//!
//! ## Build
//! The AWS SDK crates are used without default features, with the SDK's default HTTPS client
//! (hyper 1, rustls 0.23) and the tokio runtime; the legacy hyper 0.14 client stays out. SSO and
//! `credential_process` profiles need `aws-config`'s `sso` / `credentials-process` features:
//! enable them in your own dependency on `aws-config` (Cargo unifies the features) and pass the
//! loaded configuration to [`EventBridgePublisher::from_sdk_config`].
//!
//! [`ErrorKind::TooLarge`]: outbox_core::ErrorKind::TooLarge
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod classify;
mod config;
mod mapping;
mod publisher;
#[cfg(feature = "tracing")]
#[cfg_attr(docsrs, doc(cfg(feature = "tracing")))]
pub mod trace;

pub use aws_config;
pub use aws_sdk_eventbridge;
pub use config::{
    ConfigError, DetailFormat, DetailType, EventBridgeConfig, EventBridgeConfigBuilder, MAX_ENTRIES_PER_REQUEST,
    MAX_REQUEST_BYTES, TRACE_CONTEXT_MEMBER, TraceHeader,
};
pub use mapping::request_entry_size;
pub use publisher::EventBridgePublisher;
