//! # outbox-seaorm
//!
//! The transactional outbox for **SeaORM** applications: write outbox entries in the same
//! SeaORM transaction as the business change, and let a relay publish them, on PostgreSQL,
//! MySQL/MariaDB or SQLite, without a second database stack in the application.
//!
//! - [`enqueue`] / [`enqueue_all`] (or [`Outbox::enqueue`] for other table names) take any
//!   [`sea_orm::ConnectionTrait`], normally your [`DatabaseTransaction`](sea_orm::DatabaseTransaction):
//!   the entry commits or rolls back with it.
//! - [`Migration`] is a `sea-orm-migration` migration creating the outbox tables, identical to
//!   outbox-sqlx's (and outbox-diesel's): one outbox, any of the three libraries, no data migration
//!   to switch.
//! - [`entity`] has SeaORM entities for the entries and aggregates tables, to query them.
//! - [`SeaStore`] is the relay-side [`Store`](outbox_core::Store) and
//!   [`Maintenance`](outbox_core::Maintenance) implementation.
//!
//! ## Example
//! ```no_run
//! use outbox_core::{CollectingPublisher, NewEntry, Relay, RelayConfig};
//! use outbox_seaorm::{Migration, SeaStore, Tables};
//! use sea_orm::{Database, TransactionTrait};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let db = Database::connect("postgres://postgres@127.0.0.1:5432/test").await?;
//! Migration::default().apply(&db).await?; // or add it to your Migrator
//!
//! // In the application's transaction:
//! let tx = db.begin().await?;
//! // ... insert the order with `&tx` ...
//! let entry = NewEntry::builder("order", "o-1", "order.placed").json(r#"{"total":42}"#).build()?;
//! outbox_seaorm::enqueue(&tx, &entry).await?;
//! tx.commit().await?;
//!
//! // In the relay process:
//! let publisher = CollectingPublisher::new();
//! let relay = Relay::new(SeaStore::new(db.clone(), Tables::default()), publisher.clone(), RelayConfig::default())?;
//! relay.run_once().await?;
//! assert_eq!(publisher.published()[0].aggregate_id, "o-1");
//! # Ok(()) }
//! ```
//!
//! ## Features
//! - `postgres`: PostgreSQL through sea-orm's `sqlx-postgres` (claims with `FOR UPDATE SKIP
//!   LOCKED`, a `NOTIFY` trigger from the migration).
//! - `mysql`: MySQL 8 / MariaDB 10.6+ through `sqlx-mysql`.
//! - `sqlite`: SQLite through `sqlx-sqlite`.
//!
//! The tokio runtime is used; no TLS backend is enabled (enable sea-orm's
//! `runtime-tokio-rustls` in your application if you need one). SeaORM 1.1 runs on sqlx 0.8, the
//! same as outbox-sqlx, so both can share one build.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;
mod convert;
pub mod entity;
mod error;
mod migration;
mod plan;
mod query;
mod store;
mod writer;

pub use config::{ConfigError, MAX_SCHEMA_LEN, MAX_TABLE_LEN, Tables};
pub use migration::{MIGRATION_NAME, Migration};
pub use store::SeaStore;
pub use writer::{Outbox, enqueue, enqueue_all};
