//! # outbox-diesel
//!
//! The transactional outbox for **diesel** applications: write entries inside your own diesel
//! transaction (`PgConnection`, `MysqlConnection`, `SqliteConnection`, and with the `async`
//! feature diesel-async's `AsyncPgConnection` and `AsyncMysqlConnection`), and let an
//! [`outbox_core::Relay`] drain them through this crate's stores.
//!
//! The schema is **the same** as outbox-sqlx's and outbox-seaorm's (same tables, columns, types,
//! indexes, constraints, trigger), and the stores follow the same claim and completion rules, so
//! a team can switch ORM, or run relays of different adapters on one outbox, without a data
//! migration.
//!
//! ## Example
//! ```no_run
//! # #[cfg(feature = "postgres")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use diesel::{Connection, PgConnection};
//! use outbox_core::NewEntry;
//!
//! let mut conn = PgConnection::establish("postgres://postgres@127.0.0.1:5432/test")?;
//! outbox_diesel::postgres::migrate(&mut conn)?; // or run the diesel migration in migrations/postgres
//! conn.transaction(|conn| {
//!     // ... your business change with diesel ...
//!     let entry = NewEntry::builder("order", "o-1", "order.placed").json(r#"{"total":42}"#).build()?;
//!     outbox_diesel::postgres::enqueue(conn, &entry)?;
//!     Ok::<_, Box<dyn std::error::Error>>(())
//! })?; // committed: relays see the entry now; rolled back: it never existed
//! # Ok(()) }
//! # #[cfg(not(feature = "postgres"))]
//! # fn main() {}
//! ```
//! A relay drains it with [`postgres::PgStore`] (feature `async`), [`mysql::MysqlStore`] or
//! [`sqlite::SqliteStore`].
//!
//! ## Features
//! | feature | what it adds |
//! |---|---|
//! | `postgres` | [`postgres`]: writer for `PgConnection` (links libpq), `table!` schema, migrations |
//! | `mysql` | [`mysql`]: writer for `MysqlConnection` (links libmysqlclient/libmariadb), schema, migrations |
//! | `sqlite` | [`sqlite`]: writer for `SqliteConnection` (bundled SQLite), schema, migrations, [`sqlite::SqliteStore`] |
//! | `async` | with `postgres`/`mysql`: writers for diesel-async connections and the relay stores `PgStore`/`MysqlStore` over a deadpool |
//! | `migrations` | `MIGRATIONS` constants (diesel_migrations' `EmbeddedMigrations`) in each database module |
//!
//! ## Tables
//! The default tables are `outbox` and `outbox_aggregates`; each database module's `schema`
//! module has their `table!` definitions to join against. Other names: build a [`Tables`]
//! (validated at once), make the module's outbox (`PgOutbox::new(tables)`, ...) and use its
//! methods instead of the free functions; declare your `table!` with `#[sql_name = "..."]`.
//!
//! ## Errors inside diesel transactions
//! The writers return [`outbox_core::Error`]. diesel's `transaction` needs the closure's error
//! type to come from `diesel::result::Error` too, which `outbox_core::Error` cannot (neither type
//! is this crate's): use your application's error type, or
//! `Box<dyn std::error::Error + Send + Sync>`, as the examples do.
//!
//! ## Build prerequisites
//! - `postgres`: libpq (Debian `libpq-dev`), for diesel's synchronous `PgConnection`. The
//!   diesel-async connection itself is pure Rust (tokio-postgres).
//! - `mysql`: libmysqlclient or MariaDB Connector/C (Debian `libmariadb-dev`), found through
//!   pkg-config, for diesel's synchronous `MysqlConnection`. diesel-async's is pure Rust
//!   (mysql_async).
//! - `sqlite`: nothing: SQLite is compiled in (libsqlite3-sys `bundled`, the same libsqlite3-sys
//!   as sqlx, so both can live in one build).
//!
//! ## Performance notes
//! The stores run the same statements as outbox-sqlx's (same claim plan, same completion
//! grouping), so their figures should be close; `cargo bench -p outbox-diesel --bench drain`
//! prints both side by side. The known differences: the MySQL writer reads each aggregate's new
//! sequence with an extra `SELECT LAST_INSERT_ID()` (diesel does not expose the statement's
//! reply), PostgreSQL claims and completions set their isolation level in a statement of their
//! own after diesel's `BEGIN`, and the SQLite store serializes its calls on one connection
//! (SQLite has one writer anyway).
#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;
pub mod error;
pub mod migration;
mod plan;

#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;

#[cfg(feature = "mysql")]
#[cfg_attr(docsrs, doc(cfg(feature = "mysql")))]
pub mod mysql;

#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub mod sqlite;

pub use config::{ConfigError, MAX_SCHEMA_LEN, MAX_TABLE_LEN, Tables};
pub use migration::MIGRATION_NAME;
