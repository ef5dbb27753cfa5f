//! A small SQL builder: text plus bind values, with the right placeholder for each database.

use sea_orm::sea_query::Value;
use sea_orm::{DbBackend, Statement};

/// SQL text and its values; [`Query::bind`] returns the placeholder to splice in.
pub(crate) struct Query {
    backend: DbBackend,
    pub(crate) sql: String,
    values: Vec<Value>,
}

impl Query {
    pub(crate) fn new(backend: DbBackend, sql: impl Into<String>) -> Self {
        Query { backend, sql: sql.into(), values: Vec::new() }
    }

    /// Adds a value; returns its placeholder (`$n` on PostgreSQL, `?` elsewhere). Values must be
    /// bound in the order their placeholders appear in the text.
    pub(crate) fn bind(&mut self, v: impl Into<Value>) -> String {
        self.values.push(v.into());
        match self.backend {
            DbBackend::Postgres => format!("${}", self.values.len()),
            DbBackend::MySql | DbBackend::Sqlite => "?".to_string(),
        }
    }

    /// Appends text.
    pub(crate) fn push(&mut self, s: &str) -> &mut Self {
        self.sql.push_str(s);
        self
    }

    /// Appends a bound value's placeholder.
    pub(crate) fn push_bind(&mut self, v: impl Into<Value>) -> &mut Self {
        let p = self.bind(v);
        self.sql.push_str(&p);
        self
    }

    /// Appends `(p1, p2, ...)` for `values`.
    pub(crate) fn push_list(&mut self, values: impl IntoIterator<Item = Value>) -> &mut Self {
        self.sql.push('(');
        for (i, v) in values.into_iter().enumerate() {
            if i > 0 {
                self.sql.push_str(", ");
            }
            self.push_bind(v);
        }
        self.sql.push(')');
        self
    }

    /// Appends `(aggregate_type = ? AND aggregate_id = ?) OR ...` for `keys`, columns prefixed.
    pub(crate) fn push_keys<'a>(
        &mut self,
        prefix: &str,
        keys: impl IntoIterator<Item = &'a (String, String)>,
    ) -> &mut Self {
        self.sql.push('(');
        let mut any = false;
        for (i, (t, id)) in keys.into_iter().enumerate() {
            if i > 0 {
                self.sql.push_str(" OR ");
            }
            any = true;
            self.sql.push_str(&format!("({prefix}aggregate_type = "));
            self.push_bind(t.as_str());
            self.sql.push_str(&format!(" AND {prefix}aggregate_id = "));
            self.push_bind(id.as_str());
            self.sql.push(')');
        }
        if !any {
            self.sql.push_str("1 = 0");
        }
        self.sql.push(')');
        self
    }

    pub(crate) fn statement(self) -> Statement {
        Statement::from_sql_and_values(self.backend, self.sql, self.values)
    }
}
