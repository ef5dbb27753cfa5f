//! How librdkafka's errors map to outbox [`Error`]s: kind and retryable verdict.
//!
//! Kinds `Unavailable` and `Throttled`, and the timeouts marked so, are **outages**
//! ([`Error::is_outage`]): they say nothing about the entry, so the relay releases it without
//! counting an attempt and pauses until the broker answers. The rest count attempts.
//!
//! | librdkafka / broker error | kind | verdict |
//! |---|---|---|
//! | `MSG_SIZE_TOO_LARGE` (local `message.max.bytes` or broker), `INVALID_MSG_SIZE`, `MESSAGE_BATCH_TOO_LARGE` | `TooLarge` | permanent |
//! | `INVALID_TOPIC_EXCEPTION`, `TOPIC_AUTHORIZATION_FAILED`, `CLUSTER_AUTHORIZATION_FAILED`, `TRANSACTIONAL_ID_AUTHORIZATION_FAILED`, `INVALID_RECORD`, `INVALID_TIMESTAMP`, `POLICY_VIOLATION`, `UNSUPPORTED_FOR_MESSAGE_FORMAT`, `UNSUPPORTED_COMPRESSION_TYPE`, `INVALID_REQUIRED_ACKS`, local `_INVALID_ARG`, `_KEY_SERIALIZATION`, `_VALUE_SERIALIZATION`, `_UNSUPPORTED_FEATURE` | `Rejected` | permanent |
//! | `UNKNOWN_TOPIC_OR_PART`, local `_UNKNOWN_TOPIC`, `_UNKNOWN_PARTITION`, `UNKNOWN_TOPIC_ID` | `Rejected` | retryable (see below) |
//! | `_MSG_TIMED_OUT`, `REQUEST_TIMED_OUT`, `_TIMED_OUT`, `_TIMED_OUT_QUEUE` | `Timeout` | retryable, outage |
//! | `_QUEUE_FULL`, `THROTTLING_QUOTA_EXCEEDED` | `Throttled` | retryable, outage |
//! | `_TRANSPORT`, `_ALL_BROKERS_DOWN`, `_RESOLVE`, `BROKER_NOT_AVAILABLE`, `LEADER_NOT_AVAILABLE`, `NOT_LEADER_FOR_PARTITION`, `REPLICA_NOT_AVAILABLE`, `NETWORK_EXCEPTION`, `NOT_ENOUGH_REPLICAS`, `NOT_ENOUGH_REPLICAS_AFTER_APPEND`, `_ISR_INSUFF`, `KAFKA_STORAGE_ERROR`, `_SSL`, `_AUTHENTICATION`, `SASL_AUTHENTICATION_FAILED`, `_DESTROY` | `Unavailable` | retryable, outage |
//! | `_FATAL` and the error that caused it (e.g. `OUT_OF_ORDER_SEQUENCE_NUMBER`: the idempotent producer cannot go on; the publisher makes a new one), `INVALID_PRODUCER_EPOCH`, `PRODUCER_FENCED` (librdkafka bumps the epoch), `_PURGE_*`, `_INVALID_DIFFERENT_RECORD`, anything else | `Unexpected` | retryable |
//!
//! Decisions where Kafka leaves room:
//! - **A message timeout is an outage.** librdkafka fails a message with `_MSG_TIMED_OUT` when
//!   no broker took it within `message.timeout.ms`: the broker or the partition leader was
//!   unreachable, which is not the entry's fault. One unavailable partition therefore pauses the
//!   relay as a whole until it answers.
//! - **A missing topic is retryable.** Without auto-creation, producing to a topic that does
//!   not exist fails with `UNKNOWN_TOPIC_OR_PART` after `topic.metadata.propagation.max.ms`
//!   (30 s by default). Kafka calls this error retriable: a new topic takes a moment to reach
//!   every broker, and topics are often created by deployment tooling shortly after the
//!   application starts. The relay's retry policy bounds the attempts; after the last one the
//!   entry is dead, with a message saying to create the topic.
//! - **Authentication is retryable, authorization permanent.** A failed login (`_AUTHENTICATION`)
//!   concerns the connection, not the entry, and credentials get rotated; a refused topic or
//!   cluster ACL is a decision about where this entry goes.
//! - **Anything unknown is retryable**: when in doubt the publisher contract prefers a retry
//!   (delivery is at least once) and the retry policy bounds it.
//! - `CORRUPT_MESSAGE` is retryable (`Unexpected`): Kafka marks it retriable (a CRC mismatch
//!   on the wire).

use outbox_core::{Error, ErrorKind};
use rdkafka::error::{KafkaError, RDKafkaErrorCode as C};

/// The kind and retryable verdict of a librdkafka error code.
pub(crate) fn verdict(code: C) -> (ErrorKind, bool) {
    match code {
        C::MessageSizeTooLarge | C::InvalidMessageSize | C::MessageBatchTooLarge => (ErrorKind::TooLarge, false),
        C::InvalidTopic
        | C::TopicAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::TransactionalIdAuthorizationFailed
        | C::InvalidRecord
        | C::InvalidTimestamp
        | C::PolicyViolation
        | C::UnsupportedForMessageFormat
        | C::UnsupportedCompressionType
        | C::InvalidRequiredAcks
        | C::InvalidArgument
        | C::KeySerialization
        | C::ValueSerialization
        | C::UnsupportedFeature => (ErrorKind::Rejected, false),
        C::UnknownTopicOrPartition | C::UnknownTopic | C::UnknownPartition | C::UnknownTopicId => {
            (ErrorKind::Rejected, true)
        }
        C::MessageTimedOut | C::RequestTimedOut | C::OperationTimedOut | C::TimedOutQueue => (ErrorKind::Timeout, true),
        C::QueueFull | C::ThrottlingQuotaExceeded => (ErrorKind::Throttled, true),
        C::BrokerTransportFailure
        | C::AllBrokersDown
        | C::Resolve
        | C::BrokerNotAvailable
        | C::LeaderNotAvailable
        | C::NotLeaderForPartition
        | C::ReplicaNotAvailable
        | C::NetworkException
        | C::NotEnoughReplicas
        | C::NotEnoughReplicasAfterAppend
        | C::ISRInsufficient
        | C::KafkaStorageError
        | C::SSL
        | C::Authentication
        | C::SaslAuthenticationFailed
        | C::BrokerDestroy => (ErrorKind::Unavailable, true),
        _ => (ErrorKind::Unexpected, true),
    }
}

/// Whether a timeout code means the broker did not answer (an outage) rather than anything about
/// the message.
fn timed_out(code: C) -> bool {
    matches!(code, C::MessageTimedOut | C::RequestTimedOut | C::OperationTimedOut | C::TimedOutQueue)
}

/// What to do about an error, added to its message.
fn advice(code: C, topic: &str) -> String {
    match code {
        C::MessageSizeTooLarge | C::InvalidMessageSize | C::MessageBatchTooLarge => format!(
            "the message is larger than `message.max.bytes` of the producer or `max.message.bytes` of topic `{topic}`; send a smaller payload or raise both limits"
        ),
        C::UnknownTopicOrPartition | C::UnknownTopic | C::UnknownPartition | C::UnknownTopicId => format!(
            "topic `{topic}` does not exist on the broker (topics are not created automatically): create it; the entry is retried until the retry policy gives up"
        ),
        C::InvalidTopic => format!("the broker refuses topic name `{topic}`: change the routing"),
        C::TopicAuthorizationFailed | C::ClusterAuthorizationFailed | C::TransactionalIdAuthorizationFailed => {
            format!("the producer's principal may not write to `{topic}` (or use the idempotent producer): grant the ACL")
        }
        C::QueueFull => "librdkafka's producer queue stayed full: raise `queue.buffering.max.messages` / `queue.buffering.max.kbytes` or publish smaller batches".to_string(),
        C::MessageTimedOut => "the broker did not acknowledge it within `message.timeout.ms`; check that the broker is up and reachable".to_string(),
        C::Authentication | C::SaslAuthenticationFailed => "check the SASL/TLS credentials".to_string(),
        C::Fatal | C::OutOfOrderSequenceNumber => {
            "the idempotent producer hit a fatal error; a new producer is made for the next batch".to_string()
        }
        _ if verdict(code).1 => "it is retried".to_string(),
        _ => format!("the broker refuses this message for `{topic}`; it is not retried"),
    }
}

/// The outbox error for a librdkafka error on a message to `topic`.
pub(crate) fn delivery_error(error: &KafkaError, topic: &str, code: Option<C>) -> Error {
    let Some(code) = code.or_else(|| error.rdkafka_error_code()) else {
        return Error::new(ErrorKind::Unexpected, format!("publishing to Kafka topic `{topic}` failed: {error}"))
            .with_retryable(true);
    };
    let (kind, retryable) = verdict(code);
    Error::new(kind, format!("publishing to Kafka topic `{topic}` failed ({code:?}): {}", advice(code, topic)))
        .with_source(error.clone())
        .with_retryable(retryable)
        .with_outage(kind.default_outage() || timed_out(code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table() {
        let cases: &[(C, ErrorKind, bool)] = &[
            (C::MessageSizeTooLarge, ErrorKind::TooLarge, false),
            (C::InvalidTopic, ErrorKind::Rejected, false),
            (C::TopicAuthorizationFailed, ErrorKind::Rejected, false),
            (C::ClusterAuthorizationFailed, ErrorKind::Rejected, false),
            (C::InvalidRecord, ErrorKind::Rejected, false),
            (C::UnknownTopicOrPartition, ErrorKind::Rejected, true),
            (C::UnknownTopic, ErrorKind::Rejected, true),
            (C::MessageTimedOut, ErrorKind::Timeout, true),
            (C::RequestTimedOut, ErrorKind::Timeout, true),
            (C::QueueFull, ErrorKind::Throttled, true),
            (C::BrokerTransportFailure, ErrorKind::Unavailable, true),
            (C::AllBrokersDown, ErrorKind::Unavailable, true),
            (C::LeaderNotAvailable, ErrorKind::Unavailable, true),
            (C::NotLeaderForPartition, ErrorKind::Unavailable, true),
            (C::BrokerNotAvailable, ErrorKind::Unavailable, true),
            (C::NetworkException, ErrorKind::Unavailable, true),
            (C::NotEnoughReplicas, ErrorKind::Unavailable, true),
            (C::Authentication, ErrorKind::Unavailable, true),
            (C::Fatal, ErrorKind::Unexpected, true),
            (C::InvalidDifferentRecord, ErrorKind::Unexpected, true),
            (C::OutOfOrderSequenceNumber, ErrorKind::Unexpected, true),
        ];
        for (code, kind, retryable) in cases {
            assert_eq!(verdict(*code), (*kind, *retryable), "{code:?}");
        }
    }

    #[test]
    fn broker_side_failures_are_outages_and_entry_failures_are_not() {
        let outage = |code| delivery_error(&KafkaError::MessageProduction(code), "orders", None).is_outage();
        for code in [
            C::MessageTimedOut,
            C::RequestTimedOut,
            C::TimedOutQueue,
            C::QueueFull,
            C::ThrottlingQuotaExceeded,
            C::BrokerTransportFailure,
            C::AllBrokersDown,
            C::LeaderNotAvailable,
            C::NotEnoughReplicas,
            C::Authentication,
        ] {
            assert!(outage(code), "{code:?}");
        }
        for code in [C::MessageSizeTooLarge, C::InvalidRecord, C::UnknownTopicOrPartition, C::Fatal, C::PolicyViolation]
        {
            assert!(!outage(code), "{code:?}");
        }
    }

    #[test]
    fn errors_name_the_topic_and_what_to_do() {
        let e = delivery_error(&KafkaError::MessageProduction(C::MessageSizeTooLarge), "orders", None);
        assert_eq!(e.kind(), ErrorKind::TooLarge);
        assert!(!e.is_retryable());
        assert!(e.message().contains("`orders`") && e.message().contains("message.max.bytes"), "{e}");
        let e = delivery_error(&KafkaError::MessageProduction(C::PolicyViolation), "orders", None);
        assert!(!e.is_retryable() && e.message().contains("not retried"), "{e}");
        let e = delivery_error(&KafkaError::MessageProduction(C::UnknownTopicOrPartition), "nope", None);
        assert!(e.is_retryable());
        assert!(e.message().contains("create it"), "{e}");
    }
}
