//! Test fixtures over a real EventBridge-compatible endpoint (moto): a fresh bus per test with a
//! rule sending the test's events to a fresh SQS queue, and a reader of that queue.

#![allow(dead_code, unreachable_pub)]
// Test fixtures: a failed set-up step should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::DeleteMessageBatchRequestEntry;
use outbox_core::testkit::{Inbox, Received};
use outbox_core::{Entry, EntryId, Error, ErrorKind, NewEntry, Result, Timestamp};
use outbox_eventbridge::aws_config::{self, BehaviorVersion, SdkConfig};
use outbox_eventbridge::aws_sdk_eventbridge::config::interceptors::{
    BeforeSerializationInterceptorContextMut, FinalizerInterceptorContextMut,
};
use outbox_eventbridge::aws_sdk_eventbridge::config::{ConfigBag, Credentials, Intercept, Region, RuntimeComponents};
use outbox_eventbridge::aws_sdk_eventbridge::error::BoxError;
use outbox_eventbridge::aws_sdk_eventbridge::operation::put_events::{PutEventsInput, PutEventsOutput};
use outbox_eventbridge::aws_sdk_eventbridge::types::PutEventsResultEntry;
use outbox_eventbridge::aws_sdk_eventbridge::{self as eb};
use outbox_eventbridge::{EventBridgeConfig, EventBridgeConfigBuilder};
use serde_json::Value;

/// The endpoint under test: `OUTBOX_TEST_EVENTBRIDGE_ENDPOINT`, default the local moto server.
pub fn endpoint() -> String {
    std::env::var("OUTBOX_TEST_EVENTBRIDGE_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:4566".to_string())
}

/// Fails the test, saying how to start the server, when nothing listens at the endpoint.
pub fn require_server() -> String {
    let url = endpoint();
    let authority = url.split("://").nth(1).unwrap_or(&url).split('/').next().unwrap_or_default().to_string();
    let reachable = authority
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok());
    assert!(
        reachable,
        "no EventBridge-compatible endpoint (moto) at {url} (OUTBOX_TEST_EVENTBRIDGE_ENDPOINT): \
         start it with `cargo xtask services up`"
    );
    url
}

/// The AWS configuration for the test endpoint: static credentials test/test, us-east-1.
pub async fn sdk_config(url: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "outbox-tests"))
        .endpoint_url(url)
        .load()
        .await
}

/// A short unique suffix for names.
pub fn unique() -> String {
    EntryId::generate().to_string().replace('-', "")[20..].to_string()
}

/// A bus, a rule on the test's source and a queue target, all fresh.
pub struct Bus {
    pub name: String,
    pub source: String,
    pub sdk: SdkConfig,
    pub events: eb::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub queue_url: String,
}

/// An event read back from the queue: the EventBridge envelope.
#[derive(Clone, Debug)]
pub struct Event {
    pub detail_type: String,
    pub source: String,
    pub detail: Value,
    pub time: String,
    pub resources: Vec<String>,
}

impl Bus {
    pub async fn new(tag: &str) -> Bus {
        let url = require_server();
        let sdk = sdk_config(&url).await;
        let id = unique();
        let name = format!("outbox-{tag}-{id}");
        let source = format!("com.example.outbox.{tag}.{id}");
        let events = eb::Client::new(&sdk);
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        events.create_event_bus().name(&name).send().await.expect("create the event bus");
        let queue_url = sqs
            .create_queue()
            .queue_name(&name)
            .send()
            .await
            .expect("create the queue")
            .queue_url
            .expect("a queue url");
        let attributes = sqs
            .get_queue_attributes()
            .queue_url(&queue_url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
            .send()
            .await
            .expect("queue attributes");
        let queue_arn = attributes
            .attributes()
            .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn))
            .expect("the queue ARN")
            .clone();
        let pattern = serde_json::json!({ "source": [source] }).to_string();
        events.put_rule().name(&name).event_bus_name(&name).event_pattern(pattern).send().await.expect("put the rule");
        let target = eb::types::Target::builder().id("queue").arn(queue_arn).build().expect("a target");
        events.put_targets().rule(&name).event_bus_name(&name).targets(target).send().await.expect("put the target");
        Bus { name, source, sdk, events, sqs, queue_url }
    }

    /// A configuration for this bus and source, with the test endpoint.
    pub fn config(&self) -> EventBridgeConfigBuilder {
        EventBridgeConfig::builder(&self.source).event_bus_name(&self.name).endpoint_url(endpoint())
    }

    /// Reads until `count` events arrived or `timeout` passed; deletes what it read.
    pub async fn receive(&self, count: usize, timeout: Duration) -> Vec<Event> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        let mut wait = 1;
        while out.len() < count && Instant::now() < deadline {
            let answer = self
                .sqs
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(10)
                .wait_time_seconds(wait)
                .send()
                .await
                .expect("receive from the queue");
            let messages = answer.messages();
            // Long-poll only when the queue looked empty.
            wait = if messages.is_empty() { 1 } else { 0 };
            let mut deletes = Vec::new();
            for (i, m) in messages.iter().enumerate() {
                let body: Value = serde_json::from_str(m.body().expect("a body")).expect("the body is JSON");
                out.push(Event {
                    detail_type: body["detail-type"].as_str().expect("detail-type").to_string(),
                    source: body["source"].as_str().expect("source").to_string(),
                    detail: body["detail"].clone(),
                    time: body["time"].as_str().expect("time").to_string(),
                    resources: body["resources"]
                        .as_array()
                        .map(|r| r.iter().filter_map(|v| v.as_str().map(String::from)).collect())
                        .unwrap_or_default(),
                });
                let handle = m.receipt_handle().expect("a receipt handle");
                deletes.push(
                    DeleteMessageBatchRequestEntry::builder().id(i.to_string()).receipt_handle(handle).build().unwrap(),
                );
            }
            if !deletes.is_empty() {
                self.sqs
                    .delete_message_batch()
                    .queue_url(&self.queue_url)
                    .set_entries(Some(deletes))
                    .send()
                    .await
                    .expect("delete from the queue");
            }
        }
        out
    }
}

/// Reads the queue of a bus whose events carry the envelope detail format.
pub struct EnvelopeInbox<'a>(pub &'a Bus);

impl Inbox for EnvelopeInbox<'_> {
    async fn receive(&self, count: usize, timeout: Duration) -> Result<Vec<Received>> {
        let events = self.0.receive(count, timeout).await;
        events
            .into_iter()
            .map(|event| {
                let metadata = &event.detail["metadata"];
                let id = metadata["id"]
                    .as_str()
                    .ok_or_else(|| Error::new(ErrorKind::Unexpected, format!("no metadata.id in {:?}", event.detail)))?
                    .parse()?;
                let headers = metadata["headers"]
                    .as_object()
                    .map(|h| h.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
                    .unwrap_or_default();
                Ok(Received {
                    id: Some(id),
                    aggregate_id: metadata["aggregate_id"].as_str().map(String::from),
                    // The endpoint re-serializes the detail; compact JSON is what the suite sent.
                    payload: serde_json::to_vec(&event.detail["data"]).unwrap_or_default(),
                    headers,
                })
            })
            .collect()
    }
}

/// A pending entry of `aggregate` with a JSON payload.
pub fn entry(aggregate: &str, sequence: i64, payload: &str) -> Entry {
    let new = NewEntry::builder("order", aggregate, "order.placed").json(payload).build().expect("a valid entry");
    Entry::from_new(new, sequence, Timestamp::now())
}

/// Records the number of entries of every PutEvents request; can corrupt the `Detail` of chosen
/// entries (by their `Detail` text) on the way out, so the server rejects them; and can turn the
/// server's answer for chosen entries into `ThrottlingException` (moto never throttles).
/// Requests must be sequential (the publisher's are).
#[derive(Clone, Debug, Default)]
pub struct Spy {
    pub requests: Arc<Mutex<Vec<usize>>>,
    pub corrupt: Arc<Mutex<Vec<String>>>,
    pub throttle: Arc<Mutex<Vec<String>>>,
    throttling: Arc<Mutex<Vec<usize>>>,
}

impl Spy {
    pub fn requests(&self) -> Vec<usize> {
        self.requests.lock().unwrap().clone()
    }
}

impl Intercept for Spy {
    fn name(&self) -> &'static str {
        "outbox-test-spy"
    }

    fn modify_before_serialization(
        &self,
        context: &mut BeforeSerializationInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> std::result::Result<(), BoxError> {
        if let Some(input) = context.input_mut().downcast_mut::<PutEventsInput>() {
            let entries = input.entries.get_or_insert_with(Vec::new);
            self.requests.lock().unwrap().push(entries.len());
            let corrupt = self.corrupt.lock().unwrap();
            let throttle = self.throttle.lock().unwrap();
            let mut throttling = self.throttling.lock().unwrap();
            throttling.clear();
            for (i, e) in entries.iter_mut().enumerate() {
                if e.detail.as_ref().is_some_and(|d| corrupt.contains(d)) {
                    e.detail = Some("{corrupted in transit".to_string());
                }
                if e.detail.as_ref().is_some_and(|d| throttle.contains(d)) {
                    throttling.push(i);
                }
            }
        }
        Ok(())
    }

    fn modify_before_attempt_completion(
        &self,
        context: &mut FinalizerInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> std::result::Result<(), BoxError> {
        let throttling = std::mem::take(&mut *self.throttling.lock().unwrap());
        if let Some(Ok(output)) = context.output_or_error_mut()
            && let Some(output) = output.downcast_mut::<PutEventsOutput>()
            && let Some(results) = output.entries.as_mut()
        {
            for i in throttling {
                results[i] = PutEventsResultEntry::builder()
                    .error_code("ThrottlingException")
                    .error_message("Rate exceeded")
                    .build();
                output.failed_entry_count += 1;
            }
        }
        Ok(())
    }
}

/// An EventBridge client for `sdk` with the spy installed.
pub fn spied_client(sdk: &SdkConfig, spy: &Spy) -> eb::Client {
    let config = eb::config::Builder::from(sdk).interceptor(spy.clone()).build();
    eb::Client::from_conf(config)
}
