//! The store checks. Each runs on a fresh outbox and returns what went wrong.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use super::{CheckResult, Failure, Harness, ensure};
use crate::entry::{Entry, EntryId, NewEntry};
use crate::error::{Error, ErrorKind};
use crate::memory::{CollectingPublisher, ScriptedPublisher};
use crate::publisher::{Outcome, Publisher};
use crate::relay::{BatchReport, Relay, RelayConfig};
use crate::retry::ExponentialBackoff;
use crate::status::Status;
use crate::store::{ClaimRequest, Completion, DeadPolicy, Maintenance, MaintenanceExt, Requeue, Store};
use crate::time::{Clock, ManualClock, Timestamp};

const TYPE: &str = "testkit";

/// Entry `n` of aggregate `aggregate`; its payload is `"<aggregate>/<n>"`.
fn entry(aggregate: &str, n: usize) -> NewEntry {
    match NewEntry::builder(TYPE, aggregate, "testkit.happened")
        .payload(format!("{aggregate}/{n}"), "text/plain")
        .header("x-n", n.to_string())
        .build()
    {
        Ok(e) => e,
        Err(e) => unreachable!("the testkit's own entries are valid: {e}"),
    }
}

fn payload(e: &Entry) -> String {
    String::from_utf8_lossy(e.payload.as_bytes()).into_owned()
}

fn index_of(e: &Entry) -> usize {
    payload(e).rsplit('/').next().and_then(|n| n.parse().ok()).unwrap_or(usize::MAX)
}

fn config(clock: Option<Arc<ManualClock>>) -> RelayConfig {
    let mut c = RelayConfig {
        relay_id: format!("testkit-{}", EntryId::generate()),
        batch_size: 100,
        max_per_aggregate: 10,
        // Retries are due an hour later unless a check moves its clock.
        retry: Arc::new(ExponentialBackoff::new(Duration::from_secs(3600), 1, Duration::from_secs(3600), 100)),
        poll_interval: Duration::from_millis(5),
        max_poll_interval: Duration::from_millis(50),
        ..RelayConfig::default()
    };
    if let Some(clock) = clock {
        c.clock = clock;
    }
    c
}

fn relay<S: Store, P: Publisher>(store: S, publisher: P, config: RelayConfig) -> Result<Relay<S, P>, Failure> {
    Relay::new(store, publisher, config).map_err(|e| Failure(format!("relay config rejected: {e}")))
}

/// Runs batches until one claims nothing; fails if that takes more than `max_batches`.
async fn drain<S: Store, P: Publisher>(relay: &Relay<S, P>, max_batches: usize) -> Result<Vec<BatchReport>, Failure> {
    let mut reports = Vec::new();
    for _ in 0..max_batches {
        let report = relay.run_once().await?;
        if report.claimed == 0 {
            return Ok(reports);
        }
        reports.push(report);
    }
    Err(Failure(format!("the outbox did not drain within {max_batches} batches: {reports:?}")))
}

async fn status_of<M: Maintenance>(store: &M, id: EntryId) -> Result<Entry, Failure> {
    store.entry(id).await?.ok_or_else(|| Failure(format!("entry {id} is missing from the store")))
}

/// Checks that `published` holds exactly `expected` ids once each, and keeps each aggregate's
/// entries in ascending index order.
fn exactly_once_in_order(published: &[Entry], expected: &HashSet<EntryId>) -> CheckResult {
    let mut seen = HashSet::new();
    let mut last: HashMap<&str, usize> = HashMap::new();
    for e in published {
        ensure!(seen.insert(e.id), "entry {} ({}) was published twice", e.id, payload(e));
        ensure!(expected.contains(&e.id), "entry {} ({}) was published but never committed", e.id, payload(e));
        let n = index_of(e);
        if let Some(prev) = last.insert(&e.aggregate_id, n) {
            ensure!(prev < n, "aggregate {} was published out of order: {} after {}", e.aggregate_id, n, prev);
        }
    }
    ensure!(seen.len() == expected.len(), "{} of {} committed entries were published", seen.len(), expected.len());
    Ok(())
}

/// Entries of a rolled-back transaction are never claimed; committed ones are.
pub async fn rolled_back_entries_are_never_published<H: Harness>(h: &H) -> CheckResult {
    let rolled_back: Vec<NewEntry> = (0..3).map(|n| entry("rolled-back", n)).collect();
    let committed: Vec<NewEntry> = (0..2).map(|n| entry("committed", n)).collect();
    let expected: HashSet<EntryId> = committed.iter().map(NewEntry::id).collect();
    h.write(rolled_back.clone(), false).await?;
    h.write(committed, true).await?;
    let publisher = CollectingPublisher::new();
    drain(&relay(h.store(), publisher.clone(), config(None))?, 10).await?;
    exactly_once_in_order(&publisher.published(), &expected)?;
    for e in &rolled_back {
        ensure!(h.store().entry(e.id()).await?.is_none(), "rolled-back entry {} is in the store", e.id());
    }
    let stats = h.store().stats(Timestamp::now()).await?;
    ensure!(stats.published == 2 && stats.pending == 0, "expected 2 published and nothing else, got {stats:?}");
    Ok(())
}

/// Every field an application writes comes back unchanged.
pub async fn entries_round_trip_unchanged<H: Harness>(h: &H) -> CheckResult {
    let id = EntryId::generate();
    let bytes: Vec<u8> = (0..=255u8).collect();
    let written = NewEntry::builder("order", "o-ü-1", "order.placed")
        .id(id)
        .payload(bytes.clone(), "application/octet-stream")
        .correlation_id("corr-1")
        .traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .header("x-b", "2")
        .header("x-a", "1 ✓")
        .not_before(Timestamp::now().saturating_sub(Duration::from_secs(1)))
        .build()
        .map_err(|e| Failure(e.to_string()))?;
    h.write(vec![written.clone()], true).await?;
    let store = h.store();
    let now = Timestamp::now();
    let claimed = store
        .claim(&ClaimRequest {
            holder: "testkit-roundtrip",
            now,
            lease_until: now.saturating_add(Duration::from_secs(30)),
            max_entries: 10,
            max_per_aggregate: 10,
            on_dead: DeadPolicy::Block,
        })
        .await?;
    ensure!(claimed.len() == 1, "expected to claim the 1 entry written, claimed {}", claimed.len());
    let e = &claimed[0];
    ensure!(e.id == id, "id changed: wrote {id}, read {}", e.id);
    ensure!(e.aggregate_type == "order" && e.aggregate_id == "o-ü-1", "aggregate changed: {e:?}");
    ensure!(e.event_type == "order.placed", "event type changed: {}", e.event_type);
    ensure!(e.payload.as_bytes() == bytes.as_slice(), "payload bytes changed");
    ensure!(e.content_type == "application/octet-stream", "content type changed: {}", e.content_type);
    ensure!(e.headers == *written.headers(), "headers changed: wrote {:?}, read {:?}", written.headers(), e.headers);
    ensure!(e.status == Status::Processing && e.attempts == 0, "a fresh claim is processing with no attempts: {e:?}");
    ensure!(e.sequence > 0, "sequences start above zero, got {}", e.sequence);
    ensure!(
        e.lease.as_ref().is_some_and(|l| l.holder == "testkit-roundtrip"),
        "the claim's lease names its holder: {:?}",
        e.lease
    );
    ensure!(e.created_at <= Timestamp::now(), "created_at is in the future: {:?}", e.created_at);
    let done = Timestamp::now();
    store
        .complete(&Completion {
            holder: "testkit-roundtrip".into(),
            now: done,
            published: vec![id],
            ..Completion::default()
        })
        .await?;
    let after = status_of(&store, id).await?;
    ensure!(after.status == Status::Published, "completion did not publish: {after:?}");
    ensure!(after.published_at.is_some() && after.lease.is_none(), "published entry keeps a time, no lease: {after:?}");
    Ok(())
}

/// Writing an id that exists fails, and neither the existing entry nor the rest of that
/// transaction is harmed.
pub async fn duplicate_id_is_rejected_without_harm<H: Harness>(h: &H) -> CheckResult {
    let original = entry("dup", 0);
    h.write(vec![original.clone()], true).await?;
    let other = entry("dup-other", 0);
    let duplicate = NewEntry::builder(TYPE, "dup-2", "testkit.other")
        .id(original.id())
        .payload("replacement", "text/plain")
        .build()
        .map_err(|e| Failure(e.to_string()))?;
    let result = h.write(vec![other.clone(), duplicate], true).await;
    ensure!(result.is_err(), "writing a duplicate id succeeded; it must fail");
    let kept = status_of(&h.store(), original.id()).await?;
    ensure!(payload(&kept) == "dup/0", "the original entry was overwritten: {}", payload(&kept));
    ensure!(
        h.store().entry(other.id()).await?.is_none(),
        "the failed transaction was partly committed: {} is in the store",
        other.id()
    );
    Ok(())
}

/// Sequences of one aggregate increase in commit order.
pub async fn sequences_follow_commit_order<H: Harness>(h: &H) -> CheckResult {
    let mut ids = Vec::new();
    for n in 0..6 {
        let e = entry("seq", n);
        if n == 3 {
            h.write(vec![e], false).await?; // a rolled-back write in the middle may leave a gap
            continue;
        }
        ids.push(e.id());
        h.write(vec![e], true).await?;
    }
    let store = h.store();
    let mut sequences = Vec::new();
    for id in &ids {
        sequences.push(status_of(&store, *id).await?.sequence);
    }
    ensure!(sequences.windows(2).all(|w| w[0] < w[1]), "sequences do not follow commit order: {sequences:?}");
    Ok(())
}

/// Interleaved writes to several aggregates come out once each, in order per aggregate, with
/// small batches that split aggregates across claims.
pub async fn order_is_kept_per_aggregate<H: Harness>(h: &H) -> CheckResult {
    let mut expected = HashSet::new();
    let mut pending = Vec::new();
    for n in 0..25 {
        for a in 0..6 {
            let e = entry(&format!("agg-{a}"), n);
            expected.insert(e.id());
            pending.push(e);
            if pending.len() == 10 {
                h.write(std::mem::take(&mut pending), true).await?;
            }
        }
    }
    h.write(pending, true).await?;
    let publisher = CollectingPublisher::new();
    let c = RelayConfig { batch_size: 7, max_per_aggregate: 3, ..config(None) };
    drain(&relay(h.store(), publisher.clone(), c)?, 200).await?;
    exactly_once_in_order(&publisher.published(), &expected)
}

/// A failing entry stops its own aggregate and no other.
pub async fn failing_aggregate_holds_back_only_itself<H: Harness>(h: &H) -> CheckResult {
    let mut ids = HashMap::new();
    for a in ["a", "b", "c"] {
        let entries: Vec<NewEntry> = (0..5).map(|n| entry(a, n)).collect();
        ids.insert(a, entries.iter().map(NewEntry::id).collect::<Vec<_>>());
        h.write(entries, true).await?;
    }
    let publisher = ScriptedPublisher::new(|e| {
        (payload(e) == "b/1").then(|| Error::new(ErrorKind::Timeout, "scripted: no ack for b/1"))
    });
    let c = RelayConfig { batch_size: 4, max_per_aggregate: 2, ..config(None) };
    drain(&relay(h.store(), publisher.clone(), c)?, 50).await?;
    let published: Vec<String> = publisher.published().iter().map(payload).collect();
    for a in ["a", "c"] {
        let mine: Vec<&String> = published.iter().filter(|p| p.starts_with(&format!("{a}/"))).collect();
        ensure!(mine.len() == 5, "aggregate {a} was held back by b's failure: published {mine:?}");
    }
    let store = h.store();
    let b1 = status_of(&store, ids["b"][1]).await?;
    ensure!(b1.status == Status::Failed && b1.attempts == 1, "b/1 should be failed with 1 attempt: {b1:?}");
    ensure!(b1.last_error.as_deref().is_some_and(|m| m.contains("scripted")), "b/1 keeps its error: {b1:?}");
    for id in &ids["b"][2..] {
        let e = status_of(&store, *id).await?;
        ensure!(
            e.status == Status::Pending && e.attempts == 0,
            "{} must wait, unpublished and unattempted, behind b/1: {e:?}",
            payload(&e)
        );
    }
    ensure!(status_of(&store, ids["b"][0]).await?.status == Status::Published, "b/0 came before the failure");
    Ok(())
}

/// When an entry fails inside a batch, the later entries of its aggregate in that batch are
/// released: unpublished and with no attempt counted, and they go out after it, in order.
pub async fn batch_failure_releases_later_entries<H: Harness>(h: &H) -> CheckResult {
    let entries: Vec<NewEntry> = (0..4).map(|n| entry("batch", n)).collect();
    let ids: Vec<EntryId> = entries.iter().map(NewEntry::id).collect();
    h.write(entries, true).await?;
    let failed_once = Arc::new(AtomicBool::new(false));
    let flag = failed_once.clone();
    let publisher = ScriptedPublisher::new(move |e| {
        (payload(e) == "batch/1" && !flag.swap(true, Ordering::SeqCst))
            .then(|| Error::new(ErrorKind::Timeout, "scripted: no ack for batch/1"))
    });
    let clock = Arc::new(ManualClock::new(Timestamp::now()));
    let relay = relay(h.store(), publisher.clone(), config(Some(clock.clone())))?;
    let first = relay.run_once().await?;
    ensure!(
        first == BatchReport { claimed: 4, published: 1, retried: 1, dead: 0, released: 2 },
        "one batch of 4 with the 2nd failing: expected 1 published, 1 retried, 2 released; got {first:?}"
    );
    let store = h.store();
    for id in &ids[2..] {
        let e = status_of(&store, *id).await?;
        ensure!(
            e.status == Status::Pending && e.attempts == 0 && e.lease.is_none(),
            "released entry must be pending, unattempted and unleased: {e:?}"
        );
    }
    ensure!(relay.run_once().await?.claimed == 0, "nothing of the aggregate is due before the retry");
    clock.advance(Duration::from_secs(3601));
    drain(&relay, 10).await?;
    for (n, id) in ids.iter().enumerate() {
        let e = status_of(&store, *id).await?;
        ensure!(e.status == Status::Published, "batch/{n} should be published in the end: {e:?}");
        let attempts = u32::from(n == 1);
        ensure!(e.attempts == attempts, "batch/{n} should count {attempts} failed attempts: {e:?}");
    }
    Ok(())
}

/// Retryable failures are retried until the policy gives up; the dead entry blocks its
/// aggregate (default policy) until an operator requeues it, then everything goes out in order.
pub async fn retries_until_dead_then_requeue<H: Harness>(h: &H) -> CheckResult {
    let entries: Vec<NewEntry> = (0..2).map(|n| entry("retry", n)).collect();
    let ids: Vec<EntryId> = entries.iter().map(NewEntry::id).collect();
    h.write(entries, true).await?;
    let healed = Arc::new(AtomicBool::new(false));
    let flag = healed.clone();
    let publisher = ScriptedPublisher::new(move |e| {
        (payload(e) == "retry/0" && !flag.load(Ordering::SeqCst))
            .then(|| Error::new(ErrorKind::Timeout, "scripted: no ack for retry/0"))
    });
    let clock = Arc::new(ManualClock::new(Timestamp::now()));
    let c = RelayConfig {
        retry: Arc::new(ExponentialBackoff::new(Duration::from_secs(1), 1, Duration::from_secs(1), 3)),
        ..config(Some(clock.clone()))
    };
    let relay = relay(h.store(), publisher.clone(), c)?;
    for _ in 0..5 {
        relay.run_once().await?;
        clock.advance(Duration::from_secs(2));
    }
    let store = h.store();
    let dead = status_of(&store, ids[0]).await?;
    ensure!(dead.status == Status::Dead && dead.attempts == 3, "after 3 failed attempts the entry is dead: {dead:?}");
    ensure!(dead.last_error.as_deref().is_some_and(|m| m.contains("no ack for retry/0")), "dead entry keeps its error");
    let blocked = status_of(&store, ids[1]).await?;
    ensure!(
        blocked.status == Status::Pending && blocked.attempts == 0,
        "the dead entry blocks its aggregate: retry/1 must stay pending, got {blocked:?}"
    );
    ensure!(store.stats(clock.now()).await?.dead == 1, "stats count the dead entry");
    // The broker may have seen retry/1 once (it shared a batch with the failing entry and was
    // released, not marked published): the guarantee is that the store holds it back, checked
    // above. From here on, only what is published after the requeue counts.
    healed.store(true, Ordering::SeqCst);
    let before = publisher.published().len();
    let requeued = store.requeue_dead(Requeue::Ids(&ids), clock.now()).await?;
    ensure!(requeued == 1, "requeue of [dead, pending] requeues the dead one only, got {requeued}");
    let again = status_of(&store, ids[0]).await?;
    ensure!(again.status == Status::Pending && again.attempts == 0, "requeued entry starts over: {again:?}");
    drain(&relay, 10).await?;
    let order: Vec<String> = publisher.published()[before..].iter().map(payload).collect();
    ensure!(order == ["retry/0", "retry/1"], "after requeue both go out in order, got {order:?}");
    Ok(())
}

/// A permanent error kills the entry at once (one attempt); with [`DeadPolicy::Skip`] the later
/// entries of its aggregate still go out. Requeuing by aggregate brings it back.
pub async fn permanent_error_is_dead_at_once_and_skip_lets_later_pass<H: Harness>(h: &H) -> CheckResult {
    let entries: Vec<NewEntry> = (0..3).map(|n| entry("perm", n)).collect();
    let ids: Vec<EntryId> = entries.iter().map(NewEntry::id).collect();
    h.write(entries, true).await?;
    let healed = Arc::new(AtomicBool::new(false));
    let flag = healed.clone();
    let publisher = ScriptedPublisher::new(move |e| {
        (payload(e) == "perm/0" && !flag.load(Ordering::SeqCst))
            .then(|| Error::new(ErrorKind::Rejected, "scripted: not authorized"))
    });
    let relay = relay(h.store(), publisher.clone(), RelayConfig { on_dead: DeadPolicy::Skip, ..config(None) })?;
    drain(&relay, 10).await?;
    let store = h.store();
    let dead = status_of(&store, ids[0]).await?;
    ensure!(dead.status == Status::Dead && dead.attempts == 1, "a permanent error is dead after 1 attempt: {dead:?}");
    let order: Vec<String> = publisher.published().iter().map(payload).collect();
    ensure!(order == ["perm/1", "perm/2"], "with Skip, later entries pass the dead one; got {order:?}");
    healed.store(true, Ordering::SeqCst);
    let n =
        store.requeue_dead(Requeue::Aggregate { aggregate_type: TYPE, aggregate_id: "perm" }, Timestamp::now()).await?;
    ensure!(n == 1, "requeue by aggregate finds the 1 dead entry, got {n}");
    drain(&relay, 10).await?;
    ensure!(status_of(&store, ids[0]).await?.status == Status::Published, "the requeued entry is published");
    Ok(())
}

/// A claim whose holder crashed lapses: after the lease the entries are claimed again, in order,
/// and the crashed holder's late completion changes nothing.
pub async fn lease_expiry_makes_entries_claimable_again<H: Harness>(h: &H) -> CheckResult {
    let entries: Vec<NewEntry> = (0..3).map(|n| entry("lease", n)).collect();
    let ids: Vec<EntryId> = entries.iter().map(NewEntry::id).collect();
    h.write(entries, true).await?;
    let store = h.store();
    let t0 = Timestamp::now();
    let claim = |holder: &'static str, now: Timestamp| {
        let store = store.clone();
        async move {
            store
                .claim(&ClaimRequest {
                    holder,
                    now,
                    lease_until: now.saturating_add(Duration::from_secs(10)),
                    max_entries: 10,
                    max_per_aggregate: 10,
                    on_dead: DeadPolicy::Block,
                })
                .await
        }
    };
    let first: Vec<EntryId> = claim("crashed", t0).await?.iter().map(|e| e.id).collect();
    ensure!(first == ids, "the first claim takes all 3 in order, got {first:?}");
    let during = claim("second", t0.saturating_add(Duration::from_secs(5))).await?;
    ensure!(during.is_empty(), "entries under a live lease were claimed again: {during:?}");
    let after: Vec<EntryId> =
        claim("second", t0.saturating_add(Duration::from_secs(11))).await?.iter().map(|e| e.id).collect();
    ensure!(after == ids, "after the lease lapsed the entries are claimable again, in order; got {after:?}");
    let late = Completion {
        holder: "crashed".into(),
        now: t0.saturating_add(Duration::from_secs(12)),
        published: ids.clone(),
        ..Completion::default()
    };
    store.complete(&late).await?;
    for id in &ids {
        let e = status_of(&store, *id).await?;
        ensure!(
            e.status == Status::Processing && e.lease.as_ref().is_some_and(|l| l.holder == "second"),
            "a lapsed holder's completion must change nothing: {e:?}"
        );
    }
    store.complete(&Completion { holder: "second".into(), published: ids.clone(), ..late }).await?;
    for id in &ids {
        ensure!(status_of(&store, *id).await?.status == Status::Published, "the new holder completes {id}");
    }
    Ok(())
}

/// An entry with `not_before` waits until then, and so do the later entries of its aggregate;
/// other aggregates are not delayed.
pub async fn delayed_entries_wait_and_hold_back_their_aggregate<H: Harness>(h: &H) -> CheckResult {
    let t0 = Timestamp::now();
    let later = t0.saturating_add(Duration::from_secs(3600));
    let delayed = NewEntry::builder(TYPE, "delayed", "testkit.happened")
        .payload("delayed/0", "text/plain")
        .not_before(later)
        .build()
        .map_err(|e| Failure(e.to_string()))?;
    h.write(vec![delayed, entry("delayed", 1), entry("prompt", 0)], true).await?;
    let clock = Arc::new(ManualClock::new(t0.saturating_add(Duration::from_secs(1))));
    let publisher = CollectingPublisher::new();
    let relay = relay(h.store(), publisher.clone(), config(Some(clock.clone())))?;
    drain(&relay, 10).await?;
    let first: Vec<String> = publisher.take().iter().map(payload).collect();
    ensure!(first == ["prompt/0"], "before its time only the other aggregate goes out; got {first:?}");
    clock.set(later.saturating_add(Duration::from_secs(1)));
    drain(&relay, 10).await?;
    let second: Vec<String> = publisher.take().iter().map(payload).collect();
    ensure!(
        second == ["delayed/0", "delayed/1"],
        "when due, the delayed entry and its successor go in order; got {second:?}"
    );
    Ok(())
}

/// Purge deletes published entries older than the cutoff, in chunks, and nothing else.
pub async fn purge_removes_only_old_published_in_chunks<H: Harness>(h: &H) -> CheckResult {
    let old: Vec<NewEntry> = (0..10).map(|n| entry("purge-old", n)).collect();
    let old_ids: Vec<EntryId> = old.iter().map(NewEntry::id).collect();
    h.write(old, true).await?;
    let t1 = Timestamp::now().saturating_add(Duration::from_secs(1));
    let clock = Arc::new(ManualClock::new(t1));
    let relay = relay(h.store(), CollectingPublisher::new(), config(Some(clock.clone())))?;
    drain(&relay, 10).await?;
    clock.advance(Duration::from_secs(3600));
    h.write((0..4).map(|n| entry("purge-new", n)).collect(), true).await?;
    drain(&relay, 10).await?;
    h.write((0..3).map(|n| entry("purge-pending", n)).collect(), true).await?;
    let store = h.store();
    let cutoff = t1.saturating_add(Duration::from_secs(60));
    let first = store.purge_published(cutoff, 3).await?;
    ensure!(first == 3, "one chunk of 3 deletes 3, deleted {first}");
    let rest = store.purge_published_all(cutoff, 3).await?;
    ensure!(rest == 7, "the remaining 7 old entries are purged in chunks, purged {rest}");
    ensure!(store.purge_published(cutoff, 3).await? == 0, "nothing old is left to purge");
    ensure!(store.entry(old_ids[0]).await?.is_none(), "a purged entry is gone");
    let stats = store.stats(clock.now()).await?;
    ensure!(stats.published == 4 && stats.pending == 3, "newer published and pending entries are kept: {stats:?}");
    Ok(())
}

/// Stats count every status and the age of the oldest unpublished entry.
pub async fn stats_count_each_status_and_the_oldest_age<H: Harness>(h: &H) -> CheckResult {
    let store = h.store();
    let stuck = entry("stats-stuck", 0);
    let stuck_id = stuck.id();
    h.write(vec![stuck], true).await?;
    let now = Timestamp::now();
    let claimed = store
        .claim(&ClaimRequest {
            holder: "testkit-stuck",
            now,
            lease_until: now.saturating_add(Duration::from_secs(3600)),
            max_entries: 10,
            max_per_aggregate: 10,
            on_dead: DeadPolicy::Block,
        })
        .await?;
    ensure!(claimed.len() == 1, "claimed the one entry written, got {}", claimed.len());
    let future = Timestamp::now().saturating_add(Duration::from_secs(7200));
    let delayed = |n| {
        NewEntry::builder(TYPE, "stats-delayed", "testkit.happened")
            .payload(format!("stats-delayed/{n}"), "text/plain")
            .not_before(future)
            .build()
            .map_err(|e| Failure(e.to_string()))
    };
    h.write(
        vec![entry("stats-ok", 0), entry("stats-retry", 0), entry("stats-dead", 0), delayed(0)?, delayed(1)?],
        true,
    )
    .await?;
    let publisher = ScriptedPublisher::new(|e| match e.aggregate_id.as_str() {
        "stats-retry" => Some(Error::new(ErrorKind::Timeout, "scripted: retry me")),
        "stats-dead" => Some(Error::new(ErrorKind::Rejected, "scripted: reject me")),
        _ => None,
    });
    relay(h.store(), publisher, config(None))?.run_once().await?;
    let created = status_of(&store, stuck_id).await?.created_at;
    let stats = store.stats(created.saturating_add(Duration::from_secs(10))).await?;
    let counts = (stats.pending, stats.processing, stats.published, stats.failed, stats.dead);
    ensure!(
        counts == (2, 1, 1, 1, 1),
        "expected (pending, processing, published, failed, dead) = (2, 1, 1, 1, 1), got {stats:?}"
    );
    ensure!(
        stats.oldest_unpublished_age == Some(Duration::from_secs(10)),
        "the oldest unpublished entry is 10 s old at the time asked, got {:?}",
        stats.oldest_unpublished_age
    );
    Ok(())
}

/// The oldest unpublished age counts only entries that still have to reach the broker
/// ([`Status::is_unpublished`]: pending, processing, failed). A dead entry waits for an operator,
/// not for the relay: however old, it must not make the backlog look old (operators see it in
/// the dead count instead).
pub async fn stats_oldest_age_ignores_dead_entries<H: Harness>(h: &H) -> CheckResult {
    let store = h.store();
    let old = entry("stats-age-dead", 0);
    let old_id = old.id();
    h.write(vec![old], true).await?;
    let clock = Arc::new(ManualClock::new(Timestamp::now()));
    let publisher = ScriptedPublisher::new(|e| {
        (e.aggregate_id == "stats-age-dead").then(|| Error::new(ErrorKind::Rejected, "scripted: reject me"))
    });
    let report = relay(h.store(), publisher, config(Some(clock.clone())))?.run_once().await?;
    ensure!(report.dead == 1, "the rejected entry should be dead after one batch, got {report:?}");
    let dead = status_of(&store, old_id).await?;
    ensure!(dead.status == Status::Dead, "the rejected entry should be dead: {dead:?}");
    clock.set(dead.created_at.saturating_add(Duration::from_secs(3600)));
    let only_dead = store.stats(clock.now()).await?;
    ensure!(
        only_dead.dead == 1 && only_dead.oldest_unpublished_age.is_none(),
        "with one dead entry and nothing else there is no unpublished age (dead entries do not count), got {only_dead:?}"
    );
    // A younger entry, written strictly later than the dead one.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let young = entry("stats-age-young", 0);
    let young_id = young.id();
    h.write(vec![young], true).await?;
    let young_created = status_of(&store, young_id).await?.created_at;
    ensure!(
        young_created > dead.created_at,
        "setup: an entry written 10 ms after another has an earlier or equal created_at ({young_created:?} vs {:?})",
        dead.created_at
    );
    clock.set(young_created.saturating_add(Duration::from_secs(3600)));
    let stats = store.stats(clock.now()).await?;
    ensure!((stats.pending, stats.dead) == (1, 1), "expected 1 pending and 1 dead entry, got {stats:?}");
    let counted_dead = clock.now().saturating_duration_since(dead.created_at);
    ensure!(
        stats.oldest_unpublished_age == Some(Duration::from_secs(3600)),
        "the oldest unpublished entry is the pending one, 3600 s old at the time asked; got {:?}{}",
        stats.oldest_unpublished_age,
        if stats.oldest_unpublished_age == Some(counted_dead) {
            " (the age of the older dead entry: count only pending, processing and failed entries)"
        } else {
            ""
        }
    );
    Ok(())
}

/// A published entry is never handed out again, however late the claim.
pub async fn published_entries_are_never_claimed_again<H: Harness>(h: &H) -> CheckResult {
    h.write((0..3).map(|n| entry("once", n)).collect(), true).await?;
    drain(&relay(h.store(), CollectingPublisher::new(), config(None))?, 10).await?;
    let far = Timestamp::now().saturating_add(Duration::from_secs(86_400 * 365));
    let again = h
        .store()
        .claim(&ClaimRequest {
            holder: "testkit-late",
            now: far,
            lease_until: far.saturating_add(Duration::from_secs(30)),
            max_entries: 100,
            max_per_aggregate: 100,
            on_dead: DeadPolicy::Block,
        })
        .await?;
    ensure!(again.is_empty(), "published entries were claimed again: {again:?}");
    Ok(())
}

/// Thousands of entries written in one transaction drain in large batches, in order.
pub async fn large_batches_drain_in_order<H: Harness>(h: &H) -> CheckResult {
    let mut entries = Vec::new();
    for n in 0..500 {
        for a in 0..10 {
            entries.push(entry(&format!("large-{a}"), n));
        }
    }
    let expected: HashSet<EntryId> = entries.iter().map(NewEntry::id).collect();
    h.write(entries, true).await?;
    let publisher = CollectingPublisher::new();
    let c = RelayConfig { batch_size: 2000, max_per_aggregate: 500, ..config(None) };
    let reports = drain(&relay(h.store(), publisher.clone(), c)?, 100).await?;
    ensure!(reports.iter().all(|r| r.claimed <= 2000), "a batch exceeded batch_size: {reports:?}");
    ensure!(reports.iter().any(|r| r.claimed >= 1000), "large batches should be claimed whole-ish: {reports:?}");
    exactly_once_in_order(&publisher.published(), &expected)
}

/// A publisher that yields to the scheduler so that concurrent relays interleave.
#[derive(Clone, Debug, Default)]
struct YieldingPublisher {
    inner: CollectingPublisher,
    calls: Arc<AtomicUsize>,
}

impl Publisher for YieldingPublisher {
    async fn publish(&self, batch: &[Entry]) -> crate::Result<Vec<Outcome>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        tokio::task::yield_now().await;
        self.inner.publish(batch).await
    }
}

/// Three relays, each with its own store handle, drain one outbox concurrently: every entry is
/// published exactly once and each aggregate stays in order.
pub async fn concurrent_relays_publish_each_entry_once_in_order<H: Harness>(h: &H) -> CheckResult {
    let mut expected = HashSet::new();
    let mut batch = Vec::new();
    for n in 0..50 {
        for a in 0..40 {
            let e = entry(&format!("conc-{a}"), n);
            expected.insert(e.id());
            batch.push(e);
            if batch.len() == 40 {
                h.write(std::mem::take(&mut batch), true).await?;
            }
        }
    }
    let total = expected.len();
    let publisher = YieldingPublisher::default();
    let mut tasks = Vec::new();
    for i in 0..3 {
        let store = if i == 0 { h.store() } else { h.open_store().await? };
        let c = RelayConfig { batch_size: 100, max_per_aggregate: 5, ..config(None) };
        let relay = relay(store, publisher.clone(), c)?;
        let published = publisher.inner.clone();
        tasks.push(tokio::spawn(async move {
            let mut idle = 0;
            for _ in 0..10_000 {
                let report = relay.run_once().await?;
                if report.claimed == 0 {
                    if published.len() >= total || idle > 200 {
                        return Ok::<_, Error>(());
                    }
                    idle += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                } else {
                    idle = 0;
                }
            }
            Ok(())
        }));
    }
    for task in tasks {
        task.await.map_err(|e| Failure(format!("a relay task panicked: {e}")))??;
    }
    exactly_once_in_order(&publisher.inner.published(), &expected)
}
