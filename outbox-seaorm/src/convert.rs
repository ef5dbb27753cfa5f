//! Values in and out of each database: ids, times, headers, and reading an entry row.
//!
//! PostgreSQL stores ids as `uuid` and times as `timestamptz`, MySQL as `BINARY(16)` and
//! `DATETIME(6)` (UTC), SQLite as 16-byte BLOBs and INTEGER microseconds since the epoch.

use outbox_core::{Entry, EntryId, Error, ErrorKind, Headers, Lease, Timestamp};
use sea_orm::sea_query::{ArrayType, Value};
use sea_orm::{ColIdx, DbBackend, QueryResult};
use time::{OffsetDateTime, PrimitiveDateTime, UtcOffset};

use crate::error::{bad_row, map};

/// The columns of an entry, in the order [`entry_from_row`] reads them (PostgreSQL reads
/// `headers` as text through [`entry_columns`]).
const COLUMNS: [&str; 16] = [
    "id",
    "aggregate_type",
    "aggregate_id",
    "sequence",
    "event_type",
    "payload",
    "content_type",
    "headers",
    "status",
    "attempts",
    "created_at",
    "available_at",
    "published_at",
    "last_error",
    "lease_holder",
    "lease_expires_at",
];

/// The select list for an entry, each column prefixed with `prefix` (e.g. `e.`).
pub(crate) fn entry_columns(backend: DbBackend, prefix: &str) -> String {
    COLUMNS
        .iter()
        .map(|c| match (backend, *c) {
            (DbBackend::Postgres, "headers") => format!("{prefix}headers::text AS headers"),
            (DbBackend::MySql, "headers") => format!("CAST({prefix}headers AS CHAR) AS headers"),
            _ => format!("{prefix}{c}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn out_of_range(t: Timestamp) -> Error {
    Error::new(
        ErrorKind::Validation,
        format!("time {t:?} is outside the range a database timestamp can hold (years 1 to 9999)"),
    )
}

fn to_offset(t: Timestamp) -> Result<OffsetDateTime, Error> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.as_micros()) * 1000).map_err(|_| out_of_range(t))
}

fn from_offset(t: OffsetDateTime) -> Timestamp {
    Timestamp::from_micros(i64::try_from(t.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX))
}

/// A time as a bind value.
pub(crate) fn ts(backend: DbBackend, t: Timestamp) -> Result<Value, Error> {
    Ok(match backend {
        DbBackend::Postgres => Value::TimeDateTimeWithTimeZone(Some(Box::new(to_offset(t)?))),
        DbBackend::MySql => {
            let o = to_offset(t)?.to_offset(UtcOffset::UTC);
            Value::TimeDateTime(Some(Box::new(PrimitiveDateTime::new(o.date(), o.time()))))
        }
        DbBackend::Sqlite => Value::BigInt(Some(t.as_micros())),
    })
}

/// An id as a bind value.
pub(crate) fn id(backend: DbBackend, id: EntryId) -> Value {
    match backend {
        DbBackend::Postgres => Value::Uuid(Some(Box::new(uuid::Uuid::from_u128(id.as_u128())))),
        DbBackend::MySql | DbBackend::Sqlite => Value::Bytes(Some(Box::new(id.to_bytes().to_vec()))),
    }
}

/// PostgreSQL arrays for `= ANY($n)` and `unnest`.
pub(crate) fn pg_uuid_array(ids: impl IntoIterator<Item = EntryId>) -> Value {
    let values = ids.into_iter().map(|i| Value::Uuid(Some(Box::new(uuid::Uuid::from_u128(i.as_u128()))))).collect();
    Value::Array(ArrayType::Uuid, Some(Box::new(values)))
}

/// A PostgreSQL `text[]`.
pub(crate) fn pg_text_array<'a>(items: impl IntoIterator<Item = &'a str>) -> Value {
    let values = items.into_iter().map(|s| Value::String(Some(Box::new(s.to_string())))).collect();
    Value::Array(ArrayType::String, Some(Box::new(values)))
}

/// A PostgreSQL `timestamptz[]`.
pub(crate) fn pg_ts_array(items: impl IntoIterator<Item = Timestamp>) -> Result<Value, Error> {
    let values = items
        .into_iter()
        .map(|t| Ok(Value::TimeDateTimeWithTimeZone(Some(Box::new(to_offset(t)?)))))
        .collect::<Result<Vec<_>, Error>>()?;
    Ok(Value::Array(ArrayType::TimeDateTimeWithTimeZone, Some(Box::new(values))))
}

/// A PostgreSQL `bigint[]`.
pub(crate) fn pg_i64_array(items: impl IntoIterator<Item = i64>) -> Value {
    let values = items.into_iter().map(|n| Value::BigInt(Some(n))).collect();
    Value::Array(ArrayType::BigInt, Some(Box::new(values)))
}

/// Reads a (non-null) time column.
pub(crate) fn get_ts<I: ColIdx>(
    backend: DbBackend,
    row: &QueryResult,
    col: I,
    table: &str,
) -> Result<Timestamp, Error> {
    get_ts_opt(backend, row, col, table)?.ok_or_else(|| bad_row(table, format!("column {col:?} is NULL")))
}

/// Reads a nullable time column.
pub(crate) fn get_ts_opt<I: ColIdx>(
    backend: DbBackend,
    row: &QueryResult,
    col: I,
    table: &str,
) -> Result<Option<Timestamp>, Error> {
    let what = "reading an outbox row";
    Ok(match backend {
        DbBackend::Postgres => {
            row.try_get_by::<Option<OffsetDateTime>, _>(col).map_err(|e| map(backend, what, table, e))?.map(from_offset)
        }
        DbBackend::MySql => row
            .try_get_by::<Option<PrimitiveDateTime>, _>(col)
            .map_err(|e| map(backend, what, table, e))?
            .map(|p| from_offset(p.assume_utc())),
        DbBackend::Sqlite => {
            row.try_get_by::<Option<i64>, _>(col).map_err(|e| map(backend, what, table, e))?.map(Timestamp::from_micros)
        }
    })
}

/// Reads an id column.
pub(crate) fn get_id<I: ColIdx>(backend: DbBackend, row: &QueryResult, col: I, table: &str) -> Result<EntryId, Error> {
    let what = "reading an outbox row";
    match backend {
        DbBackend::Postgres => {
            let u: uuid::Uuid = row.try_get_by(col).map_err(|e| map(backend, what, table, e))?;
            Ok(EntryId::from_u128(u.as_u128()))
        }
        DbBackend::MySql | DbBackend::Sqlite => {
            let bytes: Vec<u8> = row.try_get_by(col).map_err(|e| map(backend, what, table, e))?;
            let bytes: [u8; 16] =
                bytes.try_into().map_err(|b: Vec<u8>| bad_row(table, format!("an id of {} bytes, not 16", b.len())))?;
            Ok(EntryId::from_bytes(bytes))
        }
    }
}

/// Headers as stored: a JSON array of `[name, value]` pairs, in order.
pub(crate) fn headers_to_json(headers: &Headers) -> String {
    let pairs: Vec<[&str; 2]> = headers.iter().map(|(k, v)| [k, v]).collect();
    serde_json::to_string(&pairs).unwrap_or_else(|_| "[]".to_string())
}

/// Reads the stored headers back.
pub(crate) fn headers_from_json(table: &str, json: &str) -> Result<Headers, Error> {
    let pairs: Vec<(String, String)> = serde_json::from_str(json)
        .map_err(|e| bad_row(table, format!("headers are not a JSON array of [name, value] pairs: {e}")))?;
    Ok(pairs.into_iter().collect())
}

/// Reads an entry selected with [`entry_columns`], whose first column is at `base`. Reads by
/// position: no column-name lookups on the hot path.
pub(crate) fn entry_from_row(backend: DbBackend, row: &QueryResult, table: &str, base: usize) -> Result<Entry, Error> {
    let what = "reading an outbox row";
    let m = |e| map(backend, what, table, e);
    let status: String = row.try_get_by(base + 8).map_err(m)?;
    let status = status.parse().map_err(|_| bad_row(table, format!("unknown status `{status}`")))?;
    let headers: String = row.try_get_by(base + 7).map_err(m)?;
    let attempts: i32 = row.try_get_by(base + 9).map_err(m)?;
    let lease_holder: Option<String> = row.try_get_by(base + 14).map_err(m)?;
    let lease_expires_at = get_ts_opt(backend, row, base + 15, table)?;
    let payload: Vec<u8> = row.try_get_by(base + 5).map_err(m)?;
    Ok(Entry {
        id: get_id(backend, row, base, table)?,
        aggregate_type: row.try_get_by(base + 1).map_err(m)?,
        aggregate_id: row.try_get_by(base + 2).map_err(m)?,
        sequence: row.try_get_by(base + 3).map_err(m)?,
        event_type: row.try_get_by(base + 4).map_err(m)?,
        payload: payload.into(),
        content_type: row.try_get_by(base + 6).map_err(m)?,
        headers: headers_from_json(table, &headers)?,
        status,
        attempts: u32::try_from(attempts).unwrap_or(0),
        created_at: get_ts(backend, row, base + 10, table)?,
        available_at: get_ts(backend, row, base + 11, table)?,
        published_at: get_ts_opt(backend, row, base + 12, table)?,
        last_error: row.try_get_by(base + 13).map_err(m)?,
        lease: match (lease_holder, lease_expires_at) {
            (Some(holder), Some(expires_at)) => Some(Lease { holder, expires_at }),
            _ => None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_convert_exactly() {
        for micros in [0, 1, -1, 1_700_000_000_123_456, 253_402_214_400_000_000] {
            let t = Timestamp::from_micros(micros);
            assert_eq!(from_offset(to_offset(t).unwrap()), t);
        }
        assert!(ts(DbBackend::Postgres, Timestamp::from_micros(i64::MAX)).is_err());
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
