//! # Inventory service: sqlx + SQLite → Amazon EventBridge
//!
//! A small inventory service on an embedded SQLite database: receiving stock and reserving stock
//! for an order change the `stock` table and write an event (`stock.received`,
//! `stock.reserved`) in the SAME transaction through [`SqliteOutbox::enqueue`]. A relay publishes
//! the committed events to an EventBridge bus, in the envelope format (`detail.metadata` carries
//! the entry id, aggregate, sequence and headers; `detail.data` the payload).
//!
//! Run it from the workspace root against the local services:
//!
//! ```text
//! cargo xtask services up        # an EventBridge + SQS endpoint (moto) on 127.0.0.1:4566
//! cargo run -p example-sqlx-sqlite-eventbridge
//! ```
//!
//! It needs an EventBridge-compatible endpoint with SQS (SQLite is bundled). Settings (with their
//! local defaults):
//! - `EVENTBRIDGE_ENDPOINT` = `http://127.0.0.1:4566` (the local emulator, with static
//!   credentials `test`/`test`; against real AWS, load the standard credential chain instead and
//!   drop the endpoint);
//! - `AWS_REGION` = `us-east-1`.
//!
//! What it does:
//! 1. creates its schema in a fresh SQLite file: a `stock` table and the outbox tables
//!    ([`SqliteOutbox::migrate`]); and, on the endpoint, a bus `inventory-<run>` with a rule that
//!    sends this run's events to an SQS queue (unique names per run);
//! 2. receives stock for two SKUs and reserves some, each change and its event in one transaction;
//! 3. tries to reserve more than is in stock: the reservation's event was already written when
//!    the stock check fails, the transaction rolls back, and the event with it;
//! 4. runs the relay until the outbox is drained;
//! 5. reads the events back from the queue and checks every committed event arrived exactly once
//!    with its metadata and headers, and that each SKU's sequences follow commit order
//!    (EventBridge itself does not keep order: consumers order by `metadata.sequence`); prints
//!    what it saw and exits non-zero otherwise;
//! 6. deletes the bus, rule, queue and database file.

use std::collections::{HashMap, HashSet};
use std::process::ExitCode;
use std::str::FromStr;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, QueueAttributeName};
use outbox_core::{EntryId, Maintenance, NewEntry, Relay, RelayConfig, Timestamp};
use outbox_eventbridge::aws_config::{self, BehaviorVersion, SdkConfig};
use outbox_eventbridge::aws_sdk_eventbridge::config::{Credentials, Region};
use outbox_eventbridge::aws_sdk_eventbridge::{self as eb};
use outbox_eventbridge::{DetailFormat, EventBridgeConfig, EventBridgePublisher};
use outbox_sqlx::{SqliteOutbox, Tables};
use serde_json::Value;
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const WAIT: Duration = Duration::from_secs(30);

fn setting(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    let run = format!("{:08x}", EntryId::generate().as_u128() as u32);
    let path = std::env::temp_dir().join(format!("outbox-example-inventory-{run}.db"));
    let result = run_example(&run, &path).await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("example-sqlx-sqlite-eventbridge FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The inventory service: owns the pool and the outbox writer.
struct Inventory {
    pool: SqlitePool,
    outbox: SqliteOutbox,
}

impl Inventory {
    /// Adds `quantity` units of `sku` to stock, with its `stock.received` event.
    async fn receive(&self, sku: &str, quantity: i64, delivery: &str) -> Result<NewEntry, BoxError> {
        let mut conn = self.pool.acquire().await?;
        // BEGIN IMMEDIATE: SQLite's write lock up front, so the transaction never has to upgrade.
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(
            "INSERT INTO stock (sku, on_hand) VALUES (?, ?) ON CONFLICT (sku) DO UPDATE SET on_hand = on_hand + excluded.on_hand",
        )
        .bind(sku)
        .bind(quantity)
        .execute(&mut *tx)
        .await?;
        let event = NewEntry::builder("sku", sku, "stock.received")
            .json(serde_json::json!({ "sku": sku, "quantity": quantity, "delivery": delivery }).to_string())
            .correlation_id(delivery)
            .build()?;
        self.outbox.enqueue(&mut tx, &event).await?;
        tx.commit().await?;
        Ok(event)
    }

    /// Reserves `quantity` units of `sku` for `order`, with its `stock.reserved` event. Fails,
    /// rolling back the event too, when not enough is on hand.
    async fn reserve(&self, sku: &str, quantity: i64, order: &str) -> Result<NewEntry, BoxError> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let event = NewEntry::builder("sku", sku, "stock.reserved")
            .json(serde_json::json!({ "sku": sku, "quantity": quantity, "order": order }).to_string())
            .correlation_id(order)
            .build()?;
        // The event is written first: whatever fails afterwards takes it back with the rollback.
        self.outbox.enqueue(&mut tx, &event).await?;
        let updated = sqlx::query("UPDATE stock SET on_hand = on_hand - ? WHERE sku = ? AND on_hand >= ?")
            .bind(quantity)
            .bind(sku)
            .bind(quantity)
            .execute(&mut *tx)
            .await?;
        if updated.rows_affected() != 1 {
            tx.rollback().await?;
            return Err(format!("not enough {sku} on hand to reserve {quantity} for {order}").into());
        }
        tx.commit().await?;
        Ok(event)
    }
}

async fn run_example(run: &str, path: &std::path::Path) -> Result<(), BoxError> {
    let endpoint = setting("EVENTBRIDGE_ENDPOINT", "http://127.0.0.1:4566");
    let region = setting("AWS_REGION", "us-east-1");

    // 1. Schema: a fresh SQLite file with the business table and the outbox tables.
    let options = SqliteConnectOptions::from_str("sqlite:")?
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal);
    let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS stock (sku TEXT PRIMARY KEY, on_hand INTEGER NOT NULL CHECK (on_hand >= 0))",
    )
    .execute(&pool)
    .await?;
    let outbox = SqliteOutbox::new(Tables::new("outbox")?);
    outbox.migrate(&pool).await?;
    println!("database: {}", path.display());

    // The bus, and a rule sending this run's events to a queue we can read them back from.
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region))
        .credentials_provider(Credentials::new("test", "test", None, None, "example"))
        .endpoint_url(&endpoint)
        .load()
        .await;
    let bus = Bus::create(&sdk, run, &endpoint).await?;
    println!("bus: {} (source {}), read back through queue {}", bus.name, bus.source, bus.queue_url);

    let result = exercise(&pool, &outbox, &sdk, &bus).await;
    bus.delete().await;
    pool.close().await;
    result
}

async fn exercise(pool: &SqlitePool, outbox: &SqliteOutbox, sdk: &SdkConfig, bus: &Bus) -> Result<(), BoxError> {
    let inventory = Inventory { pool: pool.clone(), outbox: outbox.clone() };

    // 2. Business: stock arrives, orders reserve it.
    let expected = vec![
        inventory.receive("sku-red-mug", 10, "delivery-1").await?,
        inventory.receive("sku-blue-cap", 5, "delivery-1").await?,
        inventory.reserve("sku-red-mug", 3, "order-7").await?,
        inventory.reserve("sku-blue-cap", 5, "order-8").await?,
        inventory.receive("sku-blue-cap", 2, "delivery-2").await?,
        inventory.reserve("sku-red-mug", 4, "order-9").await?,
    ];
    for e in &expected {
        println!(
            "committed {} {} {}",
            e.aggregate_id(),
            e.event_type(),
            String::from_utf8_lossy(e.payload().as_bytes())
        );
    }
    // 3. Over-reservation: the event was written, the stock check fails, both roll back.
    match inventory.reserve("sku-blue-cap", 50, "order-10").await {
        Err(e) => println!("rolled back: {e}"),
        Ok(_) => return Err("reserving 50 of 2 blue caps succeeded; it must not".into()),
    }

    // 4. The relay: publishes to the bus in the envelope format.
    let config = EventBridgeConfig::builder(&bus.source)
        .event_bus_name(&bus.name)
        .endpoint_url(&bus.endpoint)
        .detail_format(DetailFormat::Envelope)
        .build()?;
    let publisher = EventBridgePublisher::from_sdk_config(sdk, config);
    let store = outbox.store(pool.clone());
    let relay_config = RelayConfig { poll_interval: Duration::from_millis(50), ..RelayConfig::default() };
    let relay = Relay::new(store.clone(), publisher, relay_config)?;
    let watcher = store.clone();
    let deadline = Instant::now() + WAIT;
    relay
        .run(async move {
            // A service runs until SIGTERM; the example stops once everything is published.
            while Instant::now() < deadline {
                match watcher.stats(Timestamp::now()).await {
                    Ok(s) if s.pending + s.processing + s.failed == 0 => return,
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        })
        .await?;
    let stats = store.stats(Timestamp::now()).await?;
    println!("relay done: {stats:?}");
    if stats.published != expected.len() as u64 {
        return Err(format!("expected {} published entries in the outbox, found {stats:?}", expected.len()).into());
    }

    // 5. Read the events back from the queue behind the bus and check them.
    let mut received = bus.receive(expected.len(), WAIT).await?;
    received.extend(bus.receive(1, Duration::from_secs(2)).await?);
    println!("\nread back {} events from the bus:", received.len());
    for event in &received {
        let m = &event.detail["metadata"];
        println!(
            "  {} seq {} {} id {} correlation {} data {}",
            m["aggregate_id"].as_str().unwrap_or("?"),
            m["sequence"],
            event.detail_type,
            m["id"].as_str().unwrap_or("?"),
            m["headers"]["correlation-id"].as_str().unwrap_or("?"),
            event.detail["data"]
        );
    }
    check(&expected, &received, &bus.source)?;
    println!(
        "\nok: {} events arrived once each with their metadata and headers, sequences in commit order per SKU; the failed reservation emitted nothing",
        expected.len()
    );
    Ok(())
}

fn check(expected: &[NewEntry], received: &[Event], source: &str) -> Result<(), BoxError> {
    if received.len() != expected.len() {
        return Err(format!("expected {} events, {} arrived", expected.len(), received.len()).into());
    }
    let by_id: HashMap<String, &NewEntry> = expected.iter().map(|e| (e.id().to_string(), e)).collect();
    let mut seen = HashSet::new();
    // Per SKU: (sequence, event id) of what arrived.
    let mut per_sku: HashMap<String, Vec<(i64, String)>> = HashMap::new();
    for event in received {
        let m = &event.detail["metadata"];
        let id = m["id"].as_str().ok_or("an event arrived without detail.metadata.id")?;
        let e = by_id.get(id).ok_or_else(|| format!("event {id} matches no committed event (a rolled-back one?)"))?;
        if !seen.insert(id.to_string()) {
            return Err(format!("event {id} arrived twice").into());
        }
        let data: Value = serde_json::from_slice(e.payload().as_bytes())?;
        let checks = [
            ("source", event.source == source),
            ("detail-type", event.detail_type == e.event_type()),
            ("metadata.aggregate_id", m["aggregate_id"] == e.aggregate_id()),
            ("metadata.event_type", m["event_type"] == e.event_type()),
            (
                "metadata.headers.correlation-id",
                m["headers"]["correlation-id"].as_str() == e.headers().get("correlation-id"),
            ),
            ("data", event.detail["data"] == data),
        ];
        for (what, ok) in checks {
            if !ok {
                return Err(format!("event {id}: {what} does not match what was committed: {:?}", event.detail).into());
            }
        }
        let sequence = m["sequence"].as_i64().ok_or_else(|| format!("event {id} has no metadata.sequence"))?;
        per_sku.entry(e.aggregate_id().to_string()).or_default().push((sequence, id.to_string()));
    }
    // EventBridge may deliver out of order; the sequences must still follow commit order.
    for (sku, mut arrived) in per_sku {
        arrived.sort();
        let by_sequence: Vec<&str> = arrived.iter().map(|(_, id)| id.as_str()).collect();
        let committed: Vec<String> =
            expected.iter().filter(|e| e.aggregate_id() == sku).map(|e| e.id().to_string()).collect();
        if by_sequence != committed {
            return Err(format!("{sku}: events by sequence {by_sequence:?}, committed {committed:?}").into());
        }
    }
    Ok(())
}

/// An event read back from the queue: the EventBridge envelope.
struct Event {
    detail_type: String,
    source: String,
    detail: Value,
}

/// A bus with a rule sending one source's events to an SQS queue.
struct Bus {
    name: String,
    source: String,
    endpoint: String,
    queue_url: String,
    events: eb::Client,
    sqs: aws_sdk_sqs::Client,
}

impl Bus {
    async fn create(sdk: &SdkConfig, run: &str, endpoint: &str) -> Result<Bus, BoxError> {
        let name = format!("inventory-{run}");
        let source = format!("com.example.inventory.{run}");
        let events = eb::Client::new(sdk);
        let sqs = aws_sdk_sqs::Client::new(sdk);
        events.create_event_bus().name(&name).send().await.map_err(|e| {
            format!(
                "cannot create the event bus at {endpoint} ({}); start the local endpoint with `cargo xtask services up` or set EVENTBRIDGE_ENDPOINT",
                eb::error::DisplayErrorContext(e)
            )
        })?;
        let queue_url = sqs.create_queue().queue_name(&name).send().await?.queue_url.ok_or("no queue URL")?;
        let attributes = sqs
            .get_queue_attributes()
            .queue_url(&queue_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await?;
        let queue_arn =
            attributes.attributes().and_then(|a| a.get(&QueueAttributeName::QueueArn)).ok_or("no queue ARN")?.clone();
        let pattern = serde_json::json!({ "source": [source] }).to_string();
        events.put_rule().name(&name).event_bus_name(&name).event_pattern(pattern).send().await?;
        let target = eb::types::Target::builder().id("queue").arn(queue_arn).build()?;
        events.put_targets().rule(&name).event_bus_name(&name).targets(target).send().await?;
        Ok(Bus { name, source, endpoint: endpoint.to_string(), queue_url, events, sqs })
    }

    /// Reads until `count` events arrived or `timeout` passed; deletes what it read.
    async fn receive(&self, count: usize, timeout: Duration) -> Result<Vec<Event>, BoxError> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < count && Instant::now() < deadline {
            let answer = self
                .sqs
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .send()
                .await?;
            let mut deletes = Vec::new();
            for (i, m) in answer.messages().iter().enumerate() {
                let body: Value = serde_json::from_str(m.body().unwrap_or_default())?;
                out.push(Event {
                    detail_type: body["detail-type"].as_str().unwrap_or_default().to_string(),
                    source: body["source"].as_str().unwrap_or_default().to_string(),
                    detail: body["detail"].clone(),
                });
                if let Some(handle) = m.receipt_handle() {
                    deletes.push(
                        DeleteMessageBatchRequestEntry::builder().id(i.to_string()).receipt_handle(handle).build()?,
                    );
                }
            }
            if !deletes.is_empty() {
                self.sqs.delete_message_batch().queue_url(&self.queue_url).set_entries(Some(deletes)).send().await?;
            }
        }
        Ok(out)
    }

    /// Removes the target, rule, bus and queue (best effort).
    async fn delete(&self) {
        let _ = self.events.remove_targets().rule(&self.name).event_bus_name(&self.name).ids("queue").send().await;
        let _ = self.events.delete_rule().name(&self.name).event_bus_name(&self.name).send().await;
        let _ = self.events.delete_event_bus().name(&self.name).send().await;
        let _ = self.sqs.delete_queue().queue_url(&self.queue_url).send().await;
    }
}
