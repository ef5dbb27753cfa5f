//! The database-independent half of claiming and completing: which entries of the locked
//! aggregates a claim takes, which aggregates it leases or parks, and what a completion changes.
//! Each database module runs the SQL; the rules live here once.

#![cfg_attr(not(any(feature = "postgres", feature = "mysql", feature = "sqlite")), allow(dead_code))]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use outbox_core::{
    ClaimRequest, Completion, Dead, DeadPolicy, Entry, EntryId, Error, Event, Lease, Retry, Status, Timestamp,
};

/// "Never": the `available_at` of an aggregate with nothing claimable until something happens to
/// it (a write, a requeue). 9999-12-31T00:00:00Z, inside every database's timestamp range.
pub(crate) const NEVER: Timestamp = Timestamp::from_micros(253_402_214_400_000_000);

/// How many aggregates a claim locks. See [`crate::ClaimOptions`].
pub(crate) fn aggregates_for(options_limit: Option<usize>, request: &ClaimRequest<'_>) -> usize {
    let per = request.max_per_aggregate.max(1);
    let default = request.max_entries.div_ceil(per).saturating_mul(2).min(request.max_entries);
    options_limit.unwrap_or(default).max(1)
}

/// What recent claims took per aggregate they took entries from (× 100; 0 until the first), so
/// the next claim leases about as many aggregates as a batch needs instead of a fixed guess.
/// Shared by clones of a store.
#[derive(Debug, Default)]
pub(crate) struct Density(AtomicUsize);

#[cfg_attr(not(feature = "postgres"), allow(dead_code))] // PostgreSQL adapts; the others use the fixed rule
impl Density {
    /// How many aggregates the next claim leases: `options_limit` if set; else 25% more than the
    /// observed density says a full batch needs, between `⌈max_entries / max_per_aggregate⌉` and
    /// `max_entries`; [`aggregates_for`]'s rule until a claim has been observed.
    pub(crate) fn aggregates_for(&self, options_limit: Option<usize>, request: &ClaimRequest<'_>) -> usize {
        let observed = self.0.load(Ordering::Relaxed);
        if options_limit.is_some() || observed == 0 {
            return aggregates_for(options_limit, request);
        }
        let per = request.max_per_aggregate.max(1);
        let fewest = request.max_entries.div_ceil(per).max(1);
        request.max_entries.saturating_mul(125).div_ceil(observed).clamp(fewest, request.max_entries.max(fewest))
    }

    /// Notes that a claim took `entries` entries from `aggregates` aggregates (smoothed).
    pub(crate) fn observe(&self, entries: usize, aggregates: usize) {
        if entries == 0 || aggregates == 0 {
            return;
        }
        let now = entries.saturating_mul(100) / aggregates;
        let before = self.0.load(Ordering::Relaxed);
        let next = if before == 0 { now } else { (before + now) / 2 };
        self.0.store(next.max(1), Ordering::Relaxed);
    }
}

/// The key of an aggregate.
pub(crate) type Key = (String, String);

#[cfg_attr(not(any(feature = "mysql", feature = "sqlite")), allow(dead_code))] // PostgreSQL plans in SQL
/// What a claim does once it holds the locks of some aggregates.
#[derive(Debug, Default)]
pub(crate) struct ClaimPlan {
    /// The entries handed to the relay, already marked processing under the lease.
    pub(crate) claimed: Vec<Entry>,
    /// Aggregates whose entries were taken: leased to the holder.
    pub(crate) leased: Vec<Key>,
    /// Aggregates whose first entry is not claimable: not worth visiting before the time given.
    pub(crate) parked: Vec<(Key, Timestamp)>,
}

#[cfg_attr(not(any(feature = "mysql", feature = "sqlite")), allow(dead_code))] // PostgreSQL plans in SQL
/// When an unclaimable entry may become claimable, or `None` if it is claimable at `now`.
fn blocked_until(entry: &Entry, now: Timestamp) -> Option<Timestamp> {
    match entry.status {
        Status::Pending | Status::Failed if entry.available_at <= now => None,
        Status::Pending | Status::Failed => Some(entry.available_at),
        Status::Processing => match &entry.lease {
            Some(lease) if lease.expires_at > now => Some(lease.expires_at),
            _ => None,
        },
        // Published rows are never read by a claim; dead ones are read only under Block.
        Status::Dead | Status::Published => Some(NEVER),
    }
}

#[cfg_attr(not(any(feature = "mysql", feature = "sqlite")), allow(dead_code))] // PostgreSQL plans in SQL
/// Plans a claim over `locked` aggregates (in the order they were locked) given `rows`: for each
/// of them its first unpublished entries in sequence order (at most `max_per_aggregate`, dead
/// ones left out under [`DeadPolicy::Skip`]). `truncated` says the read stopped early (a row
/// limit): an aggregate with no rows may then have entries, and is left alone rather than parked.
pub(crate) fn plan_claim(
    request: &ClaimRequest<'_>,
    locked: &[Key],
    rows: Vec<Entry>,
    truncated: bool,
) -> Result<ClaimPlan, Error> {
    let mut by_key: HashMap<Key, Vec<Entry>> = HashMap::with_capacity(locked.len());
    for row in rows {
        by_key.entry((row.aggregate_type.clone(), row.aggregate_id.clone())).or_default().push(row);
    }
    let mut plan = ClaimPlan::default();
    for key in locked {
        let mut entries = by_key.remove(key).unwrap_or_default();
        if entries.is_empty() && truncated {
            continue;
        }
        entries.sort_by_key(|e| e.sequence);
        let room = request.max_entries.saturating_sub(plan.claimed.len());
        if room == 0 {
            break;
        }
        let mut taken = 0;
        let mut blocked = None;
        for mut entry in entries.into_iter().take(request.max_per_aggregate) {
            if entry.status == Status::Dead && request.on_dead == DeadPolicy::Skip {
                continue;
            }
            if let Some(until) = blocked_until(&entry, request.now) {
                blocked = Some(until);
                break;
            }
            if taken == room {
                break;
            }
            let from = if entry.status == Status::Processing {
                entry.status.apply(Event::LeaseExpired)?
            } else {
                entry.status
            };
            entry.status = from.apply(Event::Claim)?;
            entry.lease = Some(Lease { holder: request.holder.to_string(), expires_at: request.lease_until });
            plan.claimed.push(entry);
            taken += 1;
        }
        if taken > 0 {
            plan.leased.push(key.clone());
        } else {
            // Nothing claimable: its first entry is not due, still leased, or dead (or it has
            // no unpublished entry at all): skip it until then instead of visiting it each time.
            plan.parked.push((key.clone(), blocked.unwrap_or(NEVER)));
        }
    }
    Ok(plan)
}

#[cfg_attr(not(any(feature = "mysql", feature = "sqlite")), allow(dead_code))] // PostgreSQL does it in SQL
/// One aggregate's change on completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AggregateChange {
    /// Which aggregate.
    pub(crate) key: Key,
    /// How many of its entries were published (its unpublished count drops by this).
    pub(crate) published: i64,
    /// When it is worth visiting again if the holder still leases it: the earliest retry, else now.
    pub(crate) available_at: Timestamp,
}

#[cfg_attr(not(any(feature = "mysql", feature = "sqlite")), allow(dead_code))] // PostgreSQL does it in SQL
/// A completion restricted to the entries the holder still holds.
#[derive(Debug, Default)]
pub(crate) struct CompletionPlan<'a> {
    pub(crate) published: Vec<EntryId>,
    pub(crate) retry: Vec<&'a Retry>,
    pub(crate) dead: Vec<&'a Dead>,
    pub(crate) released: Vec<EntryId>,
    pub(crate) aggregates: Vec<AggregateChange>,
}

#[cfg_attr(not(any(feature = "mysql", feature = "sqlite")), allow(dead_code))] // PostgreSQL does it in SQL
/// Plans a completion given `held`: the entries of the completion still held by its holder,
/// with their aggregate (read after locking those aggregates).
pub(crate) fn plan_completion<'a>(completion: &'a Completion, held: &HashMap<EntryId, Key>) -> CompletionPlan<'a> {
    let mut plan = CompletionPlan::default();
    let mut changes: HashMap<&Key, (i64, Option<Timestamp>)> = HashMap::new();
    for id in &completion.published {
        if let Some(key) = held.get(id) {
            plan.published.push(*id);
            changes.entry(key).or_default().0 += 1;
        }
    }
    for r in &completion.retry {
        if let Some(key) = held.get(&r.id) {
            plan.retry.push(r);
            let slot = &mut changes.entry(key).or_default().1;
            *slot = Some(slot.map_or(r.at, |t: Timestamp| t.min(r.at)));
        }
    }
    for d in &completion.dead {
        if let Some(key) = held.get(&d.id) {
            plan.dead.push(d);
            changes.entry(key).or_default();
        }
    }
    for id in &completion.released {
        if let Some(key) = held.get(id) {
            plan.released.push(*id);
            changes.entry(key).or_default();
        }
    }
    let mut aggregates: Vec<AggregateChange> = changes
        .into_iter()
        .map(|(key, (published, retry_at))| AggregateChange {
            key: key.clone(),
            published,
            available_at: retry_at.unwrap_or(completion.now),
        })
        .collect();
    aggregates.sort_by(|a, b| a.key.cmp(&b.key));
    plan.aggregates = aggregates;
    plan
}

/// Headers as stored: a JSON array of `[name, value]` pairs, in order.
pub(crate) fn headers_to_json(headers: &outbox_core::Headers) -> String {
    let pairs: Vec<[&str; 2]> = headers.iter().map(|(k, v)| [k, v]).collect();
    serde_json::to_string(&pairs).unwrap_or_else(|_| "[]".to_string())
}

/// Reads the stored headers back.
pub(crate) fn headers_from_json(table: &str, json: &str) -> Result<outbox_core::Headers, Error> {
    let pairs: Vec<(String, String)> = serde_json::from_str(json).map_err(|e| {
        crate::error::bad_row(table, format!("headers are not a JSON array of [name, value] pairs: {e}"))
    })?;
    Ok(pairs.into_iter().collect())
}

/// Parses a stored status.
pub(crate) fn status(table: &str, s: &str) -> Result<Status, Error> {
    s.parse::<Status>().map_err(|_| crate::error::bad_row(table, format!("unknown status `{s}`")))
}

/// Groups entries by aggregate in first-seen order, sorted by key (the lock order every writer
/// uses, so concurrent batch writers cannot deadlock on each other).
pub(crate) fn group_by_aggregate(entries: &[outbox_core::NewEntry]) -> Vec<(Key, Vec<usize>)> {
    let mut groups: HashMap<Key, Vec<usize>> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        groups.entry((e.aggregate_type().to_string(), e.aggregate_id().to_string())).or_default().push(i);
    }
    let mut groups: Vec<(Key, Vec<usize>)> = groups.into_iter().collect();
    groups.sort_by(|a, b| a.0.cmp(&b.0));
    groups
}

/// When an entry written at `now` becomes due.
pub(crate) fn available_at(entry: &outbox_core::NewEntry, now: Timestamp) -> Timestamp {
    entry.not_before().unwrap_or(now).max(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use outbox_core::{NewEntry, Timestamp};

    fn stored(agg: &str, seq: i64, status: Status, available: i64) -> Entry {
        let new = NewEntry::builder("t", agg, "e").build().unwrap();
        let mut e = Entry::from_new(new, seq, Timestamp::from_micros(0));
        e.status = status;
        e.available_at = Timestamp::from_micros(available);
        e
    }

    fn request(on_dead: DeadPolicy) -> ClaimRequest<'static> {
        ClaimRequest {
            holder: "h",
            now: Timestamp::from_micros(100),
            lease_until: Timestamp::from_micros(200),
            max_entries: 10,
            max_per_aggregate: 3,
            on_dead,
        }
    }

    #[test]
    fn takes_a_due_prefix_and_parks_blocked_aggregates() {
        let key = |a: &str| ("t".to_string(), a.to_string());
        let rows = vec![
            stored("a", 2, Status::Pending, 50),
            stored("a", 1, Status::Failed, 90),
            stored("a", 3, Status::Pending, 150), // not due: stops a
            stored("b", 1, Status::Pending, 120), // not due at all: b parks until 120
            stored("c", 1, Status::Dead, 0),
            stored("c", 2, Status::Pending, 0),
        ];
        let locked = vec![key("a"), key("b"), key("c"), key("d")];
        let plan = plan_claim(&request(DeadPolicy::Block), &locked, rows.clone(), false).unwrap();
        let got: Vec<(String, i64)> = plan.claimed.iter().map(|e| (e.aggregate_id.clone(), e.sequence)).collect();
        assert_eq!(got, [("a".to_string(), 1), ("a".to_string(), 2)]);
        assert!(plan.claimed.iter().all(|e| e.status == Status::Processing));
        assert_eq!(plan.leased, [key("a")]);
        assert_eq!(plan.parked, [(key("b"), Timestamp::from_micros(120)), (key("c"), NEVER), (key("d"), NEVER)]);
        let skip = plan_claim(&request(DeadPolicy::Skip), &locked, rows, false).unwrap();
        assert!(skip.claimed.iter().any(|e| e.aggregate_id == "c" && e.sequence == 2));
    }

    #[test]
    fn respects_max_entries_without_parking_the_rest() {
        let rows: Vec<Entry> = (1..=3).map(|s| stored("a", s, Status::Pending, 0)).collect();
        let mut req = request(DeadPolicy::Block);
        req.max_entries = 2;
        let locked = vec![("t".to_string(), "a".to_string()), ("t".to_string(), "b".to_string())];
        let plan = plan_claim(&req, &locked, rows, false).unwrap();
        assert_eq!(plan.claimed.len(), 2);
        assert!(plan.parked.is_empty());
    }

    #[test]
    fn a_truncated_read_leaves_aggregates_without_rows_alone() {
        let locked = vec![("t".to_string(), "a".to_string()), ("t".to_string(), "b".to_string())];
        let rows = vec![stored("a", 1, Status::Pending, 0)];
        let plan = plan_claim(&request(DeadPolicy::Block), &locked, rows.clone(), true).unwrap();
        assert_eq!(plan.claimed.len(), 1);
        assert!(plan.parked.is_empty(), "b may have entries beyond the row limit: {:?}", plan.parked);
        let plan = plan_claim(&request(DeadPolicy::Block), &locked, rows, false).unwrap();
        assert_eq!(plan.parked, [(locked[1].clone(), NEVER)]);
    }

    #[test]
    fn density_sizes_claims_to_what_batches_need() {
        let mut req = request(DeadPolicy::Block);
        req.max_entries = 1000;
        req.max_per_aggregate = 20;
        let d = Density::default();
        assert_eq!(d.aggregates_for(None, &req), 100, "before any claim: the fixed rule (2 × 50)");
        d.observe(1000, 50); // 20 per aggregate
        assert_eq!(d.aggregates_for(None, &req), 63, "1.25 × the 50 a full batch needs");
        assert_eq!(d.aggregates_for(Some(7), &req), 7, "an explicit limit wins");
        let sparse = Density::default();
        sparse.observe(300, 300); // one entry each
        assert_eq!(sparse.aggregates_for(None, &req), 1000, "at most max_entries");
        let dense = Density::default();
        dense.observe(5000, 10); // more per aggregate than max_per_aggregate allows: never below the floor
        assert_eq!(dense.aggregates_for(None, &req), 50);
        d.observe(0, 0);
        assert_eq!(d.aggregates_for(None, &req), 63, "an empty claim says nothing");
    }

    #[test]
    fn headers_round_trip_in_order() {
        let mut h = outbox_core::Headers::new();
        h.push("b", "2");
        h.push("a", "1 ✓\"");
        let json = headers_to_json(&h);
        assert_eq!(json, r#"[["b","2"],["a","1 ✓\""]]"#);
        assert_eq!(headers_from_json("t", &json).unwrap(), h);
        assert!(headers_from_json("t", "{}").is_err());
    }
}
