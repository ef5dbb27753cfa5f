//! Maps `sqlx::Error` into the framework's one error type, with the right kind and verdict.
//!
//! | what happened | kind | retryable |
//! |---|---|---|
//! | connection refused or dropped, I/O, TLS, pool timed out, server shutting down | `Unavailable` | yes |
//! | PostgreSQL 40001/40P01/55P03, MySQL 1213/1205, SQLite `BUSY`/`LOCKED` | `Conflict` | yes |
//! | PostgreSQL 57014 (statement timeout) | `Timeout` | yes |
//! | table or column missing (PostgreSQL 42P01/42703, MySQL 1146/1054, SQLite "no such table/column"), undecodable column | `SchemaMismatch`, naming the migration to run | no |
//! | unique violation while writing an entry | `Validation` ("duplicate entry id") | no |
//! | anything else | `Unexpected` | no |

#![cfg_attr(not(any(feature = "postgres", feature = "mysql", feature = "sqlite")), allow(dead_code))]

use outbox_core::{Error, ErrorKind};

use crate::schema::MIGRATION_NAME;

/// The database an error came from (their error codes differ).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(dead_code)] // each variant is used only with its feature
pub(crate) enum Db {
    Postgres,
    MySql,
    Sqlite,
}

impl Db {
    fn name(self) -> &'static str {
        match self {
            Db::Postgres => "PostgreSQL",
            Db::MySql => "MySQL",
            Db::Sqlite => "SQLite",
        }
    }

    fn migrate_hint(self) -> &'static str {
        match self {
            Db::Postgres => "PgOutbox::migrate, or apply the SQL of PgOutbox::migrations()",
            Db::MySql => "MySqlOutbox::migrate, or apply the SQL of MySqlOutbox::migrations()",
            Db::Sqlite => "SqliteOutbox::migrate, or apply the SQL of SqliteOutbox::migrations()",
        }
    }
}

/// What kind a database error is, from its driver-specific code and message.
fn classify_database(db: Db, e: &dyn sqlx::error::DatabaseError) -> ErrorKind {
    let code = e.code();
    let code = code.as_deref().unwrap_or("");
    let message = e.message();
    match db {
        Db::Postgres => match code {
            "40001" | "40P01" | "55P03" => ErrorKind::Conflict,
            "42P01" | "42703" | "42883" => ErrorKind::SchemaMismatch,
            "57014" => ErrorKind::Timeout,
            c if c.starts_with("08") || c.starts_with("57P") || c == "53300" => ErrorKind::Unavailable,
            "23505" => ErrorKind::Validation,
            _ => ErrorKind::Unexpected,
        },
        Db::MySql => {
            let number = mysql_number(e);
            match number {
                Some(1213 | 1205) => ErrorKind::Conflict,
                Some(1146 | 1054) => ErrorKind::SchemaMismatch,
                Some(1040 | 1053 | 1927 | 2006 | 2013) => ErrorKind::Unavailable,
                Some(1062) => ErrorKind::Validation,
                Some(3024 | 1969) => ErrorKind::Timeout,
                _ => ErrorKind::Unexpected,
            }
        }
        Db::Sqlite => {
            let primary = code.parse::<i64>().map(|c| c & 0xff).unwrap_or(-1);
            if primary == 5 || primary == 6 {
                ErrorKind::Conflict
            } else if message.contains("no such table") || message.contains("no such column") {
                ErrorKind::SchemaMismatch
            } else if e.is_unique_violation() {
                ErrorKind::Validation
            } else {
                ErrorKind::Unexpected
            }
        }
    }
}

#[cfg(feature = "mysql")]
fn mysql_number(e: &dyn sqlx::error::DatabaseError) -> Option<u16> {
    e.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>().map(|m| m.number())
}

#[cfg(not(feature = "mysql"))]
fn mysql_number(_: &dyn sqlx::error::DatabaseError) -> Option<u16> {
    None
}

/// Maps `e`, raised while doing `what` on the outbox table `table`, into an outbox error.
pub(crate) fn map(db: Db, what: &str, table: &str, e: sqlx::Error) -> Error {
    let kind = match &e {
        sqlx::Error::Database(d) => classify_database(db, d.as_ref()),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => ErrorKind::Unavailable,
        sqlx::Error::PoolClosed => {
            return Error::new(
                ErrorKind::Unavailable,
                format!("{what} failed: the {} connection pool was closed; open a new one", db.name()),
            )
            .with_retryable(false)
            .with_source(e);
        }
        sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::ColumnIndexOutOfBounds { .. } => ErrorKind::SchemaMismatch,
        sqlx::Error::Configuration(_) => ErrorKind::Config,
        _ => ErrorKind::Unexpected,
    };
    let message = match kind {
        ErrorKind::SchemaMismatch => format!(
            "{what} failed: the outbox table `{table}` (or `{table}_aggregates`) is missing or has the wrong shape; \
             run the outbox-sqlx migration `{MIGRATION_NAME}` ({})",
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

/// A row whose contents make no sense (a status the state machine does not know, bad JSON).
pub(crate) fn bad_row(table: &str, detail: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::SchemaMismatch,
        format!(
            "the outbox table `{table}` holds a row this version cannot read ({detail}); \
             was it written by another tool? run the outbox-sqlx migration `{MIGRATION_NAME}`"
        ),
    )
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::error::Error as StdError;

    use super::*;

    #[derive(Debug)]
    struct Fake {
        code: &'static str,
        message: &'static str,
    }

    impl std::fmt::Display for Fake {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.message)
        }
    }

    impl StdError for Fake {}

    impl sqlx::error::DatabaseError for Fake {
        fn message(&self) -> &str {
            self.message
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            Some(self.code.into())
        }
        fn as_error(&self) -> &(dyn StdError + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn StdError + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn StdError + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            if self.code == "2067" { sqlx::error::ErrorKind::UniqueViolation } else { sqlx::error::ErrorKind::Other }
        }
    }

    fn kind(db: Db, code: &'static str, message: &'static str) -> (ErrorKind, bool) {
        let e = map(db, "testing", "outbox", sqlx::Error::Database(Box::new(Fake { code, message })));
        (e.kind(), e.is_retryable())
    }

    #[test]
    fn postgres_codes() {
        assert_eq!(kind(Db::Postgres, "40001", "could not serialize"), (ErrorKind::Conflict, true));
        assert_eq!(kind(Db::Postgres, "40P01", "deadlock detected"), (ErrorKind::Conflict, true));
        assert_eq!(kind(Db::Postgres, "42P01", "relation does not exist"), (ErrorKind::SchemaMismatch, false));
        assert_eq!(kind(Db::Postgres, "57P01", "terminating connection"), (ErrorKind::Unavailable, true));
        assert_eq!(kind(Db::Postgres, "08006", "connection failure"), (ErrorKind::Unavailable, true));
        assert_eq!(kind(Db::Postgres, "23505", "duplicate key"), (ErrorKind::Validation, false));
        assert_eq!(kind(Db::Postgres, "22P02", "invalid input"), (ErrorKind::Unexpected, false));
    }

    #[test]
    fn sqlite_codes() {
        assert_eq!(kind(Db::Sqlite, "5", "database is locked"), (ErrorKind::Conflict, true));
        assert_eq!(kind(Db::Sqlite, "517", "busy snapshot"), (ErrorKind::Conflict, true));
        assert_eq!(kind(Db::Sqlite, "1", "no such table: outbox"), (ErrorKind::SchemaMismatch, false));
        assert_eq!(kind(Db::Sqlite, "2067", "UNIQUE constraint failed"), (ErrorKind::Validation, false));
    }

    #[test]
    fn connection_errors_are_retryable_and_messages_say_what_to_do() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = map(Db::Postgres, "claiming entries", "outbox", sqlx::Error::Io(io));
        assert_eq!((e.kind(), e.is_retryable()), (ErrorKind::Unavailable, true));
        let e = map(Db::MySql, "claiming entries", "outbox", sqlx::Error::PoolTimedOut);
        assert_eq!((e.kind(), e.is_retryable()), (ErrorKind::Unavailable, true));
        let e = map(Db::MySql, "claiming entries", "outbox", sqlx::Error::PoolClosed);
        assert!(!e.is_retryable());
        let e = map(
            Db::Postgres,
            "enqueue",
            "outbox",
            sqlx::Error::Database(Box::new(Fake { code: "42P01", message: "x" })),
        );
        assert!(e.message().contains("run the outbox-sqlx migration `0001_outbox`"), "{e}");
    }
}
