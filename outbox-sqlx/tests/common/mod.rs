//! Helpers shared by the database tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use outbox_core::{CollectingPublisher, Entry, EntryId, NewEntry, Outcome, Publisher, Relay, RelayConfig, Store};

/// A table name no other test (or earlier run) uses: `sx_<prefix>_<unix seconds, hex>_<random>`,
/// so [`is_stale`] can tell this crate's old test tables on a persistent server.
pub fn unique_table(prefix: &str) -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    format!("sx_{prefix}_{secs:x}_{:08x}", EntryId::generate().as_u128() as u32)
}

/// Whether `name` (a table, schema or function) was made by [`unique_table`] over an hour ago:
/// tests drop such leftovers so a persistent server does not fill up run after run.
pub fn is_stale(name: &str) -> bool {
    let mut parts = name.split('_');
    let (Some("sx"), Some(_), Some(secs)) = (parts.next(), parts.next(), parts.next()) else { return false };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    u64::from_str_radix(secs, 16).is_ok_and(|t| t + 3600 < now)
}

/// Runs `cleanup` once per test process.
pub async fn once_per_process(cleanup: impl AsyncFnOnce()) {
    static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !DONE.swap(true, Ordering::SeqCst) {
        cleanup().await;
    }
}

/// The URL from `var`, or `default`.
pub fn url(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_string())
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!(
                "{}{}{}",
                &url[..s + 3],
                if creds.contains(':') { format!("{user}:***") } else { user.to_string() },
                &url[at..]
            )
        }
        _ => url.to_string(),
    }
}

/// Entry `n` of aggregate `agg`, payload `"<agg>/<n>"`.
pub fn entry(agg: &str, n: usize) -> NewEntry {
    NewEntry::builder("test", agg, "test.happened").payload(format!("{agg}/{n}"), "text/plain").build().unwrap()
}

/// Checks each expected id was published exactly once and every aggregate in order.
pub fn assert_once_in_order(published: &[Entry], expected: &HashSet<EntryId>) {
    let mut seen = HashSet::new();
    let mut last: HashMap<String, usize> = HashMap::new();
    for e in published {
        assert!(seen.insert(e.id), "entry {} was published twice", e.id);
        assert!(expected.contains(&e.id), "entry {} was published but never committed", e.id);
        let text = String::from_utf8_lossy(e.payload.as_bytes()).into_owned();
        let n: usize = text.rsplit('/').next().unwrap().parse().unwrap();
        if let Some(prev) = last.insert(e.aggregate_id.clone(), n) {
            assert!(prev < n, "aggregate {} out of order: {n} after {prev}", e.aggregate_id);
        }
    }
    assert_eq!(seen.len(), expected.len(), "published {} of {} entries", seen.len(), expected.len());
}

/// A collecting publisher that yields, so concurrent relays interleave, and counts.
#[derive(Clone, Default)]
pub struct Shared {
    pub inner: CollectingPublisher,
    pub batches: Arc<AtomicUsize>,
}

impl Publisher for Shared {
    async fn publish(&self, batch: &[Entry]) -> outbox_core::Result<Vec<Outcome>> {
        self.batches.fetch_add(1, Ordering::Relaxed);
        tokio::task::yield_now().await;
        self.inner.publish(batch).await
    }
}

/// Stats of an empty outbox are zero; dead entries of several aggregates all come back with
/// `Requeue::All` and are claimable again, in order.
pub async fn requeue_all_brings_back_every_dead_entry<H: outbox_core::testkit::Harness>(h: &H) {
    use outbox_core::{ClaimRequest, Completion, Dead, DeadPolicy, Maintenance, Requeue, Stats, Store, Timestamp};
    use std::time::Duration;

    let store = h.store();
    let now = Timestamp::now();
    assert_eq!(store.stats(now).await.unwrap(), Stats::default(), "an empty outbox has empty stats");
    let written = vec![entry("ra", 0), entry("rb", 0), entry("rb", 1)];
    h.write(written.clone(), true).await.unwrap();
    let now = Timestamp::now();
    let request = |holder: &'static str| ClaimRequest {
        holder,
        now,
        lease_until: now.saturating_add(Duration::from_secs(30)),
        max_entries: 10,
        max_per_aggregate: 10,
        on_dead: DeadPolicy::Block,
    };
    let claimed = store.claim(&request("first")).await.unwrap();
    assert_eq!(claimed.len(), 3);
    let dead = |e: &NewEntry| Dead { id: e.id(), error: "scripted".into() };
    store
        .complete(&Completion {
            holder: "first".into(),
            now,
            dead: vec![dead(&written[0]), dead(&written[1])],
            released: vec![written[2].id()],
            ..Completion::default()
        })
        .await
        .unwrap();
    let stats = store.stats(now).await.unwrap();
    assert_eq!((stats.dead, stats.pending), (2, 1), "{stats:?}");
    assert!(store.claim(&request("blocked")).await.unwrap().is_empty(), "dead entries block their aggregates");
    assert_eq!(store.requeue_dead(Requeue::All, now).await.unwrap(), 2);
    let again: Vec<EntryId> = store.claim(&request("second")).await.unwrap().iter().map(|e| e.id).collect();
    let mut want: Vec<EntryId> = written.iter().map(NewEntry::id).collect();
    let mut got = again.clone();
    want.sort();
    got.sort();
    assert_eq!(got, want, "every entry is claimable after requeue");
    let rb: Vec<EntryId> = again.into_iter().filter(|id| *id != written[0].id()).collect();
    assert_eq!(rb, [written[1].id(), written[2].id()], "aggregate rb comes back in order");
}

/// Relays started by [`spawn_relays`].
pub struct Relays(Vec<tokio::task::JoinHandle<outbox_core::Result<()>>>);

impl Relays {
    /// Waits for every relay to stop; panics if one failed.
    pub async fn join(self) {
        for task in self.0 {
            task.await.unwrap().unwrap();
        }
    }
}

/// One relay per store (batches of 200, 5 entries per aggregate, polling every 5–50 ms) drains
/// until every entry of `expected` is published; each must be published once, in order per
/// aggregate.
pub async fn drain_with_relays<S>(stores: Vec<S>, expected: &HashSet<EntryId>)
where
    S: Store + Send + Sync + 'static,
{
    let publisher = Shared::default();
    let config = |i: usize| RelayConfig {
        relay_id: format!("relay-{i}"),
        batch_size: 200,
        max_per_aggregate: 5,
        poll_interval: std::time::Duration::from_millis(5),
        max_poll_interval: std::time::Duration::from_millis(50),
        ..RelayConfig::default()
    };
    let total = expected.len();
    let published = publisher.inner.clone();
    spawn_relays(stores, &publisher, config, move || published.len() >= total).join().await;
    assert_once_in_order(&publisher.inner.published(), expected);
}

/// Starts one relay per store (configured by `config(i)`) publishing into `publisher`, each
/// running (`Relay::run`) until `done()` holds, checked every 10 ms, for at most 60 s.
pub fn spawn_relays<S>(
    stores: Vec<S>,
    publisher: &Shared,
    config: impl Fn(usize) -> RelayConfig,
    done: impl Fn() -> bool + Clone + Send + 'static,
) -> Relays
where
    S: Store + Send + Sync + 'static,
{
    let tasks = stores
        .into_iter()
        .enumerate()
        .map(|(i, store)| {
            let relay = Relay::new(store, publisher.clone(), config(i)).unwrap();
            let done = done.clone();
            tokio::spawn(async move {
                relay
                    .run(async move {
                        for _ in 0..6000 {
                            if done() {
                                return;
                            }
                            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        }
                    })
                    .await
            })
        })
        .collect();
    Relays(tasks)
}
