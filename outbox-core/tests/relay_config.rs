//! `RelayConfig` validation against what the stores can hold: lease holders that fit their
//! column, durations whose end is storable, a bounded number of batches in flight.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers may unwrap

use std::sync::Arc;
use std::time::Duration;

use outbox_core::{
    ClaimRequest, CollectingPublisher, ErrorKind, ExponentialBackoff, ManualClock, MemoryStore, Relay, RelayConfig,
    Timestamp,
};

const YEAR: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// The configuration error's message, or a panic if the configuration was accepted.
fn rejected(config: RelayConfig) -> String {
    match Relay::new(MemoryStore::new(), CollectingPublisher::new(), config) {
        Ok(_) => panic!("the configuration was accepted"),
        Err(err) => {
            assert_eq!(err.kind(), ErrorKind::Config, "{err}");
            assert!(!err.is_retryable(), "{err}");
            err.message().to_string()
        }
    }
}

fn accepted(config: RelayConfig) {
    if let Err(err) = Relay::new(MemoryStore::new(), CollectingPublisher::new(), config) {
        panic!("rejected: {err}");
    }
}

#[test]
fn a_relay_id_too_long_for_the_lease_holder_column_is_rejected() {
    assert_eq!(RelayConfig::MAX_RELAY_ID_LEN, 234);
    // The longest relay id with the largest batch counter still fits the 255-character column.
    let holder = format!("{}:{}", "r".repeat(RelayConfig::MAX_RELAY_ID_LEN), u64::MAX);
    assert_eq!(holder.len(), ClaimRequest::MAX_HOLDER_LEN);
    accepted(RelayConfig { relay_id: "r".repeat(RelayConfig::MAX_RELAY_ID_LEN), ..RelayConfig::default() });

    let message = rejected(RelayConfig { relay_id: "r".repeat(300), ..RelayConfig::default() });
    assert!(message.contains("relay_id is 300 bytes, over the limit of 234"), "{message}");
    assert!(message.contains("lease_holder"), "{message}");
    assert!(message.len() < 400, "the id is not echoed whole: {message}");
    // Multi-byte characters count by bytes: 117 × 'é' = 234 bytes fits, 118 does not.
    accepted(RelayConfig { relay_id: "é".repeat(117), ..RelayConfig::default() });
    rejected(RelayConfig { relay_id: "é".repeat(118), ..RelayConfig::default() });
}

#[test]
fn a_relay_id_with_invisible_or_control_characters_is_rejected() {
    for bad in ["relay\u{202E}1", "relay\u{200B}1", "relay\u{FEFF}", "relay\n1", "relay\u{2028}1", " relay", "relay\t"]
    {
        let message = rejected(RelayConfig { relay_id: bad.to_string(), ..RelayConfig::default() });
        assert!(message.contains("relay_id"), "{bad:?}: {message}");
        let invisible = bad.chars().find(|c| !c.is_ascii_alphanumeric() && *c != ' ');
        if let Some(c) = invisible {
            assert!(!message.contains(c), "the message escapes {c:?}: {message}");
        }
    }
    accepted(RelayConfig { relay_id: "relais-münchen-1".to_string(), ..RelayConfig::default() });
}

#[test]
fn max_in_flight_is_capped() {
    assert_eq!(RelayConfig::MAX_IN_FLIGHT, 64);
    accepted(RelayConfig { max_in_flight: RelayConfig::MAX_IN_FLIGHT, ..RelayConfig::default() });
    let message = rejected(RelayConfig { max_in_flight: 10_000, ..RelayConfig::default() });
    assert!(message.contains("max_in_flight is 10000, over the limit of 64"), "{message}");
    assert!(message.contains("pool"), "{message}");
}

#[test]
fn absurd_durations_are_rejected_naming_the_value() {
    // A lease of 10,000 years would end past year 9999 (and some drivers wrap that to 1970).
    let message = rejected(RelayConfig { lease_duration: YEAR * 10_000, ..RelayConfig::default() });
    assert!(message.starts_with("invalid relay config: lease_duration is 315360000000s"), "{message}");
    assert!(message.contains("RelayConfig::MAX_DURATION"), "{message}");
    let message = rejected(RelayConfig { lease_duration: Duration::MAX, ..RelayConfig::default() });
    assert!(message.contains("lease_duration"), "{message}");
    let message =
        rejected(RelayConfig { publish_timeout: YEAR * 200, lease_duration: YEAR * 300, ..RelayConfig::default() });
    assert!(message.contains("lease_duration is"), "the first offender is named: {message}");
    let message = rejected(RelayConfig {
        retry: Arc::new(ExponentialBackoff::new(Duration::from_millis(100), 2, YEAR * 1_000, 10)),
        ..RelayConfig::default()
    });
    assert!(message.contains("the retry policy's max_delay is"), "{message}");
    accepted(RelayConfig {
        lease_duration: RelayConfig::MAX_DURATION,
        publish_timeout: Duration::from_secs(60),
        retry: Arc::new(ExponentialBackoff::new(Duration::from_millis(100), 2, RelayConfig::MAX_DURATION, 10)),
        ..RelayConfig::default()
    });
}

#[test]
fn durations_are_checked_against_the_clock_so_stored_times_stay_storable() {
    // A clock a day before the end of the storable range: a 30 s lease fits, two days do not.
    let late = Arc::new(ManualClock::new(Timestamp::from_micros(
        Timestamp::MAX_STORABLE.as_micros() - 24 * 60 * 60 * 1_000_000,
    )));
    accepted(RelayConfig {
        clock: late.clone(),
        retry: Arc::new(ExponentialBackoff::new(Duration::from_millis(100), 2, Duration::from_secs(60), 10)),
        ..RelayConfig::default()
    });
    let message = rejected(RelayConfig {
        clock: late.clone(),
        lease_duration: Duration::from_secs(2 * 24 * 60 * 60),
        ..RelayConfig::default()
    });
    assert!(message.contains("lease_duration is 172800s"), "{message}");
    assert!(message.contains("Timestamp::MAX_STORABLE"), "{message}");
    // The default retry policy waits up to 5 minutes: fine a day before the end.
    accepted(RelayConfig { clock: late, ..RelayConfig::default() });
}
