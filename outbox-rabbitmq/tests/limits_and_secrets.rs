//! What can never be sent is refused before sending, and no secret of the URL is ever shown:
//! against the real local broker (`cargo xtask services up`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers may unwrap

mod common;

use std::time::Duration;

use common::{TestBroker, amqp_url};
use outbox_core::{Entry, ErrorKind, NewEntry, Outcome, Publisher, Timestamp};
use outbox_rabbitmq::message::header_frame_len;
use outbox_rabbitmq::{ConfigError, RabbitMqConfig, RabbitMqPublisher};

const WAIT: Duration = Duration::from_secs(30);

/// RabbitMQ's default `frame_max`, which the local broker uses.
const FRAME_MAX: usize = 131_072;

fn entry_with_headers(aggregate: &str, headers: &[(String, String)]) -> Entry {
    let builder = headers.iter().fold(NewEntry::builder("order", aggregate, "order.placed").json("{}"), |b, (k, v)| {
        b.header(k.as_str(), v.as_str())
    });
    Entry::from_new(builder.build().unwrap(), 1, Timestamp::now())
}

/// An entry whose header frame is exactly `frame_len` bytes under `config`.
fn entry_with_header_frame(aggregate: &str, config: &RabbitMqConfig, frame_len: usize) -> Entry {
    let mut headers: Vec<(String, String)> = (0..16).map(|i| (format!("x-h{i}"), "v".repeat(8 * 1024))).collect();
    let base = header_frame_len(&entry_with_headers(aggregate, &headers), config).unwrap();
    let last = headers.last_mut().unwrap();
    last.1 = "v".repeat(last.1.len() + frame_len - base);
    let entry = entry_with_headers(aggregate, &headers);
    assert_eq!(header_frame_len(&entry, config).unwrap(), frame_len);
    entry
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_over_frame_max_fail_alone_before_sending() {
    let broker = TestBroker::new(&["#"]).await;
    let config = broker.config().build().unwrap();
    let publisher = RabbitMqPublisher::new(config.clone());
    let over = entry_with_header_frame("too-big", &config, FRAME_MAX + 1);
    let at_limit = entry_with_header_frame("at-limit", &config, FRAME_MAX);
    let small = common::entry("small", "order.placed", 1);

    let outcomes = publisher.publish(&[over.clone(), at_limit.clone(), small.clone()]).await.unwrap();
    match &outcomes[0] {
        Outcome::Failed(e) => {
            assert_eq!((e.kind(), e.is_retryable()), (ErrorKind::TooLarge, false), "{e}");
            assert!(e.message().contains("131073-byte header frame"), "{e}");
            assert!(e.message().contains("frame_max of 131072"), "{e}");
        }
        Outcome::Published => panic!("an entry over frame_max was sent"),
    }
    // The one exactly at frame_max reaches the broker: the size is not under-counted.
    assert!(outcomes[1].is_published(), "{:?}", outcomes[1]);
    assert!(outcomes[2].is_published(), "the rest of the batch is not harmed: {:?}", outcomes[2]);
    let got = broker.inbox.deliveries(2, WAIT).await;
    let ids: Vec<String> =
        got.iter().filter_map(|d| d.properties.message_id().as_ref().map(|s| s.to_string())).collect();
    assert_eq!(ids, [at_limit.id.to_string(), small.id.to_string()]);

    // The connection survived: the next batch goes out on it.
    let next = common::entry("small", "order.placed", 2);
    assert!(publisher.publish(std::slice::from_ref(&next)).await.unwrap()[0].is_published());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_over_max_message_size_fails_alone_before_sending() {
    let broker = TestBroker::new(&["#"]).await;
    let publisher = RabbitMqPublisher::new(broker.config().max_message_size(1_000).build().unwrap());
    let with_payload = |aggregate: &str, len: usize| {
        let new = NewEntry::builder("order", aggregate, "order.placed").payload(vec![b'x'; len], "text/plain");
        Entry::from_new(new.build().unwrap(), 1, Timestamp::now())
    };
    let over = with_payload("over", 1_001);
    let fits = with_payload("fits", 1_000);
    let outcomes = publisher.publish(&[over, fits.clone()]).await.unwrap();
    match &outcomes[0] {
        Outcome::Failed(e) => {
            assert_eq!((e.kind(), e.is_retryable()), (ErrorKind::TooLarge, false), "{e}");
            assert!(e.message().contains("1001 bytes, over max_message_size of 1000"), "{e}");
        }
        Outcome::Published => panic!("an entry over max_message_size was sent"),
    }
    assert!(outcomes[1].is_published(), "{:?}", outcomes[1]);
    let got = broker.inbox.deliveries(1, WAIT).await;
    assert_eq!(got[0].data.len(), 1_000);

    let e = RabbitMqConfig::builder(amqp_url(), "").max_message_size(0).build().unwrap_err();
    assert!(matches!(e, ConfigError::Setting { setting: "max_message_size", .. }), "{e}");
    let e = RabbitMqConfig::builder(amqp_url(), "").max_message_size(600 << 20).build().unwrap_err();
    assert!(e.to_string().contains("536870912"), "{e}");
}

#[test]
fn a_url_without_a_host_is_rejected_when_built() {
    for url in ["amqp://", "amqp://@", "amqp://:5672", "amqp://guest:pw@", "amqp:///%2f", "amqps://guest:pw@:5671"] {
        let e = RabbitMqConfig::builder(url, "").build().unwrap_err();
        assert!(matches!(e, ConfigError::Url { .. }), "{url}: {e}");
        assert!(e.to_string().contains("names no host"), "{url}: {e}");
    }
    let e = RabbitMqConfig::builder("amqp:guest:pw@127.0.0.1", "").build().unwrap_err();
    assert!(e.to_string().contains("does not start with amqp://"), "{e}");
}

/// Every piece of `secret` long enough to recognise: none may appear.
fn assert_hidden(secret: &str, shown: &str, url: &str) {
    let pieces: Vec<&str> = secret.split(['/', '?', '#', '@', ':']).filter(|p| p.len() >= 4).collect();
    assert!(!pieces.is_empty());
    for piece in pieces {
        assert!(!shown.contains(piece), "`{piece}` of the secret in {url} shown in: {shown}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_of_the_url_is_ever_shown() {
    // (URL, its secret): passwords with every character that cut redaction short before,
    // URLs without `//`, a token as user name, a secret query parameter, unparsable ports.
    let cases: Vec<(String, &str)> = vec![
        ("amqp://guest:S3CRETone@127.0.0.1:5672/%2f".into(), "S3CRETone"),
        ("amqp://guest:S3C/RETtwo@127.0.0.1:5672/%2f".into(), "S3C/RETtwo"),
        ("amqp://guest:S3C?RETthree@127.0.0.1:5672/%2f".into(), "S3C?RETthree"),
        ("amqp://guest:S3C#RETfour@127.0.0.1:5672/%2f".into(), "S3C#RETfour"),
        ("amqp://guest:S3C@RETfive@127.0.0.1:5672/%2f".into(), "S3C@RETfive"),
        ("amqp://guest:S3C:RETsix@127.0.0.1:5672/%2f".into(), "S3C:RETsix"),
        ("amqp://S3CRETseven@127.0.0.1:5672/%2f".into(), "S3CRETseven"),
        ("amqp:guest:S3CRETeight@127.0.0.1".into(), "S3CRETeight"),
        ("amqp:S3CRETnine@127.0.0.1".into(), "S3CRETnine"),
        ("amqp://guest:S3CRETten@127.0.0.1:notaport/%2f".into(), "S3CRETten"),
        ("amqp://guest:S3C/RETeleven@127.0.0.1:99999/%2f".into(), "S3C/RETeleven"),
        ("amqp://guest:S3CRETtwelve@".into(), "S3CRETtwelve"),
        ("amqp://guest:guest@127.0.0.1:5672/%2f?password=S3CRETthirteen".into(), "S3CRETthirteen"),
        ("http://guest:S3CRETfourteen@127.0.0.1".into(), "S3CRETfourteen"),
        ("amqp://guest:S3CRETfifteen@127.0.0.1:1/%2f".into(), "S3CRETfifteen"),
    ];
    for (url, secret) in &cases {
        match RabbitMqConfig::builder(url.as_str(), "amq.topic").connect_timeout(Duration::from_secs(5)).build() {
            Err(e) => {
                assert_hidden(secret, &e.to_string(), url);
                assert_hidden(secret, &format!("{e:?}"), url);
                let core: outbox_core::Error = e.into();
                assert_hidden(secret, &core.to_string(), url);
                assert_hidden(secret, &format!("{core:?}"), url);
            }
            Ok(config) => {
                assert_hidden(secret, &format!("{config:?}"), url);
                assert_hidden(secret, config.redacted_url(), url);
                let publisher = RabbitMqPublisher::new(config);
                assert_hidden(secret, &format!("{publisher:?}"), url);
                // The broker refuses most of these credentials (or nothing listens): the errors
                // of connecting and of publishing must not show the secret either.
                let connected = publisher.connect().await;
                let published = publisher.publish(&[common::entry("a", "e", 1)]).await;
                let errors: Vec<outbox_core::Error> = connected.err().into_iter().chain(published.err()).collect();
                for e in &errors {
                    assert_hidden(secret, &e.to_string(), url);
                    assert_hidden(secret, &format!("{e:?}"), url);
                    let mut source = std::error::Error::source(e);
                    while let Some(s) = source {
                        assert_hidden(secret, &s.to_string(), url);
                        source = s.source();
                    }
                }
                if secret.starts_with("S3CRET") && url.contains("guest:S3CRET") {
                    assert!(!errors.is_empty(), "{url}: the broker took a wrong password");
                }
            }
        }
    }
}
