//! A failing publish produces exactly one warning, with the entry id and without any secret.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers may unwrap
use std::sync::{Arc, Mutex};

use outbox_core::{Error, ErrorKind, MemoryStore, NewEntry, Relay, RelayConfig, ScriptedPublisher};
use outbox_telemetry::TracingObserver;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// What was logged: events (level, fields) and every span field, as text.
type Events = Arc<Mutex<Vec<(Level, Vec<(String, String)>)>>>;

#[derive(Clone, Default)]
struct Captured {
    events: Events,
    span_fields: Arc<Mutex<Vec<(String, String)>>>,
}

#[derive(Default)]
struct Fields(Vec<(String, String)>);
impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push((field.name().to_string(), format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push((field.name().to_string(), value.to_string()));
    }
}

impl<S: Subscriber> Layer<S> for Captured {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        self.events.lock().unwrap().push((*event.metadata().level(), fields.0));
    }
    fn on_new_span(&self, attrs: &Attributes<'_>, _: &Id, _: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        self.span_fields.lock().unwrap().extend(fields.0);
    }
    fn on_record(&self, _: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let mut fields = Fields::default();
        values.record(&mut fields);
        self.span_fields.lock().unwrap().extend(fields.0);
    }
}

#[test]
fn a_failing_publish_logs_one_warning_with_the_entry_id_and_no_secret() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::registry().with(captured.clone());
    let store = MemoryStore::new();
    let entry = NewEntry::builder("order", "o-1", "order.placed")
        .json(r#"{"card":"payload-secret-4111"}"#)
        .header("authorization", "Bearer header-secret-token")
        .build()
        .unwrap();
    let id = entry.id();
    store.enqueue([entry]).unwrap();
    let publisher = ScriptedPublisher::new(|_| {
        Some(
            Error::new(ErrorKind::Timeout, "no answer from amqp://guest:url-secret-pw@127.0.0.1:5672/%2f")
                .with_outage(false),
        )
    });
    let config = RelayConfig { observer: Arc::new(TracingObserver::new()), ..RelayConfig::default() };
    let relay = Relay::new(store, publisher, config).unwrap();

    tracing::subscriber::with_default(subscriber, || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let report = runtime.block_on(relay.run_once()).unwrap();
        assert_eq!(report.retried, 1);
    });

    let events = captured.events.lock().unwrap().clone();
    let warnings: Vec<_> = events.iter().filter(|(level, _)| *level == Level::WARN).collect();
    assert_eq!(warnings.len(), 1, "{events:?}");
    let field = |name: &str| warnings[0].1.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    assert_eq!(field("entry_id"), Some(id.to_string()));
    assert_eq!(field("aggregate_id").as_deref(), Some("o-1"));
    assert_eq!(field("attempt").as_deref(), Some("1"));
    assert_eq!(field("error.kind").as_deref(), Some("timeout"));
    assert!(field("next_attempt_at").is_some_and(|t| t.ends_with('Z')), "{:?}", field("next_attempt_at"));
    assert_eq!(field("error").as_deref(), Some("no answer from amqp://guest:***@127.0.0.1:5672/%2f"));

    let everything = format!("{events:?} {:?}", captured.span_fields.lock().unwrap());
    for secret in ["url-secret-pw", "header-secret-token", "payload-secret"] {
        assert!(!everything.contains(secret), "`{secret}` was logged: {everything}");
    }
}
