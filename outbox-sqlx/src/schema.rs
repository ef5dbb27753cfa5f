//! The schema, shipped as plain SQL files with the crate (`migrations/<database>/0001_outbox.sql`).
//!
//! Each database module renders them with its validated table names
//! ([`PgOutbox::migrations`](crate::postgres::PgOutbox::migrations) and its MySQL and SQLite
//! twins) and runs them (`migrate`). Teams with their own migration tool take the rendered SQL
//! instead, e.g. write each [`Migration`] to `migrations/<file_name>` for `sqlx::migrate!`,
//! refinery or Flyway. The files are idempotent (`IF NOT EXISTS`), and the diesel and SeaORM
//! adapters create the same tables, so every adapter can work on one outbox.

/// The name of the one migration so far; error messages name it.
pub const MIGRATION_NAME: &str = "0001_outbox";

/// One migration, rendered for a table name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Migration {
    /// Its version, increasing (1 for `0001_outbox`).
    pub version: i64,
    /// Its name, e.g. `0001_outbox`.
    pub name: &'static str,
    /// The SQL, with the table names substituted; several statements.
    pub sql: String,
}

impl Migration {
    /// A file name in the `<version>_<description>.sql` form that `sqlx::migrate!` and most
    /// migration tools read, e.g. `0001_outbox.sql`.
    pub fn file_name(&self) -> String {
        format!("{}.sql", self.name)
    }
}

/// The raw files, with placeholders.
#[allow(dead_code)] // each constant is used only with its feature
pub(crate) mod raw {
    pub(crate) const POSTGRES: &str = include_str!("../migrations/postgres/0001_outbox.sql");
    pub(crate) const MYSQL: &str = include_str!("../migrations/mysql/0001_outbox.sql");
    pub(crate) const SQLITE: &str = include_str!("../migrations/sqlite/0001_outbox.sql");
}

/// Renders the migration `raw` for `tables`.
#[allow(dead_code)]
pub(crate) fn render(tables: &crate::Tables, raw: &str, quote: char, use_schema: bool) -> Vec<Migration> {
    vec![Migration { version: 1, name: MIGRATION_NAME, sql: tables.render(raw, quote, use_schema) }]
}

/// Splits a rendered file into statements (for drivers that run one at a time): on `;` at the
/// end of a line, outside comments. The MySQL and SQLite files have no other semicolons.
#[allow(dead_code)]
pub(crate) fn statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in sql.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("--") || trimmed.is_empty() {
            continue;
        }
        current.push_str(line);
        current.push('\n');
        if trimmed.ends_with(';') {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.trim().is_empty() {
        out.push(current);
    }
    out
}
