//! # Quickstart: a transactional outbox on SQLite
//!
//! Run it from the workspace root; nothing to install (SQLite is bundled):
//!
//! ```text
//! cargo run -p example-quickstart
//! ```
//!
//! What it does:
//! 1. opens a SQLite database file in the system's temporary folder and creates an `orders`
//!    table and the outbox tables (`SqliteOutbox::migrate`);
//! 2. places a few orders, each in ONE transaction with its `order.placed` event, so the event
//!    exists exactly when the order does;
//! 3. places an order whose payment fails: the transaction rolls back, and its event with it;
//! 4. runs the relay until the outbox is drained, publishing to an in-process publisher
//!    (`CollectingPublisher`; swap in the Kafka, RabbitMQ or EventBridge publisher in a service);
//! 5. prints what was published, checks it is exactly the committed events in order, and exits
//!    0 (non-zero if anything is missing or extra).

use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use outbox_core::{CollectingPublisher, Maintenance, NewEntry, Relay, RelayConfig, Timestamp};
use outbox_sqlx::{SqliteOutbox, Tables};
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Order {
    id: &'static str,
    customer: &'static str,
    total_cents: i64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let path = std::env::temp_dir().join(format!("outbox-quickstart-{}.db", std::process::id()));
    let result = run(&path).await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quickstart FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Places `order`: the business row and its event in one transaction. With `pay` false the
/// payment "fails" after both were written and the transaction rolls back.
async fn place_order(pool: &SqlitePool, outbox: &SqliteOutbox, order: &Order, pay: bool) -> Result<NewEntry, BoxError> {
    let mut conn = pool.acquire().await?;
    // BEGIN IMMEDIATE: SQLite's write lock up front, so the transaction never has to upgrade.
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    sqlx::query("INSERT INTO orders (id, customer, total_cents) VALUES (?, ?, ?)")
        .bind(order.id)
        .bind(order.customer)
        .bind(order.total_cents)
        .execute(&mut *tx)
        .await?;
    let event = NewEntry::builder("order", order.id, "order.placed")
        .json(format!(
            r#"{{"order":"{}","customer":"{}","total_cents":{}}}"#,
            order.id, order.customer, order.total_cents
        ))
        .correlation_id(format!("checkout-{}", order.id))
        .build()?;
    outbox.enqueue(&mut tx, &event).await?;
    if pay {
        tx.commit().await?;
    } else {
        tx.rollback().await?; // the order row AND its event are gone
    }
    Ok(event)
}

async fn run(path: &std::path::Path) -> Result<(), BoxError> {
    println!("database: {}", path.display());
    let options = SqliteConnectOptions::from_str("sqlite:")?
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal);
    let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await?;

    sqlx::query(
        "CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, customer TEXT NOT NULL, total_cents INTEGER NOT NULL)",
    )
    .execute(&pool)
    .await?;
    let outbox = SqliteOutbox::new(Tables::new("outbox")?);
    outbox.migrate(&pool).await?;

    let store = outbox.store(pool.clone());
    let publisher = CollectingPublisher::new();
    let config = RelayConfig { poll_interval: Duration::from_millis(20), ..RelayConfig::default() };
    let relay = Relay::new(store.clone(), publisher.clone(), config)?;
    let wakeup = relay.wakeup();

    let orders = [
        Order { id: "o-1001", customer: "alice", total_cents: 4200 },
        Order { id: "o-1002", customer: "bob", total_cents: 1999 },
        Order { id: "o-1003", customer: "carol", total_cents: 12_000 },
    ];
    let mut expected = Vec::new();
    for order in &orders {
        expected.push(place_order(&pool, &outbox, order, true).await?);
        println!("placed   {} for {} ({} cents), event committed with it", order.id, order.customer, order.total_cents);
    }
    let declined = Order { id: "o-1004", customer: "mallory", total_cents: 999_999 };
    let lost = place_order(&pool, &outbox, &declined, false).await?;
    println!("declined {}: payment failed, transaction rolled back (its event too)", declined.id);
    // In one process, waking the relay after a commit publishes at once instead of at the next poll.
    wakeup.wake();

    // Run the relay until the outbox is drained, then shut it down.
    let watcher = store.clone();
    relay
        .run(async move {
            loop {
                match watcher.stats(Timestamp::now()).await {
                    Ok(s) if s.pending + s.processing + s.failed == 0 => return,
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        })
        .await?;

    let published = publisher.published();
    println!("\npublished {} events:", published.len());
    for e in &published {
        println!(
            "  {}/{} #{} {} {}",
            e.aggregate_type,
            e.aggregate_id,
            e.sequence,
            e.event_type,
            String::from_utf8_lossy(e.payload.as_bytes())
        );
    }

    // Order is guaranteed per aggregate (here: per order); across orders the relay may interleave.
    let mut got: Vec<_> = published.iter().map(|e| e.id).collect();
    let mut want: Vec<_> = expected.iter().map(NewEntry::id).collect();
    got.sort();
    want.sort();
    if got != want {
        return Err(format!("expected the {} committed events once each, published {:?}", want.len(), got).into());
    }
    if published.iter().any(|e| e.id == lost.id()) || store.entry(lost.id()).await?.is_some() {
        return Err("the rolled-back order's event exists; it must not".into());
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM orders").fetch_one(&pool).await?;
    let stats = store.stats(Timestamp::now()).await?;
    if rows != 3 || stats.published != 3 {
        return Err(format!("expected 3 orders and 3 published events, found {rows} orders and {stats:?}").into());
    }
    println!("\nok: 3 orders, 3 events published once each, the declined order left no event");
    pool.close().await;
    Ok(())
}
