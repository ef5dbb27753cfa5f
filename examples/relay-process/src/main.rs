//! # The relay as its own process
//!
//! The deployment most teams use: the application only writes (business rows and outbox
//! entries, in one transaction); one or more relay processes (`src/bin/relay.rs`, configured
//! from environment variables) publish what was committed. This binary is the application, and
//! it proves the set-up: it starts THREE relay processes on one database and checks that every
//! entry reached RabbitMQ exactly once, in order per aggregate.
//!
//! Run it from the workspace root against the local services:
//!
//! ```text
//! cargo xtask services up                  # PostgreSQL on 127.0.0.1:5432, RabbitMQ on 127.0.0.1:5672
//! cargo run -p example-relay-process       # builds and starts the relays itself
//! ```
//!
//! It needs PostgreSQL and RabbitMQ. Settings (with their local defaults): `DATABASE_URL`
//! (`postgres://postgres@127.0.0.1:5432/test`), `AMQP_URL`
//! (`amqp://guest:guest@127.0.0.1:5672/%2f`), `RELAYS` (3). The relay binary is found next to
//! this one (and built first with `cargo build --bin relay` when run under cargo).
//!
//! What it does:
//! 1. creates its schema (an `orders_<run>` table, the outbox `outbox_<run>`), a topic exchange
//!    `orders-<run>` and a queue bound to it to read the events back (unique names per run);
//! 2. starts the relay processes with `DATABASE_URL`, `OUTBOX_TABLE`, `AMQP_URL`,
//!    `AMQP_EXCHANGE`, `RELAY_ID`, `RELAY_BATCH_SIZE`... in their environment;
//! 3. takes 200 orders through their life (placed → paid → packed → shipped → delivered), each
//!    step an update of the order row and its event in one transaction: 1,000 entries, written
//!    while the relays run; one refund of an undelivered order rolls back, with its event;
//! 4. waits until the outbox is drained, then stops the relays (closing their standard input;
//!    in production: SIGTERM) and checks each exited cleanly;
//! 5. reads the queue and checks every committed event arrived exactly once, in order per
//!    order, with its headers, and the rolled-back one never; prints a summary and exits
//!    non-zero otherwise;
//! 6. drops its tables, queue and exchange.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use outbox_core::{EntryId, Maintenance, NewEntry, Timestamp};
use outbox_rabbitmq::lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use outbox_rabbitmq::lapin::types::{AMQPValue, FieldTable};
use outbox_rabbitmq::lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use outbox_sqlx::{PgOutbox, Tables};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const ORDERS: usize = 200;
const STEPS: [&str; 5] = ["order.placed", "order.paid", "order.packed", "order.shipped", "order.delivered"];
const WAIT: Duration = Duration::from_secs(120);

fn setting(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("example-relay-process FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), BoxError> {
    let database_url = setting("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test");
    let amqp_url = setting("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
    let relays: usize = setting("RELAYS", "3").parse().map_err(|_| "RELAYS must be a number")?;
    let relay_binary = relay_binary()?;
    let run = format!("{:08x}", EntryId::generate().as_u128() as u32);

    // 1. Schema and broker topology.
    let pool = PgPoolOptions::new()
        .max_connections(5)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&database_url)
        .await
        .map_err(|e| {
            format!("cannot reach PostgreSQL ({e}); start it with `cargo xtask services up` or set DATABASE_URL")
        })?;
    let table = format!("orders_{run}");
    sqlx::query(&format!(r#"CREATE TABLE "{table}" (id TEXT PRIMARY KEY, status TEXT NOT NULL)"#))
        .execute(&pool)
        .await?;
    let outbox = PgOutbox::new(Tables::new(format!("outbox_{run}"))?);
    outbox.migrate(&pool).await?;
    let connection = Connection::connect(&amqp_url, ConnectionProperties::default())
        .await
        .map_err(|e| format!("cannot reach RabbitMQ ({e}); start it with `cargo xtask services up` or set AMQP_URL"))?;
    let channel = connection.create_channel().await?;
    let exchange = format!("orders-{run}");
    let queue = format!("orders-{run}-audit");
    channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel.queue_declare(queue.as_str().into(), QueueDeclareOptions::default(), FieldTable::default()).await?;
    channel
        .queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "order.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    println!("schema: table {table}, outbox {}, exchange {exchange}, queue {queue}", outbox.tables().name());

    let result =
        exercise(&pool, &outbox, &table, &relay_binary, relays, &database_url, &amqp_url, &exchange, &channel, &queue)
            .await;

    let _ = channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
    let _ = channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await;
    let _ = connection.close(0, "done".into()).await;
    for t in [table.clone(), outbox.tables().name().to_string(), outbox.tables().aggregates_name()] {
        let _ = sqlx::query(&format!(r#"DROP TABLE IF EXISTS "{t}" CASCADE"#)).execute(&pool).await;
    }
    // The migration's NOTIFY trigger function.
    let _ =
        sqlx::query(&format!(r#"DROP FUNCTION IF EXISTS "{}_notify"()"#, outbox.tables().name())).execute(&pool).await;
    pool.close().await;
    result
}

#[allow(clippy::too_many_arguments)]
async fn exercise(
    pool: &PgPool,
    outbox: &PgOutbox,
    table: &str,
    relay_binary: &PathBuf,
    relays: usize,
    database_url: &str,
    amqp_url: &str,
    exchange: &str,
    channel: &Channel,
    queue: &str,
) -> Result<(), BoxError> {
    // 2. The relay processes: configuration through the environment, as in a deployment.
    let mut children: Vec<(String, Child)> = Vec::new();
    for n in 1..=relays {
        let id = format!("relay-{n}");
        let child = Command::new(relay_binary)
            .env("DATABASE_URL", database_url)
            .env("OUTBOX_TABLE", outbox.tables().name())
            .env("AMQP_URL", amqp_url)
            .env("AMQP_EXCHANGE", exchange)
            .env("RELAY_ID", &id)
            .env("RELAY_BATCH_SIZE", "50")
            .env("RELAY_MAX_PER_AGGREGATE", "5")
            .env("RELAY_POLL_MS", "50")
            .env("RELAY_STOP_ON_STDIN_EOF", "1")
            .stdin(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {} ({e})", relay_binary.display()))?;
        children.push((id, child));
    }
    let result = write_and_check(pool, outbox, table, &mut children, channel, queue).await;
    // Whatever happened, stop the relays: closing stdin asks them to finish and exit.
    for (_, child) in &mut children {
        drop(child.stdin.take());
    }
    for (id, child) in &mut children {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match child.try_wait()? {
                Some(_) => break,
                None if Instant::now() > deadline => {
                    eprintln!("{id} did not stop in 30 s; killing it");
                    let _ = child.kill();
                    break;
                }
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
    result
}

async fn write_and_check(
    pool: &PgPool,
    outbox: &PgOutbox,
    table: &str,
    children: &mut [(String, Child)],
    channel: &Channel,
    queue: &str,
) -> Result<(), BoxError> {
    // 3. The application: each step of each order is its own transaction.
    let orders: Vec<String> = (1..=ORDERS).map(|n| format!("ord-{n:04}")).collect();
    let mut expected: Vec<NewEntry> = Vec::with_capacity(ORDERS * STEPS.len());
    for (step, event_type) in STEPS.iter().enumerate() {
        for order in &orders {
            let mut tx = pool.begin().await?;
            if step == 0 {
                sqlx::query(&format!(r#"INSERT INTO "{table}" (id, status) VALUES ($1, $2)"#))
                    .bind(order)
                    .bind(event_type)
                    .execute(&mut *tx)
                    .await?;
            } else {
                sqlx::query(&format!(r#"UPDATE "{table}" SET status = $2 WHERE id = $1"#))
                    .bind(order)
                    .bind(event_type)
                    .execute(&mut *tx)
                    .await?;
            }
            let event = NewEntry::builder("order", order, *event_type)
                .json(format!(r#"{{"order_id":"{order}","step":{step}}}"#))
                .correlation_id(format!("flow-{order}"))
                .build()?;
            outbox.enqueue(&mut tx, &event).await?;
            tx.commit().await?;
            expected.push(event);
        }
        if step == 1 {
            // A refund of an order that is only paid: the rule check fails after the event was
            // written; the transaction rolls back, the event with it.
            let mut tx = pool.begin().await?;
            let refund = NewEntry::builder("order", &orders[0], "order.refunded").json("{}").build()?;
            outbox.enqueue(&mut tx, &refund).await?;
            tx.rollback().await?;
            println!("rolled back order.refunded of {} ({})", orders[0], refund.id());
        }
    }
    println!("committed {} events for {ORDERS} orders while {} relays ran", expected.len(), children.len());

    // 4. Wait until the relays drained the outbox.
    let store = outbox.store(pool.clone());
    let deadline = Instant::now() + WAIT;
    loop {
        let stats = store.stats(Timestamp::now()).await?;
        if stats.pending + stats.processing + stats.failed == 0 {
            println!("outbox drained: {stats:?}");
            break;
        }
        for (id, child) in children.iter_mut() {
            if let Some(status) = child.try_wait()? {
                return Err(format!("{id} exited early with {status}").into());
            }
        }
        if Instant::now() > deadline {
            return Err(format!("the relays did not drain the outbox in {WAIT:?}: {stats:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (_, child) in children.iter_mut() {
        drop(child.stdin.take());
    }
    for (id, child) in children.iter_mut() {
        let status = tokio::task::block_in_place(|| child.wait())?;
        if !status.success() {
            return Err(format!("{id} exited with {status}").into());
        }
    }

    // 5. Read the queue back.
    let mut received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match channel.basic_get(queue.into(), BasicGetOptions { no_ack: true }).await? {
            Some(message) => received.push(message.delivery),
            None if received.len() >= expected.len() => break,
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    println!("read back {} messages from queue {queue}", received.len());

    let by_id: HashMap<String, &NewEntry> = expected.iter().map(|e| (e.id().to_string(), e)).collect();
    let mut seen = HashSet::new();
    let mut last_step: HashMap<String, (usize, i64)> = HashMap::new();
    for d in &received {
        let id = d.properties.message_id().as_ref().map(|s| s.to_string()).ok_or("a message without message_id")?;
        let e = by_id.get(&id).ok_or_else(|| format!("message {id} matches no committed event"))?;
        if !seen.insert(id.clone()) {
            return Err(format!("event {id} arrived twice").into());
        }
        let headers: HashMap<String, String> = d
            .properties
            .headers()
            .as_ref()
            .map(|t| t.inner().iter().map(|(k, v)| (k.to_string(), text(v))).collect())
            .unwrap_or_default();
        let kind = d.properties.kind().as_ref().map(|s| s.to_string());
        if d.data != e.payload().as_bytes()
            || kind.as_deref() != Some(e.event_type())
            || d.routing_key.as_str() != e.event_type()
            || headers.get("outbox-aggregate-id").map(String::as_str) != Some(e.aggregate_id())
            || headers.get("correlation-id").map(String::as_str) != e.headers().get("correlation-id")
        {
            return Err(format!("event {id} arrived changed: type {kind:?}, headers {headers:?}").into());
        }
        let step = STEPS.iter().position(|s| *s == e.event_type()).unwrap_or(usize::MAX);
        let sequence: i64 = headers.get("outbox-sequence").and_then(|s| s.parse().ok()).unwrap_or(-1);
        if let Some((prev_step, prev_seq)) = last_step.insert(e.aggregate_id().to_string(), (step, sequence))
            && (prev_step >= step || prev_seq >= sequence)
        {
            return Err(format!("{}: {} arrived after step {prev_step}", e.aggregate_id(), e.event_type()).into());
        }
    }
    if seen.len() != expected.len() {
        return Err(format!("{} of {} committed events arrived", seen.len(), expected.len()).into());
    }
    let mut sample: Vec<_> = received.iter().filter(|d| d.data.starts_with(b"{\"order_id\":\"ord-0001\"")).collect();
    sample.truncate(STEPS.len());
    for d in sample {
        println!("  ord-0001: {} {}", d.routing_key, String::from_utf8_lossy(&d.data));
    }
    println!(
        "\nok: {} events from {} relay processes arrived exactly once, in order for each of the {ORDERS} orders; the rolled-back refund never",
        expected.len(),
        children.len()
    );
    Ok(())
}

fn text(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        other => format!("{other:?}"),
    }
}

/// The relay binary next to this one. Under `cargo run`, build it first (a no-op when it is
/// fresh): `cargo run` builds only the binary it runs.
fn relay_binary() -> Result<PathBuf, BoxError> {
    let me = std::env::current_exe()?;
    let dir = me.parent().ok_or("the executable has no folder")?;
    let path = dir.join(format!("relay{}", std::env::consts::EXE_SUFFIX));
    if let Ok(cargo) = std::env::var("CARGO") {
        let target_dir = dir.parent().ok_or("the executable is not in a target folder")?;
        let mut build = Command::new(cargo);
        build
            .args(["build", "--quiet", "--bin", "relay", "--manifest-path"])
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
            .arg("--target-dir")
            .arg(target_dir);
        match dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => {}
            Some(profile) => {
                build.args(["--profile", profile]);
            }
        }
        let status = build.status()?;
        if !status.success() {
            return Err(format!("building the relay binary failed ({status})").into());
        }
    }
    if !path.exists() {
        return Err(format!(
            "no relay binary at {}; build it with `cargo build -p example-relay-process --bin relay`",
            path.display()
        )
        .into());
    }
    Ok(path)
}
