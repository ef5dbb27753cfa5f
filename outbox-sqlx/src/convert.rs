//! Conversions between core's values and the drivers' types.

#[cfg(any(feature = "postgres", feature = "mysql"))]
use outbox_core::Timestamp;

/// A timestamp as `time::OffsetDateTime` (UTC), for PostgreSQL `timestamptz` and MySQL `DATETIME(6)`.
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) fn to_datetime(t: Timestamp) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.as_micros()) * 1000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// Back from `time::OffsetDateTime`.
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) fn from_datetime(t: time::OffsetDateTime) -> Timestamp {
    Timestamp::from_micros(i64::try_from(t.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX))
}

/// A timestamp as a UTC `time::PrimitiveDateTime`, for MySQL `DATETIME(6)`.
#[cfg(feature = "mysql")]
pub(crate) fn to_naive(t: Timestamp) -> time::PrimitiveDateTime {
    let d = to_datetime(t);
    time::PrimitiveDateTime::new(d.date(), d.time())
}

/// Back from a UTC `time::PrimitiveDateTime`.
#[cfg(feature = "mysql")]
pub(crate) fn from_naive(t: time::PrimitiveDateTime) -> Timestamp {
    from_datetime(t.assume_utc())
}
