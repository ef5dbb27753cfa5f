//! The in-memory adapters pass the conformance suites, and deliberately broken stores fail
//! them: proof that the testkit can fail.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use outbox_core::testkit::{self, Harness, Inbox, PublisherOptions, Received};
use outbox_core::{
    ClaimRequest, CollectingPublisher, Completion, Entry, EntryId, Maintenance, MemoryStore, NewEntry, Requeue, Result,
    Stats, Status, Store, Timestamp,
};

struct MemoryHarness(MemoryStore);

impl Harness for MemoryHarness {
    type Store = MemoryStore;
    fn store(&self) -> MemoryStore {
        self.0.clone()
    }
    async fn open_store(&self) -> Result<MemoryStore> {
        Ok(self.0.clone())
    }
    async fn write(&self, entries: Vec<NewEntry>, commit: bool) -> Result<()> {
        let mut tx = self.0.begin();
        for e in entries {
            tx.enqueue(e);
        }
        if commit { tx.commit() } else { Ok(()) }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_passes_the_store_suite() {
    testkit::store_suite(|| async { Ok(MemoryHarness(MemoryStore::new())) }).await;
}

/// Reads back what a CollectingPublisher accepted.
struct CollectorInbox {
    publisher: CollectingPublisher,
    read: Mutex<usize>,
}

impl Inbox for CollectorInbox {
    async fn receive(&self, count: usize, _timeout: Duration) -> Result<Vec<Received>> {
        let all = self.publisher.published();
        let mut read = self.read.lock().unwrap_or_else(|p| p.into_inner());
        let fresh: Vec<Received> = all[*read..]
            .iter()
            .take(count)
            .map(|e| Received {
                id: Some(e.id),
                aggregate_id: Some(e.aggregate_id.clone()),
                payload: e.payload.as_bytes().to_vec(),
                headers: e.headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            })
            .collect();
        *read += fresh.len();
        Ok(fresh)
    }
}

#[tokio::test]
async fn collecting_publisher_passes_the_publisher_suite() {
    let publisher = CollectingPublisher::new();
    let inbox = CollectorInbox { publisher: publisher.clone(), read: Mutex::new(0) };
    testkit::publisher_suite(&publisher, &inbox, PublisherOptions::default()).await;
}

/// A store wrapper whose claim can be sabotaged.
#[derive(Clone)]
struct Broken {
    inner: MemoryStore,
    sabotage: fn(Vec<Entry>) -> Vec<Entry>,
}

impl Store for Broken {
    async fn claim(&self, request: &ClaimRequest<'_>) -> Result<Vec<Entry>> {
        let claimed = self.inner.claim(request).await?;
        Ok((self.sabotage)(claimed))
    }
    async fn complete(&self, completion: &Completion) -> Result<()> {
        self.inner.complete(completion).await
    }
}

impl Maintenance for Broken {
    async fn purge_published(&self, before: Timestamp, limit: usize) -> Result<u64> {
        self.inner.purge_published(before, limit).await
    }
    async fn stats(&self, now: Timestamp) -> Result<Stats> {
        self.inner.stats(now).await
    }
    async fn requeue_dead(&self, which: Requeue<'_>, now: Timestamp) -> Result<u64> {
        self.inner.requeue_dead(which, now).await
    }
    async fn entry(&self, id: EntryId) -> Result<Option<Entry>> {
        self.inner.entry(id).await
    }
}

struct BrokenHarness(Broken);

impl Harness for BrokenHarness {
    type Store = Broken;
    fn store(&self) -> Broken {
        self.0.clone()
    }
    async fn open_store(&self) -> Result<Broken> {
        Ok(self.0.clone())
    }
    async fn write(&self, entries: Vec<NewEntry>, commit: bool) -> Result<()> {
        MemoryHarness(self.0.inner.clone()).write(entries, commit).await
    }
}

fn broken(sabotage: fn(Vec<Entry>) -> Vec<Entry>) -> BrokenHarness {
    BrokenHarness(Broken { inner: MemoryStore::new(), sabotage })
}

#[tokio::test]
async fn a_store_that_ignores_order_fails_the_order_check() {
    // Reverses each batch: later entries of an aggregate come before earlier ones.
    let h = broken(|mut batch| {
        batch.reverse();
        batch
    });
    let failure = testkit::order_is_kept_per_aggregate(&h).await.expect_err("a reversing store must fail");
    assert!(failure.0.contains("out of order"), "{failure}");
}

#[tokio::test]
async fn a_store_that_skips_a_failed_entry_fails_the_hold_back_check() {
    // Drops the first entry of every batch when there is more than one, as a store that lets
    // later entries jump a blocked one would.
    let h = broken(|batch| {
        let mut batch: VecDeque<Entry> = batch.into();
        if batch.len() > 1 {
            batch.pop_front();
        }
        batch.into()
    });
    assert!(testkit::failing_aggregate_holds_back_only_itself(&h).await.is_err());
    assert!(testkit::order_is_kept_per_aggregate(&h).await.is_err());
}

#[tokio::test]
async fn a_store_that_hands_out_entries_twice_fails_the_concurrency_check() {
    // Every claim also returns a copy of the previous claim's entries, as a store without
    // SKIP LOCKED (or without leases) would under concurrency.
    static LAST: Mutex<Vec<Entry>> = Mutex::new(Vec::new());
    let h = broken(|batch| {
        let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = last.clone();
        *last = batch.clone();
        out.extend(batch);
        out
    });
    let failure = testkit::concurrent_relays_publish_each_entry_once_in_order(&h)
        .await
        .expect_err("double claims must be caught");
    assert!(failure.0.contains("twice") || failure.0.contains("out of order"), "{failure}");
}

#[tokio::test]
async fn a_store_whose_leases_never_lapse_fails_the_lease_check() {
    // Claims nothing for entries that are processing: a crashed relay's entries are stuck.
    let h = broken(|batch| {
        batch.into_iter().filter(|e| e.attempts > 0 || e.lease.as_ref().is_some_and(|l| l.holder != "second")).collect()
    });
    assert!(testkit::lease_expiry_makes_entries_claimable_again(&h).await.is_err());
}

/// A store whose stats age the oldest entry that is not published, dead ones included (the
/// mistake `status <> 'published'` makes in SQL); with `beside_unpublished`, only while some
/// entry is unpublished, so that the check's last step has to catch it. It remembers the ids
/// written through its harness to find their creation times.
#[derive(Clone)]
struct AgesDeadEntries {
    inner: MemoryStore,
    written: std::sync::Arc<Mutex<Vec<EntryId>>>,
    beside_unpublished: bool,
}

impl Store for AgesDeadEntries {
    async fn claim(&self, request: &ClaimRequest<'_>) -> Result<Vec<Entry>> {
        self.inner.claim(request).await
    }
    async fn complete(&self, completion: &Completion) -> Result<()> {
        self.inner.complete(completion).await
    }
}

impl Maintenance for AgesDeadEntries {
    async fn purge_published(&self, before: Timestamp, limit: usize) -> Result<u64> {
        self.inner.purge_published(before, limit).await
    }
    async fn stats(&self, now: Timestamp) -> Result<Stats> {
        let mut stats = self.inner.stats(now).await?;
        if self.beside_unpublished && stats.oldest_unpublished_age.is_none() {
            return Ok(stats);
        }
        let ids = self.written.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for id in ids {
            if let Some(e) = self.inner.entry(id).await?
                && e.status == Status::Dead
            {
                let age = now.saturating_duration_since(e.created_at);
                stats.oldest_unpublished_age = Some(stats.oldest_unpublished_age.map_or(age, |a| a.max(age)));
            }
        }
        Ok(stats)
    }
    async fn requeue_dead(&self, which: Requeue<'_>, now: Timestamp) -> Result<u64> {
        self.inner.requeue_dead(which, now).await
    }
    async fn entry(&self, id: EntryId) -> Result<Option<Entry>> {
        self.inner.entry(id).await
    }
}

struct AgesDeadHarness(AgesDeadEntries);

impl Harness for AgesDeadHarness {
    type Store = AgesDeadEntries;
    fn store(&self) -> AgesDeadEntries {
        self.0.clone()
    }
    async fn open_store(&self) -> Result<AgesDeadEntries> {
        Ok(self.0.clone())
    }
    async fn write(&self, entries: Vec<NewEntry>, commit: bool) -> Result<()> {
        let ids: Vec<EntryId> = entries.iter().map(NewEntry::id).collect();
        MemoryHarness(self.0.inner.clone()).write(entries, commit).await?;
        if commit {
            self.0.written.lock().unwrap_or_else(|p| p.into_inner()).extend(ids);
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_store_that_ages_dead_entries_fails_the_oldest_age_check() {
    let broken = |beside_unpublished| {
        AgesDeadHarness(AgesDeadEntries { inner: MemoryStore::new(), written: Default::default(), beside_unpublished })
    };
    let always = testkit::stats_oldest_age_ignores_dead_entries(&broken(false))
        .await
        .expect_err("a store aging a lone dead entry must fail");
    assert!(always.0.contains("no unpublished age"), "{always}");
    let beside = testkit::stats_oldest_age_ignores_dead_entries(&broken(true))
        .await
        .expect_err("a store aging a dead entry older than a pending one must fail");
    assert!(beside.0.contains("the age of the older dead entry"), "{beside}");
}

#[test]
fn the_suite_reports_a_broken_store_by_panicking() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let result = std::panic::catch_unwind(|| {
        runtime.block_on(testkit::store_suite(|| async {
            Ok(broken(|mut batch| {
                batch.reverse();
                batch
            }))
        }))
    });
    let panic = result.expect_err("the suite must panic on a broken store");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("order_is_kept_per_aggregate"), "{message}");
}
