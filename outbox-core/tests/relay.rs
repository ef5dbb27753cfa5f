//! The relay's own behaviour: wake-ups, shutdown, timeouts, observer, concurrency, store errors.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers may unwrap

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox_core::{
    ClaimRequest, CollectingPublisher, Completion, DynPublisher, DynStore, Entry, Error, ErrorKind, ExponentialBackoff,
    Maintenance, MemoryStore, NewEntry, Outcome, Publisher, Relay, RelayConfig, RelayEvent, Result, ScriptedPublisher,
    Status, Store, Timestamp,
};
use tokio::sync::{Notify, oneshot};

fn entry(aggregate: &str, n: usize) -> NewEntry {
    NewEntry::builder("order", aggregate, "order.changed")
        .payload(format!("{aggregate}/{n}"), "text/plain")
        .build()
        .unwrap()
}

fn payload(e: &Entry) -> String {
    String::from_utf8_lossy(e.payload.as_bytes()).into_owned()
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out after 10 s waiting for: {what}");
}

fn quiet_config() -> RelayConfig {
    // A poll interval far longer than any test: only a wake-up can make the relay claim again.
    RelayConfig {
        poll_interval: Duration::from_secs(60),
        max_poll_interval: Duration::from_secs(60),
        ..RelayConfig::default()
    }
}

#[tokio::test]
async fn a_commit_wakes_the_idle_relay_at_once() {
    let store = MemoryStore::new();
    let publisher = CollectingPublisher::new();
    let relay = Arc::new(Relay::new(store.clone(), publisher.clone(), quiet_config()).unwrap());
    store.notify_on_commit(relay.wakeup());
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn({
        let relay = relay.clone();
        async move { relay.run(async { stopped.await.unwrap_or(()) }).await }
    });
    // Let the relay find the outbox empty and go to sleep for its 60 s poll interval.
    tokio::time::sleep(Duration::from_millis(50)).await;
    store.enqueue([entry("o-1", 0)]).unwrap();
    eventually("the entry committed while the relay slept is published", || publisher.len() == 1).await;
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
}

/// A publisher that blocks inside `publish` until the test opens the gate.
#[derive(Clone, Default)]
struct GatedPublisher {
    entered: Arc<Notify>,
    gate: Arc<Notify>,
    inner: CollectingPublisher,
}

impl Publisher for GatedPublisher {
    async fn publish(&self, batch: &[Entry]) -> Result<Vec<Outcome>> {
        self.entered.notify_one();
        self.gate.notified().await;
        self.inner.publish(batch).await
    }
}

#[tokio::test]
async fn shutdown_finishes_the_batch_in_flight_then_stops_claiming() {
    let store = MemoryStore::new();
    let publisher = GatedPublisher::default();
    let relay = Arc::new(Relay::new(store.clone(), publisher.clone(), quiet_config()).unwrap());
    store.enqueue((0..3).map(|n| entry("o-1", n))).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn({
        let relay = relay.clone();
        async move { relay.run(async { stopped.await.unwrap_or(()) }).await }
    });
    publisher.entered.notified().await; // the batch is in flight
    stop.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!running.is_finished(), "run must wait for the batch in flight");
    store.enqueue([entry("o-2", 0)]).unwrap(); // arrives during shutdown
    publisher.gate.notify_one();
    running.await.unwrap().unwrap();
    let stats = store.stats(Timestamp::now()).await.unwrap();
    assert_eq!((stats.published, stats.processing, stats.pending), (3, 0, 1), "{stats:?}");
}

/// A publisher that never answers.
#[derive(Clone, Copy, Default)]
struct Hanging;

impl Publisher for Hanging {
    async fn publish(&self, _: &[Entry]) -> Result<Vec<Outcome>> {
        std::future::pending().await
    }
}

#[tokio::test]
async fn a_publish_that_times_out_is_a_retryable_failure() {
    let store = MemoryStore::new();
    store.enqueue((0..2).map(|n| entry(&format!("o-{n}"), 0))).unwrap();
    let config = RelayConfig { publish_timeout: Duration::from_millis(30), ..RelayConfig::default() };
    let relay = Relay::new(store.clone(), Hanging, config).unwrap();
    let report = relay.run_once().await.unwrap();
    assert_eq!((report.claimed, report.retried, report.published), (2, 2, 0));
    let stats = store.stats(Timestamp::now()).await.unwrap();
    assert_eq!(stats.failed, 2);
}

/// Returns one outcome too few.
#[derive(Clone, Copy, Default)]
struct Miscounting;

impl Publisher for Miscounting {
    async fn publish(&self, batch: &[Entry]) -> Result<Vec<Outcome>> {
        Ok(batch.iter().skip(1).map(|_| Outcome::Published).collect())
    }
}

#[tokio::test]
async fn a_publisher_that_miscounts_outcomes_publishes_nothing() {
    let store = MemoryStore::new();
    store.enqueue((0..3).map(|n| entry(&format!("o-{n}"), 0))).unwrap();
    let relay = Relay::new(store.clone(), Miscounting, RelayConfig::default()).unwrap();
    let report = relay.run_once().await.unwrap();
    assert_eq!((report.published, report.retried), (0, 3));
    let e = store.entry(store_ids(&store).await[0]).await.unwrap().unwrap();
    assert!(e.last_error.unwrap().contains("2 outcomes for a batch of 3"));
}

async fn store_ids(store: &MemoryStore) -> Vec<outbox_core::EntryId> {
    let now = Timestamp::now().saturating_add(Duration::from_secs(86_400));
    let claimed = store
        .claim(&ClaimRequest {
            holder: "peek",
            now,
            lease_until: now,
            max_entries: 100,
            max_per_aggregate: 100,
            on_dead: Default::default(),
        })
        .await
        .unwrap();
    claimed.iter().map(|e| e.id).collect()
}

#[tokio::test]
async fn the_observer_sees_what_happens() {
    #[derive(Default)]
    struct Seen(Mutex<HashMap<&'static str, usize>>);
    let seen = Arc::new(Seen::default());
    let observer = {
        let seen = seen.clone();
        move |event: &RelayEvent<'_>| {
            let name = match event {
                RelayEvent::Claimed { .. } => "claimed",
                RelayEvent::Published { .. } => "published",
                RelayEvent::RetryScheduled { .. } => "retry",
                RelayEvent::DeadLettered { .. } => "dead",
                RelayEvent::BatchCompleted { .. } => "batch",
                RelayEvent::StoreError { .. } => "store-error",
                _ => "other",
            };
            *seen.0.lock().unwrap().entry(name).or_default() += 1;
        }
    };
    let store = MemoryStore::new();
    store.enqueue([entry("ok", 0), entry("ok", 1), entry("retry", 0), entry("dead", 0)]).unwrap();
    let publisher = ScriptedPublisher::new(|e| match e.aggregate_id.as_str() {
        "retry" => Some(Error::new(ErrorKind::Unavailable, "down")),
        "dead" => Some(Error::new(ErrorKind::TooLarge, "too big")),
        _ => None,
    });
    let config = RelayConfig { observer: Arc::new(observer), ..RelayConfig::default() };
    Relay::new(store, publisher, config).unwrap().run_once().await.unwrap();
    let seen = seen.0.lock().unwrap().clone();
    let expected: HashMap<&str, usize> =
        [("claimed", 1), ("published", 2), ("retry", 1), ("dead", 1), ("batch", 1)].into();
    assert_eq!(seen, expected);
}

#[test]
fn inconsistent_config_is_rejected_up_front() {
    let bad = [
        RelayConfig { batch_size: 0, ..RelayConfig::default() },
        RelayConfig { max_per_aggregate: 0, ..RelayConfig::default() },
        RelayConfig { max_in_flight: 0, ..RelayConfig::default() },
        RelayConfig { relay_id: " ".into(), ..RelayConfig::default() },
        RelayConfig { poll_interval: Duration::ZERO, ..RelayConfig::default() },
        RelayConfig {
            publish_timeout: Duration::from_secs(30),
            lease_duration: Duration::from_secs(30),
            ..RelayConfig::default()
        },
    ];
    for config in bad {
        let shown = format!("{config:?}");
        let err = Relay::new(MemoryStore::new(), CollectingPublisher::new(), config).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{shown}");
        assert!(err.to_string().contains("invalid relay config"), "{err}");
    }
}

#[tokio::test]
async fn run_without_a_timer_says_how_to_get_one() {
    let config = RelayConfig { timer: None, ..RelayConfig::default() };
    let relay = Relay::new(MemoryStore::new(), CollectingPublisher::new(), config).unwrap();
    let err = relay.run(async {}).await.unwrap_err();
    assert!(err.to_string().contains("`tokio` feature"), "{err}");
}

/// Yields inside publish so the relay's batches in flight interleave.
#[derive(Clone, Default)]
struct Yielding(CollectingPublisher, Arc<AtomicUsize>, Arc<AtomicUsize>);

impl Publisher for Yielding {
    async fn publish(&self, batch: &[Entry]) -> Result<Vec<Outcome>> {
        let now = self.1.fetch_add(1, Ordering::SeqCst) + 1;
        self.2.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1)).await;
        let out = self.0.publish(batch).await;
        self.1.fetch_sub(1, Ordering::SeqCst);
        out
    }
}

#[tokio::test]
async fn batches_in_flight_together_keep_order_and_publish_once() {
    let store = MemoryStore::new();
    let mut expected = HashSet::new();
    for n in 0..40 {
        let batch: Vec<NewEntry> = (0..25).map(|a| entry(&format!("o-{a}"), n)).collect();
        expected.extend(batch.iter().map(NewEntry::id));
        store.enqueue(batch).unwrap();
    }
    let publisher = Yielding::default();
    let config = RelayConfig { max_in_flight: 4, batch_size: 20, max_per_aggregate: 2, ..quiet_config() };
    let relay = Arc::new(Relay::new(store.clone(), publisher.clone(), config).unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn({
        let relay = relay.clone();
        async move { relay.run(async { stopped.await.unwrap_or(()) }).await }
    });
    eventually("all 1000 entries are published", || publisher.0.len() >= 1000).await;
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    let published = publisher.0.published();
    assert_eq!(published.len(), 1000, "no entry published twice");
    assert_eq!(published.iter().map(|e| e.id).collect::<HashSet<_>>(), expected);
    let mut last: HashMap<String, usize> = HashMap::new();
    for e in &published {
        let n: usize = payload(e).rsplit('/').next().unwrap().parse().unwrap();
        if let Some(prev) = last.insert(e.aggregate_id.clone(), n) {
            assert!(prev < n, "{} out of order: {n} after {prev}", e.aggregate_id);
        }
    }
    assert!(publisher.2.load(Ordering::SeqCst) > 1, "batches really were in flight together");
}

/// Counts claims; the k-th completion waits (up to `patience`) until claim k + 1 has started
/// (the next batch's), and counts whether it did: one batch at a time, it never would.
#[derive(Clone)]
struct Overlapping {
    inner: MemoryStore,
    claims: Arc<AtomicUsize>,
    completions: Arc<AtomicUsize>,
    overlapped: Arc<AtomicUsize>,
    patience: Duration,
}

impl Overlapping {
    fn new(patience: Duration) -> Self {
        Overlapping {
            inner: MemoryStore::new(),
            claims: Arc::default(),
            completions: Arc::default(),
            overlapped: Arc::default(),
            patience,
        }
    }
}

impl Store for Overlapping {
    async fn claim(&self, request: &ClaimRequest<'_>) -> Result<Vec<Entry>> {
        self.claims.fetch_add(1, Ordering::SeqCst);
        self.inner.claim(request).await
    }
    async fn complete(&self, completion: &Completion) -> Result<()> {
        let k = self.completions.fetch_add(1, Ordering::SeqCst) + 1;
        for _ in 0..self.patience.as_millis() / 10 {
            if self.claims.load(Ordering::SeqCst) > k {
                self.overlapped.fetch_add(1, Ordering::SeqCst);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.inner.complete(completion).await
    }
}

#[tokio::test]
async fn the_next_batch_is_claimed_while_the_last_completion_is_written() {
    let store = Overlapping::new(Duration::from_secs(2));
    let mut expected = HashSet::new();
    let entries: Vec<NewEntry> = (0..30).map(|a| entry(&format!("o-{a}"), 0)).collect();
    expected.extend(entries.iter().map(NewEntry::id));
    store.inner.enqueue(entries).unwrap();
    let publisher = CollectingPublisher::new();
    // One batch at a time (max_in_flight 1): three batches of ten, then an empty claim.
    let config = RelayConfig { batch_size: 10, poll_interval: Duration::from_millis(5), ..RelayConfig::default() };
    let relay = Arc::new(Relay::new(store.clone(), publisher.clone(), config).unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn({
        let relay = relay.clone();
        async move { relay.run(async { stopped.await.unwrap_or(()) }).await }
    });
    eventually("three completions", || store.completions.load(Ordering::SeqCst) >= 3).await;
    eventually("all 30 entries are published", || publisher.len() >= 30).await;
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    let stats = store.inner.stats(Timestamp::now()).await.unwrap();
    assert_eq!((stats.published, stats.processing, stats.pending), (30, 0, 0), "{stats:?}");
    assert_eq!(publisher.published().iter().map(|e| e.id).collect::<HashSet<_>>(), expected, "each once");
    assert_eq!(publisher.len(), 30, "no entry published twice");
    let (completions, overlapped) = (store.completions.load(Ordering::SeqCst), store.overlapped.load(Ordering::SeqCst));
    assert_eq!(overlapped, completions, "every completion ran while the next claim did ({completions} completions)");
}

#[tokio::test]
async fn a_partial_batch_is_completed_before_the_next_claim() {
    // A trickle: each batch is smaller than batch_size, so there is nothing to claim meanwhile.
    let store = Overlapping::new(Duration::from_millis(300));
    let publisher = CollectingPublisher::new();
    let relay = Arc::new(Relay::new(store.clone(), publisher.clone(), quiet_config()).unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn({
        let relay = relay.clone();
        async move { relay.run(async { stopped.await.unwrap_or(()) }).await }
    });
    for n in 0..3 {
        store.inner.enqueue((0..5).map(|a| entry(&format!("o-{a}"), n))).unwrap();
        relay.wakeup().wake();
        eventually("the batch is published", || publisher.len() >= 5 * (n + 1)).await;
        eventually("its completion is written", || store.completions.load(Ordering::SeqCst) > n).await;
    }
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    let stats = store.inner.stats(Timestamp::now()).await.unwrap();
    assert_eq!((stats.published, stats.processing), (15, 0), "{stats:?}");
    assert_eq!(store.overlapped.load(Ordering::SeqCst), 0, "no claim ran while a partial batch completed");
    // One claim per wake-up with work, plus the one that found the backlog empty.
    assert!(store.claims.load(Ordering::SeqCst) <= 7, "claims: {}", store.claims.load(Ordering::SeqCst));
}

#[tokio::test]
async fn one_busy_aggregate_drains_batch_after_batch_without_waiting_for_a_poll() {
    let store = MemoryStore::new();
    store.enqueue((0..100).map(|n| entry("o-1", n))).unwrap();
    let publisher = CollectingPublisher::new();
    // Polls once a minute: only claiming again at once after a batch drains this in time. The
    // claim made while a batch completes finds the aggregate still leased by that batch.
    let config = RelayConfig { batch_size: 10, max_per_aggregate: 10, ..quiet_config() };
    let relay = Arc::new(Relay::new(store.clone(), publisher.clone(), config).unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn({
        let relay = relay.clone();
        async move { relay.run(async { stopped.await.unwrap_or(()) }).await }
    });
    eventually("all 100 entries of the aggregate are published", || publisher.len() >= 100).await;
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    let sequences: Vec<i64> = publisher.published().iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, (1..=100).collect::<Vec<i64>>(), "once each, in order");
}

/// Fails the first `n` claims and the first `m` completions with a retryable error.
#[derive(Clone)]
struct Flaky {
    inner: MemoryStore,
    claims_to_fail: Arc<AtomicUsize>,
    completions_to_fail: Arc<AtomicUsize>,
}

fn take_one(counter: &AtomicUsize) -> bool {
    counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
}

impl Store for Flaky {
    async fn claim(&self, request: &ClaimRequest<'_>) -> Result<Vec<Entry>> {
        if take_one(&self.claims_to_fail) {
            return Err(Error::new(ErrorKind::Unavailable, "scripted: connection refused"));
        }
        self.inner.claim(request).await
    }
    async fn complete(&self, completion: &Completion) -> Result<()> {
        if take_one(&self.completions_to_fail) {
            return Err(Error::new(ErrorKind::Conflict, "scripted: deadlock detected"));
        }
        self.inner.complete(completion).await
    }
}

#[tokio::test]
async fn store_errors_are_reported_and_retried_without_double_publishing() {
    let inner = MemoryStore::new();
    inner.enqueue((0..5).map(|n| entry("o-1", n))).unwrap();
    let store = Flaky {
        inner: inner.clone(),
        claims_to_fail: Arc::new(AtomicUsize::new(2)),
        completions_to_fail: Arc::new(AtomicUsize::new(1)),
    };
    let errors = Arc::new(AtomicUsize::new(0));
    let observer = {
        let errors = errors.clone();
        move |e: &RelayEvent<'_>| {
            if matches!(e, RelayEvent::StoreError { .. }) {
                errors.fetch_add(1, Ordering::SeqCst);
            }
        }
    };
    let config = RelayConfig {
        poll_interval: Duration::from_millis(5),
        max_poll_interval: Duration::from_millis(20),
        observer: Arc::new(observer),
        ..RelayConfig::default()
    };
    let publisher = CollectingPublisher::new();
    let relay = Arc::new(Relay::new(store, publisher.clone(), config).unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn({
        let relay = relay.clone();
        async move { relay.run(async { stopped.await.unwrap_or(()) }).await }
    });
    let mut stats = inner.stats(Timestamp::now()).await.unwrap();
    for _ in 0..1000 {
        if stats.published == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        stats = inner.stats(Timestamp::now()).await.unwrap();
    }
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    assert_eq!(stats.published, 5, "the retried completion recorded the batch: {stats:?}");
    assert_eq!(publisher.len(), 5, "the batch was published once, not again after the failed completion");
    assert_eq!(errors.load(Ordering::SeqCst), 3, "2 claim errors and 1 completion error were reported");
}

#[tokio::test]
async fn trait_objects_work_where_generics_do() {
    let store = MemoryStore::new();
    store.enqueue([entry("o-1", 0)]).unwrap();
    let publisher = CollectingPublisher::new();
    let dyn_store: Arc<dyn DynStore> = Arc::new(store.clone());
    let dyn_publisher: Arc<dyn DynPublisher> = Arc::new(publisher.clone());
    let relay = Relay::new(dyn_store, dyn_publisher, RelayConfig::default()).unwrap();
    assert_eq!(relay.run_once().await.unwrap().published, 1);
    assert_eq!(publisher.published()[0].status, Status::Processing, "publishers see claimed entries");
}

#[tokio::test]
async fn retries_follow_the_policy_schedule_exactly_then_go_dead() {
    use outbox_core::{Clock, ManualClock, RandomSource};
    #[derive(Debug)]
    struct Fixed;
    impl RandomSource for Fixed {
        fn next_u64(&self) -> u64 {
            500_000 // µs: below every ceiling used here, so each delay is exactly 0.5 s
        }
    }
    let store = MemoryStore::new();
    let new = entry("o-1", 0);
    let id = new.id();
    store.enqueue([new]).unwrap();
    let clock = Arc::new(ManualClock::new(Timestamp::now().saturating_add(Duration::from_secs(1))));
    let config = RelayConfig {
        clock: clock.clone(),
        retry: Arc::new(
            ExponentialBackoff::new(Duration::from_secs(1), 2, Duration::from_secs(60), 3).with_random(Fixed),
        ),
        ..RelayConfig::default()
    };
    let publisher = ScriptedPublisher::new(|_| Some(Error::new(ErrorKind::Timeout, "no ack")));
    let relay = Relay::new(store.clone(), publisher.clone(), config).unwrap();
    for attempt in 1..=2 {
        let failed_at = clock.now();
        assert_eq!(relay.run_once().await.unwrap().retried, 1);
        let e = store.entry(id).await.unwrap().unwrap();
        assert_eq!((e.status, e.attempts), (Status::Failed, attempt));
        assert_eq!(e.available_at, failed_at.saturating_add(Duration::from_millis(500)), "attempt {attempt}");
        clock.advance(Duration::from_millis(499));
        assert_eq!(relay.run_once().await.unwrap().claimed, 0, "not due 1 ms before the retry time");
        clock.advance(Duration::from_millis(1));
    }
    assert_eq!(relay.run_once().await.unwrap().dead, 1, "the 3rd failure exhausts max_attempts = 3");
    let e = store.entry(id).await.unwrap().unwrap();
    assert_eq!((e.status, e.attempts), (Status::Dead, 3));
    assert_eq!(publisher.attempts().len(), 3);
}
