//! # outbox-sqlx
//!
//! Transactional outbox storage on [sqlx](https://docs.rs/sqlx): PostgreSQL, MySQL 8 /
//! MariaDB 10.6+ and SQLite. Applications write entries with their own sqlx transaction; relays
//! claim them with `FOR UPDATE SKIP LOCKED` (SQLite: one writer), publish them through an
//! `outbox_core::Publisher`, and record the outcome in one round trip per batch.
//!
//! ```no_run
//! # #[cfg(feature = "postgres")]
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use outbox_core::{NewEntry, NoopPublisher, Relay, RelayConfig};
//! use outbox_sqlx::{PgOutbox, Tables};
//!
//! let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/test").await?;
//! let outbox = PgOutbox::new(Tables::new("outbox")?);
//! outbox.migrate(&pool).await?;
//!
//! // Writing: in the application's own transaction.
//! let mut tx = pool.begin().await?;
//! let entry = NewEntry::builder("order", "o-1", "order.placed").json(r#"{"total":42}"#).build()?;
//! outbox.enqueue(&mut *tx, &entry).await?;
//! tx.commit().await?;
//!
//! // Relaying: a store with its own pool, woken by LISTEN/NOTIFY.
//! let store = outbox.store(pool.clone());
//! let relay = Relay::new(store.clone(), NoopPublisher, RelayConfig::default())?;
//! let _listener = store.listen(relay.wakeup());
//! relay.run(async { /* your shutdown signal */ }).await?;
//! # Ok(()) }
//! ```
//!
//! ## Features
//! - `postgres`: [`PgOutbox`], [`PgStore`], [`postgres::Listener`].
//! - `mysql`: [`MySqlOutbox`], [`MySqlStore`] (MySQL 8 and MariaDB 10.6+).
//! - `sqlite`: [`SqliteOutbox`], [`SqliteStore`] (SQLite bundled by sqlx).
//! - `tls-rustls`: TLS connections (passed through to sqlx). Without it, connect without TLS.
//!
//! Any subset builds on its own.
//!
//! ## Schema
//! Two tables per outbox, named from one validated [`Tables`] name (`outbox` by default):
//! - `<name>`: one row per entry, columns mirroring [`outbox_core::Entry`]: `id` (uuid /
//!   `BINARY(16)` / `BLOB`), `aggregate_type`, `aggregate_id`, `sequence`, `event_type`,
//!   `payload` (bytes), `content_type`, `headers` (JSON array of `[name, value]` pairs, in
//!   order), `status` (`Status::as_str`), `attempts`, `created_at`, `available_at`,
//!   `published_at`, `last_error`, `lease_holder`, `lease_expires_at`; (aggregate_type,
//!   aggregate_id, sequence) unique (PostgreSQL: among unpublished entries, the partial index
//!   below; an index over every row would cost each write). Times are `timestamptz`
//!   (PostgreSQL), `DATETIME(6)` in UTC (MySQL), `INTEGER` microseconds since the Unix epoch
//!   (SQLite).
//! - `<name>_aggregates`: one row per aggregate: `next_sequence` (the last sequence given out),
//!   `unpublished` (count of entries not yet published, dead ones included), `available_at`
//!   (not worth visiting before then), `lease_holder`, `lease_expires_at`; PostgreSQL also
//!   `leased_through` (the lease covers the aggregate's unpublished entries up to this sequence:
//!   the PostgreSQL store marks a claim on the aggregate row instead of on each entry).
//!
//! Indexes keep claims independent of how many published rows the table holds: PostgreSQL and
//! SQLite have a partial index over unpublished rows (`WHERE status <> 'published'`); MySQL has
//! no partial indexes, so its index is (aggregate, `published_at`, sequence) and claims read the
//! `published_at IS NULL` range of each claimed aggregate. Claims find work through the
//! aggregates table, never by scanning entries.
//!
//! The SQL ships as plain files (`migrations/{postgres,mysql,sqlite}/0001_outbox.sql`) with
//! placeholders for the names. `migrations()` returns them rendered for your tables (write each
//! to `migrations/<file_name>` for `sqlx::migrate!` or your own tool); `migrate()` runs them.
//! They are idempotent. The diesel and SeaORM adapters create the same schema, so every adapter
//! can write to and relay from one outbox.
//!
//! ## The ordering rule (what "strict" means here)
//! A writer upserts the aggregate's row in the caller's transaction to take the next sequence.
//! That row stays locked until the transaction commits or rolls back, so a second writer of the
//! same aggregate waits, and sequences of one aggregate always follow commit order — whether or
//! not the application locks anything itself. This is the strict mode; no advisory lock is
//! needed (a transaction-scoped advisory lock per aggregate would serialize the same writers on
//! the same key, adding a round trip). The price is the same: concurrent writers of one aggregate
//! wait for each other (of different aggregates, never). A rolled-back write leaves a gap in the
//! sequence, never a reordering. Keep aggregate rows: purging only deletes published entries,
//! so sequences keep increasing.
//!
//! Two consequences to know: under `REPEATABLE READ` or `SERIALIZABLE` on PostgreSQL, the
//! second of two concurrent writers of one aggregate fails with a serialization error (a
//! retryable `Conflict`: retry the business transaction) instead of waiting; and a relay skips
//! an aggregate while a writer's transaction holds its row (`SKIP LOCKED`), so keep write
//! transactions short: an aggregate written back to back without a pause is claimed only in the
//! gaps.
//!
//! ## Claiming
//! A claim locks up to [`ClaimOptions::aggregates_per_claim`] aggregates that are due and not
//! leased (`FOR UPDATE SKIP LOCKED` on PostgreSQL and MySQL; `BEGIN IMMEDIATE` on SQLite), reads
//! each one's first `max_per_aggregate` unpublished entries in sequence order, takes the prefix
//! that is claimable (stopping at the first entry that is not due, still leased, or dead under
//! `DeadPolicy::Block`), marks those processing and leases their aggregates, all in one short
//! transaction. An aggregate belongs to one batch at a time, so per-aggregate order holds across
//! any number of relays. Aggregates with nothing claimable are parked (`available_at`) until
//! their first entry is due, or until a write or requeue when it is dead.
//!
//! All times come from the requests (the relay's clock), never from the database clock, except
//! `created_at`, which the writer takes from the application host's clock.
//!
//! **Mixed dead policies**: a relay with `DeadPolicy::Block` parks an aggregate whose first
//! entry is dead until a write or requeue touches it; a relay with `DeadPolicy::Skip` on the
//! same outbox then does not see that aggregate until then. Use one policy per outbox.
//!
//! ## Decisions (and why)
//! - **Aggregates table.** Relays claim aggregates, not entries, so an aggregate belongs to one
//!   batch at a time (order across relays) and claims walk per-aggregate index ranges instead
//!   of every unpublished row. `available_at` on the aggregate ("don't visit before") keeps
//!   aggregates blocked by a delayed, retrying or dead entry out of the claim's range, so they
//!   never starve the others; an aggregate with nothing unpublished gets 9999-12-31 and leaves
//!   the range too, so idle aggregates cost nothing.
//! - **Retries and delays** live on the entry (`available_at`) and are mirrored on its
//!   aggregate (the earliest retry, or the delayed first entry's time), so nothing polls them.
//! - **Dead entries**: under `DeadPolicy::Block` a dead first entry parks its aggregate until a
//!   write or a requeue touches it; under `Skip` claims read past dead rows.
//! - **Times**: `now`, `lease_until`, retry times and publish times come from the relay's
//!   requests (its clock), never from the database clock, so tests can move time and relays on
//!   several hosts agree with what the relay decided. `created_at` is the writer host's clock.
//! - **Aggregate rows are kept** when entries are purged: they hold the last sequence given out,
//!   so sequences never restart.
//! - **Isolation**: claims and completions pick `READ COMMITTED` themselves (PostgreSQL:
//!   `BEGIN ISOLATION LEVEL READ COMMITTED`; MySQL: `SET TRANSACTION …` before each); the
//!   application's transactions keep whatever level it uses.
//! - **MySQL collation**: the tables use `utf8mb4_bin`, so aggregate ids compare byte for byte
//!   (`"A"` and `"a"` are two aggregates), as in PostgreSQL and SQLite.
//! - **Names**: a table name is at most 48 bytes so that derived index, trigger and aggregates
//!   table names fit PostgreSQL's 63-byte limit; the NOTIFY channel is the table name.
//! - **LISTEN** runs on a dedicated connection (a one-connection pool built from the store's
//!   pool options), so it never takes a connection from the relay or the application.
//!
//! ## Errors
//! See [`error`] for how sqlx errors map to `outbox_core::ErrorKind`: connection
//! loss, deadlocks and serialization failures are retryable; a missing table is a
//! `SchemaMismatch` naming the migration to run.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;
mod convert;
pub mod error;
mod plan;
pub mod schema;

#[cfg(feature = "mysql")]
#[cfg_attr(docsrs, doc(cfg(feature = "mysql")))]
pub mod mysql;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub mod sqlite;

pub use config::{ConfigError, MAX_SCHEMA_LEN, MAX_TABLE_LEN, Tables};
#[cfg(feature = "mysql")]
pub use mysql::{MySqlOutbox, MySqlStore};
#[cfg(feature = "postgres")]
pub use postgres::{NotifyMode, PgOutbox, PgStore};
pub use schema::{MIGRATION_NAME, Migration};
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteOutbox, SqliteStore};

/// How a store claims. The relay's `batch_size` and `max_per_aggregate` arrive with each
/// request; this tunes the rest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClaimOptions {
    /// How many aggregates one claim locks and reads. `None` (the default) takes
    /// `min(max_entries, 2 × ⌈max_entries / max_per_aggregate⌉)`: enough to fill a batch when
    /// aggregates have a few entries each, without reading far more rows than a batch holds when
    /// they have many. Raise it when most aggregates have one or two entries waiting.
    /// The PostgreSQL store starts there and then adapts: 25% more aggregates than the entries
    /// its recent claims found per aggregate say a full batch needs (at most `max_entries`).
    pub aggregates_per_claim: Option<usize>,
}

impl ClaimOptions {
    /// Locks at most `n` aggregates per claim (at least 1).
    pub fn aggregates_per_claim(n: usize) -> Self {
        ClaimOptions { aggregates_per_claim: Some(n.max(1)) }
    }
}
