//! # The relay, as its own process
//!
//! Publishes what applications committed to a PostgreSQL outbox to a RabbitMQ exchange, until
//! SIGTERM or Ctrl-C (it finishes the batch in flight, then exits). Run as many copies as you
//! like against one database: each aggregate belongs to one relay at a time, so every entry is
//! published once and in order per aggregate. The outbox tables must exist (migrations are the
//! application's job).
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test OUTBOX_TABLE=outbox \
//!   AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f AMQP_EXCHANGE=orders.events \
//!   cargo run -p example-relay-process --bin relay
//! ```
//!
//! Configuration, all from the environment (defaults after "default"):
//! - `DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`
//! - `OUTBOX_TABLE`, default `outbox`: the outbox's table name
//! - `AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`
//! - `AMQP_EXCHANGE`, default `orders.events`: must exist (declared by operators or the
//!   application); routing key = event type
//! - `RELAY_ID`, default `relay-<pid>`: names the relay in leases and logs
//! - `RELAY_BATCH_SIZE` (default 100), `RELAY_MAX_PER_AGGREGATE` (20), `RELAY_POLL_MS` (100),
//!   `RELAY_LEASE_SECS` (30)
//! - `RELAY_STOP_ON_STDIN_EOF`, default off: also stop when standard input closes (for a parent
//!   process that supervises its relays, like this example's application)

use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use outbox_core::{Relay, RelayConfig, RelayEvent};
use outbox_rabbitmq::{RabbitMqConfig, RabbitMqPublisher};
use outbox_sqlx::{PgOutbox, Tables};
use sqlx::postgres::PgPoolOptions;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The relay's settings, read and checked at start-up.
struct Settings {
    database_url: String,
    table: String,
    amqp_url: String,
    exchange: String,
    relay_id: String,
    batch_size: usize,
    max_per_aggregate: usize,
    poll: Duration,
    lease: Duration,
    stop_on_stdin_eof: bool,
}

fn var(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn number<T: FromStr>(name: &str, default: T) -> Result<T, String> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(text) => text.trim().parse().map_err(|_| format!("{name}={text:?} is not a valid number")),
    }
}

impl Settings {
    fn from_env() -> Result<Settings, String> {
        Ok(Settings {
            database_url: var("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test"),
            table: var("OUTBOX_TABLE", "outbox"),
            amqp_url: var("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
            exchange: var("AMQP_EXCHANGE", "orders.events"),
            relay_id: var("RELAY_ID", &format!("relay-{}", std::process::id())),
            batch_size: number("RELAY_BATCH_SIZE", 100)?,
            max_per_aggregate: number("RELAY_MAX_PER_AGGREGATE", 20)?,
            poll: Duration::from_millis(number("RELAY_POLL_MS", 100)?),
            lease: Duration::from_secs(number("RELAY_LEASE_SECS", 30)?),
            stop_on_stdin_eof: matches!(var("RELAY_STOP_ON_STDIN_EOF", "").as_str(), "1" | "true" | "yes"),
        })
    }
}

/// `scheme://user:secret@host` → `scheme://user:***@host`: URLs are logged without passwords.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!("{}{}:***{}", &url[..s + 3], &userinfo[..colon], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("relay: bad configuration: {e}");
            return ExitCode::from(2);
        }
    };
    match run(settings).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relay FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(s: Settings) -> Result<(), BoxError> {
    let tables = Tables::new(&s.table)?;
    let amqp = RabbitMqConfig::builder(&s.amqp_url, &s.exchange).connection_name(&s.relay_id).build()?;
    println!(
        "{}: outbox {} at {}, publishing to exchange {} at {} (batch {}, {} per aggregate)",
        s.relay_id,
        s.table,
        redact(&s.database_url),
        s.exchange,
        amqp.redacted_url(),
        s.batch_size,
        s.max_per_aggregate
    );

    let pool = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&s.database_url)
        .await
        .map_err(|e| format!("cannot reach PostgreSQL at {} ({e})", redact(&s.database_url)))?;
    let publisher = Arc::new(RabbitMqPublisher::new(amqp));
    // Check the broker at start-up, but do not exit when it is down: `Relay::run` waits for it
    // (an outage) and publishes once it answers.
    if let Err(error) = publisher.connect().await {
        eprintln!("{}: RabbitMQ is not reachable yet; waiting for it: {error}", s.relay_id);
    }

    let published = Arc::new(AtomicU64::new(0));
    let counter = published.clone();
    let relay_id = s.relay_id.clone();
    let config = RelayConfig {
        relay_id: s.relay_id.clone(),
        batch_size: s.batch_size,
        max_per_aggregate: s.max_per_aggregate,
        poll_interval: s.poll,
        max_poll_interval: s.poll.max(Duration::from_secs(2)),
        lease_duration: s.lease,
        publish_timeout: s.lease / 3,
        observer: Arc::new(move |event: &RelayEvent<'_>| match event {
            RelayEvent::Published { .. } => {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            RelayEvent::OutageStarted { error, backoff } => {
                eprintln!("{relay_id}: broker outage, pausing (first for {backoff:?}); no attempt is counted: {error}");
            }
            RelayEvent::OutageEnded { lasted, .. } => eprintln!("{relay_id}: broker back after {lasted:?}"),
            _ => {}
        }),
        ..RelayConfig::default()
    };
    let store = PgOutbox::new(tables).store(pool.clone());
    let relay = Relay::new(store.clone(), publisher.clone(), config)?;
    // LISTEN/NOTIFY: a commit wakes the relays at once instead of at their next poll.
    let _listener = store.listen(relay.wakeup());

    relay.run(shutdown(s.stop_on_stdin_eof)).await?;
    publisher.close().await;
    pool.close().await;
    println!("{}: stopped after publishing {} entries", s.relay_id, published.load(Ordering::Relaxed));
    Ok(())
}

/// Resolves on SIGTERM, Ctrl-C, or (when asked) when standard input closes.
async fn shutdown(stop_on_stdin_eof: bool) {
    let stdin_closed = async {
        if !stop_on_stdin_eof {
            return std::future::pending::<()>().await;
        }
        let _ = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
                line.clear();
            }
        })
        .await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
        () = stdin_closed => {}
    }
}
