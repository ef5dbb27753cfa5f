//! The broker port: [`Publisher`], and the optional [`DeliveryTimeout`] capability.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::entry::Entry;
use crate::error::{Error, Result};
use crate::time::BoxFuture;

/// What happened to one entry of a published batch.
#[derive(Debug)]
pub enum Outcome {
    /// The broker durably accepted it.
    Published,
    /// It was not accepted. [`Error::is_outage`] says whether the failure is the entry's at all
    /// (if not, the entry is released without counting an attempt and the relay pauses);
    /// otherwise [`Error::is_retryable`] says whether to try again.
    Failed(Error),
}

impl Outcome {
    /// Whether the broker accepted the entry.
    pub fn is_published(&self) -> bool {
        matches!(self, Outcome::Published)
    }
}

/// Sends claimed entries to a broker.
///
/// # Contract
/// - Returns exactly one [`Outcome`] per entry, in the batch's order. `Published` only once the
///   broker has durably accepted the entry (Kafka ack, AMQP publisher confirm, PutEvents entry
///   result); when in doubt, report a retryable failure: delivery is at least once.
/// - Entries of one aggregate come in sequence order and must reach the broker in that order
///   (one partition / queue per key, pipelined sends keep their order).
/// - `Err` means the batch as a whole failed and nothing in it is known to be published
///   (for example the connection is down). It says nothing about the entries, whatever its
///   kind: the relay releases them all without counting an attempt and pauses (an outage, see
///   below). So never return `Err` for something one entry did.
/// - A failure that says nothing about its entry (connection or channel lost, no answer from the
///   broker, throttling, a full broker) is reported with an error whose [`Error::is_outage`] is
///   true ([`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable) and
///   [`ErrorKind::Throttled`](crate::ErrorKind::Throttled) are outages by default; use
///   [`Error::with_outage`] to say so for another kind, or to deny it). The relay releases such
///   entries without counting an attempt and backs off as a whole until the broker answers.
/// - Bad entries fail alone with an error that is not an outage: permanent (too large, not
///   JSON where JSON is required) or retryable; they never fail the rest of the batch. Their
///   attempts count, and the retry policy decides when they go dead.
/// - Panicking is a bug, but the relay survives it: a batch whose `publish` panics is
///   published again one entry at a time, and an entry whose own publish panics counts a failed
///   attempt (so a poison entry ends up dead instead of stopping its relay).
pub trait Publisher: Send + Sync {
    /// Publishes a batch.
    fn publish(&self, batch: &[Entry]) -> impl Future<Output = Result<Vec<Outcome>>> + Send;
}

/// The object-safe twin of [`Publisher`] (`Arc<dyn DynPublisher>` is itself a [`Publisher`]).
pub trait DynPublisher: Send + Sync {
    /// [`Publisher::publish`], boxed.
    fn publish_dyn<'a>(&'a self, batch: &'a [Entry]) -> BoxFuture<'a, Result<Vec<Outcome>>>;
}

impl<P: Publisher> DynPublisher for P {
    fn publish_dyn<'a>(&'a self, batch: &'a [Entry]) -> BoxFuture<'a, Result<Vec<Outcome>>> {
        Box::pin(self.publish(batch))
    }
}

impl Publisher for Arc<dyn DynPublisher> {
    async fn publish(&self, batch: &[Entry]) -> Result<Vec<Outcome>> {
        (**self).publish_dyn(batch).await
    }
}

/// An optional capability: a publisher that gives up on a message by itself after a time (a
/// delivery timeout, such as Kafka's `message.timeout.ms`).
///
/// Such a timeout must be shorter than the relay's
/// [`publish_timeout`](crate::RelayConfig::publish_timeout): otherwise the relay gives up on a
/// batch (and sends it again later) while the publisher may still deliver it, and each publish
/// during an outage runs into the relay's timeout instead of reporting what failed.
/// [`Relay::new_checked`](crate::Relay::new_checked) refuses such a pair at start-up.
pub trait DeliveryTimeout {
    /// How long the publisher waits for the broker to take a message before it reports the
    /// message failed; `None` when it waits forever.
    fn delivery_timeout(&self) -> Option<Duration>;

    /// Names the setting it comes from, for error messages, e.g. ``"Kafka `message.timeout.ms`"``.
    fn delivery_timeout_setting(&self) -> &str;
}

impl<P: DeliveryTimeout + ?Sized> DeliveryTimeout for Arc<P> {
    fn delivery_timeout(&self) -> Option<Duration> {
        (**self).delivery_timeout()
    }

    fn delivery_timeout_setting(&self) -> &str {
        (**self).delivery_timeout_setting()
    }
}

impl<P: Publisher> Publisher for Arc<P> {
    fn publish(&self, batch: &[Entry]) -> impl Future<Output = Result<Vec<Outcome>>> + Send {
        (**self).publish(batch)
    }
}
