//! # Subscriptions: SeaORM + MariaDB/MySQL → Kafka
//!
//! A small subscriptions service on SeaORM: starting a subscription, changing its plan and
//! cancelling it change the `subscriptions` entity and write an event (`subscription.started`,
//! `subscription.plan_changed`, `subscription.cancelled`) in the SAME `DatabaseTransaction`
//! through [`Outbox::enqueue`]. A relay on [`SeaStore`] publishes the committed events to a
//! Kafka topic keyed by subscription id, so each subscription's events stay in one partition
//! and in order.
//!
//! Run it from the workspace root against the local services:
//!
//! ```text
//! cargo xtask services up        # MariaDB on 127.0.0.1:3306, a Kafka broker on 127.0.0.1:9092
//! cargo run -p example-seaorm-mysql-kafka
//! ```
//!
//! It needs MariaDB 10.6+ or MySQL 8, and a Kafka-protocol broker. Settings (with their local
//! defaults):
//! - `DATABASE_URL` = `mysql://root@127.0.0.1:3306/test`
//! - `KAFKA_BROKERS` = `127.0.0.1:9092`
//!
//! What it does:
//! 1. creates its schema: the `seaorm_example_subscriptions` table (ids unique per run) and the
//!    outbox tables `outbox_<run>` with outbox-seaorm's [`Migration`]; a topic
//!    `subscriptions-<run>` with 3 partitions;
//! 2. starts, changes and cancels subscriptions, each change and its event in one transaction;
//! 3. changes the plan of a cancelled subscription: the event was written, the state check
//!    fails, the transaction rolls back, and the event with it;
//! 4. runs the relay until the outbox is drained;
//! 5. reads the topic back and checks every committed event arrived exactly once, keyed by its
//!    subscription, in order per subscription, with its headers; prints what it saw and exits
//!    non-zero otherwise;
//! 6. reverts the outbox migration.

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
use outbox_seaorm::{Migration, Outbox, SeaStore, Tables};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, Database, DatabaseConnection, EntityTrait, QueryFilter, Set,
    TransactionTrait,
};
use serde_json::Value;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const PARTITIONS: i32 = 3;
/// The first produce and fetch on a new topic are slow on some brokers: wait generously.
const WAIT: Duration = Duration::from_secs(60);

/// The business entity.
#[allow(unreachable_pub)]
mod subscription {
    use sea_orm::entity::prelude::*;

    /// A customer's subscription.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "seaorm_example_subscriptions")]
    pub struct Model {
        /// The subscription id.
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        /// The plan.
        pub plan: String,
        /// `active` or `cancelled`.
        pub status: String,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

fn setting(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("example-seaorm-mysql-kafka FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The subscriptions service.
struct Subscriptions {
    db: DatabaseConnection,
    outbox: Outbox,
}

impl Subscriptions {
    fn event(id: &str, event_type: &str, data: Value) -> Result<NewEntry, BoxError> {
        Ok(NewEntry::builder("subscription", id, event_type)
            .json(data.to_string())
            .correlation_id(format!("account-{id}"))
            .build()?)
    }

    async fn start(&self, id: &str, plan: &str) -> Result<NewEntry, BoxError> {
        let tx = self.db.begin().await?;
        subscription::ActiveModel {
            id: Set(id.to_string()),
            plan: Set(plan.to_string()),
            status: Set("active".into()),
        }
        .insert(&tx)
        .await?;
        let event = Self::event(id, "subscription.started", serde_json::json!({ "subscription": id, "plan": plan }))?;
        self.outbox.enqueue(&tx, &event).await?;
        tx.commit().await?;
        Ok(event)
    }

    /// Changes the plan of an active subscription; rolls back (event included) otherwise.
    async fn change_plan(&self, id: &str, plan: &str) -> Result<NewEntry, BoxError> {
        let tx = self.db.begin().await?;
        let event =
            Self::event(id, "subscription.plan_changed", serde_json::json!({ "subscription": id, "plan": plan }))?;
        self.outbox.enqueue(&tx, &event).await?;
        let updated = subscription::Entity::update_many()
            .col_expr(subscription::Column::Plan, Expr::value(plan))
            .filter(subscription::Column::Id.eq(id))
            .filter(subscription::Column::Status.eq("active"))
            .exec(&tx)
            .await?;
        if updated.rows_affected != 1 {
            tx.rollback().await?;
            return Err(format!("subscription {id} is not active; its plan cannot change").into());
        }
        tx.commit().await?;
        Ok(event)
    }

    async fn cancel(&self, id: &str) -> Result<NewEntry, BoxError> {
        let tx = self.db.begin().await?;
        subscription::Entity::update_many()
            .col_expr(subscription::Column::Status, Expr::value("cancelled"))
            .filter(subscription::Column::Id.eq(id))
            .exec(&tx)
            .await?;
        let event = Self::event(id, "subscription.cancelled", serde_json::json!({ "subscription": id }))?;
        self.outbox.enqueue(&tx, &event).await?;
        tx.commit().await?;
        Ok(event)
    }
}

async fn run() -> Result<(), BoxError> {
    let database_url = setting("DATABASE_URL", "mysql://root@127.0.0.1:3306/test");
    let brokers = setting("KAFKA_BROKERS", "127.0.0.1:9092");
    let run = format!("{:08x}", EntryId::generate().as_u128() as u32);

    // 1. Schema.
    let db = Database::connect(&database_url).await.map_err(|e| {
        format!("cannot reach MariaDB/MySQL ({e}); start it with `cargo xtask services up` or set DATABASE_URL")
    })?;
    db.execute_unprepared(
        "CREATE TABLE IF NOT EXISTS seaorm_example_subscriptions (id VARCHAR(64) PRIMARY KEY, plan VARCHAR(32) NOT NULL, status VARCHAR(16) NOT NULL) ENGINE=InnoDB",
    )
    .await?;
    let tables = Tables::new(format!("outbox_{run}"))?;
    let migration = Migration::new(tables.clone());
    migration.apply(&db).await?;
    let topic = format!("subscriptions-{run}");
    let result = match create_topic(&brokers, &topic).await {
        Ok(()) => {
            println!("schema: outbox {}, topic {topic}", tables.name());
            exercise(&db, &tables, &brokers, &topic, &run).await
        }
        Err(e) => Err(e),
    };
    let _ = migration.revert(&db).await;
    let _ = db.close().await;
    result
}

async fn exercise(
    db: &DatabaseConnection,
    tables: &Tables,
    brokers: &str,
    topic: &str,
    run: &str,
) -> Result<(), BoxError> {
    let service = Subscriptions { db: db.clone(), outbox: Outbox::new(tables.clone()) };
    let (a, b) = (format!("sub-{run}-a"), format!("sub-{run}-b"));

    // 2. Business.
    let expected = vec![
        service.start(&a, "basic").await?,
        service.start(&b, "pro").await?,
        service.change_plan(&a, "pro").await?,
        service.cancel(&b).await?,
        service.change_plan(&a, "team").await?,
    ];
    for e in &expected {
        println!("committed {} {}", e.aggregate_id(), e.event_type());
    }
    // 3. A plan change on a cancelled subscription rolls back with its event.
    match service.change_plan(&b, "team").await {
        Err(e) => println!("rolled back: {e}"),
        Ok(_) => return Err("changing a cancelled subscription succeeded; it must not".into()),
    }

    // 4. The relay.
    let publisher = KafkaPublisher::new(KafkaConfig::new(brokers, Routing::topic(topic)?))?;
    let store = SeaStore::new(db.clone(), tables.clone());
    let config = RelayConfig { poll_interval: Duration::from_millis(50), ..RelayConfig::default() };
    let relay = Relay::new_checked(store.clone(), publisher.clone(), config)?; // also checks message.timeout.ms
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

    // 5. Read the topic back.
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
    check(&expected, &received)?;
    println!(
        "\nok: {} events arrived once each, keyed by subscription, in order per subscription, with their headers; the rolled-back change never",
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

fn check(expected: &[NewEntry], received: &[Arrived]) -> Result<(), BoxError> {
    let by_id: HashMap<String, &NewEntry> = expected.iter().map(|e| (e.id().to_string(), e)).collect();
    let mut seen = HashSet::new();
    // Per subscription: the events in arrival order, and the partition they used.
    let mut per_subscription: HashMap<&str, (i32, Vec<&str>)> = HashMap::new();
    for m in received {
        let id = m.header(headers::ID).ok_or("a message arrived without an outbox-id header")?;
        let e = by_id.get(id).ok_or_else(|| format!("message {id} matches no committed event"))?;
        if !seen.insert(id.to_string()) {
            return Err(format!("event {id} arrived twice").into());
        }
        if m.key != e.aggregate_id() {
            return Err(
                format!("event {id} is keyed {}, expected the subscription id {}", m.key, e.aggregate_id()).into()
            );
        }
        if m.payload.as_bytes() != e.payload().as_bytes() {
            return Err(format!("the payload of {id} changed in transit").into());
        }
        for (name, want) in [
            (headers::EVENT_TYPE, e.event_type()),
            (headers::AGGREGATE_TYPE, "subscription"),
            (headers::CONTENT_TYPE, "application/json"),
            ("correlation-id", e.headers().get("correlation-id").unwrap_or_default()),
        ] {
            if m.header(name) != Some(want) {
                return Err(format!("event {id}: header {name} is {:?}, expected {want:?}", m.header(name)).into());
            }
        }
        let (partition, events) = per_subscription.entry(e.aggregate_id()).or_insert((m.partition, Vec::new()));
        if *partition != m.partition {
            return Err(
                format!("subscription {} spans partitions {partition} and {}", e.aggregate_id(), m.partition).into()
            );
        }
        events.push(e.event_type());
    }
    if seen.len() != expected.len() {
        let missing: Vec<_> = by_id.keys().filter(|id| !seen.contains(*id)).collect();
        return Err(format!("{} committed events never arrived: {missing:?}", missing.len()).into());
    }
    for e in expected {
        let events = &per_subscription[e.aggregate_id()].1;
        let want: Vec<&str> =
            expected.iter().filter(|x| x.aggregate_id() == e.aggregate_id()).map(NewEntry::event_type).collect();
        if *events != want {
            return Err(format!(
                "subscription {} events arrived as {events:?}, committed as {want:?}",
                e.aggregate_id()
            )
            .into());
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
