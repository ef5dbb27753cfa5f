//! Trace context from a request through the relay and RabbitMQ to a consumer, against the real
//! local broker (`cargo xtask services up`), with OpenTelemetry's in-memory exporter.
#![cfg(feature = "opentelemetry")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers may unwrap

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{TestBroker, text};
use outbox_core::{MemoryStore, NewEntry, Relay, RelayConfig};
use outbox_rabbitmq::RabbitMqPublisher;
use outbox_telemetry::Telemetry;
use outbox_telemetry::testing::{Request, SpanCapture, consume};

/// A request span enqueues an entry with its trace context; the relay publishes it in a
/// `send {exchange}` producer span linked to the request; the consumer extracts the context from
/// the delivery, and its span is the request's child (same trace and tracestate).
#[tokio::test(flavor = "current_thread")]
async fn the_consumer_span_joins_the_request_trace() {
    let broker = TestBroker::new(&["#"]).await;
    let capture = SpanCapture::start();
    let store = MemoryStore::new();
    let request = Request::start();
    let entry = request.entry(NewEntry::builder("order", "o-1", "order.placed").json("{}")).unwrap();
    let id = entry.id();
    store.enqueue([entry]).unwrap();
    request.end();

    let publisher = RabbitMqPublisher::new(broker.config().build().unwrap());
    let config = RelayConfig { observer: Arc::new(Telemetry::new()), ..RelayConfig::default() };
    let relay = Relay::new(store, publisher, config).unwrap();
    assert_eq!(relay.run_once().await.unwrap().published, 1);

    let got = broker.inbox.deliveries(1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1, "the message did not arrive");
    let headers = got[0].properties.headers().as_ref().expect("headers").inner();
    assert_eq!(headers.get("tracestate").map(text).as_deref(), Some(Request::TRACESTATE));
    consume(outbox_rabbitmq::trace::extract(&got[0].properties));
    capture.check_round_trip("rabbitmq", &broker.exchange, id).unwrap();
}
