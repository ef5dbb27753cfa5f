//! Publishing through [`RabbitMqPublisher`] vs a hand-written lapin publish+confirm loop doing
//! the same sends (same properties and headers, same batches: publish a window, then await its
//! confirms), in the same run, against the real local broker.
//!
//! Run: `cargo bench -p outbox-rabbitmq --bench rabbitmq`. Sizes: `OUTBOX_BENCH_ENTRIES`
//! (default 100000), `OUTBOX_BENCH_BATCH` (default 1000), `OUTBOX_BENCH_ROUNDS` (default 3,
//! alternating which goes first; the best round of each counts, medians are shown too). Broker:
//! `OUTBOX_TEST_AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use outbox_core::{Entry, EntryId, NewEntry, Outcome, Publisher, Timestamp};
use outbox_rabbitmq::{RabbitMqConfig, RabbitMqPublisher};

const PAYLOAD_BYTES: usize = 200;
const ROUTING_KEY: &str = "bench.event";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn entries(n: usize) -> Vec<Entry> {
    let now = Timestamp::now();
    (0..n)
        .map(|i| {
            let aggregate = format!("agg-{}", i % 100);
            let mut body = format!(r#"{{"aggregate":"{aggregate}","n":{i},"pad":""#);
            body.push_str(&"x".repeat(PAYLOAD_BYTES.saturating_sub(body.len() + 2)));
            body.push_str("\"}");
            let new = NewEntry::builder("bench", aggregate, ROUTING_KEY)
                .json(body)
                .traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                .correlation_id("bench")
                .build()
                .expect("valid entry");
            Entry::from_new(new, i64::try_from(i / 100 + 1).unwrap_or(i64::MAX), now)
        })
        .collect()
}

/// The same message the adapter sends, built by hand.
fn raw_properties(e: &Entry) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (name, value) in e.headers.iter() {
        headers.insert(ShortString::from(name), AMQPValue::LongString(LongString::from(value)));
    }
    headers.insert("outbox-aggregate-type".into(), AMQPValue::LongString(e.aggregate_type.as_str().into()));
    headers.insert("outbox-aggregate-id".into(), AMQPValue::LongString(e.aggregate_id.as_str().into()));
    headers.insert("outbox-sequence".into(), AMQPValue::LongLongInt(e.sequence));
    BasicProperties::default()
        .with_message_id(e.id.to_string().into())
        .with_type(e.event_type.as_str().into())
        .with_content_type(e.content_type.as_str().into())
        .with_timestamp(u64::try_from(e.created_at.as_micros() / 1_000_000).unwrap_or(0))
        .with_delivery_mode(2)
        .with_headers(headers)
}

async fn raw_run(channel: &Channel, exchange: &str, entries: &[Entry], batch: usize) -> Duration {
    let started = Instant::now();
    let options = BasicPublishOptions { mandatory: true, immediate: false };
    for window in entries.chunks(batch) {
        let mut confirms = Vec::with_capacity(window.len());
        for e in window {
            let confirm = channel
                .basic_publish(
                    exchange.into(),
                    e.event_type.as_str().into(),
                    options,
                    e.payload.as_bytes(),
                    raw_properties(e),
                )
                .await
                .expect("raw publish");
            confirms.push(confirm);
        }
        for confirm in confirms {
            assert_eq!(confirm.await.expect("raw confirm"), Confirmation::Ack(None));
        }
    }
    started.elapsed()
}

async fn adapter_run(publisher: &RabbitMqPublisher, entries: &[Entry], batch: usize) -> Duration {
    let started = Instant::now();
    for window in entries.chunks(batch) {
        let outcomes = publisher.publish(window).await.expect("adapter publish");
        assert!(outcomes.iter().all(Outcome::is_published), "every entry must be confirmed");
    }
    started.elapsed()
}

/// The fastest and the median run.
fn best_and_median(runs: &mut [Duration]) -> (Duration, Duration) {
    runs.sort();
    (runs[0], runs[runs.len() / 2])
}

fn per_second(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn main() {
    let n = env_usize("OUTBOX_BENCH_ENTRIES", 100_000);
    let batch = env_usize("OUTBOX_BENCH_BATCH", 1000).max(1);
    let rounds = env_usize("OUTBOX_BENCH_ROUNDS", 3).max(1);
    let url = std::env::var("OUTBOX_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let setup = Connection::connect(&url, ConnectionProperties::default()).await.unwrap_or_else(|e| {
            panic!("RabbitMQ is not reachable ({e}); start it with `cargo xtask services up`")
        });
        let admin = setup.create_channel().await.unwrap();
        let exchange = format!("outbox-bench-{}", &EntryId::generate().to_string()[24..]);
        let queue = format!("{exchange}-q");
        admin
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions { auto_delete: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .unwrap();
        admin
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .unwrap();
        admin
            .queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                ROUTING_KEY.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();

        let raw_conn = Connection::connect(&url, ConnectionProperties::default()).await.unwrap();
        let raw = raw_conn.create_channel().await.unwrap();
        raw.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
        let publisher = RabbitMqPublisher::new(RabbitMqConfig::builder(url.as_str(), exchange.as_str()).build().unwrap());
        publisher.connect().await.unwrap();

        let data = entries(n);
        let purge = || async { admin.queue_purge(queue.as_str().into(), QueuePurgeOptions::default()).await.unwrap() };
        // Warm both paths up.
        let warm = &data[..n.min(2000)];
        raw_run(&raw, &exchange, warm, batch).await;
        adapter_run(&publisher, warm, batch).await;
        purge().await;

        let (mut raw_runs, mut adapter_runs) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            // Alternate which goes first, so neither always runs on a warmer or colder broker.
            for adapter_turn in [round % 2 == 1, round % 2 == 0] {
                if adapter_turn {
                    let took = adapter_run(&publisher, &data, batch).await;
                    eprintln!("round {round}: adapter {took:?}");
                    adapter_runs.push(took);
                } else {
                    let took = raw_run(&raw, &exchange, &data, batch).await;
                    eprintln!("round {round}: raw {took:?}");
                    raw_runs.push(took);
                }
                purge().await;
            }
        }
        let (raw_best, raw_median) = best_and_median(&mut raw_runs);
        let (adapter_best, adapter_median) = best_and_median(&mut adapter_runs);
        let (raw_rate, adapter_rate) = (per_second(n, raw_best), per_second(n, adapter_best));
        let case = format!("{n} x {PAYLOAD_BYTES} B, confirms per batch of {batch}");
        println!(
            "| rabbitmq | adapter vs raw lapin publish+confirm, {case} | {:.2} | ratio | best of {rounds}: adapter {:.1}k/s, raw {:.1}k/s; medians {:.1}k/s vs {:.1}k/s |",
            adapter_rate / raw_rate,
            adapter_rate / 1000.0,
            raw_rate / 1000.0,
            per_second(n, adapter_median) / 1000.0,
            per_second(n, raw_median) / 1000.0,
        );
        println!(
            "| rabbitmq | adapter publish, {case} | {adapter_rate:.0} | msg/s | best of {rounds}; persistent, mandatory, one exclusive queue |"
        );
        println!(
            "| rabbitmq | raw lapin publish+confirm, {case} | {raw_rate:.0} | msg/s | best of {rounds}; same properties and headers |"
        );
        publisher.close().await;
        let _ = raw_conn.close(200, "bench done".into()).await;
        let _ = setup.close(200, "bench done".into()).await;
    });
}
