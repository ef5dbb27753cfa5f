//! # Support tickets: sqlx + MariaDB/MySQL → RabbitMQ
//!
//! A small support-desk service: opening, assigning and resolving a ticket change the `tickets`
//! table and write an event (`ticket.opened`, `ticket.assigned`, `ticket.resolved`) in the SAME
//! transaction through [`MySqlOutbox::enqueue`]. A relay publishes the committed events to a
//! RabbitMQ topic exchange with publisher confirms, routing key = event type.
//!
//! Run it from the workspace root against the local services:
//!
//! ```text
//! cargo xtask services up                  # MariaDB on 127.0.0.1:3306, RabbitMQ on 127.0.0.1:5672
//! cargo run -p example-sqlx-mysql-rabbitmq
//! ```
//!
//! It needs MariaDB 10.6+ or MySQL 8, and RabbitMQ. Settings (with their local defaults):
//! - `DATABASE_URL` = `mysql://root@127.0.0.1:3306/test`
//! - `AMQP_URL` = `amqp://guest:guest@127.0.0.1:5672/%2f`
//!
//! What it does:
//! 1. creates its schema: a `tickets_<run>` table and the outbox tables `outbox_<run>`
//!    ([`MySqlOutbox::migrate`]); the publisher declares a topic exchange `support-<run>`, and a
//!    queue bound to `ticket.#` receives what it routes (unique names per run);
//! 2. opens, assigns and resolves tickets, each change and its event in one transaction;
//! 3. resolves an already resolved ticket: the event was written, the state check fails, the
//!    transaction rolls back, and the event with it;
//! 4. runs the relay until the outbox is drained;
//! 5. reads the queue back and checks every committed event arrived exactly once (by
//!    `message_id`), in order per ticket, with its type, routing key and headers; prints what it
//!    saw and exits non-zero otherwise;
//! 6. drops its tables, queue and exchange.

use std::collections::{HashMap, HashSet};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use outbox_core::{EntryId, Maintenance, NewEntry, Relay, RelayConfig, Timestamp};
use outbox_rabbitmq::lapin::message::Delivery;
use outbox_rabbitmq::lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use outbox_rabbitmq::lapin::types::{AMQPValue, FieldTable};
use outbox_rabbitmq::lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use outbox_rabbitmq::{ExchangeType, RabbitMqConfig, RabbitMqPublisher};
use outbox_sqlx::{MySqlOutbox, Tables};
use sqlx::MySqlPool;
use sqlx::mysql::MySqlPoolOptions;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const WAIT: Duration = Duration::from_secs(30);

fn setting(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("example-sqlx-mysql-rabbitmq FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The support-desk service.
struct Tickets {
    pool: MySqlPool,
    outbox: MySqlOutbox,
    table: String,
}

impl Tickets {
    async fn open(&self, id: &str, subject: &str) -> Result<NewEntry, BoxError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(&format!("INSERT INTO `{}` (id, subject, status) VALUES (?, ?, 'open')", self.table))
            .bind(id)
            .bind(subject)
            .execute(&mut *tx)
            .await?;
        let event = NewEntry::builder("ticket", id, "ticket.opened")
            .json(serde_json::json!({ "ticket_id": id, "subject": subject }).to_string())
            .correlation_id(format!("mail-{id}"))
            .build()?;
        self.outbox.enqueue(&mut tx, &event).await?;
        tx.commit().await?;
        Ok(event)
    }

    /// Moves the ticket from `from` to `to` and writes `event_type`; rolls back (event included)
    /// when the ticket is not in state `from`.
    async fn transition(
        &self,
        id: &str,
        from: &str,
        to: &str,
        event_type: &str,
        detail: serde_json::Value,
    ) -> Result<NewEntry, BoxError> {
        let mut tx = self.pool.begin().await?;
        let event = NewEntry::builder("ticket", id, event_type)
            .json(serde_json::json!({ "ticket_id": id, "detail": detail }).to_string())
            .correlation_id(format!("mail-{id}"))
            .build()?;
        self.outbox.enqueue(&mut tx, &event).await?;
        let updated = sqlx::query(&format!("UPDATE `{}` SET status = ? WHERE id = ? AND status = ?", self.table))
            .bind(to)
            .bind(id)
            .bind(from)
            .execute(&mut *tx)
            .await?;
        if updated.rows_affected() != 1 {
            tx.rollback().await?;
            return Err(format!("ticket {id} is not {from}; cannot move it to {to}").into());
        }
        tx.commit().await?;
        Ok(event)
    }
}

async fn run() -> Result<(), BoxError> {
    let database_url = setting("DATABASE_URL", "mysql://root@127.0.0.1:3306/test");
    let amqp_url = setting("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
    let run = format!("{:08x}", EntryId::generate().as_u128() as u32);

    let pool = MySqlPoolOptions::new()
        .max_connections(5)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&database_url)
        .await
        .map_err(|e| {
            format!("cannot reach MariaDB/MySQL ({e}); start it with `cargo xtask services up` or set DATABASE_URL")
        })?;

    // 1. Schema: the business table and the outbox tables.
    let table = format!("tickets_{run}");
    sqlx::query(&format!(
        "CREATE TABLE IF NOT EXISTS `{table}` (id VARCHAR(64) PRIMARY KEY, subject VARCHAR(255) NOT NULL, status VARCHAR(16) NOT NULL) ENGINE=InnoDB"
    ))
    .execute(&pool)
    .await?;
    let outbox = MySqlOutbox::new(Tables::new(format!("outbox_{run}"))?);
    outbox.migrate(&pool).await?;

    // The broker side: the exchange (the publisher declares it too) and a queue to read back.
    let exchange = format!("support-{run}");
    let queue = format!("support-{run}-audit");
    let connection = Connection::connect(&amqp_url, ConnectionProperties::default())
        .await
        .map_err(|e| format!("cannot reach RabbitMQ ({e}); start it with `cargo xtask services up` or set AMQP_URL"))?;
    let channel = connection.create_channel().await?;
    channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions { durable: true, ..Default::default() },
            FieldTable::default(),
        )
        .await?;
    channel.queue_declare(queue.as_str().into(), QueueDeclareOptions::default(), FieldTable::default()).await?;
    channel
        .queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "ticket.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    println!("schema: table {table}, outbox {}, exchange {exchange}, queue {queue}", outbox.tables().name());

    let result = exercise(&pool, &outbox, &table, &amqp_url, &exchange, &channel, &queue).await;

    let _ = channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
    let _ = channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await;
    let _ = connection.close(0, "done".into()).await;
    for t in [table.clone(), outbox.tables().name().to_string(), outbox.tables().aggregates_name()] {
        let _ = sqlx::query(&format!("DROP TABLE IF EXISTS `{t}`")).execute(&pool).await;
    }
    pool.close().await;
    result
}

async fn exercise(
    pool: &MySqlPool,
    outbox: &MySqlOutbox,
    table: &str,
    amqp_url: &str,
    exchange: &str,
    channel: &Channel,
    queue: &str,
) -> Result<(), BoxError> {
    let tickets = Tickets { pool: pool.clone(), outbox: outbox.clone(), table: table.to_string() };

    // 2. Business.
    let expected = vec![
        tickets.open("T-1", "Cannot log in").await?,
        tickets.open("T-2", "Invoice is wrong").await?,
        tickets.transition("T-1", "open", "assigned", "ticket.assigned", serde_json::json!({"agent": "kim"})).await?,
        tickets.transition("T-2", "open", "assigned", "ticket.assigned", serde_json::json!({"agent": "lee"})).await?,
        tickets
            .transition("T-1", "assigned", "resolved", "ticket.resolved", serde_json::json!({"fix": "password reset"}))
            .await?,
    ];
    for e in &expected {
        println!("committed {} {}", e.aggregate_id(), e.event_type());
    }
    // 3. Resolving twice: the event was written, the state check fails, both roll back.
    match tickets.transition("T-1", "assigned", "resolved", "ticket.resolved", serde_json::json!({})).await {
        Err(e) => println!("rolled back: {e}"),
        Ok(_) => return Err("resolving a resolved ticket succeeded; it must not".into()),
    }

    // 4. The relay.
    let config = RabbitMqConfig::builder(amqp_url, exchange)
        .declare_exchange(ExchangeType::Topic)
        .connection_name("support-relay")
        .build()?;
    let publisher = RabbitMqPublisher::new(config);
    publisher.connect().await?;
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
    relay.publisher().close().await;
    let stats = store.stats(Timestamp::now()).await?;
    println!("relay done: {stats:?}");

    // 5. Read the queue back.
    let received = drain(channel, queue, expected.len()).await?;
    println!("\nread back {} messages from queue {queue}:", received.len());
    for d in &received {
        let h = headers(d);
        println!(
            "  {} seq {} {} id {} correlation {} {}",
            h.get("outbox-aggregate-id").map_or("?", String::as_str),
            h.get("outbox-sequence").map_or("?", String::as_str),
            d.routing_key,
            d.properties.message_id().as_ref().map_or("?".to_string(), |s| s.to_string()),
            h.get("correlation-id").map_or("?", String::as_str),
            String::from_utf8_lossy(&d.data)
        );
    }
    check(&expected, &received)?;
    println!(
        "\nok: {} events arrived once each, in order per ticket, with type, routing key and headers; the rolled-back resolve never",
        expected.len()
    );
    Ok(())
}

/// Gets everything in the queue, waiting until at least `count` messages arrived.
async fn drain(channel: &Channel, queue: &str, count: usize) -> Result<Vec<Delivery>, BoxError> {
    let mut out = Vec::new();
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        match channel.basic_get(queue.into(), BasicGetOptions { no_ack: true }).await? {
            Some(message) => out.push(message.delivery),
            None if out.len() >= count => break,
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    Ok(out)
}

fn headers(d: &Delivery) -> HashMap<String, String> {
    d.properties
        .headers()
        .as_ref()
        .map(|t| {
            t.inner()
                .iter()
                .map(|(k, v)| {
                    let text = match v {
                        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                        AMQPValue::LongLongInt(n) => n.to_string(),
                        other => format!("{other:?}"),
                    };
                    (k.to_string(), text)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn check(expected: &[NewEntry], received: &[Delivery]) -> Result<(), BoxError> {
    if received.len() != expected.len() {
        return Err(format!("expected {} messages, {} arrived", expected.len(), received.len()).into());
    }
    let by_id: HashMap<String, &NewEntry> = expected.iter().map(|e| (e.id().to_string(), e)).collect();
    let mut seen = HashSet::new();
    let mut per_ticket: HashMap<String, Vec<String>> = HashMap::new();
    for d in received {
        let id = d.properties.message_id().as_ref().map(|s| s.to_string()).ok_or("a message without message_id")?;
        let e = by_id.get(&id).ok_or_else(|| format!("message {id} matches no committed event"))?;
        if !seen.insert(id.clone()) {
            return Err(format!("event {id} arrived twice").into());
        }
        let h = headers(d);
        let kind = d.properties.kind().as_ref().map(|s| s.to_string());
        let ok = d.data == e.payload().as_bytes()
            && kind.as_deref() == Some(e.event_type())
            && d.routing_key.as_str() == e.event_type()
            && h.get("outbox-aggregate-type").map(String::as_str) == Some("ticket")
            && h.get("outbox-aggregate-id").map(String::as_str) == Some(e.aggregate_id())
            && h.get("correlation-id").map(String::as_str) == e.headers().get("correlation-id");
        if !ok {
            return Err(format!(
                "event {id} arrived changed: type {kind:?}, routing key {}, headers {h:?}",
                d.routing_key
            )
            .into());
        }
        per_ticket.entry(e.aggregate_id().to_string()).or_default().push(id);
    }
    for (ticket, ids) in per_ticket {
        let committed: Vec<String> =
            expected.iter().filter(|e| e.aggregate_id() == ticket).map(|e| e.id().to_string()).collect();
        if ids != committed {
            return Err(format!("{ticket}: arrived {ids:?}, committed {committed:?}").into());
        }
    }
    Ok(())
}
