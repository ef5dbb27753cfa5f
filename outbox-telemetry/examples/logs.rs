//! What the relay logs with `Telemetry` and tracing-subscriber's fmt layer: one batch in which
//! one entry fails retryably (its successor is released), one is rejected for good, and one is
//! published. `cargo run -p outbox-telemetry --example logs` (the README's log excerpt).

use std::sync::Arc;

use outbox_core::{Error, ErrorKind, MemoryStore, NewEntry, Relay, RelayConfig, ScriptedPublisher};
use outbox_telemetry::Telemetry;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_max_level(tracing::Level::DEBUG).with_target(true).without_time().init();
    let store = MemoryStore::new();
    store.enqueue([
        NewEntry::builder("order", "o-1", "order.placed").json("{}").build()?,
        NewEntry::builder("order", "o-1", "order.paid").json("{}").build()?,
        NewEntry::builder("order", "o-2", "order.placed").json("{}").build()?,
        NewEntry::builder("order", "o-3", "order.placed").json("{}").build()?,
    ])?;
    let publisher = ScriptedPublisher::new(|e| match e.aggregate_id.as_str() {
        "o-1" => Some(
            Error::new(ErrorKind::Timeout, "no answer from amqp://relay:s3cret@mq.internal:5672").with_outage(false),
        ),
        "o-2" => Some(Error::new(ErrorKind::TooLarge, "message of 2 MiB is over the broker's 1 MiB limit")),
        _ => None,
    });
    let config =
        RelayConfig { observer: Arc::new(Telemetry::new()), relay_id: "relay-a".into(), ..RelayConfig::default() };
    let relay = Relay::new(store, publisher, config)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
    runtime.block_on(relay.run_once())?;
    Ok(())
}
