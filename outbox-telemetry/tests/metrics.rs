//! After a drain with scripted failures, the counters, histograms and gauges hold exactly the
//! expected values (a recording `metrics` recorder, the in-memory store, a manual clock).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers may unwrap

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use outbox_core::{
    Error, ErrorKind, ManualClock, MemoryStore, NewEntry, Observer, Relay, RelayConfig, RelayEvent, ScriptedPublisher,
    Timestamp,
};
use outbox_telemetry::metrics as names;
use outbox_telemetry::{MetricsObserver, StatsGauges};

/// Keeps every value recorded, by metric name and labels (`name{k=v,...}`).
#[derive(Default)]
struct Recording {
    counters: Mutex<HashMap<String, Arc<AtomicU64>>>,
    gauges: Mutex<HashMap<String, Arc<Mutex<f64>>>>,
    histograms: Mutex<HashMap<String, Arc<Mutex<Vec<f64>>>>>,
}

fn render(key: &Key) -> String {
    let labels: Vec<String> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
    if labels.is_empty() { key.name().to_string() } else { format!("{}{{{}}}", key.name(), labels.join(",")) }
}

struct CounterCell(Arc<AtomicU64>);
impl CounterFn for CounterCell {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }
}
struct GaugeCell(Arc<Mutex<f64>>);
impl GaugeFn for GaugeCell {
    fn increment(&self, value: f64) {
        *self.0.lock().unwrap() += value;
    }
    fn decrement(&self, value: f64) {
        *self.0.lock().unwrap() -= value;
    }
    fn set(&self, value: f64) {
        *self.0.lock().unwrap() = value;
    }
}
struct HistogramCell(Arc<Mutex<Vec<f64>>>);
impl HistogramFn for HistogramCell {
    fn record(&self, value: f64) {
        self.0.lock().unwrap().push(value);
    }
}

impl Recorder for Recording {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let cell = self.counters.lock().unwrap().entry(render(key)).or_default().clone();
        Counter::from_arc(Arc::new(CounterCell(cell)))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let cell = self.gauges.lock().unwrap().entry(render(key)).or_default().clone();
        Gauge::from_arc(Arc::new(GaugeCell(cell)))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let cell = self.histograms.lock().unwrap().entry(render(key)).or_default().clone();
        Histogram::from_arc(Arc::new(HistogramCell(cell)))
    }
}

impl Recording {
    fn counter(&self, name: &str) -> u64 {
        self.counters.lock().unwrap().get(name).map_or(0, |c| c.load(Ordering::Relaxed))
    }
    fn gauge(&self, name: &str) -> Option<f64> {
        self.gauges.lock().unwrap().get(name).map(|g| *g.lock().unwrap())
    }
    fn histogram(&self, name: &str) -> Vec<f64> {
        self.histograms.lock().unwrap().get(name).map(|h| h.lock().unwrap().clone()).unwrap_or_default()
    }
}

#[test]
fn counters_histograms_and_gauges_hold_exactly_what_the_drain_did() {
    let recording = Recording::default();
    metrics::with_local_recorder(&recording, || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        runtime.block_on(drain_with_failures());
    });

    let labelled = |name: &str| format!("{name}{{outbox=orders}}");
    // Batch 1: o-1#1 fails retryably (o-1#2 released), o-2 fails permanently (dead), o-3 and o-4
    // published. Batch 2 (after the retry is due): o-1#1 and o-1#2 published.
    assert_eq!(recording.counter(&labelled(names::PUBLISHED)), 4);
    assert_eq!(recording.counter(&labelled(names::RETRIED)), 1);
    assert_eq!(recording.counter(&labelled(names::DEAD_LETTERED)), 1);
    assert_eq!(recording.counter(&labelled(names::RELEASED)), 1);
    // Written at T - 2 s: o-3 and o-4 published at T (2 s), o-1's two at T + 1 h (3602 s).
    let mut latencies = recording.histogram(&labelled(names::PUBLISH_LATENCY));
    latencies.sort_by(f64::total_cmp);
    assert_eq!(latencies, [2.0, 2.0, 3602.0, 3602.0]);
    for name in [names::CLAIM_DURATION, names::PUBLISH_DURATION, names::COMPLETE_DURATION] {
        let durations = recording.histogram(&labelled(name));
        assert_eq!(durations.len(), 2, "{name}: one per batch");
        assert!(durations.iter().all(|d| (0.0..5.0).contains(d)), "{name}: {durations:?}");
    }
    // The stats read after batch 1: o-1#2 pending, o-1#1 failed, o-2 dead, oldest unpublished 2 s.
    assert_eq!(recording.gauge(&labelled(names::PENDING)), Some(1.0));
    assert_eq!(recording.gauge(&labelled(names::PROCESSING)), Some(0.0));
    assert_eq!(recording.gauge(&labelled(names::FAILED)), Some(1.0));
    assert_eq!(recording.gauge(&labelled(names::DEAD)), Some(1.0));
    assert_eq!(recording.gauge(&labelled(names::OLDEST_UNPUBLISHED_AGE)), Some(2.0));
    // Store errors are counted by kind; ids never become labels.
    assert_eq!(recording.counter("outbox_store_errors_total{outbox=orders,kind=unavailable}"), 2);
    let keys: Vec<String> = recording.counters.lock().unwrap().keys().cloned().collect();
    assert!(keys.iter().all(|k| !k.contains("o-1") && !k.contains("relay-")), "{keys:?}");
}

async fn drain_with_failures() {
    let t = Timestamp::from_millis(1_700_000_000_000);
    let clock = Arc::new(ManualClock::new(t));
    let store = MemoryStore::new();
    let mut tx = store.begin();
    for (aggregate, n) in [("o-1", 1), ("o-1", 2), ("o-2", 1), ("o-3", 1), ("o-4", 1)] {
        tx.enqueue(NewEntry::builder("order", aggregate, "order.placed").header("n", n.to_string()).build().unwrap());
    }
    tx.commit_at(t.saturating_sub(Duration::from_secs(2))).unwrap();

    let outage = Arc::new(AtomicBool::new(true));
    let failing = outage.clone();
    let publisher = ScriptedPublisher::new(move |e| match (e.aggregate_id.as_str(), failing.load(Ordering::Relaxed)) {
        ("o-1", true) => Some(Error::new(ErrorKind::Timeout, "scripted timeout").with_outage(false)),
        ("o-2", _) => Some(Error::new(ErrorKind::Rejected, "scripted rejection")),
        _ => None,
    });
    let observer = Arc::new(MetricsObserver::with_labels([("outbox", "orders")]));
    let config = RelayConfig { observer: observer.clone(), clock: clock.clone(), ..RelayConfig::default() };
    let relay = Relay::new(store.clone(), publisher, config).unwrap();
    let gauges = StatsGauges::with_labels([("outbox", "orders")]);

    let first = relay.run_once().await.unwrap();
    assert_eq!((first.published, first.retried, first.dead, first.released), (2, 1, 1, 1));
    gauges.refresh(&store, &*clock).await.unwrap();
    assert_eq!(relay.run_once().await.unwrap().claimed, 0, "the retry is not due yet");

    outage.store(false, Ordering::Relaxed);
    clock.set(t.saturating_add(Duration::from_secs(3600)));
    let second = relay.run_once().await.unwrap();
    assert_eq!((second.published, second.retried, second.dead, second.released), (2, 0, 0, 0));

    // Store errors reach the observer from `Relay::run`'s loop; feed two directly.
    let down = Error::new(ErrorKind::Unavailable, "connection refused");
    observer.observe(&RelayEvent::StoreError { error: &down });
    observer.observe(&RelayEvent::StoreError { error: &down });
}
