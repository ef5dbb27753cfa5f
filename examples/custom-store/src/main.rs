//! # A custom Store: which traits to implement
//!
//! A skeleton for your own storage adapter, written against `outbox-core`'s ports and proven
//! with the conformance testkit. The "database" ([`store::VecDb`]) is a `Mutex` over a
//! key-value table and a `Vec` of outbox entries; replace its bodies with your storage's
//! statements and keep the same contract. See [`store`] for the three pieces: the writer that
//! joins the application's transaction, `Store` (claim, complete) and `Maintenance` (purge,
//! stats, requeue, entry).
//!
//! Run it from the workspace root; nothing to start:
//!
//! ```text
//! cargo run -p example-custom-store
//! ```
//!
//! What it does:
//! 1. proves the store with `outbox_core::testkit::store_suite` (17 checks: rollback, order per
//!    aggregate, a failing aggregate holding back only itself, retries and dead entries, lease
//!    expiry, delayed entries, purge, stats, three concurrent relays, ...), each on a fresh store;
//! 2. runs a small library-loans service on it: lending and returning books, each business
//!    write and its event in one transaction; lending a book that is already out fails after
//!    the event was written, and the rollback takes the event with it;
//! 3. relays to an in-process publisher (the point here is the store; any publisher works) and
//!    checks every committed event was published once, in order per book, with its headers;
//!    prints what it saw and exits non-zero otherwise.

mod store;

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use outbox_core::testkit::{Harness, store_suite};
use outbox_core::{CollectingPublisher, Maintenance, NewEntry, Relay, RelayConfig, Result, Timestamp};

use crate::store::VecDb;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the testkit needs: a fresh store, a second handle on it (a second relay process would
/// open its own connection pool), and writes through the adapter's own transaction.
struct VecHarness(VecDb);

impl Harness for VecHarness {
    type Store = VecDb;

    fn store(&self) -> VecDb {
        self.0.clone()
    }

    async fn open_store(&self) -> Result<VecDb> {
        Ok(self.0.clone())
    }

    async fn write(&self, entries: Vec<NewEntry>, commit: bool) -> Result<()> {
        let mut tx = self.0.begin();
        for e in entries {
            tx.enqueue(e);
        }
        if commit {
            tx.commit()
        } else {
            tx.rollback();
            Ok(())
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    // 1. The conformance suite: panics (non-zero exit) listing every failed check.
    store_suite(|| async { Ok(VecHarness(VecDb::new())) }).await;
    println!("store_suite: passed");

    match service().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("example-custom-store FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Lends `book` to `member`: the loan row and `book.lent`, in one transaction. Fails (rolling
/// back both) when the book is already out.
fn lend(db: &VecDb, book: &str, member: &str) -> std::result::Result<NewEntry, BoxError> {
    let mut tx = db.begin();
    let event = NewEntry::builder("book", book, "book.lent")
        .json(format!(r#"{{"book":"{book}","member":"{member}"}}"#))
        .correlation_id(format!("desk-{member}"))
        .build()?;
    tx.enqueue(event.clone());
    if tx.get(&format!("loan:{book}")).is_some_and(|m| !m.is_empty()) {
        tx.rollback(); // the event goes with it
        return Err(format!("{book} is already lent").into());
    }
    tx.put(format!("loan:{book}"), member);
    tx.commit()?;
    Ok(event)
}

/// Returns `book`: the loan row is cleared and `book.returned` written, in one transaction.
fn give_back(db: &VecDb, book: &str) -> std::result::Result<NewEntry, BoxError> {
    let mut tx = db.begin();
    let member =
        tx.get(&format!("loan:{book}")).filter(|m| !m.is_empty()).ok_or_else(|| format!("{book} is not lent"))?;
    tx.put(format!("returned:{book}"), member.clone());
    tx.put(format!("loan:{book}"), ""); // our tiny table has no delete; empty means returned
    let event = NewEntry::builder("book", book, "book.returned")
        .json(format!(r#"{{"book":"{book}","member":"{member}"}}"#))
        .correlation_id(format!("desk-{member}"))
        .build()?;
    tx.enqueue(event.clone());
    tx.commit()?;
    Ok(event)
}

async fn service() -> std::result::Result<(), BoxError> {
    let db = VecDb::new();
    let mut expected = vec![lend(&db, "dune", "ana")?, lend(&db, "emma", "ben")?, give_back(&db, "dune")?];
    expected.push(lend(&db, "dune", "carl")?);
    for e in &expected {
        println!("committed {} {}", e.aggregate_id(), e.event_type());
    }
    match lend(&db, "emma", "dan") {
        Err(e) => println!("rolled back: {e}"),
        Ok(_) => return Err("lending a lent book succeeded; it must not".into()),
    }

    let publisher = CollectingPublisher::new();
    let config = RelayConfig { poll_interval: Duration::from_millis(10), ..RelayConfig::default() };
    let relay = Relay::new(db.clone(), publisher.clone(), config)?;
    while relay.run_once().await?.claimed > 0 {}
    let stats = db.stats(Timestamp::now()).await?;
    println!("relay done: {stats:?}");

    let published = publisher.published();
    println!("\npublished {} events:", published.len());
    for e in &published {
        println!(
            "  {} #{} {} id {} correlation {} {}",
            e.aggregate_id,
            e.sequence,
            e.event_type,
            e.id,
            e.headers.get("correlation-id").unwrap_or("?"),
            String::from_utf8_lossy(e.payload.as_bytes())
        );
    }
    if published.len() != expected.len() {
        return Err(format!("expected {} events, published {}", expected.len(), published.len()).into());
    }
    let mut per_book: HashMap<&str, Vec<_>> = HashMap::new();
    for e in &published {
        let committed =
            expected.iter().find(|x| x.id() == e.id).ok_or_else(|| format!("{} was never committed", e.id))?;
        if e.payload.as_bytes() != committed.payload().as_bytes() || e.headers != *committed.headers() {
            return Err(format!("{} changed in the store", e.id).into());
        }
        per_book.entry(&e.aggregate_id).or_default().push(e.id);
    }
    for (book, ids) in per_book {
        let committed: Vec<_> = expected.iter().filter(|x| x.aggregate_id() == book).map(NewEntry::id).collect();
        if ids != committed {
            return Err(format!("{book}: published {ids:?}, committed {committed:?}").into());
        }
    }
    if db.get("loan:emma").as_deref() != Some("ben") {
        return Err("the rolled-back loan changed the business table".into());
    }
    println!("\nok: {} events published once each, in order per book; the refused loan left nothing", expected.len());
    Ok(())
}
