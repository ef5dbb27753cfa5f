//! The trace of an entry through an in-process publisher that uses the send span helper, as the
//! broker crates do: request → entry headers → send span (linked) → consumer span in the request's trace.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers may unwrap

use std::sync::Arc;

use outbox_core::{CollectingPublisher, Entry, MemoryStore, NewEntry, Outcome, Publisher, Relay, RelayConfig, Result};
use outbox_telemetry::Telemetry;
use outbox_telemetry::context::extract_headers;
use outbox_telemetry::send::{Send, single_destination};
use outbox_telemetry::testing::{Request, SpanCapture, consume};

/// An in-process "broker" whose destination is the aggregate type.
#[derive(Clone, Default)]
struct Inbox(CollectingPublisher);

impl Publisher for Inbox {
    async fn publish(&self, batch: &[Entry]) -> Result<Vec<Outcome>> {
        let destination = || single_destination(batch, |e| Some(e.aggregate_type.clone()));
        Send::new("in-process", batch).traced(destination, self.0.publish(batch)).await
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_consumer_span_joins_the_request_trace_and_the_send_span_links_to_it() {
    let capture = SpanCapture::start();
    let store = MemoryStore::new();
    let request = Request::start();
    let entry = request.entry(NewEntry::builder("order", "o-1", "order.placed").json("{}")).unwrap();
    let id = entry.id();
    assert_eq!(entry.headers().get("tracestate"), Some(Request::TRACESTATE));
    store.enqueue([entry]).unwrap();
    request.end();

    let inbox = Inbox::default();
    let config = RelayConfig { observer: Arc::new(Telemetry::new()), ..RelayConfig::default() };
    let relay = Relay::new(store, inbox.clone(), config).unwrap();
    assert_eq!(relay.run_once().await.unwrap().published, 1);

    let received = inbox.0.published();
    consume(extract_headers(&received[0].headers));
    capture.check_round_trip("in-process", "order", id).unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn a_failed_send_records_its_error_type() {
    let capture = SpanCapture::start();
    let store = MemoryStore::new();
    store.enqueue([NewEntry::builder("order", "o-1", "a").build().unwrap()]).unwrap();
    store.enqueue([NewEntry::builder("order", "o-2", "b").build().unwrap()]).unwrap();
    let publisher = outbox_core::ScriptedPublisher::new(|e| {
        (e.aggregate_id == "o-2").then(|| outbox_core::Error::new(outbox_core::ErrorKind::TooLarge, "too big"))
    });
    struct Traced(outbox_core::ScriptedPublisher);
    impl Publisher for Traced {
        async fn publish(&self, batch: &[Entry]) -> Result<Vec<Outcome>> {
            Send::new("scripted", batch).traced(|| None, self.0.publish(batch)).await
        }
    }
    let relay = Relay::new(store, Traced(publisher), RelayConfig::default()).unwrap();
    relay.run_once().await.unwrap();
    let spans = capture.spans();
    let send = spans.iter().find(|s| s.name == "send").expect("a send span named `send` (two destinations)");
    let attribute = |key: &str| send.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.to_string());
    assert_eq!(attribute("error.type").as_deref(), Some("too_large"));
    assert_eq!(attribute("messaging.batch.message_count").as_deref(), Some("2"));
    assert_eq!(attribute("outbox.failed_count").as_deref(), Some("1"));
    assert_eq!(attribute("messaging.message.id"), None);
    assert_eq!(send.status, opentelemetry_sdk_status());
}

fn opentelemetry_sdk_status() -> outbox_telemetry::opentelemetry::trace::Status {
    outbox_telemetry::opentelemetry::trace::Status::error("")
}
