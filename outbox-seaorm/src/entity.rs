//! SeaORM entities for the outbox tables, one set per database (their column types differ), for
//! the default table names `outbox` and `outbox_aggregates`.
//!
//! Query them like any entity, e.g. the dead entries of an aggregate:
//! ```no_run
//! # #[cfg(feature = "postgres")]
//! # async fn run(db: &sea_orm::DatabaseConnection) -> Result<(), sea_orm::DbErr> {
//! use outbox_seaorm::entity::postgres::entry;
//! use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
//!
//! let dead = entry::Entity::find()
//!     .filter(entry::Column::AggregateType.eq("order"))
//!     .filter(entry::Column::AggregateId.eq("o-1"))
//!     .filter(entry::Column::Status.eq(outbox_core::Status::Dead.as_str()))
//!     .order_by_asc(entry::Column::Sequence)
//!     .all(db)
//!     .await?;
//! # Ok(()) }
//! ```
//! For an outbox in other tables, run a raw statement and read the rows into the same models:
//! `entry::Entity::find().from_raw_sql(statement).all(db)`.
//!
//! Write entries with [`enqueue`](crate::enqueue), not by inserting models: the writer also
//! upserts the aggregate's row, which gives the entry its sequence and keeps the counts the relay
//! relies on. Change statuses through [`SeaStore`](crate::SeaStore) and
//! [`Maintenance`](outbox_core::Maintenance) for the same reason.

macro_rules! outbox_entities {
    ($module:ident, $feature:literal, $db:literal, time = $time:ty) => {
        #[doc = concat!("The outbox entities for ", $db, ".")]
        #[cfg(feature = $feature)]
        #[cfg_attr(docsrs, doc(cfg(feature = $feature)))]
        pub mod $module {
            /// The entries table (`outbox`): one row per entry.
            pub mod entry {
                use sea_orm::entity::prelude::*;

                /// One outbox entry as stored.
                #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
                #[sea_orm(table_name = "outbox")]
                pub struct Model {
                    /// The entry id (consumers de-duplicate by it).
                    #[sea_orm(primary_key, auto_increment = false)]
                    pub id: Uuid,
                    /// The aggregate's type.
                    pub aggregate_type: String,
                    /// The aggregate's id.
                    pub aggregate_id: String,
                    /// Position within the aggregate, increasing with commit order.
                    pub sequence: i64,
                    /// The event type.
                    pub event_type: String,
                    /// The payload bytes.
                    pub payload: Vec<u8>,
                    /// The payload's media type.
                    pub content_type: String,
                    /// The headers: a JSON array of `[name, value]` pairs, in order.
                    pub headers: Json,
                    /// `pending`, `processing`, `published`, `failed` or `dead` (`outbox_core::Status::as_str`).
                    pub status: String,
                    /// Failed publish attempts so far.
                    pub attempts: i32,
                    /// When it was written.
                    pub created_at: $time,
                    /// When it is due: its `not_before`, or its next retry.
                    pub available_at: $time,
                    /// When it was published.
                    pub published_at: Option<$time>,
                    /// The last publish error.
                    pub last_error: Option<String>,
                    /// The relay batch holding it while processing.
                    pub lease_holder: Option<String>,
                    /// Until when that batch holds it.
                    pub lease_expires_at: Option<$time>,
                }

                /// No relations.
                #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
                pub enum Relation {}

                impl ActiveModelBehavior for ActiveModel {}
            }

            /// The aggregates table (`outbox_aggregates`): one row per aggregate.
            pub mod aggregate {
                use sea_orm::entity::prelude::*;

                /// One aggregate's sequence, counts and lease.
                #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
                #[sea_orm(table_name = "outbox_aggregates")]
                pub struct Model {
                    /// The aggregate's type.
                    #[sea_orm(primary_key, auto_increment = false)]
                    pub aggregate_type: String,
                    /// The aggregate's id.
                    #[sea_orm(primary_key, auto_increment = false)]
                    pub aggregate_id: String,
                    /// The last sequence given out.
                    pub next_sequence: i64,
                    /// How many of its entries are not published (dead ones included).
                    pub unpublished: i64,
                    /// Not worth visiting before then (9999-12-31 when nothing is claimable).
                    pub available_at: $time,
                    /// The relay batch claiming it.
                    pub lease_holder: Option<String>,
                    /// Until when that batch claims it.
                    pub lease_expires_at: Option<$time>,
                }

                /// No relations.
                #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
                pub enum Relation {}

                impl ActiveModelBehavior for ActiveModel {}
            }
        }
    };
}

outbox_entities!(postgres, "postgres", "PostgreSQL (`uuid`, `timestamptz`, `jsonb`)", time = TimeDateTimeWithTimeZone);
outbox_entities!(mysql, "mysql", "MySQL/MariaDB (`BINARY(16)`, `DATETIME(6)` in UTC, `JSON`)", time = TimeDateTime);
outbox_entities!(
    sqlite,
    "sqlite",
    "SQLite (16-byte `BLOB` ids, INTEGER microseconds since the Unix epoch, JSON text)",
    time = i64
);
