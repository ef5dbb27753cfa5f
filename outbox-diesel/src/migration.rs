//! The schema: the same SQL as outbox-sqlx's `0001_outbox` migration, shipped two ways.
//!
//! - **diesel migrations** with the default table names, in the crate's `migrations/<database>/`
//!   folders (`0001_outbox/up.sql`, `down.sql`): copy them into your own migrations folder, point
//!   `diesel migration run --migration-dir` at them, or, with the `migrations` feature, run the
//!   embedded `MIGRATIONS` of each database module with diesel_migrations' `MigrationHarness`.
//! - **rendered for other names**: each database module's `migration_sql(&Tables)` and `migrate`
//!   substitute validated, quoted names into the template.
//!
//! Both are idempotent (`IF NOT EXISTS`), and the schema is identical to outbox-sqlx's and
//! outbox-seaorm's, so the three adapters can work on one outbox.

/// The name of the one migration so far (the same as outbox-sqlx's).
pub use crate::error::MIGRATION_NAME;

/// The raw templates, with placeholders.
#[allow(dead_code)] // each constant is used only with its feature
pub(crate) mod raw {
    pub(crate) const POSTGRES: &str = include_str!("sql/postgres.sql");
    pub(crate) const MYSQL: &str = include_str!("sql/mysql.sql");
    pub(crate) const SQLITE: &str = include_str!("sql/sqlite.sql");
}

#[cfg(test)]
mod tests {
    use crate::Tables;

    fn check(raw: &str, quote: char, dir: &str) {
        // The placeholder documentation at the top of the template does not apply once rendered.
        let body = raw.split_once("\n\n").map_or(raw, |(_, rest)| rest);
        let rendered = format!(
            "-- outbox migration {} for diesel, with the default table names (`outbox`, `outbox_aggregates`).\n\
             -- Generated from outbox-diesel's src/sql/{dir}.sql (the schema outbox-sqlx and outbox-seaorm create).\n\n{}",
            super::MIGRATION_NAME,
            Tables::default().render(body, quote, true)
        );
        let path = format!("{}/migrations/{dir}/0001_outbox/up.sql", env!("CARGO_MANIFEST_DIR"));
        let file = std::fs::read_to_string(&path).unwrap_or_default();
        if std::env::var_os("OUTBOX_WRITE_MIGRATIONS").is_some() {
            std::fs::create_dir_all(std::path::Path::new(&path).parent().unwrap()).unwrap();
            std::fs::write(&path, &rendered).unwrap();
            return;
        }
        assert_eq!(
            file, rendered,
            "{path} differs from src/sql/{dir}.sql rendered with the default names; \
             regenerate with OUTBOX_WRITE_MIGRATIONS=1 cargo test -p outbox-diesel --lib migration"
        );
    }

    #[test]
    fn diesel_migrations_are_the_template_with_default_names() {
        check(super::raw::POSTGRES, '"', "postgres");
        check(super::raw::MYSQL, '`', "mysql");
        check(super::raw::SQLITE, '"', "sqlite");
    }
}
