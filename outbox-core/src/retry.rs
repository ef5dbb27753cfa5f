//! Retry policy: when to try a failed publish again, and when to give up.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::error::Error;

/// What to do after a failed publish attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryDecision {
    /// Try again after this delay.
    RetryAfter(Duration),
    /// Give up: the entry goes to Dead.
    GiveUp,
}

/// Decides, after the `attempt`-th failed attempt (1 for the first), whether and when to retry.
///
/// Called once per failed entry, never on the success path.
pub trait RetryPolicy: Send + Sync + fmt::Debug {
    /// The decision for an entry whose `attempt`-th publish failed with `error`.
    fn decide(&self, attempt: u32, error: &Error) -> RetryDecision;

    /// The longest delay [`decide`](Self::decide) ever returns. The relay adds the delay to
    /// "now" and stores the result, so its configuration checks this against
    /// `RelayConfig::MAX_DURATION` and the storable range of [`Timestamp`](crate::Timestamp).
    fn max_delay(&self) -> Duration;
}

/// A source of random numbers, injectable so that retry schedules are exact in tests.
pub trait RandomSource: Send + Sync + fmt::Debug {
    /// The next 64 random bits.
    fn next_u64(&self) -> u64;
}

/// A small, fast, lock-free generator (SplitMix64). Not cryptographic.
#[derive(Debug)]
pub struct SplitMix64(AtomicU64);

impl SplitMix64 {
    /// A generator with a fixed seed: the same seed gives the same sequence.
    pub const fn with_seed(seed: u64) -> Self {
        SplitMix64(AtomicU64::new(seed))
    }

    /// A generator seeded from the process and the clock.
    pub fn from_entropy() -> Self {
        SplitMix64::with_seed(crate::entry::EntryId::generate().as_u128() as u64)
    }
}

impl RandomSource for SplitMix64 {
    fn next_u64(&self) -> u64 {
        splitmix64(self.0.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed))
    }
}

pub(crate) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Exponential backoff with full jitter: after attempt *n* wait a uniformly random time in
/// `[0, min(max_delay, base_delay × factor^(n-1))]`; give up after `max_attempts` or on a
/// permanent error.
#[derive(Debug)]
pub struct ExponentialBackoff<R = SplitMix64> {
    /// The ceiling of the first delay.
    pub base_delay: Duration,
    /// How much the ceiling grows per attempt.
    pub factor: u32,
    /// The largest delay ever waited.
    pub max_delay: Duration,
    /// Attempts before giving up (the entry goes to Dead). At least 1.
    pub max_attempts: u32,
    random: R,
}

impl Default for ExponentialBackoff {
    /// 1 s base, doubling, at most 5 minutes apart, 10 attempts.
    ///
    /// The policy sees only failures of the entry itself: an outage of the broker (unreachable,
    /// connection lost, throttling, a whole batch failing or timing out) counts no attempt (see
    /// [`Error::is_outage`]). An entry that fails retryably on every attempt goes dead after
    /// its 10th failure; the 9 waits before are drawn up to 1, 2, 4, … 256 s, so it is dead
    /// within 511 s (about 8.5 minutes) of its first failure, about 4 minutes on average, plus
    /// the time the 10 publishes take. Long enough for a topic created shortly after start-up or
    /// a partition that moves; a poison entry does not hold its aggregate for long.
    fn default() -> Self {
        ExponentialBackoff {
            base_delay: Duration::from_secs(1),
            factor: 2,
            max_delay: Duration::from_secs(300),
            max_attempts: 10,
            random: SplitMix64::from_entropy(),
        }
    }
}

impl ExponentialBackoff {
    /// A policy with these bounds and an entropy-seeded random source.
    pub fn new(base_delay: Duration, factor: u32, max_delay: Duration, max_attempts: u32) -> Self {
        ExponentialBackoff { base_delay, factor, max_delay, max_attempts, random: SplitMix64::from_entropy() }
    }
}

impl<R: RandomSource> ExponentialBackoff<R> {
    /// The same policy drawing its jitter from `random`.
    pub fn with_random<R2: RandomSource>(self, random: R2) -> ExponentialBackoff<R2> {
        ExponentialBackoff {
            base_delay: self.base_delay,
            factor: self.factor,
            max_delay: self.max_delay,
            max_attempts: self.max_attempts,
            random,
        }
    }

    /// The ceiling of the delay after the `attempt`-th failure.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1);
        let growth = self.factor.max(1).checked_pow(exp).unwrap_or(u32::MAX);
        self.base_delay.checked_mul(growth).unwrap_or(self.max_delay).min(self.max_delay)
    }
}

impl<R: RandomSource> RetryPolicy for ExponentialBackoff<R> {
    fn decide(&self, attempt: u32, error: &Error) -> RetryDecision {
        if !error.is_retryable() || attempt >= self.max_attempts.max(1) {
            return RetryDecision::GiveUp;
        }
        let ceiling = self.ceiling(attempt).as_micros();
        let ceiling = u64::try_from(ceiling).unwrap_or(u64::MAX);
        let jitter = if ceiling == 0 { 0 } else { self.random.next_u64() % (ceiling + 1) };
        RetryDecision::RetryAfter(Duration::from_micros(jitter))
    }

    fn max_delay(&self) -> Duration {
        self.max_delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    /// Always returns the same value, so the schedule is exact.
    #[derive(Debug)]
    struct Fixed(u64);
    impl RandomSource for Fixed {
        fn next_u64(&self) -> u64 {
            self.0
        }
    }

    fn retryable() -> Error {
        Error::new(ErrorKind::Unavailable, "broker down")
    }

    #[test]
    fn ceilings_grow_then_cap() {
        let p = ExponentialBackoff::new(Duration::from_millis(100), 2, Duration::from_secs(1), 10);
        let c: Vec<u128> = (1..=6).map(|n| p.ceiling(n).as_millis()).collect();
        assert_eq!(c, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(p.ceiling(200), Duration::from_secs(1), "overflow saturates to the cap");
    }

    #[test]
    fn full_jitter_is_exact_given_the_random_source() {
        let p = ExponentialBackoff::new(Duration::from_millis(100), 2, Duration::from_secs(1), 10)
            .with_random(Fixed(150_001));
        // attempt 1: ceiling 100 ms = 100_000 µs, 150_001 % 100_001 = 50_000 µs
        assert_eq!(p.decide(1, &retryable()), RetryDecision::RetryAfter(Duration::from_micros(50_000)));
        // attempt 2: ceiling 200_000 µs, 150_001 % 200_001 = 150_001 µs
        assert_eq!(p.decide(2, &retryable()), RetryDecision::RetryAfter(Duration::from_micros(150_001)));
        let max = ExponentialBackoff::new(Duration::from_millis(100), 2, Duration::from_secs(1), 10)
            .with_random(Fixed(u64::MAX));
        match max.decide(9, &retryable()) {
            RetryDecision::RetryAfter(d) => assert!(d <= Duration::from_secs(1)),
            RetryDecision::GiveUp => panic!("attempt 9 of 10 retries"),
        }
    }

    #[test]
    fn the_default_gives_up_within_the_documented_time() {
        let p = ExponentialBackoff::default().with_random(Fixed(u64::MAX - 1));
        let mut worst = Duration::ZERO;
        for attempt in 1..p.max_attempts {
            worst += p.ceiling(attempt);
            assert!(matches!(p.decide(attempt, &retryable()), RetryDecision::RetryAfter(_)), "attempt {attempt}");
        }
        assert_eq!(p.decide(p.max_attempts, &retryable()), RetryDecision::GiveUp);
        assert_eq!((p.max_attempts, worst), (10, Duration::from_secs(511)), "as the Default docs say");
    }

    #[test]
    fn seeded_generator_repeats_its_schedule() {
        let a = ExponentialBackoff::default().with_random(SplitMix64::with_seed(7));
        let b = ExponentialBackoff::default().with_random(SplitMix64::with_seed(7));
        let sa: Vec<_> = (1..8).map(|n| a.decide(n, &retryable())).collect();
        let sb: Vec<_> = (1..8).map(|n| b.decide(n, &retryable())).collect();
        assert_eq!(sa, sb);
        assert!(sa.windows(2).any(|w| w[0] != w[1]), "jitter varies: {sa:?}");
    }

    #[test]
    fn permanent_errors_and_exhausted_attempts_give_up() {
        let p = ExponentialBackoff::new(Duration::from_millis(1), 2, Duration::from_secs(1), 3);
        assert_eq!(p.decide(1, &Error::new(ErrorKind::Rejected, "no route")), RetryDecision::GiveUp);
        assert!(matches!(p.decide(2, &retryable()), RetryDecision::RetryAfter(_)));
        assert_eq!(p.decide(3, &retryable()), RetryDecision::GiveUp);
        let zero = ExponentialBackoff::new(Duration::from_millis(1), 2, Duration::from_secs(1), 0);
        assert_eq!(zero.decide(1, &retryable()), RetryDecision::GiveUp, "max_attempts 0 acts as 1");
    }
}
