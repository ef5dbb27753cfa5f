//! Publishing throughput: the adapter vs a raw rdkafka `FutureProducer` loop, in one run.
//!
//! Both publish the same entries (~200 B payload, key = aggregate id, the same headers) in the
//! same batches (fire every send of a batch, then await every delivery report), with the same
//! producer options (idempotent, `acks=all`), each to a fresh topic. The raw loop is what a
//! hand-written relay would do; the ratio is the adapter's overhead (routing, header building,
//! outcome mapping).
//!
//! Run: `cargo bench -p outbox-kafka --bench kafka` against the broker in
//! `OUTBOX_TEST_KAFKA_BROKERS` (default `127.0.0.1:9092`; `cargo xtask services up` starts one).
//! `OUTBOX_BENCH_KAFKA_ENTRIES` (default 100000) and `OUTBOX_BENCH_KAFKA_BATCH` (default 1000)
//! change the sizes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark fails loudly

use std::time::{Duration, Instant};

use outbox_core::{Entry, EntryId, NewEntry, Publisher, Timestamp};
use outbox_kafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use outbox_kafka::rdkafka::client::DefaultClientContext;
use outbox_kafka::rdkafka::message::{Header, OwnedHeaders};
use outbox_kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use outbox_kafka::rdkafka::util::Timeout;
use outbox_kafka::rdkafka::{ClientConfig, producer::Producer};
use outbox_kafka::{DEFAULT_OPTIONS, KafkaConfig, KafkaPublisher, Routing, headers};

const PARTITIONS: i32 = 4;
const AGGREGATES: usize = 1000;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn entries(n: usize) -> Vec<Entry> {
    let now = Timestamp::now();
    (0..n)
        .map(|i| {
            let aggregate = format!("order-{:04}", i % AGGREGATES);
            // ~200 bytes of JSON.
            let payload =
                format!(r#"{{"order":"{aggregate}","n":{i:08},"status":"placed","note":"{}"}}"#, "x".repeat(140));
            let new = NewEntry::builder("order", aggregate, "order.placed")
                .json(payload)
                .traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                .build()
                .unwrap();
            Entry::from_new(new, i64::try_from(i / AGGREGATES + 1).unwrap(), now)
        })
        .collect()
}

async fn create_topic(brokers: &str, name: &str) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    let topic = NewTopic::new(name, PARTITIONS, TopicReplication::Fixed(1));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.create_topics([&topic], &options).await.unwrap_or_else(|e| {
        panic!("the Kafka broker at {brokers} is unreachable ({e}); start it with `cargo xtask services up`")
    });
    for r in results {
        r.unwrap_or_else(|(name, code)| panic!("creating topic {name} failed: {code:?}"));
    }
}

/// Sends one message first so the topic's metadata and the producer id are in place before timing.
async fn warm_up_adapter(publisher: &KafkaPublisher, entry: &Entry) {
    let outcomes = publisher.publish(std::slice::from_ref(entry)).await.unwrap();
    assert!(outcomes[0].is_published(), "warm-up failed: {:?}", outcomes[0]);
}

async fn adapter(brokers: &str, topic: &str, batch: &[Entry], batch_size: usize) -> f64 {
    let publisher = KafkaPublisher::new(KafkaConfig::new(brokers, Routing::topic(topic).unwrap())).unwrap();
    warm_up_adapter(&publisher, &batch[0]).await;
    let start = Instant::now();
    for chunk in batch.chunks(batch_size) {
        let outcomes = publisher.publish(chunk).await.unwrap();
        if let Some(failed) = outcomes.iter().find(|o| !o.is_published()) {
            panic!("the adapter failed to publish: {failed:?}");
        }
    }
    let rate = batch.len() as f64 / start.elapsed().as_secs_f64();
    publisher.flush(Duration::from_secs(10)).unwrap();
    rate
}

/// The same sends written directly against rdkafka.
async fn raw(brokers: &str, topic: &str, batch: &[Entry], batch_size: usize) -> f64 {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (k, v) in DEFAULT_OPTIONS {
        config.set(*k, *v);
    }
    let producer: FutureProducer = config.create().unwrap();
    let send = |e: &Entry| {
        let id = e.id.to_string();
        let sequence = e.sequence.to_string();
        let mut hs = OwnedHeaders::new_with_capacity(6 + e.headers.len())
            .insert(Header { key: headers::ID, value: Some(id.as_str()) })
            .insert(Header { key: headers::EVENT_TYPE, value: Some(e.event_type.as_str()) })
            .insert(Header { key: headers::AGGREGATE_TYPE, value: Some(e.aggregate_type.as_str()) })
            .insert(Header { key: headers::AGGREGATE_ID, value: Some(e.aggregate_id.as_str()) })
            .insert(Header { key: headers::SEQUENCE, value: Some(sequence.as_str()) })
            .insert(Header { key: headers::CONTENT_TYPE, value: Some(e.content_type.as_str()) });
        for (k, v) in e.headers.iter() {
            hs = hs.insert(Header { key: k, value: Some(v) });
        }
        let record = FutureRecord::to(topic).key(e.aggregate_id.as_bytes()).payload(e.payload.as_bytes()).headers(hs);
        producer.send_result(record).map_err(|(err, _)| err).unwrap()
    };
    send(&batch[0]).await.unwrap().unwrap();
    let start = Instant::now();
    for chunk in batch.chunks(batch_size) {
        let deliveries: Vec<_> = chunk.iter().map(send).collect();
        for d in deliveries {
            d.await.unwrap().unwrap();
        }
    }
    let rate = batch.len() as f64 / start.elapsed().as_secs_f64();
    producer.flush(Timeout::After(Duration::from_secs(10))).unwrap();
    rate
}

fn kilo(rate: f64) -> String {
    format!("{:.0}k/s", rate / 1000.0)
}

#[tokio::main]
async fn main() {
    let brokers = std::env::var("OUTBOX_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_string());
    let n = env_usize("OUTBOX_BENCH_KAFKA_ENTRIES", 100_000);
    let batch_size = env_usize("OUTBOX_BENCH_KAFKA_BATCH", 1000).max(1);
    let batch = entries(n);
    let payload = batch.iter().map(|e| e.payload.len()).sum::<usize>() / n.max(1);
    let run = format!("{:012x}", EntryId::generate().as_u128() as u64 & 0xffff_ffff_ffff);
    let (raw_topic, adapter_topic, raw_topic_2, adapter_topic_2) = (
        format!("outbox-bench-raw-{run}"),
        format!("outbox-bench-adapter-{run}"),
        format!("outbox-bench-raw2-{run}"),
        format!("outbox-bench-adapter2-{run}"),
    );
    for t in [&raw_topic, &adapter_topic, &raw_topic_2, &adapter_topic_2] {
        create_topic(&brokers, t).await;
    }
    // Alternate the order (raw, adapter, adapter, raw) so neither side always runs on a warmer
    // broker; report the best of two for each.
    let raw_1 = raw(&brokers, &raw_topic, &batch, batch_size).await;
    let adapter_1 = adapter(&brokers, &adapter_topic, &batch, batch_size).await;
    let adapter_2 = adapter(&brokers, &adapter_topic_2, &batch, batch_size).await;
    let raw_2 = raw(&brokers, &raw_topic_2, &batch, batch_size).await;
    let (raw_rate, adapter_rate) = (raw_1.max(raw_2), adapter_1.max(adapter_2));
    let case = format!("{n} x {payload} B, batches of {batch_size}");
    println!(
        "| kafka | adapter publish, {case} | {adapter_rate:.0} | entries/s | best of 2 runs, acks=all, idempotent |"
    );
    println!(
        "| kafka | raw FutureProducer loop, {case} | {raw_rate:.0} | messages/s | best of 2 runs, same sends and headers |"
    );
    println!(
        "| kafka | adapter vs raw FutureProducer, {case} | {:.2} | ratio | adapter {}, raw {} |",
        adapter_rate / raw_rate,
        kilo(adapter_rate),
        kilo(raw_rate)
    );
}
