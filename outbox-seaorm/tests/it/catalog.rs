//! The schema created by outbox-seaorm's migration equals outbox-sqlx's, catalog entry by catalog
//! entry: columns (type, nullability, default, position), indexes (columns, uniqueness,
//! predicate), constraints, and on PostgreSQL the NOTIFY trigger and its function. Names derived
//! from the table name are compared with the table name replaced by `{name}`.

use std::collections::BTreeSet;

use sea_orm::sea_query::Value;
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};

use crate::common::{Db, connect, postgres_url, unique};

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
    let _ = Db::Postgres;
}
