//! The entities read what the writer stored, on each database.

use outbox_core::NewEntry;
use outbox_seaorm::entity;
use sea_orm::prelude::Uuid;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, Statement, TransactionTrait};

use crate::common::{Db, Fresh, connect, fresh};

fn written() -> NewEntry {
    NewEntry::builder("order", "o-1", "order.placed")
        .json(r#"{"total":42}"#)
        .header("x-a", "1")
        .header("correlation-id", "c-1")
        .build()
        .unwrap()
}

fn select_all(f: &Fresh, table: &str) -> Statement {
    let backend = f.db.get_database_backend();
    let q = if backend == sea_orm::DbBackend::MySql { '`' } else { '"' };
    Statement::from_string(backend, format!("SELECT * FROM {q}{table}{q}"))
}

fn headers() -> serde_json::Value {
    serde_json::json!([["x-a", "1"], ["correlation-id", "c-1"]])
}

macro_rules! check_entities {
    ($f:expr, $e:expr, $module:ident) => {{
        use entity::$module::{aggregate, entry};
        let entries = entry::Entity::find().from_raw_sql(select_all(&$f, $f.tables.name())).all(&$f.db).await.unwrap();
        assert_eq!(entries.len(), 1);
        let row = &entries[0];
        assert_eq!(row.id, Uuid::from_u128($e.id().as_u128()));
        assert_eq!((row.aggregate_id.as_str(), row.sequence, row.status.as_str()), ("o-1", 1, "pending"));
        assert_eq!(row.payload, br#"{"total":42}"#.to_vec());
        assert_eq!(row.headers, headers());
        assert!(row.published_at.is_none() && row.lease_holder.is_none());
        let aggregates = aggregate::Entity::find()
            .from_raw_sql(select_all(&$f, &$f.tables.aggregates_name()))
            .all(&$f.db)
            .await
            .unwrap();
        assert_eq!(aggregates.len(), 1);
        assert_eq!((aggregates[0].next_sequence, aggregates[0].unpublished), (1, 1));
    }};
}

#[tokio::test]
async fn postgres_entities_read_the_tables() {
    let f = fresh(Db::Postgres, "sea_entity").await;
    let e = written();
    f.write(std::slice::from_ref(&e), true).await.unwrap();
    check_entities!(f, e, postgres);
}

#[tokio::test]
async fn mysql_entities_read_the_tables() {
    let f = fresh(Db::MySql, "sea_entity").await;
    let e = written();
    f.write(std::slice::from_ref(&e), true).await.unwrap();
    check_entities!(f, e, mysql);
}

#[tokio::test]
async fn sqlite_entities_read_the_tables() {
    let f = fresh(Db::Sqlite, "sea_entity").await;
    let e = written();
    f.write(std::slice::from_ref(&e), true).await.unwrap();
    check_entities!(f, e, sqlite);
}

/// With the default table names the entities work as any SeaORM entity: find, filter.
#[tokio::test]
async fn sqlite_entities_query_the_default_tables() {
    let dir = tempfile::tempdir().unwrap();
    let db = connect(&format!("sqlite://{}?mode=rwc", dir.path().join("e.db").display())).await;
    outbox_seaorm::Migration::default().apply(&db).await.unwrap();
    let e = written();
    let tx = db.begin().await.unwrap();
    outbox_seaorm::enqueue(&tx, &e).await.unwrap();
    tx.commit().await.unwrap();
    use entity::sqlite::entry;
    let found = entry::Entity::find()
        .filter(entry::Column::AggregateId.eq("o-1"))
        .filter(entry::Column::Status.eq(outbox_core::Status::Pending.as_str()))
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.id, Uuid::from_u128(e.id().as_u128()));
    assert_eq!(found.headers, headers());
    assert!(entry::Entity::find_by_id(Uuid::from_u128(1)).one(&db).await.unwrap().is_none());
}
