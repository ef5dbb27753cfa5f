//! outbox-core's store conformance suite on each database.

use outbox_core::testkit::store_suite;

use crate::common::{Db, fresh};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_passes_the_conformance_suite() {
    store_suite(|| async { Ok(fresh(Db::Postgres, "sea_suite").await) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_store_passes_the_conformance_suite() {
    store_suite(|| async { Ok(fresh(Db::MySql, "sea_suite").await) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_passes_the_conformance_suite() {
    store_suite(|| async { Ok(fresh(Db::Sqlite, "sea_suite").await) }).await;
}
