//! The broker send span, shared by the broker crates (`outbox-kafka`, `outbox-rabbitmq`,
//! `outbox-eventbridge` with their `tracing` feature), following the OpenTelemetry messaging
//! conventions.

use std::future::Future;

use outbox_core::{Entry, Error, ErrorKind, Outcome, Result};
use tracing::Instrument;
use tracing::field::Empty;

/// Most links a send span gets to its entries' creation contexts (OpenTelemetry's default limit
/// of links per span); a larger batch links its first entries only.
pub const MAX_LINKS: usize = 128;

/// What a broker crate says about one `publish` call.
#[derive(Clone, Copy, Debug)]
pub struct Send<'a> {
    /// `messaging.system`, e.g. `kafka`, `rabbitmq`.
    pub system: &'static str,
    /// The batch.
    pub batch: &'a [Entry],
}

impl<'a> Send<'a> {
    /// A send of `batch` to `system`.
    pub fn new(system: &'static str, batch: &'a [Entry]) -> Self {
        Send { system, batch }
    }

    /// Runs `publish` inside a `send` span (`INFO`, target `outbox`), then records its result.
    ///
    /// `destination` names where the batch goes (topic, exchange, event bus); it is called only
    /// when the span is enabled, and returns `None` when the batch's entries go to different
    /// places. The span carries:
    ///
    /// | field | value |
    /// |---|---|
    /// | `otel.name` | `send {destination}`, or `send` when there is no single destination |
    /// | `otel.kind` | `producer` |
    /// | `messaging.system` | the system |
    /// | `messaging.operation.type`, `messaging.operation.name` | `send` |
    /// | `messaging.destination.name` | the destination, when single |
    /// | `messaging.message.id` | the entry id, when the batch has one entry |
    /// | `messaging.batch.message_count` | the batch size, when it has more than one |
    /// | `outbox.failed_count` | entries that failed, when any |
    /// | `error.type` | the error kind (`unavailable`, `too_large`, ...) of the failure, or of the first failed entry |
    /// | `otel.status_code` | `ERROR` when anything failed |
    ///
    /// With the `opentelemetry` feature the span also links to the creation context of each
    /// entry that carries a `traceparent` (up to [`MAX_LINKS`]). No payload or header value is
    /// recorded.
    pub async fn traced<D, F>(self, destination: D, publish: F) -> Result<Vec<Outcome>>
    where
        D: FnOnce() -> Option<String>,
        F: Future<Output = Result<Vec<Outcome>>>,
    {
        let span = tracing::info_span!(
            target: "outbox",
            "send",
            otel.name = Empty,
            otel.kind = "producer",
            otel.status_code = Empty,
            messaging.system = self.system,
            messaging.operation.type = "send",
            messaging.operation.name = "send",
            messaging.destination.name = Empty,
            messaging.message.id = Empty,
            messaging.batch.message_count = Empty,
            outbox.failed_count = Empty,
            error.type = Empty,
        );
        if span.is_disabled() {
            return publish.await;
        }
        match destination() {
            Some(destination) => {
                span.record("otel.name", format!("send {destination}"));
                span.record("messaging.destination.name", destination);
            }
            None => {
                span.record("otel.name", "send");
            }
        }
        match self.batch {
            [one] => {
                span.record("messaging.message.id", tracing::field::display(one.id));
            }
            batch => {
                span.record("messaging.batch.message_count", batch.len());
            }
        }
        #[cfg(feature = "opentelemetry")]
        crate::context::link_entries(&span, self.batch);

        let result = publish.instrument(span.clone()).await;
        let failure = match &result {
            Err(error) => Some((self.batch.len(), error.kind())),
            Ok(outcomes) => {
                let mut failed = outcomes.iter().filter_map(|o| match o {
                    Outcome::Failed(error) => Some(error),
                    Outcome::Published => None,
                });
                failed.next().map(|first: &Error| (1 + failed.count(), first.kind()))
            }
        };
        if let Some((count, kind)) = failure {
            span.record("outbox.failed_count", count);
            span.record("error.type", error_type(kind));
            span.record("otel.status_code", "ERROR");
        }
        result
    }
}

/// The `error.type` value of an error kind: its name in snake case (`too_large`).
pub fn error_type(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Validation => "validation",
        ErrorKind::InvalidTransition => "invalid_transition",
        ErrorKind::Config => "config",
        ErrorKind::Unavailable => "unavailable",
        ErrorKind::Timeout => "timeout",
        ErrorKind::Conflict => "conflict",
        ErrorKind::Throttled => "throttled",
        ErrorKind::Rejected => "rejected",
        ErrorKind::TooLarge => "too_large",
        ErrorKind::SchemaMismatch => "schema_mismatch",
        _ => "_OTHER",
    }
}

/// The one destination of a batch, or `None` when its entries go to different places (or the
/// batch is empty, or `of` cannot say).
pub fn single_destination<T: AsRef<str>>(batch: &[Entry], mut of: impl FnMut(&Entry) -> Option<T>) -> Option<String> {
    let (first, rest) = batch.split_first()?;
    let destination = of(first)?;
    for entry in rest {
        if of(entry)?.as_ref() != destination.as_ref() {
            return None;
        }
    }
    Some(destination.as_ref().to_string())
}
