//! The database-independent half of claiming and completing, with the same rules as
//! outbox-sqlx (so both adapters keep the shared aggregates table in the same state): which
//! entries of the locked aggregates a claim takes, which aggregates it leases or parks, and what
//! a completion changes.

#![allow(dead_code)] // parts are used only by some backends

use std::collections::HashMap;

use outbox_core::{
    ClaimRequest, Completion, Dead, DeadPolicy, Entry, EntryId, Error, Event, Headers, Lease, NewEntry, Retry, Status,
    Timestamp,
};

/// "Never": the `available_at` of an aggregate with nothing claimable until something happens
/// to it (a write, a requeue). 9999-12-31T00:00:00Z, inside every database's timestamp range.
pub(crate) const NEVER: Timestamp = Timestamp::from_micros(253_402_214_400_000_000);

/// How many aggregates a claim locks: twice what `max_entries` needs at `max_per_aggregate`
/// each, at most `max_entries`.
pub(crate) fn aggregates_for(request: &ClaimRequest<'_>) -> usize {
    let per = request.max_per_aggregate.max(1);
    request.max_entries.div_ceil(per).saturating_mul(2).min(request.max_entries).max(1)
}

/// The key of an aggregate: (type, id).
pub(crate) type Key = (String, String);

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

/// When an unclaimable entry may become claimable, or `None` if it is claimable at `now`.
fn blocked_until(entry: &Entry, now: Timestamp) -> Option<Timestamp> {
    match entry.status {
        Status::Pending | Status::Failed if entry.available_at <= now => None,
        Status::Pending | Status::Failed => Some(entry.available_at),
        Status::Processing => match &entry.lease {
            Some(lease) if lease.expires_at > now => Some(lease.expires_at),
            _ => None,
        },
        Status::Dead | Status::Published => Some(NEVER),
    }
}

/// Plans a claim over the `locked` aggregates (in lock order) given `rows`: for each, its first
/// unpublished entries in sequence order (at most `max_per_aggregate`; dead ones left out under
/// [`DeadPolicy::Skip`]).
pub(crate) fn plan_claim(request: &ClaimRequest<'_>, locked: &[Key], rows: Vec<Entry>) -> Result<ClaimPlan, Error> {
    let mut by_key: HashMap<Key, Vec<Entry>> = HashMap::with_capacity(locked.len());
    for row in rows {
        by_key.entry((row.aggregate_type.clone(), row.aggregate_id.clone())).or_default().push(row);
    }
    let mut plan = ClaimPlan::default();
    for key in locked {
        let room = request.max_entries.saturating_sub(plan.claimed.len());
        if room == 0 {
            break;
        }
        let mut entries = by_key.remove(key).unwrap_or_default();
        entries.sort_by_key(|e| e.sequence);
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
            plan.parked.push((key.clone(), blocked.unwrap_or(NEVER)));
        }
    }
    Ok(plan)
}

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

/// A completion restricted to the entries the holder still holds.
#[derive(Debug, Default)]
pub(crate) struct CompletionPlan<'a> {
    pub(crate) published: Vec<EntryId>,
    pub(crate) retry: Vec<&'a Retry>,
    pub(crate) dead: Vec<&'a Dead>,
    pub(crate) released: Vec<EntryId>,
    pub(crate) aggregates: Vec<AggregateChange>,
}

/// Plans a completion given `held`: the completion's entries still held by its holder, with
/// their aggregate.
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

/// Every id a completion names.
pub(crate) fn completion_ids(c: &Completion) -> Vec<EntryId> {
    c.published
        .iter()
        .chain(c.retry.iter().map(|r| &r.id))
        .chain(c.dead.iter().map(|d| &d.id))
        .chain(&c.released)
        .copied()
        .collect()
}

/// Headers as stored: a JSON array of `[name, value]` pairs, in order.
pub(crate) fn headers_to_json(headers: &Headers) -> String {
    let pairs: Vec<[&str; 2]> = headers.iter().map(|(k, v)| [k, v]).collect();
    serde_json::to_string(&pairs).unwrap_or_else(|_| "[]".to_string())
}

/// Reads stored headers back.
pub(crate) fn headers_from_json(table: &str, json: &str) -> Result<Headers, Error> {
    let pairs: Vec<(String, String)> = serde_json::from_str(json).map_err(|e| {
        crate::error::bad_row(table, format!("headers are not a JSON array of [name, value] pairs: {e}"))
    })?;
    Ok(pairs.into_iter().collect())
}

/// Parses a stored status.
pub(crate) fn status(table: &str, s: &str) -> Result<Status, Error> {
    s.parse::<Status>().map_err(|_| crate::error::bad_row(table, format!("unknown status `{s}`")))
}

/// Groups entries by aggregate, sorted by key (the lock order every writer uses, so concurrent
/// batch writers cannot deadlock on each other); members keep slice order.
pub(crate) fn group_by_aggregate(entries: &[NewEntry]) -> Vec<(Key, Vec<usize>)> {
    let mut groups: HashMap<Key, Vec<usize>> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        groups.entry((e.aggregate_type().to_string(), e.aggregate_id().to_string())).or_default().push(i);
    }
    let mut groups: Vec<(Key, Vec<usize>)> = groups.into_iter().collect();
    groups.sort_by(|a, b| a.0.cmp(&b.0));
    groups
}

/// When an entry written at `now` becomes due.
pub(crate) fn available_at(entry: &NewEntry, now: Timestamp) -> Timestamp {
    entry.not_before().unwrap_or(now).max(now)
}

/// An entry row as every backend reads it, with database values already converted.
#[derive(Debug)]
pub(crate) struct RawEntry {
    pub(crate) id: EntryId,
    pub(crate) aggregate_type: String,
    pub(crate) aggregate_id: String,
    pub(crate) sequence: i64,
    pub(crate) event_type: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) content_type: String,
    pub(crate) headers: String,
    pub(crate) status: String,
    pub(crate) attempts: i32,
    pub(crate) created_at: Timestamp,
    pub(crate) available_at: Timestamp,
    pub(crate) published_at: Option<Timestamp>,
    pub(crate) last_error: Option<String>,
    pub(crate) lease_holder: Option<String>,
    pub(crate) lease_expires_at: Option<Timestamp>,
}

impl RawEntry {
    /// The entry, checking status and headers.
    pub(crate) fn into_entry(self, table: &str) -> Result<Entry, Error> {
        Ok(Entry {
            id: self.id,
            aggregate_type: self.aggregate_type,
            aggregate_id: self.aggregate_id,
            sequence: self.sequence,
            event_type: self.event_type,
            payload: self.payload.into(),
            content_type: self.content_type,
            headers: headers_from_json(table, &self.headers)?,
            status: status(table, &self.status)?,
            attempts: u32::try_from(self.attempts).unwrap_or(0),
            created_at: self.created_at,
            available_at: self.available_at,
            published_at: self.published_at,
            last_error: self.last_error,
            lease: match (self.lease_holder, self.lease_expires_at) {
                (Some(holder), Some(expires_at)) => Some(Lease { holder, expires_at }),
                _ => None,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            stored("a", 3, Status::Pending, 150),
            stored("b", 1, Status::Pending, 120),
            stored("c", 1, Status::Dead, 0),
            stored("c", 2, Status::Pending, 0),
        ];
        let locked = vec![key("a"), key("b"), key("c"), key("d")];
        let plan = plan_claim(&request(DeadPolicy::Block), &locked, rows.clone()).unwrap();
        let got: Vec<(String, i64)> = plan.claimed.iter().map(|e| (e.aggregate_id.clone(), e.sequence)).collect();
        assert_eq!(got, [("a".to_string(), 1), ("a".to_string(), 2)]);
        assert!(plan.claimed.iter().all(|e| e.status == Status::Processing));
        assert_eq!(plan.leased, [key("a")]);
        assert_eq!(plan.parked, [(key("b"), Timestamp::from_micros(120)), (key("c"), NEVER), (key("d"), NEVER)]);
        let skip = plan_claim(&request(DeadPolicy::Skip), &locked, rows).unwrap();
        assert!(skip.claimed.iter().any(|e| e.aggregate_id == "c" && e.sequence == 2));
    }

    #[test]
    fn completion_counts_published_and_takes_the_earliest_retry() {
        let key = ("t".to_string(), "a".to_string());
        let (a, b, c) = (EntryId::generate(), EntryId::generate(), EntryId::generate());
        let held: HashMap<EntryId, Key> = [(a, key.clone()), (b, key.clone())].into_iter().collect();
        let completion = Completion {
            holder: "h".into(),
            now: Timestamp::from_micros(10),
            published: vec![a, c],
            retry: vec![Retry { id: b, at: Timestamp::from_micros(50), error: "x".into() }],
            ..Completion::default()
        };
        let plan = plan_completion(&completion, &held);
        assert_eq!(plan.published, [a]);
        assert_eq!(plan.aggregates, [AggregateChange { key, published: 1, available_at: Timestamp::from_micros(50) }]);
    }

    #[test]
    fn headers_round_trip_in_order() {
        let mut h = Headers::new();
        h.push("b", "2");
        h.push("a", "1 ✓\"");
        let json = headers_to_json(&h);
        assert_eq!(json, r#"[["b","2"],["a","1 ✓\""]]"#);
        assert_eq!(headers_from_json("t", &json).unwrap(), h);
        assert!(headers_from_json("t", "{}").is_err());
    }
}
