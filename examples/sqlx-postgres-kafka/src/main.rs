//! # Orders service: sqlx + PostgreSQL → Kafka
//!
//! A small orders service: placing and cancelling an order changes the `orders` table and
//! writes an event (`order.placed`, `order.cancelled`) in the SAME transaction through
//! [`PgOutbox::enqueue`]. A relay publishes the committed events to a Kafka topic, keyed by the
//! order id, so each order's events stay in one partition and in order.
//!
//! Run it from the workspace root against the local services:
//!
//! ```text
//! cargo xtask services up                  # PostgreSQL on 127.0.0.1:5432, a Kafka broker on 127.0.0.1:9092
//! cargo run -p example-sqlx-postgres-kafka
//! ```
//!
//! It needs PostgreSQL and a Kafka-protocol broker. Settings (with their local defaults):
//! - `DATABASE_URL` = `postgres://postgres@127.0.0.1:5432/test`
//! - `KAFKA_BROKERS` = `127.0.0.1:9092`
//!
//! What it does:
//! 1. creates its schema: an `orders_<run>` table and the outbox tables `outbox_<run>`
//!    ([`PgOutbox::migrate`]), and a Kafka topic `orders-<run>` with 3 partitions (unique names
//!    per run, so re-runs against the same services never see each other's data);
//! 2. places three orders and cancels one, each business change and its event in one
//!    transaction;
//! 3. places an order whose payment is declined: the transaction rolls back, and its event with it;
//! 4. runs the relay (woken by LISTEN/NOTIFY) until the outbox is drained;
//! 5. reads the topic back with a Kafka consumer and checks every committed event arrived
//!    exactly once, keyed by its order id, in order per order, with its headers, and that the
//!    declined order emitted nothing; prints what it saw and exits non-zero otherwise;
//! 6. drops its tables.

use std::collections::{HashMap, HashSet};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use outbox_core::{EntryId, Maintenance, NewEntry, Relay, RelayConfig, Timestamp};
use outbox_kafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use outbox_kafka::rdkafka::client::DefaultClientContext;
use outbox_kafka::rdkafka::consumer::{Consumer, StreamConsumer};
use outbox_kafka::rdkafka::message::{Headers, Message};
use outbox_kafka::rdkafka::{ClientConfig, Offset, TopicPartitionList};
use outbox_kafka::{KafkaConfig, KafkaPublisher, Routing, headers};
use outbox_sqlx::{PgOutbox, Tables};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const PARTITIONS: i32 = 3;
/// The first produce and fetch on a new topic are slow on some brokers: wait generously.
const WAIT: Duration = Duration::from_secs(60);

fn setting(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("example-sqlx-postgres-kafka FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The orders service: owns the pool and the outbox writer.
struct Orders {
    pool: PgPool,
    outbox: PgOutbox,
    table: String,
}

impl Orders {
    /// Places an order: the row and its `order.placed` event in one transaction. With
    /// `payment_ok` false, the payment is declined after both were written and the transaction
    /// rolls back. Returns the event that was (or would have been) published.
    async fn place(&self, id: &str, customer: &str, total_cents: i64, payment_ok: bool) -> Result<NewEntry, BoxError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(&format!(
            r#"INSERT INTO "{}" (id, customer, total_cents, status) VALUES ($1, $2, $3, 'placed')"#,
            self.table
        ))
        .bind(id)
        .bind(customer)
        .bind(total_cents)
        .execute(&mut *tx)
        .await?;
        let event = NewEntry::builder("order", id, "order.placed")
            .json(serde_json::json!({ "order_id": id, "customer": customer, "total_cents": total_cents }).to_string())
            .correlation_id(format!("checkout-{id}"))
            .build()?;
        self.outbox.enqueue(&mut tx, &event).await?;
        if payment_ok {
            self.outbox.commit(tx).await?; // commits, then wakes the relay (NOTIFY after commit)
        } else {
            tx.rollback().await?; // the order row AND its event are gone
        }
        Ok(event)
    }

    /// Cancels a placed order: the status change and its `order.cancelled` event in one transaction.
    async fn cancel(&self, id: &str, reason: &str) -> Result<NewEntry, BoxError> {
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(&format!(
            r#"UPDATE "{}" SET status = 'cancelled' WHERE id = $1 AND status = 'placed'"#,
            self.table
        ))
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != 1 {
            return Err(format!("order {id} is not placed; nothing to cancel").into()); // tx dropped: rolled back
        }
        let event = NewEntry::builder("order", id, "order.cancelled")
            .json(serde_json::json!({ "order_id": id, "reason": reason }).to_string())
            .correlation_id(format!("support-{id}"))
            .build()?;
        self.outbox.enqueue(&mut tx, &event).await?;
        self.outbox.commit(tx).await?;
        Ok(event)
    }
}

async fn run() -> Result<(), BoxError> {
    let database_url = setting("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test");
    let brokers = setting("KAFKA_BROKERS", "127.0.0.1:9092");
    let run = format!("{:08x}", EntryId::generate().as_u128() as u32);

    let pool = PgPoolOptions::new()
        .max_connections(5)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&database_url)
        .await
        .map_err(|e| {
            format!("cannot reach PostgreSQL ({e}); start it with `cargo xtask services up` or set DATABASE_URL")
        })?;

    // 1. Schema: the business table and the outbox tables (the outbox migration is idempotent).
    let table = format!("orders_{run}");
    sqlx::query(&format!(
        r#"CREATE TABLE IF NOT EXISTS "{table}" (id TEXT PRIMARY KEY, customer TEXT NOT NULL, total_cents BIGINT NOT NULL, status TEXT NOT NULL)"#
    ))
    .execute(&pool)
    .await?;
    // NOTIFY after commit: writers' commits stay concurrent (a NOTIFY inside the transaction
    // would serialize them); `outbox.commit(tx)` commits and then wakes listening relays.
    let outbox = PgOutbox::new(Tables::new(format!("outbox_{run}"))?).notify_after_commit(&pool);
    outbox.migrate(&pool).await?;
    let topic = format!("orders-{run}");
    create_topic(&brokers, &topic).await?;
    println!("schema: table {table}, outbox {}, topic {topic}", outbox.tables().name());

    let result = exercise(&pool, &outbox, &table, &brokers, &topic, &run).await;

    for t in [table.clone(), outbox.tables().name().to_string(), outbox.tables().aggregates_name()] {
        let _ = sqlx::query(&format!(r#"DROP TABLE IF EXISTS "{t}" CASCADE"#)).execute(&pool).await;
    }
    // The migration's NOTIFY trigger function.
    let _ =
        sqlx::query(&format!(r#"DROP FUNCTION IF EXISTS "{}_notify"()"#, outbox.tables().name())).execute(&pool).await;
    pool.close().await;
    result
}

async fn exercise(
    pool: &PgPool,
    outbox: &PgOutbox,
    table: &str,
    brokers: &str,
    topic: &str,
    run: &str,
) -> Result<(), BoxError> {
    let orders = Orders { pool: pool.clone(), outbox: outbox.clone(), table: table.to_string() };

    // 2. Business: place three orders, cancel one.
    let ids: Vec<String> = (1..=4).map(|n| format!("ord-{run}-{n}")).collect();
    let mut expected = vec![
        orders.place(&ids[0], "alice", 4200, true).await?,
        orders.place(&ids[1], "bob", 1999, true).await?,
        orders.place(&ids[2], "carol", 12_000, true).await?,
    ];
    expected.push(orders.cancel(&ids[1], "customer changed their mind").await?);
    for e in &expected {
        println!("committed {} {}", e.aggregate_id(), e.event_type());
    }
    // 3. A declined payment: the transaction rolls back, the event never exists.
    let declined = orders.place(&ids[3], "mallory", 999_999, false).await?;
    println!("rolled back {} {} (payment declined)", declined.aggregate_id(), declined.event_type());

    // 4. The relay: its own store (pool), woken by LISTEN/NOTIFY, publishing to Kafka.
    let publisher = KafkaPublisher::new(KafkaConfig::new(brokers, Routing::topic(topic)?))?;
    let store = outbox.store(pool.clone());
    let config = RelayConfig { poll_interval: Duration::from_millis(50), ..RelayConfig::default() };
    let relay = Relay::new_checked(store.clone(), publisher.clone(), config)?; // also checks message.timeout.ms
    let _listener = store.listen(relay.wakeup());
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
    publisher.flush(Duration::from_secs(10))?;
    let stats = store.stats(Timestamp::now()).await?;
    println!("relay done: {stats:?}");
    if stats.published != expected.len() as u64 {
        return Err(format!("expected {} published entries in the outbox, found {stats:?}", expected.len()).into());
    }

    // 5. Read the topic back from the broker and check what arrived.
    let consumer = consumer(brokers, topic)?;
    let received = receive(&consumer, expected.len(), WAIT).await?;
    let extra = receive(&consumer, 1, Duration::from_secs(2)).await?;
    println!("\nread back {} messages from topic {topic}:", received.len() + extra.len());
    for m in received.iter().chain(&extra) {
        println!(
            "  partition {} key {} {} seq {} id {} correlation {} {}",
            m.partition,
            m.key,
            m.header(headers::EVENT_TYPE).unwrap_or("?"),
            m.header(headers::SEQUENCE).unwrap_or("?"),
            m.header(headers::ID).unwrap_or("?"),
            m.header("correlation-id").unwrap_or("?"),
            m.payload
        );
    }
    if !extra.is_empty() {
        return Err(format!("{} more messages than committed events arrived", extra.len()).into());
    }
    check(&expected, &declined, &received)?;
    println!(
        "\nok: {} events arrived once each, keyed by order, in order per order, with their headers; the declined order emitted nothing",
        expected.len()
    );
    Ok(())
}

/// A message as read back from Kafka.
struct Arrived {
    partition: i32,
    key: String,
    payload: String,
    headers: Vec<(String, String)>,
}

impl Arrived {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

fn check(expected: &[NewEntry], declined: &NewEntry, received: &[Arrived]) -> Result<(), BoxError> {
    let by_id: HashMap<String, &NewEntry> = expected.iter().map(|e| (e.id().to_string(), e)).collect();
    let mut seen = HashSet::new();
    // Per order: the events in arrival order, and the partition they used.
    let mut per_order: HashMap<&str, (i32, Vec<&str>)> = HashMap::new();
    for m in received {
        let id = m.header(headers::ID).ok_or("a message arrived without an outbox-id header")?;
        if id == declined.id().to_string() {
            return Err(format!("the declined order's event {id} was published; it must not be").into());
        }
        let e = by_id.get(id).ok_or_else(|| format!("message {id} matches no committed event"))?;
        if !seen.insert(id.to_string()) {
            return Err(format!("event {id} arrived twice").into());
        }
        if m.key != e.aggregate_id() {
            return Err(format!("event {id} is keyed {}, expected the order id {}", m.key, e.aggregate_id()).into());
        }
        if m.payload.as_bytes() != e.payload().as_bytes() {
            return Err(format!("the payload of {id} changed in transit").into());
        }
        for (name, want) in [
            (headers::EVENT_TYPE, e.event_type()),
            (headers::AGGREGATE_TYPE, "order"),
            (headers::CONTENT_TYPE, "application/json"),
            ("correlation-id", e.headers().get("correlation-id").unwrap_or_default()),
        ] {
            if m.header(name) != Some(want) {
                return Err(format!("event {id}: header {name} is {:?}, expected {want:?}", m.header(name)).into());
            }
        }
        let (partition, events) = per_order.entry(e.aggregate_id()).or_insert((m.partition, Vec::new()));
        if *partition != m.partition {
            return Err(format!("order {} spans partitions {partition} and {}", e.aggregate_id(), m.partition).into());
        }
        events.push(e.event_type());
    }
    if seen.len() != expected.len() {
        let missing: Vec<_> = by_id.keys().filter(|id| !seen.contains(*id)).collect();
        return Err(format!("{} committed events never arrived: {missing:?}", missing.len()).into());
    }
    for e in expected {
        let events = &per_order[e.aggregate_id()].1;
        let want: Vec<&str> =
            expected.iter().filter(|x| x.aggregate_id() == e.aggregate_id()).map(NewEntry::event_type).collect();
        if *events != want {
            return Err(
                format!("order {} events arrived as {events:?}, committed as {want:?}", e.aggregate_id()).into()
            );
        }
    }
    Ok(())
}

fn admin(brokers: &str) -> Result<AdminClient<DefaultClientContext>, BoxError> {
    Ok(ClientConfig::new().set("bootstrap.servers", brokers).create()?)
}

/// Creates the topic (this broker does not create topics on first use).
async fn create_topic(brokers: &str, topic: &str) -> Result<(), BoxError> {
    let client = admin(brokers)?;
    let metadata =
        tokio::task::spawn_blocking(move || client.inner().fetch_metadata(None, Duration::from_secs(10)).map(|_| ()))
            .await?;
    metadata.map_err(|e| {
        format!("cannot reach the Kafka broker at {brokers} ({e}); start it with `cargo xtask services up` or set KAFKA_BROKERS")
    })?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in
        admin(brokers)?.create_topics(&[NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1))], &options).await?
    {
        result.map_err(|(name, code)| format!("creating topic {name} failed: {code:?}"))?;
    }
    Ok(())
}

/// A consumer reading every partition of `topic` from the beginning.
fn consumer(brokers: &str, topic: &str) -> Result<StreamConsumer, BoxError> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}-checker"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        assignment.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    Ok(consumer)
}

/// Reads until `count` messages arrived or `timeout` passed.
async fn receive(consumer: &StreamConsumer, count: usize, timeout: Duration) -> Result<Vec<Arrived>, BoxError> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(message) = tokio::time::timeout(left, consumer.recv()).await else { break };
        let message = message?;
        let headers = message
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        out.push(Arrived {
            partition: message.partition(),
            key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
            payload: String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned(),
            headers,
        });
    }
    Ok(out)
}
