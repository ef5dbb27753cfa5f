//! Time as a value: timestamps, the clock port and the timer port.
//!
//! Core never reads the wall clock behind your back: the relay asks a [`Clock`] and
//! passes `now` to the store, so tests can move time by hand ([`ManualClock`]) and
//! lease expiry, retries and delayed delivery are exact and instant to test.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, ErrorKind};

/// A point in time: microseconds since the Unix epoch (UTC).
///
/// Microseconds match what PostgreSQL (`timestamptz`), MySQL (`DATETIME(6)`) and an
/// SQLite integer column store, so a value survives a round trip through any of them.
///
/// ## The storable range
/// A `Timestamp` can hold about ±292,000 years, but the databases cannot: MySQL's `DATETIME(6)`
/// and the date-time types the SQL drivers convert through end with the year 9999. Every
/// timestamp that crosses into a store must lie in
/// [`MIN_STORABLE`](Self::MIN_STORABLE)`..=`[`MAX_STORABLE`](Self::MAX_STORABLE),
/// 1970-01-01T00:00:00Z to 9999-12-31T23:59:59.999999Z; [`Timestamp::is_storable`] and
/// [`Timestamp::check_storable`] tell. The entry builder rejects a `not_before` outside it and
/// the relay's configuration rejects durations that could push a lease or a retry past it, so
/// a store never has to convert a value it cannot represent (which some drivers silently wrap
/// to 1970).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Timestamp = Timestamp(0);

    /// The earliest time every store can hold: the Unix epoch, 1970-01-01T00:00:00Z.
    pub const MIN_STORABLE: Timestamp = Timestamp::EPOCH;

    /// The latest time every store can hold: 9999-12-31T23:59:59.999999Z
    /// (253,402,300,799,999,999 µs after the epoch).
    pub const MAX_STORABLE: Timestamp = Timestamp(253_402_300_799_999_999);

    /// From microseconds since the Unix epoch.
    pub const fn from_micros(micros: i64) -> Self {
        Timestamp(micros)
    }

    /// From milliseconds since the Unix epoch.
    pub const fn from_millis(millis: i64) -> Self {
        Timestamp(millis.saturating_mul(1000))
    }

    /// Microseconds since the Unix epoch.
    pub const fn as_micros(self) -> i64 {
        self.0
    }

    /// The wall clock now. Before 1970 (a broken clock) this is the epoch.
    pub fn now() -> Self {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
            Err(_) => Timestamp::EPOCH,
        }
    }

    /// Whether every store can hold this time (see [the storable range](Self#the-storable-range)).
    pub const fn is_storable(self) -> bool {
        self.0 >= Self::MIN_STORABLE.0 && self.0 <= Self::MAX_STORABLE.0
    }

    /// This time if every store can hold it; otherwise a [`ErrorKind::Validation`] error naming
    /// `what` (e.g. `"not_before"`), the value and the range. Stores call it before converting
    /// a timestamp for their database.
    pub fn check_storable(self, what: &str) -> Result<Self, Error> {
        if self.is_storable() {
            return Ok(self);
        }
        let side = if self.0 < Self::MIN_STORABLE.0 {
            "before 1970-01-01T00:00:00Z"
        } else {
            "after 9999-12-31T23:59:59.999999Z"
        };
        Err(Error::new(
            ErrorKind::Validation,
            format!(
                "{what} is {} µs since the Unix epoch, {side}, outside the range every store can hold \
                 (Timestamp::MIN_STORABLE..=Timestamp::MAX_STORABLE); use a time within it",
                self.0
            ),
        ))
    }

    /// This time plus `d`, or `None` if the result does not fit in a `Timestamp`.
    pub fn checked_add(self, d: Duration) -> Option<Self> {
        let micros = i64::try_from(d.as_micros()).ok()?;
        self.0.checked_add(micros).map(Timestamp)
    }

    /// This time minus `d`, or `None` if the result does not fit in a `Timestamp`.
    pub fn checked_sub(self, d: Duration) -> Option<Self> {
        let micros = i64::try_from(d.as_micros()).ok()?;
        self.0.checked_sub(micros).map(Timestamp)
    }

    /// This time plus `d`, saturating at the end of time.
    pub fn saturating_add(self, d: Duration) -> Self {
        let micros = i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_add(micros))
    }

    /// This time minus `d`, saturating at the start of time.
    pub fn saturating_sub(self, d: Duration) -> Self {
        let micros = i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_sub(micros))
    }

    /// How long after `earlier` this is; zero when `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Timestamp) -> Duration {
        let micros = self.0.saturating_sub(earlier.0).max(0);
        Duration::from_micros(micros.unsigned_abs())
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({}µs)", self.0)
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
            Err(e) => Timestamp(-i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX)),
        }
    }
}

impl From<Timestamp> for SystemTime {
    fn from(t: Timestamp) -> Self {
        if t.0 >= 0 {
            UNIX_EPOCH + Duration::from_micros(t.0.unsigned_abs())
        } else {
            UNIX_EPOCH - Duration::from_micros(t.0.unsigned_abs())
        }
    }
}

/// The clock port: where the relay gets `now`.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that moves only when told to; for tests.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// A clock showing `start`.
    pub fn new(start: Timestamp) -> Self {
        ManualClock(AtomicI64::new(start.as_micros()))
    }

    /// Sets the time.
    pub fn set(&self, t: Timestamp) {
        self.0.store(t.as_micros(), Ordering::SeqCst);
    }

    /// Moves the time forward by `d`.
    pub fn advance(&self, d: Duration) {
        let micros = i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        self.0.fetch_add(micros, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> Timestamp {
        (**self).now()
    }
}

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The timer port: how the relay waits without depending on an async runtime.
///
/// The relay sleeps only when it is idle or backing off, and bounds each publish
/// with a timeout, so one boxed future per wait costs nothing measurable.
pub trait Timer: Send + Sync + fmt::Debug {
    /// A future that completes after `duration`.
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()>;
}

/// A [`Timer`] on tokio's clock (`tokio::time::sleep`). Needs a tokio runtime with time enabled.
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioTimer;

#[cfg(feature = "tokio")]
impl Timer for TokioTimer {
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(duration))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let t = Timestamp::from_micros(10);
        assert_eq!(t.saturating_add(Duration::from_micros(5)).as_micros(), 15);
        assert_eq!(t.saturating_sub(Duration::from_micros(15)).as_micros(), -5);
        assert_eq!(Timestamp::from_micros(i64::MAX).saturating_add(Duration::MAX).as_micros(), i64::MAX);
        assert_eq!(t.saturating_duration_since(Timestamp::from_micros(20)), Duration::ZERO);
        assert_eq!(
            Timestamp::from_millis(2).saturating_duration_since(Timestamp::from_millis(1)),
            Duration::from_millis(1)
        );
    }

    #[test]
    fn checked_arithmetic_never_wraps() {
        let t = Timestamp::from_micros(10);
        assert_eq!(t.checked_add(Duration::from_micros(5)), Some(Timestamp::from_micros(15)));
        assert_eq!(t.checked_sub(Duration::from_micros(15)), Some(Timestamp::from_micros(-5)));
        assert_eq!(Timestamp::from_micros(i64::MAX).checked_add(Duration::from_micros(1)), None);
        assert_eq!(Timestamp::from_micros(i64::MIN).checked_sub(Duration::from_micros(1)), None);
        assert_eq!(t.checked_add(Duration::MAX), None, "a duration beyond i64 micros does not fit");
        assert_eq!(t.checked_sub(Duration::MAX), None);
    }

    #[test]
    fn the_storable_range_is_1970_to_the_end_of_9999() {
        // 9999-12-31T23:59:59.999999Z: 2,932,896 days after the epoch, minus one microsecond.
        assert_eq!(Timestamp::MAX_STORABLE.as_micros(), 2_932_897 * 86_400 * 1_000_000 - 1);
        assert!(Timestamp::MIN_STORABLE.is_storable() && Timestamp::MAX_STORABLE.is_storable());
        assert!(Timestamp::now().is_storable());
        assert!(!Timestamp::from_micros(-1).is_storable());
        assert!(!Timestamp::from_micros(Timestamp::MAX_STORABLE.as_micros() + 1).is_storable());
        assert!(!Timestamp::from_micros(i64::MAX).is_storable());
        let err = Timestamp::from_micros(i64::MAX).check_storable("lease_until").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Validation);
        assert!(err.message().starts_with("lease_until is 9223372036854775807 µs"), "{err}");
        assert!(err.message().contains("after 9999-12-31T23:59:59.999999Z"), "{err}");
        let err = Timestamp::from_micros(-5).check_storable("not_before").unwrap_err();
        assert!(err.message().contains("before 1970-01-01T00:00:00Z"), "{err}");
        assert_eq!(Timestamp::MAX_STORABLE.check_storable("x").ok(), Some(Timestamp::MAX_STORABLE));
    }

    #[test]
    fn system_time_round_trip() {
        let now = Timestamp::now();
        assert_eq!(Timestamp::from(SystemTime::from(now)), now);
        let before = Timestamp::from_micros(-1_500);
        assert_eq!(Timestamp::from(SystemTime::from(before)), before);
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(Timestamp::from_millis(1));
        assert_eq!(clock.now(), Timestamp::from_millis(1));
        clock.advance(Duration::from_millis(4));
        assert_eq!(clock.now(), Timestamp::from_millis(5));
        clock.set(Timestamp::EPOCH);
        assert_eq!(clock.now(), Timestamp::EPOCH);
    }
}
