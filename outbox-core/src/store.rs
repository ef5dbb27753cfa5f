//! The storage ports: [`Store`] is what the relay needs, [`Maintenance`] what operators need.
//!
//! Writing entries is not here: it must take the storage library's own transaction type so the
//! entry commits or rolls back with the business change, so each adapter offers its own
//! `enqueue(&mut tx, entry)`. What every writer must guarantee is written down in
//! [the crate docs](crate#what-a-writer-must-guarantee).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::entry::{Entry, EntryId};
use crate::error::Result;
use crate::time::{BoxFuture, Timestamp};

/// What to do with later entries of an aggregate whose entry went dead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeadPolicy {
    /// Hold them back until an operator requeues (or discards) the dead entry. Keeps order
    /// strict: consumers never see an event whose predecessor is missing.
    #[default]
    Block,
    /// Let them pass: the dead entry is skipped and waits for an operator on its own.
    Skip,
}

/// A relay's request for a batch.
#[derive(Clone, Copy, Debug)]
pub struct ClaimRequest<'a> {
    /// Who claims: unique per batch (the relay uses `<relay id>:<batch counter>`), recorded
    /// as the lease holder, and required to complete the batch. At most
    /// [`ClaimRequest::MAX_HOLDER_LEN`] bytes.
    pub holder: &'a str,
    /// The relay's idea of now: entries whose `available_at` is later are not due.
    pub now: Timestamp,
    /// Until when the claim holds; after it, the entries are claimable again.
    pub lease_until: Timestamp,
    /// The most entries in the batch.
    pub max_entries: usize,
    /// The most entries of one aggregate in the batch.
    pub max_per_aggregate: usize,
    /// How dead entries affect their aggregate.
    pub on_dead: DeadPolicy,
}

impl ClaimRequest<'_> {
    /// The longest holder a store must be able to record, in bytes: 255, the size of the
    /// `lease_holder` column (`VARCHAR(255)` on MySQL). The relay's holders never exceed it
    /// (see [`RelayConfig::MAX_RELAY_ID_LEN`](crate::RelayConfig::MAX_RELAY_ID_LEN)).
    pub const MAX_HOLDER_LEN: usize = 255;
}

/// An entry whose publish failed and will be retried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retry {
    /// The entry.
    pub id: EntryId,
    /// When the next attempt is due.
    pub at: Timestamp,
    /// What went wrong.
    pub error: String,
}

/// An entry given up on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dead {
    /// The entry.
    pub id: EntryId,
    /// What went wrong.
    pub error: String,
}

/// The result of publishing one claimed batch, grouped by what happens to each entry, so a
/// store can apply it in one round trip per group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Completion {
    /// The holder the batch was claimed with; entries no longer held by it are left alone.
    pub holder: String,
    /// When the batch completed (the published time).
    pub now: Timestamp,
    /// The broker has these: Processing → Published.
    pub published: Vec<EntryId>,
    /// Processing → Failed, attempts + 1, available again at the given time.
    pub retry: Vec<Retry>,
    /// Processing → Dead, attempts + 1.
    pub dead: Vec<Dead>,
    /// Processing → Pending without counting an attempt (unpublished; shutdown, or an earlier
    /// entry of the aggregate failed in this batch).
    pub released: Vec<EntryId>,
}

impl Completion {
    /// How many entries the completion covers.
    pub fn len(&self) -> usize {
        self.published.len() + self.retry.len() + self.dead.len() + self.released.len()
    }

    /// Whether it covers none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The relay-side store port.
///
/// # Contract
/// - `claim` returns due entries (pending, failed with a due retry, or processing under a
///   lapsed lease) and marks them Processing under `holder` until `lease_until`. Entries of one
///   aggregate appear in ascending sequence, consecutive from the aggregate's first unpublished
///   entry: an entry is never returned while an earlier unpublished entry of its aggregate is not
///   returned with it (or, under [`DeadPolicy::Skip`], is dead). An aggregate with entries under
///   a live lease yields nothing. Two concurrent claims never return the same entry.
/// - `complete` applies a [`Completion`] to the entries still held by its holder and ends the
///   claim; entries whose lease was lost are left alone. It must not return before the changes
///   are durable.
pub trait Store: Send + Sync {
    /// Claims a batch; an empty vector when nothing is due.
    fn claim(&self, request: &ClaimRequest<'_>) -> impl Future<Output = Result<Vec<Entry>>> + Send;

    /// Records what happened to a claimed batch.
    fn complete(&self, completion: &Completion) -> impl Future<Output = Result<()>> + Send;
}

/// Counts of a store's entries, for dashboards and alerts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Waiting to be claimed.
    pub pending: u64,
    /// Claimed and being published.
    pub processing: u64,
    /// Published and not yet purged.
    pub published: u64,
    /// Waiting for a retry.
    pub failed: u64,
    /// Given up on; need an operator.
    pub dead: u64,
    /// How long the oldest entry that still has to reach the broker (pending, processing or
    /// failed: [`Status::is_unpublished`](crate::Status::is_unpublished)) has waited since it was
    /// written. Dead entries do not count: they wait for an operator (see `dead`).
    pub oldest_unpublished_age: Option<Duration>,
}

/// Which dead entries to put back in line.
#[derive(Clone, Copy, Debug)]
pub enum Requeue<'a> {
    /// Every dead entry.
    All,
    /// These entries (those that are dead).
    Ids(&'a [EntryId]),
    /// The dead entries of one aggregate.
    Aggregate {
        /// The aggregate's type.
        aggregate_type: &'a str,
        /// The aggregate's id.
        aggregate_id: &'a str,
    },
}

/// The operations port: retention, stats, requeue, and looking at one entry.
pub trait Maintenance: Send + Sync {
    /// Deletes at most `limit` published entries published before `before`; returns how many.
    /// Bounded so no statement holds locks for long; see [`MaintenanceExt::purge_published_all`].
    fn purge_published(&self, before: Timestamp, limit: usize) -> impl Future<Output = Result<u64>> + Send;

    /// Counts per status and the age of the oldest unpublished entry at `now`.
    fn stats(&self, now: Timestamp) -> impl Future<Output = Result<Stats>> + Send;

    /// Puts dead entries back to Pending with no attempts, due at `now`; returns how many.
    fn requeue_dead(&self, which: Requeue<'_>, now: Timestamp) -> impl Future<Output = Result<u64>> + Send;

    /// One entry, whatever its status.
    fn entry(&self, id: EntryId) -> impl Future<Output = Result<Option<Entry>>> + Send;
}

/// Conveniences on top of [`Maintenance`], for every implementation.
pub trait MaintenanceExt: Maintenance {
    /// Purges in chunks of `chunk` until nothing older than `before` is left; returns the total.
    fn purge_published_all(&self, before: Timestamp, chunk: usize) -> impl Future<Output = Result<u64>> + Send {
        async move {
            let mut total = 0;
            loop {
                let n = self.purge_published(before, chunk.max(1)).await?;
                total += n;
                if n < chunk.max(1) as u64 {
                    return Ok(total);
                }
            }
        }
    }
}

impl<M: Maintenance + ?Sized> MaintenanceExt for M {}

/// The object-safe twin of [`Store`], for when a trait object is needed
/// (`Arc<dyn DynStore>` is itself a [`Store`]). Every [`Store`] is one.
pub trait DynStore: Send + Sync {
    /// [`Store::claim`], boxed.
    fn claim_dyn<'a>(&'a self, request: &'a ClaimRequest<'a>) -> BoxFuture<'a, Result<Vec<Entry>>>;
    /// [`Store::complete`], boxed.
    fn complete_dyn<'a>(&'a self, completion: &'a Completion) -> BoxFuture<'a, Result<()>>;
}

impl<S: Store> DynStore for S {
    fn claim_dyn<'a>(&'a self, request: &'a ClaimRequest<'a>) -> BoxFuture<'a, Result<Vec<Entry>>> {
        Box::pin(self.claim(request))
    }
    fn complete_dyn<'a>(&'a self, completion: &'a Completion) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.complete(completion))
    }
}

impl Store for Arc<dyn DynStore> {
    async fn claim(&self, request: &ClaimRequest<'_>) -> Result<Vec<Entry>> {
        (**self).claim_dyn(request).await
    }
    async fn complete(&self, completion: &Completion) -> Result<()> {
        (**self).complete_dyn(completion).await
    }
}

impl<S: Store> Store for Arc<S> {
    fn claim(&self, request: &ClaimRequest<'_>) -> impl Future<Output = Result<Vec<Entry>>> + Send {
        (**self).claim(request)
    }
    fn complete(&self, completion: &Completion) -> impl Future<Output = Result<()>> + Send {
        (**self).complete(completion)
    }
}
