//! # Subscriptions: SeaORM + PostgreSQL → Amazon EventBridge
//!
//! A small subscriptions service on SeaORM: starting a subscription, changing its plan and
//! cancelling it change the `subscriptions` entity and write an event (`subscription.started`,
//! `subscription.plan_changed`, `subscription.cancelled`) in the SAME `DatabaseTransaction`
//! through [`Outbox::enqueue`]. A relay on [`SeaStore`] publishes the committed events to an
//! EventBridge bus in the envelope format (`detail.metadata` carries the entry id, aggregate,
//! sequence and headers; `detail.data` the payload).
//!
//! Run it from the workspace root against the local services:
//!
//! ```text
//! cargo xtask services up        # PostgreSQL on 127.0.0.1:5432, EventBridge + SQS (moto) on 127.0.0.1:4566
//! cargo run -p example-seaorm-postgres-eventbridge
//! ```
//!
//! It needs PostgreSQL and an EventBridge-compatible endpoint with SQS. Settings (with their
//! local defaults):
//! - `DATABASE_URL` = `postgres://postgres@127.0.0.1:5432/test`
//! - `EVENTBRIDGE_ENDPOINT` = `http://127.0.0.1:4566` (the local emulator, with static
//!   credentials `test`/`test`; against real AWS, load the standard credential chain instead)
//! - `AWS_REGION` = `us-east-1`
//!
//! What it does:
//! 1. creates its schema: the `seaorm_example_subscriptions` table (ids unique per run) and the
//!    outbox tables `outbox_<run>` with outbox-seaorm's [`Migration`]; on the endpoint, a bus
//!    `billing-<run>` with a rule sending this run's events to an SQS queue;
//! 2. starts, changes and cancels subscriptions, each change and its event in one transaction;
//! 3. changes the plan of a cancelled subscription: the event was written, the state check
//!    fails, the transaction rolls back, and the event with it;
//! 4. runs the relay until the outbox is drained;
//! 5. reads the events back from the queue and checks every committed event arrived exactly
//!    once with its metadata and headers, and that each subscription's sequences follow commit
//!    order (EventBridge does not keep order: consumers order by `metadata.sequence`); prints
//!    what it saw and exits non-zero otherwise;
//! 6. reverts the outbox migration and deletes the bus, rule and queue.

use std::collections::{HashMap, HashSet};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, QueueAttributeName};
use outbox_core::{EntryId, Maintenance, NewEntry, Relay, RelayConfig, Timestamp};
use outbox_eventbridge::aws_config::{self, BehaviorVersion, SdkConfig};
use outbox_eventbridge::aws_sdk_eventbridge::config::{Credentials, Region};
use outbox_eventbridge::aws_sdk_eventbridge::{self as eb};
use outbox_eventbridge::{DetailFormat, EventBridgeConfig, EventBridgePublisher};
use outbox_seaorm::{Migration, Outbox, SeaStore, Tables};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, Database, DatabaseConnection, EntityTrait, QueryFilter, Set,
    TransactionTrait,
};
use serde_json::Value;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const WAIT: Duration = Duration::from_secs(30);

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
            eprintln!("example-seaorm-postgres-eventbridge FAILED: {e}");
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
    let database_url = setting("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test");
    let endpoint = setting("EVENTBRIDGE_ENDPOINT", "http://127.0.0.1:4566");
    let region = setting("AWS_REGION", "us-east-1");
    let run = format!("{:08x}", EntryId::generate().as_u128() as u32);

    // 1. Schema.
    let db = Database::connect(&database_url).await.map_err(|e| {
        format!("cannot reach PostgreSQL ({e}); start it with `cargo xtask services up` or set DATABASE_URL")
    })?;
    db.execute_unprepared(
        "CREATE TABLE IF NOT EXISTS seaorm_example_subscriptions (id TEXT PRIMARY KEY, plan TEXT NOT NULL, status TEXT NOT NULL)",
    )
    .await?;
    let tables = Tables::new(format!("outbox_{run}"))?;
    let migration = Migration::new(tables.clone());
    migration.apply(&db).await?;

    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region))
        .credentials_provider(Credentials::new("test", "test", None, None, "example"))
        .endpoint_url(&endpoint)
        .load()
        .await;
    let bus = Bus::create(&sdk, &run, &endpoint).await;
    let result = match bus {
        Ok(bus) => {
            println!(
                "schema: outbox {}; bus {} (source {}), queue {}",
                tables.name(),
                bus.name,
                bus.source,
                bus.queue_url
            );
            let result = exercise(&db, &tables, &sdk, &bus, &run).await;
            bus.delete().await;
            result
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
    sdk: &SdkConfig,
    bus: &Bus,
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
    let config = EventBridgeConfig::builder(&bus.source)
        .event_bus_name(&bus.name)
        .endpoint_url(&bus.endpoint)
        .detail_format(DetailFormat::Envelope)
        .build()?;
    let publisher = EventBridgePublisher::from_sdk_config(sdk, config);
    let store = SeaStore::new(db.clone(), tables.clone());
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

    // 5. Read back.
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
        "\nok: {} events arrived once each with their metadata and headers, sequences in commit order per subscription; the rolled-back change never",
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
    let mut per_aggregate: HashMap<String, Vec<(i64, String)>> = HashMap::new();
    for event in received {
        let m = &event.detail["metadata"];
        let id = m["id"].as_str().ok_or("an event arrived without detail.metadata.id")?;
        let e = by_id.get(id).ok_or_else(|| format!("event {id} matches no committed event (a rolled-back one?)"))?;
        if !seen.insert(id.to_string()) {
            return Err(format!("event {id} arrived twice").into());
        }
        let data: Value = serde_json::from_slice(e.payload().as_bytes())?;
        let ok = event.source == source
            && event.detail_type == e.event_type()
            && m["aggregate_id"] == e.aggregate_id()
            && m["headers"]["correlation-id"].as_str() == e.headers().get("correlation-id")
            && event.detail["data"] == data;
        if !ok {
            return Err(format!("event {id} does not match what was committed: {:?}", event.detail).into());
        }
        let sequence = m["sequence"].as_i64().ok_or_else(|| format!("event {id} has no metadata.sequence"))?;
        per_aggregate.entry(e.aggregate_id().to_string()).or_default().push((sequence, id.to_string()));
    }
    for (aggregate, mut arrived) in per_aggregate {
        arrived.sort();
        let by_sequence: Vec<&str> = arrived.iter().map(|(_, id)| id.as_str()).collect();
        let committed: Vec<String> =
            expected.iter().filter(|e| e.aggregate_id() == aggregate).map(|e| e.id().to_string()).collect();
        if by_sequence != committed {
            return Err(format!("{aggregate}: events by sequence {by_sequence:?}, committed {committed:?}").into());
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
        let name = format!("billing-{run}");
        let source = format!("com.example.billing.{run}");
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
