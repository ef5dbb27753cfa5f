//! Helpers shared by the database tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use outbox_core::{CollectingPublisher, Entry, EntryId, NewEntry, Outcome, Publisher};

/// A table name no other test (or earlier run) uses.
pub fn unique_table(prefix: &str) -> String {
    format!("{prefix}_{:x}", EntryId::generate().as_u128() & 0xffff_ffff_ffff_ffff)
}

/// The URL from `var`, or `default`.
pub fn url(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_string())
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!(
                "{}{}{}",
                &url[..s + 3],
                if creds.contains(':') { format!("{user}:***") } else { user.to_string() },
                &url[at..]
            )
        }
        _ => url.to_string(),
    }
}

/// Entry `n` of aggregate `agg`, payload `"<agg>/<n>"`.
pub fn entry(agg: &str, n: usize) -> NewEntry {
    NewEntry::builder("test", agg, "test.happened").payload(format!("{agg}/{n}"), "text/plain").build().unwrap()
}

/// Checks each expected id was published exactly once and every aggregate in order.
pub fn assert_once_in_order(published: &[Entry], expected: &HashSet<EntryId>) {
    let mut seen = HashSet::new();
    let mut last: HashMap<String, usize> = HashMap::new();
    for e in published {
        assert!(seen.insert(e.id), "entry {} was published twice", e.id);
        assert!(expected.contains(&e.id), "entry {} was published but never committed", e.id);
        let text = String::from_utf8_lossy(e.payload.as_bytes()).into_owned();
        let n: usize = text.rsplit('/').next().unwrap().parse().unwrap();
        if let Some(prev) = last.insert(e.aggregate_id.clone(), n) {
            assert!(prev < n, "aggregate {} out of order: {n} after {prev}", e.aggregate_id);
        }
    }
    assert_eq!(seen.len(), expected.len(), "published {} of {} entries", seen.len(), expected.len());
}

/// A collecting publisher that yields, so concurrent relays interleave, and counts.
#[derive(Clone, Default)]
pub struct Shared {
    pub inner: CollectingPublisher,
    pub batches: Arc<AtomicUsize>,
}

impl Publisher for Shared {
    async fn publish(&self, batch: &[Entry]) -> outbox_core::Result<Vec<Outcome>> {
        self.batches.fetch_add(1, Ordering::Relaxed);
        tokio::task::yield_now().await;
        self.inner.publish(batch).await
    }
}
