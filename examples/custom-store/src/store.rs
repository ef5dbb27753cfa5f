//! The custom adapter: a tiny "database" (a `Mutex` over a key-value table and a `Vec` of
//! outbox entries) and the three pieces every storage adapter provides.
//!
//! 1. **A writer that joins the application's transaction** ([`Transaction::enqueue`]): the
//!    entry becomes visible exactly when the business change commits. Not a trait: it takes
//!    your storage library's own transaction type (here our [`Transaction`]; in outbox-sqlx a
//!    `&mut PgConnection`). Its contract is in `outbox_core`'s crate docs ("What a writer must
//!    guarantee"): next sequence of the aggregate in commit order, every field stored unchanged,
//!    status pending, duplicate ids rejected, never committing on its own.
//! 2. **[`Store`]** (what the relay needs): `claim` and `complete`.
//! 3. **[`Maintenance`]** (what operators need): `purge_published`, `stats`, `requeue_dead`,
//!    `entry`.
//!
//! Status changes go through `Status::apply` (the core's state machine) instead of assigning
//! statuses by hand, so an adapter cannot invent a transition.
//!
//! A real adapter does the same in SQL: see outbox-sqlx's PostgreSQL module, which keeps a row
//! per aggregate (sequence, lease) so claims never scan the whole table. This one scans the
//! `Vec`, which is fine for a skeleton.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use outbox_core::{
    ClaimRequest, Completion, DeadPolicy, Entry, EntryId, Error, ErrorKind, Event, Lease, Maintenance, NewEntry,
    Requeue, Result, Stats, Status, Store, Timestamp,
};

#[derive(Default)]
struct Data {
    /// The business table: key → value.
    rows: BTreeMap<String, String>,
    /// The outbox table.
    outbox: Vec<Entry>,
    /// Where each entry is in `outbox` (an index on the primary key).
    by_id: HashMap<EntryId, usize>,
    /// The last sequence given to each aggregate; kept when entries are purged, so sequences
    /// never repeat.
    sequences: HashMap<(String, String), i64>,
}

/// The database. Cloning gives another handle (another "connection") on the same data.
#[derive(Clone, Default)]
pub(crate) struct VecDb {
    data: Arc<Mutex<Data>>,
}

impl std::fmt::Debug for VecDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VecDb").field("entries", &self.lock().outbox.len()).finish()
    }
}

impl VecDb {
    pub(crate) fn new() -> Self {
        VecDb::default()
    }

    /// Starts a transaction; dropped without [`Transaction::commit`], it rolls back.
    pub(crate) fn begin(&self) -> Transaction {
        Transaction { db: self.clone(), rows: Vec::new(), entries: Vec::new() }
    }

    /// Reads a business row.
    pub(crate) fn get(&self, key: &str) -> Option<String> {
        self.lock().rows.get(key).cloned()
    }

    fn lock(&self) -> MutexGuard<'_, Data> {
        // Every update below is applied whole under the lock, so a poisoned lock holds
        // consistent data.
        self.data.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A transaction: business writes and outbox entries, applied together or not at all.
#[derive(Debug)]
pub(crate) struct Transaction {
    db: VecDb,
    rows: Vec<(String, String)>,
    entries: Vec<NewEntry>,
}

impl Transaction {
    /// Reads a row as this transaction sees it (its own writes first).
    pub(crate) fn get(&self, key: &str) -> Option<String> {
        match self.rows.iter().rev().find(|(k, _)| k == key) {
            Some((_, v)) => Some(v.clone()),
            None => self.db.get(key),
        }
    }

    /// A business write.
    pub(crate) fn put(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.rows.push((key.into(), value.into()));
    }

    /// **The writer**: the entry commits or rolls back with this transaction.
    pub(crate) fn enqueue(&mut self, entry: NewEntry) {
        self.entries.push(entry);
    }

    /// Rolls back: nothing written in the transaction is kept.
    pub(crate) fn rollback(self) {}

    /// Applies the rows and entries atomically. Entries get the next sequence of their
    /// aggregate in commit order (the lock serializes commits). A duplicate entry id fails the
    /// whole commit, writing nothing.
    pub(crate) fn commit(self) -> Result<()> {
        let now = Timestamp::now();
        let mut data = self.db.lock();
        let mut ids = HashSet::new();
        for e in &self.entries {
            if data.by_id.contains_key(&e.id()) || !ids.insert(e.id()) {
                return Err(Error::new(
                    ErrorKind::Validation,
                    format!("entry id {} is already in the outbox; generate a new id per entry", e.id()),
                ));
            }
        }
        for (k, v) in self.rows {
            data.rows.insert(k, v);
        }
        for new in self.entries {
            let key = (new.aggregate_type().to_string(), new.aggregate_id().to_string());
            let sequence = data.sequences.entry(key).or_insert(0);
            *sequence += 1;
            let entry = Entry::from_new(new, *sequence, now); // status Pending, no attempts
            let at = data.outbox.len();
            data.by_id.insert(entry.id, at);
            data.outbox.push(entry);
        }
        Ok(())
    }
}

fn lease_live(entry: &Entry, now: Timestamp) -> bool {
    entry.lease.as_ref().is_some_and(|l| l.expires_at > now)
}

impl Store for VecDb {
    /// Due entries, per aggregate a consecutive prefix from its first unpublished entry,
    /// marked Processing under the request's holder.
    async fn claim(&self, req: &ClaimRequest<'_>) -> Result<Vec<Entry>> {
        let mut data = self.lock();
        // Unpublished entries grouped by aggregate, aggregates in order of first appearance.
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut group_of: HashMap<(&str, &str), usize> = HashMap::new();
        for (i, e) in data.outbox.iter().enumerate() {
            if e.status == Status::Published {
                continue;
            }
            let g = *group_of.entry((&e.aggregate_type, &e.aggregate_id)).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[g].push(i);
        }
        let mut batch = Vec::new();
        for mut group in groups {
            if batch.len() >= req.max_entries {
                break;
            }
            group.sort_by_key(|&i| data.outbox[i].sequence);
            // An aggregate with an entry under a live lease belongs to another batch: skip it whole.
            if group
                .iter()
                .any(|&i| data.outbox[i].status == Status::Processing && lease_live(&data.outbox[i], req.now))
            {
                continue;
            }
            let mut taken = 0;
            for i in group {
                if taken >= req.max_per_aggregate || batch.len() >= req.max_entries {
                    break;
                }
                let entry = &mut data.outbox[i];
                match entry.status {
                    Status::Dead if req.on_dead == DeadPolicy::Skip => continue,
                    Status::Dead => break, // blocks the rest of its aggregate
                    _ => {}
                }
                if entry.available_at > req.now {
                    break; // not due (delayed, or waiting for a retry): holds back the rest
                }
                // Processing here means its lease lapsed (the relay crashed): claimable again.
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
        }
        Ok(batch)
    }

    /// Applies the outcome to the entries this holder still holds; the others were re-claimed
    /// after their lease lapsed and are left alone.
    async fn complete(&self, c: &Completion) -> Result<()> {
        let mut data = self.lock();
        let Data { outbox, by_id, .. } = &mut *data;
        let mut apply = |id: &EntryId, event: Event, change: &mut dyn FnMut(&mut Entry)| -> Result<()> {
            let Some(&i) = by_id.get(id) else { return Ok(()) };
            let entry = &mut outbox[i];
            let held = entry.status == Status::Processing && entry.lease.as_ref().is_some_and(|l| l.holder == c.holder);
            if held {
                entry.status = entry.status.apply(event)?;
                entry.lease = None;
                change(entry);
            }
            Ok(())
        };
        for id in &c.published {
            apply(id, Event::Published, &mut |e| e.published_at = Some(c.now))?;
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
        Ok(())
    }
}

impl Maintenance for VecDb {
    async fn purge_published(&self, before: Timestamp, limit: usize) -> Result<u64> {
        let mut data = self.lock();
        let mut old: Vec<(Timestamp, EntryId)> =
            data.outbox.iter().filter_map(|e| e.published_at.filter(|at| *at < before).map(|at| (at, e.id))).collect();
        old.sort();
        old.truncate(limit);
        let doomed: HashSet<EntryId> = old.into_iter().map(|(_, id)| id).collect();
        data.outbox.retain(|e| !doomed.contains(&e.id));
        let index = data.outbox.iter().enumerate().map(|(i, e)| (e.id, i)).collect();
        data.by_id = index;
        Ok(doomed.len() as u64)
    }

    async fn stats(&self, now: Timestamp) -> Result<Stats> {
        let data = self.lock();
        let mut stats = Stats::default();
        let mut oldest: Option<Timestamp> = None;
        for e in &data.outbox {
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
        Ok(stats)
    }

    async fn requeue_dead(&self, which: Requeue<'_>, now: Timestamp) -> Result<u64> {
        let mut data = self.lock();
        let mut count = 0;
        for e in data.outbox.iter_mut().filter(|e| e.status == Status::Dead) {
            let chosen = match which {
                Requeue::All => true,
                Requeue::Ids(ids) => ids.contains(&e.id),
                Requeue::Aggregate { aggregate_type, aggregate_id } => {
                    e.aggregate_type == aggregate_type && e.aggregate_id == aggregate_id
                }
            };
            if chosen {
                e.status = e.status.apply(Event::Requeued)?;
                e.attempts = 0;
                e.available_at = now;
                count += 1;
            }
        }
        Ok(count)
    }

    async fn entry(&self, id: EntryId) -> Result<Option<Entry>> {
        let data = self.lock();
        Ok(data.by_id.get(&id).map(|&i| data.outbox[i].clone()))
    }
}
