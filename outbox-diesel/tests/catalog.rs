//! One table, three adapters: the schema diesel's migrations create is the schema outbox-sqlx
//! creates, compared catalog against catalog (columns, types, defaults, indexes, constraints,
//! triggers and their function). Any difference fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use diesel::connection::SimpleConnection;
use diesel::sql_types::Text;
use diesel::{Connection, MysqlConnection, PgConnection, QueryableByName, RunQueryDsl, SqliteConnection};
use diesel_migrations::MigrationHarness;

use common::{mysql_url, pg_url, unique, unreachable};

#[derive(QueryableByName, Debug, PartialEq, Eq)]
struct Line {
    #[diesel(sql_type = Text)]
    line: String,
}

fn lines<C: Connection>(conn: &mut C, sql: &str) -> Vec<String>
where
    C::Backend: diesel::backend::Backend,
    diesel::query_builder::SqlQuery: diesel::query_dsl::LoadQuery<'static, C, Line>,
{
    diesel::sql_query(sql)
        .load::<Line>(conn)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .map(|l| l.line)
        .collect()
}

/// Asserts both catalogs hold the same lines, listing what differs.
fn same(what: &str, diesel: Vec<String>, sqlx: Vec<String>) {
    assert!(!diesel.is_empty(), "no {what} found for the diesel schema");
    let only_diesel: Vec<_> = diesel.iter().filter(|l| !sqlx.contains(l)).collect();
    let only_sqlx: Vec<_> = sqlx.iter().filter(|l| !diesel.contains(l)).collect();
    assert!(
        diesel == sqlx,
        "the {what} differ:\n  only from diesel: {only_diesel:#?}\n  only from sqlx: {only_sqlx:#?}"
    );
}

fn pg_catalog(conn: &mut PgConnection, schema: &str) -> Vec<(&'static str, Vec<String>)> {
    let s = format!("'{schema}'");
    vec![
        (
            "columns",
            lines(
                conn,
                &format!(
                    "SELECT concat_ws('|', table_name, ordinal_position, column_name, data_type, udt_name, is_nullable, \
                 coalesce(column_default, '-'), coalesce(character_maximum_length, -1), coalesce(numeric_precision, -1), \
                 coalesce(datetime_precision, -1), is_identity, is_generated) AS line FROM information_schema.columns \
                 WHERE table_schema = {s} AND table_name NOT LIKE '\\_\\_diesel%' ORDER BY table_name, ordinal_position"
                ),
            ),
        ),
        (
            "indexes",
            lines(
                conn,
                &format!(
                    "SELECT concat_ws('|', tablename, indexname, replace(indexdef, {s}, 'S')) AS line FROM pg_indexes \
                 WHERE schemaname = {s} AND tablename NOT LIKE '\\_\\_diesel%' ORDER BY tablename, indexname"
                ),
            ),
        ),
        (
            "constraints",
            lines(
                conn,
                &format!(
                    "SELECT concat_ws('|', c.relname, k.conname, k.contype, pg_get_constraintdef(k.oid), k.condeferrable) \
                 AS line FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = {s} AND c.relname NOT LIKE '\\_\\_diesel%' ORDER BY 1"
                ),
            ),
        ),
        (
            "triggers",
            lines(
                conn,
                &format!(
                    "SELECT concat_ws('|', event_object_table, trigger_name, event_manipulation, action_timing, \
                 action_orientation, replace(replace(action_statement, '\"' || {s} || '\".', ''), {s} || '.', '')) AS line \
                 FROM information_schema.triggers WHERE trigger_schema = {s} ORDER BY 1"
                ),
            ),
        ),
        (
            "functions",
            lines(
                conn,
                &format!(
                    "SELECT concat_ws('|', p.proname, l.lanname, pg_get_function_result(p.oid), p.prosrc) AS line \
                 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace JOIN pg_language l ON l.oid = p.prolang \
                 WHERE n.nspname = {s} ORDER BY 1"
                ),
            ),
        ),
    ]
}

#[tokio::test]
async fn postgres_schema_is_identical_to_outbox_sqlx() {
    let url = pg_url();
    let mut conn = PgConnection::establish(&url).unwrap_or_else(|e| unreachable("PostgreSQL", &url, e));
    let (ours, theirs) = (unique("dcat_diesel"), unique("dcat_sqlx"));
    // diesel: the shipped diesel migration (default names), run by diesel_migrations in a schema of its own.
    conn.batch_execute(&format!("CREATE SCHEMA \"{ours}\"; CREATE SCHEMA \"{theirs}\"; SET search_path TO \"{ours}\""))
        .unwrap();
    conn.run_pending_migrations(outbox_diesel::postgres::MIGRATIONS).unwrap();
    // sqlx: its own migration, same table name, in the other schema.
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let tables = outbox_sqlx::Tables::new("outbox").unwrap().with_schema(theirs.clone()).unwrap();
    outbox_sqlx::PgOutbox::new(tables).migrate(&pool).await.unwrap();
    let ours_catalog = pg_catalog(&mut conn, &ours);
    let theirs_catalog = pg_catalog(&mut conn, &theirs);
    for ((what, a), (_, b)) in ours_catalog.into_iter().zip(theirs_catalog) {
        same(what, a, b);
    }
    conn.batch_execute(&format!("DROP SCHEMA \"{ours}\" CASCADE; DROP SCHEMA \"{theirs}\" CASCADE")).unwrap();
}

fn mysql_catalog(conn: &mut MysqlConnection, db: &str) -> Vec<(&'static str, Vec<String>)> {
    let s = format!("'{db}'");
    let not_diesel = "NOT LIKE '\\_\\_diesel%'";
    vec![
        (
            "tables",
            lines(
                conn,
                &format!(
                    "SELECT CONCAT_WS('|', table_name, engine, table_collation, coalesce(create_options, '')) AS line \
                 FROM information_schema.tables WHERE table_schema = {s} AND table_name {not_diesel} ORDER BY 1"
                ),
            ),
        ),
        (
            "columns",
            lines(
                conn,
                &format!(
                    "SELECT CONCAT_WS('|', table_name, ordinal_position, column_name, column_type, is_nullable, \
                 coalesce(column_default, '-'), coalesce(character_set_name, '-'), coalesce(collation_name, '-'), \
                 column_key, extra) AS line FROM information_schema.columns WHERE table_schema = {s} \
                 AND table_name {not_diesel} ORDER BY table_name, ordinal_position"
                ),
            ),
        ),
        (
            "indexes",
            lines(
                conn,
                &format!(
                    "SELECT CONCAT_WS('|', table_name, index_name, non_unique, seq_in_index, column_name, \
                 coalesce(sub_part, -1), index_type) AS line FROM information_schema.statistics \
                 WHERE table_schema = {s} AND table_name {not_diesel} ORDER BY table_name, index_name, seq_in_index"
                ),
            ),
        ),
        (
            "constraints",
            lines(
                conn,
                &format!(
                    "SELECT CONCAT_WS('|', table_name, constraint_name, constraint_type) AS line \
                 FROM information_schema.table_constraints WHERE table_schema = {s} AND table_name {not_diesel} ORDER BY 1"
                ),
            ),
        ),
        (
            "check constraints",
            lines(
                conn,
                &format!(
                    "SELECT CONCAT_WS('|', table_name, constraint_name, check_clause) AS line \
                 FROM information_schema.check_constraints WHERE constraint_schema = {s} ORDER BY 1"
                ),
            ),
        ),
    ]
}

#[tokio::test]
async fn mysql_schema_is_identical_to_outbox_sqlx() {
    let url = mysql_url();
    let mut conn = MysqlConnection::establish(&url).unwrap_or_else(|e| unreachable("MariaDB", &url, e));
    let (ours, theirs) = (unique("dcat_diesel"), unique("dcat_sqlx"));
    conn.batch_execute(&format!("CREATE DATABASE `{ours}`; CREATE DATABASE `{theirs}`")).unwrap();
    let base = url.rsplit_once('/').unwrap().0;
    let mut ours_conn = MysqlConnection::establish(&format!("{base}/{ours}")).unwrap();
    ours_conn.run_pending_migrations(outbox_diesel::mysql::MIGRATIONS).unwrap();
    let pool = sqlx::MySqlPool::connect(&format!("{base}/{theirs}")).await.unwrap();
    outbox_sqlx::MySqlOutbox::new(outbox_sqlx::Tables::new("outbox").unwrap()).migrate(&pool).await.unwrap();
    let ours_catalog = mysql_catalog(&mut conn, &ours);
    let theirs_catalog = mysql_catalog(&mut conn, &theirs);
    for ((what, a), (_, b)) in ours_catalog.into_iter().zip(theirs_catalog) {
        if what == "check constraints" && a.is_empty() && b.is_empty() {
            continue; // MySQL 8 reports no JSON check; MariaDB reports json_valid on both
        }
        same(what, a, b);
    }
    conn.batch_execute(&format!("DROP DATABASE `{ours}`; DROP DATABASE `{theirs}`")).unwrap();
}

fn sqlite_catalog(conn: &mut SqliteConnection) -> Vec<(&'static str, Vec<String>)> {
    let objects = lines(
        conn,
        "SELECT type || '|' || name || '|' || tbl_name || '|' || coalesce(sql, '-') AS line FROM sqlite_master \
         WHERE tbl_name NOT LIKE '\\_\\_diesel%' ESCAPE '\\' ORDER BY type, name",
    );
    let mut columns = Vec::new();
    let mut indexes = Vec::new();
    for table in ["outbox", "outbox_aggregates"] {
        columns.extend(lines(conn, &format!(
            "SELECT '{table}|' || cid || '|' || name || '|' || type || '|' || \"notnull\" || '|' || coalesce(dflt_value, '-') \
             || '|' || pk AS line FROM pragma_table_info('{table}') ORDER BY cid"
        )));
        indexes.extend(lines(
            conn,
            &format!(
                "SELECT '{table}|' || l.name || '|' || l.\"unique\" || '|' || l.origin || '|' || l.partial || '|' || \
             group_concat(coalesce(x.name, '-') || ':' || x.desc || ':' || x.coll || ':' || x.key, ',') AS line \
             FROM pragma_index_list('{table}') l JOIN pragma_index_xinfo(l.name) x GROUP BY l.name ORDER BY l.name"
            ),
        ));
    }
    vec![("objects", objects), ("columns", columns), ("indexes", indexes)]
}

#[tokio::test]
async fn sqlite_schema_is_identical_to_outbox_sqlx() {
    let dir = tempfile::tempdir().unwrap();
    let ours_path = dir.path().join("diesel.db");
    let theirs_path = dir.path().join("sqlx.db");
    let mut ours = SqliteConnection::establish(&ours_path.to_string_lossy()).unwrap();
    ours.run_pending_migrations(outbox_diesel::sqlite::MIGRATIONS).unwrap();
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&theirs_path).create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    outbox_sqlx::SqliteOutbox::new(outbox_sqlx::Tables::new("outbox").unwrap()).migrate(&pool).await.unwrap();
    pool.close().await;
    let mut theirs = SqliteConnection::establish(&theirs_path.to_string_lossy()).unwrap();
    for ((what, a), (_, b)) in sqlite_catalog(&mut ours).into_iter().zip(sqlite_catalog(&mut theirs)) {
        same(what, a, b);
    }
}
