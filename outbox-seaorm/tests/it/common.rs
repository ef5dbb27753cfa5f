//! Connections, unique outboxes and the testkit harness.

use std::sync::Arc;
use std::time::Duration;

use outbox_core::testkit::Harness;
use outbox_core::{EntryId, Error, ErrorKind, NewEntry, Result};
use outbox_seaorm::{Migration, Outbox, SeaStore, Tables};
use sea_orm::{ConnectOptions, Database, DatabaseConnection, TransactionTrait};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Db {
    Postgres,
    MySql,
    Sqlite,
}

pub(crate) fn postgres_url() -> String {
    std::env::var("OUTBOX_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub(crate) fn mysql_url() -> String {
    std::env::var("OUTBOX_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

/// The URL without its password, for messages.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// A pool on `url`; panics with how to start the server if it cannot be reached.
pub(crate) async fn connect(url: &str) -> DatabaseConnection {
    let mut options = ConnectOptions::new(url.to_string());
    options.max_connections(8).acquire_timeout(Duration::from_secs(10)).sqlx_logging(false);
    match Database::connect(options).await {
        Ok(db) => db,
        Err(e) => panic!(
            "cannot reach the database at {}: {e}; start it with `cargo xtask services up` \
             (or set OUTBOX_TEST_POSTGRES_URL / OUTBOX_TEST_MYSQL_URL)",
            redact(url)
        ),
    }
}

/// A unique table name, so tests run in parallel and re-run on a persistent server.
pub(crate) fn unique(prefix: &str) -> String {
    format!("{prefix}_{:016x}", EntryId::generate().as_u128() as u64)
}

/// A fresh outbox on `db`: its own tables (PostgreSQL, MySQL) or its own file (SQLite).
pub(crate) struct Fresh {
    pub(crate) db: DatabaseConnection,
    pub(crate) url: String,
    pub(crate) tables: Tables,
    pub(crate) _dir: Option<Arc<tempfile::TempDir>>,
}

pub(crate) async fn fresh(db: Db, prefix: &str) -> Fresh {
    let tables = Tables::new(unique(prefix)).expect("valid name");
    let (url, dir) = match db {
        Db::Postgres => (postgres_url(), None),
        Db::MySql => (mysql_url(), None),
        Db::Sqlite => {
            let dir = tempfile::tempdir().expect("temp dir");
            let url = format!("sqlite://{}?mode=rwc", dir.path().join("outbox.db").display());
            (url, Some(Arc::new(dir)))
        }
    };
    let conn = connect(&url).await;
    Migration::new(tables.clone()).apply(&conn).await.expect("migration");
    Fresh { db: conn, url, tables, _dir: dir }
}

fn db_error(e: sea_orm::DbErr) -> Error {
    Error::new(ErrorKind::Unavailable, format!("test transaction failed: {e}"))
}

impl Fresh {
    pub(crate) fn store(&self) -> SeaStore {
        SeaStore::new(self.db.clone(), self.tables.clone())
    }

    pub(crate) fn outbox(&self) -> Outbox {
        Outbox::new(self.tables.clone())
    }

    /// Writes `entries` in one SeaORM transaction, committed or rolled back.
    pub(crate) async fn write(&self, entries: &[NewEntry], commit: bool) -> Result<()> {
        let tx = self.db.begin().await.map_err(db_error)?;
        match self.outbox().enqueue_all(&tx, entries).await {
            Ok(()) if commit => tx.commit().await.map_err(db_error),
            Ok(()) => tx.rollback().await.map_err(db_error),
            Err(e) => {
                let _ = tx.rollback().await;
                Err(e)
            }
        }
    }
}

impl Harness for Fresh {
    type Store = SeaStore;

    fn store(&self) -> SeaStore {
        Fresh::store(self)
    }

    async fn open_store(&self) -> Result<SeaStore> {
        Ok(SeaStore::new(connect(&self.url).await, self.tables.clone()))
    }

    async fn write(&self, entries: Vec<NewEntry>, commit: bool) -> Result<()> {
        Fresh::write(self, &entries, commit).await
    }
}
