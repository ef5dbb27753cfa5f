//! Which tables the outbox lives in: validated names, quoted for each database.

use std::fmt;

/// The longest table name accepted, in bytes: derived names (`<table>_aggregates`,
/// `<table>_unpublished`, ...) must fit PostgreSQL's 63-byte identifier limit.
pub const MAX_TABLE_LEN: usize = 48;

/// The longest schema name accepted, in bytes (PostgreSQL's identifier limit).
pub const MAX_SCHEMA_LEN: usize = 63;

/// A table or schema name that failed validation; nothing was sent to the database.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid outbox {what} name `{name}`: {reason}")]
pub struct ConfigError {
    what: &'static str,
    name: String,
    reason: &'static str,
}

impl From<ConfigError> for outbox_core::Error {
    fn from(e: ConfigError) -> Self {
        outbox_core::Error::new(outbox_core::ErrorKind::Config, e.to_string())
    }
}

fn validate(what: &'static str, name: &str, max: usize) -> Result<(), ConfigError> {
    let fail = |reason| Err(ConfigError { what, name: name.to_string(), reason });
    let mut chars = name.chars();
    match chars.next() {
        None => return fail("it is empty; use letters, digits and `_`, e.g. `outbox`"),
        Some(c) if !(c.is_ascii_alphabetic() || c == '_') => {
            return fail("it must start with an ASCII letter or `_`, e.g. `outbox`");
        }
        Some(_) => {}
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return fail("only ASCII letters, digits and `_` are allowed (no quotes, dots, spaces or dashes)");
    }
    if name.len() > max {
        return fail(if max == MAX_TABLE_LEN {
            "it is longer than 48 bytes (derived index and table names must fit 63 bytes)"
        } else {
            "it is longer than 63 bytes"
        });
    }
    Ok(())
}

/// Where the outbox lives: the entries table `<name>` and the aggregates table
/// `<name>_aggregates`, optionally in a PostgreSQL schema. The default is `outbox` and
/// `outbox_aggregates`, the names outbox-sqlx and outbox-seaorm use too.
///
/// Names are checked when the value is built (ASCII letters, digits and `_`, starting with a
/// letter or `_`) and always quoted in SQL, so they are never spliced in unchecked.
///
/// ```
/// use outbox_diesel::Tables;
/// let tables = Tables::new("billing_outbox")?.with_schema("app")?;
/// assert_eq!(tables.aggregates_name(), "billing_outbox_aggregates");
/// assert!(Tables::new("outbox; drop table users").is_err());
/// # Ok::<(), outbox_diesel::ConfigError>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Tables {
    name: String,
    schema: Option<String>,
}

impl fmt::Debug for Tables {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tables").field("name", &self.name).field("schema", &self.schema).finish()
    }
}

impl Default for Tables {
    /// The table `outbox` (and `outbox_aggregates`) in the default schema.
    fn default() -> Self {
        Tables { name: DEFAULT_NAME.to_string(), schema: None }
    }
}

/// The default entries table's name.
pub(crate) const DEFAULT_NAME: &str = "outbox";

impl Tables {
    /// The entries table `name` and the aggregates table `<name>_aggregates`.
    pub fn new(name: impl Into<String>) -> Result<Self, ConfigError> {
        let name = name.into();
        validate("table", &name, MAX_TABLE_LEN)?;
        Ok(Tables { name, schema: None })
    }

    /// Puts both tables in `schema` (PostgreSQL only; MySQL and SQLite ignore it and use the
    /// connection's database).
    pub fn with_schema(mut self, schema: impl Into<String>) -> Result<Self, ConfigError> {
        let schema = schema.into();
        validate("schema", &schema, MAX_SCHEMA_LEN)?;
        self.schema = Some(schema);
        Ok(self)
    }

    /// The entries table's name (unquoted).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The PostgreSQL schema, if one was set.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// The aggregates table's name (unquoted).
    pub fn aggregates_name(&self) -> String {
        format!("{}_aggregates", self.name)
    }

    /// Substitutes the placeholders of a SQL template, quoting with `quote` (`"` for PostgreSQL
    /// and SQLite, `` ` `` for MySQL): `{entries}`, `{aggregates}` and `{notify_fn}` become
    /// qualified, quoted names, `{name}` the bare validated table name (inside quoted index,
    /// trigger and channel names).
    #[allow(dead_code)] // used by each backend's feature
    pub(crate) fn render(&self, sql: &str, quote: char, use_schema: bool) -> String {
        let q = |s: &str| format!("{quote}{s}{quote}");
        let schema = self.schema.as_deref().filter(|_| use_schema);
        let qualify = |table: &str| match schema {
            Some(s) => format!("{}.{}", q(s), q(table)),
            None => q(table),
        };
        sql.replace("{entries}", &qualify(&self.name))
            .replace("{aggregates}", &qualify(&self.aggregates_name()))
            .replace("{notify_fn}", &qualify(&format!("{}_notify", self.name)))
            .replace("{name}", &self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_names_pass_and_render_quoted() {
        let t = Tables::new("Outbox_1").unwrap().with_schema("app").unwrap();
        assert_eq!(
            t.render("{entries} {aggregates} {notify_fn} {name}_x", '"', true),
            r#""app"."Outbox_1" "app"."Outbox_1_aggregates" "app"."Outbox_1_notify" Outbox_1_x"#
        );
        assert_eq!(t.render("{entries}", '`', false), "`Outbox_1`");
        assert!(Tables::new("_x").is_ok());
        assert!(Tables::new("a".repeat(48)).is_ok());
        assert_eq!(Tables::default().name(), "outbox");
    }

    #[test]
    fn bad_names_are_rejected_before_any_sql() {
        for bad in ["", "1abc", "a-b", "a b", "a.b", "a\"b", "a`b", "o; drop table x", "é", &"a".repeat(49)] {
            let err = Tables::new(bad).unwrap_err();
            assert!(err.to_string().contains("invalid outbox table name"), "{bad}: {err}");
        }
        assert!(Tables::new("ok").unwrap().with_schema("bad schema").is_err());
        let core: outbox_core::Error = Tables::new("x y").unwrap_err().into();
        assert_eq!(core.kind(), outbox_core::ErrorKind::Config);
    }
}
