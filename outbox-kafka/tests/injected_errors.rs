//! Broker-side errors the real broker on this machine never produces on demand, injected with
//! librdkafka's mock cluster (an in-process Kafka-protocol broker on a localhost port, whose
//! answers to produce requests can be scripted).
//!
//! These tests complement the tests against the real broker (`tests/kafka.rs`): they prove the
//! retry and classification paths for errors the broker decides (authorization, leader moves,
//! not enough replicas, disconnects) and that order per key survives librdkafka's retries.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers may unwrap

use std::collections::HashMap;
use std::time::{Duration, Instant};

use outbox_core::{Entry, ErrorKind, NewEntry, Outcome, Publisher, Timestamp};
use outbox_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use outbox_kafka::rdkafka::message::{Headers, Message};
use outbox_kafka::rdkafka::mocking::MockCluster;
use outbox_kafka::rdkafka::producer::{DefaultProducerContext, Producer};
use outbox_kafka::rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use outbox_kafka::rdkafka::{ClientConfig, Offset, TopicPartitionList};
use outbox_kafka::{KafkaConfig, KafkaPublisher, Routing, headers};

const TOPIC: &str = "injected";

fn cluster() -> MockCluster<'static, DefaultProducerContext> {
    let cluster = MockCluster::new(1).expect("a mock cluster");
    cluster.create_topic(TOPIC, 2, 1).expect("a topic");
    cluster
}

fn publisher(cluster: &MockCluster<'static, DefaultProducerContext>) -> KafkaPublisher {
    KafkaPublisher::new(KafkaConfig::new(cluster.bootstrap_servers(), Routing::topic(TOPIC).unwrap()))
        .expect("a publisher")
}

fn entry(aggregate: &str, sequence: i64) -> Entry {
    let new = NewEntry::builder("order", aggregate, "order.updated")
        .payload(format!("{aggregate}/{sequence}"), "text/plain")
        .build()
        .unwrap();
    Entry::from_new(new, sequence, Timestamp::now())
}

fn interleaved(aggregates: usize, per_aggregate: i64) -> Vec<Entry> {
    (1..=per_aggregate).flat_map(|seq| (0..aggregates).map(move |a| entry(&format!("agg-{a}"), seq))).collect()
}

/// Every (key, sequence) on the topic, in partition order.
fn read_all(cluster: &MockCluster<'static, DefaultProducerContext>, expected: usize) -> Vec<(String, i64)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("group.id", "injected-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for p in 0..2 {
        assignment.add_partition_offset(TOPIC, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    while out.len() < expected && Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let message = message.unwrap();
            let sequence = message
                .headers()
                .and_then(|hs| hs.iter().find(|h| h.key == headers::SEQUENCE).and_then(|h| h.value))
                .map(|v| String::from_utf8_lossy(v).parse::<i64>().unwrap())
                .unwrap();
            out.push((String::from_utf8_lossy(message.key().unwrap()).into_owned(), sequence));
        }
    }
    out
}

fn assert_in_order_once(received: &[(String, i64)], aggregates: usize, per_aggregate: i64) {
    let mut last: HashMap<&str, i64> = HashMap::new();
    for (key, sequence) in received {
        let prev = last.insert(key, *sequence).unwrap_or(0);
        assert_eq!(*sequence, prev + 1, "{key}: {sequence} after {prev} (a gap, a duplicate or out of order)");
    }
    assert_eq!(last.len(), aggregates);
    assert!(last.values().all(|&s| s == per_aggregate), "{last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_per_key_survives_librdkafkas_internal_retries() {
    let cluster = cluster();
    let publisher = publisher(&cluster);
    // Warm up: topic metadata and the idempotent producer id.
    assert!(publisher.publish(&[entry("warm-up", 1)]).await.unwrap()[0].is_published());
    // The next produce requests fail with errors librdkafka retries by itself.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__TRANSPORT,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        ],
    );
    let batch = interleaved(4, 50);
    let outcomes = publisher.publish(&batch).await.unwrap();
    assert!(outcomes.iter().all(Outcome::is_published), "{:?}", outcomes.iter().find(|o| !o.is_published()));
    let received: Vec<(String, i64)> =
        read_all(&cluster, batch.len() + 1).into_iter().filter(|(k, _)| k != "warm-up").collect();
    assert_eq!(received.len(), batch.len(), "every entry once, even with retries");
    assert_in_order_once(&received, 4, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_authorization_failure_is_permanent() {
    let cluster = cluster();
    let publisher = publisher(&cluster);
    assert!(publisher.publish(&[entry("warm-up", 1)]).await.unwrap()[0].is_published());
    cluster.request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED]);
    let outcomes = publisher.publish(&[entry("a", 1)]).await.unwrap();
    let Outcome::Failed(e) = &outcomes[0] else { panic!("expected a failure: {outcomes:?}") };
    assert_eq!(e.kind(), ErrorKind::Rejected, "{e}");
    assert!(!e.is_retryable(), "{e}");
    assert!(e.message().contains("ACL"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_too_large_for_the_broker_is_permanent() {
    let cluster = cluster();
    let publisher = publisher(&cluster);
    assert!(publisher.publish(&[entry("warm-up", 1)]).await.unwrap()[0].is_published());
    cluster.request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE]);
    let outcomes = publisher.publish(&[entry("a", 1)]).await.unwrap();
    let Outcome::Failed(e) = &outcomes[0] else { panic!("expected a failure: {outcomes:?}") };
    assert_eq!(e.kind(), ErrorKind::TooLarge, "{e}");
    assert!(!e.is_retryable(), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_down_past_the_message_timeout_is_retryable_and_the_next_batch_recovers() {
    let cluster = cluster();
    let publisher = KafkaPublisher::new(
        KafkaConfig::new(cluster.bootstrap_servers(), Routing::topic(TOPIC).unwrap()).set("message.timeout.ms", "2000"),
    )
    .unwrap();
    assert!(publisher.publish(&[entry("warm-up", 1)]).await.unwrap()[0].is_published());
    cluster.broker_down(1).unwrap();
    let outcomes = publisher.publish(&interleaved(2, 3)).await.unwrap();
    for o in &outcomes {
        let Outcome::Failed(e) = o else { panic!("published while the broker was down: {outcomes:?}") };
        assert!(e.is_retryable(), "{e}");
        assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
        assert!(e.is_outage(), "a broker that is down is not the entry's fault: {e}");
    }
    cluster.broker_up(1).unwrap();
    // As the relay would: retry the batch until librdkafka has reconnected (no new publisher).
    let batch = interleaved(2, 3);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let outcomes = publisher.publish(&batch).await.unwrap();
        if outcomes.iter().all(Outcome::is_published) {
            break;
        }
        assert!(attempts < 20, "still failing after {attempts} attempts: {outcomes:?}");
        for o in &outcomes {
            let Outcome::Failed(e) = o else { continue };
            assert!(e.is_retryable(), "{e}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_idempotence_error_is_retryable_and_a_new_producer_takes_over() {
    let cluster = cluster();
    let publisher = publisher(&cluster);
    assert!(publisher.publish(&[entry("warm-up", 1)]).await.unwrap()[0].is_published());
    let first = publisher.producer();
    // A sequence desynchronization is fatal for an idempotent producer: librdkafka stops it.
    cluster.request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER]);
    let outcomes = publisher.publish(&interleaved(2, 2)).await.unwrap();
    for o in &outcomes {
        let Outcome::Failed(e) = o else { panic!("published despite the fatal error: {outcomes:?}") };
        assert!(e.is_retryable(), "{e}");
    }
    assert!(first.client().fatal_error().is_some(), "the old producer is dead");
    assert!(!std::sync::Arc::ptr_eq(&first, &publisher.producer()), "a new producer replaced it");
    let outcomes = publisher.publish(&interleaved(2, 2)).await.unwrap();
    assert!(outcomes.iter().all(Outcome::is_published), "the next batch goes out: {outcomes:?}");
}
