//! A broker outage against the real RabbitMQ: the publisher reaches the broker through a small
//! TCP proxy on loopback that the test turns off (existing connections cut, new ones refused),
//! so the shared server itself is never disturbed.
//!
//! Proves that a relay started while the broker is unreachable waits for it, and that a 60 s
//! outage in the middle of a drain dead-letters nothing and costs no entry an attempt: once the
//! broker answers, every entry is published, in order per aggregate, by the same running relay.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers may unwrap

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{TestBroker, amqp_url};
use outbox_core::{
    EntryId, ExponentialBackoff, Maintenance, MemoryStore, NewEntry, Relay, RelayConfig, RelayEvent, Timestamp,
};
use outbox_rabbitmq::{RabbitMqConfig, RabbitMqPublisher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

/// Forwards loopback connections to the broker while up; when turned down it cuts every open
/// connection and closes new ones at once.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
}

impl Proxy {
    async fn start(target: SocketAddr, up: bool) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(up));
        let (cut, cuts) = watch::channel(0u64);
        let open = up.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !open.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut cuts = cuts.clone();
                cuts.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Proxy { port, up, cut }
    }

    fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// `amqp://user:pass@host:port/vhost` split into the broker's address and the URL through `port`.
fn through_proxy(url: &str, port: u16) -> (SocketAddr, String) {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (credentials, rest) = rest.rsplit_once('@').map_or(("", rest), |(c, r)| (c, r));
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let authority = if authority.contains(':') { authority.to_string() } else { format!("{authority}:5672") };
    let target = authority.replace("localhost", "127.0.0.1").parse().expect("a host:port address");
    let at = if credentials.is_empty() { String::new() } else { format!("{credentials}@") };
    (target, format!("{scheme}://{at}127.0.0.1:{port}/{path}"))
}

#[derive(Default)]
struct Seen {
    outages_started: AtomicUsize,
    outages_ended: AtomicUsize,
    retries: AtomicUsize,
    dead: AtomicUsize,
}

const AGGREGATES: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sixty_second_outage_mid_drain_dead_letters_nothing_and_keeps_order() {
    let broker = TestBroker::new(&["#"]).await; // fails with the start hint when RabbitMQ is down
    let (target, _) = through_proxy(&amqp_url(), 0);
    let proxy = Proxy::start(target, false).await; // down at start-up
    let (_, proxied_url) = through_proxy(&amqp_url(), proxy.port);
    let config = RabbitMqConfig::builder(proxied_url, broker.exchange.as_str())
        .connect_timeout(Duration::from_secs(2))
        .confirm_timeout(Duration::from_secs(4))
        .build()
        .unwrap();
    let publisher = RabbitMqPublisher::new(config);

    let store = MemoryStore::new();
    let written: Arc<std::sync::Mutex<Vec<EntryId>>> = Arc::default();
    let write_round = {
        let store = store.clone();
        let written = written.clone();
        let round = AtomicUsize::new(0);
        move || {
            let n = round.fetch_add(1, Ordering::SeqCst);
            let batch: Vec<NewEntry> = (0..AGGREGATES)
                .map(|a| {
                    NewEntry::builder("order", format!("o-{a}"), "order.changed")
                        .payload(format!("o-{a}/{n}"), "text/plain")
                        .build()
                        .unwrap()
                })
                .collect();
            written.lock().unwrap().extend(batch.iter().map(NewEntry::id));
            store.enqueue(batch).unwrap();
        }
    };
    for _ in 0..50 {
        write_round();
    }

    let seen = Arc::new(Seen::default());
    let observer = {
        let seen = seen.clone();
        move |event: &RelayEvent<'_>| match event {
            RelayEvent::OutageStarted { error, backoff } => {
                seen.outages_started.fetch_add(1, Ordering::SeqCst);
                println!("outage started (first pause {backoff:?}): {error}");
            }
            RelayEvent::OutageEnded { lasted, failed_publishes } => {
                seen.outages_ended.fetch_add(1, Ordering::SeqCst);
                println!("outage ended after {lasted:?} and {failed_publishes} failed publishes");
            }
            RelayEvent::RetryScheduled { .. } => {
                seen.retries.fetch_add(1, Ordering::SeqCst);
            }
            RelayEvent::DeadLettered { error, .. } => {
                seen.dead.fetch_add(1, Ordering::SeqCst);
                println!("dead: {error}");
            }
            _ => {}
        }
    };
    let relay_config = RelayConfig {
        batch_size: 50,
        max_per_aggregate: 5,
        poll_interval: Duration::from_millis(20),
        max_poll_interval: Duration::from_millis(200),
        outage_backoff: Duration::from_millis(100),
        max_outage_backoff: Duration::from_secs(2),
        // Were an outage counted as attempts, entries would be dead within a second.
        retry: Arc::new(ExponentialBackoff::new(Duration::from_millis(10), 2, Duration::from_millis(100), 3)),
        observer: Arc::new(observer),
        ..RelayConfig::default()
    };
    let relay = Arc::new(Relay::new(store.clone(), publisher, relay_config).unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn({
        let relay = relay.clone();
        async move { relay.run(async { stopped.await.unwrap_or(()) }).await }
    });

    // 1. Broker unreachable at start-up: the relay waits instead of failing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!running.is_finished(), "the relay must wait for the broker, not exit");
    assert_eq!(seen.outages_started.load(Ordering::SeqCst), 1, "the start-up outage is observed once");
    assert_eq!(stats(&store).await.published, 0);
    proxy.up();

    // 2. Mid-drain: cut the broker off for 60 s while entries keep being written.
    let deadline = Instant::now() + Duration::from_secs(30);
    while stats(&store).await.published < 200 {
        assert!(Instant::now() < deadline, "the relay never started publishing: {:?}", stats(&store).await);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    proxy.down();
    let at_cut = stats(&store).await;
    assert!(at_cut.pending + at_cut.processing > 0, "the cut came mid-drain: {at_cut:?}");
    let outage_ends = Instant::now() + Duration::from_secs(60);
    while Instant::now() < outage_ends {
        write_round();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let during = stats(&store).await;
    assert_eq!((during.dead, during.failed), (0, 0), "an outage costs no attempt: {during:?}");
    assert!(!running.is_finished(), "the relay keeps running through the outage");
    proxy.up();

    // 3. The broker answers again: the same relay publishes everything.
    let total = written.lock().unwrap().len() as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while stats(&store).await.published < total {
        assert!(Instant::now() < deadline, "not everything was published after the outage: {:?}", stats(&store).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!running.is_finished(), "the relay was never restarted");
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();

    let end = stats(&store).await;
    assert_eq!((end.published, end.dead, end.failed, end.pending), (total, 0, 0, 0), "{end:?}");
    assert_eq!(seen.dead.load(Ordering::SeqCst), 0, "nothing dead-lettered");
    assert_eq!(seen.retries.load(Ordering::SeqCst), 0, "no attempt was counted for the outage");
    assert_eq!(seen.outages_started.load(Ordering::SeqCst), 2, "one report per outage (start-up and mid-drain)");
    assert_eq!(seen.outages_ended.load(Ordering::SeqCst), 2);
    let ids: Vec<EntryId> = written.lock().unwrap().clone();
    for id in ids {
        let e = store.entry(id).await.unwrap().unwrap();
        assert_eq!((e.attempts, e.last_error.as_deref()), (0, None), "{e:?}");
    }

    // Every entry arrived; the first arrival of each follows its aggregate's order (a message
    // whose confirm was cut off may arrive twice: consumers de-duplicate by id).
    let expected: HashSet<EntryId> = written.lock().unwrap().iter().copied().collect();
    let mut arrived: HashSet<EntryId> = HashSet::new();
    let mut last: HashMap<String, usize> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while arrived.len() < expected.len() && Instant::now() < deadline {
        for d in broker.inbox.deliveries(usize::MAX, Duration::from_secs(2)).await {
            let id: EntryId = d.properties.message_id().as_ref().unwrap().as_str().parse().unwrap();
            assert!(expected.contains(&id), "{id} was never written");
            if !arrived.insert(id) {
                continue;
            }
            let payload = String::from_utf8(d.data.clone()).unwrap();
            let (aggregate, n) = payload.split_once('/').unwrap();
            let n: usize = n.parse().unwrap();
            if let Some(prev) = last.insert(aggregate.to_string(), n) {
                assert!(prev < n, "{aggregate} out of order: {n} arrived first after {prev}");
            }
        }
    }
    assert_eq!(arrived.len(), expected.len(), "every entry reached the queue");
}

async fn stats(store: &MemoryStore) -> outbox_core::Stats {
    store.stats(Timestamp::now()).await.unwrap()
}
