//! Trace context from a request through the relay, EventBridge and an SQS target to a consumer,
//! against the local emulator (`cargo xtask services up`), with OpenTelemetry's in-memory exporter.
#![cfg(feature = "opentelemetry")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers may unwrap

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Bus;
use outbox_core::{MemoryStore, NewEntry, Relay, RelayConfig};
use outbox_eventbridge::{DetailFormat, EventBridgePublisher};
use outbox_telemetry::Telemetry;
use outbox_telemetry::testing::{Request, SpanCapture, consume};

/// The first SQS message body of the bus's queue, as a consumer reads it.
async fn first_body(bus: &Bus) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let answer = bus.sqs.receive_message().queue_url(&bus.queue_url).wait_time_seconds(1).send().await.unwrap();
        if let Some(body) = answer.messages().first().and_then(|m| m.body()) {
            return body.to_string();
        }
    }
    panic!("no event reached the queue in 30 s");
}

/// A request span enqueues an entry with its trace context; the relay publishes it in a
/// `send {bus}` producer span linked to the request; the consumer extracts the context from the
/// SQS message body (the W3C context rides in `detail`), and its span is the request's child.
#[tokio::test(flavor = "current_thread")]
async fn the_consumer_span_joins_the_request_trace() {
    for format in [DetailFormat::PayloadWithTraceContext, DetailFormat::Envelope] {
        let bus = Bus::new("trace").await;
        let capture = SpanCapture::start();
        let store = MemoryStore::new();
        let request = Request::start();
        let entry = request.entry(NewEntry::builder("order", "o-1", "order.placed").json(r#"{"total":42}"#)).unwrap();
        let id = entry.id();
        store.enqueue([entry]).unwrap();
        request.end();

        let publisher =
            EventBridgePublisher::from_sdk_config(&bus.sdk, bus.config().detail_format(format).build().unwrap());
        let config = RelayConfig { observer: Arc::new(Telemetry::new()), ..RelayConfig::default() };
        let relay = Relay::new(store, publisher, config).unwrap();
        assert_eq!(relay.run_once().await.unwrap().published, 1);

        let body: serde_json::Value = serde_json::from_str(&first_body(&bus).await).unwrap();
        consume(outbox_eventbridge::trace::extract(&body));
        capture.check_round_trip("aws.eventbridge", &bus.name, id).unwrap_or_else(|e| panic!("{format:?}: {e}"));
        if format == DetailFormat::PayloadWithTraceContext {
            assert_eq!(body["detail"]["total"], 42, "the payload's own members are kept");
            assert_eq!(body["detail"]["traceContext"]["tracestate"], Request::TRACESTATE);
        }
    }
}
