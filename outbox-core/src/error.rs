//! The one error type of the framework, with a kind and a retryable/permanent verdict.
//!
//! Adapters map their library's errors into it (connection refused → [`ErrorKind::Unavailable`],
//! retryable; message too large → [`ErrorKind::TooLarge`], permanent), so the relay and the
//! retry policy can decide without knowing the driver.
//!
//! A publish failure has two verdicts: whether trying again may work ([`Error::is_retryable`]),
//! and whether it is about the entry at all ([`Error::is_outage`]). An outage (the broker is
//! unreachable, the connection dropped, the broker throttles) says nothing about the entry: the
//! relay hands the entry back without counting an attempt and pauses as a whole, so a broker
//! outage never dead-letters anything. Attempts and the dead letter are for failures of the
//! entry itself.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

/// What kind of failure happened. Grows over time: match with a wildcard arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// An entry or argument failed validation; fix the input.
    Validation,
    /// A status change the state machine forbids (see [`crate::status`]).
    InvalidTransition,
    /// The configuration is inconsistent or incomplete.
    Config,
    /// The database or broker could not be reached, did not answer, or the connection dropped.
    /// An outage by default ([`ErrorKind::default_outage`]).
    Unavailable,
    /// An operation did not finish in time.
    Timeout,
    /// A deadlock, serialization failure or lock conflict; trying again usually works.
    Conflict,
    /// The broker or database asked us to slow down. An outage by default
    /// ([`ErrorKind::default_outage`]).
    Throttled,
    /// The broker refused the message for good (unroutable, invalid, not authorized).
    Rejected,
    /// The message is larger than the broker or store accepts.
    TooLarge,
    /// The outbox table is missing or has the wrong shape: a migration has not run.
    SchemaMismatch,
    /// Anything else; see the message.
    Unexpected,
}

impl ErrorKind {
    /// Whether errors of this kind are worth retrying when nothing else is said.
    pub const fn default_retryable(self) -> bool {
        matches!(self, ErrorKind::Unavailable | ErrorKind::Timeout | ErrorKind::Conflict | ErrorKind::Throttled)
    }

    /// Whether errors of this kind say nothing about the entry (the broker is down, unreachable
    /// or throttling) when nothing else is said: [`Unavailable`](ErrorKind::Unavailable) and
    /// [`Throttled`](ErrorKind::Throttled). See [`Error::is_outage`].
    pub const fn default_outage(self) -> bool {
        matches!(self, ErrorKind::Unavailable | ErrorKind::Throttled)
    }

    /// A short lowercase name, e.g. `"unavailable"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Validation => "validation",
            ErrorKind::InvalidTransition => "invalid transition",
            ErrorKind::Config => "config",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Throttled => "throttled",
            ErrorKind::Rejected => "rejected",
            ErrorKind::TooLarge => "too large",
            ErrorKind::SchemaMismatch => "schema mismatch",
            ErrorKind::Unexpected => "unexpected",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error from the outbox or one of its adapters.
///
/// Its message says what failed and what to do; [`Error::is_retryable`] says whether the
/// relay should try again, [`Error::is_outage`] whether the failure is the entry's at all.
///
/// Cloning is cheap: the source is shared.
#[derive(Clone)]
pub struct Error {
    kind: ErrorKind,
    retryable: bool,
    outage: bool,
    message: String,
    source: Option<Arc<dyn StdError + Send + Sync + 'static>>,
}

impl Error {
    /// An error of `kind`; retryable as [`ErrorKind::default_retryable`] says, an outage as
    /// [`ErrorKind::default_outage`] says.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            retryable: kind.default_retryable(),
            outage: kind.default_outage(),
            message: message.into(),
            source: None,
        }
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl StdError + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// Overrides the outage verdict of the kind: `true` when the failure says nothing about the
    /// entry (e.g. a per-message timeout that only happens because the broker is unreachable),
    /// `false` when an error of an outage kind is the entry's own.
    pub fn with_outage(mut self, outage: bool) -> Self {
        self.outage = outage;
        self
    }

    /// Overrides the retryable verdict of the kind.
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether trying the same thing again later may succeed.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// Whether the failure says nothing about the entry it was reported for: the broker is down,
    /// unreachable or throttling. The relay then releases the entry without counting an attempt
    /// (it never goes dead for it) and pauses publishing as a whole, with a bounded back-off,
    /// until the broker answers again.
    pub fn is_outage(&self) -> bool {
        self.outage
    }

    /// The message, without the kind or the source.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind)
            .field("retryable", &self.retryable)
            .field("outage", &self.outage)
            .field("message", &self.message);
        if let Some(source) = &self.source {
            d.field("source", &format_args!("{source}"));
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}", self.message, self.kind)?;
        f.write_str(if self.retryable { ", retryable)" } else { ", permanent)" })?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.as_deref().map(|s| s as &(dyn StdError + 'static))
    }
}

/// A `Result` with the outbox [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_decides_retryable_unless_overridden() {
        assert!(Error::new(ErrorKind::Unavailable, "db down").is_retryable());
        assert!(!Error::new(ErrorKind::Rejected, "no route").is_retryable());
        assert!(!Error::new(ErrorKind::Timeout, "t").with_retryable(false).is_retryable());
    }

    #[test]
    fn kind_decides_outage_unless_overridden() {
        assert!(Error::new(ErrorKind::Unavailable, "broker down").is_outage());
        assert!(Error::new(ErrorKind::Throttled, "slow down").is_outage());
        assert!(!Error::new(ErrorKind::Timeout, "no ack").is_outage());
        assert!(!Error::new(ErrorKind::Rejected, "no route").is_outage());
        assert!(Error::new(ErrorKind::Timeout, "no ack").with_outage(true).is_outage());
        assert!(!Error::new(ErrorKind::Unavailable, "nack").with_outage(false).is_outage());
    }

    #[test]
    fn a_clone_displays_the_same_text_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = Error::new(ErrorKind::Unavailable, "connecting failed").with_source(io);
        let c = e.clone();
        assert_eq!(c.to_string(), "connecting failed (unavailable, retryable): refused");
        assert_eq!(c.to_string(), e.to_string());
        assert!(c.source().is_some());
    }

    #[test]
    fn display_names_message_kind_verdict_and_source() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = Error::new(ErrorKind::Unavailable, "connecting to postgres failed").with_source(io);
        assert_eq!(e.to_string(), "connecting to postgres failed (unavailable, retryable): refused");
        assert!(e.source().is_some());
    }
}
