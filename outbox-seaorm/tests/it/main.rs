//! Integration tests against real PostgreSQL, MariaDB/MySQL and SQLite.
//!
//! Settings: `OUTBOX_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`),
//! `OUTBOX_TEST_MYSQL_URL` (default `mysql://root@127.0.0.1:3306/test`). A server that cannot be
//! reached fails the test with how to start it (`cargo xtask services up`).

// Test helpers fail loudly: panicking on a broken setup is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod catalog;
mod common;
mod conformance;
mod entity;
mod interop;
mod writer;
