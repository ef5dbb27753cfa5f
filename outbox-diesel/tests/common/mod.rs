//! Settings and helpers shared by the tests: real servers, unique table names.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU32, Ordering};

use outbox_core::{EntryId, NewEntry};

/// `OUTBOX_TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/test`.
pub fn pg_url() -> String {
    std::env::var("OUTBOX_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// `OUTBOX_TEST_MYSQL_URL`, default `mysql://root@127.0.0.1:3306/test`.
pub fn mysql_url() -> String {
    std::env::var("OUTBOX_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

/// Fails the test with how to start the server.
pub fn unreachable(what: &str, url: &str, e: impl std::fmt::Display) -> ! {
    let shown = url.split('@').next_back().unwrap_or(url);
    panic!("{what} at {shown} is unreachable ({e}); start it with `cargo xtask services up`")
}

/// A table name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let id = EntryId::generate().as_u128() as u32;
    format!("{prefix}_{}_{id:08x}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// `n` entries of aggregate `agg` with payloads `"<agg>/<i>"`.
pub fn entries(agg: &str, n: usize) -> Vec<NewEntry> {
    (0..n)
        .map(|i| {
            NewEntry::builder("test", agg, "test.happened")
                .payload(format!("{agg}/{i}"), "text/plain")
                .header("x-n", i.to_string())
                .build()
                .expect("valid entry")
        })
        .collect()
}
