//! The broker port: [`Publisher`].

use std::future::Future;
use std::sync::Arc;

use crate::entry::Entry;
use crate::error::{Error, Result};
use crate::time::BoxFuture;

/// What happened to one entry of a published batch.
#[derive(Debug)]
pub enum Outcome {
    /// The broker durably accepted it.
    Published,
    /// It was not accepted; [`Error::is_retryable`] says whether to try again.
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
///   (for example the connection is down); the relay treats every entry as failed with it.
/// - Bad entries fail alone with a permanent error (too large, not JSON where JSON is required)
///   and never fail the rest of the batch.
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

impl<P: Publisher> Publisher for Arc<P> {
    fn publish(&self, batch: &[Entry]) -> impl Future<Output = Result<Vec<Outcome>>> + Send {
        (**self).publish(batch)
    }
}
