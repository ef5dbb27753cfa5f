//! # A custom Publisher: signed HTTP webhooks
//!
//! How to write your own broker adapter against `outbox-core`'s ports, prove it with the
//! conformance testkit, and use it. The adapter ([`webhook::WebhookPublisher`]) POSTs each
//! entry to a partner's webhook with an HMAC-SHA256 signature header; a small receiver
//! ([`receiver::Receiver`], on 127.0.0.1) checks the signatures, as the partner would.
//!
//! Run it from the workspace root; nothing to start (SQLite is bundled, the receiver runs in
//! the process):
//!
//! ```text
//! cargo run -p example-custom-publisher
//! ```
//!
//! What it does:
//! 1. proves the publisher with `outbox_core::testkit::publisher_suite` against the receiver
//!    (every entry arrives once, whole, with its headers, in order per aggregate, also in a
//!    batch of 2,000);
//! 2. shows a publisher with the wrong secret gets a permanent rejection (401), and nothing is
//!    accepted;
//! 3. runs a small payments service on a fresh SQLite file: creates its schema, captures and
//!    refunds payments, each change and its event in one transaction; a declined capture rolls
//!    back and its event with it;
//! 4. runs the relay with the webhook publisher until the outbox is drained;
//! 5. checks what the receiver accepted: every committed event once, signed, with its headers,
//!    in order per payment; prints it and exits non-zero otherwise.

mod receiver;
mod webhook;

use std::collections::{HashMap, HashSet};
use std::process::ExitCode;
use std::str::FromStr;
use std::time::{Duration, Instant};

use outbox_core::testkit::{PublisherOptions, publisher_suite};
use outbox_core::{Entry, EntryId, Maintenance, NewEntry, Publisher, Relay, RelayConfig, Timestamp};
use outbox_sqlx::{SqliteOutbox, Tables};
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

use crate::receiver::{Delivery, Receiver};
use crate::webhook::WebhookPublisher;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const SECRET: &[u8] = b"whsec-example-0123456789abcdef";
const WAIT: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> ExitCode {
    let run = format!("{:08x}", EntryId::generate().as_u128() as u32);
    let path = std::env::temp_dir().join(format!("outbox-example-webhook-{run}.db"));
    let result = run_example(&path).await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("example-custom-publisher FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run_example(path: &std::path::Path) -> Result<(), BoxError> {
    let receiver = Receiver::start(SECRET).await?;
    let publisher = WebhookPublisher::new(&receiver.url(), SECRET, Duration::from_secs(5))?;
    println!("webhook receiver at {}; publisher {publisher:?}", receiver.url());

    // 1. The conformance suite (it panics, listing every failed check, if one fails).
    publisher_suite(&publisher, &receiver, PublisherOptions { timeout: WAIT, ..PublisherOptions::default() }).await;
    println!("publisher_suite: passed");

    // 2. A wrong secret: the receiver answers 401, a permanent failure for that entry alone.
    let impostor = WebhookPublisher::new(&receiver.url(), b"not-the-shared-secret".to_vec(), Duration::from_secs(5))?;
    let entry = Entry::from_new(
        NewEntry::builder("payment", "pay-x", "payment.captured").json("{}").build()?,
        1,
        Timestamp::now(),
    );
    let outcomes = impostor.publish(std::slice::from_ref(&entry)).await?;
    match outcomes.as_slice() {
        [outbox_core::Outcome::Failed(e)] if !e.is_retryable() => println!("wrong secret: rejected for good ({e})"),
        other => return Err(format!("a wrongly signed call should fail permanently, got {other:?}").into()),
    }
    if !receiver.accepted(1, Duration::from_millis(200)).await.is_empty() {
        return Err("the receiver accepted a wrongly signed call".into());
    }

    // 3. The payments service on SQLite.
    let options = SqliteConnectOptions::from_str("sqlite:")?
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal);
    let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS payments (id TEXT PRIMARY KEY, captured_cents INTEGER NOT NULL, refunded_cents INTEGER NOT NULL DEFAULT 0)",
    )
    .execute(&pool)
    .await?;
    let outbox = SqliteOutbox::new(Tables::new("outbox")?);
    outbox.migrate(&pool).await?;
    let payments = Payments { pool: pool.clone(), outbox: outbox.clone() };

    let expected = vec![
        payments.capture("pay-1", 5000, true).await?,
        payments.capture("pay-2", 1250, true).await?,
        payments.refund("pay-1", 2000).await?,
        payments.refund("pay-1", 3000).await?,
    ];
    for e in &expected {
        println!("committed {} {}", e.aggregate_id(), e.event_type());
    }
    let declined = payments.capture("pay-3", 990_000, false).await?;
    println!("rolled back {} {} (card declined)", declined.aggregate_id(), declined.event_type());

    // 4. The relay, publishing with the custom adapter.
    let store = outbox.store(pool.clone());
    let config = RelayConfig { poll_interval: Duration::from_millis(20), ..RelayConfig::default() };
    let relay = Relay::new(store.clone(), publisher, config)?;
    let watcher = store.clone();
    let deadline = Instant::now() + WAIT;
    relay
        .run(async move {
            while Instant::now() < deadline {
                match watcher.stats(Timestamp::now()).await {
                    Ok(s) if s.pending + s.processing + s.failed == 0 => return,
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        })
        .await?;
    let stats = store.stats(Timestamp::now()).await?;
    println!("relay done: {stats:?}");

    // 5. What the partner received.
    let mut accepted = receiver.accepted(expected.len(), WAIT).await;
    accepted.extend(receiver.accepted(1, Duration::from_millis(500)).await);
    println!("\nthe receiver accepted {} signed calls:", accepted.len());
    for d in &accepted {
        println!(
            "  {} seq {} {} id {} signature {}… {}",
            d.header("outbox-aggregate-id").unwrap_or("?"),
            d.header("outbox-sequence").unwrap_or("?"),
            d.header("outbox-event-type").unwrap_or("?"),
            d.header("outbox-id").unwrap_or("?"),
            d.header(webhook::SIGNATURE).unwrap_or("?").chars().take(18).collect::<String>(),
            String::from_utf8_lossy(&d.body)
        );
    }
    check(&expected, &accepted)?;
    pool.close().await;
    println!(
        "\nok: {} events delivered once each, signed, in order per payment; the declined capture sent nothing",
        expected.len()
    );
    Ok(())
}

fn check(expected: &[NewEntry], accepted: &[Delivery]) -> Result<(), BoxError> {
    if accepted.len() != expected.len() {
        return Err(format!("expected {} calls, the receiver accepted {}", expected.len(), accepted.len()).into());
    }
    let by_id: HashMap<String, &NewEntry> = expected.iter().map(|e| (e.id().to_string(), e)).collect();
    let mut seen = HashSet::new();
    let mut per_payment: HashMap<&str, Vec<&str>> = HashMap::new();
    for d in accepted {
        let id = d.header("outbox-id").ok_or("a call without outbox-id")?;
        let e = by_id.get(id).ok_or_else(|| format!("call {id} matches no committed event"))?;
        if !seen.insert(id) {
            return Err(format!("event {id} was delivered twice").into());
        }
        if d.body != e.payload().as_bytes()
            || d.header("outbox-event-type") != Some(e.event_type())
            || d.header("correlation-id") != e.headers().get("correlation-id")
            || d.header("content-type") != Some("application/json")
        {
            return Err(format!("event {id} arrived changed: {d:?}").into());
        }
        per_payment.entry(e.aggregate_id()).or_default().push(id);
    }
    for (payment, ids) in per_payment {
        let committed: Vec<String> =
            expected.iter().filter(|e| e.aggregate_id() == payment).map(|e| e.id().to_string()).collect();
        if ids != committed {
            return Err(format!("{payment}: delivered {ids:?}, committed {committed:?}").into());
        }
    }
    Ok(())
}

/// The payments service.
struct Payments {
    pool: SqlitePool,
    outbox: SqliteOutbox,
}

impl Payments {
    /// Captures a payment and writes `payment.captured`; with `approved` false the card is
    /// declined after both were written, and the transaction rolls back.
    async fn capture(&self, id: &str, cents: i64, approved: bool) -> Result<NewEntry, BoxError> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query("INSERT INTO payments (id, captured_cents) VALUES (?, ?)")
            .bind(id)
            .bind(cents)
            .execute(&mut *tx)
            .await?;
        let event = NewEntry::builder("payment", id, "payment.captured")
            .json(serde_json::json!({ "payment_id": id, "amount_cents": cents }).to_string())
            .correlation_id(format!("checkout-{id}"))
            .build()?;
        self.outbox.enqueue(&mut tx, &event).await?;
        if approved {
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        Ok(event)
    }

    /// Refunds part of a captured payment and writes `payment.refunded`.
    async fn refund(&self, id: &str, cents: i64) -> Result<NewEntry, BoxError> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let updated = sqlx::query(
            "UPDATE payments SET refunded_cents = refunded_cents + ? WHERE id = ? AND refunded_cents + ? <= captured_cents",
        )
        .bind(cents)
        .bind(id)
        .bind(cents)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != 1 {
            return Err(format!("cannot refund {cents} cents of {id}").into());
        }
        let event = NewEntry::builder("payment", id, "payment.refunded")
            .json(serde_json::json!({ "payment_id": id, "amount_cents": cents }).to_string())
            .correlation_id(format!("support-{id}"))
            .build()?;
        self.outbox.enqueue(&mut tx, &event).await?;
        tx.commit().await?;
        Ok(event)
    }
}
