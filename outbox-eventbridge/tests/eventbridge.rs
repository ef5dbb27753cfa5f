//! The EventBridge publisher against a real EventBridge-compatible endpoint (moto at
//! `OUTBOX_TEST_EVENTBRIDGE_ENDPOINT`, default http://127.0.0.1:4566; `cargo xtask services up`).
//! Each test makes its own bus, rule and SQS queue and reads its events back from the queue.

// Helpers of the tests stop the test with a message when something is missing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Bus, EnvelopeInbox, Spy, entry, sdk_config, spied_client};
use outbox_core::testkit::{PublisherOptions, publisher_suite};
use outbox_core::{Entry, ErrorKind, MemoryStore, NewEntry, Outcome, Publisher, Relay, RelayConfig, Timestamp};
use outbox_eventbridge::aws_sdk_eventbridge::config::retry::RetryConfig;
use outbox_eventbridge::aws_sdk_eventbridge::primitives::{DateTime, DateTimeFormat};
use outbox_eventbridge::{DetailFormat, DetailType, EventBridgePublisher};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

fn failure(outcome: &Outcome) -> &outbox_core::Error {
    match outcome {
        Outcome::Failed(e) => e,
        Outcome::Published => panic!("expected a failure, got published"),
    }
}

fn assert_published(outcomes: &[Outcome], except: &[usize]) {
    for (i, o) in outcomes.iter().enumerate() {
        if !except.contains(&i) {
            assert!(o.is_published(), "entry {i} should be published: {o:?}");
        }
    }
}

fn numbered(n: usize, tag: &str) -> Vec<Entry> {
    (0..n).map(|i| entry(&format!("{tag}-{}", i % 3), i as i64 + 1, &json!({ "n": i }).to_string())).collect()
}

fn numbers(events: &[common::Event]) -> Vec<u64> {
    let mut n: Vec<u64> = events.iter().map(|e| e.detail["n"].as_u64().expect("detail.n")).collect();
    n.sort_unstable();
    n
}

#[tokio::test]
async fn events_arrive_with_the_documented_fields() {
    let bus = Bus::new("fields").await;
    let config = bus
        .config()
        .resources(|e| vec![format!("arn:aws:example:us-east-1:123456789012:order/{}", e.aggregate_id)])
        .build()
        .unwrap();
    let publisher = EventBridgePublisher::from_sdk_config(&bus.sdk, config);
    let batch: Vec<Entry> = (0..3)
        .map(|i| {
            let new = NewEntry::builder("order", format!("o-{i}"), format!("order.v{i}"))
                .json(json!({ "n": i, "text": "grüße" }).to_string())
                .traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                .build()
                .unwrap();
            Entry::from_new(new, 1, Timestamp::from_micros(1_763_800_000_250_000 + i * 1_000_000))
        })
        .collect();
    let outcomes = publisher.publish(&batch).await.unwrap();
    assert_published(&outcomes, &[]);

    let mut events = bus.receive(3, WAIT).await;
    assert_eq!(events.len(), 3, "{events:?}");
    events.sort_by_key(|e| e.detail["n"].as_i64());
    for (i, (event, sent)) in events.iter().zip(&batch).enumerate() {
        assert_eq!(event.source, bus.source);
        assert_eq!(event.detail_type, format!("order.v{i}"), "DetailType = event type");
        let payload: Value = serde_json::from_slice(sent.payload.as_bytes()).unwrap();
        assert_eq!(event.detail, payload, "Detail = the payload");
        assert_eq!(event.resources, [format!("arn:aws:example:us-east-1:123456789012:order/o-{i}")]);
        let secs = sent.created_at.as_micros() / 1_000_000;
        let expected = DateTime::from_secs(secs).fmt(DateTimeFormat::DateTime).unwrap();
        assert_eq!(event.time, expected, "Time = created_at");
    }
}

#[tokio::test]
async fn publisher_conformance_suite() {
    let bus = Bus::new("suite").await;
    let config = bus.config().detail_format(DetailFormat::Envelope).build().unwrap();
    let publisher = EventBridgePublisher::from_sdk_config(&bus.sdk, config);
    // EventBridge keeps no order; with the envelope the id, aggregate and headers travel in Detail.
    // moto routes events through a rule to SQS at roughly 100 events/s here: a 500-entry large batch.
    let options = PublisherOptions {
        ordered: false,
        headers: true,
        json_payloads: true,
        timeout: Duration::from_secs(60),
        large_batch: 500,
    };
    publisher_suite(&publisher, &EnvelopeInbox(&bus), options).await;
}

#[tokio::test]
async fn a_non_json_entry_fails_alone_before_sending() {
    let bus = Bus::new("nonjson").await;
    let spy = Spy::default();
    let publisher = EventBridgePublisher::new(spied_client(&bus.sdk, &spy), bus.config().build().unwrap());
    let mut batch = numbered(10, "a");
    batch[4] = entry("a-x", 1, "this is not json");
    let outcomes = publisher.publish(&batch).await.unwrap();
    assert_eq!(outcomes.len(), 10);
    let e = failure(&outcomes[4]);
    assert_eq!((e.kind(), e.is_retryable()), (ErrorKind::Validation, false), "{e}");
    assert!(e.message().contains("not valid JSON"), "{e}");
    assert_published(&outcomes, &[4]);
    assert_eq!(spy.requests(), [9], "the bad entry is never sent");
    let events = bus.receive(9, WAIT).await;
    assert_eq!(numbers(&events), [0, 1, 2, 3, 5, 6, 7, 8, 9]);
}

#[tokio::test]
async fn an_entry_the_server_rejects_fails_alone_matched_by_index() {
    let bus = Bus::new("malformed").await;
    let spy = Spy::default();
    let publisher = EventBridgePublisher::new(spied_client(&bus.sdk, &spy), bus.config().build().unwrap());
    let batch = numbered(10, "m");
    // The server sees entry 6 with a malformed Detail and answers MalformedDetail at index 6.
    spy.corrupt.lock().unwrap().push(String::from_utf8(batch[6].payload.as_bytes().to_vec()).unwrap());
    let outcomes = publisher.publish(&batch).await.unwrap();
    let e = failure(&outcomes[6]);
    assert_eq!((e.kind(), e.is_retryable()), (ErrorKind::Rejected, false), "{e}");
    assert!(e.message().contains("MalformedDetail"), "{e}");
    assert_published(&outcomes, &[6]);
    assert_eq!(spy.requests(), [10]);
    let events = bus.receive(9, WAIT).await;
    assert_eq!(numbers(&events), [0, 1, 2, 3, 4, 5, 7, 8, 9]);
}

#[tokio::test]
async fn a_throttled_entry_is_retryable_and_holds_back_only_its_aggregate() {
    let bus = Bus::new("throttled").await;
    let spy = Spy::default();
    let publisher = EventBridgePublisher::new(spied_client(&bus.sdk, &spy), bus.config().build().unwrap());
    // Aggregates c-0, c-1, c-2 take turns; entry 3 (c-0) is throttled in the first request.
    let batch = numbered(25, "c");
    spy.throttle.lock().unwrap().push(String::from_utf8(batch[3].payload.as_bytes().to_vec()).unwrap());
    let outcomes = publisher.publish(&batch).await.unwrap();
    let e = failure(&outcomes[3]);
    assert_eq!((e.kind(), e.is_retryable()), (ErrorKind::Throttled, true), "{e}");
    assert!(e.message().contains("ThrottlingException"), "{e}");
    // Later c-0 entries of later requests are not sent; those in the same request were.
    let held = [12, 15, 18, 21, 24];
    for i in held {
        let e = failure(&outcomes[i]);
        assert!(e.is_retryable() && e.message().starts_with("not sent"), "entry {i}: {e}");
        assert!(e.message().contains("order/c-0"), "entry {i}: {e}");
    }
    let mut not_published = vec![3];
    not_published.extend(held);
    assert_published(&outcomes, &not_published);
    assert_eq!(spy.requests(), [10, 10], "the 15 entries after the first request minus 5 held back");
}

#[tokio::test]
async fn an_oversized_entry_fails_alone_before_sending() {
    let bus = Bus::new("oversized").await;
    let spy = Spy::default();
    let publisher = EventBridgePublisher::new(spied_client(&bus.sdk, &spy), bus.config().build().unwrap());
    let huge = json!({ "n": 99, "blob": "x".repeat(256 * 1024) }).to_string();
    let batch = vec![entry("s-1", 1, r#"{"n":0}"#), entry("s-2", 1, &huge), entry("s-3", 1, r#"{"n":2}"#)];
    let outcomes = publisher.publish(&batch).await.unwrap();
    let e = failure(&outcomes[1]);
    assert_eq!((e.kind(), e.is_retryable()), (ErrorKind::TooLarge, false), "{e}");
    assert!(e.message().contains("over the limit of 262144 bytes"), "{e}");
    assert_published(&outcomes, &[1]);
    assert_eq!(spy.requests(), [2], "the oversized entry is never sent and blocks nothing");
    assert_eq!(numbers(&bus.receive(2, WAIT).await), [0, 2]);
}

#[tokio::test]
async fn twenty_five_entries_go_in_three_requests() {
    let bus = Bus::new("chunks").await;
    let spy = Spy::default();
    let publisher = EventBridgePublisher::new(spied_client(&bus.sdk, &spy), bus.config().build().unwrap());
    let outcomes = publisher.publish(&numbered(25, "c")).await.unwrap();
    assert_published(&outcomes, &[]);
    assert_eq!(spy.requests(), [10, 10, 5]);
    assert_eq!(numbers(&bus.receive(25, WAIT).await), (0..25).collect::<Vec<_>>());
}

#[tokio::test]
async fn requests_stay_within_256_kib() {
    let bus = Bus::new("bytes").await;
    let spy = Spy::default();
    let publisher = EventBridgePublisher::new(spied_client(&bus.sdk, &spy), bus.config().build().unwrap());
    // ~100 KiB each: two fit in a request, three do not.
    let batch: Vec<Entry> =
        (0..5).map(|i| entry("big", i + 1, &json!({ "n": i, "blob": "y".repeat(100 * 1024) }).to_string())).collect();
    let outcomes = publisher.publish(&batch).await.unwrap();
    assert_published(&outcomes, &[]);
    assert_eq!(spy.requests(), [2, 2, 1]);
    assert_eq!(numbers(&bus.receive(5, WAIT).await), [0, 1, 2, 3, 4]);
}

#[tokio::test]
async fn a_missing_bus_fails_every_request_permanently() {
    let bus = Bus::new("nobus").await;
    let spy = Spy::default();
    let config = bus.config().event_bus_name(format!("{}-missing", bus.name)).build().unwrap();
    let publisher = EventBridgePublisher::new(spied_client(&bus.sdk, &spy), config);
    let outcomes = publisher.publish(&numbered(12, "n")).await.unwrap();
    for o in &outcomes {
        let e = failure(o);
        assert_eq!((e.kind(), e.is_retryable()), (ErrorKind::Rejected, false), "{e}");
        assert!(e.message().contains("ResourceNotFoundException"), "{e}");
    }
    assert_eq!(spy.requests(), [10, 2], "a permanent request failure does not stop the next request");
}

#[tokio::test]
async fn an_unreachable_endpoint_makes_every_entry_retryable_and_stops_the_batch() {
    // Port 9 (discard) is closed here: connections are refused at once.
    let sdk = sdk_config("http://127.0.0.1:9").await;
    let spy = Spy::default();
    let client = outbox_eventbridge::aws_sdk_eventbridge::Client::from_conf(
        outbox_eventbridge::aws_sdk_eventbridge::config::Builder::from(&sdk)
            .interceptor(spy.clone())
            .retry_config(RetryConfig::standard().with_max_attempts(1))
            .build(),
    );
    let config = outbox_eventbridge::EventBridgeConfig::builder("com.example.outbox.down").build().unwrap();
    let publisher = EventBridgePublisher::new(client, config);
    let outcomes = publisher.publish(&numbered(15, "u")).await.unwrap();
    for (i, o) in outcomes.iter().enumerate() {
        let e = failure(o);
        assert!(e.is_retryable(), "entry {i}: {e}");
        assert_eq!(e.kind(), ErrorKind::Unavailable, "entry {i}: {e}");
    }
    assert!(failure(&outcomes[14]).message().starts_with("not sent"), "{:?}", outcomes[14]);
    assert_eq!(spy.requests(), [10], "after a retryable request failure the rest is not sent");
}

#[tokio::test]
async fn a_relay_publishes_through_eventbridge_and_dead_letters_bad_json() {
    let bus = Bus::new("relay").await;
    let config = bus.config().detail_type(DetailType::Fixed("Order Event".into())).build().unwrap();
    let publisher = EventBridgePublisher::from_sdk_config(&bus.sdk, config);
    let store = MemoryStore::new();
    let relay = Relay::new(store.clone(), publisher, RelayConfig::default()).unwrap();
    let mut tx = store.begin();
    for i in 0..12 {
        tx.enqueue(
            NewEntry::builder("order", format!("o-{i}"), "order.placed")
                .json(json!({ "n": i }).to_string())
                .build()
                .unwrap(),
        );
    }
    tx.enqueue(NewEntry::builder("order", "bad", "order.placed").payload("<xml/>", "application/xml").build().unwrap());
    tx.commit().unwrap();
    let report = relay.run_once().await.unwrap();
    assert_eq!((report.claimed, report.published, report.dead), (13, 12, 1), "{report:?}");
    let events = bus.receive(12, WAIT).await;
    assert_eq!(numbers(&events), (0..12).collect::<Vec<_>>());
    assert!(events.iter().all(|e| e.detail_type == "Order Event"));
}
