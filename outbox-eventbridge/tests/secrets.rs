//! No AWS credential and no secret of the endpoint URL appears in `Debug`, `Display` or an
//! error, whatever the request does: against the local moto server (`cargo xtask services up`)
//! and an endpoint where nothing listens.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{entry, require_server};
use outbox_core::{Outcome, Publisher};
use outbox_eventbridge::aws_config::{self, BehaviorVersion};
use outbox_eventbridge::aws_sdk_eventbridge::config::{Credentials, Region};
use outbox_eventbridge::{EventBridgeConfig, EventBridgePublisher};

const ACCESS_KEY_ID: &str = "AKIAS3CRETEXAMPLE999";
const SECRET_ACCESS_KEY: &str = "S3CRET/secret+access+key";
const SESSION_TOKEN: &str = "S3CRET-session-token";

fn assert_hidden(shown: &str) {
    for secret in ["S3CRET", ACCESS_KEY_ID, "secret+access"] {
        assert!(!shown.contains(secret), "`{secret}` shown in: {shown}");
    }
}

async fn publisher(endpoint: &str, bus: Option<&str>) -> EventBridgePublisher {
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(
            ACCESS_KEY_ID,
            SECRET_ACCESS_KEY,
            Some(SESSION_TOKEN.to_string()),
            None,
            "outbox-tests",
        ))
        .load()
        .await;
    let mut config = EventBridgeConfig::builder("com.example.orders").endpoint_url(endpoint);
    if let Some(bus) = bus {
        config = config.event_bus_name(bus);
    }
    let publisher = EventBridgePublisher::from_sdk_config(&sdk, config.build().unwrap());
    assert_hidden(&format!("{publisher:?}"));
    assert_hidden(&format!("{:?}", publisher.config()));
    publisher
}

/// Publishes one entry and checks every text of the outcome.
async fn publish_and_check(publisher: &EventBridgePublisher) {
    let result = publisher.publish(&[entry("o-1", 1, r#"{"n":1}"#)]).await;
    match result {
        Err(e) => {
            assert_hidden(&e.to_string());
            assert_hidden(&format!("{e:?}"));
        }
        Ok(outcomes) => {
            for outcome in outcomes {
                if let Outcome::Failed(e) = outcome {
                    assert_hidden(&e.to_string());
                    assert_hidden(&format!("{e:?}"));
                    let mut source = std::error::Error::source(&e);
                    while let Some(s) = source {
                        assert_hidden(&s.to_string());
                        source = s.source();
                    }
                }
            }
        }
    }
}

#[tokio::test]
async fn credentials_and_url_secrets_never_show() {
    let server = require_server();
    let authority = server.split("://").nth(1).unwrap();
    // The server, reached with credentials in the URL (passwords holding `/`, `?`, `@`), a
    // missing bus (the request is refused), and an endpoint where nothing listens.
    for endpoint in [
        format!("http://user:S3CRET-a@{authority}"),
        format!("http://user:S3C/RET-b@{authority}"),
        format!("http://user:S3C?RET-c@{authority}"),
        format!("http://user:S3C@RET-d@{authority}"),
        format!("http://S3CRET-e@{authority}"),
        format!("http://{authority}/?token=S3CRET-f"),
        "http://user:S3CRET-g@127.0.0.1:1".to_string(),
    ] {
        for bus in [None, Some("no-such-bus-s")] {
            let publisher = publisher(&endpoint, bus).await;
            publish_and_check(&publisher).await;
        }
    }
}

#[test]
fn config_errors_never_show_url_secrets() {
    for url in
        ["ftp://user:S3CRET@host", "http:user:S3CRET@host", "user:S3C/RET@host", "http://", "https://user:S3C RET@host"]
    {
        match EventBridgeConfig::builder("s").endpoint_url(url).build() {
            Err(e) => {
                assert_hidden(&e.to_string());
                assert_hidden(&format!("{e:?}"));
                let core: outbox_core::Error = e.into();
                assert_hidden(&core.to_string());
            }
            Ok(config) => assert_hidden(&format!("{config:?}")),
        }
    }
}
