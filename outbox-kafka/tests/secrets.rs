//! No secret of any producer option appears in `Debug`, `Display` or an error: options named
//! like secrets (misspelled too), structured ones (`sasl.oauthbearer.config`), and credentials
//! in `bootstrap.servers`. librdkafka checks options when the producer is made: no broker is
//! contacted.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers may unwrap

use outbox_kafka::{KafkaConfig, KafkaPublisher, Routing};

const SECRETS: &[&str] = &["S3CRET-one", "S3CRET-two", "S3CRET-three", "S3CRET-four", "S3CRET-five", "S3CRET-six"];

fn assert_hidden(shown: &str) {
    assert!(!shown.contains("S3CRET"), "a secret is shown: {shown}");
}

/// Every way the configuration or its publisher can be shown.
fn check(config: KafkaConfig) {
    assert_hidden(&format!("{config:?}"));
    match KafkaPublisher::new(config) {
        Ok(publisher) => assert_hidden(&format!("{publisher:?}")),
        Err(e) => {
            assert_hidden(&e.to_string());
            assert_hidden(&format!("{e:?}"));
            let core: outbox_core::Error = e.into();
            assert_hidden(&core.to_string());
            assert_hidden(&format!("{core:?}"));
        }
    }
}

fn base() -> KafkaConfig {
    KafkaConfig::new("127.0.0.1:9092", Routing::topic("orders").unwrap())
}

#[test]
fn secret_options_are_never_shown() {
    // Every secret option librdkafka knows, and misspelled ones it does not.
    let all = base()
        .set("security.protocol", "sasl_plaintext")
        .set("sasl.mechanism", "PLAIN")
        .set("sasl.username", "relay")
        .set("sasl.password", SECRETS[0])
        .set("ssl.key.password", SECRETS[1])
        .set("sasl.oauthbearer.client.secret", SECRETS[2])
        .set("sasl.oauthbearer.config", format!("principal=relay clientSecret={} scope=orders", SECRETS[3]))
        .set("ssl.key.pem", SECRETS[4])
        .set("ssl.keystore.password", SECRETS[5]);
    let debug = format!("{all:?}");
    assert!(debug.contains("relay") && debug.contains("<redacted>"), "{debug}");
    check(all);
    for misspelled in
        ["sasl.pasword", "sasl.passwrd", "SASL.PASSWORD", "sasl.oauthbearer.client.secrte", "ssl.key.passwd"]
    {
        check(base().set(misspelled, SECRETS[0]));
    }
}

#[test]
fn invalid_secret_values_are_not_quoted_in_errors() {
    // Values librdkafka refuses: its message would quote them.
    check(base().set("sasl.mechanism", "OAUTHBEARER").set("sasl.oauthbearer.config", "S3CRET-no-equals-sign"));
    check(
        base()
            .set("sasl.mechanism", "OAUTHBEARER")
            .set("sasl.oauthbearer.method", "oidc")
            .set("sasl.oauthbearer.client.secret", "S3CRET-oidc-without-endpoint"),
    );
    check(base().set("ssl.key.pem", "-----BEGIN PRIVATE KEY-----S3CRET-----END PRIVATE KEY-----"));
    check(base().set("sasl.password", "S3CRET").set("sasl.mechanism", "NOT-A-MECHANISM"));
}

#[test]
fn credentials_in_bootstrap_servers_are_redacted() {
    let config = KafkaConfig::new("sasl_ssl://relay:S3CRET-url@b1:9092,b2:9092", Routing::topic("orders").unwrap());
    let debug = format!("{config:?}");
    assert!(debug.contains("sasl_ssl://relay:***@b1:9092,b2:9092"), "{debug}");
    check(config);
}
