//! Maps `sea_orm::DbErr` into the framework's one error type, with the right kind and verdict.
//!
//! | what happened | kind | retryable |
//! |---|---|---|
//! | connection refused or dropped, I/O, TLS, pool timed out or closed | `Unavailable` | yes |
//! | PostgreSQL 40001/40P01/55P03, MySQL 1213/1205, SQLite `BUSY`/`LOCKED` | `Conflict` | yes |
//! | PostgreSQL 57014 (statement timeout), MySQL 3024/1969 | `Timeout` | yes |
//! | table or column missing (PostgreSQL 42P01/42703, MySQL 1146/1054, SQLite "no such table/column"), undecodable column | `SchemaMismatch`, naming the migration to run | no |
//! | unique violation while writing an entry | `Validation` ("duplicate entry id") | no |
//! | anything else | `Unexpected` | no |

use outbox_core::{Error, ErrorKind};
use sea_orm::{DbBackend, DbErr};

use crate::migration::MIGRATION_NAME;

fn db_name(db: DbBackend) -> &'static str {
    match db {
        DbBackend::Postgres => "PostgreSQL",
        DbBackend::MySql => "MySQL",
        DbBackend::Sqlite => "SQLite",
    }
}

#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
fn classify_database(db: DbBackend, e: &dyn sea_orm::sqlx::error::DatabaseError) -> ErrorKind {
    let code = e.code();
    let code = code.as_deref().unwrap_or("");
    match db {
        DbBackend::Postgres => match code {
            "40001" | "40P01" | "55P03" => ErrorKind::Conflict,
            "42P01" | "42703" | "42883" => ErrorKind::SchemaMismatch,
            "57014" => ErrorKind::Timeout,
            c if c.starts_with("08") || c.starts_with("57P") || c == "53300" => ErrorKind::Unavailable,
            "23505" => ErrorKind::Validation,
            _ => ErrorKind::Unexpected,
        },
        DbBackend::MySql => match mysql_number(e) {
            Some(1213 | 1205) => ErrorKind::Conflict,
            Some(1146 | 1054) => ErrorKind::SchemaMismatch,
            Some(1040 | 1053 | 1927 | 2006 | 2013) => ErrorKind::Unavailable,
            Some(1062) => ErrorKind::Validation,
            Some(3024 | 1969) => ErrorKind::Timeout,
            _ => ErrorKind::Unexpected,
        },
        DbBackend::Sqlite => {
            let primary = code.parse::<i64>().map(|c| c & 0xff).unwrap_or(-1);
            let message = e.message();
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
fn mysql_number(e: &dyn sea_orm::sqlx::error::DatabaseError) -> Option<u16> {
    e.try_downcast_ref::<sea_orm::sqlx::mysql::MySqlDatabaseError>().map(|m| m.number())
}

#[cfg(all(not(feature = "mysql"), any(feature = "postgres", feature = "sqlite")))]
fn mysql_number(_: &dyn sea_orm::sqlx::error::DatabaseError) -> Option<u16> {
    None
}

#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
fn classify_sqlx(db: DbBackend, e: &sea_orm::sqlx::Error) -> ErrorKind {
    use sea_orm::sqlx::Error as E;
    match e {
        E::Database(d) => classify_database(db, d.as_ref()),
        E::Io(_) | E::Tls(_) | E::PoolTimedOut | E::PoolClosed | E::Protocol(_) | E::WorkerCrashed => {
            ErrorKind::Unavailable
        }
        E::ColumnNotFound(_) | E::ColumnDecode { .. } | E::TypeNotFound { .. } | E::ColumnIndexOutOfBounds { .. } => {
            ErrorKind::SchemaMismatch
        }
        E::Configuration(_) => ErrorKind::Config,
        _ => ErrorKind::Unexpected,
    }
}

fn classify(db: DbBackend, e: &DbErr) -> ErrorKind {
    use sea_orm::RuntimeErr;
    match e {
        DbErr::ConnectionAcquire(_) => ErrorKind::Unavailable,
        DbErr::Conn(RuntimeErr::Internal(_)) => ErrorKind::Unavailable,
        #[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
        DbErr::Conn(RuntimeErr::SqlxError(s))
        | DbErr::Exec(RuntimeErr::SqlxError(s))
        | DbErr::Query(RuntimeErr::SqlxError(s)) => classify_sqlx(db, s),
        DbErr::TryIntoErr { .. } | DbErr::Type(_) | DbErr::Json(_) => ErrorKind::SchemaMismatch,
        _ => {
            let _ = db;
            ErrorKind::Unexpected
        }
    }
}

/// Maps `e`, raised while doing `what` on the outbox `table`, into an outbox error.
pub(crate) fn map(db: DbBackend, what: &str, table: &str, e: DbErr) -> Error {
    let kind = classify(db, &e);
    let name = db_name(db);
    let message = match kind {
        ErrorKind::SchemaMismatch => format!(
            "{what} failed: the outbox table `{table}` (or `{table}_aggregates`) is missing or has the wrong shape; \
             run the outbox-seaorm migration `{MIGRATION_NAME}` (add outbox_seaorm::Migration to your Migrator)"
        ),
        ErrorKind::Validation => format!(
            "{what} failed: duplicate entry id: an entry with this id is already in the outbox `{table}`; ids must be unique"
        ),
        ErrorKind::Unavailable => format!("{what} failed: {name} is unreachable or the connection dropped"),
        ErrorKind::Conflict => format!("{what} failed: {name} reported a deadlock, serialization failure or busy lock"),
        ErrorKind::Timeout => format!("{what} failed: {name} cancelled the statement (timeout)"),
        _ => format!("{what} failed on {name}"),
    };
    Error::new(kind, message).with_source(e)
}

/// A row whose contents make no sense (a status the state machine does not know, bad JSON).
pub(crate) fn bad_row(table: &str, detail: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::SchemaMismatch,
        format!(
            "the outbox table `{table}` holds a row this version cannot read ({detail}); \
             was it written by another tool? run the outbox-seaorm migration `{MIGRATION_NAME}`"
        ),
    )
}
