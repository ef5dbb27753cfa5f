//! The status state machine: the one definition of which status changes are legal.
//!
//! ```text
//!            claim                 published
//!  Pending ─────────▶ Processing ───────────▶ Published
//!     ▲  ▲              │  │  │
//!     │  │ released /   │  │  └─ failed-permanent (or retries exhausted) ──▶ Dead
//!     │  └─ lease expired  │                                                   │
//!     │                    └─ failed-retryable ──▶ Failed ── claim (when due) ─┘▶ Processing
//!     └──────────────────── requeue (operator) ◀── Dead, Failed
//! ```
//!
//! Stores apply [`Status::apply`] (or query with [`Status::sources`]) rather than re-encoding
//! the rules.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, ErrorKind};

/// Where an entry is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    /// Written and committed; waiting to be claimed (or waiting for its `not_before`).
    Pending,
    /// Claimed by a relay under a lease; being published.
    Processing,
    /// The broker has it. Terminal until purged.
    Published,
    /// A publish attempt failed; a retry is scheduled at `available_at`.
    Failed,
    /// Given up: a permanent error, or retries exhausted. Waits for an operator's requeue.
    Dead,
}

impl Status {
    /// Every status.
    pub const ALL: [Status; 5] = [Status::Pending, Status::Processing, Status::Published, Status::Failed, Status::Dead];

    /// The name stored in the outbox table's `status` column.
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Processing => "processing",
            Status::Published => "published",
            Status::Failed => "failed",
            Status::Dead => "dead",
        }
    }

    /// Whether the entry still has to reach the broker (pending, processing or failed).
    pub const fn is_unpublished(self) -> bool {
        matches!(self, Status::Pending | Status::Processing | Status::Failed)
    }

    /// The status after `event`, or [`InvalidTransition`] if the state machine forbids it.
    pub fn apply(self, event: Event) -> Result<Status, InvalidTransition> {
        TRANSITIONS
            .iter()
            .find(|(from, on, _)| *from == self && *on == event)
            .map(|(_, _, to)| *to)
            .ok_or(InvalidTransition { from: self, event })
    }

    /// The statuses from which `event` is legal, e.g. the claimable ones for [`Event::Claim`].
    pub fn sources(event: Event) -> impl Iterator<Item = Status> {
        TRANSITIONS.iter().filter(move |(_, on, _)| *on == event).map(|(from, _, _)| *from)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Status::ALL.into_iter().find(|st| st.as_str() == s).ok_or_else(|| {
            Error::new(
                ErrorKind::SchemaMismatch,
                format!("unknown outbox status `{s}`: expected pending, processing, published, failed or dead"),
            )
        })
    }
}

/// Something that happens to an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// A relay claims it under a lease.
    Claim,
    /// The broker accepted it.
    Published,
    /// Publishing failed and the retry policy schedules another attempt.
    FailedRetryable,
    /// Publishing failed for good (permanent error or retries exhausted).
    FailedPermanent,
    /// The lease lapsed before the relay reported back (it crashed or stalled).
    LeaseExpired,
    /// The relay gives the claim back without an attempt (an earlier entry of the aggregate
    /// failed in the same batch, or the relay is shutting down).
    Released,
    /// An operator puts a dead (or failed) entry back in line.
    Requeued,
}

/// Every legal transition: `(from, event, to)`. Anything not listed is invalid.
pub const TRANSITIONS: &[(Status, Event, Status)] = &[
    (Status::Pending, Event::Claim, Status::Processing),
    (Status::Failed, Event::Claim, Status::Processing),
    (Status::Processing, Event::Published, Status::Published),
    (Status::Processing, Event::FailedRetryable, Status::Failed),
    (Status::Processing, Event::FailedPermanent, Status::Dead),
    (Status::Processing, Event::LeaseExpired, Status::Pending),
    (Status::Processing, Event::Released, Status::Pending),
    (Status::Dead, Event::Requeued, Status::Pending),
    (Status::Failed, Event::Requeued, Status::Pending),
];

/// A status change the state machine forbids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidTransition {
    /// The status the entry had.
    pub from: Status,
    /// What was attempted.
    pub event: Event,
}

impl fmt::Display for InvalidTransition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an entry that is {} cannot take the event {:?}", self.from, self.event)
    }
}

impl std::error::Error for InvalidTransition {}

impl From<InvalidTransition> for Error {
    fn from(e: InvalidTransition) -> Self {
        Error::new(ErrorKind::InvalidTransition, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EVENTS: [Event; 7] = [
        Event::Claim,
        Event::Published,
        Event::FailedRetryable,
        Event::FailedPermanent,
        Event::LeaseExpired,
        Event::Released,
        Event::Requeued,
    ];

    #[test]
    fn the_table_is_a_function() {
        for (i, (from, on, _)) in TRANSITIONS.iter().enumerate() {
            for (other_from, other_on, _) in &TRANSITIONS[i + 1..] {
                assert!(!(from == other_from && on == other_on), "{from:?} {on:?} listed twice");
            }
        }
    }

    #[test]
    fn published_is_terminal_and_only_processing_completes() {
        for e in EVENTS {
            assert!(Status::Published.apply(e).is_err(), "published must not take {e:?}");
        }
        for s in Status::ALL {
            assert_eq!(s.apply(Event::Published).is_ok(), s == Status::Processing);
            assert_eq!(s.apply(Event::FailedRetryable).is_ok(), s == Status::Processing);
        }
        let claimable: Vec<_> = Status::sources(Event::Claim).collect();
        assert_eq!(claimable, [Status::Pending, Status::Failed]);
    }

    #[test]
    fn names_round_trip() {
        for s in Status::ALL {
            assert_eq!(s.as_str().parse::<Status>().expect("parses"), s);
        }
        assert_eq!("gone".parse::<Status>().unwrap_err().kind(), ErrorKind::SchemaMismatch);
    }

    fn event() -> impl Strategy<Value = Event> {
        proptest::sample::select(EVENTS.to_vec())
    }

    proptest! {
        /// Whatever happens, an entry is published at most once, only from processing,
        /// and every status stays reachable-to-done: from any status some path leads to Published.
        #[test]
        fn any_sequence_of_events_keeps_the_invariants(events in proptest::collection::vec(event(), 0..60)) {
            let mut status = Status::Pending;
            let mut published = 0;
            for e in events {
                match status.apply(e) {
                    Ok(next) => {
                        if next == Status::Published {
                            prop_assert_eq!(status, Status::Processing);
                            published += 1;
                        }
                        if next == Status::Processing {
                            prop_assert!(matches!(status, Status::Pending | Status::Failed));
                        }
                        status = next;
                    }
                    Err(err) => {
                        prop_assert_eq!(err.from, status);
                        prop_assert!(!TRANSITIONS.iter().any(|(f, on, _)| *f == status && *on == e));
                    }
                }
            }
            prop_assert!(published <= 1);
            // liveness: every non-terminal status can still reach Published
            let path: &[Event] = match status {
                Status::Pending | Status::Failed => &[Event::Claim, Event::Published],
                Status::Processing => &[Event::Published],
                Status::Dead => &[Event::Requeued, Event::Claim, Event::Published],
                Status::Published => &[],
            };
            let mut s = status;
            for e in path {
                s = s.apply(*e).map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            prop_assert_eq!(s, Status::Published);
        }
    }
}
