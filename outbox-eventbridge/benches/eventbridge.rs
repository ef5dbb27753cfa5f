//! Publishing through [`EventBridgePublisher`] vs a raw aws-sdk-eventbridge `PutEvents` loop with
//! the same chunking (10 entries per request, sent one after the other), in the same run, against
//! the EventBridge-compatible endpoint at `OUTBOX_TEST_EVENTBRIDGE_ENDPOINT` (default moto at
//! http://127.0.0.1:4566; `cargo xtask services up`).
//!
//! `cargo bench -p outbox-eventbridge --bench eventbridge`. Entries: `OUTBOX_BENCH_EVENTBRIDGE_ENTRIES`
//! (default 10,000 rather than the 100,000 of the other brokers: moto handles ~2.4k events/s, so
//! the figure is the emulator's, and the ratio is what this bench is for).

// A benchmark binary: a failed step should stop it with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use outbox_core::{Entry, NewEntry, Publisher, Timestamp};
use outbox_eventbridge::aws_config::{self, BehaviorVersion};
use outbox_eventbridge::aws_sdk_eventbridge::config::{Credentials, Region};
use outbox_eventbridge::aws_sdk_eventbridge::primitives::DateTime;
use outbox_eventbridge::aws_sdk_eventbridge::types::PutEventsRequestEntry;
use outbox_eventbridge::aws_sdk_eventbridge::{self as eb};
use outbox_eventbridge::{EventBridgeConfig, EventBridgePublisher};

const BATCH: usize = 1000;
const SOURCE: &str = "com.example.outbox.bench";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// What the adapter sends as `TraceHeader` for [`TRACEPARENT`]: the raw loop sends the same.
const XRAY: &str = "Root=1-4bf92f35-77b34da6a3ce929d0e0e4736;Parent=00f067aa0ba902b7;Sampled=1";
/// Rounds alternating adapter and raw (ABBA), so the emulator's drift and the machine's load
/// weigh on both alike.
const ROUNDS: usize = 10;

fn entries(n: usize) -> Vec<Entry> {
    let now = Timestamp::now();
    (0..n)
        .map(|i| {
            // ~200 bytes of JSON.
            let payload = format!(
                r#"{{"order_id":"o-{i:08}","customer":"c-{:06}","total_cents":{},"currency":"EUR","lines":3,"note":"{}"}}"#,
                i % 997,
                1000 + i % 50_000,
                "x".repeat(88)
            );
            let new = NewEntry::builder("order", format!("o-{}", i % 1000), "order.placed")
                .json(payload)
                .traceparent(TRACEPARENT)
                .build()
                .expect("a valid entry");
            Entry::from_new(new, (i / 1000) as i64 + 1, now)
        })
        .collect()
}

async fn adapter(publisher: &EventBridgePublisher, entries: &[Entry]) -> Duration {
    let start = Instant::now();
    for batch in entries.chunks(BATCH) {
        let outcomes = publisher.publish(batch).await.expect("publish");
        assert!(outcomes.iter().all(|o| o.is_published()), "every entry is published");
    }
    start.elapsed()
}

async fn raw(client: &eb::Client, bus: &str, entries: &[Entry]) -> Duration {
    let start = Instant::now();
    for chunk in entries.chunks(10) {
        let request: Vec<PutEventsRequestEntry> = chunk
            .iter()
            .map(|e| {
                let micros = e.created_at.as_micros();
                PutEventsRequestEntry::builder()
                    .source(SOURCE)
                    .detail_type(e.event_type.as_str())
                    .detail(std::str::from_utf8(e.payload.as_bytes()).expect("UTF-8"))
                    .time(DateTime::from_secs_and_nanos(micros / 1_000_000, (micros % 1_000_000) as u32 * 1000))
                    .event_bus_name(bus)
                    .trace_header(XRAY)
                    .build()
            })
            .collect();
        let output = client.put_events().set_entries(Some(request)).send().await.expect("PutEvents");
        assert_eq!(output.failed_entry_count(), 0, "every entry is accepted");
    }
    start.elapsed()
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn main() {
    let n: usize =
        std::env::var("OUTBOX_BENCH_EVENTBRIDGE_ENTRIES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let url = std::env::var("OUTBOX_TEST_EVENTBRIDGE_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:4566".into());
    let authority = url.split("://").nth(1).unwrap_or(&url).split('/').next().unwrap_or_default().to_string();
    let up = authority
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok());
    assert!(up, "no EventBridge-compatible endpoint (moto) at {url}: start it with `cargo xtask services up`");

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    runtime.block_on(async {
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "outbox-bench"))
            .endpoint_url(&url)
            .load()
            .await;
        let client = eb::Client::new(&sdk);
        let bus = format!("outbox-bench-{}", std::process::id());
        client.create_event_bus().name(&bus).send().await.expect("create the event bus");
        let config = EventBridgeConfig::builder(SOURCE).event_bus_name(&bus).build().expect("a valid config");
        let publisher = EventBridgePublisher::new(client.clone(), config);

        let data = entries(n);
        // Warm up connections and the emulator.
        let warm = &data[..data.len().min(200)];
        adapter(&publisher, warm).await;
        raw(&client, &bus, warm).await;

        let (mut a, mut r) = (Duration::ZERO, Duration::ZERO);
        let round = n.div_ceil(ROUNDS).max(1);
        for (i, part) in data.chunks(round).enumerate() {
            if i % 2 == 0 {
                a += adapter(&publisher, part).await;
                r += raw(&client, &bus, part).await;
            } else {
                r += raw(&client, &bus, part).await;
                a += adapter(&publisher, part).await;
            }
        }

        let _ = client.delete_event_bus().name(&bus).send().await;
        let (ar, rr) = (rate(n, a), rate(n, r));
        let note = format!(
            "adapter {:.0}/s, raw {:.0}/s; moto-bound (~2.4k events/s): 10,000 entries by default, not 100,000",
            ar, rr
        );
        println!("| eventbridge | adapter vs raw PutEvents loop (chunks of 10), {n} x ~200 B, same run, {ROUNDS} alternating rounds | {:.2} | ratio | {note} |", ar / rr);
        println!("| eventbridge | adapter, {n} x ~200 B, batches of {BATCH} | {ar:.0} | entries/s | against moto on this machine |");
        println!("| eventbridge | raw PutEvents loop, {n} x ~200 B, 10 per request | {rr:.0} | entries/s | against moto on this machine |");
    });
}
