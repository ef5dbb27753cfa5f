//! Conformance suites: prove a [`Store`] or a [`Publisher`](crate::Publisher) keeps the guarantees.
//!
//! A storage adapter implements [`Harness`] (a fresh, empty outbox; a way to write entries in
//! the adapter's own transaction; a second store on the same outbox) and calls
//! [`store_suite`] from one test against its real database:
//!
//! ```
//! use outbox_core::testkit::{Harness, store_suite};
//! use outbox_core::{MemoryStore, NewEntry, Result};
//!
//! struct MemoryHarness(MemoryStore);
//!
//! impl Harness for MemoryHarness {
//!     type Store = MemoryStore;
//!     fn store(&self) -> MemoryStore {
//!         self.0.clone()
//!     }
//!     async fn open_store(&self) -> Result<MemoryStore> {
//!         Ok(self.0.clone())
//!     }
//!     async fn write(&self, entries: Vec<NewEntry>, commit: bool) -> Result<()> {
//!         let mut tx = self.0.begin();
//!         for e in entries {
//!             tx.enqueue(e);
//!         }
//!         if commit { tx.commit() } else { Ok(()) } // dropping the transaction rolls it back
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // Each check gets a fresh outbox from the closure.
//! store_suite(|| async { Ok(MemoryHarness(MemoryStore::new())) }).await;
//! # }
//! ```
//! A broker adapter implements [`Inbox`] (read back what reached the broker) and calls
//! [`publisher_suite`]. Each check is also public, so a failing one can be run alone.
//!
//! The suites panic with every failed check listed, so they read as one test.

mod checks;
mod publisher;

use std::fmt;
use std::future::Future;

pub use checks::*;
pub use publisher::{Inbox, PublisherOptions, Received, publisher_suite};

use crate::entry::NewEntry;
use crate::error::{Error, Result};
use crate::store::{Maintenance, Store};

/// What a storage adapter provides to run the store suite.
pub trait Harness {
    /// The adapter's store.
    type Store: Store + Maintenance + Clone + 'static;

    /// The store over this harness's outbox (fresh and empty when the harness was made).
    fn store(&self) -> Self::Store;

    /// Another store over the same outbox, as a second relay process would open it (for SQL
    /// stores: its own connection pool).
    fn open_store(&self) -> impl Future<Output = Result<Self::Store>>;

    /// Writes `entries` in one transaction of the adapter's own kind (the path applications use),
    /// then commits it, or rolls it back when `commit` is false. Returns the write's error, if any.
    fn write(&self, entries: Vec<NewEntry>, commit: bool) -> impl Future<Output = Result<()>>;
}

/// A failed check: what was expected and what happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure(pub String);

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure(format!("the store returned an error: {e}"))
    }
}

/// The result of one check.
pub type CheckResult = std::result::Result<(), Failure>;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err($crate::testkit::Failure(format!($($msg)+)));
        }
    };
}
pub(crate) use ensure;

macro_rules! run_checks {
    ($fresh:expr, $failures:expr, $($check:ident),+ $(,)?) => {$(
        let outcome = match $fresh().await {
            Ok(harness) => $check(&harness).await,
            Err(e) => Err(Failure(format!("could not set up a fresh outbox: {e}"))),
        };
        if let Err(failure) = outcome {
            $failures.push(format!("{}: {}", stringify!($check), failure));
        }
    )+};
}

/// Runs every store check, each on a fresh outbox from `fresh`; panics listing every failure.
pub async fn store_suite<H, F, Fut>(mut fresh: F)
where
    H: Harness,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<H>>,
{
    let mut failures: Vec<String> = Vec::new();
    run_checks!(
        fresh,
        failures,
        rolled_back_entries_are_never_published,
        entries_round_trip_unchanged,
        duplicate_id_is_rejected_without_harm,
        sequences_follow_commit_order,
        order_is_kept_per_aggregate,
        failing_aggregate_holds_back_only_itself,
        batch_failure_releases_later_entries,
        retries_until_dead_then_requeue,
        permanent_error_is_dead_at_once_and_skip_lets_later_pass,
        lease_expiry_makes_entries_claimable_again,
        delayed_entries_wait_and_hold_back_their_aggregate,
        purge_removes_only_old_published_in_chunks,
        stats_count_each_status_and_the_oldest_age,
        stats_oldest_age_ignores_dead_entries,
        published_entries_are_never_claimed_again,
        large_batches_drain_in_order,
        concurrent_relays_publish_each_entry_once_in_order,
    );
    assert!(failures.is_empty(), "store conformance failed:\n- {}", failures.join("\n- "));
}
