//! [`KafkaPublisher`]: the [`Publisher`] port on an rdkafka `FutureProducer`.

use std::borrow::Cow;
use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use outbox_core::{DeliveryTimeout, Entry, Error, ErrorKind, Outcome, Publisher, Result};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers as _, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use crate::classify::delivery_error;
use crate::config::{ConfigError, KafkaConfig, Key, MESSAGE_TIMEOUT, describe_client_error};
use crate::headers;

/// How long one send may wait for room in librdkafka's queue before it fails (retryable).
///
/// Kept short: the relay gives up on a whole publish after its `publish_timeout` (10 s by
/// default).
pub const QUEUE_FULL_WAIT: Duration = Duration::from_secs(5);

/// How long to sleep when the queue is full and this batch has nothing in flight to wait for
/// (another batch filled the queue).
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(5);

/// Publishes outbox entries to Kafka.
///
/// A batch is sent by enqueuing every message into librdkafka (which pipelines them to the
/// brokers), then awaiting every delivery report; each report becomes the entry's
/// [`Outcome`]: `Published` only once the broker acknowledged the message with the configured
/// `acks` (`all` by default). Errors map to kinds and verdicts as the crate docs' table says.
///
/// Order: entries of one aggregate share a key, so a partition; librdkafka keeps the order of
/// a partition, and the idempotent producer (on by default) keeps it through its internal
/// retries. When an entry cannot even be enqueued (invalid topic name, too large, queue full
/// for too long), the later entries of its aggregate in the batch are not sent either and are
/// reported as retryable failures, so the broker never sees them ahead of it.
///
/// Cloning is cheap and shares the producer.
#[derive(Clone)]
pub struct KafkaPublisher {
    inner: Arc<Inner>,
}

struct Inner {
    config: KafkaConfig,
    producer: RwLock<Arc<FutureProducer>>,
}

impl KafkaPublisher {
    /// Creates the producer. librdkafka checks every option now; no connection is made until
    /// the first publish.
    pub fn new(config: KafkaConfig) -> Result<Self, ConfigError> {
        let producer = create_producer(&config)?;
        Ok(KafkaPublisher { inner: Arc::new(Inner { config, producer: RwLock::new(Arc::new(producer)) }) })
    }

    /// The configuration it was made with.
    pub fn config(&self) -> &KafkaConfig {
        &self.inner.config
    }

    /// The rdkafka producer in use (for metrics, `flush` at shutdown, or other sends).
    pub fn producer(&self) -> Arc<FutureProducer> {
        match self.inner.producer.read() {
            Ok(p) => Arc::clone(&p),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Waits until every message handed to librdkafka is delivered or failed, for at most
    /// `timeout`. Call it at shutdown.
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        self.producer().flush(Timeout::After(timeout)).map_err(|e| {
            Error::new(ErrorKind::Timeout, format!("flushing the Kafka producer did not finish in {timeout:?}"))
                .with_source(e)
        })
    }

    /// Replaces a producer that hit a fatal error (the idempotent producer cannot continue
    /// after one), unless another batch already did.
    fn replace_fatal_producer(&self, failed: &Arc<FutureProducer>) {
        let Ok(fresh) = create_producer(&self.inner.config) else {
            // The configuration was accepted before; if librdkafka refuses it now, keep the old
            // producer: its sends fail retryably and the next batch tries again.
            return;
        };
        let mut current = match self.inner.producer.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if Arc::ptr_eq(&current, failed) {
            *current = Arc::new(fresh);
        }
    }

    async fn publish_batch(&self, batch: &[Entry]) -> Vec<Outcome> {
        let producer = self.producer();
        let config = &self.inner.config;
        let mut outcomes: Vec<Option<Outcome>> = std::iter::repeat_with(|| None).take(batch.len()).collect();
        let mut in_flight: VecDeque<InFlight<'_>> = VecDeque::with_capacity(batch.len());
        // Aggregates with an entry that could not be enqueued: their later entries stay back.
        let mut held: HashSet<(&str, &str)> = HashSet::new();
        let mut fatal = false;

        for (index, entry) in batch.iter().enumerate() {
            let aggregate = (entry.aggregate_type.as_str(), entry.aggregate_id.as_str());
            if !held.is_empty() && held.contains(&aggregate) {
                outcomes[index] = Some(Outcome::Failed(held_back(entry)));
                continue;
            }
            let topic = match config.routing.topic_for(entry) {
                Ok(topic) => topic,
                Err(e) => {
                    held.insert(aggregate);
                    outcomes[index] = Some(Outcome::Failed(e));
                    continue;
                }
            };
            let key = message_key(&config.key, entry);
            let message_headers = headers::for_entry(entry);
            let size = wire_size(key.len(), entry.payload.len(), &message_headers);
            let limit = config.message_max_bytes();
            if size > limit {
                held.insert(aggregate);
                outcomes[index] = Some(Outcome::Failed(too_large(entry, size, key.len(), limit)));
                continue;
            }
            let mut record =
                FutureRecord::to(&topic).key(key.as_ref()).payload(entry.payload.as_bytes()).headers(message_headers);
            let mut waited_since: Option<Instant> = None;
            loop {
                match producer.send_result(record) {
                    Ok(delivery) => {
                        in_flight.push_back(InFlight { index, topic, delivery });
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned))
                        if waited_since.is_none_or(|since| since.elapsed() < QUEUE_FULL_WAIT) =>
                    {
                        record = returned;
                        waited_since.get_or_insert_with(Instant::now);
                        // Make room by waiting for our oldest message (its report is needed
                        // anyway); with none in flight, another batch filled the queue: back off.
                        match in_flight.pop_front() {
                            Some(oldest) => {
                                let (i, outcome, was_fatal) = oldest.finish().await;
                                fatal |= was_fatal;
                                outcomes[i] = Some(outcome);
                            }
                            None => tokio::time::sleep(QUEUE_FULL_BACKOFF).await,
                        }
                    }
                    Err((e, _)) => {
                        held.insert(aggregate);
                        fatal |= is_fatal(&e);
                        outcomes[index] = Some(Outcome::Failed(delivery_error(&e, &topic, None)));
                        break;
                    }
                }
            }
        }
        while let Some(sent) = in_flight.pop_front() {
            let (i, outcome, was_fatal) = sent.finish().await;
            fatal |= was_fatal;
            outcomes[i] = Some(outcome);
        }
        // librdkafka reports the error that made the producer fail fatally (e.g. a sequence
        // desynchronization) with its own code, and only later sends with `_FATAL`: ask it.
        if fatal || (outcomes.iter().any(|o| !matches!(o, Some(Outcome::Published))) && has_fatal_error(&producer)) {
            self.replace_fatal_producer(&producer);
        }
        outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    Outcome::Failed(
                        Error::new(ErrorKind::Unexpected, "no delivery report was recorded for this entry")
                            .with_retryable(true),
                    )
                })
            })
            .collect()
    }
}

/// A message handed to librdkafka, waiting for its delivery report.
struct InFlight<'a> {
    index: usize,
    topic: Cow<'a, str>,
    delivery: DeliveryFuture,
}

impl InFlight<'_> {
    /// The entry's index, its outcome, and whether the producer hit a fatal error.
    async fn finish(self) -> (usize, Outcome, bool) {
        match self.delivery.await {
            Ok(Ok(_delivery)) => (self.index, Outcome::Published, false),
            Ok(Err((e, _message))) => {
                let fatal = is_fatal(&e);
                (self.index, Outcome::Failed(delivery_error(&e, &self.topic, None)), fatal)
            }
            Err(_canceled) => (
                self.index,
                Outcome::Failed(Error::new(
                    ErrorKind::Unavailable,
                    format!("the Kafka producer shut down before reporting the delivery to `{}`", self.topic),
                )),
                false,
            ),
        }
    }
}

fn has_fatal_error(producer: &FutureProducer) -> bool {
    producer.client().fatal_error().is_some()
}

fn is_fatal(e: &KafkaError) -> bool {
    e.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal)
}

/// The most bytes librdkafka adds to a message's key, value and headers when it checks
/// `message.max.bytes`: the largest varint encodings of a v2 record's length, attributes,
/// timestamp delta, offset delta, key length, value length and header count
/// (`RD_KAFKAP_MESSAGE_V2_MAX_OVERHEAD`).
const RECORD_OVERHEAD: usize = 5 + 1 + 10 + 5 + 5 + 5 + 5;

/// The bytes of a zigzag varint encoding `n`, as a v2 record writes lengths.
fn varint_len(n: usize) -> usize {
    let mut zigzag = (n as u64) << 1;
    let mut len = 1;
    while zigzag >= 0x80 {
        zigzag >>= 7;
        len += 1;
    }
    len
}

/// The size librdkafka counts for a message against `message.max.bytes`: the record overhead,
/// the key and value, and each header's name and value with their varint lengths.
pub(crate) fn wire_size(key_len: usize, value_len: usize, headers: &OwnedHeaders) -> usize {
    let headers: usize = headers
        .iter()
        .map(|h| {
            let value = h.value.map_or(0, <[u8]>::len);
            varint_len(h.key.len()) + h.key.len() + varint_len(value) + value
        })
        .sum();
    RECORD_OVERHEAD + key_len + value_len + headers
}

fn too_large(entry: &Entry, size: usize, key_len: usize, limit: usize) -> Error {
    Error::new(
        ErrorKind::TooLarge,
        format!(
            "entry {} was not sent: as a Kafka message it is {size} bytes (payload {}, key {key_len}, headers and \
             record overhead the rest), over the producer's `message.max.bytes` of {limit} (librdkafka's default is \
             1,000,000); send a smaller payload (or a reference to it), or raise `message.max.bytes` together with \
             the topic's `max.message.bytes`",
            entry.id,
            entry.payload.len()
        ),
    )
}

fn held_back(entry: &Entry) -> Error {
    Error::new(
        ErrorKind::Conflict,
        format!(
            "not sent: an earlier entry of aggregate {}/{} in this batch failed, and this one must follow it",
            entry.aggregate_type, entry.aggregate_id
        ),
    )
}

fn message_key<'a>(key: &Key, entry: &'a Entry) -> Cow<'a, [u8]> {
    match key {
        Key::AggregateId => Cow::Borrowed(entry.aggregate_id.as_bytes()),
        Key::AggregateTypeAndId => Cow::Owned(format!("{}/{}", entry.aggregate_type, entry.aggregate_id).into_bytes()),
        Key::Custom(f) => Cow::Owned(f(entry)),
    }
}

fn create_producer(config: &KafkaConfig) -> Result<FutureProducer, ConfigError> {
    config.client_config()?.create().map_err(|e| ConfigError::Rejected(describe_client_error(&e, config)))
}

impl Publisher for KafkaPublisher {
    async fn publish(&self, batch: &[Entry]) -> Result<Vec<Outcome>> {
        #[cfg(feature = "tracing")]
        {
            let routing = &self.inner.config.routing;
            let topic = || {
                outbox_telemetry::send::single_destination(batch, |e| routing.topic_for(e).ok().map(Cow::into_owned))
            };
            outbox_telemetry::send::Send::new(crate::trace::SYSTEM, batch)
                .traced(topic, async { Ok(self.publish_batch(batch).await) })
                .await
        }
        #[cfg(not(feature = "tracing"))]
        Ok(self.publish_batch(batch).await)
    }
}

/// `message.timeout.ms` (8 s by default, see [`DEFAULT_OPTIONS`](crate::DEFAULT_OPTIONS)): build
/// the relay with [`Relay::new_checked`](outbox_core::Relay::new_checked) to refuse a relay
/// whose `publish_timeout` is not longer.
impl DeliveryTimeout for KafkaPublisher {
    fn delivery_timeout(&self) -> Option<Duration> {
        // librdkafka checked the value when the producer was made; 0 means no limit, and an
        // unset option is librdkafka's default of 300 s.
        match self.inner.config.get(MESSAGE_TIMEOUT).map(str::parse::<u64>) {
            Some(Ok(0)) => None,
            Some(Ok(ms)) => Some(Duration::from_millis(ms)),
            Some(Err(_)) | None => Some(Duration::from_secs(300)),
        }
    }

    fn delivery_timeout_setting(&self) -> &str {
        "Kafka `message.timeout.ms`"
    }
}

impl fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaPublisher").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Routing;
    use outbox_core::{NewEntry, Timestamp};

    /// An entry whose message is exactly `size` bytes as librdkafka counts it.
    fn entry_of_size(size: usize) -> Entry {
        let build = |payload_len: usize| {
            let new = NewEntry::builder("order", "o-42", "order.placed")
                .payload(vec![b'x'; payload_len], "application/octet-stream")
                .header("x-tenant", "acme")
                .build()
                .unwrap();
            Entry::from_new(new, 7, Timestamp::from_millis(0))
        };
        let measure = |e: &Entry| wire_size(e.aggregate_id.len(), e.payload.len(), &headers::for_entry(e));
        let base = measure(&build(0));
        let entry = build(size - base);
        assert_eq!(measure(&entry), size);
        entry
    }

    #[test]
    fn the_size_check_agrees_with_librdkafka_to_the_byte() {
        // librdkafka checks message.max.bytes when a message is enqueued, before any broker is
        // contacted: no server is needed to compare.
        let limit = 2_000;
        let config = KafkaConfig::new("127.0.0.1:1", Routing::topic("sizes").unwrap())
            .set("message.max.bytes", limit.to_string())
            .set("message.timeout.ms", "1000");
        let producer = create_producer(&config).unwrap();
        for (size, fits) in [(limit, true), (limit + 1, false)] {
            let entry = entry_of_size(size);
            let record = FutureRecord::to("sizes")
                .key(entry.aggregate_id.as_bytes())
                .payload(entry.payload.as_bytes())
                .headers(headers::for_entry(&entry));
            match producer.send_result(record) {
                Ok(_) => assert!(fits, "librdkafka took {size} bytes over {limit}"),
                Err((e, _)) => {
                    assert!(!fits, "librdkafka refused {size} bytes at {limit}: {e}");
                    assert_eq!(e.rdkafka_error_code(), Some(RDKafkaErrorCode::MessageSizeTooLarge));
                }
            }
        }
        producer.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
    }

    #[tokio::test]
    async fn an_entry_over_message_max_bytes_fails_before_sending() {
        // Nothing listens on port 1: an entry that were sent would time out, not fail at once.
        let config = KafkaConfig::new("127.0.0.1:1", Routing::topic("sizes").unwrap());
        assert_eq!(config.message_max_bytes(), 1_000_000, "librdkafka's default");
        let publisher = KafkaPublisher::new(config).unwrap();
        // The outbox's default payload limit (1 MiB) lets through entries Kafka refuses.
        let new = NewEntry::builder("order", "o-42", "order.placed")
            .payload(vec![b'x'; 1_000_000], "application/octet-stream")
            .build()
            .unwrap();
        let entry = Entry::from_new(new, 1, Timestamp::from_millis(0));
        let outcomes = publisher.publish(&[entry]).await.unwrap();
        let Outcome::Failed(e) = &outcomes[0] else { panic!("sent: {outcomes:?}") };
        assert_eq!((e.kind(), e.is_retryable()), (ErrorKind::TooLarge, false), "{e}");
        assert!(e.message().contains("over the producer's `message.max.bytes` of 1000000"), "{e}");
        assert!(e.message().contains("payload 1000000, key 4"), "{e}");
    }

    #[test]
    fn the_delivery_timeout_is_message_timeout_ms() {
        let publisher = |config: KafkaConfig| KafkaPublisher::new(config).unwrap();
        let config = || KafkaConfig::new("127.0.0.1:9092", crate::Routing::topic("t").unwrap());
        assert_eq!(publisher(config()).delivery_timeout(), Some(Duration::from_secs(8)));
        let set = publisher(config().set("message.timeout.ms", "12000"));
        assert_eq!(set.delivery_timeout(), Some(Duration::from_secs(12)));
        let alias = publisher(config().set("delivery.timeout.ms", "9000"));
        assert_eq!(alias.delivery_timeout(), Some(Duration::from_secs(9)), "the alias replaces the default");
        assert_eq!(publisher(config().set("message.timeout.ms", "0")).delivery_timeout(), None);
    }

    #[test]
    fn a_relay_whose_publish_timeout_is_not_above_message_timeout_is_refused() {
        use outbox_core::{MemoryStore, Relay, RelayConfig};
        let config = KafkaConfig::new("127.0.0.1:9092", crate::Routing::topic("t").unwrap());
        let slow = KafkaPublisher::new(config.clone().set("message.timeout.ms", "15000")).unwrap();
        let err = Relay::new_checked(MemoryStore::new(), slow, RelayConfig::default()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert_eq!(
            err.to_string(),
            "invalid relay config: Kafka `message.timeout.ms` (15s) is not shorter than publish_timeout (10s): the relay would give up on batches the publisher may still deliver; lower Kafka `message.timeout.ms` below publish_timeout, or raise publish_timeout (and lease_duration above it) (config, permanent)"
        );
        let default = KafkaPublisher::new(config).unwrap();
        assert!(Relay::new_checked(MemoryStore::new(), default, RelayConfig::default()).is_ok(), "8 s < 10 s");
    }

    #[test]
    fn keys_follow_the_configured_strategy() {
        let new = NewEntry::builder("order", "o-42", "order.placed").build().unwrap();
        let entry = Entry::from_new(new, 1, Timestamp::from_millis(0));
        assert_eq!(message_key(&Key::AggregateId, &entry).as_ref(), b"o-42");
        assert_eq!(message_key(&Key::AggregateTypeAndId, &entry).as_ref(), b"order/o-42");
        let custom = Key::Custom(Arc::new(|e: &Entry| e.aggregate_id.to_uppercase().into_bytes()));
        assert_eq!(message_key(&custom, &entry).as_ref(), b"O-42");
    }
}
