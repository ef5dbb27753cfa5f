//! # outbox-core
//!
//! The heart of the **outbox** framework for the transactional outbox pattern: an application
//! writes an event into an outbox table *in the same database transaction* as its business
//! change, and a [`Relay`] publishes committed entries to a broker afterwards, retrying until the
//! broker has them. Delivery is at least once; consumers de-duplicate by [`EntryId`].
//!
//! This crate has no third-party dependency in its default features. It owns:
//! - the entry model ([`NewEntry`], [`Entry`]) with validation at build time;
//! - the status state machine ([`status`]): pending → processing → published, failed with a
//!   retry, dead;
//! - the retry policy ([`RetryPolicy`], [`ExponentialBackoff`] with full jitter);
//! - the ports adapters implement: [`Store`] and [`Maintenance`] (storage), [`Publisher`]
//!   (broker), [`Clock`] and [`Timer`] (time), [`Observer`] (metrics and tracing);
//! - the [`Relay`];
//! - in-memory adapters ([`MemoryStore`], [`CollectingPublisher`], [`ScriptedPublisher`],
//!   [`NoopPublisher`]);
//! - with the `testkit` feature, the conformance suites every adapter runs (`testkit`).
//!
//! Storage adapters (`outbox-sqlx`, `outbox-diesel`, `outbox-seaorm`) and broker adapters
//! (`outbox-kafka`, `outbox-rabbitmq`, `outbox-eventbridge`) live in crates of their own.
//!
//! ## Example
//! ```
//! use outbox_core::{CollectingPublisher, MemoryStore, NewEntry, Relay, RelayConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = MemoryStore::new();
//! let publisher = CollectingPublisher::new();
//! let relay = Relay::new(store.clone(), publisher.clone(), RelayConfig::default())?;
//!
//! // In the application's transaction (here the in-memory store's own):
//! let mut tx = store.begin();
//! tx.enqueue(NewEntry::builder("order", "o-1", "order.placed").json(r#"{"total":42}"#).build()?);
//! tx.commit()?;
//!
//! // A rolled-back transaction leaves nothing behind.
//! let mut tx = store.begin();
//! tx.enqueue(NewEntry::builder("order", "o-2", "order.placed").json("{}").build()?);
//! drop(tx);
//!
//! let report = relay.run_once().await?;
//! assert_eq!(report.published, 1);
//! assert_eq!(publisher.published()[0].aggregate_id, "o-1");
//! # Ok(()) }
//! ```
//! In a service, run the relay until shutdown: `relay.run(shutdown_signal).await`, and call
//! [`Wakeup::wake`] (from [`Relay::wakeup`]) after committing, or let the store's notifier do it,
//! so entries go out within milliseconds instead of a poll interval later.
//!
//! ## The guarantees
//! Every store and the relay keep these; the testkit checks each one.
//! 1. **Nothing rolled back is ever published.** Entries are written in the application's
//!    transaction and claimed only once committed.
//! 2. **Everything committed is eventually published or dead-lettered**, whatever crashes in
//!    between: a claim is a lease; when it lapses (the relay crashed or stalled), the entries are
//!    claimable again.
//! 3. **Per-aggregate order.** For one (aggregate type, aggregate id), entries are published in
//!    sequence order, and an entry is never marked published while an earlier entry of its
//!    aggregate is unpublished. A failing entry holds back only its own aggregate; all others
//!    keep flowing.
//! 4. **Batches keep order.** A batch may carry several entries of one aggregate; when one fails,
//!    the later ones of that aggregate in the batch are released unpublished and without counting
//!    an attempt.
//! 5. **No double publish without a crash**, even with several relays on one store: two claims
//!    never hold the same entry.
//!
//! ## Outages are not the entry's fault
//! Attempts and the dead letter are for failures of the entry itself (too large, unroutable,
//! not acknowledged). A failure that says nothing about the entry — the publisher's `Err` for
//! the whole batch, a batch that exceeds [`RelayConfig::publish_timeout`], or an entry whose
//! error [`is_outage`](Error::is_outage) (broker unreachable, connection lost, throttling) —
//! releases the entry without counting an attempt, and [`Relay::run`] pauses publishing with a
//! bounded exponential back-off ([`RelayConfig::outage_backoff`]) until the broker answers,
//! telling the [`Observer`] once ([`RelayEvent::OutageStarted`], [`RelayEvent::OutageEnded`]).
//! A broker outage, however long, never dead-letters anything, and a relay started while its
//! broker is down waits for it. A panicking publisher is caught: the batch is published again
//! one entry at a time, and an entry whose own publish panics counts a failed attempt, so a
//! poison entry ends up dead while the rest flows. With the default [`ExponentialBackoff`], an
//! entry that keeps failing retryably is dead within 511 s of its first failure.
//!
//! A delayed entry ([`NewEntryBuilder::not_before`]) holds back the later entries of its
//! aggregate until it is due: order wins over timeliness. A dead entry blocks its aggregate
//! until an operator requeues it, unless [`DeadPolicy::Skip`] is configured.
//!
//! ## Limits
//! What every store and the relay can hold, checked where the value enters (the entry builder or
//! [`RelayConfig`] validation), so nothing is refused later, or silently changed, by a database:
//! - **Times**: [`Timestamp::MIN_STORABLE`]`..=`[`Timestamp::MAX_STORABLE`], 1970-01-01T00:00:00Z
//!   to 9999-12-31T23:59:59.999999Z, in microseconds (a `not_before` outside it fails the
//!   build); the relay's lease, publish timeout and retry delays are at most
//!   [`RelayConfig::MAX_DURATION`] (100 years) and must end within that range. A store refuses
//!   any other time it is asked to write ([`Timestamp::check_storable`] says why).
//! - **Identifiers**: aggregate type, aggregate id and event type at most 255 bytes by default
//!   ([`Limits`]), with no control, bidi-control or zero-width characters; a
//!   [`RelayConfig::relay_id`] at most [`RelayConfig::MAX_RELAY_ID_LEN`] (234) bytes, so the lease
//!   holder `<relay_id>:<batch>` fits [`ClaimRequest::MAX_HOLDER_LEN`] (255).
//! - **Concurrency**: [`RelayConfig::max_in_flight`] at most [`RelayConfig::MAX_IN_FLIGHT`] (64).
//! - **Payloads**: at most 1 MiB by default ([`Limits::max_payload_len`]), but each broker has its
//!   own, smaller or larger, limit on the whole message, which its publisher checks before sending
//!   (an entry that can never fit fails alone, permanently): Kafka's producer `message.max.bytes`,
//!   1,000,000 bytes by default for key, value and headers; RabbitMQ's `max_message_size` for the
//!   body and `frame_max` (131,072 bytes by default) for properties and headers; EventBridge's
//!   256 KiB per `PutEvents` entry. See each adapter's crate docs.
//!
//! ## What a writer must guarantee
//! Writing is each storage adapter's own function, taking its library's transaction type. It must:
//! - insert the entry with the caller's transaction, so it commits or rolls back with it, and
//!   never commit on its own;
//! - give the entry the next sequence of its aggregate such that sequences follow commit order
//!   for an aggregate whose writers are serialized (for example by locking the aggregate's row);
//! - store every field of the [`NewEntry`] unchanged (id, headers in order, payload bytes,
//!   content type, `not_before`), status pending, no attempts;
//! - reject a duplicate id with an error rather than overwrite or drop an entry.
//!
//! ## Features
//! - `tokio`: `time::TokioTimer`, used by [`Relay::run`] by default.
//! - `testkit`: the conformance suites (`testkit`).
//! - `tracing`: a `tracing` span per relay batch (`outbox.batch`, with its counts and timings),
//!   around the publish and the completion, so a publisher's send span and the observer's events
//!   are its children. Logs, metrics and W3C trace propagation are in the `outbox-telemetry`
//!   crate, which enables this feature.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod entry;
pub mod error;
pub mod memory;
pub mod publisher;
pub mod redact;
pub mod relay;
pub mod retry;
mod span;
pub mod status;
pub mod store;
pub mod time;

#[cfg(feature = "testkit")]
#[cfg_attr(docsrs, doc(cfg(feature = "testkit")))]
pub mod testkit;

pub use entry::{
    Entry, EntryId, Field, Headers, Lease, Limits, NewEntry, NewEntryBuilder, Payload, ValidationError, header,
};
pub use error::{Error, ErrorKind, Result};
pub use memory::{CollectingPublisher, MemoryStore, MemoryTransaction, NoopPublisher, ScriptedPublisher};
pub use publisher::{DeliveryTimeout, DynPublisher, Outcome, Publisher};
pub use relay::{BatchReport, NoopObserver, Observer, Relay, RelayConfig, RelayEvent, Wakeup};
pub use retry::{ExponentialBackoff, RandomSource, RetryDecision, RetryPolicy, SplitMix64};
pub use status::{Event, InvalidTransition, Status};
pub use store::{
    ClaimRequest, Completion, Dead, DeadPolicy, DynStore, Maintenance, MaintenanceExt, Requeue, Retry, Stats, Store,
};
pub use time::{BoxFuture, Clock, ManualClock, SystemClock, Timer, Timestamp};
