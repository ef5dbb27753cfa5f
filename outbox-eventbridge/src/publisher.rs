//! [`EventBridgePublisher`]: the outbox [`Publisher`] over `PutEvents`.

use std::collections::HashSet;
use std::sync::Arc;

use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_eventbridge::Client;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use outbox_core::{Entry, Error, ErrorKind, Outcome, Publisher, Result};

use crate::classify;
use crate::config::EventBridgeConfig;
use crate::mapping::prepare;

/// Publishes outbox entries to an EventBridge event bus with `PutEvents`.
///
/// A batch is cut into requests of at most 10 entries and 256 KiB (see
/// [`request_entry_size`](crate::request_entry_size)), sent one after the other in batch order.
/// Each entry gets its own outcome, matched by index with the response. See the crate docs for
/// the field mapping, the ordering caveats and the error table.
#[derive(Clone)]
pub struct EventBridgePublisher {
    client: Client,
    config: Arc<EventBridgeConfig>,
}

impl EventBridgePublisher {
    /// A publisher over a ready client (its endpoint, region, credentials and retry settings are
    /// used as they are; [`EventBridgeConfig::endpoint_url`] is ignored).
    pub fn new(client: Client, config: EventBridgeConfig) -> Self {
        EventBridgePublisher { client, config: Arc::new(config) }
    }

    /// A publisher with a client made from a loaded AWS configuration (region, credentials,
    /// retries, HTTP client), with the configured endpoint override if any.
    pub fn from_sdk_config(sdk_config: &SdkConfig, config: EventBridgeConfig) -> Self {
        let mut builder = aws_sdk_eventbridge::config::Builder::from(sdk_config);
        if let Some(url) = &config.endpoint_url {
            builder = builder.endpoint_url(url.as_str());
        }
        Self::new(Client::from_conf(builder.build()), config)
    }

    /// Loads the standard AWS configuration chain (environment, shared config and credentials
    /// files, web identity, ECS and EC2 instance metadata) and builds a publisher from it.
    pub async fn from_env(config: EventBridgeConfig) -> Self {
        let sdk_config = aws_config::defaults(BehaviorVersion::latest()).load().await;
        Self::from_sdk_config(&sdk_config, config)
    }

    /// The SDK client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The configuration.
    pub fn config(&self) -> &EventBridgeConfig {
        &self.config
    }

    /// Sends one request; `Err` when the request as a whole failed.
    async fn send(&self, entries: Vec<PutEventsRequestEntry>) -> Result<Vec<Outcome>> {
        let sent = entries.len();
        let output = self
            .client
            .put_events()
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| self.scrubbed(classify::request_failure(&e)))?;
        let results = output.entries();
        if results.len() != sent {
            let message = format!(
                "EventBridge answered a PutEvents request of {sent} entries with {} results; not knowing which were \
                 accepted, all will be sent again",
                results.len()
            );
            return Ok((0..sent).map(|_| retryable(ErrorKind::Unexpected, &message)).collect());
        }
        Ok(results.iter().map(classify::result_entry).collect())
    }
}

impl EventBridgePublisher {
    /// `error` with every secret part of the configured endpoint URL removed from its message
    /// (the SDK's text may quote the endpoint).
    fn scrubbed(&self, error: Error) -> Error {
        let Some(url) = &self.config.endpoint_url else { return error };
        let scrubbed = outbox_core::redact::scrub(error.message(), url);
        if scrubbed == error.message() {
            error
        } else {
            Error::new(error.kind(), scrubbed).with_retryable(error.is_retryable())
        }
    }
}

impl std::fmt::Debug for EventBridgePublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client's configuration holds the credentials provider: leave it out.
        f.debug_struct("EventBridgePublisher").field("config", &self.config).finish_non_exhaustive()
    }
}

fn retryable(kind: ErrorKind, message: &str) -> Outcome {
    Outcome::Failed(Error::new(kind, message).with_retryable(true))
}

fn copy(error: &Error) -> Outcome {
    Outcome::Failed(error.clone())
}

/// The request being filled: entries, their batch positions, their bytes.
#[derive(Default)]
struct Chunk {
    positions: Vec<usize>,
    entries: Vec<PutEventsRequestEntry>,
    bytes: usize,
}

impl Publisher for EventBridgePublisher {
    async fn publish(&self, batch: &[Entry]) -> Result<Vec<Outcome>> {
        #[cfg(feature = "tracing")]
        {
            let bus = || Some(crate::trace::destination(self.config.event_bus_name()));
            outbox_telemetry::send::Send::new(crate::trace::SYSTEM, batch).traced(bus, self.publish_batch(batch)).await
        }
        #[cfg(not(feature = "tracing"))]
        self.publish_batch(batch).await
    }
}

impl EventBridgePublisher {
    async fn publish_batch(&self, batch: &[Entry]) -> Result<Vec<Outcome>> {
        let mut outcomes: Vec<Option<Outcome>> = (0..batch.len()).map(|_| None).collect();
        // Aggregates with an entry that failed retryably in an earlier request of this batch:
        // their later entries are not sent (the relay releases them anyway), so EventBridge never
        // sees a later event of an aggregate whose earlier one is still to be retried.
        let mut held: HashSet<(&str, &str)> = HashSet::new();
        // Set once a whole request failed retryably (network, throttling): the rest is not sent.
        let mut stopped: Option<Error> = None;
        let mut chunk = Chunk::default();

        for (position, entry) in batch.iter().enumerate() {
            let prepared = match prepare(entry, &self.config) {
                Ok(prepared) => prepared,
                Err(error) => {
                    outcomes[position] = Some(Outcome::Failed(error));
                    continue;
                }
            };
            let full = chunk.entries.len() == self.config.max_entries_per_request
                || chunk.bytes + prepared.size > self.config.max_request_bytes;
            if full && stopped.is_none() {
                let sent = std::mem::take(&mut chunk);
                stopped = self.flush(sent, batch, &mut outcomes, &mut held).await;
            }
            if let Some(error) = &stopped {
                outcomes[position] = Some(not_sent(error));
                continue;
            }
            if held.contains(&key(entry)) {
                outcomes[position] = Some(held_back(entry));
                continue;
            }
            chunk.positions.push(position);
            chunk.entries.push(prepared.request);
            chunk.bytes += prepared.size;
        }
        if !chunk.entries.is_empty() && stopped.is_none() {
            self.flush(chunk, batch, &mut outcomes, &mut held).await;
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| retryable(ErrorKind::Unexpected, "the entry was never sent (a bug)")))
            .collect())
    }
}

impl EventBridgePublisher {
    /// Sends a chunk and records its outcomes; returns the error when the whole request failed
    /// retryably (so the rest of the batch is not sent).
    async fn flush<'b>(
        &self,
        chunk: Chunk,
        batch: &'b [Entry],
        outcomes: &mut [Option<Outcome>],
        held: &mut HashSet<(&'b str, &'b str)>,
    ) -> Option<Error> {
        let positions = chunk.positions;
        match self.send(chunk.entries).await {
            Ok(results) => {
                for (position, outcome) in positions.into_iter().zip(results) {
                    if let Outcome::Failed(error) = &outcome
                        && error.is_retryable()
                    {
                        held.insert(key(&batch[position]));
                    }
                    outcomes[position] = Some(outcome);
                }
                None
            }
            Err(error) => {
                for &position in &positions {
                    outcomes[position] = Some(copy(&error));
                }
                error.is_retryable().then_some(error)
            }
        }
    }
}

fn key(entry: &Entry) -> (&str, &str) {
    (entry.aggregate_type.as_str(), entry.aggregate_id.as_str())
}

fn not_sent(cause: &Error) -> Outcome {
    let error = Error::new(
        cause.kind(),
        format!(
            "not sent: an earlier PutEvents request of this batch failed ({}); it will be retried",
            cause.message()
        ),
    );
    Outcome::Failed(error.with_retryable(true).with_outage(cause.is_outage()))
}

fn held_back(entry: &Entry) -> Outcome {
    retryable(
        ErrorKind::Conflict,
        &format!(
            "not sent: an earlier entry of aggregate {}/{} failed in this batch and must go first; it will be retried",
            entry.aggregate_type, entry.aggregate_id
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_eventbridge::config::{Credentials, Region};

    #[test]
    fn debug_never_shows_credentials() {
        let conf = aws_sdk_eventbridge::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("AKIDEXAMPLE", "very-secret-key", None, None, "test"))
            .build();
        let config = EventBridgeConfig::builder("com.example.orders").build().unwrap();
        let publisher = EventBridgePublisher::new(Client::from_conf(conf), config);
        let debug = format!("{publisher:?}");
        assert!(!debug.contains("very-secret-key") && !debug.contains("AKIDEXAMPLE"), "{debug}");
        assert!(debug.contains("com.example.orders"), "{debug}");
    }
}
