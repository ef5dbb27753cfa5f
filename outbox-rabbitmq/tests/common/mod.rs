//! Shared test plumbing: a connection to the real broker, a fresh exchange and an exclusive
//! queue per test, and an [`Inbox`] reading that queue back.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures_core::Stream;
use outbox_core::testkit::{Inbox, Received};
use outbox_core::{Entry, EntryId, NewEntry, Result, Timestamp};
use outbox_rabbitmq::lapin::message::Delivery;
use outbox_rabbitmq::lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
};
use outbox_rabbitmq::lapin::types::{AMQPValue, FieldTable};
use outbox_rabbitmq::lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use outbox_rabbitmq::{RabbitMqConfig, RabbitMqConfigBuilder};
use tokio::sync::{Mutex, mpsc};

/// The broker URL: `OUTBOX_TEST_AMQP_URL`, or the local default.
pub fn amqp_url() -> String {
    std::env::var("OUTBOX_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string())
}

/// A short unique name for this run.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &EntryId::generate().to_string()[24..])
}

/// A connection to the real broker; fails the test with how to start it.
pub async fn connect() -> Connection {
    match Connection::connect(&amqp_url(), ConnectionProperties::default()).await {
        Ok(c) => c,
        Err(e) => panic!(
            "RabbitMQ is not reachable at {} ({e}); start it with `cargo xtask services up`",
            outbox_rabbitmq::RabbitMqConfig::builder(amqp_url(), "")
                .build()
                .map(|c| c.redacted_url().to_string())
                .unwrap_or_default()
        ),
    }
}

/// A fresh topic exchange (auto-deleted with its last binding) and an exclusive queue bound to
/// it, consumed into an inbox.
pub struct TestBroker {
    pub connection: Connection,
    pub channel: Channel,
    pub exchange: String,
    pub queue: String,
    pub inbox: QueueInbox,
}

impl TestBroker {
    /// Binds the queue with each of `patterns` (`#` for everything).
    pub async fn new(patterns: &[&str]) -> TestBroker {
        let connection = connect().await;
        let channel = connection.create_channel().await.expect("channel");
        let exchange = unique("outbox-test");
        channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions { auto_delete: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .expect("declare exchange");
        let queue = unique("outbox-test-q");
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .expect("declare queue");
        // A binding no test routes to: the auto-delete exchange goes when the queue does, even
        // in tests that bind nothing else.
        for pattern in patterns.iter().chain(&["outbox-test-sentinel"]) {
            bind(&channel, &queue, &exchange, pattern).await;
        }
        let inbox = QueueInbox::consume(&channel, &queue).await;
        TestBroker { connection, channel, exchange, queue, inbox }
    }

    /// A publisher configuration for this broker's exchange.
    pub fn config(&self) -> RabbitMqConfigBuilder {
        RabbitMqConfig::builder(amqp_url(), self.exchange.as_str())
    }

    /// Re-creates the exchange and binding (after a test deleted them).
    pub async fn recreate_exchange(&self, pattern: &str) {
        self.channel
            .exchange_declare(
                self.exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions { auto_delete: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .expect("declare exchange");
        bind(&self.channel, &self.queue, &self.exchange, pattern).await;
    }

    /// Deletes the exchange.
    pub async fn delete_exchange(&self) {
        self.channel
            .exchange_delete(self.exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await
            .expect("delete exchange");
    }
}

pub async fn bind(channel: &Channel, queue: &str, exchange: &str, pattern: &str) {
    channel
        .queue_bind(queue.into(), exchange.into(), pattern.into(), QueueBindOptions::default(), FieldTable::default())
        .await
        .expect("bind queue");
}

/// Reads deliveries of one queue (auto-ack), in arrival order.
pub struct QueueInbox {
    rx: Mutex<mpsc::UnboundedReceiver<Delivery>>,
}

impl QueueInbox {
    pub async fn consume(channel: &Channel, queue: &str) -> QueueInbox {
        let consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions { no_ack: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .expect("consume");
        // Read the consumer as a stream, in delivery order (a delegate would run each delivery
        // as its own task and could reorder them).
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut consumer = std::pin::pin!(consumer);
            while let Some(Ok(delivery)) = std::future::poll_fn(|cx| consumer.as_mut().poll_next(cx)).await {
                if tx.send(delivery).is_err() {
                    break;
                }
            }
        });
        QueueInbox { rx: Mutex::new(rx) }
    }

    /// Up to `count` deliveries, waiting at most `timeout` in all.
    pub async fn deliveries(&self, count: usize, timeout: Duration) -> Vec<Delivery> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.rx.lock().await;
        let mut out = Vec::with_capacity(count.min(4096));
        while out.len() < count {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(d)) => out.push(d),
                Ok(None) | Err(_) => break,
            }
        }
        out
    }
}

impl Inbox for QueueInbox {
    async fn receive(&self, count: usize, timeout: Duration) -> Result<Vec<Received>> {
        Ok(self.deliveries(count, timeout).await.iter().map(received).collect())
    }
}

/// A header value as text (long strings as UTF-8, anything else as its debug form).
pub fn text(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.to_string(),
        other => format!("{other:?}"),
    }
}

/// What the testkit needs from a delivery.
pub fn received(d: &Delivery) -> Received {
    let headers: Vec<(String, String)> = d
        .properties
        .headers()
        .as_ref()
        .map(|t| t.inner().iter().map(|(k, v)| (k.to_string(), text(v))).collect())
        .unwrap_or_default();
    Received {
        id: d.properties.message_id().as_ref().and_then(|id| id.as_str().parse().ok()),
        aggregate_id: headers.iter().find(|(k, _)| k == "outbox-aggregate-id").map(|(_, v)| v.clone()),
        payload: d.data.clone(),
        headers,
    }
}

/// An entry as a store would hand it to the relay.
pub fn entry(aggregate: &str, event_type: &str, sequence: i64) -> Entry {
    let new = NewEntry::builder("order", aggregate, event_type)
        .json(format!(r#"{{"aggregate":"{aggregate}","n":{sequence},"pad":"{}"}}"#, "x".repeat(120)))
        .build()
        .expect("valid entry");
    Entry::from_new(new, sequence, Timestamp::now())
}

/// Closes, from the broker's side, the connection whose client-provided name is `name`.
/// Retries while it is not listed yet. Runs `rabbitmqctl` (works as root here).
pub async fn close_connection_named(name: &str) {
    for _ in 0..30 {
        let out = tokio::process::Command::new("rabbitmqctl")
            .args(["list_connections", "-q", "--no-table-headers", "pid", "client_properties"])
            .output()
            .await
            .expect("run rabbitmqctl (is rabbitmq-server installed?)");
        assert!(out.status.success(), "rabbitmqctl list_connections failed: {}", String::from_utf8_lossy(&out.stderr));
        // One line per connection: `<rabbit@host.N.N.N>\t[{"connection_name",longstr,"..."},...]`.
        let listing = String::from_utf8_lossy(&out.stdout).into_owned();
        let found = listing.lines().find(|line| line.contains(name)).and_then(|line| line.split('\t').next());
        if let Some(pid) = found {
            let out = tokio::process::Command::new("rabbitmqctl")
                .args(["close_connection", "-q", pid, "closed by the outbox-rabbitmq test"])
                .output()
                .await
                .expect("run rabbitmqctl");
            assert!(
                out.status.success(),
                "rabbitmqctl close_connection failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no connection named {name} is listed by rabbitmqctl list_connections");
}
