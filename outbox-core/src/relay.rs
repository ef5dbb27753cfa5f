//! The relay: claims committed entries, publishes them, records the outcome, again and again.

use std::collections::HashSet;
use std::fmt;
use std::future::{Future, poll_fn};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use crate::entry::Entry;
use crate::error::{Error, ErrorKind, Result};
use crate::publisher::{DeliveryTimeout, Outcome, Publisher};
use crate::retry::{ExponentialBackoff, RetryDecision, RetryPolicy};
use crate::span::BatchSpan;
use crate::store::{ClaimRequest, Completion, Dead, DeadPolicy, Retry, Store};
use crate::time::{Clock, SystemClock, Timer, Timestamp};

/// How a relay behaves. Start from [`RelayConfig::default`] and change what you need.
#[derive(Clone)]
pub struct RelayConfig {
    /// Names this relay in leases and logs; unique per process by default. At most
    /// [`RelayConfig::MAX_RELAY_ID_LEN`] bytes, without control, bidi or zero-width characters
    /// and without leading or trailing white space.
    pub relay_id: String,
    /// The most entries claimed and published per batch (default 1000).
    pub batch_size: usize,
    /// The most entries of one aggregate per batch (default 20). With 1, a later entry of an
    /// aggregate is never sent before the earlier one succeeded, at the cost of throughput for
    /// busy aggregates; with more, a failure may let the broker see a later entry once before
    /// it is sent again in order (it is released, not marked published).
    pub max_per_aggregate: usize,
    /// How many batches [`Relay::run`] publishes at once (default 1): it runs that many workers.
    /// Each worker already overlaps its batches while there is a backlog (after a full batch it
    /// claims and publishes the next one while the last one's completion is written); more
    /// workers also overlap publishing. Each batch holds its own aggregates, so order is kept at
    /// any value. The publisher sees up to this many `publish` calls at once. On PostgreSQL, 2
    /// made one relay drain about 1.2 × faster than 1 (see BENCHMARKS.md). At most
    /// [`RelayConfig::MAX_IN_FLIGHT`]; each batch in flight may hold a store connection while it
    /// claims and another while it completes, so keep it well below the store's pool size.
    pub max_in_flight: usize,
    /// How long to wait before polling again when idle (default 100 ms); doubles while idle.
    pub poll_interval: Duration,
    /// The longest idle wait (default 2 s). A [`Wakeup`] ends any wait at once.
    pub max_poll_interval: Duration,
    /// How long a claim holds (default 30 s): a crashed relay's entries are claimable after it.
    /// At most [`RelayConfig::MAX_DURATION`].
    pub lease_duration: Duration,
    /// The longest a publish may take (default 10 s). A publish that takes longer says nothing
    /// about its entries: they are released without an attempt and the relay pauses as in an
    /// outage. Must be shorter than the lease.
    pub publish_timeout: Duration,
    /// The first pause after a publish hit an outage (default 250 ms): the broker was
    /// unreachable, dropped the connection, throttled, timed out as a whole, or the publisher
    /// returned `Err` for the batch. The pause doubles with each publish that hits the outage
    /// again, up to [`max_outage_backoff`](Self::max_outage_backoff), and resets when a
    /// publish gets an answer from the broker. No entry is charged an attempt for an outage.
    pub outage_backoff: Duration,
    /// The longest pause between publishes during an outage (default 10 s): also the longest
    /// the relay takes to notice that the broker is back.
    pub max_outage_backoff: Duration,
    /// What a dead entry does to the later entries of its aggregate (default: blocks them).
    pub on_dead: DeadPolicy,
    /// When to retry and when to give up (default [`ExponentialBackoff::default`]). Its
    /// [`max_delay`](RetryPolicy::max_delay) must be at most [`RelayConfig::MAX_DURATION`].
    pub retry: Arc<dyn RetryPolicy>,
    /// Where `now` comes from (default the system clock).
    pub clock: Arc<dyn Clock>,
    /// How the relay waits. Defaults to tokio's timer when the `tokio` feature is on;
    /// [`Relay::run`] needs one.
    pub timer: Option<Arc<dyn Timer>>,
    /// Receives what happens, for metrics and tracing (default: nothing).
    pub observer: Arc<dyn Observer>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            relay_id: format!(
                "relay-{}-{:08x}",
                std::process::id(),
                crate::entry::EntryId::generate().as_u128() as u32
            ),
            batch_size: 1000,
            max_per_aggregate: 20,
            max_in_flight: 1,
            poll_interval: Duration::from_millis(100),
            max_poll_interval: Duration::from_secs(2),
            lease_duration: Duration::from_secs(30),
            publish_timeout: Duration::from_secs(10),
            outage_backoff: Duration::from_millis(250),
            max_outage_backoff: Duration::from_secs(10),
            on_dead: DeadPolicy::Block,
            retry: Arc::new(ExponentialBackoff::default()),
            clock: Arc::new(SystemClock),
            timer: default_timer(),
            observer: Arc::new(NoopObserver),
        }
    }
}

#[cfg(feature = "tokio")]
fn default_timer() -> Option<Arc<dyn Timer>> {
    Some(Arc::new(crate::time::TokioTimer))
}

#[cfg(not(feature = "tokio"))]
fn default_timer() -> Option<Arc<dyn Timer>> {
    None
}

impl fmt::Debug for RelayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayConfig")
            .field("relay_id", &self.relay_id)
            .field("batch_size", &self.batch_size)
            .field("max_per_aggregate", &self.max_per_aggregate)
            .field("max_in_flight", &self.max_in_flight)
            .field("poll_interval", &self.poll_interval)
            .field("max_poll_interval", &self.max_poll_interval)
            .field("lease_duration", &self.lease_duration)
            .field("publish_timeout", &self.publish_timeout)
            .field("outage_backoff", &self.outage_backoff)
            .field("max_outage_backoff", &self.max_outage_backoff)
            .field("on_dead", &self.on_dead)
            .field("retry", &self.retry)
            .field("clock", &self.clock)
            .field("timer", &self.timer)
            .finish_non_exhaustive()
    }
}

impl RelayConfig {
    /// The longest [`relay_id`](Self::relay_id), in bytes: 234.
    ///
    /// The relay names each batch's lease holder `<relay_id>:<batch counter>`, and the counter
    /// (a `u64`) takes up to 20 digits, so with this limit every holder fits in
    /// [`ClaimRequest::MAX_HOLDER_LEN`] (255), the size of the stores' `lease_holder` column.
    pub const MAX_RELAY_ID_LEN: usize = ClaimRequest::MAX_HOLDER_LEN - ":".len() - "18446744073709551615".len();

    /// The most batches a relay publishes at once ([`max_in_flight`](Self::max_in_flight)): 64.
    ///
    /// Every batch in flight needs store connections; beyond a few, relays gain nothing and
    /// starve the connection pool (10,000 against a pool of 5 times out thousands of times a
    /// second). Run more relays instead.
    pub const MAX_IN_FLIGHT: usize = 64;

    /// The longest duration the relay adds to "now" and stores (the lease, the publish timeout,
    /// the retry policy's [`max_delay`](RetryPolicy::max_delay)): 100 years of 365 days.
    ///
    /// Anything longer is a mistake of units, and could carry a stored time past
    /// [`Timestamp::MAX_STORABLE`], which some databases would wrap to 1970 (a lease that lapsed
    /// at once, a retry due at once).
    pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

    fn validate(&self) -> Result<()> {
        let fail = |what: &str| Err(Error::new(ErrorKind::Config, format!("invalid relay config: {what}")));
        if self.relay_id.trim().is_empty() {
            return fail("relay_id is empty; leave the default or give a unique name");
        }
        if self.relay_id.len() > Self::MAX_RELAY_ID_LEN {
            return fail(&format!(
                "relay_id is {} bytes, over the limit of {} (RelayConfig::MAX_RELAY_ID_LEN, so that the lease holder \
                 `<relay_id>:<batch>` fits the stores' 255-character lease_holder column); shorten it (it starts {})",
                self.relay_id.len(),
                Self::MAX_RELAY_ID_LEN,
                crate::entry::quote(&self.relay_id)
            ));
        }
        if self.relay_id.trim() != self.relay_id {
            return fail(&format!(
                "relay_id {} has leading or trailing white space; trim it",
                crate::entry::quote(&self.relay_id)
            ));
        }
        if let Some(c) = self.relay_id.chars().find(|c| crate::entry::is_forbidden_in_names(*c)) {
            return fail(&format!(
                "relay_id {} contains {}, a control, bidi or zero-width character; remove it",
                crate::entry::quote(&self.relay_id),
                c.escape_unicode()
            ));
        }
        if self.batch_size == 0 || self.max_per_aggregate == 0 || self.max_in_flight == 0 {
            return fail("batch_size, max_per_aggregate and max_in_flight must each be at least 1");
        }
        if self.max_in_flight > Self::MAX_IN_FLIGHT {
            return fail(&format!(
                "max_in_flight is {}, over the limit of {} (RelayConfig::MAX_IN_FLIGHT); each batch in flight needs \
                 store connections: keep it well below the pool size, and run more relays to go faster",
                self.max_in_flight,
                Self::MAX_IN_FLIGHT
            ));
        }
        let now = self.clock.now();
        for (name, duration) in [
            ("lease_duration", self.lease_duration),
            ("publish_timeout", self.publish_timeout),
            ("the retry policy's max_delay", self.retry.max_delay()),
        ] {
            if duration > Self::MAX_DURATION {
                return fail(&format!(
                    "{name} is {duration:?}, over the limit of 100 years (RelayConfig::MAX_DURATION); check its units"
                ));
            }
            if now.checked_add(duration).is_none_or(|end| !end.is_storable()) {
                return fail(&format!(
                    "{name} is {duration:?}: added to the clock's now ({} µs since the epoch) it ends after \
                     Timestamp::MAX_STORABLE (9999-12-31T23:59:59.999999Z), which no store can hold; shorten it or fix \
                     the clock",
                    now.as_micros()
                ));
            }
        }
        if self.poll_interval.is_zero() || self.max_poll_interval < self.poll_interval {
            return fail("poll_interval must be above zero and at most max_poll_interval");
        }
        if self.publish_timeout >= self.lease_duration {
            return fail(&format!(
                "publish_timeout ({:?}) is not shorter than lease_duration ({:?}): another relay could claim a batch still being published; lower publish_timeout or raise lease_duration",
                self.publish_timeout, self.lease_duration
            ));
        }
        if self.outage_backoff.is_zero() || self.max_outage_backoff < self.outage_backoff {
            return fail("outage_backoff must be above zero and at most max_outage_backoff");
        }
        Ok(())
    }

    /// Refuses a publisher whose own delivery timeout is not shorter than `publish_timeout`.
    fn check_delivery_timeout(&self, publisher: &impl DeliveryTimeout) -> Result<()> {
        let setting = publisher.delivery_timeout_setting();
        let problem = match publisher.delivery_timeout() {
            Some(timeout) if timeout < self.publish_timeout => return Ok(()),
            Some(timeout) => {
                format!("{setting} ({timeout:?}) is not shorter than publish_timeout ({:?})", self.publish_timeout)
            }
            None => format!("{setting} is unbounded, so not shorter than publish_timeout ({:?})", self.publish_timeout),
        };
        Err(Error::new(
            ErrorKind::Config,
            format!(
                "invalid relay config: {problem}: the relay would give up on batches the publisher may still deliver; lower {setting} below publish_timeout, or raise publish_timeout (and lease_duration above it)"
            ),
        ))
    }
}

/// What one batch did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Entries claimed.
    pub claimed: usize,
    /// Entries the broker accepted.
    pub published: usize,
    /// Entries scheduled for a retry.
    pub retried: usize,
    /// Entries given up on.
    pub dead: usize,
    /// Entries given back unpublished without an attempt.
    pub released: usize,
}

/// Something the relay did, for an [`Observer`].
#[derive(Debug)]
#[non_exhaustive]
pub enum RelayEvent<'a> {
    /// A batch was claimed.
    Claimed {
        /// How many entries.
        entries: usize,
        /// How long the claim took.
        took: Duration,
    },
    /// An entry reached the broker.
    Published {
        /// The entry.
        entry: &'a Entry,
        /// From when it was written (about its commit) to when its publish was recorded.
        latency: Duration,
    },
    /// A publish failed and will be retried.
    RetryScheduled {
        /// The entry.
        entry: &'a Entry,
        /// Which attempt failed (1 for the first).
        attempt: u32,
        /// When the next attempt is due.
        at: Timestamp,
        /// Why it failed.
        error: &'a Error,
    },
    /// An entry went dead.
    DeadLettered {
        /// The entry.
        entry: &'a Entry,
        /// Attempts made.
        attempts: u32,
        /// Why.
        error: &'a Error,
    },
    /// A batch finished.
    BatchCompleted {
        /// What it did.
        report: BatchReport,
        /// Time spent claiming.
        claim: Duration,
        /// Time spent publishing.
        publish: Duration,
        /// Time spent recording outcomes.
        complete: Duration,
    },
    /// Claiming or recording outcomes failed; the relay backs off and tries again.
    StoreError {
        /// The error.
        error: &'a Error,
    },
    /// A publish hit an outage (broker unreachable, connection lost, throttled, the whole batch
    /// failed or timed out) while the broker was answering before. Reported once per outage.
    /// The batch's unpublished entries are released without an attempt; [`Relay::run`] pauses
    /// publishing for `backoff`, then for doubling pauses (up to
    /// [`RelayConfig::max_outage_backoff`]) until a publish gets an answer.
    OutageStarted {
        /// What the publisher reported.
        error: &'a Error,
        /// The first pause.
        backoff: Duration,
    },
    /// A publish got an answer from the broker again after an outage.
    OutageEnded {
        /// From the first publish that hit the outage to this one.
        lasted: Duration,
        /// How many publishes hit the outage (none of them counted an attempt).
        failed_publishes: u32,
    },
    /// The publisher panicked. The relay caught it: a batch is published again one entry at a
    /// time, and an entry whose own publish panics counts a failed attempt.
    PublisherPanicked {
        /// How many entries the panicking publish had.
        entries: usize,
        /// The panic message.
        message: &'a str,
    },
}

/// Receives [`RelayEvent`]s: plug metrics and tracing in here.
pub trait Observer: Send + Sync {
    /// Called synchronously on the relay's task: keep it cheap.
    fn observe(&self, event: &RelayEvent<'_>);
}

/// An observer that ignores everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoopObserver;

impl Observer for NoopObserver {
    fn observe(&self, _: &RelayEvent<'_>) {}
}

impl<F: Fn(&RelayEvent<'_>) + Send + Sync> Observer for F {
    fn observe(&self, event: &RelayEvent<'_>) {
        self(event)
    }
}

/// A one-way, multi-waiter signal built on std only.
#[derive(Default)]
struct Signal {
    generation: AtomicU64,
    wakers: Mutex<Vec<Waker>>,
}

impl Signal {
    fn fire(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let wakers = std::mem::take(&mut *self.wakers.lock().unwrap_or_else(|p| p.into_inner()));
        for w in wakers {
            w.wake();
        }
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Completes once the signal fired after `seen` was read.
    async fn changed_since(&self, seen: u64) {
        poll_fn(|cx| {
            if self.generation() != seen {
                return Poll::Ready(());
            }
            let mut wakers = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
            if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
                wakers.push(cx.waker().clone());
            }
            drop(wakers);
            if self.generation() != seen { Poll::Ready(()) } else { Poll::Pending }
        })
        .await
    }
}

/// Wakes a relay at once, e.g. after a transaction that enqueued entries committed, or when a
/// store notification (PostgreSQL `NOTIFY`) arrives. Cheap to clone and to call.
#[derive(Clone, Default)]
pub struct Wakeup(Arc<Signal>);

impl Wakeup {
    /// A handle not yet attached to a relay (see [`Relay::with_wakeup`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Ends the relay's idle wait now; if it is busy, it claims again right after.
    pub fn wake(&self) {
        self.0.fire();
    }
}

impl fmt::Debug for Wakeup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wakeup").field("generation", &self.0.generation()).finish()
    }
}

/// The relay: drives entries from a [`Store`] to a [`Publisher`].
///
/// See [the crate docs](crate) for an example and the guarantees.
pub struct Relay<S, P> {
    store: S,
    publisher: P,
    config: RelayConfig,
    wakeup: Wakeup,
    batches: AtomicU64,
    outage: Mutex<Option<Outage>>,
}

/// An outage in progress: publishes that said nothing about their entries.
struct Outage {
    started: Instant,
    failed_publishes: u32,
}

impl<S, P> fmt::Debug for Relay<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay").field("config", &self.config).finish_non_exhaustive()
    }
}

impl<S: Store, P: Publisher> Relay<S, P> {
    /// A relay over `store` and `publisher`; fails if `config` is inconsistent.
    pub fn new(store: S, publisher: P, config: RelayConfig) -> Result<Self> {
        config.validate()?;
        Ok(Relay {
            store,
            publisher,
            config,
            wakeup: Wakeup::new(),
            batches: AtomicU64::new(0),
            outage: Mutex::new(None),
        })
    }

    /// [`Relay::new`] for a publisher with a delivery timeout of its own (e.g. Kafka's
    /// `message.timeout.ms`): also fails, with a [`ErrorKind::Config`] error naming both values,
    /// unless that timeout is shorter than [`RelayConfig::publish_timeout`].
    pub fn new_checked(store: S, publisher: P, config: RelayConfig) -> Result<Self>
    where
        P: DeliveryTimeout,
    {
        config.validate()?;
        config.check_delivery_timeout(&publisher)?;
        Relay::new(store, publisher, config)
    }

    /// Uses `wakeup` (e.g. one already given to a store's notifier) instead of a new handle.
    pub fn with_wakeup(mut self, wakeup: Wakeup) -> Self {
        self.wakeup = wakeup;
        self
    }

    /// A handle that wakes this relay.
    pub fn wakeup(&self) -> Wakeup {
        self.wakeup.clone()
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The publisher.
    pub fn publisher(&self) -> &P {
        &self.publisher
    }

    /// The configuration.
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// Claims, publishes and completes one batch; for tests and for callers with their own loop.
    ///
    /// An `Err` is a store failure (claim or completion); publish failures are outcomes. An
    /// outage releases the batch's unpublished entries (counted in
    /// [`BatchReport::released`]) and is reported to the observer, but `run_once` does not
    /// pause: a caller with its own loop backs off itself.
    pub async fn run_once(&self) -> Result<BatchReport> {
        match self.claim_and_publish().await? {
            Some(published) => self.finish(published).await,
            None => Ok(BatchReport::default()),
        }
    }

    /// The first half of a batch: claims it and publishes it; `None` when there was nothing to
    /// claim. [`Relay::finish`] records the outcomes.
    async fn claim_and_publish(&self) -> Result<Option<Published>> {
        let config = &self.config;
        let holder = format!("{}:{}", config.relay_id, self.batches.fetch_add(1, Ordering::Relaxed));
        let now = config.clock.now();
        let request = ClaimRequest {
            holder: &holder,
            now,
            lease_until: now.saturating_add(config.lease_duration),
            max_entries: config.batch_size,
            max_per_aggregate: config.max_per_aggregate,
            on_dead: config.on_dead,
        };
        let started = Instant::now();
        let batch = self.store.claim(&request).await?;
        let claim_took = started.elapsed();
        if batch.is_empty() {
            return Ok(None);
        }
        let span = BatchSpan::start(&config.relay_id, batch.len(), claim_took);
        span.in_scope(|| self.observe(&RelayEvent::Claimed { entries: batch.len(), took: claim_took }));

        let publish_started = Instant::now();
        let outcomes = span.run(self.publish(&batch, request.lease_until)).await;
        let publish_took = publish_started.elapsed();

        let (completion, fates, outage) = self.completion(holder, &batch, outcomes);
        let pause = self.note_outage(outage.as_ref());
        Ok(Some(Published { batch, completion, fates, claim_took, publish_took, pause, span }))
    }

    /// Keeps track of outages: returns the pause before the next publish when this one hit an
    /// outage, and tells the observer once when an outage starts and once when it ends.
    fn note_outage(&self, outage: Option<&Error>) -> Option<Duration> {
        let mut state = self.outage.lock().unwrap_or_else(|p| p.into_inner());
        match outage {
            Some(error) => {
                let first = state.is_none();
                let current = state.get_or_insert_with(|| Outage { started: Instant::now(), failed_publishes: 0 });
                current.failed_publishes = current.failed_publishes.saturating_add(1);
                let backoff = self.outage_backoff(current.failed_publishes);
                drop(state);
                if first {
                    self.observe(&RelayEvent::OutageStarted { error, backoff });
                }
                Some(backoff)
            }
            None => {
                let ended = state.take();
                drop(state);
                if let Some(ended) = ended {
                    self.observe(&RelayEvent::OutageEnded {
                        lasted: ended.started.elapsed(),
                        failed_publishes: ended.failed_publishes,
                    });
                }
                None
            }
        }
    }

    /// The pause after the `n`-th publish of an outage: doubling from `outage_backoff`, at most
    /// `max_outage_backoff`.
    fn outage_backoff(&self, n: u32) -> Duration {
        let growth = 2u32.checked_pow(n.saturating_sub(1)).unwrap_or(u32::MAX);
        let max = self.config.max_outage_backoff;
        self.config.outage_backoff.checked_mul(growth).unwrap_or(max).min(max)
    }

    /// The second half of a batch: records its completion in the store, then reports it.
    async fn finish(&self, published: Published) -> Result<BatchReport> {
        let Published { batch, completion, fates, claim_took, publish_took, pause: _, span } = published;
        let complete_started = Instant::now();
        span.run(self.complete(&completion)).await?;
        let complete_took = complete_started.elapsed();

        let report = BatchReport {
            claimed: batch.len(),
            published: completion.published.len(),
            retried: completion.retry.len(),
            dead: completion.dead.len(),
            released: completion.released.len(),
        };
        span.record(&report, publish_took, complete_took);
        span.in_scope(|| {
            self.report(&batch, completion.now, &fates);
            self.observe(&RelayEvent::BatchCompleted {
                report,
                claim: claim_took,
                publish: publish_took,
                complete: complete_took,
            });
        });
        Ok(report)
    }

    /// Runs until `shutdown` completes: claims while there is work, waits (woken by the
    /// [`Wakeup`] or the poll interval) while there is none. After a full batch, each of the
    /// [`max_in_flight`](RelayConfig::max_in_flight) workers claims and publishes its next batch
    /// while the last one's completion is being written. On shutdown it stops claiming, lets the
    /// batches in flight finish (their completions written), and returns.
    ///
    /// Store failures never end the loop: they are reported to the observer and retried after
    /// a back-off. Nor do publish failures: an outage (the broker is unreachable, also at
    /// start-up) releases the batch without counting attempts and pauses publishing with a
    /// bounded exponential back-off ([`RelayConfig::outage_backoff`]) until the broker answers,
    /// reported once as [`RelayEvent::OutageStarted`] and [`RelayEvent::OutageEnded`]; a
    /// panicking publisher is caught ([`RelayEvent::PublisherPanicked`]). Fails only if no
    /// [`Timer`] is configured.
    pub async fn run(&self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let Some(timer) = self.config.timer.clone() else {
            return Err(Error::new(
                ErrorKind::Config,
                "the relay has no timer: enable outbox-core's `tokio` feature or set RelayConfig::timer",
            ));
        };
        let stop = Stop::default();
        let mut workers: Vec<Pin<Box<dyn Future<Output = ()> + Send + '_>>> =
            (0..self.config.max_in_flight).map(|_| Box::pin(self.worker(&*timer, &stop)) as Pin<Box<_>>).collect();
        let mut done = vec![false; workers.len()];
        let mut shutdown = pin!(shutdown);
        let mut shutdown_seen = false;
        poll_fn(|cx| {
            if !shutdown_seen && shutdown.as_mut().poll(cx).is_ready() {
                shutdown_seen = true;
                stop.trigger();
            }
            let mut all_done = true;
            for (worker, done) in workers.iter_mut().zip(done.iter_mut()) {
                if !*done {
                    *done = worker.as_mut().poll(cx).is_ready();
                    all_done &= *done;
                }
            }
            if all_done { Poll::Ready(()) } else { Poll::Pending }
        })
        .await;
        Ok(())
    }

    /// One batch after another, pipelined while there is a backlog: after a full batch, the next
    /// batch is claimed and published while the last one's completion is being written
    /// (publishes stay one at a time per worker); after a partial one, the completion comes
    /// first. Order holds because the completing batch still leases its aggregates, so the next
    /// claim cannot take them.
    async fn worker(&self, timer: &dyn Timer, stop: &Stop) {
        let mut idle = self.config.poll_interval;
        let mut completing: Option<Published> = None;
        while !stop.is_triggered() {
            let seen = self.wakeup.0.generation();
            let previous = completing.take();
            let was_completing = previous.is_some();
            let finishing = async {
                if let Some(previous) = previous
                    && let Err(error) = self.finish(previous).await
                {
                    self.observe(&RelayEvent::StoreError { error: &error });
                }
            };
            let (next, ()) = join(self.claim_and_publish(), finishing).await;
            match next {
                // An outage: record the release now, then pause before publishing again (a
                // wake-up does not end the pause: the broker, not the backlog, is the limit).
                Ok(Some(published)) if published.pause.is_some() => {
                    let pause = published.pause.unwrap_or(self.config.max_outage_backoff);
                    if let Err(error) = self.finish(published).await {
                        self.observe(&RelayEvent::StoreError { error: &error });
                    }
                    race(timer.sleep(pause), stop.wait()).await;
                    idle = self.config.poll_interval;
                }
                // A full batch means more is likely waiting: claim it while this one completes.
                Ok(Some(published)) if published.batch.len() >= self.config.batch_size => {
                    completing = Some(published);
                    idle = self.config.poll_interval;
                }
                // A partial batch likely emptied the backlog: a claim made now would only find
                // this batch's own leases, so complete first (as a relay kept busy by a trickle
                // of commits does, at no extra cost per wake-up).
                Ok(Some(published)) => {
                    if let Err(error) = self.finish(published).await {
                        self.observe(&RelayEvent::StoreError { error: &error });
                    }
                    idle = self.config.poll_interval;
                }
                // The claim ran while the last batch still leased its aggregates (with one busy
                // aggregate, it found only those): claim again now that they are released.
                Ok(None) if was_completing => {}
                Ok(None) => {
                    race(race(self.wakeup.0.changed_since(seen), timer.sleep(idle)), stop.wait()).await;
                    idle = (idle * 2).min(self.config.max_poll_interval);
                }
                Err(error) => {
                    self.observe(&RelayEvent::StoreError { error: &error });
                    race(timer.sleep(idle), stop.wait()).await;
                    idle = (idle * 2).min(self.config.max_poll_interval);
                }
            }
        }
        // Stopping: the last batch published is still recorded.
        if let Some(last) = completing
            && let Err(error) = self.finish(last).await
        {
            self.observe(&RelayEvent::StoreError { error: &error });
        }
    }

    /// Publishes a batch within the publish timeout; one outcome per entry, `None` for an entry
    /// that was not tried (it is released without an attempt). A whole-batch `Err` or timeout
    /// becomes an outage outcome for every entry; a panic is caught and the batch is published
    /// again one entry at a time (see [`Relay::isolate`]).
    async fn publish(&self, batch: &[Entry], lease_until: Timestamp) -> Vec<Option<Outcome>> {
        match self.publish_guarded(batch).await {
            Ok(outcomes) => outcomes.into_iter().map(Some).collect(),
            Err(message) => {
                self.observe(&RelayEvent::PublisherPanicked { entries: batch.len(), message: &message });
                if batch.len() == 1 {
                    vec![Some(Outcome::Failed(panicked(&message)))]
                } else {
                    self.isolate(batch, lease_until).await
                }
            }
        }
    }

    /// Publishes `batch` once within the publish timeout; `Err` with the message if the
    /// publisher panicked.
    async fn publish_guarded(&self, batch: &[Entry]) -> std::result::Result<Vec<Outcome>, String> {
        let publishing = catch_panic(|| self.publisher.publish(batch));
        let result = match &self.config.timer {
            Some(timer) => match race(publishing, timer.sleep(self.config.publish_timeout)).await {
                Either::Left(result) => result?,
                Either::Right(()) => Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "publishing a batch of {} took longer than the publish timeout of {:?}",
                        batch.len(),
                        self.config.publish_timeout
                    ),
                )),
            },
            None => publishing.await?,
        };
        Ok(match result {
            Ok(outcomes) if outcomes.len() == batch.len() => outcomes,
            Ok(outcomes) => {
                let error = Error::new(
                    ErrorKind::Unexpected,
                    format!(
                        "the publisher returned {} outcomes for a batch of {}; it must return one per entry",
                        outcomes.len(),
                        batch.len()
                    ),
                )
                .with_retryable(true);
                batch.iter().map(|_| Outcome::Failed(error.clone())).collect()
            }
            // The batch as a whole failed: that says nothing about any entry.
            Err(error) => {
                let error = error.with_outage(true);
                batch.iter().map(|_| Outcome::Failed(error.clone())).collect()
            }
        })
    }

    /// After a panic, publishes the batch again one entry at a time, in order, to find the entry
    /// that makes the publisher panic: it alone counts a failed attempt. Once an entry of an
    /// aggregate fails, that aggregate's later entries are not tried; after an outage, nothing
    /// more is; nor is anything once the lease could lapse before a publish would time out.
    async fn isolate(&self, batch: &[Entry], lease_until: Timestamp) -> Vec<Option<Outcome>> {
        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(batch.len());
        let mut failed: HashSet<(&str, &str)> = HashSet::new();
        let mut stop = false;
        for (i, entry) in batch.iter().enumerate() {
            let key = (entry.aggregate_type.as_str(), entry.aggregate_id.as_str());
            let deadline = self.config.clock.now().saturating_add(self.config.publish_timeout);
            if stop || deadline > lease_until || failed.contains(&key) {
                outcomes.push(None);
                continue;
            }
            let outcome = match self.publish_guarded(&batch[i..=i]).await {
                Ok(mut one) => one.pop().unwrap_or_else(|| {
                    Outcome::Failed(
                        Error::new(ErrorKind::Unexpected, "the publisher returned no outcome for a batch of 1")
                            .with_retryable(true),
                    )
                }),
                Err(message) => Outcome::Failed(panicked(&message)),
            };
            if let Outcome::Failed(error) = &outcome {
                failed.insert(key);
                stop = error.is_outage();
            }
            outcomes.push(Some(outcome));
        }
        outcomes
    }

    /// Turns outcomes into a completion, keeping order: once an entry of an aggregate fails,
    /// its later entries in the batch are released, whatever the publisher said of them.
    ///
    /// An entry that was not tried, or whose failure is an outage, is released without an
    /// attempt (and holds back its aggregate's later entries too); the first outage error is
    /// returned.
    fn completion(
        &self,
        holder: String,
        batch: &[Entry],
        outcomes: Vec<Option<Outcome>>,
    ) -> (Completion, Vec<Fate>, Option<Error>) {
        let now = self.config.clock.now();
        let mut completion = Completion { holder, now, ..Completion::default() };
        let mut blocked: HashSet<(&str, &str)> = HashSet::new();
        let mut fates = Vec::with_capacity(batch.len());
        let mut outage: Option<Error> = None;
        for (entry, outcome) in batch.iter().zip(outcomes) {
            let key = (entry.aggregate_type.as_str(), entry.aggregate_id.as_str());
            if !blocked.is_empty() && blocked.contains(&key) {
                completion.released.push(entry.id);
                fates.push(Fate::Released);
                continue;
            }
            let error = match outcome {
                Some(Outcome::Published) => {
                    completion.published.push(entry.id);
                    fates.push(Fate::Published);
                    continue;
                }
                Some(Outcome::Failed(error)) if !error.is_outage() => error,
                other => {
                    if let Some(Outcome::Failed(error)) = other {
                        outage.get_or_insert(error);
                    }
                    completion.released.push(entry.id);
                    blocked.insert(key);
                    fates.push(Fate::Released);
                    continue;
                }
            };
            match self.config.retry.decide(entry.attempts + 1, &error) {
                RetryDecision::RetryAfter(delay) => {
                    let at = now.saturating_add(delay);
                    completion.retry.push(Retry { id: entry.id, at, error: error.to_string() });
                    blocked.insert(key);
                    fates.push(Fate::Retry(error, at));
                }
                RetryDecision::GiveUp => {
                    completion.dead.push(Dead { id: entry.id, error: error.to_string() });
                    if self.config.on_dead == DeadPolicy::Block {
                        blocked.insert(key);
                    }
                    fates.push(Fate::Dead(error));
                }
            }
        }
        (completion, fates, outage)
    }

    /// Records a completion, retrying a few times on retryable store errors: if it cannot be
    /// recorded the entries are published again after their lease (at least once).
    async fn complete(&self, completion: &Completion) -> Result<()> {
        let mut delay = self.config.poll_interval;
        let mut tries = 0;
        loop {
            match self.store.complete(completion).await {
                Ok(()) => return Ok(()),
                Err(error) if error.is_retryable() && tries < 3 && self.config.timer.is_some() => {
                    self.observe(&RelayEvent::StoreError { error: &error });
                    if let Some(timer) = &self.config.timer {
                        timer.sleep(delay).await;
                    }
                    delay *= 2;
                    tries += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    fn report(&self, batch: &[Entry], now: Timestamp, fates: &[Fate]) {
        for (entry, fate) in batch.iter().zip(fates) {
            let attempt = entry.attempts + 1;
            match fate {
                Fate::Published => {
                    let latency = now.saturating_duration_since(entry.created_at);
                    self.observe(&RelayEvent::Published { entry, latency });
                }
                Fate::Released => {}
                Fate::Retry(error, at) => self.observe(&RelayEvent::RetryScheduled { entry, attempt, at: *at, error }),
                Fate::Dead(error) => self.observe(&RelayEvent::DeadLettered { entry, attempts: attempt, error }),
            }
        }
    }

    fn observe(&self, event: &RelayEvent<'_>) {
        self.config.observer.observe(event);
    }
}

#[derive(Default)]
struct Stop {
    triggered: AtomicBool,
    signal: Signal,
}

impl Stop {
    fn trigger(&self) {
        self.triggered.store(true, Ordering::SeqCst);
        self.signal.fire();
    }

    fn is_triggered(&self) -> bool {
        self.triggered.load(Ordering::SeqCst)
    }

    async fn wait(&self) {
        let seen = self.signal.generation();
        if !self.is_triggered() {
            self.signal.changed_since(seen).await;
        }
    }
}

/// A batch claimed and published, waiting for its completion to be recorded.
struct Published {
    batch: Vec<Entry>,
    completion: Completion,
    fates: Vec<Fate>,
    claim_took: Duration,
    publish_took: Duration,
    /// Set when the publish hit an outage: how long to pause before publishing again.
    pause: Option<Duration>,
    /// The batch's span (a no-op without the `tracing` feature).
    span: BatchSpan,
}

/// The error of an entry whose publish panicked.
fn panicked(message: &str) -> Error {
    Error::new(
        ErrorKind::Unexpected,
        format!(
            "the publisher panicked publishing this entry on its own ({message}); this counts a failed attempt: fix the publisher, or the entry if it is malformed"
        ),
    )
    .with_retryable(true)
}

/// Runs `make` and polls the future it makes; a panic in either becomes `Err` with the panic's
/// message instead of unwinding through the relay.
///
/// `AssertUnwindSafe`: after a panic the future is dropped and never polled again, and the
/// relay's own state is not touched inside it; a publisher's state is its own to keep
/// consistent (or to rebuild, as broker publishers do with a connection after a failure).
async fn catch_panic<F: Future>(make: impl FnOnce() -> F) -> std::result::Result<F::Output, String> {
    let future = catch_unwind(AssertUnwindSafe(make)).map_err(panic_message)?;
    let mut future = pin!(future);
    poll_fn(|cx| match catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
        Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
        Ok(Poll::Pending) => Poll::Pending,
        Err(payload) => Poll::Ready(Err(panic_message(payload))),
    })
    .await
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(message) => (*message).to_string(),
            Err(_) => "a panic without a message".to_string(),
        },
    }
}

/// What became of one entry of a batch.
enum Fate {
    Published,
    Released,
    Retry(Error, Timestamp),
    Dead(Error),
}

enum Either<A, B> {
    Left(A),
    Right(B),
}

/// Polls both futures until both are done; completes with both outputs.
async fn join<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let mut a = pin!(a);
    let mut b = pin!(b);
    let (mut a_out, mut b_out) = (None, None);
    poll_fn(|cx| {
        if a_out.is_none()
            && let Poll::Ready(x) = a.as_mut().poll(cx)
        {
            a_out = Some(x);
        }
        if b_out.is_none()
            && let Poll::Ready(y) = b.as_mut().poll(cx)
        {
            b_out = Some(y);
        }
        match (a_out.take(), b_out.take()) {
            (Some(x), Some(y)) => Poll::Ready((x, y)),
            (x, y) => {
                a_out = x;
                b_out = y;
                Poll::Pending
            }
        }
    })
    .await
}

/// Polls both futures; completes with whichever finishes first (the first one on a tie).
async fn race<A: Future, B: Future>(a: A, b: B) -> Either<A::Output, B::Output> {
    let mut a = pin!(a);
    let mut b = pin!(b);
    poll_fn(|cx| {
        if let Poll::Ready(x) = a.as_mut().poll(cx) {
            return Poll::Ready(Either::Left(x));
        }
        if let Poll::Ready(y) = b.as_mut().poll(cx) {
            return Poll::Ready(Either::Right(y));
        }
        Poll::Pending
    })
    .await
}
