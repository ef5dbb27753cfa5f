//! The one error type of the framework, with a kind and a retryable/permanent verdict.
//!
//! Adapters map their library's errors into it (connection refused → [`ErrorKind::Unavailable`],
//! retryable; message too large → [`ErrorKind::TooLarge`], permanent), so the relay and the
//! retry policy can decide without knowing the driver.

use std::error::Error as StdError;
use std::fmt;

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
    /// The database or broker could not be reached, or the connection dropped.
    Unavailable,
    /// An operation did not finish in time.
    Timeout,
    /// A deadlock, serialization failure or lock conflict; trying again usually works.
    Conflict,
    /// The broker or database asked us to slow down.
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
/// relay should try again.
pub struct Error {
    kind: ErrorKind,
    retryable: bool,
    message: String,
    source: Option<Box<dyn StdError + Send + Sync + 'static>>,
}

impl Error {
    /// An error of `kind`; retryable as [`ErrorKind::default_retryable`] says.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error { kind, retryable: kind.default_retryable(), message: message.into(), source: None }
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl StdError + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
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

    /// The message, without the kind or the source.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind).field("retryable", &self.retryable).field("message", &self.message);
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
    fn display_names_message_kind_verdict_and_source() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = Error::new(ErrorKind::Unavailable, "connecting to postgres failed").with_source(io);
        assert_eq!(e.to_string(), "connecting to postgres failed (unavailable, retryable): refused");
        assert!(e.source().is_some());
    }
}
