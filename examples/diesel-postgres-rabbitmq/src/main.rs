//! # Shipments: sync diesel + PostgreSQL in the request path → RabbitMQ, async relay
//!
//! A small shipments service written with plain (blocking) diesel, as most diesel applications
//! are: creating, dispatching and delivering a shipment change the `shipments` table with
//! diesel's query builder and write an event (`shipment.created`, `shipment.dispatched`,
//! `shipment.delivered`) in the SAME `conn.transaction(..)` through
//! [`PgOutbox::enqueue`](outbox_diesel::postgres::PgOutbox::enqueue). The relay runs on tokio
//! with outbox-diesel's diesel-async store and publishes to a RabbitMQ topic exchange.
//!
//! Run it from the workspace root against the local services:
//!
//! ```text
//! cargo xtask services up                  # PostgreSQL on 127.0.0.1:5432, RabbitMQ on 127.0.0.1:5672
//! cargo run -p example-diesel-postgres-rabbitmq
//! ```
//!
//! It needs PostgreSQL (and libpq to link diesel's `PgConnection`; `cargo xtask services up`
//! installs `libpq-dev`) and RabbitMQ. Settings (with their local defaults):
//! - `DATABASE_URL` = `postgres://postgres@127.0.0.1:5432/test`
//! - `AMQP_URL` = `amqp://guest:guest@127.0.0.1:5672/%2f`
//!
//! What it does:
//! 1. creates its schema: the `diesel_example_shipments` table (shipment ids are unique per
//!    run) and the outbox tables `outbox_<run>` ([`PgOutbox::migrate`](outbox_diesel::postgres::PgOutbox::migrate));
//!    a topic exchange `shipping-<run>` and a queue bound to `shipment.#` to read back;
//! 2. in blocking request handlers (on tokio's blocking pool), creates, dispatches and delivers
//!    shipments, each change and its event in one diesel transaction;
//! 3. delivers a shipment that was never dispatched: the event was written, the state check
//!    fails, the closure returns an error, diesel rolls back, the event with it;
//! 4. runs the async relay until the outbox is drained;
//! 5. reads the queue back and checks every committed event arrived exactly once, in order per
//!    shipment, with its type and headers; prints what it saw and exits non-zero otherwise;
//! 6. drops the outbox tables, the queue and the exchange.

use std::collections::{HashMap, HashSet};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use diesel::Connection as _;
use diesel::prelude::*;
use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::deadpool::Pool;
use outbox_core::{EntryId, Maintenance, NewEntry, Relay, RelayConfig, Timestamp};
use outbox_diesel::Tables;
use outbox_diesel::postgres::PgOutbox;
use outbox_rabbitmq::lapin::message::Delivery;
use outbox_rabbitmq::lapin::options::{
    BasicGetOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use outbox_rabbitmq::lapin::types::{AMQPValue, FieldTable};
use outbox_rabbitmq::lapin::{Channel, Connection, ConnectionProperties};
use outbox_rabbitmq::{ExchangeType, RabbitMqConfig, RabbitMqPublisher};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const WAIT: Duration = Duration::from_secs(30);

/// The business table, as diesel sees it.
#[allow(missing_docs)] // `table!` generates items for every column
mod schema {
    diesel::table! {
        diesel_example_shipments (id) {
            id -> Text,
            destination -> Text,
            status -> Text,
        }
    }
}

use schema::diesel_example_shipments as shipments;

fn setting(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("example-diesel-postgres-rabbitmq FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---- The request path: plain, blocking diesel ----

fn event(id: &str, event_type: &str, json: String) -> Result<NewEntry, BoxError> {
    Ok(NewEntry::builder("shipment", id, event_type).json(json).correlation_id(format!("parcel-{id}")).build()?)
}

/// Creates a shipment and writes `shipment.created`, in one transaction.
fn create(conn: &mut PgConnection, outbox: &PgOutbox, id: &str, destination: &str) -> Result<NewEntry, BoxError> {
    conn.transaction(|conn| {
        diesel::insert_into(shipments::table)
            .values((shipments::id.eq(id), shipments::destination.eq(destination), shipments::status.eq("created")))
            .execute(conn)?;
        let event = event(id, "shipment.created", format!(r#"{{"shipment":"{id}","destination":"{destination}"}}"#))?;
        outbox.enqueue(conn, &event)?;
        Ok(event)
    })
}

/// Moves a shipment from `from` to `to` and writes `shipment.<to>`; the closure's error rolls
/// the transaction back (the event included) when the shipment is not in state `from`.
fn advance(conn: &mut PgConnection, outbox: &PgOutbox, id: &str, from: &str, to: &str) -> Result<NewEntry, BoxError> {
    conn.transaction(|conn| {
        let event = event(id, &format!("shipment.{to}"), format!(r#"{{"shipment":"{id}","status":"{to}"}}"#))?;
        outbox.enqueue(conn, &event)?;
        let updated = diesel::update(shipments::table.filter(shipments::id.eq(id)).filter(shipments::status.eq(from)))
            .set(shipments::status.eq(to))
            .execute(conn)?;
        if updated != 1 {
            return Err(format!("shipment {id} is not {from}; cannot mark it {to}").into());
        }
        Ok(event)
    })
}

/// The application's work, as blocking handlers would do it. Returns the committed events.
fn handle_requests(database_url: &str, outbox: &PgOutbox, run: &str) -> Result<Vec<NewEntry>, BoxError> {
    let mut conn = PgConnection::establish(database_url).map_err(|e| {
        format!("cannot reach PostgreSQL ({e}); start it with `cargo xtask services up` or set DATABASE_URL")
    })?;
    let (a, b) = (format!("shp-{run}-a"), format!("shp-{run}-b"));
    let expected = vec![
        create(&mut conn, outbox, &a, "Lisbon")?,
        create(&mut conn, outbox, &b, "Oslo")?,
        advance(&mut conn, outbox, &a, "created", "dispatched")?,
        advance(&mut conn, outbox, &a, "dispatched", "delivered")?,
    ];
    for e in &expected {
        println!("committed {} {}", e.aggregate_id(), e.event_type());
    }
    match advance(&mut conn, outbox, &b, "dispatched", "delivered") {
        Err(e) => println!("rolled back: {e}"),
        Ok(_) => return Err("delivering an undispatched shipment succeeded; it must not".into()),
    }
    let status: String = shipments::table.find(&b).select(shipments::status).first(&mut conn)?;
    if status != "created" {
        return Err(format!("the rolled-back delivery changed {b} to {status}").into());
    }
    Ok(expected)
}

// ---- The relay and the check: async ----

async fn run() -> Result<(), BoxError> {
    let database_url = setting("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test");
    let amqp_url = setting("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
    let run = format!("{:08x}", EntryId::generate().as_u128() as u32);
    let outbox = PgOutbox::new(Tables::new(format!("outbox_{run}"))?);

    // 1. Schema (blocking diesel, off the async threads).
    let (url, o) = (database_url.clone(), outbox.clone());
    tokio::task::spawn_blocking(move || -> Result<(), BoxError> {
        let mut conn = PgConnection::establish(&url).map_err(|e| {
            format!("cannot reach PostgreSQL ({e}); start it with `cargo xtask services up` or set DATABASE_URL")
        })?;
        diesel::sql_query(
            "CREATE TABLE IF NOT EXISTS diesel_example_shipments (id TEXT PRIMARY KEY, destination TEXT NOT NULL, status TEXT NOT NULL)",
        )
        .execute(&mut conn)?;
        o.migrate(&mut conn)?;
        Ok(())
    })
    .await??;

    let exchange = format!("shipping-{run}");
    let queue = format!("shipping-{run}-audit");
    let connection = Connection::connect(&amqp_url, ConnectionProperties::default())
        .await
        .map_err(|e| format!("cannot reach RabbitMQ ({e}); start it with `cargo xtask services up` or set AMQP_URL"))?;
    let channel = connection.create_channel().await?;
    // The publisher declares the exchange; bind a queue to it to read back.
    let publisher = RabbitMqPublisher::new(
        RabbitMqConfig::builder(&amqp_url, &exchange)
            .declare_exchange(ExchangeType::Topic)
            .connection_name("shipping-relay")
            .build()?,
    );
    publisher.connect().await?;
    channel.queue_declare(queue.as_str().into(), QueueDeclareOptions::default(), FieldTable::default()).await?;
    channel
        .queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "shipment.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    println!(
        "schema: table diesel_example_shipments, outbox {}, exchange {exchange}, queue {queue}",
        outbox.tables().name()
    );

    let result = exercise(&database_url, &outbox, &run, publisher, &channel, &queue).await;

    let _ = channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
    let _ = channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await;
    let _ = connection.close(0, "done".into()).await;
    let (url, name) = (database_url.clone(), outbox.tables().name().to_string());
    let _ = tokio::task::spawn_blocking(move || -> Result<(), BoxError> {
        let mut conn = PgConnection::establish(&url)?;
        diesel::sql_query(format!(r#"DROP TABLE IF EXISTS "{name}", "{name}_aggregates" CASCADE"#))
            .execute(&mut conn)?;
        diesel::sql_query(format!(r#"DROP FUNCTION IF EXISTS "{name}_notify"()"#)).execute(&mut conn)?;
        Ok(())
    })
    .await;
    result
}

async fn exercise(
    database_url: &str,
    outbox: &PgOutbox,
    run: &str,
    publisher: RabbitMqPublisher,
    channel: &Channel,
    queue: &str,
) -> Result<(), BoxError> {
    // 2./3. The request path.
    let (url, o, r) = (database_url.to_string(), outbox.clone(), run.to_string());
    let expected = tokio::task::spawn_blocking(move || handle_requests(&url, &o, &r)).await??;

    // 4. The relay: diesel-async store over a deadpool.
    let pool =
        Pool::builder(AsyncDieselConnectionManager::<AsyncPgConnection>::new(database_url)).max_size(4).build()?;
    let store = outbox.store(pool);
    let config = RelayConfig { poll_interval: Duration::from_millis(50), ..RelayConfig::default() };
    let relay = Relay::new(store.clone(), publisher, config)?;
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
    println!("relay done: {:?}", store.stats(Timestamp::now()).await?);

    // 5. Read the queue back.
    let mut received: Vec<Delivery> = Vec::new();
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        match channel.basic_get(queue.into(), BasicGetOptions { no_ack: true }).await? {
            Some(message) => received.push(message.delivery),
            None if received.len() >= expected.len() => break,
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
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
        "\nok: {} events arrived once each, in order per shipment, with type and headers; the rolled-back delivery never",
        expected.len()
    );
    Ok(())
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
    let mut per_shipment: HashMap<String, Vec<String>> = HashMap::new();
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
            && h.get("outbox-aggregate-id").map(String::as_str) == Some(e.aggregate_id())
            && h.get("correlation-id").map(String::as_str) == e.headers().get("correlation-id");
        if !ok {
            return Err(format!("event {id} arrived changed: type {kind:?}, headers {h:?}").into());
        }
        per_shipment.entry(e.aggregate_id().to_string()).or_default().push(id);
    }
    for (shipment, ids) in per_shipment {
        let committed: Vec<String> =
            expected.iter().filter(|e| e.aggregate_id() == shipment).map(|e| e.id().to_string()).collect();
        if ids != committed {
            return Err(format!("{shipment}: arrived {ids:?}, committed {committed:?}").into());
        }
    }
    Ok(())
}
