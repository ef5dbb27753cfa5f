//! The relay's own behaviour: wake-ups, shutdown, timeouts, observer, concurrency, store errors.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers may unwrap

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox_core::{
    ClaimRequest, CollectingPublisher, Completion, DeliveryTimeout, DynPublisher, DynStore, Entry, Error, ErrorKind,
    ExponentialBackoff, Maintenance, MemoryStore, NewEntry, Outcome, Publisher, Relay, RelayConfig, RelayEvent, Result,
    ScriptedPublisher, Status, Store, Timestamp,
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
async fn a_publish_that_times_out_is_an_outage_and_its_text_states_kind_and_verdict_once() {
    let store = MemoryStore::new();
    store.enqueue((0..2).map(|n| entry(&format!("o-{n}"), 0))).unwrap();
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let observer = {
        let seen = seen.clone();
        move |event: &RelayEvent<'_>| {
            if let RelayEvent::OutageStarted { error, .. } = event {
                seen.lock().unwrap().push(error.to_string());
            }
        }
    };
    let config = RelayConfig {
        publish_timeout: Duration::from_millis(30),
        observer: Arc::new(observer),
        ..RelayConfig::default()
    };
    let relay = Relay::new(store.clone(), Hanging, config).unwrap();
    let report = relay.run_once().await.unwrap();
    assert_eq!((report.claimed, report.released, report.retried, report.dead), (2, 2, 0, 0));
    let stats = store.stats(Timestamp::now()).await.unwrap();
    assert_eq!((stats.pending, stats.failed), (2, 0), "{stats:?}");
    for id in store_ids(&store).await {
        let e = store.entry(id).await.unwrap().unwrap();
        assert_eq!((e.attempts, e.last_error), (0, None), "an outage charges no attempt");
    }
    assert_eq!(
        *seen.lock().unwrap(),
        ["publishing a batch of 2 took longer than the publish timeout of 30ms (timeout, retryable)"],
        "the kind and verdict are stated once"
    );
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
    assert_eq!(
        e.last_error.as_deref(),
        Some(
            "the publisher returned 2 outcomes for a batch of 3; it must return one per entry (unexpected, retryable)"
        ),
        "the kind and verdict are stated once"
    );
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
        "retry" => Some(Error::new(ErrorKind::Timeout, "no ack")),
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
        RelayConfig { outage_backoff: Duration::ZERO, ..RelayConfig::default() },
        RelayConfig {
            outage_backoff: Duration::from_secs(2),
            max_outage_backoff: Duration::from_secs(1),
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

#[test]
fn a_publish_timeout_not_shorter_than_the_lease_is_refused_naming_both() {
    let config = RelayConfig {
        publish_timeout: Duration::from_secs(30),
        lease_duration: Duration::from_millis(29_500),
        ..RelayConfig::default()
    };
    let err = Relay::new(MemoryStore::new(), CollectingPublisher::new(), config).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert_eq!(
        err.to_string(),
        "invalid relay config: publish_timeout (30s) is not shorter than lease_duration (29.5s): another relay could claim a batch still being published; lower publish_timeout or raise lease_duration (config, permanent)"
    );
}

/// A publisher with a delivery timeout of its own.
struct Bounded(Option<Duration>);

impl Publisher for Bounded {
    async fn publish(&self, batch: &[Entry]) -> Result<Vec<Outcome>> {
        Ok(batch.iter().map(|_| Outcome::Published).collect())
    }
}

impl DeliveryTimeout for Bounded {
    fn delivery_timeout(&self) -> Option<Duration> {
        self.0
    }
    fn delivery_timeout_setting(&self) -> &str {
        "Kafka `message.timeout.ms`"
    }
}

#[test]
fn a_publisher_delivery_timeout_not_shorter_than_the_publish_timeout_is_refused_naming_both() {
    let config = || RelayConfig { publish_timeout: Duration::from_secs(10), ..RelayConfig::default() };
    let err = Relay::new_checked(MemoryStore::new(), Bounded(Some(Duration::from_secs(10))), config()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert_eq!(
        err.to_string(),
        "invalid relay config: Kafka `message.timeout.ms` (10s) is not shorter than publish_timeout (10s): the relay would give up on batches the publisher may still deliver; lower Kafka `message.timeout.ms` below publish_timeout, or raise publish_timeout (and lease_duration above it) (config, permanent)"
    );
    let err = Relay::new_checked(MemoryStore::new(), Arc::new(Bounded(None)), config()).unwrap_err();
    assert!(err.to_string().contains("Kafka `message.timeout.ms` is unbounded"), "{err}");
    assert!(Relay::new_checked(MemoryStore::new(), Bounded(Some(Duration::from_millis(9_999))), config()).is_ok());
    // The relay's own config is checked first.
    let bad = RelayConfig { batch_size: 0, ..config() };
    let err = Relay::new_checked(MemoryStore::new(), Bounded(Some(Duration::from_secs(1))), bad).unwrap_err();
    assert!(err.to_string().contains("batch_size"), "{err}");
}

/// Counts what the relay reports about outages and panics.
#[derive(Default)]
struct OutageLog {
    started: Mutex<Vec<(String, Duration)>>,
    ended: Mutex<Vec<u32>>,
    panics: Mutex<Vec<String>>,
    dead: AtomicUsize,
}

impl OutageLog {
    fn observer(self: &Arc<Self>) -> Arc<dyn outbox_core::Observer> {
        let log = self.clone();
        Arc::new(move |event: &RelayEvent<'_>| match event {
            RelayEvent::OutageStarted { error, backoff } => {
                log.started.lock().unwrap().push((error.to_string(), *backoff))
            }
            RelayEvent::OutageEnded { failed_publishes, .. } => log.ended.lock().unwrap().push(*failed_publishes),
            RelayEvent::PublisherPanicked { message, .. } => log.panics.lock().unwrap().push(message.to_string()),
            RelayEvent::DeadLettered { .. } => {
                log.dead.fetch_add(1, Ordering::SeqCst);
            }
            _ => {}
        })
    }
}

/// A broker that is down for its first `down` publishes (whole-batch `Err` for odd calls,
/// per-entry `Unavailable` outcomes for even ones), then for calls in `down_again`.
#[derive(Clone, Default)]
struct Flapping {
    calls: Arc<AtomicUsize>,
    down: usize,
    down_again: Vec<usize>,
    up: CollectingPublisher,
}

impl Publisher for Flapping {
    async fn publish(&self, batch: &[Entry]) -> Result<Vec<Outcome>> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if call <= self.down || self.down_again.contains(&call) {
            let error = Error::new(ErrorKind::Unavailable, format!("scripted: connection refused (call {call})"));
            if call % 2 == 1 {
                return Err(error);
            }
            return Ok(batch.iter().map(|_| Outcome::Failed(error.clone())).collect());
        }
        self.up.publish(batch).await
    }
}

#[tokio::test]
async fn outages_charge_no_attempt_and_never_dead_letter() {
    use outbox_core::{Clock, ManualClock};
    let store = MemoryStore::new();
    let mut ids = Vec::new();
    for n in 0..3 {
        let batch: Vec<NewEntry> = (0..3).map(|a| entry(&format!("o-{a}"), n)).collect();
        ids.extend(batch.iter().map(NewEntry::id));
        store.enqueue(batch).unwrap();
    }
    let log = Arc::new(OutageLog::default());
    let publisher = Flapping { down: 20, ..Flapping::default() };
    let clock = Arc::new(ManualClock::new(Timestamp::now()));
    let config = RelayConfig {
        clock: clock.clone(),
        // One counted attempt would be dead at once.
        retry: Arc::new(ExponentialBackoff::new(Duration::from_secs(1), 2, Duration::from_secs(1), 1)),
        observer: log.observer(),
        ..RelayConfig::default()
    };
    let relay = Relay::new(store.clone(), publisher.clone(), config).unwrap();
    for _ in 0..20 {
        let report = relay.run_once().await.unwrap();
        assert_eq!((report.claimed, report.released, report.dead, report.retried), (9, 9, 0, 0), "{report:?}");
        clock.advance(Duration::from_secs(60));
    }
    let stats = store.stats(clock.now()).await.unwrap();
    assert_eq!((stats.pending, stats.failed, stats.dead), (9, 0, 0), "{stats:?}");
    for id in &ids {
        let e = store.entry(*id).await.unwrap().unwrap();
        assert_eq!((e.attempts, e.last_error.as_deref()), (0, None), "{e:?}");
    }
    assert_eq!(relay.run_once().await.unwrap().published, 9, "the broker answers again");
    assert_eq!(relay.run_once().await.unwrap().claimed, 0);
    let started = log.started.lock().unwrap().clone();
    assert_eq!(
        started,
        [("scripted: connection refused (call 1) (unavailable, retryable)".to_string(), Duration::from_millis(250))],
        "observed once per outage"
    );
    assert_eq!(*log.ended.lock().unwrap(), [20]);
    assert_eq!(log.dead.load(Ordering::SeqCst), 0);
    let published: Vec<String> = publisher.up.published().iter().map(payload).collect();
    for a in 0..3 {
        let mine: Vec<&String> = published.iter().filter(|p| p.starts_with(&format!("o-{a}/"))).collect();
        assert_eq!(mine, [&format!("o-{a}/0"), &format!("o-{a}/1"), &format!("o-{a}/2")], "in order");
    }
}

#[tokio::test]
async fn an_outage_entry_outcome_releases_its_aggregate_and_the_rest_of_the_batch_counts() {
    let store = MemoryStore::new();
    store.enqueue([entry("down", 0), entry("down", 1), entry("ok", 0), entry("bad", 0)]).unwrap();
    let publisher = ScriptedPublisher::new(|e| match (e.aggregate_id.as_str(), payload(e).as_str()) {
        ("down", "down/0") => Some(Error::new(ErrorKind::Throttled, "scripted: slow down")),
        ("bad", _) => Some(Error::new(ErrorKind::Rejected, "scripted: no route")),
        _ => None,
    });
    let relay = Relay::new(store.clone(), publisher.clone(), RelayConfig::default()).unwrap();
    let report = relay.run_once().await.unwrap();
    // down/1 was accepted by the broker, but must not be recorded ahead of down/0.
    assert_eq!((report.published, report.released, report.dead, report.retried), (1, 2, 1, 0), "{report:?}");
}

/// Records every sleep the relay asks for, and sleeps 1 ms instead.
#[derive(Debug, Default)]
struct RecordingTimer(Mutex<Vec<Duration>>);

impl outbox_core::Timer for RecordingTimer {
    fn sleep(&self, duration: Duration) -> outbox_core::BoxFuture<'static, ()> {
        self.0.lock().unwrap().push(duration);
        Box::pin(tokio::time::sleep(Duration::from_millis(1)))
    }
}

#[tokio::test]
async fn the_outage_backoff_doubles_up_to_its_bound_and_resets_once_the_broker_answers() {
    let store = MemoryStore::new();
    store.enqueue((0..5).map(|a| entry(&format!("o-{a}"), 0))).unwrap();
    let log = Arc::new(OutageLog::default());
    // Calls 1-6 fail, 7 publishes, 8-9 fail, then the broker stays up.
    let publisher = Flapping { down: 6, down_again: vec![8, 9], ..Flapping::default() };
    let timer = Arc::new(RecordingTimer::default());
    let config = RelayConfig {
        batch_size: 1,
        publish_timeout: Duration::from_secs(7),
        outage_backoff: Duration::from_millis(100),
        max_outage_backoff: Duration::from_millis(400),
        timer: Some(timer.clone()),
        observer: log.observer(),
        ..quiet_config()
    };
    let relay = Arc::new(Relay::new(store.clone(), publisher.clone(), config).unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn({
        let relay = relay.clone();
        async move { relay.run(async { stopped.await.unwrap_or(()) }).await }
    });
    eventually("all 5 entries are published", || publisher.up.len() >= 5).await;
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    let pauses: Vec<u128> = timer
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|d| **d < Duration::from_secs(1)) // not the publish timeout nor the 60 s poll
        .map(Duration::as_millis)
        .collect();
    assert_eq!(pauses, [100, 200, 400, 400, 400, 400, 100, 200], "doubling, bounded, reset after call 7");
    assert_eq!(log.started.lock().unwrap().len(), 2, "two outages");
    assert_eq!(*log.ended.lock().unwrap(), [6, 2]);
    assert_eq!(publisher.calls.load(Ordering::SeqCst), 13, "5 publishes and 8 failed probes");
    let stats = store.stats(Timestamp::now()).await.unwrap();
    assert_eq!((stats.published, stats.dead, stats.failed), (5, 0, 0), "{stats:?}");
}

/// Panics (inside its future) whenever the batch holds the entry `p/0`.
#[derive(Clone, Default)]
struct Panicky(CollectingPublisher);

impl Publisher for Panicky {
    async fn publish(&self, batch: &[Entry]) -> Result<Vec<Outcome>> {
        tokio::task::yield_now().await;
        if let Some(poison) = batch.iter().find(|e| payload(e) == "p/0") {
            panic!("cannot encode entry {}", poison.id);
        }
        self.0.publish(batch).await
    }
}

#[tokio::test]
async fn a_panicking_publisher_is_caught_and_only_the_poison_entry_goes_dead() {
    let store = MemoryStore::new();
    let poison = entry("p", 0);
    let poison_id = poison.id();
    store.enqueue([poison, entry("p", 1)]).unwrap();
    for n in 0..3 {
        store.enqueue((0..4).map(|a| entry(&format!("o-{a}"), n))).unwrap();
    }
    let log = Arc::new(OutageLog::default());
    let publisher = Panicky::default();
    let config = RelayConfig {
        batch_size: 8,
        max_per_aggregate: 2,
        poll_interval: Duration::from_millis(5),
        max_poll_interval: Duration::from_millis(20),
        retry: Arc::new(ExponentialBackoff::new(Duration::from_millis(5), 2, Duration::from_millis(20), 3)),
        observer: log.observer(),
        ..RelayConfig::default()
    };
    let relay = Arc::new(Relay::new(store.clone(), publisher.clone(), config).unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn({
        let relay = relay.clone();
        async move { relay.run(async { stopped.await.unwrap_or(()) }).await }
    });
    eventually("the other aggregates are published", || publisher.0.len() >= 12).await;
    eventually("the poison entry is dead", || log.dead.load(Ordering::SeqCst) == 1).await;
    assert!(!running.is_finished(), "the relay keeps running");
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    let e = store.entry(poison_id).await.unwrap().unwrap();
    assert_eq!((e.status, e.attempts), (Status::Dead, 3), "{e:?}");
    assert_eq!(
        e.last_error.as_deref(),
        Some(
            format!(
                "the publisher panicked publishing this entry on its own (cannot encode entry {poison_id}); this counts a failed attempt: fix the publisher, or the entry if it is malformed (unexpected, retryable)"
            )
            .as_str()
        )
    );
    let stats = store.stats(Timestamp::now()).await.unwrap();
    assert_eq!((stats.published, stats.dead, stats.pending), (12, 1, 1), "p/1 waits behind the dead p/0: {stats:?}");
    let mut last: HashMap<String, usize> = HashMap::new();
    for e in publisher.0.published() {
        let n: usize = payload(&e).rsplit('/').next().unwrap().parse().unwrap();
        if let Some(prev) = last.insert(e.aggregate_id.clone(), n) {
            assert!(prev < n, "{} out of order: {n} after {prev}", e.aggregate_id);
        }
    }
    assert!(!log.panics.lock().unwrap().is_empty(), "the observer heard of the panics");
    for id in store_ids(&store).await {
        let e = store.entry(id).await.unwrap().unwrap();
        assert_eq!(e.attempts, 0, "only the poison entry counts attempts: {e:?}");
    }
}

#[tokio::test]
async fn a_publisher_that_panics_before_its_future_counts_an_attempt_of_a_lone_entry() {
    let store = MemoryStore::new();
    store.enqueue([entry("p", 0)]).unwrap();
    let publisher = ScriptedPublisher::new(|_| panic!("boom"));
    let relay = Relay::new(store.clone(), publisher, RelayConfig::default()).unwrap();
    let report = relay.run_once().await.unwrap();
    assert_eq!((report.retried, report.released), (1, 0));
}
