//! [`RabbitMqPublisher`]: the [`Publisher`] port over one AMQP connection with publisher confirms.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use lapin::message::BasicReturnMessage;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::FieldTable;
use lapin::{Channel, Confirmation, Connection, ConnectionProperties, PublisherConfirm};
use outbox_core::{Entry, EntryId, Error, ErrorKind, Outcome, Publisher, Result};
use tokio::sync::Mutex;
use tokio::time::{Instant, timeout, timeout_at};

use crate::config::{ExchangeSetup, RabbitMqConfig};
use crate::message::message;

/// Publishes outbox entries to a RabbitMQ exchange, reporting an entry published only once the
/// broker confirmed it (publisher confirms).
///
/// - One connection with one confirm-mode channel, opened lazily on the first batch and
///   replaced on the next batch after it fails (broker restart, connection closed by an
///   operator, channel closed by an error): the entries of the failed batch that were not
///   confirmed are reported retryable.
/// - A batch is pipelined: every message is written, then every confirm is awaited.
/// - Batches are serialized on the channel (a mutex); run one publisher per relay for
///   parallelism.
///
/// Needs a tokio runtime: the connection's tasks run on the runtime of the batch that opened it.
pub struct RabbitMqPublisher {
    config: RabbitMqConfig,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    link: Option<Link>,
    /// A batch started on `link` and did not finish (its future was dropped): the channel may
    /// still owe confirms for it, so it is replaced before the next batch.
    in_flight: bool,
}

struct Link {
    connection: Connection,
    channel: Channel,
}

impl Link {
    fn is_usable(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected() && self.channel.status().confirm()
    }
}

impl fmt::Debug for RabbitMqPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitMqPublisher").field("config", &self.config).finish_non_exhaustive()
    }
}

/// What the broker said about one message.
enum Confirmed {
    /// Its confirm, less any returned message it carried (kept aside, see `publish_batch`).
    Broker(Verdict),
    /// Failed before or while waiting for the confirm.
    Done(Outcome),
}

/// A confirm's verdict.
#[derive(Clone, Copy)]
enum Verdict {
    Ack,
    Nack,
    NotRequested,
}

/// Where one message of a batch is while it is being published.
enum Sent<'a> {
    /// Handed to lapin, not yet taken by its I/O thread.
    Writing(Pin<Box<dyn Future<Output = lapin::Result<PublisherConfirm>> + Send + 'a>>),
    /// Taken by the I/O thread (or refused) on its first poll.
    Written(lapin::Result<PublisherConfirm>),
    /// Written; awaiting its confirm.
    Pending(PublisherConfirm),
    /// Done, one way or the other.
    Done(Outcome),
}

impl RabbitMqPublisher {
    /// A publisher for `config`. It connects on the first batch, so a relay started while the
    /// broker is down waits for it (an outage) instead of failing.
    pub fn new(config: RabbitMqConfig) -> Self {
        RabbitMqPublisher { config, state: Mutex::new(State::default()) }
    }

    /// The configuration.
    pub fn config(&self) -> &RabbitMqConfig {
        &self.config
    }

    /// Connects now (if not connected), opens the confirm channel and checks or declares the
    /// exchange. Errors are retryable [`ErrorKind::Unavailable`] (or [`ErrorKind::Config`] when
    /// the broker refuses the exchange or the credentials), with the URL redacted.
    ///
    /// Optional. A relay process should not exit when this fails (the broker may simply not be
    /// up yet): log the error and start [`Relay::run`](outbox_core::Relay::run) anyway, which
    /// waits out the outage and publishes once the broker answers.
    pub async fn connect(&self) -> Result<()> {
        let mut state = self.state.lock().await;
        self.ensure_link(&mut state).await.map(drop)
    }

    /// Closes the connection, if open. The next batch reconnects.
    pub async fn close(&self) {
        let mut state = self.state.lock().await;
        if let Some(link) = state.link.take() {
            let _ = link.connection.close(200, "outbox publisher closed".into()).await;
        }
    }

    async fn ensure_link<'s>(&self, state: &'s mut State) -> Result<&'s Link> {
        let usable = !state.in_flight && state.link.as_ref().is_some_and(Link::is_usable);
        if !usable {
            // Dropping the old link closes it (lapin closes a connection when its last handle goes).
            state.link = None;
            state.in_flight = false;
            let link = match timeout(self.config.connect_timeout, self.open()).await {
                Ok(result) => result?,
                Err(_) => {
                    return Err(Error::new(
                        ErrorKind::Timeout,
                        format!(
                            "connecting to RabbitMQ at {} took longer than {:?}; is the broker up and reachable?",
                            self.config.redacted_url, self.config.connect_timeout
                        ),
                    ));
                }
            };
            state.link = Some(link);
        }
        state.link.as_ref().ok_or_else(|| Error::new(ErrorKind::Unexpected, "no RabbitMQ connection after connecting"))
    }

    async fn open(&self) -> Result<Link> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::new(
                ErrorKind::Config,
                "the RabbitMQ publisher needs a tokio runtime: call it from within one",
            ));
        }
        let url = &self.config.redacted_url;
        let mut properties = ConnectionProperties::default();
        if let Some(name) = &self.config.connection_name {
            properties = properties.with_connection_name(name.as_str().into());
        }
        let connection = Connection::connect(&self.config.url, properties).await.map_err(|e| {
            let hint = if is_access_refused(&e) {
                "check the user name, password and vhost permissions"
            } else {
                "is the broker running and reachable?"
            };
            classify(e, &format!("connecting to RabbitMQ at {url} failed; {hint}"), &self.config.url)
        })?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| classify(e, &format!("opening a channel on RabbitMQ at {url} failed"), &self.config.url))?;
        channel.confirm_select(ConfirmSelectOptions::default()).await.map_err(|e| {
            classify(e, &format!("enabling publisher confirms on RabbitMQ at {url} failed"), &self.config.url)
        })?;
        let exchange = &self.config.exchange;
        if !exchange.is_empty() {
            let (options, what) = match self.config.exchange_setup {
                ExchangeSetup::Check => (
                    ExchangeDeclareOptions { passive: true, ..ExchangeDeclareOptions::default() },
                    "checking that exchange",
                ),
                ExchangeSetup::Declare(_) => (
                    ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() },
                    "declaring exchange",
                ),
            };
            let kind = match self.config.exchange_setup {
                ExchangeSetup::Declare(kind) => kind.to_lapin(),
                ExchangeSetup::Check => lapin::ExchangeKind::Topic, // ignored by a passive declare
            };
            channel.exchange_declare(exchange.as_str().into(), kind, options, FieldTable::default()).await.map_err(
                |e| {
                    classify(
                        e,
                        &format!(
                            "{what} `{exchange}` on RabbitMQ at {url} failed; create the exchange (or configure declare_exchange)"
                        ),
                        &self.config.url,
                    )
                },
            )?;
        }
        Ok(Link { connection, channel })
    }

    async fn publish_batch(&self, batch: &[Entry]) -> Result<Vec<Outcome>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut state = self.state.lock().await;
        let link = self.ensure_link(&mut state).await?;
        let channel = link.channel.clone();
        let frame_max = link.connection.configuration().frame_max();
        state.in_flight = true;

        let deadline = Instant::now() + self.config.confirm_timeout;
        let options = BasicPublishOptions { mandatory: self.config.mandatory, immediate: false };
        let exchange = lapin::types::ShortString::from(self.config.exchange.as_str());
        let mut broken = false;
        // 1. Hand every message to lapin. A write completes once lapin's I/O thread has taken
        //    its frames (no broker round trip). lapin numbers a message for confirms and queues
        //    its frames synchronously on the write's first poll, so polling every write once, in
        //    batch order, queues the whole batch in order; the I/O thread then writes it in a few
        //    system calls instead of one hand-off per message (awaiting each write in turn).
        //    The order tests (conformance suite, `one_aggregate_keeps_its_order`) guard this.
        let mut sent: Vec<Sent<'_>> = batch
            .iter()
            .map(|entry| match message(entry, &self.config, frame_max) {
                Ok(msg) => Sent::Writing(Box::pin(channel.basic_publish(
                    exchange.clone(),
                    msg.routing_key,
                    options,
                    entry.payload.as_bytes(),
                    msg.properties,
                ))),
                Err(e) => Sent::Done(Outcome::Failed(e)),
            })
            .collect();
        std::future::poll_fn(|cx| {
            for slot in &mut sent {
                if let Sent::Writing(write) = slot
                    && let Poll::Ready(written) = write.as_mut().poll(cx)
                {
                    *slot = Sent::Written(written);
                }
            }
            Poll::Ready(())
        })
        .await;
        // Then wait until the I/O thread has taken them all.
        for (entry, slot) in batch.iter().zip(sent.iter_mut()) {
            let written = match std::mem::replace(slot, Sent::Done(Outcome::Published)) {
                Sent::Writing(write) => match timeout_at(deadline, write).await {
                    Ok(written) => written,
                    Err(_) => {
                        broken = true;
                        *slot = Sent::Done(Outcome::Failed(self.timed_out(entry)));
                        continue;
                    }
                },
                Sent::Written(written) => written,
                other => {
                    *slot = other;
                    continue;
                }
            };
            *slot = match written {
                Ok(confirm) => Sent::Pending(confirm),
                Err(e) => {
                    broken = true;
                    let e = classify(
                        e,
                        &format!("publishing entry {} to RabbitMQ failed; it will be retried", entry.id),
                        &self.config.url,
                    );
                    Sent::Done(Outcome::Failed(e))
                }
            };
        }

        // 2. Await every confirm, in order.
        //    lapin hands each returned message to the next confirm it completes, which is not
        //    necessarily the returned message's own (with an ack covering several messages it is
        //    the lowest pending one), so returns are set aside here and matched to entries by
        //    message_id, which is the entry id.
        let mut returned: HashMap<EntryId, BasicReturnMessage> = HashMap::new();
        let mut unmatched = 0usize;
        let mut confirmations: Vec<Confirmed> = Vec::with_capacity(batch.len());
        for (entry, sent) in batch.iter().zip(sent) {
            let confirmed = match sent {
                Sent::Done(outcome) => Confirmed::Done(outcome),
                Sent::Writing(_) | Sent::Written(_) => Confirmed::Done(Outcome::Failed(not_sent(entry))),
                Sent::Pending(confirm) => match timeout_at(deadline, confirm).await {
                    Ok(Ok(confirmation)) => {
                        let (verdict, message) = match confirmation {
                            Confirmation::Ack(message) => (Verdict::Ack, message),
                            Confirmation::Nack(message) => (Verdict::Nack, message),
                            Confirmation::NotRequested => (Verdict::NotRequested, None),
                        };
                        if let Some(message) = message {
                            match message.delivery.properties.message_id().as_ref().map(|id| id.as_str().parse()) {
                                Some(Ok(id)) => {
                                    returned.insert(id, message);
                                }
                                _ => unmatched += 1,
                            }
                        }
                        Confirmed::Broker(verdict)
                    }
                    Ok(Err(e)) => {
                        broken = true;
                        Confirmed::Done(Outcome::Failed(classify(
                            e,
                            &format!(
                                "the RabbitMQ connection or channel failed before entry {} was confirmed; it will be retried (it may have reached the broker: consumers de-duplicate by message_id)",
                                entry.id
                            ),
                            &self.config.url,
                        )))
                    }
                    Err(_) => {
                        broken = true;
                        Confirmed::Done(Outcome::Failed(self.timed_out(entry)))
                    }
                },
            };
            confirmations.push(confirmed);
        }

        // 3. The outcomes: an entry whose message came back is unroutable, whatever its confirm.
        let mut outcomes: Vec<Outcome> = batch
            .iter()
            .zip(confirmations)
            .map(|(entry, confirmed)| match confirmed {
                Confirmed::Done(outcome) => outcome,
                Confirmed::Broker(verdict) => match returned.remove(&entry.id) {
                    Some(message) => Outcome::Failed(unroutable(entry, &message)),
                    None => self.confirmed(entry, verdict),
                },
            })
            .collect();
        // A returned message without an entry id: it could be any entry of the batch, so none is
        // trusted to be delivered (never seen in practice: every message carries its entry id).
        // Returns with an id outside the batch belong to no entry here and change nothing.
        if unmatched > 0 {
            for outcome in outcomes.iter_mut().filter(|o| o.is_published()) {
                *outcome = Outcome::Failed(
                    Error::new(
                        ErrorKind::Unexpected,
                        "RabbitMQ returned a message of this batch without a message_id, so it cannot be told which entry was not delivered; retrying to be safe",
                    )
                    .with_retryable(true),
                );
            }
        }

        if broken {
            // Replace the connection on the next batch (dropping it closes it).
            state.link = None;
        }
        state.in_flight = false;
        Ok(outcomes)
    }

    /// The outcome of an entry the broker confirmed and did not return.
    fn confirmed(&self, entry: &Entry, verdict: Verdict) -> Outcome {
        match verdict {
            Verdict::Ack => Outcome::Published,
            Verdict::Nack => {
                let key = self.config.routing.key_for(entry);
                Outcome::Failed(
                    Error::new(
                        ErrorKind::Unavailable,
                        format!(
                            "RabbitMQ nacked entry {} sent to {}: the broker could not take it (e.g. a full queue with x-overflow=reject-publish); it will be retried",
                            entry.id,
                            route(&self.config.exchange, &key)
                        ),
                    )
                    .with_retryable(true),
                )
            }
            Verdict::NotRequested => Outcome::Failed(
                Error::new(
                    ErrorKind::Unexpected,
                    format!(
                        "entry {} was not confirmed: the channel is not in confirm mode; it will be retried",
                        entry.id
                    ),
                )
                .with_retryable(true),
            ),
        }
    }

    /// No confirm in time: the broker is not answering (blocked by a resource alarm, or the
    /// connection hangs), which says nothing about the entry: an outage.
    fn timed_out(&self, entry: &Entry) -> Error {
        Error::new(
            ErrorKind::Timeout,
            format!(
                "RabbitMQ did not confirm entry {} within {:?}; it will be retried (the broker may be blocked by a resource alarm)",
                entry.id, self.config.confirm_timeout
            ),
        )
        .with_outage(true)
    }
}

fn route(exchange: &str, key: &str) -> String {
    if exchange.is_empty() {
        format!("the default exchange with routing key `{key}`")
    } else {
        format!("exchange `{exchange}` with routing key `{key}`")
    }
}

/// A mandatory message no queue is bound for comes back (basic.return) and is then acked: it was
/// NOT delivered anywhere. Permanent: retrying cannot create a binding.
fn unroutable(entry: &Entry, message: &BasicReturnMessage) -> Error {
    Error::new(
        ErrorKind::Rejected,
        format!(
            "RabbitMQ returned entry {} as unroutable ({} {}): no queue is bound to {}; bind a queue for it or change the routing",
            entry.id,
            message.reply_code,
            message.reply_text,
            route(message.delivery.exchange.as_str(), message.delivery.routing_key.as_str())
        ),
    )
}

fn not_sent(entry: &Entry) -> Error {
    Error::new(
        ErrorKind::Unavailable,
        format!(
            "entry {} was not sent: the RabbitMQ connection failed earlier in its batch; it will be retried",
            entry.id
        ),
    )
}

fn is_access_refused(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp) if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)))
}

/// A driver error's text with every secret part of the connection URL removed, kept as the
/// source of an outbox error.
#[derive(Debug)]
struct Scrubbed(String);

impl fmt::Display for Scrubbed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Scrubbed {}

/// Maps a lapin error. Connection and channel failures are always retryable outages
/// ([`Error::is_outage`]): they say nothing about the entry, and an entry must not spend its
/// attempts, let alone die, because the broker was down or misconfigured.
/// The driver's text is scrubbed of the URL's secrets (see [`outbox_core::redact::scrub`]).
fn classify(e: lapin::Error, context: &str, url: &str) -> Error {
    let kind = match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => match amqp.kind() {
            AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND | AMQPSoftError::ACCESSREFUSED) => ErrorKind::Config,
            _ => ErrorKind::Unavailable,
        },
        lapin::ErrorKind::MissingHeartbeatError => ErrorKind::Timeout,
        _ => ErrorKind::Unavailable,
    };
    Error::new(kind, context)
        .with_retryable(true)
        .with_outage(true)
        .with_source(Scrubbed(outbox_core::redact::scrub(&e.to_string(), url)))
}

impl Publisher for RabbitMqPublisher {
    async fn publish(&self, batch: &[Entry]) -> Result<Vec<Outcome>> {
        #[cfg(feature = "tracing")]
        {
            // The destination is the exchange (AMQP's `messaging.destination.name`).
            let exchange = || Some(crate::trace::destination(self.config().exchange()));
            outbox_telemetry::send::Send::new(crate::trace::SYSTEM, batch)
                .traced(exchange, self.publish_batch(batch))
                .await
        }
        #[cfg(not(feature = "tracing"))]
        self.publish_batch(batch).await
    }
}
