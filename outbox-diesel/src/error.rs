//! Maps diesel's errors into the framework's one error type, with the right kind and verdict.
//!
//! | what happened | kind | retryable |
//! |---|---|---|
//! | connection refused or dropped, pool timed out, `ClosedConnection`, `UnableToSendCommand` | `Unavailable` | yes |
//! | serialization failure, deadlock, lock wait timeout, SQLite `database is locked` | `Conflict` | yes |
//! | statement cancelled by a timeout | `Timeout` | yes |
//! | table or column missing, undecodable column | `SchemaMismatch`, naming the migration to run | no |
//! | unique violation while writing an entry | `Validation` ("duplicate entry id") | no |
//! | anything else | `Unexpected` | no |

#![cfg_attr(not(any(feature = "postgres", feature = "mysql", feature = "sqlite")), allow(dead_code))]

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use outbox_core::{Error, ErrorKind};

/// The name of the one migration so far (the same as outbox-sqlx's); error messages name it.
pub const MIGRATION_NAME: &str = "0001_outbox";

/// The database an error came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(dead_code)] // each variant is used only with its feature
pub(crate) enum Db {
    Postgres,
    Mysql,
    Sqlite,
}

impl Db {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Db::Postgres => "PostgreSQL",
            Db::Mysql => "MySQL",
            Db::Sqlite => "SQLite",
        }
    }

    fn migrate_hint(self) -> &'static str {
        match self {
            Db::Postgres => "outbox_diesel::postgres::migrate, or the diesel migration in migrations/postgres",
            Db::Mysql => "outbox_diesel::mysql::migrate, or the diesel migration in migrations/mysql",
            Db::Sqlite => "outbox_diesel::sqlite::migrate, or the diesel migration in migrations/sqlite",
        }
    }
}

fn classify_message(message: &str) -> ErrorKind {
    let m = message.to_ascii_lowercase();
    if m.contains("deadlock")
        || m.contains("lock wait timeout")
        || m.contains("database is locked")
        || m.contains("could not serialize")
        || m.contains("could not obtain lock")
        || m.contains("database table is locked")
    {
        ErrorKind::Conflict
    } else if m.contains("does not exist")
        || m.contains("doesn't exist")
        || m.contains("no such table")
        || m.contains("no such column")
        || m.contains("unknown column")
    {
        ErrorKind::SchemaMismatch
    } else if m.contains("canceling statement due to statement timeout")
        || m.contains("max_statement_time")
        || m.contains("maximum statement execution time")
    {
        ErrorKind::Timeout
    } else if m.contains("server has gone away")
        || m.contains("lost connection")
        || m.contains("terminating connection")
        || m.contains("connection closed")
        || m.contains("broken pipe")
        || m.contains("connection reset")
    {
        ErrorKind::Unavailable
    } else {
        ErrorKind::Unexpected
    }
}

/// What kind a diesel error is.
fn classify(e: &DieselError) -> ErrorKind {
    match e {
        DieselError::DatabaseError(kind, info) => match kind {
            DatabaseErrorKind::UniqueViolation => ErrorKind::Validation,
            DatabaseErrorKind::SerializationFailure => ErrorKind::Conflict,
            DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand => ErrorKind::Unavailable,
            _ => classify_message(info.message()),
        },
        DieselError::DeserializationError(_) => ErrorKind::SchemaMismatch,
        DieselError::BrokenTransactionManager => ErrorKind::Unavailable,
        _ => ErrorKind::Unexpected,
    }
}

/// Maps `e`, raised while doing `what` on the outbox table `table`, into an outbox error.
pub(crate) fn map(db: Db, what: &str, table: &str, e: DieselError) -> Error {
    let kind = classify(&e);
    let message = match kind {
        ErrorKind::SchemaMismatch => format!(
            "{what} failed: the outbox table `{table}` (or `{table}_aggregates`) is missing or has the wrong shape; \
             run the outbox migration `{MIGRATION_NAME}` ({})",
            db.migrate_hint()
        ),
        ErrorKind::Validation => format!(
            "{what} failed: duplicate entry id: an entry with this id is already in the outbox `{table}`; ids must be unique"
        ),
        ErrorKind::Unavailable => format!("{what} failed: {} is unreachable or the connection dropped", db.name()),
        ErrorKind::Conflict => {
            format!("{what} failed: {} reported a deadlock, serialization failure or busy lock", db.name())
        }
        ErrorKind::Timeout => format!("{what} failed: {} cancelled the statement (timeout)", db.name()),
        _ => format!("{what} failed on {}", db.name()),
    };
    Error::new(kind, message).with_source(e)
}

/// Maps a failure to connect (or to get a pooled connection).
#[allow(dead_code)]
pub(crate) fn unavailable(db: Db, what: &str, source: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::new(ErrorKind::Unavailable, format!("{what} failed: could not get a {} connection", db.name()))
        .with_source(source)
}

/// A row whose contents make no sense (a status the state machine does not know, bad JSON).
pub(crate) fn bad_row(table: &str, detail: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::SchemaMismatch,
        format!(
            "the outbox table `{table}` holds a row this version cannot read ({detail}); \
             was it written by another tool? run the outbox migration `{MIGRATION_NAME}`"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_decide_kinds() {
        assert_eq!(classify_message("deadlock detected"), ErrorKind::Conflict);
        assert_eq!(classify_message("Deadlock found when trying to get lock"), ErrorKind::Conflict);
        assert_eq!(classify_message("database is locked"), ErrorKind::Conflict);
        assert_eq!(classify_message("relation \"outbox\" does not exist"), ErrorKind::SchemaMismatch);
        assert_eq!(classify_message("Table 'test.outbox' doesn't exist"), ErrorKind::SchemaMismatch);
        assert_eq!(classify_message("no such table: outbox"), ErrorKind::SchemaMismatch);
        assert_eq!(classify_message("syntax error"), ErrorKind::Unexpected);
        let e = map(
            Db::Postgres,
            "enqueue",
            "outbox",
            DieselError::DatabaseError(
                DatabaseErrorKind::UniqueViolation,
                Box::new("duplicate key value violates unique constraint".to_string()),
            ),
        );
        assert_eq!(e.kind(), ErrorKind::Validation);
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("duplicate entry id"), "{e}");
    }
}
