//! The Kafka publisher against a real Kafka-protocol broker.
//!
//! The broker comes from `OUTBOX_TEST_KAFKA_BROKERS` (default `127.0.0.1:9092`; start one with
//! `cargo xtask services up`). Topics are not created automatically on this broker: each test
//! creates its own, with a unique name, and reads back with its own consumer group.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers may unwrap

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use outbox_core::testkit::{Inbox, PublisherOptions, Received, publisher_suite};
use outbox_core::{
    Entry, EntryId, ErrorKind, MemoryStore, NewEntry, Outcome, Publisher, Relay, RelayConfig, Result, Timestamp,
};
use outbox_kafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use outbox_kafka::rdkafka::client::DefaultClientContext;
use outbox_kafka::rdkafka::consumer::{Consumer, StreamConsumer};
use outbox_kafka::rdkafka::message::{Headers, Message, OwnedMessage};
use outbox_kafka::rdkafka::{ClientConfig, Offset, TopicPartitionList};
use outbox_kafka::{ConfigError, KafkaConfig, KafkaPublisher, Routing, headers};

/// How long to wait for messages: the first produce and fetch on a new topic are slow.
const WAIT: Duration = Duration::from_secs(60);

fn brokers() -> String {
    std::env::var("OUTBOX_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_string())
}

/// A name no other test or earlier run uses.
fn unique(what: &str) -> String {
    format!("outbox-test-{what}-{:016x}", EntryId::generate().as_u128() as u64)
}

fn admin() -> AdminClient<DefaultClientContext> {
    ClientConfig::new().set("bootstrap.servers", brokers()).create().expect("an admin client")
}

/// Fails the test, saying how to start the broker, when it cannot be reached.
async fn require_broker() {
    let brokers = brokers();
    let result = tokio::task::spawn_blocking(move || {
        let admin = admin();
        admin.inner().fetch_metadata(None, Duration::from_secs(10)).map(|_| ())
    })
    .await
    .expect("metadata task");
    if let Err(e) = result {
        panic!(
            "the Kafka broker at {} is unreachable ({e}); start it with `cargo xtask services up` \
             (or set OUTBOX_TEST_KAFKA_BROKERS)",
            brokers
        );
    }
}

/// Creates topics with `partitions` partitions each (the broker does not create them itself).
async fn create_topics(names: &[&str], partitions: i32) {
    require_broker().await;
    let topics: Vec<NewTopic<'_>> =
        names.iter().map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(1))).collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin().create_topics(&topics, &options).await.expect("create_topics request");
    for result in results {
        if let Err((name, code)) = result {
            panic!("creating topic {name} failed: {code:?}");
        }
    }
}

/// A consumer reading `topics` (each with `partitions` partitions) from the beginning.
fn consumer(topics: &[&str], partitions: i32) -> StreamConsumer {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("group"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("a consumer");
    let mut assignment = TopicPartitionList::new();
    for topic in topics {
        for p in 0..partitions {
            assignment.add_partition_offset(topic, p, Offset::Beginning).expect("partition offset");
        }
    }
    consumer.assign(&assignment).expect("assign partitions");
    consumer
}

/// Reads until `count` messages arrived or `timeout` passed.
async fn receive(consumer: &StreamConsumer, count: usize, timeout: Duration) -> Vec<OwnedMessage> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, consumer.recv()).await {
            Ok(Ok(message)) => out.push(message.detach()),
            Ok(Err(e)) => panic!("consuming failed: {e}"),
            Err(_) => break,
        }
    }
    out
}

fn header_pairs(message: &OwnedMessage) -> Vec<(String, String)> {
    message
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn header<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn entry(aggregate: &str, event_type: &str, sequence: i64, payload: impl Into<Vec<u8>>) -> Entry {
    let new = NewEntry::builder("order", aggregate, event_type)
        .payload(payload.into(), "application/json")
        .traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .correlation_id(format!("corr-{aggregate}"))
        .build()
        .expect("a valid entry");
    Entry::from_new(new, sequence, Timestamp::now())
}

fn publisher(config: KafkaConfig) -> KafkaPublisher {
    KafkaPublisher::new(config).expect("a publisher")
}

fn failure(outcome: &Outcome) -> &outbox_core::Error {
    match outcome {
        Outcome::Failed(e) => e,
        Outcome::Published => panic!("expected a failure, got Published"),
    }
}

/// Reads the adapter's messages back for the conformance suite.
struct KafkaInbox(StreamConsumer);

impl Inbox for KafkaInbox {
    async fn receive(&self, count: usize, timeout: Duration) -> Result<Vec<Received>> {
        Ok(receive(&self.0, count, timeout)
            .await
            .iter()
            .map(|m| {
                let headers = header_pairs(m);
                Received {
                    id: header(&headers, headers::ID).and_then(|id| id.parse().ok()),
                    aggregate_id: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers,
                }
            })
            .collect())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_publisher_conformance_suite() {
    let topic = unique("suite");
    create_topics(&[&topic], 3).await;
    let publisher = publisher(KafkaConfig::new(brokers(), Routing::topic(&topic).unwrap()));
    let inbox = KafkaInbox(consumer(&[&topic], 3));
    publisher_suite(&publisher, &inbox, PublisherOptions { timeout: WAIT, ..PublisherOptions::default() }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_headers_order_and_count_arrive_as_sent() {
    let topic = unique("order");
    create_topics(&[&topic], 4).await;
    let publisher = publisher(KafkaConfig::new(brokers(), Routing::topic(&topic).unwrap()));
    // 8 aggregates, 25 entries each, interleaved as a relay batch would be.
    let mut batch = Vec::new();
    for seq in 1..=25 {
        for a in 0..8 {
            batch.push(entry(&format!("agg-{a}"), "order.updated", seq * 10, format!(r#"{{"a":{a},"n":{seq}}}"#)));
        }
    }
    let outcomes = publisher.publish(&batch).await.expect("publish");
    assert_eq!(outcomes.len(), batch.len());
    for (e, o) in batch.iter().zip(&outcomes) {
        assert!(o.is_published(), "{} failed: {o:?}", e.id);
    }

    let consumer = consumer(&[&topic], 4);
    let received = receive(&consumer, batch.len(), WAIT).await;
    assert_eq!(received.len(), batch.len(), "every entry arrives");
    assert!(receive(&consumer, 1, Duration::from_secs(2)).await.is_empty(), "nothing arrives twice");

    let sent: HashMap<String, &Entry> = batch.iter().map(|e| (e.id.to_string(), e)).collect();
    let mut seen = HashSet::new();
    let mut last: HashMap<String, (i32, i64)> = HashMap::new();
    for m in &received {
        let hs = header_pairs(m);
        let id = header(&hs, headers::ID).expect("outbox-id header");
        let e = sent.get(id).unwrap_or_else(|| panic!("{id} was never sent"));
        assert!(seen.insert(id.to_string()), "{id} arrived twice");
        assert_eq!(m.key(), Some(e.aggregate_id.as_bytes()), "key is the aggregate id");
        assert_eq!(m.payload(), Some(e.payload.as_bytes()));
        assert_eq!(header(&hs, headers::EVENT_TYPE), Some("order.updated"));
        assert_eq!(header(&hs, headers::AGGREGATE_TYPE), Some("order"));
        assert_eq!(header(&hs, headers::AGGREGATE_ID), Some(e.aggregate_id.as_str()));
        assert_eq!(header(&hs, headers::SEQUENCE), Some(e.sequence.to_string().as_str()));
        assert_eq!(header(&hs, headers::CONTENT_TYPE), Some("application/json"));
        assert_eq!(header(&hs, "traceparent"), Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        assert_eq!(header(&hs, "correlation-id"), Some(format!("corr-{}", e.aggregate_id).as_str()));
        if let Some((partition, sequence)) = last.insert(e.aggregate_id.clone(), (m.partition(), e.sequence)) {
            assert_eq!(partition, m.partition(), "{} stays in one partition", e.aggregate_id);
            assert!(sequence < e.sequence, "{} arrived out of order", e.aggregate_id);
        }
    }
    assert_eq!(last.len(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_producer_queue_makes_sends_wait_not_fail() {
    let topic = unique("queue-full");
    create_topics(&[&topic], 2).await;
    // librdkafka's queue holds 10 messages: most sends find it full at first.
    let publisher = publisher(
        KafkaConfig::new(brokers(), Routing::topic(&topic).unwrap()).set("queue.buffering.max.messages", "10"),
    );
    let batch = |run: &str| -> Vec<Entry> {
        (1..=30)
            .flat_map(|seq| (0..5).map(move |a| (seq, a)))
            .map(|(seq, a)| entry(&format!("{run}-{a}"), "order.updated", seq, format!("{run}/{a}/{seq}")))
            .collect()
    };
    let (first, second) = (batch("first"), batch("second"));
    // Two batches at once: one of them also finds the queue full with nothing of its own in flight.
    let (a, b) = tokio::join!(publisher.publish(&first), publisher.publish(&second));
    for (entries, outcomes) in [(&first, a.expect("publish")), (&second, b.expect("publish"))] {
        assert_eq!(outcomes.len(), entries.len());
        assert!(outcomes.iter().all(Outcome::is_published), "{:?}", outcomes.iter().find(|o| !o.is_published()));
    }
    let received = receive(&consumer(&[&topic], 2), 300, WAIT).await;
    assert_eq!(received.len(), 300);
    let mut last: HashMap<Vec<u8>, i64> = HashMap::new();
    for m in &received {
        let sequence: i64 = header(&header_pairs(m), headers::SEQUENCE).expect("sequence").parse().expect("a number");
        let key = m.key().expect("a key").to_vec();
        if let Some(prev) = last.insert(key, sequence) {
            assert!(prev < sequence, "order kept per key");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_event_type_to_two_topics() {
    let prefix = format!("{}.", unique("route"));
    let placed = format!("{prefix}order.placed");
    let cancelled = format!("{prefix}order.cancelled");
    create_topics(&[&placed, &cancelled], 1).await;
    let publisher = publisher(KafkaConfig::new(brokers(), Routing::by_event_type().prefixed(&prefix).unwrap()));
    let batch: Vec<Entry> = (0..10)
        .map(|i| {
            let event = if i % 3 == 0 { "order.cancelled" } else { "order.placed" };
            entry(&format!("o-{i}"), event, 1, format!("{{\"i\":{i}}}"))
        })
        .collect();
    let outcomes = publisher.publish(&batch).await.expect("publish");
    assert!(outcomes.iter().all(Outcome::is_published), "{outcomes:?}");

    for (topic, event, expected) in [(&placed, "order.placed", 6), (&cancelled, "order.cancelled", 4)] {
        let consumer = consumer(&[topic], 1);
        let received = receive(&consumer, expected, WAIT).await;
        assert_eq!(received.len(), expected, "messages on {topic}");
        assert!(receive(&consumer, 1, Duration::from_secs(2)).await.is_empty(), "only {expected} on {topic}");
        for m in &received {
            assert_eq!(header(&header_pairs(m), headers::EVENT_TYPE), Some(event), "on {topic}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_entry_fails_alone_and_holds_back_only_its_aggregate() {
    let topic = unique("large");
    create_topics(&[&topic], 2).await;
    // The producer refuses messages over 2,000 bytes.
    let publisher =
        publisher(KafkaConfig::new(brokers(), Routing::topic(&topic).unwrap()).set("message.max.bytes", "2000"));
    let batch = vec![
        entry("big", "order.placed", 1, "small"),
        entry("other-1", "order.placed", 1, "fine"),
        entry("big", "order.updated", 2, vec![b'x'; 5000]),
        entry("other-2", "order.placed", 1, "fine"),
        entry("big", "order.updated", 3, "after the large one"),
        entry("other-1", "order.updated", 2, "fine"),
    ];
    let outcomes = publisher.publish(&batch).await.expect("publish");
    assert!(outcomes[0].is_published(), "{:?}", outcomes[0]);
    assert!(outcomes[1].is_published(), "{:?}", outcomes[1]);
    let too_large = failure(&outcomes[2]);
    assert_eq!(too_large.kind(), ErrorKind::TooLarge, "{too_large}");
    assert!(!too_large.is_retryable(), "{too_large}");
    assert!(too_large.message().contains("message.max.bytes"), "{too_large}");
    assert!(outcomes[3].is_published(), "{:?}", outcomes[3]);
    let held = failure(&outcomes[4]);
    assert!(held.is_retryable(), "the later entry of the aggregate is retryable: {held}");
    assert!(outcomes[5].is_published(), "{:?}", outcomes[5]);

    let consumer = consumer(&[&topic], 2);
    let received = receive(&consumer, 4, WAIT).await;
    assert!(receive(&consumer, 1, Duration::from_secs(2)).await.is_empty(), "only the published entries arrive");
    let ids: HashSet<String> =
        received.iter().map(|m| header(&header_pairs(m), headers::ID).expect("id").to_string()).collect();
    let expected: HashSet<String> = [0, 1, 3, 5].iter().map(|&i| batch[i].id.to_string()).collect();
    assert_eq!(ids, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_routed_topic_fails_alone() {
    let topic = unique("invalid");
    create_topics(&[&topic], 1).await;
    let good = topic.clone();
    let routing =
        Routing::custom(move |e| if e.event_type == "order.lost" { "no such/topic".to_string() } else { good.clone() });
    let publisher = publisher(KafkaConfig::new(brokers(), routing));
    let batch =
        vec![entry("a", "order.placed", 1, "1"), entry("b", "order.lost", 1, "2"), entry("c", "order.placed", 1, "3")];
    let outcomes = publisher.publish(&batch).await.expect("publish");
    assert!(outcomes[0].is_published() && outcomes[2].is_published(), "{outcomes:?}");
    let e = failure(&outcomes[1]);
    assert_eq!(e.kind(), ErrorKind::Rejected, "{e}");
    assert!(!e.is_retryable(), "{e}");
    assert!(e.message().contains("invalid Kafka topic name"), "{e}");
    let received = receive(&consumer(&[&topic], 1), 2, WAIT).await;
    assert_eq!(received.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_is_a_retryable_failure_that_says_to_create_it() {
    require_broker().await;
    let topic = unique("missing");
    let publisher = publisher(
        KafkaConfig::new(brokers(), Routing::topic(&topic).unwrap())
            .set("topic.metadata.propagation.max.ms", "1000")
            .set("message.timeout.ms", "10000"),
    );
    let outcomes = publisher.publish(&[entry("a", "order.placed", 1, "x")]).await.expect("publish");
    let e = failure(&outcomes[0]);
    assert!(e.is_retryable(), "{e}");
    assert_eq!(e.kind(), ErrorKind::Rejected, "{e}");
    assert!(e.message().contains("does not exist") && e.message().contains(&topic), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_makes_every_entry_retryable() {
    // Nothing listens on port 1.
    let publisher = publisher(
        KafkaConfig::new("127.0.0.1:1", Routing::topic("outbox-unreachable").unwrap())
            .set("message.timeout.ms", "2000"),
    );
    let batch = vec![entry("a", "order.placed", 1, "1"), entry("b", "order.placed", 1, "2")];
    let outcomes = publisher.publish(&batch).await.expect("publish");
    assert_eq!(outcomes.len(), 2);
    for o in &outcomes {
        let e = failure(o);
        assert!(e.is_retryable(), "{e}");
        assert!(matches!(e.kind(), ErrorKind::Timeout | ErrorKind::Unavailable), "{e}");
        assert!(e.is_outage(), "an unreachable broker is not the entry's fault: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_publishes_through_kafka() {
    let topic = unique("relay");
    create_topics(&[&topic], 2).await;
    let store = MemoryStore::new();
    let publisher = publisher(KafkaConfig::new(brokers(), Routing::topic(&topic).unwrap()));
    let relay = Relay::new(store.clone(), publisher, RelayConfig::default()).expect("relay");
    let mut tx = store.begin();
    for n in 0..30 {
        tx.enqueue(
            NewEntry::builder("order", format!("o-{}", n % 3), "order.updated")
                .json(format!("{{\"n\":{n}}}"))
                .build()
                .expect("entry"),
        );
    }
    tx.commit().expect("commit");
    let mut published = 0;
    while published < 30 {
        let report = relay.run_once().await.expect("relay batch");
        assert_eq!((report.retried, report.dead), (0, 0), "{report:?}");
        assert!(report.published > 0, "the relay made progress: {report:?}");
        published += report.published;
    }
    let received = receive(&consumer(&[&topic], 2), 30, WAIT).await;
    assert_eq!(received.len(), 30);
}

#[test]
fn configuration_is_checked_when_built() {
    assert!(matches!(Routing::topic("orders placed"), Err(ConfigError::InvalidTopic { .. })));
    assert!(matches!(Routing::topic(".."), Err(ConfigError::InvalidTopic { .. })));
    assert!(matches!(Routing::topic("x".repeat(250)), Err(ConfigError::InvalidTopic { .. })));
    assert!(matches!(Routing::by_aggregate_type().prefixed("a b"), Err(ConfigError::InvalidTopicPrefix { .. })));

    let routing = Routing::topic("orders").unwrap();
    let err = KafkaPublisher::new(KafkaConfig::new("k:9092", routing.clone()).set("no.such.option", "1")).unwrap_err();
    assert!(matches!(err, ConfigError::Rejected(_)) && err.to_string().contains("no.such.option"), "{err}");
    // The idempotent producer needs acks=all: librdkafka refuses the mix when it is built.
    let err = KafkaPublisher::new(KafkaConfig::new("k:9092", routing.clone()).set("acks", "1")).unwrap_err();
    assert!(matches!(err, ConfigError::Rejected(_)), "{err}");
    assert!(matches!(KafkaPublisher::new(KafkaConfig::new("", routing.clone())), Err(ConfigError::NoBrokers)));
    let e: outbox_core::Error = ConfigError::NoBrokers.into();
    assert_eq!(e.kind(), ErrorKind::Config);

    // Secrets never show, even from a publisher that librdkafka accepted.
    let publisher = KafkaPublisher::new(
        KafkaConfig::new("k:9092", routing)
            .set("security.protocol", "sasl_plaintext")
            .set("sasl.mechanism", "PLAIN")
            .set("sasl.username", "relay")
            .set("sasl.password", "hunter2"),
    )
    .expect("valid SASL PLAIN configuration");
    let shown = format!("{publisher:?}");
    assert!(!shown.contains("hunter2") && shown.contains("sasl.password"), "{shown}");
}

/// A request span enqueues an entry with its trace context; the relay publishes it through
/// Kafka in a `send {topic}` producer span linked to the request; the consumer extracts the
/// context from the record, and its span is the request's child (same trace and tracestate).
#[cfg(feature = "opentelemetry")]
#[tokio::test(flavor = "current_thread")]
async fn the_consumer_span_joins_the_request_trace() {
    use outbox_telemetry::testing::{Request, SpanCapture, consume};
    let topic = unique("trace");
    create_topics(&[&topic], 1).await;
    let capture = SpanCapture::start();
    let store = MemoryStore::new();
    let request = Request::start();
    let entry = request.entry(NewEntry::builder("order", "o-1", "order.placed").json("{}")).unwrap();
    let id = entry.id();
    store.enqueue([entry]).unwrap();
    request.end();

    let publisher = publisher(KafkaConfig::new(brokers(), Routing::topic(&topic).unwrap()));
    let config =
        RelayConfig { observer: std::sync::Arc::new(outbox_telemetry::Telemetry::new()), ..RelayConfig::default() };
    let relay = Relay::new(store, publisher, config).unwrap();
    assert_eq!(relay.run_once().await.unwrap().published, 1);

    let received = receive(&consumer(&[&topic], 1), 1, WAIT).await;
    assert_eq!(received.len(), 1);
    assert_eq!(header(&header_pairs(&received[0]), "tracestate"), Some(Request::TRACESTATE));
    consume(outbox_kafka::trace::extract(&received[0]));
    capture.check_round_trip("kafka", &topic, id).unwrap();
}
