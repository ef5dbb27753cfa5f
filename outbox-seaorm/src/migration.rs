//! The `sea-orm-migration` migration creating the outbox tables.
//!
//! The SQL is the same as outbox-sqlx's migration `0001_outbox` for each database (same tables,
//! columns, types, indexes, constraints, and on PostgreSQL the NOTIFY trigger), so outbox-sqlx,
//! outbox-diesel and outbox-seaorm work on one outbox; a test compares the catalogs.

use sea_orm::{ConnectionTrait, DbBackend, DbErr};
use sea_orm_migration::{MigrationName, MigrationTrait, SchemaManager, async_trait};

use crate::config::Tables;

/// The migration's name for the default tables (other tables append `_<name>`, and a schema
/// `_<schema>`, so two outboxes can be migrated by one `Migrator`).
pub const MIGRATION_NAME: &str = "m20261122_000001_outbox";

const POSTGRES: &str = include_str!("../migrations/postgres/0001_outbox.sql");
const MYSQL: &str = include_str!("../migrations/mysql/0001_outbox.sql");
const SQLITE: &str = include_str!("../migrations/sqlite/0001_outbox.sql");

/// Creates the outbox tables. Add it to your `Migrator`:
///
/// ```
/// use sea_orm_migration::{MigrationTrait, MigratorTrait};
///
/// struct Migrator;
///
/// impl MigratorTrait for Migrator {
///     fn migrations() -> Vec<Box<dyn MigrationTrait>> {
///         vec![
///             // ... your migrations ...
///             Box::new(outbox_seaorm::Migration::default()),
///         ]
///     }
/// }
/// ```
/// Idempotent (`CREATE ... IF NOT EXISTS`), so it also adopts tables that outbox-sqlx created.
#[derive(Clone, Debug)]
pub struct Migration {
    tables: Tables,
    name: String,
}

impl Default for Migration {
    fn default() -> Self {
        Migration::new(Tables::default())
    }
}

impl Migration {
    /// The migration for the outbox in `tables`.
    pub fn new(tables: Tables) -> Self {
        let name = if tables == Tables::default() {
            MIGRATION_NAME.to_string()
        } else {
            match tables.schema() {
                Some(schema) => format!("{MIGRATION_NAME}_{}_{schema}", tables.name()),
                None => format!("{MIGRATION_NAME}_{}", tables.name()),
            }
        };
        Migration { tables, name }
    }

    /// The statements it runs on `backend`, names substituted and quoted.
    pub fn statements(&self, backend: DbBackend) -> Vec<String> {
        let sql = match backend {
            DbBackend::Postgres => POSTGRES,
            DbBackend::MySql => MYSQL,
            DbBackend::Sqlite => SQLITE,
        };
        let notify_fn = match (backend, self.tables.schema()) {
            (DbBackend::Postgres, Some(schema)) => format!("\"{schema}\".\"{}_notify\"", self.tables.name()),
            _ => format!("\"{}_notify\"", self.tables.name()),
        };
        split(&self.tables.render(&sql.replace("{notify_fn}", &notify_fn), backend))
    }

    /// Runs the statements with `conn` (what [`MigrationTrait::up`] does), for applications that
    /// do not use `sea-orm-migration`'s `Migrator`.
    pub async fn apply<C: ConnectionTrait>(&self, conn: &C) -> Result<(), DbErr> {
        for statement in self.statements(conn.get_database_backend()) {
            conn.execute_unprepared(&statement).await?;
        }
        Ok(())
    }

    /// Drops the outbox tables (and on PostgreSQL the trigger function), what
    /// [`MigrationTrait::down`] does.
    pub async fn revert<C: ConnectionTrait>(&self, conn: &C) -> Result<(), DbErr> {
        let backend = conn.get_database_backend();
        let mut statements = vec![
            self.tables.render("DROP TABLE IF EXISTS {entries}", backend),
            self.tables.render("DROP TABLE IF EXISTS {aggregates}", backend),
        ];
        if backend == DbBackend::Postgres {
            let name = match self.tables.schema() {
                Some(schema) => format!("\"{schema}\".\"{}_notify\"", self.tables.name()),
                None => format!("\"{}_notify\"", self.tables.name()),
            };
            statements.push(format!("DROP FUNCTION IF EXISTS {name}()"));
        }
        for statement in statements {
            conn.execute_unprepared(&statement).await?;
        }
        Ok(())
    }
}

/// Splits a migration file into statements: drops whole-line `--` comments, and splits at a `;`
/// ending a line unless inside a `$$` body.
fn split(sql: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut current = String::new();
    let mut in_body = false;
    for line in sql.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("--") || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if trimmed.matches("$$").count() % 2 == 1 {
            in_body = !in_body;
        }
        current.push_str(line);
        current.push('\n');
        if !in_body && trimmed.ends_with(';') {
            let statement = current.trim().trim_end_matches(';').trim().to_string();
            if !statement.is_empty() {
                statements.push(statement);
            }
            current.clear();
        }
    }
    let rest = current.trim().trim_end_matches(';').trim();
    if !rest.is_empty() {
        statements.push(rest.to_string());
    }
    statements
}

impl MigrationName for Migration {
    fn name(&self) -> &str {
        &self.name
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        self.apply(manager.get_connection()).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        self.revert(manager.get_connection()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_statements_and_keeps_function_bodies_whole() {
        let m = Migration::new(Tables::new("ob").unwrap().with_schema("app").unwrap());
        let pg = m.statements(DbBackend::Postgres);
        assert!(pg[0].starts_with("CREATE TABLE IF NOT EXISTS \"app\".\"ob\""), "{}", pg[0]);
        let function = pg.iter().find(|s| s.contains("FUNCTION")).unwrap();
        assert!(function.contains("pg_notify('ob', '')") && function.ends_with("$$"), "{function}");
        assert!(function.starts_with("CREATE OR REPLACE FUNCTION \"app\".\"ob_notify\"()"), "{function}");
        assert!(pg.iter().all(|s| !s.contains('{')), "a placeholder is left: {pg:?}");
        let my = m.statements(DbBackend::MySql);
        assert_eq!(my.len(), 2);
        assert!(my[0].contains("`ob_unpublished`") && my[0].starts_with("CREATE TABLE IF NOT EXISTS `ob`"));
        assert_eq!(m.statements(DbBackend::Sqlite).len(), 5);
        assert_eq!(Migration::default().name(), MIGRATION_NAME);
        assert_eq!(m.name(), "m20261122_000001_outbox_ob_app");
    }
}
