//! The schema created by outbox-seaorm's migration equals outbox-sqlx's, catalog entry by catalog
//! entry: columns (type, nullability, default, position), indexes (columns, uniqueness,
//! predicate), constraints, and on PostgreSQL the NOTIFY trigger and its function. Names derived
//! from the table name are compared with the table name replaced by `{name}`.

use std::collections::BTreeSet;

use sea_orm::sea_query::Value;
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};

use crate::common::{connect, mysql_url, postgres_url, unique};

/// Every row of `sql` (one text column `r`), bound with the given names, with each name replaced.
async fn rows(db: &DatabaseConnection, sql: &str, bind: Vec<Value>, names: &[&str]) -> BTreeSet<String> {
    let backend = db.get_database_backend();
    let found = db.query_all(Statement::from_sql_and_values(backend, sql, bind)).await.unwrap();
    found
        .iter()
        .map(|row| {
            let mut r: String = row.try_get("", "r").unwrap();
            for name in names {
                r = r.replace(name, "{name}");
            }
            r
        })
        .collect()
}

const PG_QUERIES: &[&str] = &[
    // columns
    "SELECT concat_ws('|', table_name, ordinal_position, column_name, data_type, udt_name, is_nullable, \
     coalesce(column_default, '-'), coalesce(character_maximum_length::text, '-'), \
     coalesce(numeric_precision::text, '-'), coalesce(datetime_precision::text, '-')) AS r \
     FROM information_schema.columns WHERE table_schema = current_schema() AND table_name IN ($1, $2)",
    // indexes, with their full definition (columns, uniqueness, predicate)
    "SELECT concat_ws('|', tablename, indexname, indexdef) AS r FROM pg_indexes \
     WHERE schemaname = current_schema() AND tablename IN ($1, $2)",
    // constraints
    "SELECT concat_ws('|', c.relname, k.conname, k.contype, pg_get_constraintdef(k.oid)) AS r \
     FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE n.nspname = current_schema() AND c.relname IN ($1, $2)",
    // triggers
    "SELECT concat_ws('|', event_object_table, trigger_name, event_manipulation, action_timing, \
     action_orientation, action_statement) AS r FROM information_schema.triggers \
     WHERE trigger_schema = current_schema() AND event_object_table IN ($1, $2)",
    // the trigger function
    "SELECT concat_ws('|', p.proname, l.lanname, pg_get_function_result(p.oid), p.prosrc) AS r \
     FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang JOIN pg_namespace n ON n.oid = p.pronamespace \
     WHERE n.nspname = current_schema() AND p.proname = $1 || '_notify'",
];

async fn pg_catalog(db: &DatabaseConnection, name: &str) -> Vec<BTreeSet<String>> {
    let mut out = Vec::new();
    for sql in PG_QUERIES {
        let bind: Vec<Value> = vec![name.into(), format!("{name}_aggregates").into()];
        let bind = if sql.contains("$2") { bind } else { bind[..1].to_vec() };
        out.push(rows(db, sql, bind, &[name]).await);
    }
    out
}

#[tokio::test]
async fn postgres_schema_is_identical_to_sqlx() {
    let db = connect(&postgres_url()).await;
    let sea = unique("cat_sea");
    let sqlx_name = unique("cat_sqlx");
    outbox_seaorm::Migration::new(outbox_seaorm::Tables::new(&sea).unwrap()).apply(&db).await.unwrap();
    let pool = db.get_postgres_connection_pool();
    outbox_sqlx::PgOutbox::new(outbox_sqlx::Tables::new(&sqlx_name).unwrap()).migrate(pool).await.unwrap();
    let ours = pg_catalog(&db, &sea).await;
    let theirs = pg_catalog(&db, &sqlx_name).await;
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert!(!a.is_empty(), "catalog query {i} found nothing for outbox-seaorm's schema");
        assert_eq!(a, b, "catalog query {i} differs (left: outbox-seaorm, right: outbox-sqlx)");
    }
}

const MYSQL_QUERIES: &[&str] = &[
    "SELECT CONCAT_WS('|', TABLE_NAME, ORDINAL_POSITION, COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, \
     IFNULL(COLUMN_DEFAULT, '-'), IFNULL(CHARACTER_SET_NAME, '-'), IFNULL(COLLATION_NAME, '-'), EXTRA) AS r \
     FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN (?, ?)",
    "SELECT CONCAT_WS('|', TABLE_NAME, INDEX_NAME, NON_UNIQUE, SEQ_IN_INDEX, COLUMN_NAME, IFNULL(SUB_PART, '-'), \
     INDEX_TYPE) AS r FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN (?, ?)",
    "SELECT CONCAT_WS('|', TABLE_NAME, CONSTRAINT_NAME, CONSTRAINT_TYPE) AS r FROM information_schema.TABLE_CONSTRAINTS \
     WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN (?, ?)",
    "SELECT CONCAT_WS('|', TABLE_NAME, CONSTRAINT_NAME, CHECK_CLAUSE) AS r FROM information_schema.CHECK_CONSTRAINTS \
     WHERE CONSTRAINT_SCHEMA = DATABASE() AND TABLE_NAME IN (?, ?)",
    "SELECT CONCAT_WS('|', TABLE_NAME, ENGINE, TABLE_COLLATION, ROW_FORMAT, IFNULL(CREATE_OPTIONS, '-')) AS r \
     FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN (?, ?)",
];

async fn mysql_catalog(db: &DatabaseConnection, name: &str) -> Vec<BTreeSet<String>> {
    let mut out = Vec::new();
    for sql in MYSQL_QUERIES {
        let bind: Vec<Value> = vec![name.into(), format!("{name}_aggregates").into()];
        out.push(rows(db, sql, bind, &[name]).await);
    }
    out
}

#[tokio::test]
async fn mysql_schema_is_identical_to_sqlx() {
    let db = connect(&mysql_url()).await;
    let sea = unique("cat_sea");
    let sqlx_name = unique("cat_sqlx");
    outbox_seaorm::Migration::new(outbox_seaorm::Tables::new(&sea).unwrap()).apply(&db).await.unwrap();
    let pool = db.get_mysql_connection_pool();
    outbox_sqlx::MySqlOutbox::new(outbox_sqlx::Tables::new(&sqlx_name).unwrap()).migrate(pool).await.unwrap();
    let ours = mysql_catalog(&db, &sea).await;
    let theirs = mysql_catalog(&db, &sqlx_name).await;
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert!(!a.is_empty() || i == 3, "catalog query {i} found nothing for outbox-seaorm's schema");
        assert_eq!(a, b, "catalog query {i} differs (left: outbox-seaorm, right: outbox-sqlx)");
    }
}

const SQLITE_QUERIES: &[&str] = &[
    "SELECT type || '|' || name || '|' || tbl_name || '|' || ifnull(sql, '-') AS r FROM sqlite_master \
     WHERE tbl_name = ?",
    "SELECT cid || '|' || name || '|' || type || '|' || \"notnull\" || '|' || ifnull(dflt_value, '-') || '|' || pk AS r \
     FROM pragma_table_info(?)",
    "SELECT il.name || '|' || il.\"unique\" || '|' || il.origin || '|' || il.partial || '|' || ii.seqno || '|' || \
     ifnull(ii.name, '-') AS r FROM pragma_index_list(?) il, pragma_index_info(il.name) ii",
];

async fn sqlite_catalog(db: &DatabaseConnection, name: &str) -> Vec<BTreeSet<String>> {
    let mut out = Vec::new();
    for table in [name.to_string(), format!("{name}_aggregates")] {
        for sql in SQLITE_QUERIES {
            out.push(rows(db, sql, vec![table.as_str().into()], &[name]).await);
        }
    }
    out
}

#[tokio::test]
async fn sqlite_schema_is_identical_to_sqlx() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("catalog.db").display());
    let db = connect(&url).await;
    let sea = unique("cat_sea");
    let sqlx_name = unique("cat_sqlx");
    outbox_seaorm::Migration::new(outbox_seaorm::Tables::new(&sea).unwrap()).apply(&db).await.unwrap();
    let pool = db.get_sqlite_connection_pool();
    outbox_sqlx::SqliteOutbox::new(outbox_sqlx::Tables::new(&sqlx_name).unwrap()).migrate(pool).await.unwrap();
    let ours = sqlite_catalog(&db, &sea).await;
    let theirs = sqlite_catalog(&db, &sqlx_name).await;
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert!(!a.is_empty(), "catalog query {i} found nothing for outbox-seaorm's schema");
        assert_eq!(a, b, "catalog query {i} differs (left: outbox-seaorm, right: outbox-sqlx)");
    }
}
