//! The RabbitMQ publisher against the real local broker (`OUTBOX_TEST_AMQP_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`; start it with `cargo xtask services up`).
//!
//! Each test uses its own exchange and exclusive queue, so tests run in parallel and re-run
//! against a persistent broker.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{TestBroker, close_connection_named, entry, text, unique};
use outbox_core::testkit::{PublisherOptions, publisher_suite};
use outbox_core::{Entry, EntryId, ErrorKind, NewEntry, Outcome, Publisher, Timestamp};
use outbox_rabbitmq::lapin::types::AMQPValue;
use outbox_rabbitmq::{ExchangeType, RabbitMqConfig, RabbitMqPublisher, Routing};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite() {
    let broker = TestBroker::new(&["#"]).await;
    let publisher = RabbitMqPublisher::new(broker.config().build().unwrap());
    publisher_suite(&publisher, &broker.inbox, PublisherOptions::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn properties_and_headers_arrive() {
    let broker = TestBroker::new(&["#"]).await;
    let publisher = RabbitMqPublisher::new(broker.config().app_id("billing").build().unwrap());
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let new = NewEntry::builder("order", "o-42", "order.placed")
        .json(r#"{"total":1200}"#)
        .traceparent(traceparent)
        .correlation_id("c-7")
        .header("x-tenant", "acme")
        .build()
        .unwrap();
    let created_at = Timestamp::from_millis(1_700_000_123_456);
    let sent = Entry::from_new(new, 9, created_at);

    let outcomes = publisher.publish(std::slice::from_ref(&sent)).await.unwrap();
    assert!(outcomes[0].is_published(), "{outcomes:?}");

    let got = broker.inbox.deliveries(1, WAIT).await;
    assert_eq!(got.len(), 1, "the message did not arrive");
    let d = &got[0];
    let p = &d.properties;
    assert_eq!(d.exchange.as_str(), broker.exchange);
    assert_eq!(d.routing_key.as_str(), "order.placed", "routing key defaults to the event type");
    assert_eq!(d.data, sent.payload.as_bytes());
    assert_eq!(p.message_id().as_ref().map(|s| s.to_string()), Some(sent.id.to_string()));
    assert_eq!(p.kind().as_ref().map(|s| s.to_string()).as_deref(), Some("order.placed"));
    assert_eq!(p.content_type().as_ref().map(|s| s.to_string()).as_deref(), Some("application/json"));
    assert_eq!(*p.delivery_mode(), Some(2), "persistent");
    assert_eq!(*p.timestamp(), Some(1_700_000_123), "created_at in seconds");
    assert_eq!(p.app_id().as_ref().map(|s| s.to_string()).as_deref(), Some("billing"));
    let headers = p.headers().as_ref().expect("headers").inner();
    let header = |name: &str| headers.get(name).map(text);
    assert_eq!(header("traceparent").as_deref(), Some(traceparent));
    assert_eq!(header("correlation-id").as_deref(), Some("c-7"));
    assert_eq!(header("x-tenant").as_deref(), Some("acme"));
    assert_eq!(header("outbox-aggregate-type").as_deref(), Some("order"));
    assert_eq!(header("outbox-aggregate-id").as_deref(), Some("o-42"));
    assert_eq!(headers.get("outbox-sequence"), Some(&AMQPValue::LongLongInt(9)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_by_aggregate_type_fixed_key_or_function() {
    let broker = TestBroker::new(&["#"]).await;
    let cases = [
        (Routing::AggregateType, "order"),
        (Routing::Fixed("all.events".into()), "all.events"),
        (Routing::function(|e: &Entry| format!("{}.{}", e.aggregate_type, e.aggregate_id)), "order.a-1"),
    ];
    for (routing, expected) in cases {
        let publisher = RabbitMqPublisher::new(broker.config().routing(routing).build().unwrap());
        let outcomes = publisher.publish(&[entry("a-1", "order.placed", 1)]).await.unwrap();
        assert!(outcomes[0].is_published(), "{outcomes:?}");
        let got = broker.inbox.deliveries(1, WAIT).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].routing_key.as_str(), expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_entry_fails_alone_and_permanently() {
    // Only `routed.#` is bound: `nowhere.x` reaches no queue.
    let broker = TestBroker::new(&["routed.#"]).await;
    let publisher = RabbitMqPublisher::new(broker.config().build().unwrap());
    let batch = [entry("a-1", "routed.one", 1), entry("a-2", "nowhere.x", 1), entry("a-3", "routed.two", 1)];

    let outcomes = publisher.publish(&batch).await.unwrap();

    assert_eq!(outcomes.len(), 3);
    assert!(outcomes[0].is_published(), "{:?}", outcomes[0]);
    assert!(outcomes[2].is_published(), "{:?}", outcomes[2]);
    let Outcome::Failed(error) = &outcomes[1] else { panic!("the unroutable entry was reported published") };
    assert_eq!(error.kind(), ErrorKind::Rejected);
    assert!(!error.is_retryable(), "retrying cannot create a binding: {error}");
    assert!(error.message().contains(&format!("exchange `{}`", broker.exchange)), "{error}");
    assert!(error.message().contains("routing key `nowhere.x`"), "{error}");
    assert!(error.message().contains("NO_ROUTE"), "{error}");

    let got = broker.inbox.deliveries(3, Duration::from_secs(3)).await;
    let ids: Vec<_> = got.iter().map(|d| d.properties.message_id().as_ref().unwrap().to_string()).collect();
    assert_eq!(ids, [batch[0].id.to_string(), batch[2].id.to_string()]);

    // The channel is still healthy: the next batch goes out on it.
    let outcomes = publisher.publish(&[entry("a-4", "routed.three", 1)]).await.unwrap();
    assert!(outcomes[0].is_published());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_mandatory_an_unroutable_entry_is_dropped_by_the_broker() {
    let broker = TestBroker::new(&["routed.#"]).await;
    let publisher = RabbitMqPublisher::new(broker.config().mandatory(false).build().unwrap());
    let outcomes = publisher.publish(&[entry("a-1", "nowhere.x", 1)]).await.unwrap();
    assert!(outcomes[0].is_published(), "documented: mandatory(false) accepts silent drops");
}

/// Closes the publisher's connection from the broker's side while batches are in flight, and
/// checks that everything reported published is in the queue, that every failure is
/// retryable, and that the next batch reconnects and succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_closed_by_the_broker_mid_batch() {
    let broker = TestBroker::new(&["#"]).await;
    let name = unique("outbox-rabbitmq-test-conn");
    let publisher = RabbitMqPublisher::new(broker.config().connection_name(name.as_str()).build().unwrap());
    publisher.connect().await.unwrap();

    let close = |name: String| tokio::spawn(async move { close_connection_named(&name).await });
    let mut closer = close(name.clone());
    let mut closes = 1;

    let mut sent: HashSet<EntryId> = HashSet::new();
    let mut published: HashSet<EntryId> = HashSet::new();
    let mut failures = 0usize;
    let mut batches = 0;
    // Publish batches back to back until one is hit by the close (bounded).
    while failures == 0 && batches < 500 {
        batches += 1;
        if closer.is_finished() && closes < 5 {
            // The close landed between two batches (the next one simply reconnected): again.
            closer.await.unwrap();
            closer = close(name.clone());
            closes += 1;
        }
        let batch: Vec<Entry> =
            (0..2000).map(|i| entry(&format!("b{batches}-{}", i % 50), "order.placed", i)).collect();
        sent.extend(batch.iter().map(|e| e.id));
        match publisher.publish(&batch).await {
            Ok(outcomes) => {
                assert_eq!(outcomes.len(), batch.len());
                for (e, o) in batch.iter().zip(&outcomes) {
                    match o {
                        Outcome::Published => {
                            published.insert(e.id);
                        }
                        Outcome::Failed(error) => {
                            failures += 1;
                            assert!(error.is_retryable(), "a lost connection must be retryable: {error}");
                        }
                    }
                }
            }
            Err(error) => {
                failures += batch.len();
                assert!(error.is_retryable(), "{error}");
            }
        }
    }
    closer.await.unwrap();
    assert!(failures > 0, "the connection was never closed under a batch");

    // The next batch reconnects and goes out whole.
    let after: Vec<Entry> = (0..100).map(|i| entry("after", "order.placed", i)).collect();
    let outcomes = publisher.publish(&after).await.unwrap();
    assert!(outcomes.iter().all(Outcome::is_published), "after reconnecting: {outcomes:?}");
    published.extend(after.iter().map(|e| e.id));
    sent.extend(after.iter().map(|e| e.id));

    // Drain the queue: every confirmed entry must be there (unconfirmed ones may be too).
    let mut arrived: HashSet<EntryId> = HashSet::new();
    loop {
        let got = broker.inbox.deliveries(usize::MAX, Duration::from_secs(3)).await;
        if got.is_empty() {
            break;
        }
        for d in &got {
            let id: EntryId = d.properties.message_id().as_ref().unwrap().as_str().parse().unwrap();
            assert!(sent.contains(&id), "{id} arrived but was never sent");
            arrived.insert(id);
        }
    }
    let missing: Vec<_> = published.difference(&arrived).collect();
    assert!(missing.is_empty(), "{} entries reported published are not in the queue: {missing:?}", missing.len());
    assert!(arrived.len() >= published.len());
    println!(
        "{batches} batches, {closes} close(s): {} sent, {} published, {failures} failed retryably, {} arrived",
        sent.len(),
        published.len(),
        arrived.len()
    );
}

/// A channel error (the exchange deleted under the publisher) fails the batch retryably; the
/// next batch reopens, reports the missing exchange, and succeeds once it exists again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_closed_by_an_error_recovers() {
    let broker = TestBroker::new(&["#"]).await;
    let publisher = RabbitMqPublisher::new(broker.config().build().unwrap());
    assert!(publisher.publish(&[entry("a", "order.placed", 1)]).await.unwrap()[0].is_published());
    assert_eq!(broker.inbox.deliveries(1, WAIT).await.len(), 1);

    broker.delete_exchange().await;
    let batch: Vec<Entry> = (0..20).map(|i| entry("a", "order.placed", 2 + i)).collect();
    let outcomes = publisher.publish(&batch).await.unwrap();
    for o in &outcomes {
        let Outcome::Failed(error) = o else { panic!("published to a deleted exchange: {outcomes:?}") };
        assert!(error.is_retryable(), "{error}");
    }

    let error = publisher.publish(&batch).await.expect_err("the exchange is still missing");
    assert!(error.is_retryable(), "{error}");
    assert!(error.message().contains(&broker.exchange), "{error}");

    broker.recreate_exchange("#").await;
    let outcomes = publisher.publish(&batch).await.unwrap();
    assert!(outcomes.iter().all(Outcome::is_published), "{outcomes:?}");
    assert_eq!(broker.inbox.deliveries(20, WAIT).await.len(), 20);
}

/// A batch whose future is dropped midway (e.g. the relay's publish timeout) leaves no stuck
/// state: the next batch gets a fresh channel and goes out whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_batch_does_not_poison_the_next() {
    let broker = TestBroker::new(&["#"]).await;
    let publisher = RabbitMqPublisher::new(broker.config().build().unwrap());
    publisher.connect().await.unwrap();
    let big: Vec<Entry> = (0..20_000).map(|i| entry("big", "order.placed", i)).collect();
    let cancelled = tokio::time::timeout(Duration::from_millis(5), publisher.publish(&big)).await;
    assert!(cancelled.is_err(), "the batch finished before it could be cancelled; make it bigger");

    let next: Vec<Entry> = (0..50).map(|i| entry("next", "order.placed", i)).collect();
    let outcomes = publisher.publish(&next).await.unwrap();
    assert!(outcomes.iter().all(Outcome::is_published), "{outcomes:?}");
    let ids: HashSet<String> = next.iter().map(|e| e.id.to_string()).collect();
    let mut seen = 0;
    loop {
        let got = broker.inbox.deliveries(usize::MAX, Duration::from_secs(3)).await;
        if got.is_empty() {
            break;
        }
        seen += got.iter().filter(|d| ids.contains(d.properties.message_id().as_ref().unwrap().as_str())).count();
    }
    assert_eq!(seen, next.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declare_exchange_creates_it() {
    let broker = TestBroker::new(&[]).await;
    let exchange = unique("outbox-test-declared");
    let config = RabbitMqConfig::builder(common::amqp_url(), exchange.as_str())
        .declare_exchange(ExchangeType::Direct)
        .routing(Routing::Fixed("k".into()))
        .build()
        .unwrap();
    let publisher = RabbitMqPublisher::new(config);
    publisher.connect().await.unwrap();
    common::bind(&broker.channel, &broker.queue, &exchange, "k").await;
    let outcomes = publisher.publish(&[entry("a", "order.placed", 1)]).await.unwrap();
    assert!(outcomes[0].is_published(), "{outcomes:?}");
    assert_eq!(broker.inbox.deliveries(1, WAIT).await.len(), 1);
    // The declared exchange is durable: clean up.
    broker
        .channel
        .exchange_delete(exchange.as_str().into(), Default::default())
        .await
        .expect("delete the declared exchange");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_exchange_is_a_retryable_batch_failure() {
    let _broker = TestBroker::new(&[]).await; // fails with the start hint when the broker is down
    let exchange = unique("outbox-test-missing");
    let publisher =
        RabbitMqPublisher::new(RabbitMqConfig::builder(common::amqp_url(), exchange.as_str()).build().unwrap());
    let error = publisher.publish(&[entry("a", "order.placed", 1)]).await.expect_err("no such exchange");
    assert!(error.is_retryable(), "{error}");
    assert!(error.message().contains(&format!("`{exchange}`")), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_is_retryable_and_the_password_stays_secret() {
    // Port 1 on loopback: nothing listens there.
    let config = RabbitMqConfig::builder("amqp://guest:s3cret@127.0.0.1:1/%2f", "events").build().unwrap();
    let publisher = RabbitMqPublisher::new(config);
    let error = publisher.publish(&[entry("a", "order.placed", 1)]).await.expect_err("nothing listens on port 1");
    assert!(error.is_retryable(), "{error}");
    assert!(matches!(error.kind(), ErrorKind::Unavailable | ErrorKind::Timeout), "{error}");
    let shown = format!("{error} {error:?} {publisher:?}");
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains("guest:***@127.0.0.1:1"), "{shown}");
    assert!(publisher.publish(&[]).await.unwrap().is_empty(), "an empty batch needs no broker");
}

/// A queue that refuses messages when full (`x-overflow: reject-publish`) makes the broker nack
/// them: those entries fail retryably, the ones before them are published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nacked_entry_is_retryable() {
    use outbox_rabbitmq::lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
    use outbox_rabbitmq::lapin::types::{FieldTable, LongString};

    let connection = common::connect().await;
    let channel = connection.create_channel().await.unwrap();
    let exchange = unique("outbox-test-nack");
    let queue = unique("outbox-test-nack-q");
    channel
        .exchange_declare(
            exchange.as_str().into(),
            outbox_rabbitmq::lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions { auto_delete: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(2));
    args.insert("x-overflow".into(), AMQPValue::LongString(LongString::from("reject-publish")));
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() },
            args,
        )
        .await
        .unwrap();
    common::bind(&channel, &queue, &exchange, "#").await;

    let publisher =
        RabbitMqPublisher::new(RabbitMqConfig::builder(common::amqp_url(), exchange.as_str()).build().unwrap());
    let batch: Vec<Entry> = (0..5).map(|i| entry("a", "order.placed", i + 1)).collect();
    let outcomes = publisher.publish(&batch).await.unwrap();

    assert!(outcomes[0].is_published() && outcomes[1].is_published(), "{outcomes:?}");
    for outcome in &outcomes[2..] {
        let Outcome::Failed(error) = outcome else { panic!("a nacked entry was reported published: {outcomes:?}") };
        assert!(error.is_retryable(), "{error}");
        assert!(error.message().contains("nacked"), "{error}");
        assert!(error.message().contains(&exchange), "{error}");
    }
}

/// End to end: a relay over the in-memory store publishes through RabbitMQ; the unroutable
/// entry is dead at once (permanent), the others are published and arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_publishes_through_rabbitmq() {
    use outbox_core::{MemoryStore, Relay, RelayConfig};

    let broker = TestBroker::new(&["order.#"]).await;
    let store = MemoryStore::new();
    let mut tx = store.begin();
    for i in 0..10 {
        tx.enqueue(NewEntry::builder("order", format!("o-{i}"), "order.placed").json("{}").build().unwrap());
    }
    tx.enqueue(NewEntry::builder("invoice", "i-1", "invoice.sent").json("{}").build().unwrap());
    tx.commit().unwrap();

    let publisher = RabbitMqPublisher::new(broker.config().build().unwrap());
    let relay = Relay::new(store, publisher, RelayConfig::default()).unwrap();
    let report = relay.run_once().await.unwrap();

    assert_eq!((report.claimed, report.published, report.dead), (11, 10, 1), "{report:?}");
    assert_eq!(broker.inbox.deliveries(10, WAIT).await.len(), 10);
}

/// Many unroutable entries interleaved with routable ones, into a durable queue (persistent
/// messages are confirmed after the disk write, so the broker acks several at once): each
/// entry's outcome must match what actually happened to it, whichever confirm lapin attaches a
/// returned message to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_unroutable_entries_are_attributed_exactly() {
    use outbox_rabbitmq::lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
    use outbox_rabbitmq::lapin::types::FieldTable;

    let broker = TestBroker::new(&[]).await;
    let durable = unique("outbox-test-durable-q");
    // Deleted below; `x-expires` removes it even if the test fails before that.
    let mut args = FieldTable::default();
    args.insert("x-expires".into(), AMQPValue::LongLongInt(120_000));
    broker
        .channel
        .queue_declare(durable.as_str().into(), QueueDeclareOptions { durable: true, ..Default::default() }, args)
        .await
        .unwrap();
    common::bind(&broker.channel, &durable, &broker.exchange, "routed.#").await;
    let inbox = common::QueueInbox::consume(&broker.channel, &durable).await;

    let publisher = RabbitMqPublisher::new(broker.config().build().unwrap());
    let batch: Vec<Entry> =
        (0..600).map(|i| entry(&format!("a-{i}"), if i % 3 == 1 { "nowhere.x" } else { "routed.y" }, 1)).collect();
    let outcomes = publisher.publish(&batch).await.unwrap();

    let mut expected_published = HashSet::new();
    for (i, (e, o)) in batch.iter().zip(&outcomes).enumerate() {
        if i % 3 == 1 {
            let Outcome::Failed(error) = o else { panic!("unroutable entry #{i} was reported published") };
            assert!(!error.is_retryable(), "#{i}: {error}");
            assert!(error.message().contains(&e.id.to_string()), "#{i} names another entry: {error}");
        } else {
            assert!(o.is_published(), "routable entry #{i}: {o:?}");
            expected_published.insert(e.id.to_string());
        }
    }
    let got = inbox.deliveries(expected_published.len() + 1, Duration::from_secs(5)).await;
    let arrived: HashSet<String> =
        got.iter().map(|d| d.properties.message_id().as_ref().unwrap().to_string()).collect();
    assert_eq!(arrived, expected_published);
    broker.channel.queue_delete(durable.as_str().into(), QueueDeleteOptions::default()).await.unwrap();
}

/// Wrong credentials fail the batch as a whole, retryably (entries wait for the fix instead of
/// dying), and the password never shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_fail_the_batch_retryably_without_showing_the_password() {
    let broker = TestBroker::new(&["#"]).await;
    let url = common::amqp_url();
    let Some((scheme, rest)) = url.split_once("://") else { panic!("unexpected URL form") };
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let wrong = format!("{scheme}://outbox-nobody:wr0ng-s3cret@{host}");
    let publisher = RabbitMqPublisher::new(RabbitMqConfig::builder(wrong, broker.exchange.as_str()).build().unwrap());
    let error = publisher.publish(&[entry("a", "order.placed", 1)]).await.expect_err("bad credentials");
    assert!(error.is_retryable(), "{error}");
    let shown = format!("{error} {error:?}");
    assert!(!shown.contains("wr0ng-s3cret"), "{shown}");
    assert!(shown.contains("outbox-nobody:***@"), "{shown}");
    assert!(error.message().contains("password"), "says what to check: {error}");
}

/// A large batch of one aggregate arrives in exactly the batch's order (the writes of a batch
/// are handed to lapin together; this proves they still go out in order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_aggregate_keeps_its_order() {
    let broker = TestBroker::new(&["#"]).await;
    let publisher = RabbitMqPublisher::new(broker.config().build().unwrap());
    let batch: Vec<Entry> = (1..=5000).map(|i| entry("only", "order.placed", i)).collect();
    let outcomes = publisher.publish(&batch).await.unwrap();
    assert!(outcomes.iter().all(Outcome::is_published));
    let got = broker.inbox.deliveries(batch.len(), WAIT).await;
    let sent: Vec<String> = batch.iter().map(|e| e.id.to_string()).collect();
    let arrived: Vec<String> = got.iter().map(|d| d.properties.message_id().as_ref().unwrap().to_string()).collect();
    assert!(arrived == sent, "arrived out of order or incomplete ({} of {})", arrived.len(), sent.len());
}
