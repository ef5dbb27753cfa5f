//! In-memory adapters: a real [`Store`] with transactions, and in-process publishers.
//!
//! For unit tests, the quickstart and users' own tests. [`MemoryStore`] keeps every guarantee
//! of the [`Store`] contract (it passes the conformance testkit); it just forgets everything
//! when the process ends.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::entry::{Entry, EntryId, Lease, NewEntry};
use crate::error::{Error, ErrorKind, Result};
use crate::publisher::{Outcome, Publisher};
use crate::relay::Wakeup;
use crate::status::{Event, Status};
use crate::store::{ClaimRequest, Completion, DeadPolicy, Maintenance, Requeue, Stats, Store};
use crate::time::Timestamp;

/// An outbox held in memory. Cloning gives another handle on the same outbox.
///
/// ```
/// use outbox_core::{MemoryStore, NewEntry};
/// let store = MemoryStore::new();
/// let mut tx = store.begin();
/// tx.enqueue(NewEntry::builder("order", "o-1", "order.placed").json("{}").build()?);
/// tx.commit(); // dropping `tx` instead would roll it back
/// # Ok::<(), outbox_core::ValidationError>(())
/// ```
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    /// Every entry, with the index of its aggregate.
    entries: HashMap<EntryId, (usize, Entry)>,
    aggregate_index: HashMap<(String, String), usize>,
    aggregates: Vec<Aggregate>,
    /// Aggregates that may have unpublished entries, visited round-robin by claims.
    ring: VecDeque<usize>,
    /// Published entries by publish time, for purging.
    published: BTreeSet<(Timestamp, EntryId)>,
    wakeup: Option<Wakeup>,
}

#[derive(Default)]
struct Aggregate {
    next_sequence: i64,
    /// Entries not yet published (including dead ones), in sequence order.
    queue: VecDeque<EntryId>,
    lease: Option<Lease>,
    in_ring: bool,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.lock();
        f.debug_struct("MemoryStore")
            .field("entries", &inner.entries.len())
            .field("aggregates", &inner.aggregates.len())
            .finish()
    }
}

impl MemoryStore {
    /// An empty outbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// Wakes this relay whenever a transaction commits entries, so they are published at once.
    pub fn notify_on_commit(&self, wakeup: Wakeup) {
        self.lock().wakeup = Some(wakeup);
    }

    /// Starts a transaction: entries enqueued in it become visible together on
    /// [`MemoryTransaction::commit`], or never if it is dropped.
    pub fn begin(&self) -> MemoryTransaction {
        MemoryTransaction { store: self.clone(), entries: Vec::new() }
    }

    /// Enqueues entries in a transaction of their own.
    pub fn enqueue(&self, entries: impl IntoIterator<Item = NewEntry>) -> Result<()> {
        let mut tx = self.begin();
        for e in entries {
            tx.enqueue(e);
        }
        tx.commit()
    }

    /// How many entries the store holds, in any status.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave an entry half-updated in a way that
        // breaks the guarantees (each update is a single assignment), so keep going.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A transaction on a [`MemoryStore`]; dropped without commit, it rolls back.
#[derive(Debug)]
pub struct MemoryTransaction {
    store: MemoryStore,
    entries: Vec<NewEntry>,
}

impl MemoryTransaction {
    /// Adds an entry to the transaction.
    pub fn enqueue(&mut self, entry: NewEntry) {
        self.entries.push(entry);
    }

    /// Makes the entries visible, with sequences in commit order. Fails without writing anything
    /// if an entry id is already in the store.
    pub fn commit(self) -> Result<()> {
        self.commit_at(Timestamp::now())
    }

    /// [`MemoryTransaction::commit`] with an explicit creation time.
    pub fn commit_at(self, now: Timestamp) -> Result<()> {
        let mut inner = self.store.lock();
        let mut seen = std::collections::HashSet::new();
        for e in &self.entries {
            if inner.entries.contains_key(&e.id()) || !seen.insert(e.id()) {
                return Err(Error::new(
                    ErrorKind::Validation,
                    format!("entry id {} is already in the outbox; ids must be unique", e.id()),
                ));
            }
        }
        let committed = !self.entries.is_empty();
        for new in self.entries {
            let key = (new.aggregate_type().to_string(), new.aggregate_id().to_string());
            let index = match inner.aggregate_index.get(&key) {
                Some(&i) => i,
                None => {
                    let i = inner.aggregates.len();
                    inner.aggregates.push(Aggregate::default());
                    inner.aggregate_index.insert(key, i);
                    i
                }
            };
            let aggregate = &mut inner.aggregates[index];
            aggregate.next_sequence += 1;
            let entry = Entry::from_new(new, aggregate.next_sequence, now);
            aggregate.queue.push_back(entry.id);
            let needs_ring = !aggregate.in_ring;
            aggregate.in_ring = true;
            if needs_ring {
                inner.ring.push_back(index);
            }
            inner.entries.insert(entry.id, (index, entry));
        }
        let wakeup = inner.wakeup.clone();
        drop(inner);
        if let (true, Some(w)) = (committed, wakeup) {
            w.wake();
        }
        Ok(())
    }
}

fn held_by(entry: &Entry, holder: &str) -> bool {
    entry.status == Status::Processing && entry.lease.as_ref().is_some_and(|l| l.holder == holder)
}

impl Inner {
    fn claim(&mut self, req: &ClaimRequest<'_>) -> Result<Vec<Entry>> {
        let mut batch = Vec::new();
        let Inner { entries, aggregates, ring, .. } = self;
        for _ in 0..ring.len() {
            if batch.len() >= req.max_entries {
                break;
            }
            let Some(index) = ring.pop_front() else { break };
            let aggregate = &mut aggregates[index];
            if aggregate.queue.is_empty() {
                aggregate.in_ring = false;
                continue;
            }
            ring.push_back(index);
            if aggregate.lease.as_ref().is_some_and(|l| l.expires_at > req.now) {
                continue;
            }
            let mut taken = 0;
            for id in &aggregate.queue {
                if taken >= req.max_per_aggregate || batch.len() >= req.max_entries {
                    break;
                }
                let Some((_, entry)) = entries.get_mut(id) else { continue };
                match entry.status {
                    Status::Dead if req.on_dead == DeadPolicy::Skip => continue,
                    Status::Dead | Status::Published => break,
                    Status::Pending | Status::Failed | Status::Processing => {}
                }
                let lease_live = entry.lease.as_ref().is_some_and(|l| l.expires_at > req.now);
                if entry.available_at > req.now || (entry.status == Status::Processing && lease_live) {
                    break; // not due, or still being published: it holds back the rest of its aggregate
                }
                let from = if entry.status == Status::Processing {
                    entry.status.apply(Event::LeaseExpired)?
                } else {
                    entry.status
                };
                entry.status = from.apply(Event::Claim)?;
                entry.lease = Some(Lease { holder: req.holder.to_string(), expires_at: req.lease_until });
                batch.push(entry.clone());
                taken += 1;
            }
            if taken > 0 {
                aggregate.lease = Some(Lease { holder: req.holder.to_string(), expires_at: req.lease_until });
            }
        }
        Ok(batch)
    }

    fn complete(&mut self, c: &Completion) -> Result<()> {
        let mut touched = Vec::new();
        let Inner { entries, aggregates, published, .. } = self;
        let mut apply = |id: &EntryId, event: Event, f: &mut dyn FnMut(&mut Entry)| -> Result<()> {
            if let Some((index, entry)) = entries.get_mut(id)
                && held_by(entry, &c.holder)
            {
                entry.status = entry.status.apply(event)?;
                entry.lease = None;
                f(entry);
                touched.push(*index);
            }
            Ok(())
        };
        for id in &c.published {
            apply(id, Event::Published, &mut |e| {
                e.published_at = Some(c.now);
                published.insert((c.now, e.id));
            })?;
        }
        for r in &c.retry {
            apply(&r.id, Event::FailedRetryable, &mut |e| {
                e.attempts += 1;
                e.available_at = r.at;
                e.last_error = Some(r.error.clone());
            })?;
        }
        for d in &c.dead {
            apply(&d.id, Event::FailedPermanent, &mut |e| {
                e.attempts += 1;
                e.last_error = Some(d.error.clone());
            })?;
        }
        for id in &c.released {
            apply(id, Event::Released, &mut |_| {})?;
        }
        for id in &c.published {
            if let Some((index, e)) = entries.get(id)
                && e.status == Status::Published
            {
                let queue = &mut aggregates[*index].queue;
                if let Some(pos) = queue.iter().position(|q| q == id) {
                    queue.remove(pos);
                }
            }
        }
        for index in touched {
            let aggregate = &mut aggregates[index];
            if aggregate.lease.as_ref().is_some_and(|l| l.holder == c.holder) {
                aggregate.lease = None;
            }
        }
        Ok(())
    }
}

impl Store for MemoryStore {
    fn claim(&self, request: &ClaimRequest<'_>) -> impl Future<Output = Result<Vec<Entry>>> + Send {
        let result = self.lock().claim(request);
        std::future::ready(result)
    }

    fn complete(&self, completion: &Completion) -> impl Future<Output = Result<()>> + Send {
        let result = self.lock().complete(completion);
        std::future::ready(result)
    }
}

impl Maintenance for MemoryStore {
    fn purge_published(&self, before: Timestamp, limit: usize) -> impl Future<Output = Result<u64>> + Send {
        let mut inner = self.lock();
        let doomed: Vec<(Timestamp, EntryId)> =
            inner.published.iter().take_while(|(at, _)| *at < before).take(limit).copied().collect();
        for key in &doomed {
            inner.published.remove(key);
            inner.entries.remove(&key.1);
        }
        std::future::ready(Ok(doomed.len() as u64))
    }

    fn stats(&self, now: Timestamp) -> impl Future<Output = Result<Stats>> + Send {
        let inner = self.lock();
        let mut stats = Stats::default();
        let mut oldest: Option<Timestamp> = None;
        for (_, e) in inner.entries.values() {
            match e.status {
                Status::Pending => stats.pending += 1,
                Status::Processing => stats.processing += 1,
                Status::Published => stats.published += 1,
                Status::Failed => stats.failed += 1,
                Status::Dead => stats.dead += 1,
            }
            if e.status.is_unpublished() {
                oldest = Some(oldest.map_or(e.created_at, |o| o.min(e.created_at)));
            }
        }
        stats.oldest_unpublished_age = oldest.map(|o| now.saturating_duration_since(o));
        std::future::ready(Ok(stats))
    }

    fn requeue_dead(&self, which: Requeue<'_>, now: Timestamp) -> impl Future<Output = Result<u64>> + Send {
        let mut inner = self.lock();
        let ids: Vec<EntryId> = match which {
            Requeue::All => inner.entries.keys().copied().collect(),
            Requeue::Ids(ids) => ids.to_vec(),
            Requeue::Aggregate { aggregate_type, aggregate_id } => inner
                .aggregate_index
                .get(&(aggregate_type.to_string(), aggregate_id.to_string()))
                .map(|&i| inner.aggregates[i].queue.iter().copied().collect())
                .unwrap_or_default(),
        };
        let mut count = 0;
        let mut result = Ok(());
        let Inner { entries, aggregates, ring, .. } = &mut *inner;
        for id in ids {
            let Some((index, entry)) = entries.get_mut(&id) else { continue };
            if entry.status != Status::Dead {
                continue;
            }
            match entry.status.apply(Event::Requeued) {
                Ok(s) => entry.status = s,
                Err(e) => {
                    result = Err(e.into());
                    break;
                }
            }
            entry.attempts = 0;
            entry.available_at = now;
            count += 1;
            let aggregate = &mut aggregates[*index];
            if !aggregate.in_ring {
                aggregate.in_ring = true;
                ring.push_back(*index);
            }
        }
        std::future::ready(result.map(|()| count))
    }

    fn entry(&self, id: EntryId) -> impl Future<Output = Result<Option<Entry>>> + Send {
        let found = self.lock().entries.get(&id).map(|(_, e)| e.clone());
        std::future::ready(Ok(found))
    }
}

/// A publisher that accepts everything and remembers it, in order; the in-process publisher of
/// the quickstart. Cloning gives another handle on the same record.
#[derive(Clone, Debug, Default)]
pub struct CollectingPublisher {
    published: Arc<Mutex<Vec<Entry>>>,
}

impl CollectingPublisher {
    /// An empty record.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every entry accepted so far, in publish order (a copy).
    pub fn published(&self) -> Vec<Entry> {
        self.lock().clone()
    }

    /// Takes the record, leaving it empty.
    pub fn take(&self) -> Vec<Entry> {
        std::mem::take(&mut *self.lock())
    }

    /// How many entries were accepted.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none were.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Entry>> {
        self.published.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, entries: impl IntoIterator<Item = Entry>) {
        self.lock().extend(entries);
    }
}

impl Publisher for CollectingPublisher {
    fn publish(&self, batch: &[Entry]) -> impl Future<Output = Result<Vec<Outcome>>> + Send {
        self.record(batch.iter().cloned());
        std::future::ready(Ok(batch.iter().map(|_| Outcome::Published).collect()))
    }
}

/// A publisher that accepts everything and keeps nothing: for measuring the rest.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoopPublisher;

impl Publisher for NoopPublisher {
    fn publish(&self, batch: &[Entry]) -> impl Future<Output = Result<Vec<Outcome>>> + Send {
        std::future::ready(Ok(batch.iter().map(|_| Outcome::Published).collect()))
    }
}

type Script = dyn Fn(&Entry) -> Option<Error> + Send + Sync;

/// A publisher whose failures are scripted: a function decides per entry whether it fails and
/// how; the rest are accepted and recorded like [`CollectingPublisher`] does.
///
/// ```
/// use outbox_core::{Error, ErrorKind, ScriptedPublisher};
/// // Every entry of aggregate "o-2" fails with a retryable error of its own (an attempt counts);
/// // the rest go through. An error of an outage kind (`Unavailable`, `Throttled`) would instead
/// // release the entry without an attempt and pause the relay.
/// let publisher = ScriptedPublisher::new(|e| {
///     (e.aggregate_id == "o-2").then(|| Error::new(ErrorKind::Timeout, "scripted: no ack"))
/// });
/// ```
#[derive(Clone)]
pub struct ScriptedPublisher {
    script: Arc<Script>,
    accepted: CollectingPublisher,
    attempts: Arc<Mutex<Vec<EntryId>>>,
}

impl fmt::Debug for ScriptedPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScriptedPublisher").field("accepted", &self.accepted.len()).finish()
    }
}

impl ScriptedPublisher {
    /// A publisher failing each entry for which `script` returns an error.
    pub fn new(script: impl Fn(&Entry) -> Option<Error> + Send + Sync + 'static) -> Self {
        ScriptedPublisher { script: Arc::new(script), accepted: CollectingPublisher::new(), attempts: Arc::default() }
    }

    /// The entries accepted so far, in publish order.
    pub fn published(&self) -> Vec<Entry> {
        self.accepted.published()
    }

    /// Every entry handed to the publisher, accepted or not, in order.
    pub fn attempts(&self) -> Vec<EntryId> {
        self.attempts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Publisher for ScriptedPublisher {
    fn publish(&self, batch: &[Entry]) -> impl Future<Output = Result<Vec<Outcome>>> + Send {
        self.attempts.lock().unwrap_or_else(|p| p.into_inner()).extend(batch.iter().map(|e| e.id));
        let outcomes = batch
            .iter()
            .map(|e| match (self.script)(e) {
                Some(error) => Outcome::Failed(error),
                None => {
                    self.accepted.record([e.clone()]);
                    Outcome::Published
                }
            })
            .collect();
        std::future::ready(Ok(outcomes))
    }
}
