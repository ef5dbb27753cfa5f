//! The publisher checks: what a broker adapter sends must arrive whole, once, and in order.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use super::{CheckResult, Failure, ensure};
use crate::entry::{Entry, EntryId, NewEntry};
use crate::error::Result;
use crate::publisher::{Outcome, Publisher};
use crate::time::Timestamp;

/// A message as read back from the broker.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Received {
    /// The entry id the message carries (header, `message_id`, ...).
    pub id: Option<EntryId>,
    /// The aggregate id it carries (key, header, ...), if the broker keeps one.
    pub aggregate_id: Option<String>,
    /// The payload bytes.
    pub payload: Vec<u8>,
    /// The entry's own headers as received (the adapter's metadata headers may be included).
    pub headers: Vec<(String, String)>,
}

/// Reads back what reached the broker, for [`publisher_suite`].
pub trait Inbox {
    /// Waits until `count` messages arrived (returning them in arrival order) or `timeout`
    /// passed (returning what arrived). Each call returns only messages not returned before.
    fn receive(&self, count: usize, timeout: Duration) -> impl Future<Output = Result<Vec<Received>>>;
}

/// What the broker behind the publisher promises, so the suite checks what it should.
#[derive(Clone, Copy, Debug)]
pub struct PublisherOptions {
    /// The broker keeps per-aggregate order (Kafka partitions by key, one RabbitMQ queue).
    /// EventBridge does not.
    pub ordered: bool,
    /// The entry's headers arrive as headers the inbox can read.
    pub headers: bool,
    /// Payloads must be JSON (EventBridge).
    pub json_payloads: bool,
    /// How long to wait for messages to arrive.
    pub timeout: Duration,
    /// Size of the large batch.
    pub large_batch: usize,
}

impl Default for PublisherOptions {
    fn default() -> Self {
        PublisherOptions {
            ordered: true,
            headers: true,
            json_payloads: false,
            timeout: Duration::from_secs(30),
            large_batch: 2000,
        }
    }
}

fn entries(run: &str, aggregates: usize, per_aggregate: usize, json: bool) -> Result<Vec<Entry>> {
    let now = Timestamp::now();
    let mut out = Vec::with_capacity(aggregates * per_aggregate);
    for n in 0..per_aggregate {
        for a in 0..aggregates {
            let aggregate = format!("{run}-{a}");
            let body =
                if json { format!(r#"{{"aggregate":"{aggregate}","n":{n}}}"#) } else { format!("{aggregate}/{n}") };
            let new = NewEntry::builder("testkit", aggregate, "testkit.happened")
                .payload(body, if json { "application/json" } else { "text/plain" })
                .correlation_id(format!("corr-{run}"))
                .traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                .header("x-n", n.to_string())
                .build()?;
            out.push(Entry::from_new(new, i64::try_from(n + 1).unwrap_or(i64::MAX), now));
        }
    }
    Ok(out)
}

async fn publish_all<P: Publisher>(publisher: &P, batch: &[Entry]) -> CheckResult {
    let outcomes = publisher.publish(batch).await?;
    ensure!(outcomes.len() == batch.len(), "{} outcomes for a batch of {}", outcomes.len(), batch.len());
    for (entry, outcome) in batch.iter().zip(&outcomes) {
        if let Outcome::Failed(e) = outcome {
            return Err(Failure(format!("entry {} failed to publish: {e}", entry.id)));
        }
    }
    Ok(())
}

fn check_received(sent: &[Entry], received: &[Received], options: &PublisherOptions) -> CheckResult {
    ensure!(received.len() == sent.len(), "sent {}, received {}", sent.len(), received.len());
    let by_id: HashMap<EntryId, &Entry> = sent.iter().map(|e| (e.id, e)).collect();
    let mut seen = HashSet::new();
    let mut last_seq: HashMap<&str, i64> = HashMap::new();
    for r in received {
        let Some(id) = r.id else { return Err(Failure(format!("a message arrived without an entry id: {r:?}"))) };
        let Some(entry) = by_id.get(&id) else { return Err(Failure(format!("received {id}, which was never sent"))) };
        ensure!(seen.insert(id), "entry {id} arrived twice");
        ensure!(r.payload == entry.payload.as_bytes(), "payload of {id} changed in transit");
        if let Some(aggregate) = &r.aggregate_id {
            ensure!(
                *aggregate == entry.aggregate_id,
                "{id} arrived with aggregate {aggregate}, sent {}",
                entry.aggregate_id
            );
        }
        if options.headers {
            for (name, value) in entry.headers.iter() {
                ensure!(
                    r.headers.iter().any(|(n, v)| n == name && v == value),
                    "header {name}={value} of {id} did not arrive; got {:?}",
                    r.headers
                );
            }
        }
        if options.ordered
            && let Some(prev) = last_seq.insert(&entry.aggregate_id, entry.sequence)
        {
            ensure!(prev < entry.sequence, "aggregate {} arrived out of order", entry.aggregate_id);
        }
    }
    Ok(())
}

/// Runs the publisher checks against `publisher`, reading back through `inbox`; panics listing
/// every failure. The inbox must see only what this suite publishes (a fresh topic, queue or
/// bus per run).
pub async fn publisher_suite<P: Publisher, I: Inbox>(publisher: &P, inbox: &I, options: PublisherOptions) {
    let run = EntryId::generate().to_string()[..8].to_string();
    let mut failures = Vec::new();
    let cases: [(&str, usize, usize); 3] = [
        ("one_entry_arrives_whole", 1, 1),
        ("a_batch_arrives_once_in_order", 10, 20),
        ("a_large_batch_arrives", 50, options.large_batch / 50),
    ];
    match publisher.publish(&[]).await {
        Ok(outcomes) if outcomes.is_empty() => {}
        Ok(outcomes) => {
            failures.push(format!("an_empty_batch_is_fine: {} outcomes for an empty batch", outcomes.len()))
        }
        Err(e) => failures.push(format!("an_empty_batch_is_fine: {e}")),
    }
    for (name, aggregates, per) in cases {
        let result = async {
            let batch = entries(&format!("{run}-{name}"), aggregates, per.max(1), options.json_payloads)?;
            publish_all(publisher, &batch).await?;
            let received = inbox.receive(batch.len(), options.timeout).await?;
            check_received(&batch, &received, &options)
        }
        .await;
        if let Err(f) = result {
            failures.push(format!("{name}: {f}"));
        }
    }
    assert!(failures.is_empty(), "publisher conformance failed:\n- {}", failures.join("\n- "));
}
